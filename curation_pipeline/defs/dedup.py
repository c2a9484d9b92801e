"""dedup_clusters: per capture drop, against itself and every earlier drop; dedup_calibration: the
near-duplicate thresholds calibrated on the corpus for the descriptor model (read by dedup_clusters
from the catalog, so a drop never waits for a calibration)."""

from typing import Optional

import dagster as dg
import pydantic

from curation_pipeline.core.dedup import DEFAULT_MAX_HAMMING, PROPOSAL_MAX_HAMMING, DedupThresholds
from curation_pipeline.core.verify import VerifierSettings
from curation_pipeline.resources.catalog import EmbeddingSet
from curation_pipeline.resources.embedders import EMBEDDER_BACKENDS, mirror_permutation_for
from curation_pipeline.steps.calibrate import calibrate_dedup
from curation_pipeline.steps.dedup import dedup_drop, default_thresholds
from curation_pipeline.steps.previews import duplicate_groups_markdown

from .ingest import image_embeddings as image_embeddings_asset
from .ingest import per_drop_metadata
from .partitions import INGEST_BACKFILL_POLICY, capture_drops
from .resources import DatabaseResource, EmbedderResource, ImageStoreResource, project_models


class DedupConfig(dg.Config):
    verify: bool = True
    """Verify every proposed pair on its pixels (local features, alignment, photometric agreement)
    before it counts as a duplicate. Off: the thresholds alone decide (the strict ones)."""
    max_hamming: Optional[int] = pydantic.Field(
        default=None,
        description=f"pHash Hamming radius (of 64 bits) of the perceptual tier. Default: {PROPOSAL_MAX_HAMMING} when "
        f"verifying (it only proposes), {DEFAULT_MAX_HAMMING} when not.",
    )
    min_cosine: Optional[float] = pydantic.Field(
        default=None,
        description="Cosine similarity of the near-duplicate tier. Default: per embedder backend; when verifying, its "
        "looser proposal cosine, else its deciding one ("
        + ", ".join(f"{b.name} {b.default_min_cosine}" for b in EMBEDDER_BACKENDS.values())
        + ").",
    )
    use_calibration: bool = True
    """Use the latest dedup_calibration of the descriptor model (its proposal cosine and verifier
    acceptance) where one exists; explicit max_hamming / min_cosine still win."""
    neighbours: int = 16
    """HNSW neighbours fetched per image before exact re-checking."""
    bulk_from: int = 50_000
    """Drops with at least this many images are deduplicated within themselves in bulk mode
    (k-means buckets + exact similarities, SemDeDup-style) instead of one HNSW query per image."""
    hnsw_ef_search: Optional[int] = None
    """HNSW beam width for the semantic lookups. Default: widened with the corpus (see
    steps.dedup.ef_search_for and benchmarks/dedup_scale.py for recall against time)."""


@dg.asset(
    partitions_def=capture_drops,
    backfill_policy=INGEST_BACKFILL_POLICY,
    group_name="dedup",
    kinds={"pgvector"},
    # near-duplicates are about pixels, not meaning: candidates come from the descriptor's vectors
    ins={"image_embeddings": dg.AssetIn(metadata={"model_role": "descriptor"})},
    owners=["team:curation"],
    description="Exact (sha256), perceptual (pHash) and near-duplicate (HNSW + exact cosine on the descriptor's "
    "vectors, mirrored too) candidates of the drop, within it and against every drop deduplicated before it; every "
    "proposed pair verified on its pixels (local features, alignment, coverage, photometric agreement); star "
    "clusters of the accepted pairs with one representative each.",
    check_specs=[
        dg.AssetCheckSpec(
            "every_image_assigned",
            asset="dedup_clusters",
            blocking=True,
            description="Each embedded valid image has exactly one cluster row.",
        ),
        dg.AssetCheckSpec(
            "no_leaks_across_protected_drops",
            asset="dedup_clusters",
            description="No image of this drop duplicates an image of a protected drop (or, for a "
            "protected drop, no other drop duplicates it). WARN: the leaks are listed.",
        ),
        dg.AssetCheckSpec(
            "members_close_to_representative",
            asset="dedup_clusters",
            blocking=True,
            description="Recomputed from stored hashes and vectors: every member is within its tier's threshold "
            "of a representative that still is one.",
        ),
    ],
)
def dedup_clusters(
    context: dg.AssetExecutionContext,
    config: DedupConfig,
    database: DatabaseResource,
    image_store: ImageStoreResource,
    image_embeddings: EmbeddingSet,
) -> dg.MaterializeResult:
    catalog = database.catalog()
    defaults = default_thresholds(image_embeddings.model, verify=config.verify)
    verifier = VerifierSettings() if config.verify else None
    calibration = catalog.dedup_calibration(image_embeddings.model) if config.verify and config.use_calibration else None
    if calibration is not None:
        defaults = DedupThresholds(max_hamming=calibration.proposal_max_hamming, min_cosine=calibration.proposal_min_cosine)
        verifier = VerifierSettings(**calibration.verifier)
    thresholds = DedupThresholds(
        max_hamming=config.max_hamming if config.max_hamming is not None else defaults.max_hamming,
        min_cosine=config.min_cosine if config.min_cosine is not None else defaults.min_cosine,
    )
    stores = image_store.stores()
    all_stats, violations = [], []
    # Earlier drops first: each drop is compared with the ones that arrived before it.
    drop_keys = catalog.drops_in_order(context.partition_keys)
    for drop_key in drop_keys:
        stats = dedup_drop(
            catalog,
            drop_key,
            image_embeddings.for_drop(drop_key),
            thresholds,
            neighbours=config.neighbours,
            bulk_from=config.bulk_from,
            ef_search=config.hnsw_ef_search,
            verifier=verifier,
            mirror_perm=mirror_permutation_for(image_embeddings.model),
            stores=stores,
            logger=context.log,
        )
        all_stats.append(stats)
        violations.append(
            catalog.dedup_violations(drop_key, image_embeddings.model, thresholds.min_cosine, thresholds.max_hamming)
        )
    total = {k: sum(v[k] for v in violations) for k in violations[0]}
    leaks = [leak for key in context.partition_keys for leak in catalog.leaks(key)]
    by_drop = {
        drop_key: {
            **stats,
            "calibration_id": calibration.calibration_id if calibration is not None else None,
            "largest_groups": dg.MetadataValue.md(duplicate_groups_markdown(catalog, drop_key, stores)),
        }
        for drop_key, stats in zip(drop_keys, all_stats)
    }
    metadata = per_drop_metadata(context, by_drop)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="no_leaks_across_protected_drops",
                passed=not leaks,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "leaks": len(leaks),
                    "examples": dg.MetadataValue.json(
                        [
                            {k: leak[k] for k in ("drop_key", "object_key", "protected_drop", "protected_key")}
                            for leak in leaks[:20]
                        ]
                    ),
                },
            ),
            dg.AssetCheckResult(
                check_name="every_image_assigned",
                passed=total["unassigned"] == 0,
                metadata={"unassigned": total["unassigned"], "images": sum(s["images"] for s in all_stats)},
            ),
            dg.AssetCheckResult(
                check_name="members_close_to_representative",
                passed=(
                    total["below_threshold"] == 0 and total["orphaned_members"] == 0 and total["malformed_representatives"] == 0
                ),
                metadata=total,
            ),
        ],
    )


class CalibrationConfig(dg.Config):
    sample: int = 200
    """Kept images to edit synthetically (and as many nearest distinct neighbours)."""
    seed: int = 0
    target_recall: float = 0.97
    """Share of the synthetic edits the proposal cosine must still propose."""
    target_precision: float = 0.99
    """Precision the verifier's acceptance must reach on the calibration pairs (it is never
    loosened below the default, only tightened)."""


@dg.asset(
    group_name="dedup",
    kinds={"opencv", "pgvector"},
    owners=["team:curation"],
    deps=[dg.AssetDep(image_embeddings_asset, partition_mapping=dg.AllPartitionMapping())],
    description="Near-duplicate thresholds calibrated on the corpus, without labels, for the descriptor model: "
    "sampled kept images are edited synthetically (JPEG, resize, crop, brightness, flip, rotation, text, noise, "
    "PNG, chains of two) and scored against their nearest distinct neighbours; the proposal cosine keeps "
    "target_recall of the edits and the verifier's acceptance reaches target_precision. dedup_clusters uses the "
    "latest calibration of its model unless its run config overrides the thresholds.",
)
def dedup_calibration(
    context: dg.AssetExecutionContext,
    config: CalibrationConfig,
    database: DatabaseResource,
    image_store: ImageStoreResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
) -> dg.MaterializeResult:
    models = project_models(embedder, descriptor)
    model, options = models.ingest_roles()["descriptor"]
    record = calibrate_dedup(
        database.catalog(),
        model,
        models.descriptor_id(),
        stores=image_store.stores(),
        sample=config.sample,
        seed=config.seed,
        target_recall=config.target_recall,
        target_precision=config.target_precision,
        logger=context.log,
    )
    summary = record["summary"]
    return dg.MaterializeResult(
        metadata={
            "calibration_id": record["calibration_id"],
            "model": record["model"],
            "proposal_min_cosine": record["proposal_min_cosine"],
            "proposal_max_hamming": record["proposal_max_hamming"],
            "verifier_min_share": record["verifier"]["min_share"],
            **{k: v for k, v in summary.items() if isinstance(v, (int, float))},
        }
    )
