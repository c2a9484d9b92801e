"""retrieval_set: one partition per named query (its settings in RetrievalConfig). Its page is
`retrieval_page` (defs/report.py) and its optional export `retrieval_export` (defs/export.py), both
downstream in the same `retrieve` job."""

from typing import Any, Optional

import dagster as dg
import pydantic

from curation_pipeline.core.quality import QUALITY_FLAGS
from curation_pipeline.steps.previews import retrieval_markdown
from curation_pipeline.steps.retrieve import RetrievalSpec, retrieve_similar

from .ingest import image_embeddings
from .partitions import retrieval_queries
from .resources import DatabaseResource, EmbedderResource, ImageStoreResource, ModelChoiceResource, project_models


class RetrievalConfig(dg.Config):
    query_paths: list[str] = []
    """Query image files or folders (every image inside)."""
    query_prefix: Optional[str] = None
    """Every image under this S3 prefix (s3://bucket/prefix/) or folder URI is a query."""
    query_images: list[str] = []
    """Corpus images as queries (source URI or drop/object_key)."""
    text: list[str] = []
    """Text prompts (CLIP-family models only)."""
    k: int = 20
    """Number of nearest images to keep."""
    min_similarity: Optional[float] = None
    """Keep only results with cosine similarity at or above this."""
    drop_keys: Optional[list[str]] = None
    """Search only these drops (default: every drop)."""
    where: list[str] = []
    """Metadata filters, as for curated_subset."""
    exclude: list[str] = pydantic.Field(default=[], description="Quality flags to leave out: " + ", ".join(QUALITY_FLAGS))
    include_mirrored: bool = True
    """Also find horizontally flipped copies (models whose vectors mirror exactly: the offline descriptor)."""
    model: Optional[str] = None
    """Model to search with: semantic, domain, descriptor or a stored model id (default: the project's
    retrieval model, CURATION_RETRIEVAL_MODEL, normally semantic). Text needs a CLIP-family model."""

    def spec(self) -> RetrievalSpec:
        fields: dict[str, Any] = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in self.model_dump().items() if k != "model"
        }
        return RetrievalSpec(**fields)


@dg.asset(
    partitions_def=retrieval_queries,
    group_name="retrieve",
    kinds={"pgvector"},
    owners=["team:curation"],
    deps=[dg.AssetDep(image_embeddings, partition_mapping=dg.AllPartitionMapping())],
    description="The images nearest to a query (image files, a folder, an S3 prefix, corpus images or a text "
    "prompt), top-k or above a similarity threshold, filtered by drop and metadata, through the model's "
    "pgvector HNSW index; rows keep rank, similarity and the query they matched.",
    check_specs=[
        dg.AssetCheckSpec(
            "results_ranked",
            asset="retrieval_set",
            blocking=True,
            description="Between 1 and k results, similarity non-increasing with rank.",
        ),
    ],
)
def retrieval_set(
    context: dg.AssetExecutionContext,
    config: RetrievalConfig,
    database: DatabaseResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
    models: ModelChoiceResource,
    image_store: ImageStoreResource,
) -> dg.MaterializeResult:
    catalog = database.catalog()
    resolved = project_models(embedder, descriptor).resolve(catalog, config.model or models.retrieval)
    context.log.info(f"retrieval {context.partition_key}: model {resolved.describe()}")
    stats = retrieve_similar(
        catalog,
        resolved.embedder(),
        context.partition_key,
        config.spec(),
        options=resolved.options,
        stores=image_store.stores(),
        logger=context.log,
    )
    sims = [it["similarity"] for it in catalog.retrieval_items(context.partition_key)]
    ranked = all(a >= b - 1e-9 for a, b in zip(sims, sims[1:]))
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in stats.items() if v is not None},
            "model_role": resolved.role or "explicit id",
            "hits": dg.MetadataValue.md(retrieval_markdown(catalog, context.partition_key, image_store.stores())),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="results_ranked",
                passed=ranked and (1 if config.min_similarity is None else 0) <= len(sims) <= config.k,
                metadata={"results": len(sims), "k": config.k, "ranked": ranked},
            ),
        ],
    )
