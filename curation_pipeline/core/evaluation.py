"""What a subset buys: a linear probe trained on a subset's embeddings, scored on a labelled
evaluation set, against random subsets of the same size and against everything.

No curation tool reports this; the DataComp line of work shows that the choice of filter moves a
model's accuracy by points, so a subset is judged by what a model learns from it, not only by how
it covers the embedding space. Numbers in, numbers out."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, c: float = 10.0
) -> float:
    """Accuracy on (test_x, test_y) of a multinomial logistic regression fitted on (train_x,
    train_y). A training set of one class predicts that class."""
    from sklearn.linear_model import LogisticRegression

    train_y = np.asarray(train_y)
    if len(train_y) == 0:
        return 0.0
    if len(np.unique(train_y)) < 2:
        return float(np.mean(np.asarray(test_y) == train_y[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = LogisticRegression(C=c, max_iter=500).fit(train_x, train_y)
    return float(np.mean(probe.predict(test_x) == np.asarray(test_y)))


def subset_curve(
    vectors: np.ndarray,
    labels: Sequence,
    subset_order: Sequence[int],
    eval_vectors: np.ndarray,
    eval_labels: Sequence,
    budgets: Sequence[int],
    *,
    seeds: int = 5,
    c: float = 10.0,
) -> dict:
    """Probe accuracy at each budget for: the first `budget` rows of `subset_order` (a selection's
    picks in rank order, as row indices of `vectors`), `seeds` random subsets of the same size
    (mean, std, min, max), and every row. Budgets beyond the subset's size are left out."""
    y = np.asarray(labels, dtype=object)
    ey = np.asarray(eval_labels, dtype=object)
    order = np.asarray(subset_order, dtype=np.int64)
    out: dict = {"budgets": [], "subset": [], "random_mean": [], "random_std": [], "random_min": [], "random_max": []}
    for b in sorted({int(b) for b in budgets if 0 < int(b) <= len(order)}):
        picks = order[:b]
        out["budgets"].append(b)
        out["subset"].append(round(probe_accuracy(vectors[picks], y[picks], eval_vectors, ey, c=c), 4))
        accs = []
        for seed in range(seeds):
            rows = np.random.default_rng(seed).choice(len(vectors), size=b, replace=False)
            accs.append(probe_accuracy(vectors[rows], y[rows], eval_vectors, ey, c=c))
        out["random_mean"].append(round(float(np.mean(accs)), 4))
        out["random_std"].append(round(float(np.std(accs)), 4))
        out["random_min"].append(round(float(np.min(accs)), 4))
        out["random_max"].append(round(float(np.max(accs)), 4))
    out["everything"] = round(probe_accuracy(vectors, y, eval_vectors, ey, c=c), 4)
    out["pool"] = int(len(vectors))
    out["eval"] = int(len(ey))
    out["seeds"] = seeds
    return out
