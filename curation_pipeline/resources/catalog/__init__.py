"""The catalog: every SQL statement the pipeline runs, as one repository per domain, each with its
SQL beside it, over pooled connections (database.pooled_connection).

    drops.py       drops, the manifest writer (shrink guard, lost items), manifest lookups
    embeddings.py  models, the embedding cache, publishing, vectors in and out, failures, stats
    search.py      HNSW top-k lookups and filtered search; the HNSW session settings, once
    dedup.py       the dedup lock, candidates and representatives, duplicate groups, checks, leaks
    sets.py        selections, retrievals, annotations, lost items, exports, report samples
    records.py     the typed records that leave the catalog (EmbeddingSet, KeptImage, ModelInfo, ...)

`Catalog` is the thin facade the steps, Dagster resources and the CLI hold: it is every
repository at once, over one database URL. The rules every repository keeps are in base.py."""

from __future__ import annotations

from typing import Sequence

from curation_pipeline.core.manifest import ManifestRecord

from .base import Repository, scalar, wire_vector
from .dedup import DedupRepository
from .drops import DEFAULT_SHRINK_GUARD, DropRepository, DropShrinkRefused, ManifestWriter, ShrinkGuard
from .embeddings import CacheWriter, EmbeddingRepository, hnsw_index_name
from .records import STORAGE_TYPES, CachedEmbeddings, EmbeddingSet, KeptImage, ModelInfo
from .search import SearchRepository, hnsw_lookup_settings
from .sets import SetRepository

__all__ = [
    "DEFAULT_SHRINK_GUARD",
    "STORAGE_TYPES",
    "CacheWriter",
    "CachedEmbeddings",
    "Catalog",
    "DedupRepository",
    "DropRepository",
    "DropShrinkRefused",
    "EmbeddingRepository",
    "EmbeddingSet",
    "KeptImage",
    "ManifestWriter",
    "ModelInfo",
    "Repository",
    "SearchRepository",
    "SetRepository",
    "ShrinkGuard",
    "hnsw_index_name",
    "hnsw_lookup_settings",
    "wire_vector",
]


class Catalog(DropRepository, EmbeddingRepository, SearchRepository, DedupRepository, SetRepository):
    """Every repository over one database URL. The repositories share nothing but the URL (and so
    this process's connection pool for it); where one domain needs another's data it reads it with
    that module's function over its own connection, never through this class."""

    # ---- used only by tests -------------------------------------------------------------------
    # Their callers are test files being edited elsewhere just now; they move to
    # curation_pipeline_tests/catalog_helpers.py with them.
    def replace_manifest(self, drop_key: str, rows: Sequence[tuple[int, str, ManifestRecord, str | None]]) -> dict:
        """rows: (image_id, source_uri, record, etag): the drop's complete manifest."""
        with self.manifest_writer(drop_key) as writer:
            for row in rows:
                writer.add(*row)
        return {
            "upserted": writer.upserted,
            "deleted_vanished": writer.deleted_vanished,
            "repaired_members": writer.repaired_members,
        }

    def dedup_summary(self, drop_key: str) -> dict:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT coalesce(tier, 'representative'), count(*) FROM dedup_members WHERE drop_key = %s GROUP BY 1",
                (drop_key,),
            ).fetchall()
            cross = scalar(
                conn.execute(
                    "SELECT count(*) FROM dedup_members m JOIN images r ON r.image_id = m.representative_id"
                    " WHERE m.drop_key = %s AND r.drop_key <> m.drop_key",
                    (drop_key,),
                )
            )
        out = {k: int(v) for k, v in rows}
        out["matched_other_drops"] = int(cross)
        return out
