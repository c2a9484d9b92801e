"""Jobs the CLI and sensors launch; each selects assets that share one partitions definition."""

import dagster as dg

from .partitions import capture_drops, retrieval_queries, selections

ingest_drop_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets("raw_image_manifest", "image_embeddings", "dedup_clusters"),
    partitions_def=capture_drops,
    description="Manifest, embeddings and dedup for one capture drop.",
)
select_job = dg.define_asset_job(
    "select_and_report",
    selection=dg.AssetSelection.assets("curated_subset", "curation_report"),
    partitions_def=selections,
    description="A named selection and its report.",
)
retrieve_job = dg.define_asset_job(
    "retrieve",
    selection=dg.AssetSelection.assets("retrieval_set", "retrieval_page", "retrieval_export"),
    partitions_def=retrieval_queries,
    description="A named retrieval query, its page, and its export when the run config of retrieval_export "
    "names a destination (export_to; skipped otherwise).",
)
export_job = dg.define_asset_job(
    "export",
    selection=dg.AssetSelection.assets("curated_export"),
    partitions_def=selections,
    description="Copy a named selection's images and write its manifest to the export location.",
)
