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
randomness comes from `seed`.

From `PRUNE_FROM_ROWS` candidates on, the distance update is pruned (`_BucketIndex`): rows are
grouped into spherical k-means buckets stored contiguously, and a bucket whose angular lower bound
to the new pick cannot lower any of its available members' distances is not read. The picks are
those of the full update, bit for bit: both paths compute each row's dot product with a kernel whose
result does not depend on which other rows are in the call (einsum for float32, torch's half matvec
for float16; OpenBLAS gemv rounds a call's last rows differently), and ties still go to the lowest
original index."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

DIVERSITY = "diversity"
PRUNE_FROM_ROWS = 50_000  # below this one full update per step costs less than keeping buckets
SMALL_UPDATE_ROWS = 1 << 18  # float16 updates of fewer rows run single-threaded
Progress = Callable[[int, int, float], None]  # (picked so far, budget, seconds elapsed)


@dataclass(frozen=True)
class GreedyResult:
    indices: np.ndarray  # (k,) int64 row indices in pick order
    objective: np.ndarray  # (k,) float32 objective value at pick
    distance_at_pick: np.ndarray  # (k,) float32 cosine distance to the set chosen before (+inf first)
    reason: list[str]  # (k,) the term that contributed most to each pick
    stats: "SelectionStats | None" = None  # work done by the distance updates (None without diversity)


@dataclass
class SelectionStats:
    """What the distance updates cost: bytes read per pick = rows_read * dim * itemsize / updates."""

    pruned: bool
    rows: int
    dim: int
    itemsize: int
    buckets: int = 0
    updates: int = 0  # distance updates done (one per pick but the last)
    rows_read: int = 0  # candidate rows multiplied with a pick, over all updates
    buckets_skipped: int = 0  # over all updates
    build_seconds: float = 0.0  # bucketing: k-means, assignment, reordering

    @property
    def bytes_read_per_update(self) -> float:
        return self.rows_read * self.dim * self.itemsize / max(1, self.updates)

    @property
    def skipped_fraction(self) -> float:
        return self.buckets_skipped / max(1, self.updates * self.buckets)


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
    prune: bool | None = None,
    buckets: int | None = None,
    reorder_in_place: bool = False,
) -> GreedyResult:
    """Greedy selection of up to `budget` rows of unit-norm `vectors` (n, d), float32 or float16.

    scores: name -> (n,) float array in [0, 1] (higher = more wanted); weights: name -> weight.
    diversity_weight: weight of the distance-to-chosen-set term (0 turns the distance updates off,
    and the loop becomes a quota-aware top-k of the weighted scores).
    groups (n,) int in [0, G) with quotas (G,) int: at most quotas[g] picks from group g.
    min_distance: stop once the best candidate is closer than this cosine distance to the chosen
    set (only with diversity). first: force the first pick (default: the best-scoring row, or
    with diversity alone the row nearest the mean direction, as k-center greedy starts).
    prune: bucket-pruned distance updates (same picks; default: with diversity from
    `PRUNE_FROM_ROWS` rows), with `buckets` buckets (default about 2 sqrt(n)). The buckets need the
    rows reordered: a copy of `vectors`, or with `reorder_in_place` (a writeable float32/float16
    array the caller does not read meanwhile) the rows are moved in place and moved back before
    returning, so no second matrix is held."""
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
    if use_div and (prune if prune is not None else n >= PRUNE_FROM_ROWS):
        # a private copy (converted input) may be reordered freely; the caller's array only when allowed
        own = x is not vectors and not (isinstance(vectors, np.ndarray) and np.may_share_memory(x, vectors))
        in_place = x.flags.c_contiguous and x.flags.writeable and (own or reorder_in_place)
        index = _BucketIndex(x, buckets or _default_buckets(n), in_place=in_place)
        try:
            return _greedy_pruned(
                index,
                k,
                static,
                half_w,
                available,
                groups,
                left,
                min_distance,
                first,
                names,
                scores,
                weights,
                progress,
                progress_every_s,
            )
        finally:
            index.release()
    stats = SelectionStats(pruned=False, rows=n, dim=x.shape[1], itemsize=x.itemsize) if use_div else None
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
            if stats is not None:
                stats.updates += 1
                stats.rows_read += n
        last_report = _report(progress, len(picked), k, started, last_report, progress_every_s)
    return _result(picked, objective, dist_at_pick, reason, stats, progress, k, started)


def _report(progress: Progress | None, done: int, k: int, started: float, last: float, every_s: float) -> float:
    """Call `progress` when `every_s` has passed since `last`; returns the time of the last report."""
    now = time.perf_counter()
    if progress is not None and now - last >= every_s:
        progress(done, k, now - started)
        return now
    return last


def _result(
    picked: list[int],
    objective: list[float],
    dist_at_pick: list[float],
    reason: list[str],
    stats: "SelectionStats | None",
    progress: Progress | None,
    k: int,
    started: float,
) -> GreedyResult:
    """The loop's lists as a GreedyResult, after the final progress report."""
    if progress is not None:
        progress(len(picked), k, time.perf_counter() - started)
    return GreedyResult(
        np.asarray(picked, dtype=np.int64),
        np.asarray(objective, dtype=np.float32),
        np.asarray(dist_at_pick, dtype=np.float32),
        reason,
        stats,
    )


# ---- pruned distance updates --------------------------------------------------------------------


def _default_buckets(n: int) -> int:
    """About 2 sqrt(n) buckets: a step costs a product with every centroid (B d) plus the rows of the
    buckets it cannot skip (~ n / B each); more buckets also make each one tighter."""
    return int(max(1, min(n, 4096, round(2 * np.sqrt(n)))))


class _BucketIndex:
    """Candidates grouped into spherical k-means buckets, each stored contiguously (members keep
    their original order, so the first maximum inside a bucket is the lowest original index), with
    a unit centroid and an angular radius per bucket. Holds the working arrays of the greedy loop
    in bucket order: distance to the chosen set, static score, availability."""

    def __init__(self, x: np.ndarray, n_buckets: int, *, in_place: bool, seed: int = 0, chunk_rows: int = 16_384):
        started = time.perf_counter()
        n, dim = x.shape
        self.dim = dim
        centroids = _train_centroids(x, min(n_buckets, n), seed=seed)
        if len(centroids) > 16:
            # neighbouring buckets side by side: the buckets a step cannot skip then form few runs of
            # adjacent rows, one product each (coarse clusters of the centroids, then by similarity)
            coarse = _train_centroids(centroids, int(np.sqrt(len(centroids))), seed=seed)
            sims = centroids @ coarse.T
            near = np.argmax(sims, axis=1)
            centroids = centroids[np.lexsort((-sims[np.arange(len(centroids)), near], near))]
        labels = np.empty(n, dtype=np.int32)
        min_cos = np.full(len(centroids), np.inf)
        norm_lo, norm_hi = np.inf, 0.0
        for start in range(0, n, chunk_rows):
            block = np.asarray(x[start : start + chunk_rows], dtype=np.float32)
            norms = np.linalg.norm(block, axis=1)
            norm_lo, norm_hi = min(norm_lo, float(norms.min())), max(norm_hi, float(norms.max()))
            sims = block @ centroids.T
            lab = np.argmax(sims, axis=1)
            labels[start : start + len(block)] = lab
            # a zero row has no direction: cosine -1 puts its bucket's radius at pi (never skipped)
            cos = np.divide(sims[np.arange(len(block)), lab], norms, out=np.full(len(block), -1.0, np.float32), where=norms > 0)
            np.minimum.at(min_cos, lab, cos)
        used = np.flatnonzero(np.isfinite(min_cos))  # drop centroids no row chose
        remap = np.full(len(centroids), -1, dtype=np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        labels = remap[labels]
        self.centroids = centroids[used]
        self.sizes = np.bincount(labels, minlength=len(used)).astype(np.int64)
        self.starts = np.zeros(len(used), dtype=np.int64)
        self.starts[1:] = np.cumsum(self.sizes)[:-1]
        self.ends = self.starts + self.sizes
        # rounding of the float32 cosines (about dim ulps) is taken out of every bound: the radius
        # grows and the centroid-to-pick angle shrinks by `cos_margin` in cosine
        self.cos_margin = 1e-5 + dim * 2.0**-23
        self.radius = np.arccos(np.clip(min_cos[used] - self.cos_margin, -1.0, 1.0))
        self.norm_lo, self.norm_hi = norm_lo * (1 - 1e-6), norm_hi * (1 + 1e-6)
        # what one computed dot product may differ from the exact one: the float32 sum (dim ulps),
        # or torch's float16 result rounded to half (2^-12 relative) with float32 accumulation
        self.slack = (1e-4 if x.dtype == np.float32 else 1e-3) + dim * 2.0**-23
        self.order = np.argsort(labels, kind="stable")  # bucket position -> original row
        del labels
        self.restore = False
        if in_place:
            _permute_rows_in_place(x, self.order)
            self.rows = x
            self.restore = True
        else:
            self.rows = x[self.order]
        self.source = x
        self.build_seconds = time.perf_counter() - started

    def release(self) -> None:
        """Put the caller's rows back in their original order (after an in-place reordering)."""
        if self.restore:
            inverse = np.empty_like(self.order)
            inverse[self.order] = np.arange(len(self.order))
            _permute_rows_in_place(self.rows, inverse)
            self.restore = False
        self.rows = None  # type: ignore[assignment]  # released: the caller owns its rows again

    def bucket_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, positions, side="right") - 1

    def candidate_buckets(self, q: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Buckets where a row may come closer to pick `q` than `upper` (per bucket: the largest
        distance to the chosen set among its available rows). Elsewhere every row x has
        1 - <x, q> >= upper: the angle between x and q is at least the centroid's angle to q minus
        the bucket's radius, and cos of that bounds <x, q> / (|x| |q|)."""
        qn = float(np.linalg.norm(q))
        if qn == 0:
            return np.flatnonzero(upper > -np.inf)
        # einsum, not BLAS: a few thousand centroids are a small product, and waking BLAS threads
        # while torch's half-precision threads still spin cost ~9 ms per step (profiled at 300k x 512)
        t = np.einsum("ij,j->i", self.centroids, (q / qn).astype(np.float32)).astype(np.float64)
        gap = np.maximum(0.0, np.arccos(np.clip(t + self.cos_margin, -1.0, 1.0)) - self.radius)
        cos_ub = np.cos(gap)
        dot_ub = np.where(cos_ub >= 0, cos_ub * self.norm_hi * qn, cos_ub * self.norm_lo * qn)
        lower = 1.0 - dot_ub - self.slack
        return np.flatnonzero(lower < upper)


def _greedy_pruned(
    index: _BucketIndex,
    k: int,
    static: np.ndarray,
    half_w: np.float32,
    available: np.ndarray,
    groups: np.ndarray | None,
    left: np.ndarray,
    min_distance: float,
    first: int | None,
    names: list[str],
    scores: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    progress: Progress | None,
    progress_every_s: float,
) -> GreedyResult:
    """greedy_select's loop with diversity on, over `index`. Per bucket it keeps the best objective
    among available rows (value and position) and the largest distance to the chosen set; a step
    updates the distances of the buckets `candidate_buckets` returns, one product per run of
    adjacent buckets, and recomputes those buckets' maxima."""
    order = index.order
    x = index.rows
    n = len(order)
    n_buckets = len(index.sizes)
    stats = SelectionStats(
        pruned=True, rows=n, dim=index.dim, itemsize=x.itemsize, buckets=n_buckets, build_seconds=index.build_seconds
    )
    min_dist = np.full(n, 2.0, dtype=np.float32)
    static_b = static[order]
    avail_b = available[order]
    groups_b = groups[order] if groups is not None else None
    best_obj = np.full(n_buckets, -np.inf, dtype=np.float32)
    upper = np.full(n_buckets, -np.inf, dtype=np.float32)  # largest min_dist among available rows
    rows_t = None
    if x.dtype == np.float16:
        import torch

        rows_t = torch.from_numpy(x)

    def refresh(buckets: np.ndarray) -> None:
        if len(buckets) == n_buckets:
            # every bucket (the first step, or a step that could skip none): whole arrays, no gathers;
            # unavailable rows get -inf through the same float32 operations (half_w > 0 here)
            dist = np.where(avail_b, min_dist, np.float32(-np.inf))
            obj = np.multiply(dist, half_w)
            obj += static_b
            offsets = index.starts
            upper[:] = np.maximum.reduceat(dist, offsets)
            best_obj[:] = np.maximum.reduceat(obj, offsets)
            return
        lengths = index.sizes[buckets]
        offsets = np.zeros(len(buckets), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        total = int(lengths.sum())
        pos = np.repeat(index.starts[buckets] - offsets, lengths) + np.arange(total)
        dist = min_dist[pos]
        ok = avail_b[pos]
        obj = np.multiply(dist, half_w)  # the same float32 operations as the full loop: equal values
        obj += static_b[pos]
        obj[~ok] = -np.inf
        dist[~ok] = -np.inf
        upper[buckets] = np.maximum.reduceat(dist, offsets)
        best_obj[buckets] = np.maximum.reduceat(obj, offsets)

    def best_position(bucket: int) -> int:
        """The bucket's first row (lowest original index: members keep their order) whose objective
        is the bucket's best: computed for the few buckets that tie for a pick, not every step."""
        a, b = int(index.starts[bucket]), int(index.ends[bucket])
        obj = np.multiply(min_dist[a:b], half_w)
        obj += static_b[a:b]
        obj[~avail_b[a:b]] = -np.inf
        return a + int(np.flatnonzero(obj == best_obj[bucket])[0])

    def update(q: np.ndarray) -> None:
        todo = index.candidate_buckets(q, upper)
        stats.updates += 1
        if len(todo) == 0:
            stats.buckets_skipped += n_buckets
            return
        if 2 * int(index.sizes[todo].sum()) >= n:
            # most rows need the update anyway: one product over every row and one refresh of whole
            # arrays cost less than gathering the scattered buckets (3x per step at 300k x 512)
            todo = np.arange(n_buckets)
        stats.buckets_skipped += n_buckets - len(todo)
        # adjacent buckets are adjacent rows: one product per run
        breaks = np.flatnonzero(np.diff(todo) != 1) + 1
        run_first = todo[np.r_[0, breaks]]
        run_last = todo[np.r_[breaks - 1, len(todo) - 1]]
        spans = list(zip(index.starts[run_first].tolist(), index.ends[run_last].tolist()))
        if rows_t is None:
            for a, b in spans:
                d = np.einsum("ij,j->i", x[a:b], q)
                np.subtract(np.float32(1.0), d, out=d)
                np.minimum(min_dist[a:b], d, out=min_dist[a:b])
                stats.rows_read += b - a
        else:
            import torch

            qt = torch.from_numpy(q).to(torch.float16)
            threads = torch.get_num_threads()
            # waking torch's worker threads costs more than a few buckets' product (10 ms and more
            # on a busy machine): small updates run on this thread; each row's result is the same
            if sum(b - a for a, b in spans) < SMALL_UPDATE_ROWS:
                torch.set_num_threads(1)
            try:
                for a, b in spans:
                    d = (rows_t[a:b] @ qt).float().numpy()
                    np.subtract(np.float32(1.0), d, out=d)
                    np.minimum(min_dist[a:b], d, out=min_dist[a:b])
                    stats.rows_read += b - a
            finally:
                torch.set_num_threads(threads)
        refresh(todo)

    refresh(np.arange(n_buckets))
    picked: list[int] = []
    objective: list[float] = []
    dist_at_pick: list[float] = []
    reason: list[str] = []
    started = last_report = time.perf_counter()
    while len(picked) < k:
        if first is not None and not picked:
            nxt = int(first)
            pos = int(np.flatnonzero(order == nxt)[0])
        else:
            top = best_obj.max()
            if top == -np.inf:
                break
            tied = np.flatnonzero(best_obj == top)
            # np.argmax over the original order takes the lowest original index among equal values
            cand = np.asarray([best_position(int(b)) for b in tied])
            pos = int(cand[np.argmin(order[cand])])
            nxt = int(order[pos])
        far = float(min_dist[pos]) if picked else np.inf
        if picked and far < min_distance:
            break
        picked.append(nxt)
        dist_at_pick.append(far)
        terms = {s: float(weights.get(s, 1.0) * scores[s][nxt]) for s in names}
        terms[DIVERSITY] = float(half_w * min(far, 2.0))
        objective.append(sum(terms.values()))
        reason.append(max(terms, key=terms.__getitem__))
        avail_b[pos] = False
        dirty = [index.bucket_of(np.array([pos]))]
        if groups_b is not None:
            g = groups_b[pos]
            left[g] -= 1
            if left[g] == 0:
                members = np.flatnonzero(groups_b == g)
                avail_b[members] = False
                dirty.append(np.unique(index.bucket_of(members)))
        if len(picked) < k:
            update(x[pos].astype(np.float32))
        refresh(np.unique(np.concatenate(dirty)))
        last_report = _report(progress, len(picked), k, started, last_report, progress_every_s)
    return _result(picked, objective, dist_at_pick, reason, stats, progress, k, started)


def _train_centroids(x: np.ndarray, k: int, *, seed: int, iterations: int = 6, per_bucket: int = 16) -> np.ndarray:
    """(k, d) unit centroids by spherical Lloyd on a seeded sample of `per_bucket * k` rows.
    Buckets only need to be tight neighbourhoods, not the best clustering, and a few passes on a
    sample are what 2,000+ centroids allow on a CPU (sklearn's mini-batch runs take minutes)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    sample = np.asarray(x[np.sort(rng.choice(n, size=min(n, per_bucket * k), replace=False))], dtype=np.float32)
    sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
    centroids = sample[rng.choice(len(sample), size=k, replace=False)].copy()
    for _ in range(iterations):
        lab = np.concatenate([np.argmax(sample[s : s + 8192] @ centroids.T, axis=1) for s in range(0, len(sample), 8192)])
        counts = np.bincount(lab, minlength=k)
        srt = np.argsort(lab, kind="stable")
        nonempty = np.flatnonzero(counts)
        sums = np.add.reduceat(sample[srt], np.r_[0, np.cumsum(counts[nonempty])[:-1]], axis=0)
        centroids[nonempty] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        empty = np.flatnonzero(counts == 0)
        if len(empty):  # re-seed an empty bucket on a random sample row
            centroids[empty] = sample[rng.choice(len(sample), size=len(empty), replace=False)]
    return centroids


def _permute_rows_in_place(x: np.ndarray, perm: np.ndarray, chunk_rows: int = 65_536) -> None:
    """x[i] <- x[perm[i]] for every i without a second matrix: rows move along the permutation's
    cycles, `chunk_rows` at a time (numpy reads a fancy-indexed source into a temporary before it
    writes, and each chunk's last source is the next chunk's first destination)."""
    n = len(perm)
    nxt = np.ascontiguousarray(perm, dtype=np.int64).data  # a memoryview: fast scalar reads in the loop
    seen = bytearray(n)
    for start in range(n):
        if seen[start]:
            continue
        seen[start] = 1
        if nxt[start] == start:
            continue
        saved = x[start].copy()
        j = start
        while True:
            dst: list[int] = []
            while len(dst) < chunk_rows:
                dst.append(j)
                seen[j] = 1
                j = nxt[j]
                if j == start:
                    break
            if j == start:  # the cycle closes: its last row takes the first row's old content
                if len(dst) > 1:
                    x[dst[:-1]] = x[dst[1:]]
                x[dst[-1]] = saved
                break
            x[dst] = x[dst[1:] + [j]]


def _chunked_dot(x: np.ndarray, q: np.ndarray, chunk_rows: int) -> np.ndarray:
    """x @ q as float32 (n,). Each row's result depends on that row alone, whatever the call's other
    rows, so the pruned update (a few buckets per call) reproduces the full one bit for bit:
    float32 goes through numpy's einsum loop, not BLAS (OpenBLAS gemv rounds the last rows of a
    call, n mod 4 per thread, with another kernel; einsum streams as fast, the product is bound by
    memory reads); float16 rows go through torch's half-precision kernel (half the bytes read per
    step; numpy has no fast float16 matmul and upcasting chunks costs more than it saves).
    `chunk_rows` bounds the rows per call; the default covers 1M rows in one."""
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
        np.einsum("ij,j->i", x[start:stop], q, out=out[start:stop])
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
