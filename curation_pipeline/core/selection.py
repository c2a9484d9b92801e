"""Subset selection over unit-norm embeddings. Numbers in, numbers out: no Dagster, no database.

The engine is one greedy loop (`greedy_select`) that composes strategies the way a user writes
them in run config:

* per-image **scores** in [0, 1] with weights (typicality, outlier, similarity to a query set,
  user-supplied model scores such as uncertainty, random), all rank-normalised by `rank_scores` so
  that differently scaled signals combine;
* **diversity** with a weight: the candidate's cosine distance to the chosen set (halved to
  [0, 1]), as in k-center greedy; with diversity alone the loop *is* k-center greedy;
* **quotas** per group (k-means clusters for cluster coverage, or the values of a metadata column
  for balance) from `allocate`, proportional or equal, so sparse groups get their share.

Each step picks argmax(sum_s w_s * score_s + w_div * distance / 2) among images whose group still
has quota, then updates every image's distance to the chosen set with one chunked matrix-vector
product. Memory beyond the input: O(n) floats. Deterministic: ties go to the lowest index and all
randomness comes from `seed`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

DIVERSITY = "diversity"
Progress = Callable[[int, int, float], None]  # (picked so far, budget, seconds elapsed)


@dataclass(frozen=True)
class GreedyResult:
    indices: np.ndarray  # (k,) int64 row indices in pick order
    objective: np.ndarray  # (k,) float32 objective value at pick
    distance_at_pick: np.ndarray  # (k,) float32 cosine distance to the set chosen before (+inf first)
    reason: list[str]  # (k,) the term that contributed most to each pick


def k_center_greedy(
    vectors: np.ndarray,
    budget: int,
    *,
    min_distance: float = 0.0,
    chunk_rows: int = 1 << 22,
    first: int | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick up to `budget` row indices of unit-norm `vectors` (n, d) farthest-first.

    Distance is cosine distance 1 - <a, b>. The first pick is `first` if given, else the point
    nearest the mean direction (the most typical image), so the result is deterministic. Each step
    updates every point's distance to the chosen set with one matrix-vector product, so extra
    memory is O(n) floats besides the input (float16 input halves the bytes read per step and may
    swap near-ties, never which region comes first). Stops early
    once the farthest remaining point is closer than `min_distance` to the chosen set.

    Returns (indices (k,) int64, distance_at_pick (k,) float32); the first pick's distance is +inf
    (nothing was chosen before it)."""
    res = greedy_select(
        vectors, budget, diversity_weight=1.0, min_distance=min_distance, chunk_rows=chunk_rows, first=first, progress=progress
    )
    return res.indices, res.distance_at_pick


def greedy_select(
    vectors: np.ndarray,
    budget: int,
    *,
    scores: Mapping[str, np.ndarray] | None = None,
    weights: Mapping[str, float] | None = None,
    diversity_weight: float = 0.0,
    groups: np.ndarray | None = None,
    quotas: np.ndarray | None = None,
    min_distance: float = 0.0,
    chunk_rows: int = 1 << 22,
    first: int | None = None,
    progress: Progress | None = None,
    progress_every_s: float = 10.0,
) -> GreedyResult:
    """Greedy selection of up to `budget` rows of unit-norm `vectors` (n, d), float32 or float16.

    scores: name -> (n,) float array in [0, 1] (higher = more wanted); weights: name -> weight.
    diversity_weight: weight of the distance-to-chosen-set term (0 turns the distance updates off,
    and the loop becomes a quota-aware top-k of the weighted scores).
    groups (n,) int in [0, G) with quotas (G,) int: at most quotas[g] picks from group g.
    min_distance: stop once the best candidate is closer than this cosine distance to the chosen
    set (only with diversity). first: force the first pick (default: the best-scoring row, or
    with diversity alone the row nearest the mean direction, as k-center greedy starts)."""
    x = np.asarray(vectors)
    if x.dtype not in (np.float32, np.float16):
        x = x.astype(np.float32)
    n = x.shape[0]
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not 0.0 <= min_distance <= 2.0:
        raise ValueError(f"min_distance is a cosine distance within [0, 2], got {min_distance}")
    scores = dict(scores or {})
    weights = dict(weights or {})
    for name, values in scores.items():
        if np.shape(values) != (n,):
            raise ValueError(f"score {name!r} has shape {np.shape(values)}, expected ({n},)")
    if diversity_weight < 0 or any(w < 0 for w in weights.values()):
        raise ValueError("strategy weights must be >= 0")
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if quotas is None:
            raise ValueError("groups need quotas")
        if groups.shape != (n,) or (n and (groups.min() < 0 or groups.max() >= len(quotas))):
            raise ValueError("groups must be (n,) ints indexing quotas")
    # picks left per group (a copy: the caller's quotas stay as given)
    left = np.asarray(quotas, dtype=np.int64).copy() if quotas is not None else np.zeros(0, dtype=np.int64)
    k = min(budget, n, int(left.sum()) if quotas is not None else n)
    empty = GreedyResult(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32), [])
    if k == 0:
        return empty

    names = [s for s in scores if weights.get(s, 1.0) > 0]
    static = np.zeros(n, dtype=np.float32)
    for s in names:
        static += np.float32(weights.get(s, 1.0)) * np.asarray(scores[s], dtype=np.float32)
    use_div = diversity_weight > 0
    half_w = np.float32(diversity_weight / 2.0)
    min_dist = np.full(n, 2.0, dtype=np.float32)  # nothing chosen: every image is maximally far
    available = np.ones(n, dtype=bool)
    if groups is not None:
        available &= left[groups] > 0

    if first is None and use_div and not names:
        first = int(np.argmax(_chunked_dot(x, x.mean(axis=0, dtype=np.float32), chunk_rows)))
    picked: list[int] = []
    objective: list[float] = []
    dist_at_pick: list[float] = []
    reason: list[str] = []
    started = last_report = time.perf_counter()
    obj = np.empty(n, dtype=np.float32)
    while len(picked) < k:
        if first is not None and not picked:
            nxt = int(first)
        else:
            np.multiply(min_dist, half_w, out=obj) if use_div else obj.fill(0)
            obj += static
            obj[~available] = -np.inf
            nxt = int(np.argmax(obj))
            if obj[nxt] == -np.inf:
                break
        far = float(min_dist[nxt]) if picked else np.inf
        if use_div and picked and far < min_distance:
            break
        picked.append(nxt)
        dist_at_pick.append(far)
        terms = {s: float(weights.get(s, 1.0) * scores[s][nxt]) for s in names}
        if use_div:
            terms[DIVERSITY] = float(half_w * min(far, 2.0))
        objective.append(sum(terms.values()))
        reason.append(max(terms, key=terms.__getitem__) if terms else DIVERSITY)
        available[nxt] = False
        if groups is not None:
            g = groups[nxt]
            left[g] -= 1
            if left[g] == 0:
                available[groups == g] = False
        if use_div and len(picked) < k:
            d = _chunked_dot(x, x[nxt].astype(np.float32), chunk_rows)
            np.subtract(np.float32(1.0), d, out=d)
            np.minimum(min_dist, d, out=min_dist)
        if progress is not None and time.perf_counter() - last_report >= progress_every_s:
            last_report = time.perf_counter()
            progress(len(picked), k, last_report - started)
    if progress is not None:
        progress(len(picked), k, time.perf_counter() - started)
    return GreedyResult(
        np.asarray(picked, dtype=np.int64),
        np.asarray(objective, dtype=np.float32),
        np.asarray(dist_at_pick, dtype=np.float32),
        reason,
    )


def _chunked_dot(x: np.ndarray, q: np.ndarray, chunk_rows: int) -> np.ndarray:
    """x @ q as float32 (n,). A matrix-vector product allocates nothing but its (n,) output, so
    float32 goes to BLAS in one call (splitting it only adds per-call overhead); float16 rows go
    through torch's half-precision kernel (half the bytes read per step; numpy has no fast float16
    matmul and upcasting chunks costs more than it saves). `chunk_rows` bounds the rows per call
    for callers that pass huge matrices to other backends; the default covers 1M rows in one."""
    q = np.asarray(q, dtype=np.float32)
    if x.dtype == np.float16:
        import torch

        xt = torch.from_numpy(x)
        qt = torch.from_numpy(q).to(torch.float16)
        out = np.empty(x.shape[0], dtype=np.float32)
        step = max(chunk_rows, 1 << 20)
        for start in range(0, x.shape[0], step):
            out[start : start + step] = (xt[start : start + step] @ qt).float().numpy()
        return out
    out = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], chunk_rows):
        stop = min(x.shape[0], start + chunk_rows)
        np.dot(x[start:stop], q, out=out[start:stop])
    return out


# ---- scores ------------------------------------------------------------------------------------


def rank_scores(values: np.ndarray) -> np.ndarray:
    """(n,) values -> (n,) float32 in [0, 1] by rank (ties share their mean rank; NaN -> 0).
    Rank normalisation lets a density, a k-NN distance and a user's uncertainty combine by weight
    without one signal's scale drowning the others."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    out = np.zeros(n, dtype=np.float32)
    ok = ~np.isnan(v)
    m = int(ok.sum())
    if m == 0:
        return out
    if m == 1:
        out[ok] = 1.0
        return out
    from scipy.stats import rankdata

    out[ok] = ((rankdata(v[ok], method="average") - 1) / (m - 1)).astype(np.float32)
    return out


def knn_similarity(
    vectors: np.ndarray, k: int = 20, *, buckets: np.ndarray | None = None, chunk_rows: int = 2048
) -> np.ndarray:
    """(n,) mean cosine similarity of each row to its k nearest other rows: local density.
    High = typical (many close neighbours), low = outlier / edge case. Exact over all rows, in
    chunks of `chunk_rows` x n products; with `buckets` ((n,) ints, e.g. coarse k-means clusters)
    neighbours are searched within each bucket only, which is what makes 1M rows affordable."""
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    out = np.zeros(n, dtype=np.float32)
    if n < 2:
        return out
    parts = [np.arange(n)] if buckets is None else [np.flatnonzero(buckets == b) for b in np.unique(buckets)]
    for members in parts:
        if len(members) < 2:
            continue
        kk = min(k, len(members) - 1)
        xm = x[members]
        for start in range(0, len(members), chunk_rows):
            block = xm[start : start + chunk_rows]
            sims = block @ xm.T
            sims[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # not itself
            top = np.partition(sims, len(members) - kk, axis=1)[:, -kk:]
            out[members[start : start + len(block)]] = top.mean(axis=1)
    return out


def max_similarity(vectors: np.ndarray, queries: np.ndarray, *, chunk_rows: int = 16_384) -> np.ndarray:
    """(n,) highest cosine similarity of each row to any query row (unit vectors)."""
    x = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    out = np.full(len(x), -1.0, dtype=np.float32)
    if len(q) == 0:
        return out
    for start in range(0, len(x), chunk_rows):
        out[start : start + chunk_rows] = (x[start : start + chunk_rows] @ q.T).max(axis=1)
    return out


# ---- clusters and quotas -------------------------------------------------------------------------


def spherical_kmeans(
    vectors: np.ndarray, n_clusters: int, *, seed: int = 0, fit_sample: int = 100_000, chunk_rows: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on unit vectors: (labels (n,) int64, unit centres (C, d) float32). Full Lloyd with
    3 inits up to 50k rows, mini-batch on a `fit_sample` sample beyond; labels are then assigned
    to the nearest centre by cosine in chunks, so memory stays O(n + C d)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    c = max(1, min(int(n_clusters), n))
    if n <= 50_000:
        km = KMeans(n_clusters=c, n_init=3, random_state=seed).fit(x)
    else:
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, size=min(n, max(fit_sample, 20 * c)), replace=False))]
        km = MiniBatchKMeans(n_clusters=c, random_state=seed, batch_size=8192, n_init=3).fit(sample)
    centres = km.cluster_centers_.astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk_rows):
        labels[start : start + chunk_rows] = np.argmax(x[start : start + chunk_rows] @ centres.T, axis=1)
    return labels, centres


def allocate(group_sizes: np.ndarray, budget: int, mode: str = "proportional") -> np.ndarray:
    """(G,) quotas summing to min(budget, total). proportional: share by size (largest remainder),
    but every non-empty group gets at least one pick while the budget allows, so sparse clusters
    and rare metadata values are represented. equal: the same share for every group, what a group
    cannot use (it is smaller than its share) goes to the others."""
    sizes = np.asarray(group_sizes, dtype=np.int64)
    if mode not in ("proportional", "equal"):
        raise ValueError(f"allocation must be 'proportional' or 'equal', got {mode!r}")
    total = int(min(budget, sizes.sum()))
    quotas = np.zeros(len(sizes), dtype=np.int64)
    nonempty = np.flatnonzero(sizes > 0)
    if total <= 0 or len(nonempty) == 0:
        return quotas
    if total < len(nonempty):  # not even one each: the largest groups first
        order = nonempty[np.argsort(-sizes[nonempty], kind="stable")]
        quotas[order[:total]] = 1
        return quotas
    quotas[nonempty] = 1
    left = total - len(nonempty)
    while left > 0:
        room = sizes - quotas
        open_ = np.flatnonzero(room > 0)
        if len(open_) == 0:
            break
        if mode == "equal":
            share = np.full(len(open_), left // len(open_), dtype=np.int64)
            share[: left - int(share.sum())] += 1  # remainder to the first groups
        else:
            ideal = left * sizes[open_] / sizes[open_].sum()
            share = np.floor(ideal).astype(np.int64)
            rest = left - int(share.sum())
            share[np.argsort(-(ideal - share), kind="stable")[:rest]] += 1
        share = np.minimum(share, room[open_])
        if share.sum() == 0:
            share[np.argmax(room[open_])] = 1
        quotas[open_] += share
        left -= int(share.sum())
    return quotas


def centrality(vectors: np.ndarray, labels: np.ndarray, centres: np.ndarray, *, chunk_rows: int = 65_536) -> np.ndarray:
    """(n,) cosine similarity of each row to its own cluster centre: the medoid scores highest."""
    x = np.asarray(vectors, dtype=np.float32)
    out = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), chunk_rows):
        block = x[start : start + chunk_rows]
        out[start : start + len(block)] = np.einsum("ij,ij->i", block, centres[labels[start : start + len(block)]])
    return out


# ---- comparison with a random subset ------------------------------------------------------------


def subset_quality(
    vectors: np.ndarray,
    chosen: np.ndarray,
    fine_labels: np.ndarray,
    *,
    metadata: Mapping[str, np.ndarray] | None = None,
    chunk_rows: int = 16_384,
    sample: int = 20_000,
    seed: int = 0,
) -> dict:
    """How well `chosen` row indices cover the pool. Returns:
    fine_clusters_covered: fraction of fine clusters (by `fine_labels`) holding a chosen row;
    nn_distance_mean / nn_distance_min: cosine distance from each chosen row to its nearest other
    chosen row (higher = less redundant); coverage_distance_mean / _max: distance from pool rows (a
    seeded sample of `sample`) to their nearest chosen row (lower = better covered);
    metadata_coverage: for each column, the fraction of its distinct values present."""
    x = np.asarray(vectors, dtype=np.float32)
    chosen = np.asarray(chosen, dtype=np.int64)
    out: dict = {"size": int(len(chosen))}
    labels = np.asarray(fine_labels)
    out["fine_clusters_covered"] = round(float(len(np.unique(labels[chosen])) / max(1, len(np.unique(labels)))), 4)
    c = x[chosen]
    if len(c) >= 2:
        nn = np.full(len(c), np.inf, dtype=np.float32)
        for start in range(0, len(c), chunk_rows):
            d = 1.0 - c[start : start + chunk_rows] @ c.T
            d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf
            nn[start : start + len(d)] = d.min(axis=1)
        out["nn_distance_mean"] = round(float(nn.mean()), 4)
        out["nn_distance_min"] = round(float(nn.min()), 4)
    if len(c):
        rows = np.arange(len(x))
        if len(x) > sample:
            rows = np.sort(np.random.default_rng(seed).choice(len(x), size=sample, replace=False))
        cover = 1.0 - max_similarity(x[rows], c, chunk_rows=chunk_rows)
        out["coverage_distance_mean"] = round(float(cover.mean()), 4)
        out["coverage_distance_max"] = round(float(cover.max()), 4)
    meta = {}
    for column, values in (metadata or {}).items():
        values = np.asarray(values, dtype=object)
        present = {v for v in values.tolist() if v is not None}
        if present:
            got = {v for v in values[chosen].tolist() if v is not None}
            meta[column] = round(len(got) / len(present), 4)
    out["metadata_coverage"] = meta
    return out
