"""Jobs the CLI and sensors launch; each selects assets that share one partitions definition (Dagster
infers the job's partitioning from them)."""

import dagster as dg

ingest_drop_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets(
        "raw_image_manifest", "image_embeddings", "dedup_clusters", "domain_embeddings", "drop_labels", "object_embeddings"
    ),
    description="Manifest, embeddings (every configured model) and dedup for one capture drop, its domain model "
    "vectors when a domain model is trained, the label files under its `_labels/` and its object vectors.",
)
object_embed_job = dg.define_asset_job(
    "object_embed",
    selection=dg.AssetSelection.assets("object_embeddings"),
    description="Embed the boxes of a drop's current labels and predictions (after `curation labels import`).",
)
review_labels_job = dg.define_asset_job(
    "review_labels",
    selection=dg.AssetSelection.assets("label_review"),
    description="Rank probable mislabels, overlapping boxes and missing labels over every drop's current labels.",
)
split_job = dg.define_asset_job(
    "split",
    selection=dg.AssetSelection.assets("dataset_split"),
    description="A named train/val/test split of the labelled images, without duplicates across parts.",
)
train_domain_job = dg.define_asset_job(
    "train_domain",
    selection=dg.AssetSelection.assets("domain_embedder"),
    description="Train a new version of the domain model on a sample of every drop.",
)
domain_embed_job = dg.define_asset_job(
    "domain_embed",
    selection=dg.AssetSelection.assets("domain_embeddings"),
    description="Project drops' semantic vectors with the current domain model (after training it).",
)
calibrate_dedup_job = dg.define_asset_job(
    "calibrate_dedup",
    selection=dg.AssetSelection.assets("dedup_calibration"),
    description="Calibrate the near-duplicate thresholds on the corpus (used by every later dedup of its model).",
)
select_job = dg.define_asset_job(
    "select_and_report",
    selection=dg.AssetSelection.assets("curated_subset", "curation_report"),
    description="A named selection and its report.",
)
retrieve_job = dg.define_asset_job(
    "retrieve",
    selection=dg.AssetSelection.assets("retrieval_set", "retrieval_page", "retrieval_export"),
    description="A named retrieval query, its page, and its export when the run config of retrieval_export "
    "names a destination (export_to; skipped otherwise).",
)
export_job = dg.define_asset_job(
    "export",
    selection=dg.AssetSelection.assets("curated_export"),
    description="Copy a named selection's images and write its manifest to the export location.",
)
evaluate_job = dg.define_asset_job(
    "evaluate_subset",
    selection=dg.AssetSelection.assets("subset_evaluation"),
    description="Probe accuracy of a named selection against random subsets of equal size, on a protected labelled drop.",
)
