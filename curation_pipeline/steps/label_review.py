"""Label review: rank the labels that are probably wrong and the objects that are probably missing,
over the current label sets of the chosen drops, and store the list (label_reviews/label_issues).

  * image-level labels: image vectors of the model; box labels: object vectors (object_embeddings);
  * per group, confident learning (cleanlab) on class probabilities: the imported predictions'
    when every item has them, else out-of-fold probabilities of a linear probe on the vectors;
    kNN label disagreement is the second evidence and gives each suspect its neighbours;
  * boxes of different classes on one spot (overlap), and confident predicted boxes that no
    labelled box matches (missing label).

Suspects are ranked by score (confident learning's 1 - self-confidence for mislabels, IoU for
overlaps, the prediction's confidence for missing labels), all in [0, 1]."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from curation_pipeline.core.label_quality import (
    confident_learning,
    knn_disagreement,
    knn_neighbours,
    missing_labels,
    out_of_fold_probs,
    overlapping_boxes,
)
from curation_pipeline.resources.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewSpec:
    name: str = "default"
    drop_keys: tuple[str, ...] | None = None  # default: every drop with labels
    version: str | None = None  # a label version to review (default: each drop's newest)
    k: int = 10  # neighbours per item
    limit: int = 1000  # suspects kept
    min_knn_disagreement: float = 0.6  # a kNN-only suspect: this share of its neighbours disagree
    overlap_iou: float = 0.7  # boxes of different classes overlapping this much
    missing_min_score: float = 0.5  # a predicted box at least this confident ...
    missing_max_iou: float = 0.3  # ... that no labelled box overlaps more than this
    min_items: int = 10  # fewer labelled items (of a kind) than this: no statistics, said so
    seed: int = 0


def review_labels(catalog: Catalog, spec: ReviewSpec, *, model: str, logger: logging.Logger = log) -> dict:
    started = time.perf_counter()
    drops = list(spec.drop_keys) if spec.drop_keys is not None else None
    label_sets = catalog.current_set_ids("labels", drops, spec.version)
    pred_sets = catalog.current_set_ids("predictions", drops)
    labels = catalog.label_objects(label_sets)
    predictions = catalog.label_objects(pred_sets)
    notes: list[str] = []
    suspects: list[dict] = []
    stats: dict = {"label_sets": len(label_sets), "labels": len(labels), "predictions": len(predictions)}

    image_level = _first_per_image([o for o in labels if o["box"] is None])
    if image_level:
        vectors = catalog.vectors_for(list(image_level), model)
        items = [o for i, o in image_level.items() if i in vectors]
        if len(items) < len(image_level):
            notes.append(f"{len(image_level) - len(items)} labelled images have no {model} vector (not embedded)")
        set_classes = {r["set_id"]: r["classes"] for r in catalog.label_sets()}
        probs_by_image = {
            o["image_id"]: dict(zip(set_classes[o["set_id"]], o["probs"]))
            for o in predictions
            if o["box"] is None and o["probs"] is not None
        }
        found, info = _mislabels(
            items, np.stack([vectors[o["image_id"]] for o in items]) if items else None, probs_by_image, spec, "image"
        )
        suspects += found
        stats["image_labels"] = info
    boxes = [o for o in labels if o["box"] is not None]
    if boxes:
        ids, vecs = catalog.object_vectors(label_sets, model)
        row_of = {int(i): n for n, i in enumerate(ids)}
        items = [o for o in boxes if o["object_id"] in row_of]
        if len(items) < len(boxes):
            notes.append(
                f"{len(boxes) - len(items)} of {len(boxes)} labelled boxes have no {model} object vector: "
                "materialize object_embeddings for their drops"
            )
        found, info = _mislabels(items, vecs[[row_of[o["object_id"]] for o in items]] if items else None, {}, spec, "object")
        suspects += found
        stats["box_labels"] = info
        suspects += _geometry(boxes, [o for o in predictions if o["box"] is not None], spec, stats)
    suspects.sort(key=lambda s: -s["score"])
    kept = suspects[: spec.limit]
    stats.update(
        suspects=len(suspects),
        kept=len(kept),
        by_kind={k: sum(1 for s in kept if s["kind"] == k) for k in ("mislabel", "overlap", "missing_label")},
        notes=notes,
        seconds=round(time.perf_counter() - started, 3),
    )
    config = {**asdict(spec), "model": model}
    catalog.replace_label_review(spec.name, config, stats, kept)
    for note in notes:
        logger.warning("label review %s: %s", spec.name, note)
    logger.info("label review %s: %s", spec.name, {k: v for k, v in stats.items() if k != "notes"})
    return stats


def _first_per_image(objs: list[dict]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for o in objs:
        out.setdefault(o["image_id"], o)
    return out


def _mislabels(
    items: list[dict], vectors: np.ndarray | None, probs_by_image: dict[int, dict], spec: ReviewSpec, level: str
) -> tuple[list[dict], dict]:
    classes = sorted({o["class_name"] for o in items})
    info: dict = {"items": len(items), "classes": len(classes)}
    if vectors is None or len(items) < spec.min_items or len(classes) < 2:
        info["skipped"] = f"needs >= {spec.min_items} items of >= 2 classes"
        return [], info
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[o["class_name"]] for o in items], np.int64)
    neighbours, sims = knn_neighbours(vectors, spec.k)
    knn_score, knn_vote = knn_disagreement(y, neighbours, sims, len(classes))
    probs = _imported_probs(items, probs_by_image, classes)
    info["probabilities"] = "imported predictions" if probs is not None else "out-of-fold linear probe"
    if probs is None:
        probs = out_of_fold_probs(vectors, y, len(classes), seed=spec.seed)
    mask, cl_score = confident_learning(y, probs)
    flagged = np.nonzero(mask | (knn_score >= spec.min_knn_disagreement))[0]
    info.update(cleanlab_issues=int(mask.sum()), knn_disagreements=int((knn_score >= spec.min_knn_disagreement).sum()))
    out = []
    for i in flagged:
        given = classes[y[i]]
        suggested = classes[int(probs[i].argmax())]
        if suggested == given:
            suggested = classes[int(knn_vote[i])]
        near = [
            {
                "image_id": items[j]["image_id"],
                "object_id": items[j]["object_id"] if level == "object" else None,
                "label": classes[y[j]],
                "similarity": round(float(s), 3),
            }
            for j, s in zip(neighbours[i][:5], sims[i][:5])
        ]
        disagree = int(sum(1 for j in neighbours[i] if y[j] != y[i]))
        reason = (
            f"{info['probabilities']}: p({given}) = {probs[i][y[i]]:.2f}, p({suggested}) = {probs[i][index[suggested]]:.2f}; "
            f"{disagree} of {len(neighbours[i])} nearest {level}s are labelled otherwise"
            + (" (cleanlab flags it)" if mask[i] else "")
        )
        out.append(
            {
                "image_id": items[i]["image_id"],
                "object_id": items[i]["object_id"] if level == "object" else None,
                "kind": "mislabel",
                "method": "cleanlab" if mask[i] else "knn",
                "score": float(cl_score[i]),
                "given": given,
                "suggested": suggested,
                "reason": reason,
                "neighbours": near,
            }
        )
    return out, info


def _imported_probs(items: list[dict], probs_by_image: dict[int, dict], classes: list[str]) -> np.ndarray | None:
    """The imported prediction probabilities ({class: p} per image) of every item, in `classes`
    order, or None when any item has none (a probe then scores all of them alike)."""
    if not probs_by_image or any(o["image_id"] not in probs_by_image for o in items):
        return None
    out = np.asarray([[probs_by_image[o["image_id"]].get(c, 0.0) for c in classes] for o in items], dtype=np.float64)
    return out if np.all(out.sum(axis=1) > 0) else None


def _geometry(labels: list[dict], predictions: list[dict], spec: ReviewSpec, stats: dict) -> list[dict]:
    out = []
    by_image: dict[int, list[dict]] = defaultdict(list)
    for o in labels:
        by_image[o["image_id"]].append(o)
    for objs in by_image.values():
        for i, j, v in overlapping_boxes([o["box"] for o in objs], [o["class_name"] for o in objs], min_iou=spec.overlap_iou):
            a, b = objs[i], objs[j]
            out.append(
                {
                    "image_id": a["image_id"],
                    "object_id": b["object_id"],
                    "kind": "overlap",
                    "method": "geometry",
                    "score": float(v),
                    "given": b["class_name"],
                    "suggested": a["class_name"],
                    "reason": f"a {b['class_name']} box and a {a['class_name']} box overlap with IoU {v:.2f}"
                    ": one object, two classes?",
                }
            )
    preds: dict[int, list[dict]] = defaultdict(list)
    for o in predictions:
        preds[o["image_id"]].append(o)
    missing = 0
    for image_id, objs in preds.items():
        found = missing_labels(
            [o["box"] for o in by_image.get(image_id, [])],
            [o["box"] for o in objs],
            [o["score"] for o in objs],
            min_score=spec.missing_min_score,
            max_iou=spec.missing_max_iou,
        )
        for j, best in found:
            o = objs[j]
            missing += 1
            out.append(
                {
                    "image_id": image_id,
                    "object_id": o["object_id"],
                    "kind": "missing_label",
                    "method": "geometry",
                    "score": float(o["score"]),
                    "given": None,
                    "suggested": o["class_name"],
                    "reason": f"predicted {o['class_name']} ({o['score']:.2f}) where no labelled box overlaps"
                    f" more than IoU {best:.2f}",
                }
            )
    stats["overlaps"] = sum(1 for s in out if s["kind"] == "overlap")
    stats["missing_labels"] = missing
    return out
