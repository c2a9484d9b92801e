"""curated_subset and retrieval_set: one partition per named selection / named query."""


from typing import Optional

import dagster as dg

from curation_pipeline.resources.dagster_resources import DatabaseResource, EmbedderResource
from curation_pipeline.steps.embed import model_id_for
from curation_pipeline.steps.retrieve import retrieve_similar
from curation_pipeline.steps.select import select_subset

from .dedup import dedup_clusters
from .ingest import image_embeddings
from .partitions import retrieval_queries, selections


class SelectionConfig(dg.Config):
    budget: int = 50
    """Maximum number of images to select."""
    min_distance: float = 0.0
    """Stop early once the farthest remaining image is closer than this cosine distance to the subset."""
    drop_keys: Optional[list[str]] = None
    """Restrict the pool to these drops (default: every drop)."""
    model: Optional[str] = None
    """Model id whose vectors to use (default: the configured embedder's)."""


@dg.asset(
    partitions_def=selections,
    group_name="curate",
    kinds={"pgvector"},
    owners=["team:curation"],
    deps=[dg.AssetDep(dedup_clusters, partition_mapping=dg.AllPartitionMapping())],
    description="A diverse subset of valid, non-duplicate images within a budget (k-center greedy on cosine "
                "distance, optional minimum-distance stop); rows keep rank and distance at selection.",
    check_specs=[
        dg.AssetCheckSpec("no_duplicates_selected", asset="curated_subset", blocking=True,
                          description="No selected image is a duplicate of another image."),
        dg.AssetCheckSpec("within_budget", asset="curated_subset", blocking=True,
                          description="1 <= selected <= budget."),
    ],
)
def curated_subset(context: dg.AssetExecutionContext, config: SelectionConfig, database: DatabaseResource,
                   embedder: EmbedderResource) -> dg.MaterializeResult:
    catalog = database.catalog()
    model = config.model or model_id_for(embedder.load(), embedder.embed_options())
    stats = select_subset(catalog, context.partition_key, model=model, budget=config.budget,
                          min_distance=config.min_distance, drop_keys=config.drop_keys, logger=context.log)
    dupes = catalog.selected_duplicates(context.partition_key)
    return dg.MaterializeResult(
        metadata={k: v for k, v in stats.items() if v is not None},
        check_results=[
            dg.AssetCheckResult(check_name="no_duplicates_selected", passed=dupes == 0,
                                metadata={"selected_duplicates": dupes}),
            dg.AssetCheckResult(check_name="within_budget", passed=1 <= stats["selected"] <= config.budget,
                                metadata={"selected": stats["selected"], "budget": config.budget}),
        ],
    )


class RetrievalConfig(dg.Config):
    query_paths: list[str] = []
    """Query image files (local paths)."""
    k: int = 20
    """Number of nearest images to keep."""
    drop_keys: Optional[list[str]] = None
    """Search only these drops (default: every drop)."""


@dg.asset(
    partitions_def=retrieval_queries,
    group_name="curate",
    kinds={"pgvector"},
    owners=["team:curation"],
    deps=[dg.AssetDep(image_embeddings, partition_mapping=dg.AllPartitionMapping())],
    description="The top-k images nearest to the query image(s), through the model's pgvector HNSW index.",
    check_specs=[
        dg.AssetCheckSpec("results_ranked", asset="retrieval_set", blocking=True,
                          description="Between 1 and k results, similarity non-increasing with rank."),
    ],
)
def retrieval_set(context: dg.AssetExecutionContext, config: RetrievalConfig, database: DatabaseResource,
                  embedder: EmbedderResource) -> dg.MaterializeResult:
    catalog = database.catalog()
    stats = retrieve_similar(catalog, embedder.load(), context.partition_key, list(config.query_paths), k=config.k,
                             drop_keys=config.drop_keys, options=embedder.embed_options(), logger=context.log)
    sims = [it["similarity"] for it in catalog.retrieval_items(context.partition_key)]
    ranked = all(a >= b - 1e-9 for a, b in zip(sims, sims[1:]))
    return dg.MaterializeResult(
        metadata={k: v for k, v in stats.items() if v is not None},
        check_results=[
            dg.AssetCheckResult(check_name="results_ranked", passed=ranked and 1 <= len(sims) <= config.k,
                                metadata={"results": len(sims), "k": config.k, "ranked": ranked}),
        ],
    )
