"""2D maps of embeddings for people to look at: a coverage-preserving sample, then UMAP or PCA.

Pure functions over arrays; no Dagster, no database."""

from __future__ import annotations

import numpy as np

UMAP_MIN_POINTS = 60  # below this UMAP's neighbour graph is too thin to be better than PCA


def coverage_sample(labels: np.ndarray, max_points: int, *, must: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a sample of at most `max_points` rows in which every cluster (value of
    `labels`) is represented: one row per cluster first (largest clusters first if there are more
    clusters than points), then the rest shared in proportion to cluster size. Rows flagged in
    `must` (e.g. the selected subset) are taken first, up to half the sample."""
    labels = np.asarray(labels)
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    if must is not None and np.any(must):
        idx = np.flatnonzero(must)
        idx = rng.permutation(idx)[: max_points // 2]
        chosen.extend(idx.tolist())
        taken[idx] = True
    clusters, sizes = np.unique(labels, return_counts=True)
    order = clusters[np.argsort(-sizes, kind="stable")]
    for c in order:  # one per cluster
        if len(chosen) >= max_points:
            break
        if np.any(taken & (labels == c)):
            continue
        pick = rng.choice(np.flatnonzero(labels == c))
        chosen.append(int(pick))
        taken[pick] = True
    left = max_points - len(chosen)
    if left > 0:
        rest = np.flatnonzero(~taken)
        chosen.extend(rng.choice(rest, size=min(left, len(rest)), replace=False).tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """(n, 2) float32 coordinates on the first two principal components."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    x = x - x.mean(axis=0)
    if len(x) == 1:
        return np.zeros((1, 2), dtype=np.float32)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    if out.shape[1] < 2:
        out = np.c_[out, np.zeros(len(out))]
    return out.astype(np.float32)


def project_2d(vectors: np.ndarray, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """((n, 2) float32 coordinates scaled to [0, 1], the method used). `auto` is UMAP (cosine
    metric, umap-learn) from UMAP_MIN_POINTS points up when umap-learn is installed, else PCA."""
    x = np.asarray(vectors, dtype=np.float32)
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"projection method must be auto, umap or pca, got {method!r}")
    used = "pca"
    coords = None
    if method in ("auto", "umap") and len(x) >= UMAP_MIN_POINTS:
        try:
            import umap  # noqa: F401  (umap-learn)
        except ImportError:
            if method == "umap":
                raise
        else:
            import warnings

            from umap import UMAP

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                coords = UMAP(
                    n_neighbors=min(15, len(x) - 1), min_dist=0.1, metric="cosine", random_state=seed, n_jobs=1
                ).fit_transform(x)
            used = "umap"
    if coords is None:
        coords = pca_2d(x)
    coords = np.asarray(coords, dtype=np.float64)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return ((coords - lo) / span).astype(np.float32), used
