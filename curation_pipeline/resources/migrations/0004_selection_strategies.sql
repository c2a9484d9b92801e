-- User-supplied per-image values (model predictions, uncertainty, labels, any metadata column of a
-- CSV/Parquet file): used by selection scores, metadata balance and filters.
CREATE TABLE image_annotations (
    image_id   bigint NOT NULL REFERENCES images (image_id) ON DELETE CASCADE,
    name       text NOT NULL,
    value_text text,
    value_num  double precision,            -- set when the value parses as a number
    source     text,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, name)
);
CREATE INDEX image_annotations_name_idx ON image_annotations (name);

-- Why each image was chosen, and how the subset compares with a random one of equal size.
ALTER TABLE selection_items ADD COLUMN score double precision;
ALTER TABLE selection_items ADD COLUMN reason text;
ALTER TABLE selection_items ADD COLUMN group_key text;
ALTER TABLE selections ADD COLUMN comparison jsonb;
