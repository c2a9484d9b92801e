"""dedup_clusters: per capture drop, against itself and every earlier drop."""


import dagster as dg

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.resources.catalog import EmbeddingSet
from curation_pipeline.resources.dagster_resources import DatabaseResource
from curation_pipeline.steps.dedup import dedup_drop

from .partitions import capture_drops


class DedupConfig(dg.Config):
    max_hamming: int = 6
    """pHash Hamming radius (of 64 bits) for the perceptual tier."""
    min_cosine: float = 0.90
    """Cosine similarity at or above which two embeddings are semantic duplicates (offline embedder default)."""
    neighbours: int = 16
    """HNSW neighbours fetched per image before exact re-checking."""


@dg.asset(
    partitions_def=capture_drops,
    group_name="dedup",
    kinds={"pgvector"},
    owners=["team:curation"],
    description="Exact (sha256), perceptual (pHash) and semantic (HNSW + exact cosine) duplicates of the drop, "
                "within it and against all earlier drops; star clusters with one representative each.",
    check_specs=[
        dg.AssetCheckSpec("every_image_assigned", asset="dedup_clusters", blocking=True,
                          description="Each embedded valid image has exactly one cluster row."),
        dg.AssetCheckSpec("members_close_to_representative", asset="dedup_clusters", blocking=True,
                          description="No member is below its tier's threshold to its representative."),
    ],
)
def dedup_clusters(context: dg.AssetExecutionContext, config: DedupConfig, database: DatabaseResource,
                   image_embeddings: EmbeddingSet) -> dg.MaterializeResult:
    thresholds = DedupThresholds(max_hamming=config.max_hamming, min_cosine=config.min_cosine)
    catalog = database.catalog()
    stats = dedup_drop(catalog, context.partition_key, image_embeddings, thresholds,
                       neighbours=config.neighbours, logger=context.log)
    v = catalog.dedup_violations(context.partition_key, image_embeddings.model, config.min_cosine, config.max_hamming)
    return dg.MaterializeResult(
        metadata=stats,
        check_results=[
            dg.AssetCheckResult(check_name="every_image_assigned", passed=v["unassigned"] == 0,
                                metadata={"unassigned": v["unassigned"], "images": stats["images"]}),
            dg.AssetCheckResult(check_name="members_close_to_representative",
                                passed=v["below_threshold"] == 0 and v["dangling_representatives"] == 0,
                                metadata=v),
        ],
    )
