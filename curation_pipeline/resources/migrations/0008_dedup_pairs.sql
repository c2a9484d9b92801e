-- Every pair a cheap tier proposed for a drop and what the verifier said about it (issue 15): the
-- evidence behind each duplicate link, and the rejected pairs the report shows. Written in the same
-- transaction as the drop's dedup rows.
CREATE TABLE dedup_pairs (
    drop_key          text NOT NULL REFERENCES drops (drop_key) ON DELETE CASCADE,
    image_a           bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    image_b           bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    tier              text NOT NULL,              -- the proposing tier: perceptual | semantic
    similarity        double precision NOT NULL,  -- the proposing tier's similarity
    mirrored          boolean NOT NULL,           -- proposed (or verified) as a horizontal flip
    accepted          boolean NOT NULL,
    reason            text NOT NULL,
    inliers           integer,
    matches           integer,
    coverage          double precision,
    agreement         double precision,
    correlation       double precision,
    colour_difference double precision,
    scale             double precision,
    rotation_deg      double precision,
    PRIMARY KEY (drop_key, image_a, image_b)
);
CREATE INDEX dedup_pairs_rejected_idx ON dedup_pairs (drop_key) WHERE NOT accepted;

-- The verifier settings a drop was deduplicated with (NULL: thresholds alone decided).
ALTER TABLE dedup_settings ADD COLUMN verifier jsonb;
