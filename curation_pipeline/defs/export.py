"""The "export" group: a selection's images and manifest (curated_export) or a retrieval set's
(retrieval_export), written to an export location. The input location is only read."""

from typing import Optional

import dagster as dg

from curation_pipeline.resources.export_target import export_target_for
from curation_pipeline.steps.export import export_selection

from .curation import curated_subset
from .partitions import retrieval_queries, selections
from .resources import DatabaseResource, ImageStoreResource, OutputsResource
from .retrieval import retrieval_set


def _manifest_metadata(out: dict) -> dict:
    return {
        "images": out["images"],
        "copied": out["copied"],
        "already_there": out["already_there"],
        "manifest_jsonl": dg.MetadataValue.url(out["manifest_jsonl"])
        if "://" in out["manifest_jsonl"]
        else dg.MetadataValue.path(out["manifest_jsonl"]),
        "manifest_parquet": out["manifest_parquet"],
        "seconds": out["seconds"],
    }


class ExportConfig(dg.Config):
    destination: Optional[str] = None
    """Export root: a folder or s3://bucket/prefix/ (default: the outputs resource's export_root,
    $CURATION_EXPORT_ROOT, else $CURATION_HOME/exports). The selection goes to <destination>/<selection>/."""
    copy_images: bool = True
    """Copy the images (server-side within S3); off = manifest only, pointing at the sources."""
    presign_seconds: Optional[int] = None
    """Add presigned GET URLs valid this long to the manifest (S3 destinations)."""


@dg.asset(
    partitions_def=selections,
    group_name="export",
    kinds={"s3", "parquet"},
    owners=["team:curation"],
    deps=[curated_subset],
    description="The curated subset for labeling: images copied to the export location (server-side within S3), "
    "manifest.jsonl and manifest.parquet (uri, sha256, cluster, rank, scores, metadata, optional presigned "
    "URLs) and a _SUCCESS marker written last. Idempotent; the input location is only read.",
    check_specs=[
        dg.AssetCheckSpec(
            "manifest_complete",
            asset="curated_export",
            blocking=True,
            description="The manifest lists every selected image and the marker was written.",
        )
    ],
)
def curated_export(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    database: DatabaseResource,
    image_store: ImageStoreResource,
    outputs: OutputsResource,
) -> dg.MaterializeResult:
    root = config.destination or outputs.export_root
    target = export_target_for(root, image_store.s3.settings())
    catalog = database.catalog()
    out = export_selection(
        catalog,
        context.partition_key,
        target,
        copy_images=config.copy_images,
        presign_seconds=config.presign_seconds,
        protected_roots=image_store.watched_roots(),  # exports there would be ingested as drops
        stores=image_store.stores(),
        logger=context.log,
    )
    selected = len(catalog.selection_items(context.partition_key))
    return dg.MaterializeResult(
        metadata=_manifest_metadata(out),
        check_results=[
            dg.AssetCheckResult(
                check_name="manifest_complete",
                passed=out["images"] == selected,
                metadata={"manifest_rows": out["images"], "selected": selected},
            )
        ],
    )


class RetrievalExportConfig(dg.Config):
    export_to: Optional[str] = None
    """Export the results like a subset: images and manifest under <export_to>/<name>/ (a folder or
    s3://bucket/prefix/). Empty (the default): nothing is exported and the asset is not materialized."""


@dg.asset(
    partitions_def=retrieval_queries,
    group_name="export",
    kinds={"s3", "parquet"},
    owners=["team:curation"],
    deps=[retrieval_set],
    # Materialized only when run config names a destination (`curation retrieve --export-to`): a
    # run without one skips it, so the asset's history lists real exports only.
    output_required=False,
    description="A retrieval set exported like a curated subset: images copied to <export_to>/<name>/ "
    "(server-side within S3), manifest.jsonl and manifest.parquet (score = similarity, group = the query "
    "each result matched) and a _SUCCESS marker written last. Skipped unless export_to is set.",
)
def retrieval_export(
    context: dg.AssetExecutionContext,
    config: RetrievalExportConfig,
    database: DatabaseResource,
    image_store: ImageStoreResource,
):
    name = context.partition_key
    if not config.export_to:
        context.log.info(f"retrieval {name}: no export_to in run config, nothing exported")
        return
    catalog = database.catalog()
    if not catalog.retrieval_items(name):
        context.log.info(f"retrieval {name}: no results (min_similarity), nothing exported")
        return
    out = export_selection(
        catalog,
        name,
        export_target_for(config.export_to, image_store.s3.settings()),
        kind="retrieval",
        protected_roots=image_store.watched_roots(),  # exports there would be ingested as drops
        stores=image_store.stores(),
        logger=context.log,
    )
    yield dg.MaterializeResult(metadata=_manifest_metadata(out))
