"""domain_embedder (one model for the whole corpus) and domain_embeddings (per capture drop).

domain_embedder trains a new version of the domain model on a sample of every drop's semantic
vectors; its data version is the weights' content hash, so a retraining that changes the weights
makes every domain_embeddings partition stale (the UI shows it) and the automation re-embeds them.
domain_embeddings projects each drop's stored semantic vectors (no image is read): cheap enough to
follow every new drop in the ingest job. Without a trained model it skips, saying how to train one."""

from typing import Optional

import dagster as dg

from curation_pipeline.resources.catalog import EmbeddingSet
from curation_pipeline.resources.domain_model import DomainTrainingConfig
from curation_pipeline.steps.domain import domain_embeddings as project_drop
from curation_pipeline.steps.domain import train_domain_model

from .ingest import image_embeddings
from .partitions import INGEST_BACKFILL_POLICY, capture_drops
from .resources import DatabaseResource, EmbedderResource, ImageStoreResource, project_models

GROUP = "domain"
DEFAULTS = DomainTrainingConfig()


class DomainConfig(dg.Config):
    dim: int = DEFAULTS.dim
    """Dimension of the domain vectors (32-128): smaller spaces make distances more meaningful and
    selection cheaper (k-center reads dim/512 of the bytes a 512-d model does)."""
    views: int = DEFAULTS.views
    """Augmented views per image (random resized crop, flip, colour jitter, blur), each through the
    frozen backbone once."""
    sample: int = DEFAULTS.sample
    """Train on a seeded sample of at most this many distinct images from every drop."""
    epochs: Optional[int] = None
    """Head training epochs (default: the trainer's)."""
    seed: int = DEFAULTS.seed

    def training_config(self) -> DomainTrainingConfig:
        import dataclasses

        given = {"dim": self.dim, "views": self.views, "sample": self.sample, "seed": self.seed}
        if self.epochs is not None:
            given["epochs"] = self.epochs
        return dataclasses.replace(DEFAULTS, **given)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "pgvector"},
    owners=["team:curation"],
    deps=[dg.AssetDep(image_embeddings, partition_mapping=dg.AllPartitionMapping())],
    pool="gpu",
    description="The domain model: a self-supervised projection (32-128 d, default 64) of the semantic model's "
    "vectors, trained on a sample of every drop with augmented views through the frozen backbone. Versioned: "
    "its model id names the version and the weights' hash; a new version makes domain_embeddings stale.",
)
def domain_embedder(
    context: dg.AssetExecutionContext,
    config: DomainConfig,
    database: DatabaseResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
    image_store: ImageStoreResource,
) -> dg.MaterializeResult:
    catalog = database.catalog()
    models = project_models(embedder, descriptor)
    training = config.training_config()
    record, is_new, stats = train_domain_model(
        catalog, models.semantic(), models.semantic_id(), training, stores=image_store.stores(), logger=context.log
    )
    context.log.info(
        f"domain model {record.model_id}: {'new version' if is_new else 'retraining reproduced the current version'}"
    )
    if is_new and record.version > 1:
        # Dagster knows these partitions are stale (new data version upstream); say so on each
        # partition's page too, with what to do, for whoever looks before the automation has run.
        reason = (
            f"domain model v{record.version} ({record.model_id}) was trained: this drop's domain vectors are of an "
            "older version until domain_embeddings is re-materialized (curation_automation does it when on)"
        )
        for key in context.instance.get_dynamic_partitions(str(capture_drops.name)):
            context.log_event(dg.AssetObservation(asset_key="domain_embeddings", partition=key, metadata={"stale": reason}))
    return dg.MaterializeResult(
        metadata={**stats, "config": dg.MetadataValue.json(record.config)},
        data_version=dg.DataVersion(record.sha256),
    )


@dg.asset(
    partitions_def=capture_drops,
    backfill_policy=INGEST_BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"pgvector"},
    owners=["team:curation"],
    ins={"image_embeddings": dg.AssetIn(metadata={"model_role": "semantic"})},
    deps=[domain_embedder],
    io_manager_key="pgvector_io_manager",
    output_required=False,
    # a new drop's semantic vectors, or a new domain model version: re-project (no image is read)
    automation_condition=dg.AutomationCondition.eager(),
    description="The domain model's vectors of each drop (its semantic vectors projected by the current domain "
    "model), stored in pgvector under the domain model's id. Skipped while no domain model is trained.",
)
def domain_embeddings(context: dg.AssetExecutionContext, database: DatabaseResource, image_embeddings: EmbeddingSet):
    catalog = database.catalog()
    record = catalog.current_domain_model()
    if record is None:
        context.log.warning("no domain model trained yet: materialize domain_embedder (`curation train-domain`)")
        return
    if record.backbone_model != image_embeddings.model:
        context.log.warning(
            f"domain model {record.model_id} projects {record.backbone_model} vectors but these drops' semantic "
            f"vectors are {image_embeddings.model}: retrain domain_embedder; skipped"
        )
        return
    projected = project_drop(catalog, record, image_embeddings)
    yield dg.Output(
        projected,
        metadata={"model": record.model_id, "version": record.version, "dim": projected.dim, "rows": len(projected)},
    )
    removed = sum(catalog.drop_superseded_domain_rows(key, record.model_id) for key in context.partition_keys)
    if removed:
        context.log.info(f"removed {removed} vectors of older domain model versions")
