-- Content-addressed embedding cache, halfvec storage, and per-model preprocessing identity.

ALTER TABLE embedding_models
    ADD COLUMN preprocess text NOT NULL DEFAULT '',
    ADD COLUMN storage    text NOT NULL DEFAULT 'vector' CHECK (storage IN ('vector', 'halfvec'));

-- One vector per (model, content hash), whatever drop or key it arrived under. Written in
-- committed batches while a partition embeds, so a crash loses at most one batch of work and a
-- re-run (or another drop with the same bytes) never computes it again.
CREATE TABLE embedding_cache (
    model          text NOT NULL REFERENCES embedding_models (model),
    sha256         text NOT NULL,
    embedding      vector,
    embedding_half halfvec,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, sha256),
    CHECK (num_nonnulls(embedding, embedding_half) = 1)
);

-- Per-image rows: exactly one of the two columns holds the vector, by the model's storage.
ALTER TABLE embeddings ALTER COLUMN embedding DROP NOT NULL;
ALTER TABLE embeddings ADD COLUMN embedding_half halfvec;
ALTER TABLE embeddings ADD CONSTRAINT embeddings_one_vector CHECK (num_nonnulls(embedding, embedding_half) = 1);

INSERT INTO embedding_cache (model, sha256, embedding)
SELECT DISTINCT ON (model, sha256) model, sha256, embedding FROM embeddings ORDER BY model, sha256
ON CONFLICT DO NOTHING;

-- Valid images a model could not embed (file changed or vanished since the manifest, decode error).
CREATE TABLE embedding_failures (
    image_id   bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    model      text NOT NULL,
    drop_key   text NOT NULL,
    error      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model)
);
CREATE INDEX embedding_failures_drop_idx ON embedding_failures (drop_key, model);
