"""Named sets of images and what they are built from and read by: the selection pool,
annotations, selections, retrievals, items lost when images go, export rows and the samples and
counts the report shows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

import numpy as np
from psycopg import sql

from .base import READ_VECTOR_E, Repository, dict_rows, one_row, scalar
from .embeddings import model_info
from .records import EmbeddingSet, LostItem, SelectionInfo

if TYPE_CHECKING:
    from curation_pipeline.resources.filters import Predicate

# Rows of a kept image: valid, embedded, and not a duplicate of another image.
_KEPT = "i.status = 'ok' AND (m.image_id IS NULL OR m.is_representative)"


class SetRepository(Repository):
    # ---- selection pool ----------------------------------------------------------------------
    def selection_pool(
        self,
        model: str,
        drop_keys: Sequence[str] | None = None,
        *,
        predicates: Sequence["Predicate"] = (),
        exclude_flags: Sequence[str] = (),
        columns: Sequence[str] = (),
        fetch_rows: int = 10_000,
    ) -> tuple[EmbeddingSet, dict[str, np.ndarray]]:
        """Valid, embedded images of unprotected drops that are not duplicates of another image and pass the filters,
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
            "SELECT e.image_id, e.sha256, e.drop_key, " + READ_VECTOR_E + "{meta} FROM embeddings e"
            " JOIN images i ON i.image_id = e.image_id"
            " LEFT JOIN dedup_members m ON m.image_id = e.image_id {joins} {extra}"
            " WHERE e.model = %s AND " + _KEPT + " AND (%s::text[] IS NULL OR e.drop_key = ANY(%s::text[]))"
            # a protected drop (a test or evaluation set) never enters a subset
            " AND NOT EXISTS (SELECT 1 FROM drops pd WHERE pd.drop_key = e.drop_key AND pd.protected){where}"
            " ORDER BY e.image_id"
        ).format(meta=select_meta, joins=join_sql, extra=extra_join_sql, where=where_sql)
        params = [*join_params, *extra_params, model, keys, keys, *where_params]
        with self.connection() as conn, conn.transaction():
            dim = model_info(conn, model).dim
            # an upper bound on the pool: the vectors stream into one preallocated matrix (pages past
            # the pool's end are never touched, so never resident) instead of a list of a million
            # row objects stacked into a second copy
            bound = int(scalar(conn.execute("SELECT count(*) FROM embeddings WHERE model = %s", (model,))))
            vectors = np.empty((bound, dim), dtype=np.float32)
            ids = np.empty(bound, dtype=np.int64)
            sha256: list[str] = []
            drops: list[str] = []
            meta_cols: list[list] = [[] for _ in columns]
            n = 0
            with conn.cursor(name="selection_pool") as cur:
                cur.itersize = fetch_rows
                cur.execute(query, params)
                while batch := cur.fetchmany(fetch_rows):
                    for r in batch:
                        if n == bound:  # rows embedded since the count: grow (rare)
                            vectors = np.concatenate([vectors, np.empty((max(1024, bound // 4), dim), np.float32)])
                            ids = np.concatenate([ids, np.empty(len(vectors) - bound, np.int64)])
                            bound = len(vectors)
                        ids[n] = r[0]
                        vectors[n] = r[3].to_numpy()
                        sha256.append(r[1])
                        drops.append(r[2])
                        for j, col in enumerate(meta_cols):
                            col.append(r[4 + j])
                        n += 1
        pool = EmbeddingSet(model, ids[:n].copy(), sha256, vectors[:n], drops)
        meta = {c: np.asarray(meta_cols[j], dtype=object) for j, c in enumerate(columns)}
        return pool, meta

    # ---- annotations -------------------------------------------------------------------------
    def annotation_names(self) -> list[str]:
        with self.connection() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT name FROM image_annotations ORDER BY name").fetchall()]

    def annotation_values(self, name: str, image_ids: Sequence[int]) -> np.ndarray:
        """(n,) float64 of annotation `name` for `image_ids` (NaN where missing or not numeric)."""
        with self.connection() as conn:
            rows: dict[int, float | None] = dict(
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

    # ---- selections --------------------------------------------------------------------------
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
        score_values: list[float | None] = list(scores) if scores is not None else [None] * n
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
                        for rank, (i, d, s, r, g) in enumerate(
                            zip(image_ids, distances, score_values, reasons, groups), start=1
                        )
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
            return dict_rows(cur)

    def latest_selection_name(self) -> str | None:
        """The most recently materialized selection's name, if any."""
        with self.connection() as conn:
            row = conn.execute("SELECT name FROM selections ORDER BY created_at DESC, name LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    def selection_info(self, name: str) -> SelectionInfo | None:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT model, strategy, config, pool_size, created_at, comparison FROM selections WHERE name = %s", (name,)
            ).fetchone()
            if row is None:
                return None
            lost = _lost_items(conn, "selection", name)
        model, strategy, config, pool_size, created_at, comparison = row
        return SelectionInfo(name, model, strategy, config, pool_size, created_at, comparison, lost)

    def selected_duplicates(self, name: str) -> int:
        """Selected images that are duplicates of another image (should be 0)."""
        with self.connection() as conn:
            return int(
                scalar(
                    conn.execute(
                        "SELECT count(*) FROM selection_items s JOIN dedup_members m ON m.image_id = s.image_id"
                        " WHERE s.name = %s AND NOT m.is_representative",
                        (name,),
                    )
                )
            )

    def lost_items(self, kind: str, name: str) -> list[LostItem]:
        """Items of a selection / retrieval set lost since it was last materialized (their image was
        removed), in rank order: rank, image_id, drop_key, source_uri, reason, lost_at."""
        with self.connection() as conn:
            return _lost_items(conn, kind, name)

    # ---- retrievals --------------------------------------------------------------------------
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
            return dict_rows(cur)

    # ---- exports -----------------------------------------------------------------------------
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
            return dict_rows(cur)

    # ---- report samples and counts -----------------------------------------------------------
    def report_sample(self, model: str, limit: int, selected_in: str | None = None) -> tuple[EmbeddingSet, np.ndarray]:
        """Up to `limit` kept (non-duplicate) embedded images for the report's map and galleries,
        the selection's images always included, the rest a deterministic pseudo-random sample
        (ordered by a hash of the id, so reports are reproducible). Returns (vectors, selected
        mask)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT e.image_id, e.sha256, e.drop_key, " + READ_VECTOR_E + ","
                " (s.image_id IS NOT NULL) AS selected FROM embeddings e JOIN images i ON i.image_id = e.image_id"
                " LEFT JOIN dedup_members m ON m.image_id = e.image_id"
                " LEFT JOIN selection_items s ON s.image_id = e.image_id AND s.name = %s"
                " WHERE e.model = %s AND " + _KEPT + " ORDER BY (s.image_id IS NULL), hashint8(e.image_id) LIMIT %s",
                (selected_in, model, int(limit)),
            ).fetchall()
            dim = model_info(conn, model).dim
        return EmbeddingSet.from_rows(model, rows, dim), np.asarray([bool(r[4]) for r in rows])

    def kept_count(self, model: str) -> int:
        with self.connection() as conn:
            return int(
                scalar(
                    conn.execute(
                        "SELECT count(*) FROM embeddings e LEFT JOIN dedup_members m ON m.image_id = e.image_id"
                        " WHERE e.model = %s AND (m.image_id IS NULL OR m.is_representative)",
                        (model,),
                    )
                )
            )

    def quality_flagged(self, flag: str, limit: int) -> tuple[int, list[dict]]:
        """(how many valid images raise quality `flag`, up to `limit` of them with their signals)."""
        from curation_pipeline.resources.filters import flag_condition, quality_signal_columns

        flagged, params = flag_condition(flag)
        with self.connection() as conn:
            count = scalar(
                conn.execute(sql.SQL("SELECT count(*) FROM images i WHERE i.status = 'ok' AND {}").format(flagged), params)
            )
            cur = conn.execute(
                sql.SQL(
                    "SELECT i.image_id, i.drop_key, i.object_key, i.source_uri, {} FROM images i"
                    " WHERE i.status = 'ok' AND {} ORDER BY i.drop_key, i.object_key LIMIT %s"
                ).format(quality_signal_columns(), flagged),
                [*params, int(limit)],
            )
            return int(count), dict_rows(cur)

    def corpus_counts(self) -> dict:
        with self.connection() as conn:
            row = one_row(
                conn.execute(
                    "SELECT (SELECT count(*) FROM drops), (SELECT count(*) FROM images),"
                    " (SELECT count(*) FROM images WHERE status <> 'ok'),"
                    " (SELECT count(*) FROM dedup_members WHERE tier = 'exact'),"
                    " (SELECT count(*) FROM dedup_members WHERE tier = 'perceptual'),"
                    " (SELECT count(*) FROM dedup_members WHERE tier = 'semantic'),"
                    " (SELECT count(*) FROM embeddings)"
                )
            )
        keys = ["drops", "images", "failed", "exact_duplicates", "perceptual_duplicates", "semantic_duplicates", "embeddings"]
        return dict(zip(keys, map(int, row)))


def _lost_items(conn, kind: str, name: str) -> list[LostItem]:
    rows = conn.execute(
        "SELECT rank, image_id, drop_key, source_uri, reason, lost_at FROM lost_items"
        " WHERE kind = %s AND name = %s ORDER BY rank",
        (kind, name),
    ).fetchall()
    return [LostItem(*row) for row in rows]
