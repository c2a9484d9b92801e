"""Catalog reads that only tests need: kept off the production Catalog."""

from __future__ import annotations

from curation_pipeline.resources.catalog import Catalog


def embedding_failures(catalog: Catalog, drop_key: str, model: str) -> list[tuple[str, str]]:
    """(object_key, error) of the drop's images that `model` failed to embed, by object key."""
    with catalog.connection() as conn:
        return conn.execute(
            "SELECT i.object_key, f.error FROM embedding_failures f JOIN images i ON i.image_id = f.image_id"
            " WHERE f.drop_key = %s AND f.model = %s ORDER BY i.object_key",
            (drop_key, model),
        ).fetchall()
