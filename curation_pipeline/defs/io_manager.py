"""A partition-aware IO manager for embeddings in pgvector.

handle_output:
  * `CachedEmbeddings` (what image_embeddings returns): for each partition of the step, one
    transaction replaces that partition's rows with the cached vectors of its valid images,
    server-side, so a re-run replaces instead of duplicating and a failure leaves the old rows;
  * `EmbeddingSet`: explicit vectors for one partition (delete + binary COPY, one transaction).
load_input: every upstream partition the step asks for, as one EmbeddingSet (ids + vectors),
for the model that the upstream materialization recorded."""

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
            written = {key: catalog.publish_embeddings(key, obj.model) for key in keys}
            context.add_output_metadata(
                {"rows_written": sum(written.values()), "model": obj.model, "partitions_published": len(written)}
            )
        elif isinstance(obj, EmbeddingSet):
            written = catalog.replace_embeddings(context.asset_partition_key, obj)
            context.add_output_metadata({"rows_written": written, "model": obj.model, "dim": obj.dim})
        else:
            raise TypeError(f"PgVectorIOManager stores CachedEmbeddings or EmbeddingSet, got {type(obj).__name__}")

    def _recorded_model(self, context: dg.InputContext) -> str | None:
        instance = getattr(context, "instance", None) if context.has_asset_partitions else None
        if instance is None or context.upstream_output is None:
            return None
        models = set()
        for key in context.asset_partition_keys:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[key]), limit=1
            )
            for record in result.records:
                entry = record.asset_materialization.metadata.get("model") if record.asset_materialization else None
                if entry is not None:
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
