-- Domain models: a projection head trained on the drops (self-supervised) over a backbone's
-- stored vectors. Each training is one version; the weights are kept with their content hash, and
-- the model id names both (domain:<backbone>@v<N>-<hash>). The current one is the newest version;
-- its vectors are rows of `embeddings` under its model id, like any other model's.
CREATE TABLE domain_models (
    model_id       text PRIMARY KEY,
    version        integer NOT NULL UNIQUE,
    backbone_model text NOT NULL,
    dim            integer NOT NULL CHECK (dim > 0),
    sha256         text NOT NULL,
    weights        bytea NOT NULL,
    config         jsonb NOT NULL DEFAULT '{}'::jsonb,
    stats          jsonb NOT NULL DEFAULT '{}'::jsonb,
    images         integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);
