"""curated_export: a selection's images and manifest, written to the export location."""

from typing import Optional

import dagster as dg

from curation_pipeline.resources.dagster_resources import DatabaseResource, ImageStoreResource
from curation_pipeline.resources.database import curation_home
from curation_pipeline.resources.export_target import export_target_for
from curation_pipeline.steps.export import export_selection

from .partitions import selections
from .selection import curated_subset
from .sensors import WatchSettings


class ExportConfig(dg.Config):
    destination: Optional[str] = None
    """Export root: a folder or s3://bucket/prefix/ (default $CURATION_EXPORT_ROOT, else
    $CURATION_HOME/exports). The selection goes to <destination>/<selection>/."""
    copy_images: bool = True
    """Copy the images (server-side within S3); off = manifest only, pointing at the sources."""
    presign_seconds: Optional[int] = None
    """Add presigned GET URLs valid this long to the manifest (S3 destinations)."""


@dg.asset(
    partitions_def=selections,
    group_name="report",
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
    context: dg.AssetExecutionContext, config: ExportConfig, database: DatabaseResource, image_store: ImageStoreResource
) -> dg.MaterializeResult:
    import os

    root = config.destination or os.environ.get("CURATION_EXPORT_ROOT") or str(curation_home() / "exports")
    target = export_target_for(root, image_store.s3.settings())
    catalog = database.catalog()
    # the drop sensor's roots, read as build_definitions reads them: an export there would be ingested
    watched = WatchSettings.from_env(
        default_root=image_store.drop_root or os.environ.get("CURATION_DROP_ROOT") or str(curation_home() / "drops")
    ).roots
    out = export_selection(
        catalog,
        context.partition_key,
        target,
        copy_images=config.copy_images,
        presign_seconds=config.presign_seconds,
        protected_roots=watched,
        logger=context.log,
    )
    selected = len(catalog.selection_items(context.partition_key))
    return dg.MaterializeResult(
        metadata={
            "images": out["images"],
            "copied": out["copied"],
            "already_there": out["already_there"],
            "manifest_jsonl": dg.MetadataValue.url(out["manifest_jsonl"])
            if "://" in out["manifest_jsonl"]
            else dg.MetadataValue.path(out["manifest_jsonl"]),
            "manifest_parquet": out["manifest_parquet"],
            "seconds": out["seconds"],
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="manifest_complete",
                passed=out["images"] == selected,
                metadata={"manifest_rows": out["images"], "selected": selected},
            )
        ],
    )
