-- Coarse k-means buckets of each model's vectors (issue 18): the exact safety net of dedup. A new
-- drop's vectors are compared exactly with every vector of their nearest buckets, whatever the
-- HNSW graph finds. One centroid set per model (replaced when the corpus has grown ~4x: a new
-- version), and per drop and bucket one packed chunk of that drop's vectors (float16) and image
-- ids (int64), so a bucket is read as a few large values instead of thousands of rows.
CREATE TABLE vector_bucket_models (
    model        text PRIMARY KEY REFERENCES embedding_models (model) ON DELETE CASCADE,
    version      integer NOT NULL,
    n_buckets    integer NOT NULL CHECK (n_buckets > 0),
    dim          integer NOT NULL,
    trained_rows bigint NOT NULL,
    centroids    bytea NOT NULL,            -- (n_buckets, dim) float32, little-endian
    trained_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vector_buckets (
    model     text NOT NULL REFERENCES embedding_models (model) ON DELETE CASCADE,
    drop_key  text NOT NULL REFERENCES drops (drop_key) ON DELETE CASCADE,
    bucket    integer NOT NULL,
    version   integer NOT NULL,             -- the centroid version the members were assigned with
    members   integer NOT NULL,
    image_ids bytea NOT NULL,               -- (members,) int64, little-endian
    vectors   bytea NOT NULL,               -- (members, dim) float16, little-endian
    PRIMARY KEY (model, drop_key, bucket)
);
CREATE INDEX vector_buckets_bucket_idx ON vector_buckets (model, bucket);
-- float16 noise does not compress: store out of line without trying
ALTER TABLE vector_buckets ALTER COLUMN vectors SET STORAGE EXTERNAL;
ALTER TABLE vector_buckets ALTER COLUMN image_ids SET STORAGE EXTERNAL;
