-- Items of selections and retrieval sets whose image was removed (its drop re-ingested without
-- it, or the drop removed). Recorded in the same transaction, just before the cascade deletes
-- them, so the loss is reported instead of silent; cleared when the set is materialized again.
CREATE TABLE lost_items (
    kind       text NOT NULL CHECK (kind IN ('selection', 'retrieval')),
    name       text NOT NULL,
    rank       integer NOT NULL,
    image_id   bigint NOT NULL,
    drop_key   text NOT NULL,
    source_uri text NOT NULL,
    reason     text NOT NULL,
    lost_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name, image_id)
);
