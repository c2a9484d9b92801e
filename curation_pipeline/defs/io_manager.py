"""A partition-aware IO manager for embeddings in pgvector.

handle_output:
  * `CachedEmbeddings` (what image_embeddings returns): for each partition of the step and each
    model it names, one transaction replaces that partition's rows with the cached vectors of its
    valid images, server-side, so a re-run replaces instead of duplicating and a failure leaves
    the old rows;
  * `EmbeddingSet`: explicit vectors for one partition (delete + binary COPY, one transaction).
load_input: every upstream partition the step asks for, as one EmbeddingSet (ids + vectors),
for the model that the upstream materialization recorded for the input's `model_role`
(`dg.AssetIn(metadata={"model_role": "descriptor"})`; default: the one model it recorded)."""

from __future__ import annotations

from typing import Optional

import dagster as dg

from curation_pipeline.resources.catalog import CachedEmbeddings, Catalog, EmbeddingSet
from curation_pipeline.resources.database import resolve_database_url


class PgVectorIOManager(dg.ConfigurableIOManager):
    url: Optional[str] = None
    """Any PostgreSQL with pgvector; empty: the embedded server in `embedded_pgdata`."""
    embedded_pgdata: Optional[str] = None

    def _catalog(self) -> Catalog:
        return Catalog(resolve_database_url(self.url, self.embedded_pgdata))

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if not context.has_asset_partitions:
            raise ValueError(f"{context.asset_key.to_user_string()}: PgVectorIOManager needs a partitioned asset")
        catalog = self._catalog()
        if isinstance(obj, CachedEmbeddings):
            keys = list(context.asset_partition_keys)
            written = {model: sum(catalog.publish_embeddings(key, model) for key in keys) for model in obj.models}
            context.add_output_metadata(
                {
                    "rows_written": sum(written.values()),
                    "rows_written_by_model": dg.MetadataValue.json(written),
                    "models": dg.MetadataValue.json(obj.roles),
                    "partitions_published": len(keys),
                }
            )
        elif isinstance(obj, EmbeddingSet):
            # one transaction per partition: each drop's rows are replaced by its own part of the set
            keys = list(context.asset_partition_keys)
            parts = [obj] if len(keys) == 1 and set(obj.drop_keys) <= {keys[0]} else [obj.for_drop(k) for k in keys]
            written = sum(catalog.replace_embeddings(key, part) for key, part in zip(keys, parts))
            context.add_output_metadata({"rows_written": written, "model": obj.model, "dim": obj.dim})
        else:
            raise TypeError(f"PgVectorIOManager stores CachedEmbeddings or EmbeddingSet, got {type(obj).__name__}")

    def _recorded_model(self, context: dg.InputContext) -> str | None:
        instance = getattr(context, "instance", None) if context.has_asset_partitions else None
        if instance is None or context.upstream_output is None:
            return None
        role = (context.definition_metadata or {}).get("model_role")
        models = set()
        for key in context.asset_partition_keys:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[key]), limit=1
            )
            for record in result.records:
                metadata = record.asset_materialization.metadata if record.asset_materialization else {}
                by_role = metadata.get("models")
                if role and by_role is not None and isinstance(by_role.value, dict):
                    if role not in by_role.value:
                        raise ValueError(
                            f"{context.asset_key.to_user_string()} partition {key} was materialized without a "
                            f"{role} model (it has {sorted(by_role.value)}): re-materialize it"
                        )
                    models.add(by_role.value[role])
                elif (entry := metadata.get("model")) is not None:
                    models.add(entry.value)
        if len(models) > 1:
            raise ValueError(
                f"partitions {list(context.asset_partition_keys)} were last embedded with different "
                f"models {sorted(models)}: re-materialize them with one model"
            )
        return models.pop() if models else None

    def load_input(self, context: dg.InputContext) -> EmbeddingSet:
        try:
            model = self._recorded_model(context)
        except dg.DagsterInvariantViolationError:
            model = None  # no instance (a bare build_input_context): infer from the stored rows
        return self._catalog().load_embeddings(list(context.asset_partition_keys), model)
