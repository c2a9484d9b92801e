-- The thresholds each drop was actually deduplicated with (run config may override the model's
-- default), written in the same transaction as its dedup rows: the report's threshold explorer
-- shows these, not the embedder's default.
CREATE TABLE dedup_settings (
    drop_key        text PRIMARY KEY REFERENCES drops (drop_key) ON DELETE CASCADE,
    model           text NOT NULL,
    max_hamming     integer NOT NULL,
    min_cosine      double precision NOT NULL,
    deduplicated_at timestamptz NOT NULL DEFAULT now()
);
