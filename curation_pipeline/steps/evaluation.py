"""subset_evaluation: what a selection buys a model (core/evaluation.py), on a protected, labelled
evaluation drop that never enters a subset.

The pool is every labelled image of the unprotected drops that has a vector of the model (its
class: the image-level label, else its most frequent box class); the subset is the selection's
picks among them, in rank order. Budgets: a quarter, half and all of those picks (and any given),
each against `seeds` random subsets of the same size drawn from the same pool, and the probe on the
whole pool."""

from __future__ import annotations

import logging
import time

import numpy as np

from curation_pipeline.core.evaluation import subset_curve
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.steps.splits import image_classes

log = logging.getLogger(__name__)


def default_eval_drop(catalog: Catalog) -> str:
    """The protected drop with labels, when there is exactly one."""
    protected = catalog.protected_drops()
    labelled = [d for d in protected if catalog.current_set_ids("labels", [d])]
    if len(labelled) != 1:
        raise ValueError(
            "name the evaluation drop (eval_drop): it must be protected (`curation protect KEY`) and labelled; "
            f"protected drops with labels: {labelled or 'none'}"
        )
    return labelled[0]


def _labelled_vectors(catalog: Catalog, drops: list[str], model: str) -> tuple[list[int], list[str], np.ndarray]:
    classes = image_classes(catalog.label_objects(catalog.current_set_ids("labels", drops)))
    vectors = catalog.vectors_for(list(classes), model)
    ids = sorted(i for i in classes if i in vectors)
    x = np.stack([vectors[i] for i in ids]) if ids else np.zeros((0, 1), np.float32)
    return ids, [classes[i] for i in ids], x


def evaluate_selection(
    catalog: Catalog,
    selection: str,
    *,
    model: str,
    eval_drop: str | None = None,
    budgets: tuple[int, ...] = (),
    seeds: int = 5,
    logger: logging.Logger = log,
) -> dict:
    started = time.perf_counter()
    eval_drop = eval_drop or default_eval_drop(catalog)
    if eval_drop not in catalog.protected_drops():
        raise ValueError(
            f"evaluation drop {eval_drop!r} is not protected: protect it (`curation protect {eval_drop}`) so it never "
            "enters a subset, and re-select"
        )
    eval_ids, eval_y, eval_x = _labelled_vectors(catalog, [eval_drop], model)
    if len(eval_ids) < 2:
        raise ValueError(f"evaluation drop {eval_drop!r} has {len(eval_ids)} labelled images with {model} vectors")
    drops = [d for d in catalog.known_drops() if d not in catalog.protected_drops()]
    pool_ids, pool_y, pool_x = _labelled_vectors(catalog, drops, model)
    row = {i: n for n, i in enumerate(pool_ids)}
    picks = [int(r["image_id"]) for r in catalog.selection_items(selection)]
    order = [row[i] for i in picks if i in row]
    if not order:
        raise ValueError(f"selection {selection!r}: none of its {len(picks)} images has a label and a {model} vector")
    wanted = set(budgets) | {max(1, len(order) // 4), max(1, len(order) // 2), len(order)}
    curve = subset_curve(pool_x, pool_y, order, eval_x, eval_y, sorted(wanted), seeds=seeds)
    result = {
        **curve,
        "selection": selection,
        "eval_drop": eval_drop,
        "picks": len(picks),
        "picks_labelled": len(order),
        "classes": len(set(pool_y)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    catalog.save_subset_evaluation(selection, eval_drop, model, result)
    logger.info(
        "subset %s on %s: %s (random %s) at budgets %s; everything %s",
        selection,
        eval_drop,
        curve["subset"],
        curve["random_mean"],
        curve["budgets"],
        curve["everything"],
    )
    return result
