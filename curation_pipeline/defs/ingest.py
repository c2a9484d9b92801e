"""raw_image_manifest and image_embeddings: per capture drop.

Both take a BackfillPolicy.multi_run: a backfill of many drops runs several per run, so the
embedding model is loaded once per run instead of once per drop. Each asset therefore loops over
`context.partition_keys` (one key for an ordinary run)."""

from typing import Optional

import dagster as dg

from curation_pipeline.resources.catalog import CachedEmbeddings, DropShrinkRefused, ShrinkGuard
from curation_pipeline.steps.embed import embed_drop
from curation_pipeline.steps.manifest import build_manifest

from .partitions import INGEST_BACKFILL_POLICY, capture_drops
from .resources import DatabaseResource, EmbedderResource, ImageStoreResource

GROUP = "ingest"


def _sum(stats: list[dict], key: str) -> int:
    return int(sum(s[key] for s in stats))


class ManifestConfig(dg.Config):
    source: Optional[str] = None
    """Where to list the drop (folder, file:// or s3://bucket/prefix/). Empty: the drop's registered
    source, else <drop root>/<drop key>. Stored as the drop's source only once its manifest is
    written, so a refused or failed listing leaves the old one."""
    allow_shrink: bool = False
    """Let this re-listing remove more than max_removed_fraction of the drop's known objects (their
    embeddings, duplicate links and selection items go with them). Off: such a listing (an empty,
    unmounted or mistyped source) is refused and nothing is written."""
    max_removed_fraction: float = 0.5
    """Share of a drop's known objects one re-listing may remove without allow_shrink."""


def _report_lost_items(context: dg.AssetExecutionContext, drop_key: str, lost: dict[str, dict[str, int]]) -> None:
    """Selections and retrieval sets that lost items when this drop shrank: a warning in the run
    log and an observation on each affected partition, so the loss shows on its asset page."""
    assets = {"selection": "curated_subset", "retrieval": "retrieval_set"}
    for kind, per_name in lost.items():
        for name, count in per_name.items():
            reason = f"{count} item(s) removed: their images are no longer in drop {drop_key}"
            context.log.warning(f"{kind} {name}: {reason}; re-materialize it to refill the budget")
            context.log_event(
                dg.AssetObservation(asset_key=assets[kind], partition=name, metadata={"items_lost": count, "reason": reason})
            )


@dg.asset(
    partitions_def=capture_drops,
    backfill_policy=INGEST_BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"python", "s3", "pgvector"},
    owners=["team:curation"],
    description="One row per object of the drop: bytes, format, size, EXIF time and camera, sha256, pHash, "
    "quality signals; corrupt or unsupported objects get a status and a readable error.",
    check_specs=[
        dg.AssetCheckSpec(
            "drop_not_empty", asset="raw_image_manifest", blocking=True, description="The drop listed at least one object."
        ),
        dg.AssetCheckSpec(
            "every_object_recorded_once",
            asset="raw_image_manifest",
            blocking=True,
            description="Rows == objects listed, no duplicate keys.",
        ),
    ],
)
def raw_image_manifest(
    context: dg.AssetExecutionContext, config: ManifestConfig, database: DatabaseResource, image_store: ImageStoreResource
) -> dg.MaterializeResult:
    catalog = database.catalog()
    stats = []
    keys = catalog.drops_in_order(context.partition_keys)
    if config.source and len(keys) > 1:
        raise ValueError(
            f"raw_image_manifest: a source ({config.source}) names one drop, but this run has {len(keys)}: {', '.join(keys)}"
        )
    shrink = ShrinkGuard(allow_shrink=config.allow_shrink, max_removed_fraction=config.max_removed_fraction)
    refused = []
    for drop_key in keys:
        location = image_store.location_for(drop_key, config.source or catalog.drop_source(drop_key))
        context.log.info(f"building manifest of drop {drop_key} from {location}")
        try:
            drop_stats = build_manifest(
                catalog,
                image_store.store(location),
                location,
                drop_key,
                logger=context.log,
                control_objects=frozenset({"_SUCCESS", image_store.drop_marker}),
                source_uri=location,
                shrink=shrink,
            )
        except DropShrinkRefused as exc:
            if len(keys) == 1:
                raise
            context.log.error(str(exc))  # the other drops of a backfill batch still go ahead
            refused.append(str(exc))
            continue
        _report_lost_items(context, drop_key, drop_stats["items_lost"])
        stats.append(drop_stats)
    if refused:
        raise DropShrinkRefused(" | ".join(refused))
    by_status: dict[str, int] = {}
    for s in stats:
        for k, v in s["by_status"].items():
            by_status[k] = by_status.get(k, 0) + v
    listed, rows, dup_keys = _sum(stats, "objects_listed"), _sum(stats, "rows"), _sum(stats, "duplicate_keys")
    empty = [key for key, st in zip(keys, stats) if st["objects_listed"] == 0]
    metadata = (
        stats[0]
        if len(stats) == 1
        else {
            "drops": len(stats),
            "objects_listed": listed,
            "rows": rows,
            "valid_images": _sum(stats, "valid_images"),
            "failed": _sum(stats, "failed"),
            "seconds": round(sum(s["seconds"] for s in stats), 3),
        }
    )
    metadata = {k: v for k, v in metadata.items() if k not in ("by_status", "items_lost") and v is not None}
    lost = {f"{kind} {name}": n for s in stats for kind, per in s["items_lost"].items() for name, n in per.items()}
    if lost:
        metadata["items_lost"] = dg.MetadataValue.json(lost)
    return dg.MaterializeResult(
        metadata={**metadata, "by_status": dg.MetadataValue.json(by_status)},
        check_results=[
            # An empty drop is an ERROR (it stops downstream) only when nothing in the run has
            # objects: one empty drop in a backfill batch is reported, not allowed to block the rest.
            dg.AssetCheckResult(
                check_name="drop_not_empty",
                passed=not empty,
                severity=dg.AssetCheckSeverity.ERROR if len(empty) == len(keys) else dg.AssetCheckSeverity.WARN,
                metadata={"objects_listed": listed, "empty_drops": ", ".join(empty) or "none"},
            ),
            dg.AssetCheckResult(
                check_name="every_object_recorded_once",
                passed=rows == listed and dup_keys == 0,
                metadata={"rows": rows, "objects_listed": listed, "duplicate_keys": dup_keys},
            ),
        ],
    )


GPU_POD_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "4", "memory": "16Gi"}}},
    "pod_spec_config": {
        "node_selector": {"curation/accelerator": "nvidia-gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


@dg.asset(
    partitions_def=capture_drops,
    backfill_policy=INGEST_BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"pytorch", "pgvector"},
    owners=["team:curation"],
    deps=[raw_image_manifest],
    io_manager_key="pgvector_io_manager",
    pool="gpu",
    # On Kubernetes with k8s_job_executor (one pod per step) this step alone asks for a GPU node;
    # everywhere else the tag is inert. See deploy/helm/README.md.
    op_tags={"dagster-k8s/config": GPU_POD_CONFIG},
    description="One L2-normalised vector per valid image and model, stored in pgvector (HNSW, cosine). Each "
    "distinct content is embedded once per model and preprocessing (content-addressed cache).",
    check_specs=[
        dg.AssetCheckSpec(
            "vectors_match_model",
            asset="image_embeddings",
            blocking=True,
            description="Stored rows have the model's dimension and unit norm, one per image.",
        ),
        dg.AssetCheckSpec(
            "every_valid_image_embedded",
            asset="image_embeddings",
            description="Valid images that could not be embedded, each with a recorded error (WARN).",
        ),
    ],
)
def image_embeddings(
    context: dg.AssetExecutionContext, database: DatabaseResource, embedder: EmbedderResource, image_store: ImageStoreResource
):
    model = embedder.load()
    catalog = database.catalog()
    options = embedder.embed_options()
    stores = image_store.stores()
    keys = catalog.drops_in_order(context.partition_keys)
    stats = [embed_drop(catalog, model, key, options, stores=stores, logger=context.log) for key in keys]
    model_id = stats[0]["model"]
    metadata = (
        {k: v for k, v in stats[0].items() if v is not None}
        if len(stats) == 1
        else {
            "model": model_id,
            "drops": len(stats),
            "computed": _sum(stats, "computed"),
            "valid_images": _sum(stats, "valid_images"),
            "not_embedded": _sum(stats, "not_embedded"),
            "seconds": round(sum(s["seconds"] for s in stats), 3),
        }
    )
    yield dg.Output(CachedEmbeddings(model_id, tuple(keys)), metadata=metadata)
    # The IO manager has published the rows by now: check what is actually stored.
    checks = [catalog.embedding_stats(key, model_id) for key in keys]
    dims_ok = all(c["rows"] == 0 or c["min_dim"] == c["max_dim"] == model.dim for c in checks)
    norm_error = max(c["max_norm_error"] for c in checks)
    complete = all(c["rows"] + c["failures"] == c["valid_images"] for c in checks)
    yield dg.AssetCheckResult(
        check_name="vectors_match_model",
        passed=dims_ok and norm_error < 1e-2 and all(c["duplicate_rows"] == 0 for c in checks),
        metadata={"model_dim": model.dim, "max_norm_error": norm_error, "rows": sum(c["rows"] for c in checks)},
    )
    yield dg.AssetCheckResult(
        check_name="every_valid_image_embedded",
        passed=complete and all(c["failures"] == 0 for c in checks),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "valid_images": sum(c["valid_images"] for c in checks),
            "embedded": sum(c["rows"] for c in checks),
            "failures": sum(c["failures"] for c in checks),
        },
    )
