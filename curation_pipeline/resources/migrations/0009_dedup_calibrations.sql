-- Near-duplicate thresholds calibrated on the corpus itself (asset dedup_calibration): synthetic
-- edits of sampled images against their nearest distinct neighbours, per descriptor model. Dedup
-- uses the latest one for its model unless the run config overrides it.
CREATE TABLE dedup_calibrations (
    calibration_id      bigserial PRIMARY KEY,
    model               text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sample_size         integer NOT NULL,
    target_recall       double precision NOT NULL,
    target_precision    double precision NOT NULL,
    proposal_min_cosine double precision NOT NULL,
    proposal_max_hamming integer NOT NULL,
    verifier            jsonb NOT NULL,   -- core.verify.VerifierSettings fields
    summary             jsonb NOT NULL,   -- recall / precision at the picked values, counts
    curve               jsonb NOT NULL    -- cosine_curve and share_curve (core.calibration)
);
CREATE INDEX dedup_calibrations_model_idx ON dedup_calibrations (model, calibration_id DESC);
