"""Subset selection over unit-norm embeddings. Numbers in, numbers out."""

from __future__ import annotations

import numpy as np


def k_center_greedy(vectors: np.ndarray, budget: int, *, min_distance: float = 0.0,
                    chunk_rows: int = 65_536, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pick up to `budget` row indices of unit-norm `vectors` (n, d) farthest-first.

    Distance is cosine distance 1 - <a, b>. The first pick is `first` if given, else the point
    nearest the mean direction (the most typical image), so the result is deterministic. Each step
    updates every point's distance to the chosen set in `chunk_rows` row chunks, so extra memory
    is O(n) floats besides the input. Stops early once the farthest remaining point is closer than
    `min_distance` to the chosen set.

    Returns (indices (k,) int64, distance_at_pick (k,) float32); the first pick's distance is +inf
    (nothing was chosen before it)."""
    x = np.asarray(vectors, dtype=np.float32)
    n = x.shape[0]
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not 0.0 <= min_distance <= 2.0:
        raise ValueError(f"min_distance is a cosine distance within [0, 2], got {min_distance}")
    k = min(budget, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)

    if first is None:
        mean = x.mean(axis=0)
        first = int(np.argmax(_chunked_dot(x, mean, chunk_rows)))
    picked = [first]
    dist_at_pick = [np.inf]
    min_dist = np.full(n, np.inf, dtype=np.float32)

    current = first
    while True:
        d = 1.0 - _chunked_dot(x, x[current], chunk_rows)
        np.minimum(min_dist, d, out=min_dist)
        min_dist[picked] = -np.inf  # never re-pick
        if len(picked) >= k:
            break
        nxt = int(np.argmax(min_dist))
        far = float(min_dist[nxt])
        if far < min_distance or far == -np.inf:
            break
        picked.append(nxt)
        dist_at_pick.append(far)
        current = nxt
    return np.asarray(picked, dtype=np.int64), np.asarray(dist_at_pick, dtype=np.float32)


def _chunked_dot(x: np.ndarray, q: np.ndarray, chunk_rows: int) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], chunk_rows):
        stop = min(x.shape[0], start + chunk_rows)
        out[start:stop] = x[start:stop] @ q
    return out
