"""Embedding models, the content-addressed embedding cache, publishing a drop's vectors from the
cache, explicit vector writes and reads, embedding failures and the statistics the checks use."""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import psycopg
from psycopg import sql

from .base import READ_VECTOR, READ_VECTOR_E, Repository, one_row, scalar, wire_vector
from .records import STORAGE_TYPES, EmbeddingSet, ModelInfo


def hnsw_index_name(model: str) -> str:
    return "embeddings_hnsw_" + hashlib.sha1(model.encode("utf-8")).hexdigest()[:16]


def model_info(conn, model: str) -> ModelInfo:
    """Dimension and storage of a registered model; LookupError if it has none."""
    row = conn.execute("SELECT dim, storage FROM embedding_models WHERE model = %s", (model,)).fetchone()
    if row is None:
        raise LookupError(f"no embeddings stored for model {model!r}: materialize image_embeddings first")
    return ModelInfo(int(row[0]), row[1])


def hnsw_index_sql(index: str, model: str, dim: int, storage: str, *, if_not_exists: bool = False) -> sql.Composed:
    """The model's partial HNSW index (cosine). CREATE INDEX cannot take bind parameters: the
    predicate is a quoted literal of the validated model id, the name is derived by code, the
    dimension is an int."""
    column, sqltype = STORAGE_TYPES[storage]
    return sql.SQL(
        "CREATE INDEX {exists}{name} ON embeddings USING hnsw (({column}::{sqltype}({dim})) {ops}) WHERE model = {model}"
    ).format(
        exists=sql.SQL("IF NOT EXISTS " if if_not_exists else ""),
        name=sql.Identifier(index),
        column=sql.Identifier(column),
        sqltype=sql.SQL(sqltype),
        dim=sql.Literal(int(dim)),
        ops=sql.SQL(f"{sqltype}_cosine_ops"),
        model=sql.Literal(model),
    )


# ---- publishing: the bulk path ------------------------------------------------------------------
# Below this many new rows a publish is incremental whatever the share: it takes seconds, and a
# rebuild would lock the whole table (every model) for no gain worth having.
BULK_MIN_ROWS = 5_000
# Bulk when the new rows are at least this share of the model's rows after the publish. A rebuild
# indexes every row of the model, but 4-9x faster per row than inserting through the index
# (measured at 10k and 100k rows, benchmarks/publish_scale.py), so it would already pay from a
# share of ~0.2. It also locks the whole table, every model, for the rebuild: at 0.5 it is taken
# only where it is ~2x faster or better overall (a first import, a drop that doubles a model).
BULK_MIN_NEW_SHARE = 0.5
# maintenance_work_mem for a rebuild: enough to keep the whole graph in memory (past it pgvector
# goes on on disk, several times slower), sized from the rows; a parallel build allocates all of
# it up front as shared memory, so it is not simply set high. The cap keeps one publish from
# claiming more memory than a modest server has to spare.
BUILD_MEMORY_MIN_BYTES = 64 * 2**20
BUILD_MEMORY_MAX_BYTES = 8 * 2**30
# Bytes per indexed row beyond the vector itself (element, neighbour lists for m = 16): pgvector
# 0.8 filled 16 MB after 6,064 vector(512) / 9,649 halfvec(512) rows, i.e. ~720 bytes; 1024 leaves
# a margin.
HNSW_BUILD_ROW_OVERHEAD_BYTES = 1024


def build_memory_bytes(rows: int, dim: int, storage: str) -> int:
    """maintenance_work_mem for building the HNSW graph of `rows` vectors in memory."""
    per_row = dim * (2 if storage == "halfvec" else 4) + HNSW_BUILD_ROW_OVERHEAD_BYTES
    return int(min(BUILD_MEMORY_MAX_BYTES, max(BUILD_MEMORY_MIN_BYTES, rows * per_row)))


@dataclass(frozen=True)
class PublishReport:
    """What one publish did: the partition's rows after it, rows inserted and deleted, the path
    ("bulk" or "incremental"), and for a bulk publish the index build's
    seconds, maintenance_work_mem (bytes) and parallel maintenance workers asked for."""

    rows: int
    inserted: int
    deleted: int
    method: str
    build_s: float | None = None
    build_memory_bytes: int | None = None
    build_workers: int | None = None


_PARTITION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('publish:' || %s || ':' || %s))"
_DIFF_DELETE = (
    "DELETE FROM embeddings e WHERE e.drop_key = %s AND e.model = %s AND NOT EXISTS ("
    " SELECT 1 FROM images i WHERE i.image_id = e.image_id AND i.drop_key = e.drop_key"
    " AND i.status = 'ok' AND i.sha256 = e.sha256)"
)
_DIFF_ROWS = (
    " FROM images i JOIN embedding_cache c ON c.model = %s AND c.sha256 = i.sha256"
    " WHERE i.drop_key = %s AND i.status = 'ok'"
    " AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.image_id AND e.model = %s)"
)
_DIFF_INSERT = (
    "INSERT INTO embeddings (image_id, model, drop_key, sha256, embedding, embedding_half)"
    " SELECT i.image_id, c.model, i.drop_key, i.sha256, c.embedding, c.embedding_half" + _DIFF_ROWS
)


def _partition_rows(conn, drop_key: str, model: str) -> int:
    return int(scalar(conn.execute("SELECT count(*) FROM embeddings WHERE drop_key = %s AND model = %s", (drop_key, model))))


def _bulk_share(pending: int, existing: int) -> bool:
    return pending >= BULK_MIN_ROWS and pending >= BULK_MIN_NEW_SHARE * (pending + existing)


def _pending_and_existing(conn, drop_key: str, model: str) -> tuple[int, int]:
    """(rows the diff would insert, the model's rows now)."""
    pending = int(scalar(conn.execute("SELECT count(*)" + _DIFF_ROWS, (model, drop_key, model))))
    return pending, int(scalar(conn.execute("SELECT count(*) FROM embeddings WHERE model = %s", (model,))))


def _bulk_pays(conn, drop_key: str, model: str) -> bool:
    """Whether a rebuild beats inserting through the index, from counts made without locks (the
    bulk path checks again under them). Counting the model's rows stops as soon as there are too
    many for a rebuild to pay, so a small drop into a large corpus does not scan the corpus."""
    pending = int(scalar(conn.execute("SELECT count(*)" + _DIFF_ROWS, (model, drop_key, model))))
    if pending < BULK_MIN_ROWS:
        return False
    limit = math.floor(pending * (1 - BULK_MIN_NEW_SHARE) / BULK_MIN_NEW_SHARE) + 1
    existing = int(
        scalar(conn.execute("SELECT count(*) FROM (SELECT 1 FROM embeddings WHERE model = %s LIMIT %s) s", (model, limit)))
    )
    return _bulk_share(pending, existing)


class CacheWriter:
    """Appends (sha256 -> vector) rows to the embedding cache, one committed batch at a time
    (binary COPY into a temp table, then INSERT ... ON CONFLICT DO NOTHING so concurrent drops
    sharing content never collide). The temp table lives as long as the writer's connection
    holds it: the pool drops it when the connection is returned (database._reset_pooled)."""

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


class EmbeddingRepository(Repository):
    # ---- models ------------------------------------------------------------------------------
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
            conn.execute(hnsw_index_sql(index_name, model, dim, storage, if_not_exists=True))

    def model_info(self, model: str) -> ModelInfo:
        """Dimension and storage of a registered model."""
        with self.connection() as conn:
            return model_info(conn, model)

    def model_dim(self, model: str) -> int:
        return self.model_info(model).dim

    def embedding_count(self, model: str) -> int:
        with self.connection() as conn:
            return int(scalar(conn.execute("SELECT count(*) FROM embeddings WHERE model = %s", (model,))))

    # ---- cache -------------------------------------------------------------------------------
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
            return _valid_image_count(conn, drop_key)

    @contextmanager
    def cache_writer(self, model: str, storage: str = "vector") -> Iterator[CacheWriter]:
        with self.connection() as conn:
            yield CacheWriter(conn, model, storage)

    # ---- a drop's rows -----------------------------------------------------------------------
    def publish_embeddings(self, drop_key: str, model: str, *, method: str = "auto") -> int:
        """Make the drop's rows for `model` exactly one per valid image whose content is cached;
        returns the partition's row count. See publish_embeddings_report."""
        return self.publish_embeddings_report(drop_key, model, method=method).rows

    def publish_embeddings_report(self, drop_key: str, model: str, *, method: str = "auto") -> PublishReport:
        """Make the drop's rows for `model` exactly one per valid image whose content is cached,
        entirely server-side (no vectors cross the wire). Applied as a diff: rows whose image
        vanished, failed or changed content go, missing rows come from the cache, rows already
        right are left alone (cached vectors never change for a model), so a re-run neither
        rewrites the table nor churns the HNSW index.

        method "incremental": one transaction that inserts through the model's HNSW index (each row
        is a graph search: ~1,000 rows/s into a small index, slower as it grows). "bulk": one
        transaction that drops the model's index, inserts, and rebuilds it (parallel maintenance
        workers, the graph in memory); it holds an ACCESS EXCLUSIVE lock on `embeddings` until it
        commits, so every read and write of the table, any model, waits for the rebuild. A crash
        or error anywhere rolls all of it back: the old rows and the old index stay. "auto": bulk
        when the new rows are at least BULK_MIN_NEW_SHARE of the model's rows and at least
        BULK_MIN_ROWS, else incremental; decided again under the locks, so a re-run or a loser
        of a race never rebuilds an index for nothing. Either way the partition has one visible
        state: before or after the publish, never part of it.

        Inserting over several connections at once (each its own transaction, so a partition could
        be seen half published) was measured and left out: on 2 cores it was 1.0-2.0x one backend,
        no consistent gain (benchmarks/publish_scale.py)."""
        if method not in ("auto", "incremental", "bulk"):
            raise ValueError(f"method must be auto, incremental or bulk, got {method!r}")
        with self.connection() as conn:
            info = model_info(conn, model)
            bulk = method == "bulk" or (method == "auto" and _bulk_pays(conn, drop_key, model))
        if bulk:
            report = self._publish_bulk(drop_key, model, info, forced=method == "bulk")
        else:
            report = self._publish_incremental(drop_key, model)
        self.refresh_statistics("embeddings")
        return report

    def _publish_incremental(self, drop_key: str, model: str) -> PublishReport:
        with self.connection() as conn, conn.transaction():
            conn.execute(_PARTITION_LOCK, (drop_key, model))
            deleted = conn.execute(_DIFF_DELETE, (drop_key, model)).rowcount
            inserted = conn.execute(_DIFF_INSERT, (model, drop_key, model)).rowcount
            rows = _partition_rows(conn, drop_key, model)
        return PublishReport(rows, inserted, deleted, "incremental")

    def _publish_bulk(self, drop_key: str, model: str, info: ModelInfo, *, forced: bool) -> PublishReport:
        index = hnsw_index_name(model)
        with self.connection() as conn, conn.transaction():
            conn.execute(_PARTITION_LOCK, (drop_key, model))
            # The strongest lock first, before any other lock on the table: two bulk publishes
            # (two drops of one model) then queue here instead of deadlocking on a lock upgrade.
            conn.execute("LOCK TABLE embeddings IN ACCESS EXCLUSIVE MODE")
            deleted = conn.execute(_DIFF_DELETE, (drop_key, model)).rowcount
            pending, existing = _pending_and_existing(conn, drop_key, model)
            if not forced and not _bulk_share(pending, existing):
                # another publish got there first (or this one is a re-run): insert what is left
                inserted = conn.execute(_DIFF_INSERT, (model, drop_key, model)).rowcount
                return PublishReport(_partition_rows(conn, drop_key, model), inserted, deleted, "incremental")
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index)))
            inserted = conn.execute(_DIFF_INSERT, (model, drop_key, model)).rowcount
            memory = build_memory_bytes(existing + inserted, info.dim, info.storage)
            conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(f"{memory // 1024}kB")))
            build_workers = int(scalar(conn.execute("SELECT current_setting('max_parallel_maintenance_workers')::int")))
            t0 = time.perf_counter()
            try:
                with conn.transaction():  # a savepoint: a failed parallel build is retried serially
                    conn.execute(hnsw_index_sql(index, model, info.dim, info.storage))
            except psycopg.errors.InsufficientResources:
                # A parallel build keeps its graph in dynamic shared memory (/dev/shm), which a
                # container may give only 64 MB: the serial build keeps it in backend memory.
                conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
                build_workers = 0
                conn.execute(hnsw_index_sql(index, model, info.dim, info.storage))
            build_s = time.perf_counter() - t0
            rows = _partition_rows(conn, drop_key, model)
        return PublishReport(rows, inserted, deleted, "bulk", build_s, memory, build_workers)

    def replace_embeddings(self, drop_key: str, emb: EmbeddingSet) -> int:
        """Write explicit vectors for a partition (delete + binary COPY, one transaction)."""
        with self.connection() as conn, conn.transaction():
            info = model_info(conn, emb.model)
            conn.execute("DELETE FROM embeddings WHERE drop_key = %s AND model = %s", (drop_key, emb.model))
            with (
                conn.cursor() as cur,
                cur.copy(
                    sql.SQL("COPY embeddings (image_id, model, drop_key, sha256, {}) FROM STDIN WITH (FORMAT BINARY)").format(
                        sql.Identifier(info.column)
                    )
                ) as copy,
            ):
                copy.set_types(["int8", "text", "text", "text", info.sqltype])
                for image_id, h, vec in zip(emb.image_ids.tolist(), emb.sha256, emb.vectors):
                    copy.write_row((image_id, emb.model, drop_key, h, wire_vector(vec, info.storage)))
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
                "SELECT image_id, sha256, drop_key, " + READ_VECTOR + " FROM embeddings"
                " WHERE drop_key = ANY(%s) AND model = %s ORDER BY drop_key, image_id",
                (list(drop_keys), model),
            ).fetchall()
            dim = len(rows[0][3].to_numpy()) if rows else model_info(conn, model).dim
        return EmbeddingSet.from_rows(model, rows, dim)

    def vectors_for(self, image_ids: Sequence[int], model: str) -> dict[int, np.ndarray]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, " + READ_VECTOR + " FROM embeddings WHERE image_id = ANY(%s) AND model = %s",
                (list(map(int, image_ids)), model),
            ).fetchall()
        return {int(i): np.asarray(v.to_numpy(), dtype=np.float32) for i, v in rows}

    def vectors_for_images(self, image_ids: Sequence[int], model: str) -> np.ndarray:
        """(len(image_ids), dim) vectors in the given order; raises if any has no vector."""
        got = self.vectors_for(list(image_ids), model)
        missing = [i for i in image_ids if i not in got]
        if missing:
            raise ValueError(f"{len(missing)} query images have no {model} vector (first: image id {missing[0]})")
        return np.stack([got[i] for i in image_ids]) if image_ids else np.zeros((0, self.model_dim(model)), np.float32)

    def embedded_sample(self, model: str, limit: int, seed: int = 0) -> tuple[list[int], list[str], np.ndarray]:
        """A seeded sample of at most `limit` distinct contents that have a `model` vector (any drop):
        (image ids, source URIs, (n, dim) vectors), one image per content."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, source_uri, vec FROM ("
                " SELECT DISTINCT ON (e.sha256) e.image_id, i.source_uri, " + READ_VECTOR_E + " AS vec, e.sha256"
                " FROM embeddings e JOIN images i ON i.image_id = e.image_id WHERE e.model = %s"
                " ORDER BY e.sha256, e.image_id) d ORDER BY md5(d.sha256 || %s::text) LIMIT %s",
                (model, str(seed), int(limit)),
            ).fetchall()
            dim = len(rows[0][2].to_numpy()) if rows else model_info(conn, model).dim
        vectors = np.stack([r[2].to_numpy() for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        return [int(r[0]) for r in rows], [r[1] for r in rows], vectors

    # ---- failures and statistics -------------------------------------------------------------
    def replace_embedding_failures(self, drop_key: str, model: str, failures: Sequence[tuple[int, str]]) -> None:
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM embedding_failures WHERE drop_key = %s AND model = %s", (drop_key, model))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO embedding_failures (image_id, model, drop_key, error) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (image_id, model) DO UPDATE SET error = EXCLUDED.error",
                    [(int(i), model, drop_key, err) for i, err in failures],
                )

    def embedding_stats(self, drop_key: str, model: str) -> dict:
        """What the embedding checks assert on, computed by PostgreSQL from the stored rows."""
        with self.connection() as conn:
            row = one_row(
                conn.execute(
                    "SELECT count(*), min(vector_dims(" + READ_VECTOR + ")), max(vector_dims(" + READ_VECTOR + ")),"
                    " coalesce(max(abs(vector_norm(" + READ_VECTOR + ") - 1)), 0),"
                    " count(*) - count(DISTINCT image_id)"
                    " FROM embeddings WHERE drop_key = %s AND model = %s",
                    (drop_key, model),
                )
            )
            failures = scalar(
                conn.execute("SELECT count(*) FROM embedding_failures WHERE drop_key = %s AND model = %s", (drop_key, model))
            )
            valid = _valid_image_count(conn, drop_key)
        return {
            "rows": int(row[0]),
            "min_dim": row[1],
            "max_dim": row[2],
            "max_norm_error": float(row[3]),
            "duplicate_rows": int(row[4]),
            "failures": int(failures),
            "valid_images": valid,
        }

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


def _valid_image_count(conn, drop_key: str) -> int:
    return int(scalar(conn.execute("SELECT count(*) FROM images WHERE drop_key = %s AND status = 'ok'", (drop_key,))))
