"""Choose the subset a labeling budget should buy: composable strategies over the deduplicated pool.

A selection is a `SelectionSpec`: a budget, weighted strategies, filters and a seed. Strategies
that score images (typicality, outliers, query similarity, user scores, random) and diversity go
into one greedy objective; cluster coverage and metadata balance set per-group quotas (see
core.selection). Every subset is stored with each image's rank, objective and the term that chose
it, and is compared with a random subset of equal size drawn from the same pool."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from curation_pipeline.core import progress as progress_bus
from curation_pipeline.core.selection import (
    DIVERSITY,
    allocate,
    centrality,
    greedy_select,
    knn_similarity,
    max_similarity,
    rank_scores,
    spherical_kmeans,
    subset_quality,
)
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.filters import Predicate, check_annotations, check_columns

log = logging.getLogger(__name__)

SCORE_STRATEGIES = ("typicality", "outliers", "query_similarity", "score", "random")
QUOTA_STRATEGIES = ("coverage", "balance")
STRATEGIES = (DIVERSITY, *SCORE_STRATEGIES, *QUOTA_STRATEGIES)
MAX_COVERAGE_CLUSTERS = 1000
KNN_EXACT_UP_TO = 50_000  # beyond this, typicality's neighbours are searched inside coarse clusters
DEFAULT_COMPARE_COLUMNS = ("drop_key", "camera_model", "time_of_day")

QueryEmbedder = Callable[[list[str]], np.ndarray]  # file paths -> unit vectors of the pool's model


@dataclass(frozen=True)
class StrategySpec:
    name: str
    weight: float = 1.0
    k: int = 20  # typicality / outliers: neighbours
    clusters: int | None = None  # coverage: number of k-means clusters (default min(budget, 1000))
    allocation: str = "proportional"  # coverage / balance: proportional | equal
    column: str | None = None  # balance: metadata column; score: annotation name
    queries: tuple[str, ...] = ()  # query_similarity: corpus refs or image files
    higher_is_better: bool = True  # score: False for e.g. confidence (low = wanted)

    @classmethod
    def parse(cls, text: str) -> "StrategySpec":
        """CLI form `name[:weight][,key=value...]`, e.g. `typicality:0.5,k=10`,
        `coverage,clusters=50,allocation=equal`, `score:2,column=uncertainty`,
        `query_similarity,queries=a.jpg;b.jpg`."""
        head, *pairs = [p.strip() for p in text.split(",")]
        name, _, weight = head.partition(":")
        kwargs: dict[str, Any] = {"name": name.strip()}
        if weight:
            kwargs["weight"] = _number(weight, text)
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"strategy {text!r}: expected key=value, got {pair!r}")
            key = key.strip()
            if key in ("k", "clusters"):
                kwargs[key] = int(_number(value, text))
            elif key == "queries":
                kwargs[key] = tuple(v for v in value.split(";") if v)
            elif key == "higher_is_better":
                kwargs[key] = value.strip().lower() in ("1", "true", "yes")
            elif key in ("allocation", "column"):
                kwargs[key] = value.strip()
            else:
                raise ValueError(f"strategy {text!r}: unknown option {key!r}")
        return cls(**kwargs)


@dataclass(frozen=True)
class SelectionSpec:
    budget: int
    strategies: tuple[StrategySpec, ...] = ()
    min_distance: float = 0.0
    drop_keys: tuple[str, ...] | None = None
    where: tuple[str, ...] = ()  # predicates, e.g. "brightness>=0.2", "label in car,truck"
    exclude: tuple[str, ...] = ()  # quality flags: blurry, dark, overexposed, low_contrast, tiny, odd_aspect
    seed: int = 0
    candidate_pool_cap: int | None = None
    compare_with_random: bool = True
    compare_columns: tuple[str, ...] = DEFAULT_COMPARE_COLUMNS
    strategies_given: bool = field(default=False, compare=False)

    def resolved_strategies(self) -> tuple[StrategySpec, ...]:
        """The default when none are given: cluster coverage (one k-means cluster per pick up to
        1,000, each represented by its most central images) plus diversity. On the digits
        benchmark this beats random at every budget and covers every class from 2%."""
        return self.strategies or (StrategySpec("coverage"), StrategySpec(DIVERSITY, weight=1.0))

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
        quota = [s.name for s in self.resolved_strategies() if s.name in QUOTA_STRATEGIES]
        if len(quota) > 1:
            fail(f"use one of coverage / balance per selection, got {quota}")
        for s in self.resolved_strategies():
            if s.name not in STRATEGIES:
                fail(f"unknown strategy {s.name!r}: use any of {', '.join(STRATEGIES)}")
            if not (math.isfinite(s.weight) and s.weight >= 0):
                fail(f"strategy {s.name!r}: weight must be a finite number >= 0, got {s.weight}")
            if s.name in ("typicality", "outliers") and s.k < 1:
                fail(f"strategy {s.name!r}: k must be >= 1")
            if s.name in QUOTA_STRATEGIES and s.allocation not in ("proportional", "equal"):
                fail(f"strategy {s.name!r}: allocation must be proportional or equal, got {s.allocation!r}")
            if s.name == "coverage" and s.clusters is not None and s.clusters < 1:
                fail("strategy 'coverage': clusters must be >= 1")
            if s.name in ("balance", "score") and not s.column:
                fail(f"strategy {s.name!r} needs a column (e.g. {s.name},column=camera_model)")
            if s.name == "query_similarity" and not s.queries:
                fail("strategy 'query_similarity' needs queries (corpus references or image files)")

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
    query_embedder: QueryEmbedder | None = None,
    logger: logging.Logger = log,
) -> dict:
    spec.validate(name)
    started = time.perf_counter()
    strategies = spec.resolved_strategies()
    balance = next((s for s in strategies if s.name == "balance"), None)
    columns = list(dict.fromkeys([*spec.compare_columns, *([balance.column] if balance else [])]))
    predicates = [Predicate.parse(w) for w in spec.where]
    unknown = catalog.unknown_drops(spec.drop_keys or ())
    if unknown:
        raise ValueError(
            f"selection {name!r}: unknown drop {unknown[0]!r} (known drops: "
            f"{', '.join(catalog.known_drops()) or 'none'}); nothing was changed"
        )
    check_columns(
        [*(p.column for p in predicates), *(s.column for s in strategies if s.name == "balance")],
        catalog.annotation_names(),
        f"selection {name!r}",
    )
    check_annotations([s.column for s in strategies if s.name == "score"], catalog.annotation_names(), f"selection {name!r}")
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
    if spec.candidate_pool_cap and pool_size > spec.candidate_pool_cap:
        rows = np.sort(np.random.default_rng(spec.seed).choice(pool_size, spec.candidate_pool_cap, replace=False))
        logger.info("selection %s: candidate pool capped at %d of %d images", name, len(rows), pool_size)
    vectors = pool.vectors[rows]
    image_ids = pool.image_ids[rows]
    meta = {c: v[rows] for c, v in meta.items()}
    n = len(rows)
    budget = min(spec.budget, n)

    scores: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    diversity_weight = 0.0
    groups = quotas = None
    group_names: list[str] | None = None
    density = None
    for s in strategies:
        if s.name == DIVERSITY:
            diversity_weight = s.weight
        elif s.name in ("typicality", "outliers"):
            if density is None:
                density = _density(vectors, s.k, spec.seed)
            scores[s.name] = rank_scores(density if s.name == "typicality" else -density)
            weights[s.name] = s.weight
        elif s.name == "query_similarity":
            queries = _query_vectors(catalog, model, s.queries, query_embedder, name)
            scores[s.name] = rank_scores(max_similarity(vectors, queries))
            weights[s.name] = s.weight
        elif s.name == "score":
            values = catalog.annotation_values(s.column, image_ids)
            scores[f"score:{s.column}"] = rank_scores(values if s.higher_is_better else -values)
            weights[f"score:{s.column}"] = s.weight
        elif s.name == "random":
            scores["random"] = np.random.default_rng(spec.seed).random(n).astype(np.float32)
            weights["random"] = s.weight
        elif s.name == "coverage":
            c = min(s.clusters or min(budget, MAX_COVERAGE_CLUSTERS), n)
            groups, centres = spherical_kmeans(vectors, c, seed=spec.seed)
            quotas = allocate(np.bincount(groups, minlength=c), budget, s.allocation)
            group_names = [f"cluster-{g}" for g in range(c)]
            # inside each cluster its most central images come first (the k-means medoid)
            scores["coverage"] = rank_scores(centrality(vectors, groups, centres))
            weights["coverage"] = s.weight
        elif s.name == "balance":
            values = np.asarray([str(v) if v is not None else "(none)" for v in meta[s.column]], dtype=object)
            group_names, groups = np.unique(values, return_inverse=True)
            group_names = list(group_names)
            quotas = allocate(np.bincount(groups, minlength=len(group_names)), budget, s.allocation)
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
        quotas=quotas,
        min_distance=spec.min_distance,
        progress=progress,
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
        {**spec.as_config(), "model": model},
        pool_size,
        image_ids[picked],
        result.distance_at_pick,
        scores=result.objective,
        reasons=result.reason,
        groups=[group_names[groups[i]] for i in picked] if groups is not None else None,
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


def _density(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    if len(vectors) <= KNN_EXACT_UP_TO:
        return knn_similarity(vectors, k)
    coarse, _ = spherical_kmeans(vectors, max(2, int(np.sqrt(len(vectors)) / 2)), seed=seed)
    return knn_similarity(vectors, k, buckets=coarse)


def _query_vectors(catalog: Catalog, model: str, refs: Sequence[str], embedder: QueryEmbedder | None, name: str) -> np.ndarray:
    """Corpus references resolve to stored vectors; anything else is read as an image file."""
    found = catalog.image_ids_for_refs(refs)
    files = [r for r in refs if r not in found]
    parts = [catalog.vectors_for_images([found[r] for r in refs if r in found], model)] if found else []
    if files:
        if embedder is None:
            raise ValueError(
                f"selection {name!r}: query {files[0]!r} is not an image of the corpus and no embedder was given to embed files"
            )
        parts.append(embedder(files))
    return np.concatenate(parts).astype(np.float32)


def _number(text: str, context: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"strategy {context!r}: {text!r} is not a number") from None
