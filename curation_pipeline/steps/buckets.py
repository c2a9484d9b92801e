"""Dedup's exact safety net: each model's coarse k-means buckets (core.buckets) kept current, and a
new drop's vectors compared exactly with every representative in their nearest buckets of the drops
deduplicated before it. The HNSW lookups stay (they are cheap per image); the re-check adds the
duplicates a graph of a million vectors no longer reaches (benchmarks/dedup_scale.py).

Centroids are trained once a model has vectors and again when its corpus has grown about 4x
(`bucket_count` doubles); a retrain makes every drop's chunks stale, and stale drops are re-bucketed
from their stored vectors before the next re-check reads them. All of it runs under the dedup lock,
so the centroid version and the chunks never change under a running re-check."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from curation_pipeline.core.buckets import (
    TRAIN_SAMPLES_PER_BUCKET,
    bucket_count,
    nearest_buckets,
    recheck_pairs,
    train_centroids,
)
from curation_pipeline.resources.catalog import BucketModel, Catalog

log = logging.getLogger(__name__)

# Nearest buckets re-checked per new vector. Measured recall of the re-check alone against brute
# force (new 10k drop, benchmarks/dedup_scale.py's clustered 512-d set; isotropic 64-d copies):
# 1 probe 0.93-0.96 / 0.76, 4 probes 0.99 / 0.96, 8 probes 0.999 / 0.995. A drop's probes touch most
# buckets anyway, so more probes cost products, not reads.
PROBES = 8


@dataclass
class Recheck:
    """Exact candidates: (own row, other image id, cosine) arrays, and what it cost."""

    rows: np.ndarray
    image_ids: np.ndarray
    sims: np.ndarray
    stats: dict = field(default_factory=dict)


def current_buckets(catalog: Catalog, model: str, drop_keys: list[str], *, logger: logging.Logger = log) -> BucketModel:
    """The model's centroid set, trained now if it has none or its corpus outgrew it, with every
    drop of `drop_keys` bucketed against it."""
    total = catalog.embedding_count(model)
    state = catalog.bucket_model(model)
    want = bucket_count(total)
    if state is None or want >= 2 * state.n_buckets:
        started = time.perf_counter()
        limit = max(1000, want * TRAIN_SAMPLES_PER_BUCKET) if want > 1 else 2000
        sample = catalog.vector_sample(model, limit)
        if len(sample) == 0:
            raise LookupError(f"model {model!r} has no stored vectors to train dedup buckets on")
        state = catalog.save_bucket_model(model, train_centroids(sample, want), total)
        logger.info(
            "dedup buckets for %s: %d buckets trained on %d of %d vectors in %.1f s (version %d)",
            model,
            state.n_buckets,
            len(sample),
            total,
            time.perf_counter() - started,
            state.version,
        )
    fresh = catalog.bucketed_drops(model, state.version)
    for drop_key in [d for d in drop_keys if d not in fresh]:
        rebuild_drop_buckets(catalog, model, drop_key, state, logger=logger)
    return state


def rebuild_drop_buckets(
    catalog: Catalog, model: str, drop_key: str, state: BucketModel, *, logger: logging.Logger = log
) -> int:
    """Re-bucket a drop from its stored vectors (streamed in batches). Returns its vector count."""
    started = time.perf_counter()
    ids, vecs, buckets = [], [], []
    for batch_ids, batch in catalog.drop_vectors(drop_key, model):
        buckets.append(nearest_buckets(batch, state.centroids, 1)[:, 0])
        ids.append(batch_ids)
        vecs.append(batch.astype(np.float16))
    if not ids:
        return 0
    count = sum(len(i) for i in ids)
    catalog.replace_drop_buckets(
        model, drop_key, state.version, np.concatenate(buckets), np.concatenate(ids), np.concatenate(vecs)
    )
    logger.info(
        "dedup buckets: drop %s (%d vectors of %s) bucketed in %.1f s", drop_key, count, model, time.perf_counter() - started
    )
    return count


def record_drop_buckets(
    catalog: Catalog, model: str, drop_key: str, image_ids: np.ndarray, vectors: np.ndarray, *, logger: logging.Logger = log
) -> int:
    """Put a freshly deduplicated drop's vectors into the buckets. Returns chunks written."""
    state = current_buckets(catalog, model, [], logger=logger)
    if len(image_ids) == 0:
        return catalog.replace_drop_buckets(model, drop_key, state.version, np.zeros(0), np.zeros(0), np.zeros((0, 1)))
    buckets = nearest_buckets(vectors, state.centroids, 1)[:, 0]
    return catalog.replace_drop_buckets(model, drop_key, state.version, buckets, image_ids, vectors)


def corpus_recheck(
    catalog: Catalog,
    model: str,
    own_vectors: np.ndarray,
    drop_keys: list[str],
    min_cosine: float,
    *,
    probes: int = PROBES,
    keep: int = 16,
    logger: logging.Logger = log,
) -> Recheck:
    """Exact hits (cosine >= min_cosine, at most `keep` per own row) of the drop's vectors among the
    representatives of `drop_keys` that lie in each vector's `probes` nearest buckets."""
    started = time.perf_counter()
    empty = Recheck(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if len(own_vectors) == 0 or not drop_keys or probes <= 0:  # probes 0: HNSW alone (benchmarks)
        return empty
    state = current_buckets(catalog, model, drop_keys, logger=logger)
    prepared = time.perf_counter() - started
    probe = nearest_buckets(own_vectors, state.centroids, probes)
    reps = catalog.representative_ids(drop_keys)
    read = {"buckets": 0, "vectors": 0, "products": 0}
    probing = np.bincount(probe.ravel(), minlength=state.n_buckets)

    def chunks():
        dim = own_vectors.shape[1]
        for bucket, ids, vecs in catalog.bucket_chunks(model, state.version, np.unique(probe).tolist(), drop_keys, dim):
            read["buckets"] += 1
            read["vectors"] += len(ids)
            at = np.minimum(np.searchsorted(reps, ids), max(len(reps) - 1, 0))
            kept = (reps[at] == ids) if len(reps) else np.zeros(len(ids), bool)
            if kept.any():
                read["products"] += int(probing[bucket]) * int(kept.sum())
                yield bucket, ids[kept], vecs[kept]

    rows, ids, sims = recheck_pairs(own_vectors, probe, chunks(), min_cosine, keep=keep)
    out = Recheck(rows, ids, sims)
    out.stats = {
        "buckets": state.n_buckets,
        "probes": min(probes, state.n_buckets),
        "buckets_read": read["buckets"],
        "vectors_read": read["vectors"],
        "dot_products": read["products"],
        "hits": int(len(rows)),
        "prepare_seconds": round(prepared, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return out


__all__ = ["PROBES", "Recheck", "corpus_recheck", "current_buckets", "rebuild_drop_buckets", "record_drop_buckets"]
