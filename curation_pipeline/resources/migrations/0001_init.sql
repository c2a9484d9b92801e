-- Core schema: drops, image manifest, embeddings (any number of models), dedup, selections, retrievals.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE drops (
    drop_key      text PRIMARY KEY,
    ordinal       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- arrival order: "earlier drops"
    source_uri    text,
    registered_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE images (
    image_id      bigint PRIMARY KEY,           -- stable hash of (drop_key, object_key)
    drop_key      text NOT NULL REFERENCES drops (drop_key) ON DELETE CASCADE,
    object_key    text NOT NULL,
    source_uri    text NOT NULL,
    bytes         bigint NOT NULL,
    etag          text,
    sha256        text NOT NULL,
    status        text NOT NULL,                 -- ok | empty | corrupt | unsupported | too_large | unreadable
    error         text,
    format        text,
    width         integer,
    height        integer,
    mode          text,
    exif_datetime timestamp,
    camera_make   text,
    camera_model  text,
    phash         bigint,
    blur_variance double precision,
    brightness    double precision,
    contrast      double precision,
    entropy       double precision,
    aspect_ratio  double precision,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (drop_key, object_key)
);
CREATE INDEX images_sha256_idx ON images (sha256);

CREATE TABLE embedding_models (
    model         text PRIMARY KEY,
    backend       text NOT NULL,
    dim           integer NOT NULL CHECK (dim > 0 AND dim <= 2000),
    description   text,
    index_name    text NOT NULL UNIQUE,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- One table for every model; each model gets a partial HNSW index on embedding::vector(dim)
-- (created when the model is registered), the pgvector way to index mixed dimensions.
CREATE TABLE embeddings (
    image_id   bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    model      text NOT NULL REFERENCES embedding_models (model),
    drop_key   text NOT NULL,
    sha256     text NOT NULL,
    embedding  vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model)
);
CREATE INDEX embeddings_drop_model_idx ON embeddings (drop_key, model);

CREATE TABLE dedup_members (
    image_id          bigint PRIMARY KEY REFERENCES images (image_id) ON DELETE CASCADE,
    drop_key          text NOT NULL,
    model             text NOT NULL,
    representative_id bigint NOT NULL,          -- may live in an earlier drop
    is_representative boolean NOT NULL,
    tier              text,                     -- exact | perceptual | semantic; NULL for representatives
    similarity        double precision NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dedup_members_rep_idx ON dedup_members (representative_id);
CREATE INDEX dedup_members_drop_idx ON dedup_members (drop_key);

CREATE TABLE selections (
    name       text PRIMARY KEY,
    model      text NOT NULL,
    strategy   text NOT NULL,
    config     jsonb NOT NULL,
    pool_size  integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE selection_items (
    name             text NOT NULL REFERENCES selections (name) ON DELETE CASCADE,
    rank             integer NOT NULL,
    image_id         bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    distance_at_pick double precision,          -- NULL for the first pick
    PRIMARY KEY (name, rank),
    UNIQUE (name, image_id)
);

CREATE TABLE retrievals (
    name       text PRIMARY KEY,
    model      text NOT NULL,
    config     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE retrieval_items (
    name       text NOT NULL REFERENCES retrievals (name) ON DELETE CASCADE,
    rank       integer NOT NULL,
    image_id   bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    similarity double precision NOT NULL,
    query_ref  text NOT NULL,                   -- the query image that this result is nearest to
    PRIMARY KEY (name, rank),
    UNIQUE (name, image_id)
);
