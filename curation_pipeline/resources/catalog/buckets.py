"""Coarse k-means buckets of a model's vectors (dedup's exact safety net, core.buckets): the
centroid set per model, each drop's packed per-bucket chunks, and reading the probed buckets back
as one concatenated value per bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .base import READ_VECTOR, Repository, scalar


@dataclass(frozen=True)
class BucketModel:
    """A model's current centroid set."""

    model: str
    version: int
    centroids: np.ndarray  # (n_buckets, dim) float32 unit
    trained_rows: int

    @property
    def n_buckets(self) -> int:
        return len(self.centroids)


class BucketRepository(Repository):
    def bucket_model(self, model: str) -> BucketModel | None:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT version, n_buckets, dim, trained_rows, centroids FROM vector_bucket_models WHERE model = %s", (model,)
            ).fetchone()
        if row is None:
            return None
        version, k, dim, trained, blob = row
        centroids = np.frombuffer(bytes(blob), dtype="<f4").reshape(int(k), int(dim)).astype(np.float32)
        return BucketModel(model, int(version), centroids, int(trained))

    def save_bucket_model(self, model: str, centroids: np.ndarray, trained_rows: int) -> BucketModel:
        """Store a new centroid set for `model` (version + 1): every drop's chunks become stale
        until they are rebuilt against it."""
        c = np.ascontiguousarray(centroids, dtype="<f4")
        with self.connection() as conn, conn.transaction():
            version = int(
                scalar(
                    conn.execute(
                        "INSERT INTO vector_bucket_models (model, version, n_buckets, dim, trained_rows, centroids)"
                        " VALUES (%s, 1, %s, %s, %s, %s) ON CONFLICT (model) DO UPDATE SET"
                        " version = vector_bucket_models.version + 1, n_buckets = EXCLUDED.n_buckets, dim = EXCLUDED.dim,"
                        " trained_rows = EXCLUDED.trained_rows, centroids = EXCLUDED.centroids, trained_at = now()"
                        " RETURNING version",
                        (model, int(c.shape[0]), int(c.shape[1]), int(trained_rows), c.tobytes()),
                    )
                )
            )
        return BucketModel(model, version, c.astype(np.float32), int(trained_rows))

    def bucketed_drops(self, model: str, version: int) -> set[str]:
        """Drops whose chunks for `model` were all assigned with centroid `version`."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT drop_key FROM vector_buckets WHERE model = %s GROUP BY drop_key HAVING min(version) = %s"
                " AND max(version) = %s",
                (model, int(version), int(version)),
            ).fetchall()
        return {r[0] for r in rows}

    def replace_drop_buckets(
        self, model: str, drop_key: str, version: int, buckets: np.ndarray, image_ids: np.ndarray, vectors: np.ndarray
    ) -> int:
        """Replace the drop's chunks for `model`: rows grouped by bucket (buckets (n,) ints,
        image_ids (n,), vectors (n, d) stored as float16). One transaction. Returns chunks written."""
        b = np.asarray(buckets, dtype=np.int64)
        ids = np.asarray(image_ids, dtype="<i8")
        v = np.asarray(vectors, dtype="<f2")
        order = np.argsort(b, kind="stable")
        b, ids, v = b[order], ids[order], v[order]
        starts = np.r_[0, np.flatnonzero(b[1:] != b[:-1]) + 1] if len(b) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(b)] if len(b) else np.zeros(0, np.int64)
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM vector_buckets WHERE model = %s AND drop_key = %s", (model, drop_key))
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY vector_buckets (model, drop_key, bucket, version, members, image_ids, vectors) FROM STDIN"
                    " WITH (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["text", "text", "int4", "int4", "int4", "bytea", "bytea"])
                for s, e in zip(starts.tolist(), ends.tolist()):
                    copy.write_row(
                        (
                            model,
                            drop_key,
                            int(b[s]),
                            int(version),
                            e - s,
                            ids[s:e].tobytes(),
                            np.ascontiguousarray(v[s:e]).tobytes(),
                        )
                    )
        return len(starts)

    def bucket_chunks(
        self, model: str, version: int, buckets: Sequence[int], drop_keys: Sequence[str], dim: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(bucket, image ids (r,) int64, vectors (r, dim) float16) for each of `buckets` that has
        members in `drop_keys`, every drop's chunk of a bucket concatenated by the server, one row
        per bucket streamed from a server-side cursor (memory: one bucket at a time)."""
        with self.connection() as conn, conn.transaction():
            with conn.cursor(name="bucket_chunks") as cur:
                cur.itersize = 16
                cur.execute(
                    "SELECT bucket, string_agg(image_ids, ''::bytea ORDER BY drop_key),"
                    " string_agg(vectors, ''::bytea ORDER BY drop_key) FROM vector_buckets"
                    " WHERE model = %s AND version = %s AND bucket = ANY(%s) AND drop_key = ANY(%s)"
                    " GROUP BY bucket ORDER BY bucket",
                    (model, int(version), [int(x) for x in buckets], list(drop_keys)),
                )
                for bucket, ids, vecs in cur:
                    yield (
                        int(bucket),
                        np.frombuffer(bytes(ids), dtype="<i8").astype(np.int64),
                        np.frombuffer(bytes(vecs), dtype="<f2").reshape(-1, dim),
                    )

    def drop_vectors(self, drop_key: str, model: str, *, batch_rows: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The drop's (image ids (r,) int64, vectors (r, d) float32) for `model`, in batches from a
        server-side cursor (a million-row drop never sits in memory as Python objects)."""
        with self.connection() as conn, conn.transaction():
            with conn.cursor(name="drop_vectors") as cur:
                cur.itersize = batch_rows
                cur.execute(
                    "SELECT image_id, " + READ_VECTOR + " FROM embeddings WHERE drop_key = %s AND model = %s",
                    (drop_key, model),
                )
                while True:
                    rows = cur.fetchmany(batch_rows)
                    if not rows:
                        return
                    yield (
                        np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                        np.stack([r[1].to_numpy() for r in rows]).astype(np.float32),
                    )

    def vector_sample(self, model: str, limit: int, *, seed: int = 0) -> np.ndarray:
        """About `limit` of the model's vectors (n, d) float32, a seeded Bernoulli sample of the
        table's rows (no sort of a million vectors, unlike an ORDER BY random() sample)."""
        with self.connection() as conn:
            rows_all = int(scalar(conn.execute("SELECT count(*) FROM embeddings")))
            share = min(100.0, 100.0 * 1.3 * limit / max(rows_all, 1))
            rows = conn.execute(
                "SELECT " + READ_VECTOR + " FROM embeddings TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s)"
                " WHERE model = %s LIMIT %s",
                (share, int(seed), model, int(limit)),
            ).fetchall()
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack([r[0].to_numpy() for r in rows]).astype(np.float32)

    def representative_ids(self, drop_keys: Sequence[str]) -> np.ndarray:
        """Sorted int64 ids of the published representatives in the given drops."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id FROM dedup_members WHERE is_representative AND drop_key = ANY(%s) ORDER BY image_id",
                (list(drop_keys),),
            ).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)
