"""Label quality: which labels are probably wrong, which objects are probably unlabelled.

Numbers in, numbers out (no database). Two families of evidence for a wrong label, each a score in
[0, 1] where higher is more suspect:

  * `knn_disagreement`: the share of an item's nearest neighbours in embedding space (cosine,
    weighted by similarity) that carry another label. Superb Curate's rule: "object instances that
    are visually similar but have different class tags assigned to them are regarded as having high
    probability of being mislabels".
  * `confident_learning`: cleanlab's confident learning over predicted class probabilities (a
    model's predictions when the user imported them, else out-of-fold probabilities of a linear
    probe on the embeddings, `out_of_fold_probs`): cleanlab's issue mask and its self-confidence
    label quality score.

The default ranking is confident learning's score: on benchmarks/label_quality.py it beats kNN
disagreement and their rank average (`rank_average`) on every set with a usable embedding; the kNN
neighbours are still what the review shows beside each suspect. Geometric checks for boxes: `overlapping_boxes`
(two boxes of different classes on one spot) and `missing_labels` (a confident prediction that
no labelled box matches)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .labels import Box, iou


def knn_neighbours(vectors: np.ndarray, k: int, *, chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of unit-norm `vectors` (n, d) by cosine similarity, exact, in row
    chunks (memory: chunk_rows x n floats). Returns (indices (n, k) int64, similarities (n, k))."""
    n = len(vectors)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    idx = np.empty((n, k), np.int64)
    sims = np.empty((n, k), np.float32)
    for start in range(0, n, chunk_rows):
        block = v[start : start + chunk_rows] @ v.T
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = -np.inf  # never your own neighbour
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-part_sims, axis=1)
        idx[start : start + len(rows)] = np.take_along_axis(part, order, axis=1)
        sims[start : start + len(rows)] = np.take_along_axis(part_sims, order, axis=1)
    return idx, sims


def knn_disagreement(
    labels: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(score (n,), suggested label (n,)): the similarity-weighted share of each item's neighbours
    whose label differs from its own, and the label with the largest weighted vote. Similarities
    below zero count as zero; an item with no positive neighbour scores 0 (no evidence)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if neighbours.shape[1] == 0:
        return np.zeros(n), labels.copy()
    w = np.clip(similarities, 0.0, None).astype(np.float64)
    votes = np.zeros((n, n_classes))
    np.add.at(votes, (np.repeat(np.arange(n), neighbours.shape[1]), labels[neighbours].ravel()), w.ravel())
    total = votes.sum(axis=1)
    agree = votes[np.arange(n), labels]
    score = np.where(total > 0, 1.0 - agree / np.maximum(total, 1e-12), 0.0)
    return score, votes.argmax(axis=1)


def out_of_fold_probs(
    vectors: np.ndarray, labels: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0, c: float = 10.0
) -> np.ndarray:
    """Out-of-fold class probabilities (n, n_classes) of a multinomial logistic regression on the
    embeddings (a linear probe): every item is scored by a probe that never saw its label, which
    is what confident learning needs. Classes with fewer members than `folds` get fewer folds.
    C=10: unit-norm features give small logits, and C=1 underfits them (benchmarks/label_quality.py:
    precision of the top 100 on digits 0.73 at C=1, 0.85 at C=10; glyph crops 0.96 and 0.98)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    present = counts[counts > 0]
    n_splits = int(max(2, min(folds, present.min() if len(present) else 2)))
    probs = np.zeros((len(labels), n_classes))
    if len(present) < 2:
        probs[np.arange(len(labels)), labels] = 1.0
        return probs
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    x = np.asarray(vectors, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on small folds
        for train, test in splitter.split(x, labels):
            probe = LogisticRegression(C=c, max_iter=300)
            probe.fit(x[train], labels[train])
            probs[np.ix_(test, probe.classes_)] = probe.predict_proba(x[test])
    return probs


def confident_learning(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(issue mask (n,) bool, score (n,)) by cleanlab: `find_label_issues` (prune by noise rate) and
    1 - `get_label_quality_scores` (self-confidence), so higher is more suspect."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about classes without examples
        # n_jobs=1: cleanlab's worker pool shares its data through module globals, which only a
        # fork start method carries over (run workers may use forkserver or spawn); the work is
        # per class and small.
        mask = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return np.asarray(mask, bool), 1.0 - np.asarray(quality, np.float64)


def rank_average(*scores: np.ndarray) -> np.ndarray:
    """The mean of each score's rank percentile (0 = least suspect, 1 = most): scales that are
    not comparable combine without one drowning the other."""
    out = np.zeros(len(scores[0]))
    for s in scores:
        ranks = np.argsort(np.argsort(s, kind="stable"), kind="stable")
        out += ranks / max(len(s) - 1, 1)
    return out / len(scores)


def overlapping_boxes(boxes: Sequence[Box], classes: Sequence[str], *, min_iou: float = 0.7) -> list[tuple[int, int, float]]:
    """Pairs (i, j, iou) of boxes of one image with different classes that overlap by at least
    `min_iou`: one object labelled twice with two classes."""
    out = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if classes[i] != classes[j]:
                v = iou(boxes[i], boxes[j])
                if v >= min_iou:
                    out.append((i, j, v))
    return out


def missing_labels(
    label_boxes: Sequence[Box],
    prediction_boxes: Sequence[Box],
    prediction_scores: Sequence[float],
    *,
    min_score: float = 0.5,
    max_iou: float = 0.3,
) -> list[tuple[int, float]]:
    """Predictions (index, best IoU with any label box) with confidence >= `min_score` that no
    labelled box of the image overlaps by more than `max_iou`: objects the labels probably miss."""
    out = []
    for j, (box, score) in enumerate(zip(prediction_boxes, prediction_scores)):
        if score is None or score < min_score:
            continue
        best = max((iou(box, lb) for lb in label_boxes), default=0.0)
        if best <= max_iou:
            out.append((j, best))
    return out


def precision_recall_at(scores: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    """(precision, recall) of the top-`k` scores against boolean `truth` (ties broken by index)."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    hits = int(np.asarray(truth, bool)[order].sum())
    total = int(np.asarray(truth, bool).sum())
    return hits / max(len(order), 1), hits / max(total, 1)
