"""raw_image_manifest and image_embeddings: per capture drop.

Both take a BackfillPolicy.multi_run: a backfill of many drops runs several per run, so the
embedding model is loaded once per run instead of once per drop. Each asset therefore loops over
`context.partition_keys` (one key for an ordinary run)."""

from typing import Optional

import dagster as dg

from curation_pipeline.resources.catalog import CachedEmbeddings, DropShrinkRefused, ShrinkGuard
from curation_pipeline.steps.embed import embed_drop, model_id_for
from curation_pipeline.steps.manifest import build_manifest

from .partitions import INGEST_BACKFILL_POLICY, capture_drops
from .progress import progress_in_log
from .resources import DatabaseResource, EmbedderResource, ImageStoreResource, project_models

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
    keys = catalog.drops_in_order(context.partition_keys)
    if config.source and len(keys) > 1:
        raise ValueError(
            f"raw_image_manifest: a source ({config.source}) names one drop, but this run has {len(keys)}: {', '.join(keys)}"
        )
    shrink = ShrinkGuard(allow_shrink=config.allow_shrink, max_removed_fraction=config.max_removed_fraction)
    stats: dict[str, dict] = {}
    refused = []
    with progress_in_log(context.log):
        for drop_key in keys:
            try:
                stats[drop_key] = _manifest_of(context, config, catalog, image_store, drop_key, shrink)
            except DropShrinkRefused as exc:
                if len(keys) == 1:
                    raise
                context.log.error(str(exc))  # the other drops of a backfill batch still go ahead
                refused.append(str(exc))
    if refused:
        raise DropShrinkRefused(" | ".join(refused))
    listed, rows, dup_keys = (_sum(list(stats.values()), k) for k in ("objects_listed", "rows", "duplicate_keys"))
    empty = [key for key, st in stats.items() if st["objects_listed"] == 0]
    return dg.MaterializeResult(
        metadata=per_drop_metadata(context, {key: _manifest_metadata(st) for key, st in stats.items()}),
        check_results=[
            # An empty drop is an ERROR (it stops downstream) only when nothing in the run has
            # objects: one empty drop in a backfill batch is reported, not allowed to block the rest.
            dg.AssetCheckResult(
                check_name="drop_not_empty",
                passed=not empty,
                severity=dg.AssetCheckSeverity.ERROR if len(empty) == len(keys) else dg.AssetCheckSeverity.WARN,
                metadata={"objects_listed": listed, "empty_drops": ", ".join(empty) or "none"},
                description=(
                    None
                    if not empty
                    else f"nothing listed in {', '.join(empty)}: check the drop's source (`curation drop add KEY SOURCE` "
                    "records where its images are)"
                ),
            ),
            dg.AssetCheckResult(
                check_name="every_object_recorded_once",
                passed=rows == listed and dup_keys == 0,
                metadata={"rows": rows, "objects_listed": listed, "duplicate_keys": dup_keys},
            ),
        ],
    )


class DropSourceMissing(ValueError):
    """A drop partition whose images cannot be found: no recorded source, and nothing at the
    default place (<drop root>/<key>)."""


def _manifest_of(context, config: ManifestConfig, catalog, image_store, drop_key: str, shrink) -> dict:
    registered = config.source or catalog.drop_source(drop_key)
    location = image_store.location_for(drop_key, registered)
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
    except (FileNotFoundError, NotADirectoryError) as exc:
        if registered:
            raise
        # a partition added by hand (the UI's "Add partition", a GraphQL call) without its source
        raise DropSourceMissing(
            f"drop {drop_key!r} has no recorded source and {location} is not a folder: record where its images are "
            f"with `curation drop add {drop_key} SOURCE` (a folder or s3://bucket/prefix/) and materialize it again, "
            f"or delete the partition with `curation drop remove {drop_key}`"
        ) from exc
    _report_lost_items(context, drop_key, drop_stats["items_lost"])
    return drop_stats


def _manifest_metadata(stats: dict) -> dict:
    metadata = {k: v for k, v in stats.items() if k not in ("by_status", "items_lost") and v is not None}
    metadata["by_status"] = dg.MetadataValue.json(stats["by_status"])
    lost = {f"{kind} {name}": n for kind, per in stats["items_lost"].items() for name, n in per.items()}
    if lost:
        metadata["items_lost"] = dg.MetadataValue.json(lost)
    return metadata


def _embedding_metadata(roles: dict[str, str], stats: dict[str, dict]) -> dict:
    """One drop's embedding figures, per model."""
    metadata: dict = {"models": dg.MetadataValue.json(roles)}
    for field in ("computed", "valid_images", "not_embedded"):
        metadata[field] = dg.MetadataValue.json({m: int(st[field]) for m, st in stats.items()})
    metadata["seconds"] = round(sum(st["seconds"] for st in stats.values()), 3)
    metadata["images_per_second"] = dg.MetadataValue.json(
        {m: round(st["computed"] / max(st["model_seconds"], 1e-9), 1) for m, st in stats.items()}
    )
    return metadata


def per_drop_metadata(context: dg.AssetExecutionContext, by_drop: dict[str, dict]) -> dict:
    """Each drop's own figures on its own partition's materialization, however many drops the run
    covers (a backfill batch): one drop's figures are the result's metadata; for several, each goes
    to its partition (partition-scoped metadata) and the result carries only what the batch shares."""
    if len(by_drop) == 1:
        return next(iter(by_drop.values()))
    for drop_key, metadata in by_drop.items():
        context.add_asset_metadata(metadata, partition_key=drop_key)
    return {"run_batch": dg.MetadataValue.text(f"{len(by_drop)} drops in this run: {', '.join(by_drop)}")}


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
    description="One L2-normalised vector per valid image for every model the project names (the near-duplicate "
    "descriptor and the semantic model), stored in pgvector (HNSW, cosine). Each distinct content is embedded once "
    "per model and preprocessing (content-addressed cache).",
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
    context: dg.AssetExecutionContext,
    database: DatabaseResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
    image_store: ImageStoreResource,
):
    catalog = database.catalog()
    stores = image_store.stores()
    keys = catalog.drops_in_order(context.partition_keys)
    roles: dict[str, str] = {}
    per_model: dict[str, list[dict]] = {}
    dims: dict[str, int] = {}
    # Every model the project names, each once: the near-duplicate descriptor, then the semantic
    # model (one pass each over the drop; each content is computed once per model, ever).
    for role, (model, options) in project_models(embedder, descriptor).ingest_roles().items():
        model_id = model_id_for(model, options)
        roles[role] = model_id
        if model_id in per_model:
            continue
        with progress_in_log(context.log):
            per_model[model_id] = [embed_drop(catalog, model, key, options, stores=stores, logger=context.log) for key in keys]
        dims[model_id] = model.dim
    by_drop = {key: _embedding_metadata(roles, {m: stats[i] for m, stats in per_model.items()}) for i, key in enumerate(keys)}
    metadata = per_drop_metadata(context, by_drop)
    yield dg.Output(CachedEmbeddings(roles, tuple(keys)), metadata=metadata)
    # The IO manager has published the rows by now: check what is actually stored, for each model.
    checks = {m: [catalog.embedding_stats(key, m) for key in keys] for m in per_model}
    dims_ok = all(c["rows"] == 0 or c["min_dim"] == c["max_dim"] == dims[m] for m, cs in checks.items() for c in cs)
    norm_error = max(c["max_norm_error"] for cs in checks.values() for c in cs)
    complete = all(c["rows"] + c["failures"] == c["valid_images"] for cs in checks.values() for c in cs)
    yield dg.AssetCheckResult(
        check_name="vectors_match_model",
        passed=dims_ok and norm_error < 1e-2 and all(c["duplicate_rows"] == 0 for cs in checks.values() for c in cs),
        metadata={
            "model_dims": dg.MetadataValue.json(dims),
            "max_norm_error": norm_error,
            "rows": dg.MetadataValue.json({m: sum(c["rows"] for c in cs) for m, cs in checks.items()}),
        },
    )
    yield dg.AssetCheckResult(
        check_name="every_valid_image_embedded",
        passed=complete and all(c["failures"] == 0 for cs in checks.values() for c in cs),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "valid_images": sum(c["valid_images"] for c in next(iter(checks.values()))),
            "embedded": dg.MetadataValue.json({m: sum(c["rows"] for c in cs) for m, cs in checks.items()}),
            "failures": dg.MetadataValue.json({m: sum(c["failures"] for c in cs) for m, cs in checks.items()}),
        },
    )
