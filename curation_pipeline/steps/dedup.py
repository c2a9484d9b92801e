"""Deduplicate one drop against itself and every earlier drop.

Candidates come cheapest first: identical sha256 (SQL index), pHash within the Hamming radius
(numpy over the kept images' 8-byte hashes), and semantic neighbours from the model's pgvector HNSW
index (within the drop and across earlier drops). Earlier images that are themselves duplicates
are replaced by their representative. Every candidate pair's similarity is then recomputed
exactly, and star clustering assigns each image of this drop to a representative it is directly
similar to (see core.dedup). Earlier drops' rows are never modified."""

from __future__ import annotations

import logging
import time

import numpy as np

from curation_pipeline.core.dedup import DedupThresholds, find_links, representative_order, star_clusters
from curation_pipeline.core.hashing import hamming_distances
from curation_pipeline.resources.catalog import Catalog, EmbeddingSet, KeptImage

log = logging.getLogger(__name__)


def dedup_drop(catalog: Catalog, drop_key: str, embeddings: EmbeddingSet, thresholds: DedupThresholds, *,
               neighbours: int = 16, logger: logging.Logger = log) -> dict:
    started = time.perf_counter()
    model = embeddings.model
    own = catalog.dedup_candidates(drop_key, model)
    own_ids = {c.image_id for c in own}
    vec_by_id = {int(i): v for i, v in zip(embeddings.image_ids.tolist(), embeddings.vectors)}
    missing = own_ids - set(vec_by_id)
    if missing:
        raise RuntimeError(f"drop {drop_key}: {len(missing)} images have no {model} vector in the loaded embeddings")
    earlier = catalog.earlier_drops(drop_key)

    # 1. semantic neighbours through HNSW (this drop and all earlier drops)
    own_vectors = np.stack([vec_by_id[c.image_id] for c in own]) if own else np.zeros((0, embeddings.dim), np.float32)
    ann = catalog.nearest(model, own_vectors, neighbours + 1, drop_keys=earlier + [drop_key]) if own else []
    neighbour_ids = {i for hits in ann for i, _ in hits}
    foreign = neighbour_ids - own_ids

    # 2. exact and perceptual matches among earlier drops' kept images
    if earlier:
        foreign |= {k.image_id for k in catalog.kept_images_with_hashes(earlier, [c.sha256 for c in own], model)}
        kept_ids, kept_hashes = catalog.kept_phashes(earlier, model)
        if len(kept_ids):
            for c in own:
                close = kept_ids[hamming_distances(c.phash, kept_hashes) <= thresholds.max_hamming]
                foreign.update(int(i) for i in close)

    # 3. earlier duplicates stand for their representative
    reps = catalog.representatives_of(sorted(foreign))
    foreign = {reps.get(i, i) for i in foreign}
    earlier_kept: list[KeptImage] = catalog.kept_images(sorted(foreign), model) if foreign else []
    foreign_vectors = catalog.vectors_for([k.image_id for k in earlier_kept], model) if earlier_kept else {}

    candidates = list(own) + earlier_kept
    position = {c.image_id: p for p, c in enumerate(candidates)}
    vectors = (np.stack([vec_by_id.get(c.image_id, foreign_vectors.get(c.image_id)) for c in candidates])
               if candidates else np.zeros((0, embeddings.dim), np.float32))

    # 4. pairs to re-check exactly: ANN pairs, plus every (own, earlier representative) pair
    pairs = set()
    for c, hits in zip(own, ann):
        for other, _ in hits:
            other = reps.get(other, other)
            if other in position and other != c.image_id:
                pairs.add((position[c.image_id], position[other]))
    n_own = len(own)
    for p in range(n_own):
        for q in range(n_own, len(candidates)):
            pairs.add((p, q))
    pair_array = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)

    links = find_links([c.sha256 for c in candidates], np.asarray([c.phash for c in candidates], dtype=np.int64),
                       vectors, thresholds, extra_pairs=pair_array)
    order = representative_order(
        pixels=np.asarray([c.pixels for c in candidates]),
        sharpness=np.asarray([c.sharpness for c in candidates]),
        drop_rank=np.asarray([c.drop_ordinal for c in candidates]),
        prior_leader=np.asarray([p >= n_own for p in range(len(candidates))]),
        keys=[f"{c.drop_key}/{c.object_key}" for c in candidates],
    )
    assignments = star_clusters(len(candidates), links, order)

    rows = []
    tiers = {"exact": 0, "perceptual": 0, "semantic": 0}
    cross = 0
    for a in assignments[:n_own]:
        image = candidates[a.index]
        leader = candidates[a.leader]
        is_rep = a.leader == a.index
        rows.append((image.image_id, leader.image_id, is_rep, a.tier, a.similarity))
        if not is_rep:
            tiers[a.tier] += 1
            cross += a.leader >= n_own
    catalog.replace_dedup(drop_key, model, rows)
    elapsed = time.perf_counter() - started
    stats = {
        "images": n_own,
        "kept": sum(1 for r in rows if r[2]),
        "duplicates": sum(tiers.values()),
        "exact_duplicates": tiers["exact"],
        "perceptual_duplicates": tiers["perceptual"],
        "semantic_duplicates": tiers["semantic"],
        "duplicates_of_earlier_drops": int(cross),
        "earlier_drops_compared": len(earlier),
        "earlier_candidates_checked": len(earlier_kept),
        "pairs_rechecked": int(len(pair_array)),
        "max_hamming": thresholds.max_hamming,
        "min_cosine": thresholds.min_cosine,
        "model": model,
        "seconds": round(elapsed, 3),
    }
    logger.info("drop %s: %s", drop_key, stats)
    return stats
