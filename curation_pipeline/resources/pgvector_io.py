"""A partition-aware IO manager that stores `EmbeddingSet`s in pgvector.

handle_output: one transaction deletes the partition's rows for that model and COPYs the new ones
in binary, so a re-run replaces instead of duplicating and a failure leaves the previous rows.
load_input: loads every upstream partition the step asks for as one EmbeddingSet (ids + vectors)."""

from __future__ import annotations

from typing import Optional

import dagster as dg

from .catalog import Catalog, EmbeddingSet
from .database import resolve_database_url


class PgVectorIOManager(dg.ConfigurableIOManager):
    url: Optional[str] = None

    def _catalog(self) -> Catalog:
        return Catalog(resolve_database_url(self.url))

    def handle_output(self, context: dg.OutputContext, obj: EmbeddingSet) -> None:
        if not isinstance(obj, EmbeddingSet):
            raise TypeError(f"PgVectorIOManager stores EmbeddingSet objects, got {type(obj).__name__}")
        if not context.has_asset_partitions:
            raise ValueError(f"{context.asset_key.to_user_string()}: PgVectorIOManager needs a partitioned asset")
        written = self._catalog().replace_embeddings(context.asset_partition_key, obj)
        context.add_output_metadata({"rows_written": written, "model": obj.model, "dim": obj.dim})

    def load_input(self, context: dg.InputContext) -> EmbeddingSet:
        model = (context.definition_metadata or {}).get("model")
        return self._catalog().load_embeddings(list(context.asset_partition_keys), model)
