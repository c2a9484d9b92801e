-- Labels and predictions (issue 17): versioned label sets per drop, their objects (a box, or an
-- image-level class when the box is NULL), the ranked label-quality suspects, and named splits.
CREATE TABLE label_sets (
    set_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    drop_key    text NOT NULL REFERENCES drops (drop_key) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('labels', 'predictions')),
    version     text NOT NULL,
    format      text NOT NULL,                 -- coco | yolo | voc | csv
    source      text NOT NULL,                 -- the file or folder it was read from
    sha256      text NOT NULL,                 -- of the file's content: the same file again is a no-op
    classes     text[] NOT NULL,               -- class names; `probs` below follow this order
    stats       jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (drop_key, kind, version)
);

CREATE TABLE label_objects (
    object_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    set_id      bigint NOT NULL REFERENCES label_sets (set_id) ON DELETE CASCADE,
    image_id    bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    class_name  text NOT NULL,
    x           double precision,              -- box in pixels, top-left origin; all NULL: image-level
    y           double precision,
    w           double precision,
    h           double precision,
    score       double precision,              -- a prediction's confidence
    probs       real[],                        -- a prediction's class probabilities (label_sets.classes order)
    ref         text NOT NULL,                 -- where in the file: "annotation id 17", "a.txt line 3"
    CHECK ((x IS NULL) = (w IS NULL) AND (w IS NULL OR (w > 0 AND h > 0)))
);
CREATE INDEX label_objects_set_idx ON label_objects (set_id, image_id);
CREATE INDEX label_objects_image_idx ON label_objects (image_id);

-- A ranked list of label suspects, one row per suspect, replaced as a whole per name.
CREATE TABLE label_reviews (
    name        text PRIMARY KEY,
    config      jsonb NOT NULL,
    stats       jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE label_issues (
    name        text NOT NULL REFERENCES label_reviews (name) ON DELETE CASCADE,
    rank        integer NOT NULL,
    image_id    bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    object_id   bigint REFERENCES label_objects (object_id) ON DELETE CASCADE,
    kind        text NOT NULL,                 -- mislabel | missing_label | overlap
    method      text NOT NULL,                 -- knn | cleanlab | geometry
    score       double precision NOT NULL,     -- higher: more suspect
    given       text,                          -- the label as it stands
    suggested   text,                          -- what the evidence says instead
    reason      text NOT NULL,
    neighbours  jsonb,                         -- [{image_id, label, similarity}] nearest labelled images
    PRIMARY KEY (name, rank)
);

-- Named train/val/test splits.
CREATE TABLE splits (
    name        text PRIMARY KEY,
    config      jsonb NOT NULL,
    stats       jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE split_items (
    name        text NOT NULL REFERENCES splits (name) ON DELETE CASCADE,
    image_id    bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    part        text NOT NULL,                 -- train | val | test (or any named part)
    PRIMARY KEY (name, image_id)
);

-- One vector per box and model: the crop with context (core/objects.py), embedded by the image
-- model, so objects are searched, clustered and checked like images.
CREATE TABLE object_embeddings (
    object_id   bigint NOT NULL REFERENCES label_objects (object_id) ON DELETE CASCADE,
    model       text NOT NULL REFERENCES embedding_models (model),
    drop_key    text NOT NULL,
    embedding   vector NOT NULL,
    tiny        boolean NOT NULL,             -- shorter side under the tiny threshold: upscaled
    crop        integer[] NOT NULL,           -- left, top, right, bottom in the image's pixels
    PRIMARY KEY (object_id, model)
);
CREATE INDEX object_embeddings_drop_idx ON object_embeddings (drop_key, model);

-- What a subset buys: probe accuracy curves of a selection against random subsets and everything,
-- scored on a protected, labelled evaluation drop.
CREATE TABLE subset_evaluations (
    selection   text NOT NULL REFERENCES selections (name) ON DELETE CASCADE,
    eval_drop   text NOT NULL REFERENCES drops (drop_key) ON DELETE CASCADE,
    model       text NOT NULL,
    result      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (selection, eval_drop)
);
