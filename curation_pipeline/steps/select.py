"""Choose a diverse subset of non-duplicate, valid images within a budget."""

from __future__ import annotations

import logging
import time

import numpy as np

from curation_pipeline.core.selection import k_center_greedy
from curation_pipeline.resources.catalog import Catalog

log = logging.getLogger(__name__)

STRATEGY_K_CENTER = "k_center_greedy"


def select_subset(catalog: Catalog, name: str, *, model: str, budget: int, min_distance: float = 0.0,
                  drop_keys: list[str] | None = None, logger: logging.Logger = log) -> dict:
    if budget < 1:
        raise ValueError(f"selection {name!r}: budget must be at least 1, got {budget}")
    started = time.perf_counter()
    pool = catalog.selection_pool(model, drop_keys)
    if len(pool) == 0:
        raise ValueError(
            f"selection {name!r}: no candidate images for model {model!r}"
            + (f" in drops {drop_keys}" if drop_keys else "") + ": ingest a drop first"
        )
    picked, dist = k_center_greedy(pool.vectors, budget, min_distance=min_distance)
    config = {"budget": budget, "min_distance": min_distance, "drop_keys": drop_keys, "model": model}
    catalog.replace_selection(name, model, STRATEGY_K_CENTER, config, len(pool), pool.image_ids[picked], dist)
    finite = dist[np.isfinite(dist)]
    stats = {
        "selection": name,
        "strategy": STRATEGY_K_CENTER,
        "model": model,
        "pool_size": len(pool),
        "budget": budget,
        "selected": int(len(picked)),
        "stopped_by_min_distance": bool(len(picked) < min(budget, len(pool))),
        "min_distance": min_distance,
        "last_pick_distance": float(finite[-1]) if len(finite) else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("selection %s: %s", name, stats)
    return stats
