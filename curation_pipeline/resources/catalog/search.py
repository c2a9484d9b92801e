"""Vector search over the models' partial HNSW indexes: top-k lookups for dedup (`nearest`),
filtered retrieval (`search`), and the nearest-neighbour sample the report shows. The HNSW
session settings are made in one place, hnsw_lookup_settings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
from psycopg import sql

from .base import READ_VECTOR, Repository, wire_vector
from .embeddings import model_info

if TYPE_CHECKING:
    from curation_pipeline.resources.filters import Predicate


def hnsw_lookup_settings(conn, ef_search: int, k: int, *, prefer_index: bool = True) -> None:
    """Settings for one transaction of top-k HNSW lookups (SET LOCAL: they end with it, and a
    pooled connection never carries them to its next user).

    ef_search is at least k (an HNSW scan returns at most ef_search rows) and at most pgvector's
    1000; relaxed_order lets a filtered scan keep walking the graph until k rows pass.

    prefer_index: the planner prices a 512-d distance like any operator call, so below ~100k rows
    it prefers computing every distance and sorting (measured: 50 ms instead of ~1 ms per lookup at
    13k rows, even with fresh statistics; 382 s instead of 14 s for one drop's dedup in
    benchmarks/dedup_scale.py). `nearest` is the HNSW path by design and turns the sort off.
    `search` deliberately does not (prefer_index=False): it runs a handful of queries with
    arbitrary metadata filters, and a selective filter makes the exact scan-and-sort the better
    plan, which the planner then picks (3k rows of 256-d, a filter passing 0.5%: 1.1 ms exact
    against 9.6 ms with the index forced, which walks the graph for rows that pass). Unfiltered,
    or at 20k rows, it picks the index either way; and an exact answer is never worse for a
    retrieval set."""
    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(int(min(1000, max(ef_search, k))))))
    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
    if prefer_index:
        conn.execute("SET LOCAL enable_sort = off")


def nearest_statement(conn, model: str):
    """(statement, dim, storage) of the top-k query for `model`: see SearchRepository.nearest_statement."""
    info = model_info(conn, model)
    stmt = sql.SQL(
        "SELECT image_id, 1 - ({col}::{t}({dim}) <=> %s::{t}({dim})) AS sim FROM embeddings"
        " WHERE model = {model} AND (%s::text[] IS NULL OR drop_key = ANY(%s::text[]))"
        " ORDER BY {col}::{t}({dim}) <=> %s::{t}({dim}) LIMIT %s"
    ).format(col=sql.Identifier(info.column), t=sql.SQL(info.sqltype), dim=sql.Literal(info.dim), model=sql.Literal(model))
    return stmt, info.dim, info.storage


def _search_statement(info, model: str, join_sql, where_sql, *, exact: bool) -> sql.Composed:
    # "+ 0" keeps the ORDER BY from matching the index: the exact fallback scans every row
    order = "({col}::{t}({dim}) <=> %s::{t}({dim}))" + (" + 0" if exact else "")
    return sql.SQL(
        "SELECT e.image_id, 1 - ({col}::{t}({dim}) <=> %s::{t}({dim})) AS sim"
        " FROM embeddings e WHERE e.model = {model} AND (%s::text[] IS NULL OR e.drop_key = ANY(%s::text[]))"
        " AND EXISTS (SELECT 1 FROM images i {joins} WHERE i.image_id = e.image_id AND i.status = 'ok'{where})"
        " ORDER BY " + order + " LIMIT %s"
    ).format(
        col=sql.Identifier(info.column),
        t=sql.SQL(info.sqltype),
        dim=sql.Literal(info.dim),
        model=sql.Literal(model),
        joins=join_sql,
        where=where_sql,
    )


class SearchRepository(Repository):
    def nearest_statement(self, model: str):
        """(statement, dim, storage) of the top-k query for `model`. Parameters: query vector, drop
        keys (twice), query vector, k. Its ORDER BY expression and model predicate must match the
        model's partial HNSW index (a test EXPLAINs exactly this statement). The model id is a
        quoted literal (a validated id from the registry, as in the index predicate) so that even
        the generic plan of the prepared statement matches the partial index and thousands of
        lookups are not re-planned one by one."""
        with self.connection() as conn:
            return nearest_statement(conn, model)

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
        keys = list(drop_keys) if drop_keys is not None else None
        out: list[list[tuple[int, float]]] = []
        with self.connection() as conn:
            info = model_info(conn, model)
            if q.shape[1] != info.dim:
                raise ValueError(f"query vectors have dimension {q.shape[1]} but model {model!r} has {info.dim}")
            if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
                raise ValueError(f"min_similarity is a cosine similarity in [-1, 1], got {min_similarity}")
            join_sql, where_sql, join_params, where_params = compile_filters(predicates, exclude_flags)
            approx = _search_statement(info, model, join_sql, where_sql, exact=False)
            exact = _search_statement(info, model, join_sql, where_sql, exact=True)
            with conn.transaction():
                hnsw_lookup_settings(conn, ef_search, k, prefer_index=False)
                for row in q:
                    wire = wire_vector(row, info.storage)
                    params = (wire, keys, keys, *join_params, *where_params, wire, int(k))
                    hits = conn.execute(approx, params).fetchall()
                    if len(hits) < k:  # the index scan gave up before k rows passed the filters: ask exactly
                        hits = conn.execute(exact, params).fetchall()
                    ranked = sorted(((int(i), float(s)) for i, s in hits), key=lambda t: (-t[1], t[0]))
                    out.append([h for h in ranked if min_similarity is None or h[1] >= min_similarity])
        return out

    def nearest_neighbour_sample(self, model: str, limit: int = 2000) -> list[tuple[int, int, float]]:
        """(image_id, nearest other image_id, cosine) for a deterministic sample of up to `limit`
        images of `model` (hash order, not the first rows), through the HNSW index."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, " + READ_VECTOR + " FROM embeddings WHERE model = %s ORDER BY md5(image_id::text) LIMIT %s",
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
