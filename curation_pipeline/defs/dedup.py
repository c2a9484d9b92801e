"""dedup_clusters: per capture drop, against itself and every earlier drop."""

from typing import Optional

import dagster as dg
import pydantic

from curation_pipeline.core.dedup import DEFAULT_MAX_HAMMING, PROPOSAL_MAX_HAMMING, DedupThresholds
from curation_pipeline.core.verify import VerifierSettings
from curation_pipeline.resources.catalog import EmbeddingSet
from curation_pipeline.resources.embedders import EMBEDDER_BACKENDS, mirror_permutation_for
from curation_pipeline.steps.dedup import dedup_drop, default_thresholds

from .partitions import INGEST_BACKFILL_POLICY, capture_drops
from .resources import DatabaseResource, ImageStoreResource


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
    defaults = default_thresholds(image_embeddings.model, verify=config.verify)
    thresholds = DedupThresholds(
        max_hamming=config.max_hamming if config.max_hamming is not None else defaults.max_hamming,
        min_cosine=config.min_cosine if config.min_cosine is not None else defaults.min_cosine,
    )
    verifier = VerifierSettings() if config.verify else None
    stores = image_store.stores()
    catalog = database.catalog()
    all_stats, violations = [], []
    # Earlier drops first: each drop is compared with the ones that arrived before it.
    for drop_key in catalog.drops_in_order(context.partition_keys):
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
    metadata = (
        all_stats[0]
        if len(all_stats) == 1
        else {
            "drops": len(all_stats),
            "model": image_embeddings.model,
            **{
                k: sum(s[k] for s in all_stats)
                for k in (
                    "images",
                    "kept",
                    "duplicates",
                    "exact_duplicates",
                    "perceptual_duplicates",
                    "semantic_duplicates",
                    "duplicates_of_other_drops",
                    "pairs_verified",
                    "pairs_accepted",
                )
            },
            "max_hamming": thresholds.max_hamming,
            "min_cosine": thresholds.min_cosine,
        }
    )
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
