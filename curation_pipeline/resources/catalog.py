"""Every SQL statement the pipeline runs, in one place.

Rules: values (partition keys, names, model ids, paths) are always bound parameters; the only
identifiers composed into SQL are index names built by code from a validated model id, quoted with
psycopg.sql.Identifier. Every write that belongs to a partition is one transaction that replaces
that partition's rows, so re-runs are idempotent and a crash leaves the previous state."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from pgvector import HalfVector
from psycopg import sql

from curation_pipeline.core.manifest import ManifestRecord

from .database import connect

if TYPE_CHECKING:
    from curation_pipeline.resources.filters import Predicate

_IMAGE_COLUMNS = (
    "image_id",
    "drop_key",
    "object_key",
    "source_uri",
    "bytes",
    "etag",
    "sha256",
    "status",
    "error",
    "format",
    "width",
    "height",
    "mode",
    "exif_datetime",
    "camera_make",
    "camera_model",
    "phash",
    "phash_mirror",
    "blur_variance",
    "brightness",
    "contrast",
    "entropy",
    "aspect_ratio",
)


class DropShrinkRefused(ValueError):
    """A re-listing of a drop would remove more of its known objects than allowed (an empty or
    unmounted folder, a wrong prefix). Raised inside the manifest transaction: nothing is written."""


@dataclass(frozen=True)
class ShrinkGuard:
    """How much of a drop's known objects one re-listing may remove. `max_removed_fraction`: more
    than this share gone (or all of them) is refused unless `allow_shrink`; 0.5 lets a drop lose up
    to half its objects (a cleanup) but stops an empty, unmounted or mistyped source."""

    allow_shrink: bool = False
    max_removed_fraction: float = 0.5

    def refusal(self, drop_key: str, known: int, removed: int, source: str | None) -> str | None:
        if self.allow_shrink or known == 0 or removed == 0:
            return None
        if removed < known and removed / known <= self.max_removed_fraction:
            return None
        where = f" from {source}" if source else ""
        return (
            f"drop {drop_key!r}: refusing to re-ingest{where}: the listing would remove {removed} of its "
            f"{known} known objects ({removed / known:.0%}, more than the allowed "
            f"{self.max_removed_fraction:.0%}), with their embeddings, duplicate links, selection and "
            "retrieval items. Nothing was changed. If the folder is empty or unmounted, fix the source and "
            "re-run; if the objects were deleted on purpose, re-run with --allow-shrink (run config "
            "raw_image_manifest.allow_shrink: true); to delete the whole drop, run `curation drop remove "
            f"{drop_key}`."
        )


DEFAULT_SHRINK_GUARD = ShrinkGuard()


@dataclass(frozen=True)
class EmbeddingSet:
    """Vectors of one model for a set of images: what the pgvector IO manager stores and loads."""

    model: str
    image_ids: np.ndarray  # (n,) int64
    sha256: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit norm
    drop_keys: list[str]  # (n,) drop of each row

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n or len(self.sha256) != n or len(self.drop_keys) != n:
            raise ValueError(
                f"EmbeddingSet for {self.model}: {n} ids, {len(self.sha256)} hashes, {len(self.drop_keys)} drops "
                f"and vectors of shape {self.vectors.shape} do not line up"
            )

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.image_ids)

    def for_drop(self, drop_key: str) -> "EmbeddingSet":
        mask = np.asarray([d == drop_key for d in self.drop_keys], dtype=bool)
        idx = np.nonzero(mask)[0]
        return EmbeddingSet(
            self.model, self.image_ids[idx], [self.sha256[i] for i in idx], self.vectors[idx], [drop_key] * len(idx)
        )


@dataclass(frozen=True)
class CachedEmbeddings:
    """What image_embeddings outputs: 'the cache holds vectors of `model` for these drops'. The
    pgvector IO manager turns it into each partition's rows, one transaction per partition."""

    model: str
    drop_keys: tuple[str, ...]


@dataclass(frozen=True)
class KeptImage:
    image_id: int
    drop_key: str
    drop_ordinal: int
    sha256: str
    phash: int
    pixels: int
    sharpness: float
    object_key: str
    phash_mirror: int = 0


# storage -> (column, SQL type); vectors are always read back as `vector` (float32).
STORAGE_TYPES = {"vector": ("embedding", "vector"), "halfvec": ("embedding_half", "halfvec")}
_READ_VECTOR = "coalesce(embedding, embedding_half::vector)"
_READ_VECTOR_E = "coalesce(e.embedding, e.embedding_half::vector)"


def wire_vector(vec: np.ndarray, storage: str):
    if storage == "halfvec":
        return HalfVector(np.asarray(vec, dtype=np.float16))
    return np.asarray(vec, dtype=np.float32)


class ManifestWriter:
    """Buffers manifest rows and upserts them in chunks inside the caller's transaction."""

    _INSERT = (
        f"INSERT INTO images ({', '.join(_IMAGE_COLUMNS)}, ingested_at)"
        f" VALUES ({', '.join(['%s'] * len(_IMAGE_COLUMNS))}, now())"
        f" ON CONFLICT (image_id) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in _IMAGE_COLUMNS if c != "image_id")
        + ", ingested_at = now()"
    )

    def __init__(self, conn, drop_key: str, chunk: int = 500) -> None:
        self.conn = conn
        self.drop_key = drop_key
        self.chunk = chunk
        self.buffer: list[tuple] = []
        self.upserted = 0
        self.deleted_vanished = 0
        self.repaired_members = 0
        self.lost_items: dict[str, dict[str, int]] = {}

    def add(self, image_id: int, source_uri: str, r: ManifestRecord, etag: str | None) -> None:
        self.buffer.append(
            (
                image_id,
                self.drop_key,
                r.object_key,
                source_uri,
                r.bytes,
                etag,
                r.sha256,
                r.status,
                r.error,
                r.format,
                r.width,
                r.height,
                r.mode,
                r.exif_datetime,
                r.camera_make,
                r.camera_model,
                r.phash,
                r.phash_mirror,
                r.blur_variance,
                r.brightness,
                r.contrast,
                r.entropy,
                r.aspect_ratio,
            )
        )
        if len(self.buffer) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        with self.conn.cursor() as cur:
            cur.executemany(self._INSERT, self.buffer)
            cur.executemany(
                "INSERT INTO manifest_seen (image_id) VALUES (%s) ON CONFLICT DO NOTHING", [(row[0],) for row in self.buffer]
            )
        self.upserted += len(self.buffer)
        self.buffer.clear()


class CacheWriter:
    """Appends (sha256 -> vector) rows to the embedding cache, one committed batch at a time
    (binary COPY into a temp table, then INSERT ... ON CONFLICT DO NOTHING so concurrent drops
    sharing content never collide)."""

    def __init__(self, conn, model: str, storage: str) -> None:
        self.conn = conn
        self.model = model
        self.storage = storage
        self.column, self.sqltype = STORAGE_TYPES[storage]
        self.rows_written = 0
        conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS cache_stage (sha256 text NOT NULL, vec {} NOT NULL)").format(
                sql.SQL(self.sqltype)
            )
        )

    def write(self, sha256s: Sequence[str], vectors: np.ndarray) -> int:
        with self.conn.transaction():
            self.conn.execute("TRUNCATE cache_stage")
            with self.conn.cursor() as cur, cur.copy("COPY cache_stage (sha256, vec) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["text", self.sqltype])
                for h, vec in zip(sha256s, vectors):
                    copy.write_row((h, wire_vector(vec, self.storage)))
            inserted = self.conn.execute(
                sql.SQL(
                    "INSERT INTO embedding_cache (model, sha256, {}) SELECT %s, sha256, vec FROM cache_stage"
                    " ON CONFLICT (model, sha256) DO NOTHING"
                ).format(sql.Identifier(self.column)),
                (self.model,),
            ).rowcount
        self.rows_written += inserted
        return inserted


_DEDUP_LOCK_ID = 0x6375726164  # "curad"


def _repair_orphaned_members(conn) -> int:
    """Members whose representative vanished or stopped being a representative (an earlier drop
    was re-ingested or re-deduplicated) become representatives of themselves: nothing is lost
    from selections, and re-running their drop's dedup finds their new match."""
    return conn.execute(
        "UPDATE dedup_members m SET representative_id = m.image_id, is_representative = true, tier = NULL,"
        " similarity = 1.0 WHERE NOT m.is_representative AND NOT EXISTS ("
        "  SELECT 1 FROM dedup_members r WHERE r.image_id = m.representative_id AND r.is_representative)"
    ).rowcount


def _record_lost_items(conn, drop_key: str, reason: str, *, all_of_drop: bool = False) -> dict[str, dict[str, int]]:
    """Before a drop's unseen rows (or, `all_of_drop`, all its rows) are deleted, record the
    selection and retrieval items that point at them: the cascade would otherwise drop them in
    silence. Returns {"selection": {name: items lost}, "retrieval": {...}} (only non-empty)."""
    unseen = "" if all_of_drop else " AND NOT EXISTS (SELECT 1 FROM manifest_seen ms WHERE ms.image_id = i.image_id)"
    lost: dict[str, dict[str, int]] = {}
    for kind, table in (("selection", "selection_items"), ("retrieval", "retrieval_items")):
        rows = conn.execute(
            "INSERT INTO lost_items (kind, name, rank, image_id, drop_key, source_uri, reason)"
            f" SELECT %s, s.name, s.rank, s.image_id, i.drop_key, i.source_uri, %s FROM {table} s"
            " JOIN images i ON i.image_id = s.image_id WHERE i.drop_key = %s"
            + unseen
            + " ON CONFLICT (kind, name, image_id) DO UPDATE SET reason = EXCLUDED.reason, lost_at = now()"
            " RETURNING name",
            (kind, reason, drop_key),
        ).fetchall()
        counts: dict[str, int] = {}
        for (name,) in rows:
            counts[name] = counts.get(name, 0) + 1
        if counts:
            lost[kind] = counts
    return lost


def _dict_rows(cur) -> list[dict]:
    """The cursor's remaining rows as dicts keyed by column name."""
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def hnsw_lookup_settings(conn, ef_search: int, k: int) -> None:
    """Session settings for a transaction of top-k HNSW lookups (SET LOCAL: they end with it)."""
    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(int(min(1000, max(ef_search, k))))))
    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
    # The planner prices a 512-d distance like any operator call, so below ~100k rows it prefers
    # computing every distance and sorting (measured: 50 ms instead of ~1 ms per lookup at 13k
    # rows, even with fresh statistics). These lookups are the HNSW path by design: make the sort
    # prohibitively expensive for this transaction only.
    conn.execute("SET LOCAL enable_sort = off")


def hnsw_index_name(model: str) -> str:
    return "embeddings_hnsw_" + hashlib.sha1(model.encode("utf-8")).hexdigest()[:16]


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url

    def connection(self):
        return connect(self.url)

    # ---- drops -------------------------------------------------------------------------------
    def register_drop(self, drop_key: str, source_uri: str | None) -> None:
        with self.connection() as conn:
            conn.execute(
                "INSERT INTO drops (drop_key, source_uri) VALUES (%s, %s) ON CONFLICT (drop_key) DO UPDATE"
                " SET source_uri = COALESCE(EXCLUDED.source_uri, drops.source_uri)",
                (drop_key, source_uri),
            )

    def drop_source(self, drop_key: str) -> str | None:
        with self.connection() as conn:
            row = conn.execute("SELECT source_uri FROM drops WHERE drop_key = %s", (drop_key,)).fetchone()
        return row[0] if row else None

    def remove_drop(self, drop_key: str) -> dict:
        """Delete a drop and everything derived from it (images, vectors, duplicate links,
        annotations) in one transaction. Selection and retrieval items that pointed at its images
        are recorded as lost; members elsewhere whose representative was in it become
        representatives. Raises LookupError for an unknown drop."""
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('manifest:' || %s))", (drop_key,))
            if conn.execute("SELECT 1 FROM drops WHERE drop_key = %s", (drop_key,)).fetchone() is None:
                raise LookupError(f"no drop {drop_key!r}: known drops are {self._drop_keys(conn)}")
            lost = _record_lost_items(conn, drop_key, f"drop {drop_key} was removed", all_of_drop=True)
            # vectors, failures, duplicate links, annotations and set items go with the images (cascade)
            images = conn.execute("DELETE FROM images WHERE drop_key = %s", (drop_key,)).rowcount
            conn.execute("DELETE FROM drops WHERE drop_key = %s", (drop_key,))
            repaired = _repair_orphaned_members(conn)
        return {"drop": drop_key, "images": images, "items_lost": lost, "repaired_members": repaired}

    @staticmethod
    def _drop_keys(conn) -> list[str]:
        return [r[0] for r in conn.execute("SELECT drop_key FROM drops ORDER BY ordinal").fetchall()]

    def unknown_drops(self, drop_keys: Sequence[str]) -> list[str]:
        """The keys among `drop_keys` that name no registered drop."""
        with self.connection() as conn:
            known = set(self._drop_keys(conn))
        return [k for k in drop_keys if k not in known]

    def known_drops(self) -> list[str]:
        with self.connection() as conn:
            return self._drop_keys(conn)

    def drop_sources(self) -> dict[str, str]:
        """{drop_key: source URI} of every registered drop that has a source."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT drop_key, source_uri FROM drops WHERE source_uri IS NOT NULL ORDER BY ordinal"
            ).fetchall()
        return dict(rows)

    # ---- manifest ----------------------------------------------------------------------------
    @contextmanager
    def manifest_writer(
        self, drop_key: str, *, source_uri: str | None = None, shrink: ShrinkGuard = DEFAULT_SHRINK_GUARD
    ) -> Iterator["ManifestWriter"]:
        """One transaction for a drop's whole manifest, written in chunks as objects are inspected
        (memory bounded by the chunk, not the drop). On exit: if the listing would remove more of the
        drop's known objects than `shrink` allows, DropShrinkRefused is raised and nothing is written;
        otherwise the drop's rows whose objects were not seen this time are deleted (selection and
        retrieval items that pointed at them are recorded as lost), orphaned dedup members elsewhere
        are repaired, `source_uri` becomes the drop's source, and everything commits at once; an
        exception rolls all of it back, leaving the previous manifest and source."""
        with self.connection() as conn, conn.transaction():
            # two runs of the same partition at once take turns here instead of interleaving rows
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('manifest:' || %s))", (drop_key,))
            conn.execute(
                "INSERT INTO drops (drop_key, source_uri) VALUES (%s, %s) ON CONFLICT DO NOTHING", (drop_key, source_uri)
            )
            known = conn.execute("SELECT count(*) FROM images WHERE drop_key = %s", (drop_key,)).fetchone()[0]
            conn.execute("CREATE TEMP TABLE manifest_seen (image_id bigint PRIMARY KEY) ON COMMIT DROP")
            writer = ManifestWriter(conn, drop_key)
            yield writer
            writer.flush()
            removed = conn.execute(
                "SELECT count(*) FROM images i WHERE i.drop_key = %s"
                " AND NOT EXISTS (SELECT 1 FROM manifest_seen s WHERE s.image_id = i.image_id)",
                (drop_key,),
            ).fetchone()[0]
            refusal = shrink.refusal(drop_key, known, removed, source_uri)
            if refusal:
                raise DropShrinkRefused(refusal)
            writer.lost_items = (
                _record_lost_items(conn, drop_key, f"object no longer in drop {drop_key} when it was re-ingested")
                if removed
                else {}
            )
            if source_uri is not None:
                conn.execute("UPDATE drops SET source_uri = %s WHERE drop_key = %s", (source_uri, drop_key))
            writer.deleted_vanished = conn.execute(
                "DELETE FROM images i WHERE i.drop_key = %s"
                " AND NOT EXISTS (SELECT 1 FROM manifest_seen s WHERE s.image_id = i.image_id)",
                (drop_key,),
            ).rowcount
            writer.repaired_members = _repair_orphaned_members(conn) if writer.deleted_vanished else 0

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

    def manifest_summary(self, drop_key: str) -> dict:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT status, count(*), count(DISTINCT object_key) FROM images WHERE drop_key = %s GROUP BY status",
                (drop_key,),
            ).fetchall()
            dup_keys = conn.execute(
                "SELECT count(*) - count(DISTINCT object_key) FROM images WHERE drop_key = %s", (drop_key,)
            ).fetchone()[0]
        return {"by_status": {s: n for s, n, _ in rows}, "total": sum(n for _, n, _ in rows), "duplicate_keys": dup_keys}

    def images_by_id(self, image_ids: Iterable[int]) -> dict[int, dict]:
        ids = [int(i) for i in image_ids]
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT image_id, drop_key, object_key, source_uri, sha256, status, error, width, height, format,"
                " blur_variance, brightness FROM images WHERE image_id = ANY(%s)",
                (ids,),
            )
            return {row["image_id"]: row for row in _dict_rows(cur)}

    def failed_images(self, drop_key: str | None = None) -> list[dict]:
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT drop_key, object_key, source_uri, status, error, bytes FROM images"
                " WHERE status <> 'ok' AND (%s::text IS NULL OR drop_key = %s) ORDER BY drop_key, object_key",
                (drop_key, drop_key),
            )
            return _dict_rows(cur)

    # ---- embedding models --------------------------------------------------------------------
    def register_model(
        self, model: str, backend: str, dim: int, description: str, *, preprocess: str = "", storage: str = "vector"
    ) -> None:
        """Record the model and create its partial HNSW index (cosine) on first use. A model id that
        exists with another dimension, preprocessing or storage is a configuration error, reported
        as such: cached vectors are only valid for the exact model + preprocessing that made them."""
        if storage not in STORAGE_TYPES:
            raise ValueError(f"storage must be one of {sorted(STORAGE_TYPES)}, got {storage!r}")
        index_name = hnsw_index_name(model)
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (model,))
            row = conn.execute("SELECT dim, preprocess, storage FROM embedding_models WHERE model = %s", (model,)).fetchone()
            if row is not None:
                if row[0] != dim:
                    raise ValueError(
                        f"model {model!r} is stored with dimension {row[0]} but the embedder produces {dim}: "
                        "use a different model id for a different model"
                    )
                if row[1] and preprocess and row[1] != preprocess:
                    raise ValueError(
                        f"model {model!r} is stored with preprocessing {row[1]!r} but this run uses {preprocess!r}: "
                        "its cached vectors would not match; use a different model id"
                    )
                if row[2] != storage:
                    raise ValueError(
                        f"model {model!r} is stored as {row[2]} but storage={storage!r} was asked for: "
                        "use a different model id to keep both"
                    )
                return
            conn.execute(
                "INSERT INTO embedding_models (model, backend, dim, description, index_name, preprocess, storage)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (model, backend, dim, description, index_name, preprocess, storage),
            )
            column, sqltype = STORAGE_TYPES[storage]
            # CREATE INDEX cannot take bind parameters: the predicate is a quoted literal of the
            # validated model id, the name is derived by code, the dimension is an int.
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw (({column}::{sqltype}({dim})) {ops})"
                    " WHERE model = {model}"
                ).format(
                    name=sql.Identifier(index_name),
                    column=sql.Identifier(column),
                    sqltype=sql.SQL(sqltype),
                    dim=sql.Literal(int(dim)),
                    ops=sql.SQL(f"{sqltype}_cosine_ops"),
                    model=sql.Literal(model),
                )
            )

    def model_info(self, model: str) -> tuple[int, str]:
        """(dim, storage) of a registered model."""
        with self.connection() as conn:
            row = conn.execute("SELECT dim, storage FROM embedding_models WHERE model = %s", (model,)).fetchone()
        if row is None:
            raise LookupError(f"no embeddings stored for model {model!r}: materialize image_embeddings first")
        return int(row[0]), row[1]

    def embedding_count(self, model: str) -> int:
        with self.connection() as conn:
            return int(conn.execute("SELECT count(*) FROM embeddings WHERE model = %s", (model,)).fetchone()[0])

    def model_dim(self, model: str) -> int:
        return self.model_info(model)[0]

    # ---- embedding cache ---------------------------------------------------------------------
    def uncached_items(self, drop_key: str, model: str, *, fetch_rows: int = 2000) -> Iterator[tuple[int, str, str, str]]:
        """(image_id, object_key, sha256, source_uri) of the drop's valid images whose content has
        no cached vector for `model`, one per distinct content, streamed from a server-side cursor."""
        with self.connection() as conn, conn.transaction():
            with conn.cursor(name="uncached_items") as cur:
                cur.itersize = fetch_rows
                cur.execute(
                    "SELECT DISTINCT ON (i.sha256) i.image_id, i.object_key, i.sha256, i.source_uri FROM images i"
                    " WHERE i.drop_key = %s AND i.status = 'ok' AND NOT EXISTS ("
                    "   SELECT 1 FROM embedding_cache c WHERE c.model = %s AND c.sha256 = i.sha256)"
                    " ORDER BY i.sha256, i.object_key",
                    (drop_key, model),
                )
                for row in cur:
                    yield int(row[0]), row[1], row[2], row[3]

    def valid_image_count(self, drop_key: str) -> int:
        with self.connection() as conn:
            return int(
                conn.execute("SELECT count(*) FROM images WHERE drop_key = %s AND status = 'ok'", (drop_key,)).fetchone()[0]
            )

    @contextmanager
    def cache_writer(self, model: str, storage: str = "vector") -> Iterator["CacheWriter"]:
        with self.connection() as conn:
            yield CacheWriter(conn, model, storage)

    def publish_embeddings(self, drop_key: str, model: str) -> int:
        """Make the drop's rows for `model` exactly one per valid image whose content is cached, in
        one transaction and entirely server-side (no vectors cross the wire). Applied as a diff:
        rows whose image vanished, failed or changed content go, missing rows come from the cache,
        rows already right are left alone (cached vectors never change for a model), so a re-run
        neither rewrites the table nor churns the HNSW index. Returns the partition's row count."""
        with self.connection() as conn, conn.transaction():
            # concurrent publishes of one partition are serialised: the second finds the rows there
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('publish:' || %s || ':' || %s))", (drop_key, model))
            conn.execute(
                "DELETE FROM embeddings e WHERE e.drop_key = %s AND e.model = %s AND NOT EXISTS ("
                " SELECT 1 FROM images i WHERE i.image_id = e.image_id AND i.drop_key = e.drop_key"
                " AND i.status = 'ok' AND i.sha256 = e.sha256)",
                (drop_key, model),
            )
            conn.execute(
                "INSERT INTO embeddings (image_id, model, drop_key, sha256, embedding, embedding_half)"
                " SELECT i.image_id, c.model, i.drop_key, i.sha256, c.embedding, c.embedding_half"
                " FROM images i JOIN embedding_cache c ON c.model = %s AND c.sha256 = i.sha256"
                " WHERE i.drop_key = %s AND i.status = 'ok'"
                " AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.image_id AND e.model = %s)",
                (model, drop_key, model),
            )
            count = int(
                conn.execute(
                    "SELECT count(*) FROM embeddings WHERE drop_key = %s AND model = %s", (drop_key, model)
                ).fetchone()[0]
            )
        self.refresh_statistics("embeddings")
        return count

    def refresh_statistics(self, table: str, *, changed_fraction: float = 0.1) -> bool:
        """ANALYZE `table` (a name from code, never from users) when more than `changed_fraction`
        of its rows changed since the last analyze. Without statistics a freshly loaded table looks
        empty to the planner, which then answers a top-k query through the (drop, model) btree and
        a sort of every row instead of the HNSW index: measured at 50 ms instead of <1 ms per
        lookup for 13k rows. Autovacuum would get there eventually; a drop's dedup runs now."""
        if table not in ("embeddings", "images", "embedding_cache"):
            raise ValueError(f"refresh_statistics: unknown table {table!r}")
        with self.connection() as conn:
            row = conn.execute(
                "SELECT n_live_tup, n_mod_since_analyze, last_analyze, last_autoanalyze"
                " FROM pg_stat_user_tables WHERE relname = %s",
                (table,),
            ).fetchone()
            if row is None:
                return False
            live, modified, manual, auto = row
            never = manual is None and auto is None
            if modified > 0 and (never or modified > changed_fraction * max(live, 1)):
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
                return True
        return False

    def embedding_stats(self, drop_key: str, model: str) -> dict:
        """What the embedding checks assert on, computed by PostgreSQL from the stored rows."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT count(*), min(vector_dims(" + _READ_VECTOR + ")), max(vector_dims(" + _READ_VECTOR + ")),"
                " coalesce(max(abs(vector_norm(" + _READ_VECTOR + ") - 1)), 0),"
                " count(*) - count(DISTINCT image_id)"
                " FROM embeddings WHERE drop_key = %s AND model = %s",
                (drop_key, model),
            ).fetchone()
            failures = conn.execute(
                "SELECT count(*) FROM embedding_failures WHERE drop_key = %s AND model = %s", (drop_key, model)
            ).fetchone()[0]
        return {
            "rows": int(row[0]),
            "min_dim": row[1],
            "max_dim": row[2],
            "max_norm_error": float(row[3]),
            "duplicate_rows": int(row[4]),
            "failures": int(failures),
            "valid_images": self.valid_image_count(drop_key),
        }

    def drops_in_order(self, drop_keys: Sequence[str]) -> list[str]:
        """The given drops sorted by arrival (unregistered ones last, by key)."""
        with self.connection() as conn:
            order = dict(
                conn.execute("SELECT drop_key, ordinal FROM drops WHERE drop_key = ANY(%s)", (list(drop_keys),)).fetchall()
            )
        return sorted(drop_keys, key=lambda k: (order.get(k) is None, order.get(k, 0), k))

    def replace_embedding_failures(self, drop_key: str, model: str, failures: Sequence[tuple[int, str]]) -> None:
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM embedding_failures WHERE drop_key = %s AND model = %s", (drop_key, model))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO embedding_failures (image_id, model, drop_key, error) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (image_id, model) DO UPDATE SET error = EXCLUDED.error",
                    [(int(i), model, drop_key, err) for i, err in failures],
                )

    def embedding_failures(self, drop_key: str, model: str) -> list[tuple[str, str]]:
        with self.connection() as conn:
            return conn.execute(
                "SELECT i.object_key, f.error FROM embedding_failures f JOIN images i ON i.image_id = f.image_id"
                " WHERE f.drop_key = %s AND f.model = %s ORDER BY i.object_key",
                (drop_key, model),
            ).fetchall()

    # ---- embeddings --------------------------------------------------------------------------
    def replace_embeddings(self, drop_key: str, emb: EmbeddingSet) -> int:
        """Write explicit vectors for a partition (delete + binary COPY, one transaction)."""
        _, storage = self.model_info(emb.model)
        column, sqltype = STORAGE_TYPES[storage]
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM embeddings WHERE drop_key = %s AND model = %s", (drop_key, emb.model))
            with (
                conn.cursor() as cur,
                cur.copy(
                    sql.SQL("COPY embeddings (image_id, model, drop_key, sha256, {}) FROM STDIN WITH (FORMAT BINARY)").format(
                        sql.Identifier(column)
                    )
                ) as copy,
            ):
                copy.set_types(["int8", "text", "text", "text", sqltype])
                for image_id, h, vec in zip(emb.image_ids.tolist(), emb.sha256, emb.vectors):
                    copy.write_row((image_id, emb.model, drop_key, h, wire_vector(vec, storage)))
        return len(emb)

    def load_embeddings(self, drop_keys: Sequence[str], model: str | None = None) -> EmbeddingSet:
        with self.connection() as conn:
            if model is None:
                models = conn.execute(
                    "SELECT DISTINCT model FROM embeddings WHERE drop_key = ANY(%s)", (list(drop_keys),)
                ).fetchall()
                if len(models) != 1:
                    raise LookupError(
                        f"drops {list(drop_keys)} have embeddings of {len(models)} models "
                        f"({[m[0] for m in models]}): name the model"
                    )
                model = models[0][0]
            rows = conn.execute(
                "SELECT image_id, sha256, drop_key, " + _READ_VECTOR + " FROM embeddings"
                " WHERE drop_key = ANY(%s) AND model = %s ORDER BY drop_key, image_id",
                (list(drop_keys), model),
            ).fetchall()
        dim = self.model_dim(model) if not rows else len(rows[0][3].to_numpy())
        vectors = np.stack([r[3].to_numpy() for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        return EmbeddingSet(
            model, np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], vectors, [r[2] for r in rows]
        )

    def nearest_statement(self, model: str):
        """(statement, dim, storage) of the top-k query for `model`. Parameters: query vector, drop
        keys (twice), query vector, k. Its ORDER BY expression and model predicate must match the
        model's partial HNSW index (a test EXPLAINs exactly this statement). The model id is a
        quoted literal (a validated id from the registry, as in the index predicate) so that even
        the generic plan of the prepared statement matches the partial index and thousands of
        lookups are not re-planned one by one."""
        dim, storage = self.model_info(model)
        column, sqltype = STORAGE_TYPES[storage]
        stmt = sql.SQL(
            "SELECT image_id, 1 - ({col}::{t}({dim}) <=> %s::{t}({dim})) AS sim FROM embeddings"
            " WHERE model = {model} AND (%s::text[] IS NULL OR drop_key = ANY(%s::text[]))"
            " ORDER BY {col}::{t}({dim}) <=> %s::{t}({dim}) LIMIT %s"
        ).format(col=sql.Identifier(column), t=sql.SQL(sqltype), dim=sql.Literal(dim), model=sql.Literal(model))
        return stmt, dim, storage

    def nearest(
        self,
        model: str,
        queries: np.ndarray,
        k: int,
        *,
        drop_keys: Sequence[str] | None = None,
        ef_search: int = 100,
        parallel: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        """For each query row of (m, dim), the top-k (image_id, cosine similarity) through the
        model's HNSW index. A drop filter is applied with pgvector's iterative index scan, so
        filtered queries still return k rows when k exist. Large batches are split over `parallel`
        connections (default: one per core, up to 4), each a PostgreSQL backend on its own core."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        stmt, dim, storage = self.nearest_statement(model)
        if q.shape[1] != dim:
            raise ValueError(f"query vectors have dimension {q.shape[1]} but model {model!r} has {dim}")
        keys = list(drop_keys) if drop_keys is not None else None
        parallel = parallel or min(4, os.cpu_count() or 1)
        if parallel > 1 and len(q) >= 1000:
            from concurrent.futures import ThreadPoolExecutor

            parts = np.array_split(np.arange(len(q)), parallel)
            with ThreadPoolExecutor(parallel) as pool:
                chunks = list(pool.map(lambda idx: self._nearest_batch(stmt, storage, q[idx], keys, k, ef_search), parts))
            return [hits for chunk in chunks for hits in chunk]
        return self._nearest_batch(stmt, storage, q, keys, k, ef_search)

    def _nearest_batch(self, stmt, storage: str, q: np.ndarray, keys, k: int, ef_search: int):
        results = []
        with self.connection() as conn, conn.transaction():
            hnsw_lookup_settings(conn, ef_search, k)
            # Pipeline mode: every query is sent without waiting for the previous answer, so a
            # drop's thousands of lookups cost server time, not thousands of round trips.
            cursors = []
            with conn.pipeline():
                for row in q:
                    wire = wire_vector(row, storage)
                    cursors.append(conn.execute(stmt, (wire, keys, keys, wire, int(k)), prepare=True))
            for cur in cursors:
                # relaxed_order may return rows slightly out of order: sort on the exact similarity.
                results.append(sorted(((int(i), float(s)) for i, s in cur.fetchall()), key=lambda t: -t[1]))
        return results

    def search(
        self,
        model: str,
        queries: np.ndarray,
        k: int,
        *,
        drop_keys: Sequence[str] | None = None,
        predicates: Sequence["Predicate"] = (),
        exclude_flags: Sequence[str] = (),
        min_similarity: float | None = None,
        ef_search: int = 100,
    ) -> list[list[tuple[int, float]]]:
        """Top-k (image_id, cosine) per query row, restricted to valid images that pass the metadata
        filters, optionally only those at or above `min_similarity`. The filters run inside the
        HNSW scan (pgvector iterative scan keeps walking the graph until k rows pass), and a query
        that still comes back short is answered again by an exact scan, so a selective filter
        never silently returns fewer results than exist."""
        from curation_pipeline.resources.filters import compile_filters

        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        dim, storage = self.model_info(model)
        if q.shape[1] != dim:
            raise ValueError(f"query vectors have dimension {q.shape[1]} but model {model!r} has {dim}")
        if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
            raise ValueError(f"min_similarity is a cosine similarity in [-1, 1], got {min_similarity}")
        column, sqltype = STORAGE_TYPES[storage]
        join_sql, where_sql, join_params, where_params = compile_filters(predicates, exclude_flags)
        keys = list(drop_keys) if drop_keys is not None else None

        def statement(exact: bool) -> sql.Composable:
            # "+ 0" keeps the ORDER BY from matching the index: the exact fallback scans every row
            order = "({col}::{t}({dim}) <=> %s::{t}({dim}))" + (" + 0" if exact else "")
            return sql.SQL(
                "SELECT e.image_id, 1 - ({col}::{t}({dim}) <=> %s::{t}({dim})) AS sim"
                " FROM embeddings e WHERE e.model = {model} AND (%s::text[] IS NULL OR e.drop_key = ANY(%s::text[]))"
                " AND EXISTS (SELECT 1 FROM images i {joins} WHERE i.image_id = e.image_id AND i.status = 'ok'{where})"
                " ORDER BY " + order + " LIMIT %s"
            ).format(
                col=sql.Identifier(column),
                t=sql.SQL(sqltype),
                dim=sql.Literal(dim),
                model=sql.Literal(model),
                joins=join_sql,
                where=where_sql,
            )

        approx, exact = statement(False), statement(True)
        out: list[list[tuple[int, float]]] = []
        with self.connection() as conn, conn.transaction():
            conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(int(min(1000, max(ef_search, k))))))
            conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            for row in q:
                wire = wire_vector(row, storage)
                params = (wire, keys, keys, *join_params, *where_params, wire, int(k))
                hits = conn.execute(approx, params).fetchall()
                if len(hits) < k:  # the index scan gave up before k rows passed the filters: ask exactly
                    hits = conn.execute(exact, params).fetchall()
                ranked = sorted(((int(i), float(s)) for i, s in hits), key=lambda t: (-t[1], t[0]))
                out.append([h for h in ranked if min_similarity is None or h[1] >= min_similarity])
        return out

    # ---- dedup -------------------------------------------------------------------------------
    @contextmanager
    def dedup_lock(self) -> Iterator[None]:
        """Serialises dedup across drops (a session advisory lock held for one drop's dedup): two
        drops deduplicated at the same time would otherwise each miss the other."""
        with self.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_DEDUP_LOCK_ID,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_DEDUP_LOCK_ID,))

    def deduplicated_drops(self, exclude: str) -> list[str]:
        """Drops whose dedup has run (whatever their arrival order), except `exclude`."""
        with self.connection() as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT d.drop_key FROM drops d WHERE d.drop_key <> %s"
                    " AND EXISTS (SELECT 1 FROM dedup_members m WHERE m.drop_key = d.drop_key) ORDER BY d.ordinal",
                    (exclude,),
                ).fetchall()
            ]

    def dedup_candidates(self, drop_key: str, model: str) -> list[KeptImage]:
        """The drop's own valid images that have a vector for `model`."""
        return self._image_query(
            "JOIN embeddings e ON e.image_id = i.image_id AND e.model = %s WHERE i.drop_key = %s AND i.status = 'ok'",
            (model, drop_key),
        )

    def kept_images(self, image_ids: Sequence[int]) -> list[KeptImage]:
        """Of the given images, the published representatives (any model, any drop)."""
        return self._image_query(
            "JOIN dedup_members m ON m.image_id = i.image_id AND m.is_representative WHERE i.image_id = ANY(%s)",
            (list(map(int, image_ids)),),
        )

    def kept_images_with_hashes(self, drop_keys: Sequence[str], sha256s: Sequence[str]) -> list[KeptImage]:
        """Representatives in the given drops whose content hash is one of `sha256s` (exact tier)."""
        return self._image_query(
            "JOIN dedup_members m ON m.image_id = i.image_id AND m.is_representative"
            " WHERE i.drop_key = ANY(%s) AND i.sha256 = ANY(%s)",
            (list(drop_keys), list(sha256s)),
        )

    def kept_phashes(self, drop_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(image_ids, phash) int64 arrays of the representatives in the given drops (8 bytes each:
        a million images is 16 MB, so the perceptual tier scans them in numpy)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT i.image_id, i.phash FROM images i"
                " JOIN dedup_members m ON m.image_id = i.image_id AND m.is_representative"
                " WHERE i.drop_key = ANY(%s) AND i.phash IS NOT NULL",
                (list(drop_keys),),
            ).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64), np.asarray([r[1] for r in rows], dtype=np.int64)

    def representatives_of(self, image_ids: Sequence[int]) -> dict[int, int]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, representative_id FROM dedup_members WHERE image_id = ANY(%s)",
                (list(map(int, image_ids)),),
            ).fetchall()
        return {int(a): int(b) for a, b in rows}

    def vectors_for(self, image_ids: Sequence[int], model: str) -> dict[int, np.ndarray]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, " + _READ_VECTOR + " FROM embeddings WHERE image_id = ANY(%s) AND model = %s",
                (list(map(int, image_ids)), model),
            ).fetchall()
        return {int(i): np.asarray(v.to_numpy(), dtype=np.float32) for i, v in rows}

    def _image_query(self, where: str, params: tuple) -> list[KeptImage]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT i.image_id, i.drop_key, d.ordinal, i.sha256, coalesce(i.phash, 0),"
                " coalesce(i.width, 0)::bigint * coalesce(i.height, 0), coalesce(i.blur_variance, 0), i.object_key,"
                " coalesce(i.phash_mirror, i.phash, 0)"
                " FROM images i JOIN drops d ON d.drop_key = i.drop_key " + where + " ORDER BY i.image_id",
                params,
            ).fetchall()
        return [
            KeptImage(
                int(r[0]), r[1], int(r[2]), r[3], int(r[4]), int(r[5]), float(r[6]) / (float(r[6]) + 100.0), r[7], int(r[8])
            )
            for r in rows
        ]

    def replace_dedup(self, drop_key: str, model: str, rows: Sequence[tuple[int, int, bool, str | None, float]]) -> dict:
        """rows: (image_id, representative_id, is_representative, tier, similarity). Replaces the
        drop's rows and repairs other drops' members whose representative stopped being one, in one
        transaction."""
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM dedup_members WHERE drop_key = %s", (drop_key,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO dedup_members (image_id, drop_key, model, representative_id, is_representative, tier,"
                    " similarity) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(i, drop_key, model, r, rep, t, s) for i, r, rep, t, s in rows],
                )
            repaired = _repair_orphaned_members(conn)
        return {"rows": len(rows), "repaired_members": repaired}

    def duplicate_groups(self, drop_keys: Sequence[str] | None = None) -> list[dict]:
        """Groups with at least one duplicate: representative first, members by similarity."""
        keys = list(drop_keys) if drop_keys is not None else None
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT m.representative_id, m.image_id, m.tier, m.similarity, i.source_uri, i.object_key, i.drop_key"
                " FROM dedup_members m JOIN images i ON i.image_id = m.image_id"
                " WHERE NOT m.is_representative AND (%s::text[] IS NULL OR m.drop_key = ANY(%s::text[]))"
                " ORDER BY m.representative_id, m.similarity DESC, i.object_key",
                (keys, keys),
            ).fetchall()
            reps = {int(r[0]) for r in rows}
            rep_rows = conn.execute(
                "SELECT image_id, source_uri, object_key, drop_key FROM images WHERE image_id = ANY(%s)", (list(reps),)
            ).fetchall()
        rep_info = {
            int(r[0]): {"image_id": int(r[0]), "source_uri": r[1], "object_key": r[2], "drop_key": r[3]} for r in rep_rows
        }
        groups: dict[int, dict] = {}
        for rep, image_id, tier, sim, uri, key, drop in rows:
            group = groups.setdefault(int(rep), {"representative": rep_info[int(rep)], "members": []})
            group["members"].append(
                {
                    "image_id": int(image_id),
                    "tier": tier,
                    "similarity": float(sim),
                    "source_uri": uri,
                    "object_key": key,
                    "drop_key": drop,
                }
            )
        return sorted(groups.values(), key=lambda g: (-len(g["members"]), g["representative"]["source_uri"]))

    def dedup_summary(self, drop_key: str) -> dict:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT coalesce(tier, 'representative'), count(*) FROM dedup_members WHERE drop_key = %s GROUP BY 1",
                (drop_key,),
            ).fetchall()
            cross = conn.execute(
                "SELECT count(*) FROM dedup_members m JOIN images r ON r.image_id = m.representative_id"
                " WHERE m.drop_key = %s AND r.drop_key <> m.drop_key",
                (drop_key,),
            ).fetchone()[0]
        out = {k: int(v) for k, v in rows}
        out["matched_other_drops"] = int(cross)
        return out

    def dedup_violations(self, drop_key: str, model: str, min_cosine: float, max_hamming: int) -> dict:
        """What the dedup checks assert on, recomputed from the stored images and vectors (not from
        the similarities dedup recorded): embedded valid images without a row; members whose
        representative is missing or no longer a representative; members whose recomputed
        similarity to their representative fails their tier's threshold."""
        vec_m = "coalesce(me.embedding, me.embedding_half::vector)"
        vec_r = "coalesce(re.embedding, re.embedding_half::vector)"
        with self.connection() as conn:
            unassigned = conn.execute(
                "SELECT count(*) FROM images i JOIN embeddings e ON e.image_id = i.image_id AND e.model = %s"
                " LEFT JOIN dedup_members m ON m.image_id = i.image_id"
                " WHERE i.drop_key = %s AND i.status = 'ok' AND m.image_id IS NULL",
                (model, drop_key),
            ).fetchone()[0]
            orphaned, weak = conn.execute(
                "SELECT count(*) FILTER (WHERE r.image_id IS NULL),"
                " count(*) FILTER (WHERE r.image_id IS NOT NULL AND ("
                "   (m.tier = 'exact' AND mi.sha256 <> ri.sha256)"
                "   OR (m.tier = 'perceptual' AND bit_count(int8send(mi.phash # ri.phash)) > %s"
                "       AND bit_count(int8send(coalesce(mi.phash_mirror, mi.phash) # ri.phash)) > %s / 2"
                "       AND bit_count(int8send(mi.phash # coalesce(ri.phash_mirror, ri.phash))) > %s / 2)"
                "   OR (m.tier = 'semantic' AND (me.image_id IS NULL OR re.image_id IS NULL"
                "       OR 1 - (" + vec_m + " <=> " + vec_r + ") < %s))))"
                " FROM dedup_members m"
                " JOIN images mi ON mi.image_id = m.image_id"
                " LEFT JOIN dedup_members r ON r.image_id = m.representative_id AND r.is_representative"
                " LEFT JOIN images ri ON ri.image_id = m.representative_id"
                " LEFT JOIN embeddings me ON me.image_id = m.image_id AND me.model = m.model"
                " LEFT JOIN embeddings re ON re.image_id = m.representative_id AND re.model = m.model"
                " WHERE m.drop_key = %s AND NOT m.is_representative",
                (max_hamming, max_hamming, max_hamming, min_cosine - 1e-4, drop_key),
            ).fetchone()
            self_reps = conn.execute(
                "SELECT count(*) FROM dedup_members WHERE drop_key = %s AND is_representative"
                " AND representative_id <> image_id",
                (drop_key,),
            ).fetchone()[0]
        return {
            "unassigned": int(unassigned),
            "orphaned_members": int(orphaned),
            "below_threshold": int(weak),
            "malformed_representatives": int(self_reps),
        }

    def selected_duplicates(self, name: str) -> int:
        """Selected images that are duplicates of another image (should be 0)."""
        with self.connection() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM selection_items s JOIN dedup_members m ON m.image_id = s.image_id"
                    " WHERE s.name = %s AND NOT m.is_representative",
                    (name,),
                ).fetchone()[0]
            )

    def nearest_neighbour_sample(self, model: str, limit: int = 2000) -> list[tuple[int, int, float]]:
        """(image_id, nearest other image_id, cosine) for a deterministic sample of up to `limit`
        images of `model` (hash order, not the first rows), through the HNSW index."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, " + _READ_VECTOR + " FROM embeddings WHERE model = %s ORDER BY md5(image_id::text) LIMIT %s",
                (model, int(limit)),
            ).fetchall()
        if not rows:
            return []
        ids = [int(r[0]) for r in rows]
        vectors = np.stack([r[1].to_numpy() for r in rows]).astype(np.float32)
        out = []
        for image_id, hits in zip(ids, self.nearest(model, vectors, 2)):
            others = [(i, s) for i, s in hits if i != image_id]
            if others:
                out.append((image_id, others[0][0], others[0][1]))
        return out

    # ---- leakage -----------------------------------------------------------------------------
    def set_protected(self, drop_key: str, protected: bool) -> None:
        with self.connection() as conn:
            updated = conn.execute("UPDATE drops SET protected = %s WHERE drop_key = %s", (protected, drop_key)).rowcount
        if not updated:
            raise LookupError(f"drop {drop_key!r} is not registered: ingest it first")

    def protected_drops(self) -> list[str]:
        with self.connection() as conn:
            return [r[0] for r in conn.execute("SELECT drop_key FROM drops WHERE protected ORDER BY ordinal").fetchall()]

    def leaks(self, drop_key: str | None = None) -> list[dict]:
        """Images of unprotected drops in the same duplicate cluster as an image of a protected drop
        (a test set leaking into training data). With drop_key: leaks involving that drop."""
        with self.connection() as conn:
            cur = conn.execute(
                "WITH c AS (SELECT m.image_id, m.representative_id, m.tier, m.similarity, i.drop_key, i.object_key,"
                "   i.source_uri, d.protected FROM dedup_members m JOIN images i ON i.image_id = m.image_id"
                "   JOIN drops d ON d.drop_key = i.drop_key)"
                " SELECT DISTINCT ON (leak.image_id, prot.image_id)"
                "   leak.drop_key, leak.object_key, leak.source_uri, prot.drop_key AS protected_drop,"
                "   prot.object_key AS protected_key, prot.source_uri AS protected_uri, leak.tier, prot.tier AS protected_tier"
                " FROM c leak JOIN c prot ON prot.representative_id = leak.representative_id"
                "   AND prot.protected AND NOT leak.protected"
                " WHERE %s::text IS NULL OR leak.drop_key = %s OR prot.drop_key = %s"
                " ORDER BY leak.image_id, prot.image_id",
                (drop_key, drop_key, drop_key),
            )
            return _dict_rows(cur)

    # ---- selection ---------------------------------------------------------------------------
    def selection_pool(
        self,
        model: str,
        drop_keys: Sequence[str] | None = None,
        *,
        predicates: Sequence["Predicate"] = (),
        exclude_flags: Sequence[str] = (),
        columns: Sequence[str] = (),
    ) -> tuple[EmbeddingSet, dict[str, np.ndarray]]:
        """Valid, embedded images that are not duplicates of another image and pass the filters,
        with the requested metadata `columns` (manifest columns or annotation names) as object
        arrays aligned with the vectors. Ordered by image id, so selections are reproducible."""
        from curation_pipeline.resources.filters import column_expression, compile_filters

        keys = list(drop_keys) if drop_keys is not None else None
        join_sql, where_sql, join_params, where_params = compile_filters(predicates, exclude_flags)
        # metadata columns may add annotation joins of their own (after the filters' joins)
        extra_joins: dict = {}
        extra_params: list = []
        exprs = [column_expression(c, extra_joins, extra_params, prefix="meta")[0] for c in columns]
        extra_join_sql = sql.SQL(" ").join(j for _, j in extra_joins.values())
        select_meta = sql.SQL("").join(sql.SQL(", ") + sql.SQL("({})::text").format(e) for e in exprs)
        query = sql.SQL(
            "SELECT e.image_id, e.sha256, e.drop_key, " + _READ_VECTOR_E + "{meta} FROM embeddings e"
            " JOIN images i ON i.image_id = e.image_id"
            " LEFT JOIN dedup_members m ON m.image_id = e.image_id {joins} {extra}"
            " WHERE e.model = %s AND i.status = 'ok' AND (m.image_id IS NULL OR m.is_representative)"
            " AND (%s::text[] IS NULL OR e.drop_key = ANY(%s::text[])){where} ORDER BY e.image_id"
        ).format(meta=select_meta, joins=join_sql, extra=extra_join_sql, where=where_sql)
        with self.connection() as conn:
            rows = conn.execute(query, [*join_params, *extra_params, model, keys, keys, *where_params]).fetchall()
        dim = self.model_dim(model)
        vectors = np.stack([r[3].to_numpy() for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        pool = EmbeddingSet(
            model, np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], vectors, [r[2] for r in rows]
        )
        meta = {c: np.asarray([r[4 + j] for r in rows], dtype=object) for j, c in enumerate(columns)}
        return pool, meta

    def annotation_names(self) -> list[str]:
        with self.connection() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT name FROM image_annotations ORDER BY name").fetchall()]

    def annotation_values(self, name: str, image_ids: Sequence[int]) -> np.ndarray:
        """(n,) float64 of annotation `name` for `image_ids` (NaN where missing or not numeric)."""
        with self.connection() as conn:
            rows = dict(
                conn.execute(
                    "SELECT image_id, value_num FROM image_annotations WHERE name = %s AND image_id = ANY(%s)",
                    (name, list(map(int, image_ids))),
                ).fetchall()
            )
            if not rows and conn.execute("SELECT 1 FROM image_annotations WHERE name = %s LIMIT 1", (name,)).fetchone() is None:
                raise ValueError(
                    f"no annotation named {name!r}: load a CSV/Parquet file with that column first (curation annotate FILE)"
                )
        return np.asarray([np.nan if rows.get(int(i)) is None else rows[int(i)] for i in image_ids], dtype=np.float64)

    def replace_annotations(self, rows: Sequence[tuple[int, str, str | None, float | None]], source: str) -> int:
        """Upsert (image_id, name, text value, numeric value) rows in one transaction."""
        with self.connection() as conn, conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO image_annotations (image_id, name, value_text, value_num, source)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (image_id, name) DO UPDATE SET"
                    " value_text = EXCLUDED.value_text, value_num = EXCLUDED.value_num, source = EXCLUDED.source,"
                    " loaded_at = now()",
                    [(int(i), n, t, v, source) for i, n, t, v in rows],
                )
        return len(rows)

    def image_ids_for_refs(self, refs: Sequence[str]) -> dict[str, int]:
        """Map references (source URI, `drop/object_key`, or an object key unique in the corpus) to
        image ids; references that match nothing or more than one image are left out."""
        refs = [str(r) for r in refs]
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT r.ref, i.image_id FROM unnest(%s::text[]) AS r(ref) JOIN images i"
                " ON i.source_uri = r.ref OR i.drop_key || '/' || i.object_key = r.ref OR i.object_key = r.ref",
                (refs,),
            ).fetchall()
        found: dict[str, set[int]] = {}
        for ref, image_id in rows:
            found.setdefault(ref, set()).add(int(image_id))
        return {ref: next(iter(ids)) for ref, ids in found.items() if len(ids) == 1}

    def vectors_for_images(self, image_ids: Sequence[int], model: str) -> np.ndarray:
        """(len(image_ids), dim) vectors in the given order; raises if any has no vector."""
        got = self.vectors_for(list(image_ids), model)
        missing = [i for i in image_ids if i not in got]
        if missing:
            raise ValueError(f"{len(missing)} query images have no {model} vector (first: image id {missing[0]})")
        return np.stack([got[i] for i in image_ids]) if image_ids else np.zeros((0, self.model_dim(model)), np.float32)

    def replace_selection(
        self,
        name: str,
        model: str,
        strategy: str,
        config: dict,
        pool_size: int,
        image_ids: Sequence[int],
        distances: Sequence[float],
        *,
        scores: Sequence[float] | None = None,
        reasons: Sequence[str] | None = None,
        groups: Sequence[str | None] | None = None,
        comparison: dict | None = None,
    ) -> int:
        n = len(image_ids)
        scores = list(scores) if scores is not None else [None] * n
        reasons = list(reasons) if reasons is not None else [strategy] * n
        groups = list(groups) if groups is not None else [None] * n
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM selections WHERE name = %s", (name,))
            conn.execute("DELETE FROM lost_items WHERE kind = 'selection' AND name = %s", (name,))
            conn.execute(
                "INSERT INTO selections (name, model, strategy, config, pool_size, comparison) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    name,
                    model,
                    strategy,
                    json.dumps(config),
                    pool_size,
                    json.dumps(comparison) if comparison is not None else None,
                ),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO selection_items (name, rank, image_id, distance_at_pick, score, reason, group_key)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        (name, rank, int(i), None if not np.isfinite(d) else float(d), None if s is None else float(s), r, g)
                        for rank, (i, d, s, r, g) in enumerate(zip(image_ids, distances, scores, reasons, groups), start=1)
                    ],
                )
        return n

    def selection_items(self, name: str) -> list[dict]:
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT s.rank, s.image_id, s.distance_at_pick, s.score, s.reason, s.group_key, i.source_uri,"
                " i.object_key, i.drop_key FROM selection_items s JOIN images i ON i.image_id = s.image_id"
                " WHERE s.name = %s ORDER BY s.rank",
                (name,),
            )
            return _dict_rows(cur)

    def export_rows(self, name: str, kind: str = "selection") -> list[dict]:
        """Everything an export manifest carries for each image of a selection (or, kind
        "retrieval", a retrieval set), in rank order: source, content hash, duplicate cluster (its
        representative's id), rank, scores and metadata."""
        if kind == "selection":
            source = "SELECT name, rank, image_id, score, reason, group_key, distance_at_pick FROM selection_items"
        elif kind == "retrieval":
            source = (
                "SELECT name, rank, image_id, similarity AS score, 'retrieval' AS reason, query_ref AS group_key,"
                " 1 - similarity AS distance_at_pick FROM retrieval_items"
            )
        else:
            raise ValueError(f"export kind must be selection or retrieval, got {kind!r}")
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT s.rank, s.image_id, i.source_uri, i.sha256, i.drop_key, i.object_key, i.bytes, i.format,"
                " i.width, i.height, i.camera_make, i.camera_model, i.exif_datetime, i.blur_variance, i.brightness,"
                " i.contrast, coalesce(m.representative_id, s.image_id) AS cluster, s.score, s.reason, s.group_key,"
                " s.distance_at_pick,"
                " (SELECT coalesce(jsonb_object_agg(a.name, coalesce(to_jsonb(a.value_num), to_jsonb(a.value_text))),"
                "  '{}'::jsonb) FROM image_annotations a WHERE a.image_id = s.image_id) AS annotations"
                " FROM (" + source + ") s JOIN images i ON i.image_id = s.image_id"
                " LEFT JOIN dedup_members m ON m.image_id = s.image_id WHERE s.name = %s ORDER BY s.rank",
                (name,),
            )
            return _dict_rows(cur)

    def selection_info(self, name: str) -> dict | None:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT model, strategy, config, pool_size, created_at, comparison FROM selections WHERE name = %s", (name,)
            ).fetchone()
        if row is None:
            return None
        return {
            "model": row[0],
            "strategy": row[1],
            "config": row[2],
            "pool_size": row[3],
            "created_at": row[4],
            "comparison": row[5],
            "lost": self.lost_items("selection", name),
        }

    def lost_items(self, kind: str, name: str) -> list[dict]:
        """Items of a selection / retrieval set lost since it was last materialized (their image was
        removed), in rank order: rank, image_id, drop_key, source_uri, reason, lost_at."""
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT rank, image_id, drop_key, source_uri, reason, lost_at FROM lost_items"
                " WHERE kind = %s AND name = %s ORDER BY rank",
                (kind, name),
            )
            return _dict_rows(cur)

    # ---- retrieval ---------------------------------------------------------------------------
    def replace_retrieval(self, name: str, model: str, config: dict, results: Sequence[tuple[int, float, str]]) -> int:
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM retrievals WHERE name = %s", (name,))
            conn.execute("DELETE FROM lost_items WHERE kind = 'retrieval' AND name = %s", (name,))
            conn.execute("INSERT INTO retrievals (name, model, config) VALUES (%s, %s, %s)", (name, model, json.dumps(config)))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO retrieval_items (name, rank, image_id, similarity, query_ref) VALUES (%s, %s, %s, %s, %s)",
                    [(name, rank, int(i), float(s), q) for rank, (i, s, q) in enumerate(results, start=1)],
                )
        return len(results)

    def retrieval_config(self, name: str) -> dict | None:
        with self.connection() as conn:
            row = conn.execute("SELECT config FROM retrievals WHERE name = %s", (name,)).fetchone()
        return row[0] if row else None

    def retrieval_items(self, name: str) -> list[dict]:
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT r.rank, r.image_id, r.similarity, r.query_ref, i.source_uri, i.object_key, i.drop_key"
                " FROM retrieval_items r JOIN images i ON i.image_id = r.image_id WHERE r.name = %s ORDER BY r.rank",
                (name,),
            )
            return _dict_rows(cur)

    # ---- report ------------------------------------------------------------------------------
    def report_sample(self, model: str, limit: int, selected_in: str | None = None) -> tuple[EmbeddingSet, np.ndarray]:
        """Up to `limit` kept (non-duplicate) embedded images for the report's map and galleries,
        the selection's images always included, the rest a deterministic pseudo-random sample
        (ordered by a hash of the id, so reports are reproducible). Returns (vectors, selected
        mask)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT e.image_id, e.sha256, e.drop_key, " + _READ_VECTOR_E + ","
                " (s.image_id IS NOT NULL) AS selected FROM embeddings e JOIN images i ON i.image_id = e.image_id"
                " LEFT JOIN dedup_members m ON m.image_id = e.image_id"
                " LEFT JOIN selection_items s ON s.image_id = e.image_id AND s.name = %s"
                " WHERE e.model = %s AND i.status = 'ok' AND (m.image_id IS NULL OR m.is_representative)"
                " ORDER BY (s.image_id IS NULL), hashint8(e.image_id) LIMIT %s",
                (selected_in, model, int(limit)),
            ).fetchall()
        dim = self.model_dim(model)
        vectors = np.stack([r[3].to_numpy() for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        return (
            EmbeddingSet(
                model, np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], vectors, [r[2] for r in rows]
            ),
            np.asarray([bool(r[4]) for r in rows]),
        )

    def kept_count(self, model: str) -> int:
        with self.connection() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM embeddings e LEFT JOIN dedup_members m ON m.image_id = e.image_id"
                    " WHERE e.model = %s AND (m.image_id IS NULL OR m.is_representative)",
                    (model,),
                ).fetchone()[0]
            )

    def quality_flagged(self, flag: str, limit: int) -> tuple[int, list[dict]]:
        """(how many valid images raise quality `flag`, up to `limit` of them with their signals)."""
        from curation_pipeline.resources.filters import flag_condition

        flagged, params = flag_condition(flag)
        with self.connection() as conn:
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM images i WHERE i.status = 'ok' AND {}").format(flagged), params
            ).fetchone()[0]
            cur = conn.execute(
                sql.SQL(
                    "SELECT i.image_id, i.drop_key, i.object_key, i.source_uri, i.width, i.height, i.blur_variance,"
                    " i.brightness, i.contrast, i.aspect_ratio FROM images i WHERE i.status = 'ok' AND {}"
                    " ORDER BY i.drop_key, i.object_key LIMIT %s"
                ).format(flagged),
                [*params, int(limit)],
            )
            return int(count), _dict_rows(cur)

    def corpus_counts(self) -> dict:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM drops), (SELECT count(*) FROM images),"
                " (SELECT count(*) FROM images WHERE status <> 'ok'),"
                " (SELECT count(*) FROM dedup_members WHERE tier = 'exact'),"
                " (SELECT count(*) FROM dedup_members WHERE tier = 'perceptual'),"
                " (SELECT count(*) FROM dedup_members WHERE tier = 'semantic'),"
                " (SELECT count(*) FROM embeddings)"
            ).fetchone()
        keys = ["drops", "images", "failed", "exact_duplicates", "perceptual_duplicates", "semantic_duplicates", "embeddings"]
        return dict(zip(keys, map(int, row)))
