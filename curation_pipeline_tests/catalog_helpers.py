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


def replace_manifest(catalog: Catalog, drop_key: str, rows) -> dict:
    """Write a drop's complete manifest from (image_id, source_uri, record, etag) rows."""
    with catalog.manifest_writer(drop_key) as writer:
        for row in rows:
            writer.add(*row)
    return {
        "upserted": writer.upserted,
        "deleted_vanished": writer.deleted_vanished,
        "repaired_members": writer.repaired_members,
    }


def dedup_summary(catalog: Catalog, drop_key: str) -> dict:
    """{tier or 'representative': members} of the drop, plus how many matched another drop."""
    with catalog.connection() as conn:
        rows = conn.execute(
            "SELECT coalesce(tier, 'representative'), count(*) FROM dedup_members WHERE drop_key = %s GROUP BY 1",
            (drop_key,),
        ).fetchall()
        (cross,) = conn.execute(
            "SELECT count(*) FROM dedup_members m JOIN images r ON r.image_id = m.representative_id"
            " WHERE m.drop_key = %s AND r.drop_key <> m.drop_key",
            (drop_key,),
        ).fetchone()
    out = {k: int(v) for k, v in rows}
    out["matched_other_drops"] = int(cross)
    return out
