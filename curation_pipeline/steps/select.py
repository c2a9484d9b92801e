"""Choose the subset a labeling budget should buy: composable strategies over the deduplicated pool.

A selection is a `SelectionSpec`: a budget, weighted strategies, filters and a seed. Strategies
that score images (typicality, outliers, query similarity, user scores, random) and diversity go
into one greedy objective; cluster coverage and metadata balance set per-group quotas (see
core.selection). Every subset is stored with each image's rank, objective and the term that chose
it, and is compared with a random subset of equal size drawn from the same pool."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from curation_pipeline.core import progress as progress_bus
from curation_pipeline.core.selection import greedy_select, spherical_kmeans, subset_quality
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.filters import Predicate, check_annotations, check_columns

from .strategies import (
    MAX_COVERAGE_CLUSTERS,
    STRATEGIES,
    Pool,
    QueryEmbedder,
    StrategySpec,
    default_strategies,
    score_terms,
    validate_strategies,
)

log = logging.getLogger(__name__)

DEFAULT_COMPARE_COLUMNS = ("drop_key", "camera_model", "time_of_day")

__all__ = ["SelectionSpec", "StrategySpec", "select_subset", "spec_from_mapping", "QueryEmbedder"]


@dataclass(frozen=True)
class SelectionSpec:
    budget: int
    strategies: tuple[StrategySpec, ...] = ()
    min_distance: float = 0.0
    drop_keys: tuple[str, ...] | None = None
    where: tuple[str, ...] = ()  # predicates, e.g. "brightness>=0.2", "label in car,truck"
    exclude: tuple[str, ...] = ()  # quality flag names (core.quality.QUALITY_FLAGS)
    seed: int = 0
    candidate_pool_cap: int | None = None
    compare_with_random: bool = True
    compare_columns: tuple[str, ...] = DEFAULT_COMPARE_COLUMNS
    strategies_given: bool = field(default=False, compare=False)

    def resolved_strategies(self) -> tuple[StrategySpec, ...]:
        """The strategies given, or the default (strategies.default_strategies)."""
        return self.strategies or default_strategies()

    def validate(self, name: str) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"selection {name!r}: {msg}")

        if self.budget < 1:
            fail(f"budget must be at least 1, got {self.budget}")
        if not 0 <= self.seed < 2**32:
            fail(f"seed must be an integer from 0 to {2**32 - 1}, got {self.seed}")
        if not 0.0 <= self.min_distance <= 2.0:
            fail(f"min_distance is a cosine distance in [0, 2], got {self.min_distance}")
        if self.candidate_pool_cap is not None and self.candidate_pool_cap < self.budget:
            fail(f"candidate_pool_cap ({self.candidate_pool_cap}) is smaller than the budget ({self.budget})")
        problem = validate_strategies(self.resolved_strategies())
        if problem:
            fail(problem)

    def as_config(self) -> dict:
        d = asdict(self)
        d.pop("strategies_given")
        d["strategies"] = [asdict(s) for s in self.resolved_strategies()]
        return d


def spec_from_mapping(config: Mapping[str, Any]) -> SelectionSpec:
    """A SelectionSpec from run config / YAML (strategies as a list of mappings)."""
    strategies = tuple(
        StrategySpec(**{k: (tuple(v) if k == "queries" else v) for k, v in dict(s).items() if v is not None})
        for s in config.get("strategies") or ()
    )
    keys = config.get("drop_keys")
    return SelectionSpec(
        budget=int(config["budget"]),
        strategies=strategies,
        min_distance=float(config.get("min_distance", 0.0)),
        drop_keys=tuple(keys) if keys else None,
        where=tuple(config.get("where") or ()),
        exclude=tuple(config.get("exclude") or ()),
        seed=int(config.get("seed", 0)),
        candidate_pool_cap=config.get("candidate_pool_cap"),
        compare_with_random=bool(config.get("compare_with_random", True)),
        compare_columns=tuple(config.get("compare_columns") or DEFAULT_COMPARE_COLUMNS),
    )


def select_subset(
    catalog: Catalog,
    name: str,
    spec: SelectionSpec,
    *,
    model: str,
    model_choice: str = "",
    query_embedder: QueryEmbedder | None = None,
    logger: logging.Logger = log,
) -> dict:
    """Select `spec.budget` images on `model`'s vectors and store them as selection `name`.
    `model_choice` is what the model was chosen by (a role such as semantic, or the id): stored
    with the settings, so an automated re-run after new drops picks the same role's current model."""
    spec.validate(name)
    started = time.perf_counter()
    strategies = spec.resolved_strategies()
    strategy_columns = [c for s in strategies for c in STRATEGIES[s.name].columns(s)]
    columns = list(dict.fromkeys([*spec.compare_columns, *strategy_columns]))
    predicates = [Predicate.parse(w) for w in spec.where]
    unknown = catalog.unknown_drops(spec.drop_keys or ())
    if unknown:
        raise ValueError(
            f"selection {name!r}: unknown drop {unknown[0]!r} (known drops: "
            f"{', '.join(catalog.known_drops()) or 'none'}); nothing was changed"
        )
    annotation_names = catalog.annotation_names()
    check_columns([*(p.column for p in predicates), *strategy_columns], annotation_names, f"selection {name!r}")
    check_annotations(
        [a for s in strategies for a in STRATEGIES[s.name].annotations(s)], annotation_names, f"selection {name!r}"
    )
    pool, meta = catalog.selection_pool(
        model, spec.drop_keys, predicates=predicates, exclude_flags=spec.exclude, columns=columns
    )
    pool_size = len(pool)
    if pool_size == 0:
        raise ValueError(
            f"selection {name!r}: no candidate images for model {model!r}"
            + (f" in drops {list(spec.drop_keys)}" if spec.drop_keys else "")
            + (" after filters" if predicates or spec.exclude else "")
            + ": ingest a drop or relax the filters"
        )
    if spec.budget > pool_size:
        raise ValueError(
            f"selection {name!r}: budget {spec.budget} is larger than the {pool_size} candidate images"
            " (valid, non-duplicate, passing the filters): lower the budget or widen the filters"
        )
    rows = np.arange(pool_size)
    vectors, image_ids = pool.vectors, pool.image_ids  # the pool's own arrays: no second matrix
    if spec.candidate_pool_cap and pool_size > spec.candidate_pool_cap:
        rows = np.sort(np.random.default_rng(spec.seed).choice(pool_size, spec.candidate_pool_cap, replace=False))
        logger.info("selection %s: candidate pool capped at %d of %d images", name, len(rows), pool_size)
        vectors, image_ids = pool.vectors[rows], pool.image_ids[rows]
        meta = {c: v[rows] for c, v in meta.items()}
    n = len(rows)
    budget = min(spec.budget, n)

    pool_view = Pool(catalog, model, name, vectors, image_ids, meta, budget, spec.seed, query_embedder)
    scores, weights, diversity_weight, quota = score_terms(pool_view, strategies)
    groups = quota.groups if quota else None
    logger.info(
        "selection %s: pool %d, budget %d, strategies %s",
        name,
        n,
        budget,
        ", ".join(f"{s.name}:{s.weight:g}" for s in strategies),
    )

    def progress(done: int, total: int, seconds: float) -> None:
        logger.info("selection %s: %d / %d picked in %.1f s", name, done, total, seconds)
        progress_bus.report(f"select {name}", done, total)

    result = greedy_select(
        vectors,
        budget,
        scores=scores,
        weights=weights,
        diversity_weight=diversity_weight,
        groups=groups,
        quotas=quota.quotas if quota else None,
        min_distance=spec.min_distance,
        progress=progress,
        reorder_in_place=True,  # `vectors` is this step's own copy: no second matrix for the buckets
    )
    picked = result.indices
    comparison = None
    if spec.compare_with_random and len(picked):
        comparison = compare_with_random(vectors, picked, meta, seed=spec.seed)
    strategy_label = "+".join(s.name for s in strategies)
    catalog.replace_selection(
        name,
        model,
        strategy_label,
        {**spec.as_config(), "model": model, "model_choice": model_choice or model},
        pool_size,
        image_ids[picked],
        result.distance_at_pick,
        scores=result.objective,
        reasons=result.reason,
        groups=[quota.names[groups[i]] for i in picked] if quota else None,
        comparison=comparison,
    )
    finite = result.distance_at_pick[np.isfinite(result.distance_at_pick)]
    stats = {
        "selection": name,
        "strategy": strategy_label,
        "model": model,
        "pool_size": pool_size,
        "candidates": n,
        "budget": spec.budget,
        "selected": int(len(picked)),
        "stopped_by_min_distance": bool(diversity_weight > 0 and len(picked) < budget and spec.min_distance > 0),
        "min_distance": spec.min_distance,
        "last_pick_distance": float(finite[-1]) if len(finite) else None,
        "picked_by": {r: result.reason.count(r) for r in sorted(set(result.reason))},
        "seconds": round(time.perf_counter() - started, 3),
    }
    if comparison:
        stats["fine_clusters_covered"] = comparison["subset"]["fine_clusters_covered"]
        stats["random_fine_clusters_covered"] = comparison["random"]["fine_clusters_covered"]
    logger.info("selection %s: %s", name, stats)
    return stats


def compare_with_random(vectors: np.ndarray, picked: np.ndarray, meta: Mapping[str, np.ndarray], *, seed: int) -> dict:
    """The subset's coverage next to a seeded random subset of equal size from the same pool.
    Fine clusters: an independent k-means (its own seed, not the coverage strategy's clusters) with
    one cluster per picked image up to 1,000, so a subset that covers every cluster scores 1.0 and
    a random one about 1 - 1/e when clusters are of equal size."""
    n = len(vectors)
    k = len(picked)
    fine_labels, _ = spherical_kmeans(vectors, min(k, MAX_COVERAGE_CLUSTERS, n), seed=seed + 1)
    random_pick = np.sort(np.random.default_rng(seed + 7).choice(n, size=k, replace=False))
    return {
        "fine_clusters": int(len(np.unique(fine_labels))),
        "subset": subset_quality(vectors, picked, fine_labels, metadata=meta, seed=seed),
        "random": subset_quality(vectors, random_pick, fine_labels, metadata=meta, seed=seed),
    }
