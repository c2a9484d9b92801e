"""Coarse k-means buckets over a model's unit vectors, and the exact re-check of new vectors inside
their nearest buckets (an IVF-flat scan done in numpy). Numbers in, numbers out.

Why: the HNSW graph answers most near-duplicate lookups, but its recall falls as the corpus grows
(benchmarks/dedup_scale.py: 0.898 at 1M vectors at the default beam). A duplicate of a corpus image
lies next to it, so it falls in the same bucket as its original unless the original sits on a
bucket border; probing the few nearest buckets and computing every similarity inside them exactly
finds it whatever the graph looks like. The cost per new vector is `probes * rows / buckets`
dot products, and reading the probed buckets once per drop."""

from __future__ import annotations

from typing import Iterable

import numpy as np

SINGLE_BUCKET_BELOW = 4096
TRAIN_SAMPLES_PER_BUCKET = 40  # smaller corpora are one bucket: the re-check is exact brute force
MAX_BUCKETS = 8192


def bucket_count(rows: int) -> int:
    """Buckets for a corpus of `rows` vectors: about sqrt(rows), which balances the centroid scan
    (one product per bucket) against the scan inside the probed buckets (rows / buckets each)."""
    if rows < SINGLE_BUCKET_BELOW:
        return 1
    return int(min(MAX_BUCKETS, round(np.sqrt(rows))))


def train_centroids(sample: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """(k, d) float32 unit centroids from a sample of unit vectors (n, d). k = 1 is the mean direction."""
    x = np.asarray(sample, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("train_centroids: empty sample")
    if k <= 1 or len(x) <= k:
        centre = x.mean(axis=0, keepdims=True)
        if k > 1:  # fewer samples than buckets: each sample is a centroid
            centre = x.copy()
        return _unit(centre)
    from sklearn.cluster import MiniBatchKMeans

    # buckets only need to be stable neighbourhoods, not the best clustering: one mini-batch init
    # with few passes trains 1,000 buckets on 50k samples in seconds (full Lloyd takes minutes)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=max(4096, 4 * k), n_init=1, max_iter=20)
    km.fit(x)
    return _unit(km.cluster_centers_.astype(np.float32))


def nearest_buckets(vectors: np.ndarray, centroids: np.ndarray, probes: int = 1, *, chunk_rows: int = 16_384) -> np.ndarray:
    """(n, p) int32: for each unit vector its `probes` most similar centroids, most similar first."""
    x = np.asarray(vectors, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    p = max(1, min(int(probes), len(c)))
    out = np.empty((len(x), p), dtype=np.int32)
    for start in range(0, len(x), chunk_rows):
        sims = x[start : start + chunk_rows] @ c.T
        if p < len(c):
            top = np.argpartition(-sims, p - 1, axis=1)[:, :p]
        else:
            top = np.broadcast_to(np.arange(len(c)), sims.shape).copy()
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk_rows] = np.take_along_axis(top, order, axis=1)
    return out


def recheck_pairs(
    queries: np.ndarray,
    probe: np.ndarray,
    buckets: Iterable[tuple[int, np.ndarray, np.ndarray]],
    min_cosine: float,
    *,
    keep: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact similarities of each query against every member of the buckets it probes.

    queries (m, d) unit vectors; probe (m, p) bucket ids per query (nearest_buckets); buckets yields
    (bucket id, member ids (r,) int64, member vectors (r, d)) once per bucket (any float dtype; a
    bucket nobody probes is skipped). Returns (query row, member id, cosine) arrays of the hits with
    cosine >= min_cosine, at most `keep` per query (the most similar), sorted by query then
    decreasing cosine. Memory: one bucket's products at a time plus the hits."""
    q = np.asarray(queries, dtype=np.float32)
    probe = np.asarray(probe)
    flat = probe.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_buckets = flat[order]
    rows_of = order // probe.shape[1] if probe.ndim == 2 and probe.shape[1] else order
    found_q: list[np.ndarray] = []
    found_id: list[np.ndarray] = []
    found_sim: list[np.ndarray] = []
    for bucket, ids, vecs in buckets:
        lo, hi = np.searchsorted(sorted_buckets, [bucket, bucket + 1])
        if lo == hi or len(ids) == 0:
            continue
        rows = np.unique(rows_of[lo:hi])
        sims = q[rows] @ np.asarray(vecs, dtype=np.float32).T
        r, c = np.nonzero(sims >= min_cosine)
        if len(r):
            found_q.append(rows[r])
            found_id.append(np.asarray(ids, dtype=np.int64)[c])
            found_sim.append(sims[r, c])
    if not found_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    qi, ids, sims = np.concatenate(found_q), np.concatenate(found_id), np.concatenate(found_sim)
    # one hit per (query, member) even if a member were listed twice, then the best `keep` per query
    pick = np.lexsort((-sims, ids, qi))
    qi, ids, sims = qi[pick], ids[pick], sims[pick]
    first = np.r_[True, (qi[1:] != qi[:-1]) | (ids[1:] != ids[:-1])]
    qi, ids, sims = qi[first], ids[first], sims[first]
    pick = np.lexsort((-sims, qi))
    qi, ids, sims = qi[pick], ids[pick], sims[pick]
    starts = np.r_[0, np.flatnonzero(qi[1:] != qi[:-1]) + 1]
    rank = np.arange(len(qi)) - np.repeat(starts, np.diff(np.r_[starts, len(qi)]))
    top = rank < keep
    return qi[top].astype(np.int64), ids[top], sims[top].astype(np.float32)


def self_pairs(vectors: np.ndarray, min_cosine: float, *, keep: int = 16, chunk_rows: int = 2048) -> np.ndarray:
    """Exact pairs i < j of unit `vectors` (n, d) with cosine >= min_cosine, each row keeping at most
    its `keep` most similar partners (a drop of a thousand identical frames gives 16 links per
    frame, not half a million). Brute force in row blocks: n^2 d products, for drops of up to a few
    tens of thousands of vectors (larger ones go through dedup's bulk mode)."""
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    found = []
    for start in range(0, n, chunk_rows):
        sims = x[start : start + chunk_rows] @ x.T
        block = np.arange(start, min(n, start + chunk_rows))
        sims[np.arange(len(block)), block] = -np.inf  # not itself
        kk = min(keep, n - 1)
        if kk <= 0:
            break
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        r = np.repeat(np.arange(len(block)), kk)
        c = top.ravel()
        hit = sims[r, c] >= min_cosine
        if hit.any():
            i, j = block[r[hit]], c[hit]
            found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0).astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)).astype(np.float32)
