"""Deduplicate one drop against itself and every drop deduplicated before it.

Candidates come cheapest first: identical sha256 (SQL index), pHash within the Hamming radius
(numpy over 8-byte hashes, chunked), and semantic neighbours from the model's pgvector HNSW index
(within the drop and across the other drops). Images of other drops that are themselves duplicates
stand for their representative. Every candidate pair's similarity is recomputed exactly and star
clustering assigns each image of this drop to a representative it is directly similar to (see
core.dedup). Other drops' representatives stay representatives: a new drop's copies join them.

Consistency: dedup of different drops is serialised by a database lock, so of any two drops the
one deduplicated second always sees the first, whatever order they arrived or ran in. Members of
other drops whose representative stops being one (re-ingest or re-dedup of its drop) are turned
into representatives in the same transaction, so no row ever points at a missing representative."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from curation_pipeline.core.buckets import self_pairs
from curation_pipeline.core.decode import DecodedImage, decode_image
from curation_pipeline.core.dedup import (
    DEFAULT_MAX_HAMMING,
    PROPOSAL_MAX_HAMMING,
    DedupThresholds,
    Link,
    cluster_duplicates,
    hamming_cross_pairs,
    hamming_pairs_indexed,
    mirror_max_hamming,
    representative_order,
    semdedup_pairs,
)
from curation_pipeline.core.hashing import sha256_hex
from curation_pipeline.core.verify import WORK_SIDE, PairVerdict, VerifierSettings, VerifyImage, prepare, verify_pair
from curation_pipeline.resources.catalog import Catalog, EmbeddingSet, KeptImage
from curation_pipeline.resources.embedders import default_min_cosine, proposal_min_cosine
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores

from .buckets import PROBES, corpus_recheck, record_drop_buckets

log = logging.getLogger(__name__)


BULK_FROM = 50_000  # a drop this large is deduplicated within itself in bulk mode
SELF_EXACT_UP_TO = 20_000  # up to this many images a drop is also compared with itself exactly (n^2)
T = TypeVar("T")


def default_thresholds(model: str, *, verify: bool = True) -> DedupThresholds:
    """The product's thresholds for vectors of `model`. Verified (the default): loose ones that only
    propose pairs for pixel verification. Unverified: the strict ones that decide alone."""
    if verify:
        return DedupThresholds(max_hamming=PROPOSAL_MAX_HAMMING, min_cosine=proposal_min_cosine(model))
    return DedupThresholds(max_hamming=DEFAULT_MAX_HAMMING, min_cosine=default_min_cosine(model))


def ef_search_for(corpus_rows: int) -> int:
    """HNSW beam width for near-duplicate lookups in a corpus of this many vectors."""
    if corpus_rows <= 100_000:
        return 100
    if corpus_rows <= 1_000_000:
        return 250
    return 400


def dedup_drop(
    catalog: Catalog,
    drop_key: str,
    embeddings: EmbeddingSet,
    thresholds: DedupThresholds,
    *,
    neighbours: int = 16,
    bulk_from: int = BULK_FROM,
    ef_search: int | None = None,
    verifier: VerifierSettings | None = None,
    mirror_perm: np.ndarray | None = None,
    stores: ImageStores = DEFAULT_STORES,
    workers: int | None = None,
    probes: int = PROBES,
    logger: logging.Logger = log,
) -> dict:
    """Incremental mode: within-drop and cross-drop semantic candidates from the HNSW index.
    Bulk mode (drops of `bulk_from` images or more, e.g. the first import of a large corpus):
    within-drop semantic candidates from SemDeDup-style k-means buckets with exact similarities
    inside each bucket; other drops are still searched through HNSW. Same output tables.
    `ef_search` overrides the HNSW beam width chosen from the corpus size (`ef_search_for`).

    With `verifier`, the thresholds only propose pairs (use looser ones: PROPOSAL_MAX_HAMMING and
    the backend's proposal cosine): every proposed pair of distinct contents is verified on its
    pixels (core.verify, read through `stores`, `workers` threads), only accepted pairs link, and
    every verdict is stored (dedup_pairs). `mirror_perm` (the descriptor's mirror permutation)
    also proposes flips: a mirrored HNSW lookup and a mirrored cosine. Every mode also re-checks
    each vector exactly against the other drops' representatives in its `probes` nearest k-means
    buckets (steps.buckets), so recall does not rest on the HNSW graph alone."""
    started = time.perf_counter()
    model = embeddings.model
    with catalog.dedup_lock():
        waited = time.perf_counter() - started
        stats = _dedup_locked(
            catalog,
            drop_key,
            embeddings,
            thresholds,
            neighbours,
            bulk_from,
            ef_search,
            verifier,
            mirror_perm if verifier is not None else None,
            stores,
            workers or min(4, os.cpu_count() or 1),
            probes,
        )
    stats["lock_wait_seconds"] = round(waited, 3)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    stats["model"] = model
    logger.info("drop %s: %s", drop_key, stats)
    return stats


def _dedup_locked(
    catalog: Catalog,
    drop_key: str,
    embeddings: EmbeddingSet,
    thresholds: DedupThresholds,
    neighbours: int,
    bulk_from: int,
    ef_search: int | None,
    verifier: VerifierSettings | None,
    mirror_perm: np.ndarray | None,
    stores: ImageStores,
    workers: int,
    probes: int,
) -> dict:
    model = embeddings.model
    own = catalog.dedup_candidates(drop_key, model)
    own_pos = {c.image_id: p for p, c in enumerate(own)}
    vec_by_id = {int(i): v for i, v in zip(embeddings.image_ids.tolist(), embeddings.vectors)}
    missing = set(own_pos) - set(vec_by_id)
    if missing:
        raise RuntimeError(f"drop {drop_key}: {len(missing)} images have no {model} vector in the loaded embeddings")
    others = catalog.deduplicated_drops(exclude=drop_key)
    dim = embeddings.dim
    own_vectors = np.stack([vec_by_id[c.image_id] for c in own]) if own else np.zeros((0, dim), np.float32)
    own_hashes = np.asarray([c.phash for c in own], dtype=np.int64)
    own_mirrors = np.asarray([c.phash_mirror for c in own], dtype=np.int64)

    # Candidate pairs in image ids: (own image, other image). Other images are resolved to their
    # representatives below.
    id_pairs: list[tuple[int, int]] = []
    bulk = len(own) >= bulk_from
    # 1. semantic candidates: HNSW neighbours in this drop and the other deduplicated drops, or in
    #    bulk mode k-means buckets inside the drop plus HNSW neighbours in the other drops only
    search = others if bulk else others + [drop_key]
    # The HNSW beam widens with the corpus: in benchmarks/dedup_scale.py ef_search 40 missed 1.2% of
    # true duplicates at 100k, and 100 missed 2.6% at 300k.
    ef = ef_search or ef_search_for(catalog.embedding_count(model))
    catalog.refresh_statistics("embeddings")  # stale statistics turn HNSW lookups into full sorts
    ann = (
        catalog.nearest(model, own_vectors, neighbours + 1, drop_keys=search, ef_search=max(ef, neighbours + 1))
        if own and search
        else []
    )
    # pgvector computes each hit's cosine exactly on the stored vector, so hits clearly below the
    # threshold cannot become semantic links and are dropped before anything is fetched for them
    # (the margin covers halfvec rounding; survivors are re-checked in float32 below).
    floor = thresholds.min_cosine - 0.02
    for c, hits in zip(own, ann):
        id_pairs.extend((c.image_id, other) for other, sim in hits if other != c.image_id and sim >= floor)
    if mirror_perm is not None and own and search:
        # flips: the mirrored image's vector is the permuted vector (exact for the descriptor)
        mirrored_ann = catalog.nearest(
            model, own_vectors[:, mirror_perm], neighbours + 1, drop_keys=search, ef_search=max(ef, neighbours + 1)
        )
        for c, hits in zip(own, mirrored_ann):
            id_pairs.extend((c.image_id, other) for other, sim in hits if other != c.image_id and sim >= floor)
    if bulk:
        for i, j in semdedup_pairs(own_vectors, thresholds.min_cosine).tolist():
            id_pairs.append((own[i].image_id, own[j].image_id))
    # the exact safety net, whatever the graph found: the drop against itself (small drops) and
    # against every representative in each vector's nearest k-means buckets of the other drops
    if len(own) <= SELF_EXACT_UP_TO:
        for i, j in self_pairs(own_vectors, floor, keep=neighbours).tolist():
            id_pairs.append((own[i].image_id, own[j].image_id))
    recheck = corpus_recheck(catalog, model, own_vectors, others, floor, probes=probes, keep=neighbours)
    id_pairs.extend((own[r].image_id, other) for r, other in zip(recheck.rows.tolist(), recheck.image_ids.tolist()))
    # 2. perceptual: within the drop (multi-index hashing, exact, no n^2 scan) and against other
    #    drops (a mirrored hash close to another image's hash is a horizontally flipped copy)
    n_own = len(own)
    for i, j in hamming_pairs_indexed(own_hashes, thresholds.max_hamming).tolist():
        id_pairs.append((own[i].image_id, own[j].image_id))
    both = np.r_[own_hashes, own_mirrors]
    for i, j in hamming_pairs_indexed(both, mirror_max_hamming(thresholds.max_hamming)).tolist():
        if i < n_own <= j and j - n_own != i:  # (hash of i, mirror of j - n_own)
            id_pairs.append((own[i].image_id, own[j - n_own].image_id))
    exact = []
    if others:
        kept_ids, kept_hashes = catalog.kept_phashes(others)
        for hashes, radius in ((own_hashes, thresholds.max_hamming), (own_mirrors, mirror_max_hamming(thresholds.max_hamming))):
            # multi-index hashing: the drop against millions of kept hashes without a drop x corpus scan
            for i, j in hamming_cross_pairs(hashes, kept_hashes, radius).tolist():
                id_pairs.append((own[i].image_id, int(kept_ids[j])))
        # 3. exact: identical content already represented in another drop
        exact = catalog.kept_images_with_hashes(others, sorted({c.sha256 for c in own}))

    foreign_ids = {b for _, b in id_pairs if b not in own_pos} | {k.image_id for k in exact}
    reps = catalog.representatives_of(sorted(foreign_ids))
    # (a member of another drop may point back at one of this drop's images: that stays an own candidate)
    foreign_reps = {reps.get(i, i) for i in foreign_ids} - set(own_pos)
    foreign: list[KeptImage] = catalog.kept_images(sorted(foreign_reps)) if foreign_reps else []
    foreign_vectors = catalog.vectors_for([k.image_id for k in foreign], model) if foreign else {}

    candidates = list(own) + foreign
    position = {c.image_id: p for p, c in enumerate(candidates)}
    has_vector = np.asarray([c.image_id in vec_by_id or c.image_id in foreign_vectors for c in candidates])
    vectors = np.zeros((len(candidates), dim), dtype=np.float32)
    for p, c in enumerate(candidates):
        v = vec_by_id.get(c.image_id, foreign_vectors.get(c.image_id))
        if v is not None:
            vectors[p] = v
    pairs = set()
    for a, b in id_pairs:
        b = b if b in own_pos else reps.get(b, b)
        if b in position and a != b:
            pairs.add((position[a], position[b]))
    pair_array = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)

    order = representative_order(
        pixels=np.asarray([c.pixels for c in candidates]),
        drop_rank=np.asarray([c.drop_ordinal for c in candidates]),
        prior_leader=np.arange(len(candidates)) >= n_own,
        keys=[f"{c.drop_key}/{c.object_key}" for c in candidates],
        jpeg_quality=[c.jpeg_quality for c in candidates],
        captured=[c.exif_datetime for c in candidates],
        modified=[c.last_modified for c in candidates],
    )
    pair_records: list[dict] = []
    verify = None
    if verifier is not None:
        verify = PairVerifier(candidates, verifier, stores, workers, pair_records)
    assignments = cluster_duplicates(
        [c.sha256 for c in candidates],
        np.asarray([c.phash for c in candidates]),
        vectors,
        has_vector,
        order,
        np.arange(len(candidates)) >= n_own,
        pair_array,
        thresholds,
        phash_mirror=np.asarray([c.phash_mirror for c in candidates]),
        mirror_perm=mirror_perm,
        verify=verify,
    )
    rows = []
    tiers = {"exact": 0, "perceptual": 0, "semantic": 0}
    cross = 0
    for a in assignments[:n_own]:
        is_rep = a.leader == a.index
        rows.append((candidates[a.index].image_id, candidates[a.leader].image_id, is_rep, a.tier, a.similarity))
        if not is_rep:
            tiers[a.tier] += 1
            cross += a.leader >= n_own
    written = catalog.replace_dedup(
        drop_key,
        model,
        rows,
        max_hamming=thresholds.max_hamming,
        min_cosine=thresholds.min_cosine,
        pairs=pair_records,
        verifier=None if verifier is None else dataclasses.asdict(verifier),
    )
    record_drop_buckets(catalog, model, drop_key, np.asarray([c.image_id for c in own], dtype=np.int64), own_vectors)
    verified = {
        "pairs_verified": len(pair_records),
        "pairs_accepted": sum(1 for p in pair_records if p["accepted"]),
        "verify_seconds": round(verify.seconds, 3) if verify is not None else 0.0,
        "images_prepared": verify.prepared if verify is not None else 0,
    }
    return {
        "mode": "bulk" if bulk else "incremental",
        "images": n_own,
        "kept": sum(1 for r in rows if r[2]),
        "duplicates": sum(tiers.values()),
        "exact_duplicates": tiers["exact"],
        "perceptual_duplicates": tiers["perceptual"],
        "semantic_duplicates": tiers["semantic"],
        "duplicates_of_other_drops": int(cross),
        "other_drops_compared": len(others),
        "other_candidates_checked": len(foreign),
        "pairs_rechecked": int(len(pair_array)),
        "hnsw_ef_search": ef,
        "exact_recheck": recheck.stats,
        "repaired_members_elsewhere": written["repaired_members"],
        "max_hamming": thresholds.max_hamming,
        "min_cosine": thresholds.min_cosine,
        "verified": verifier is not None,
        **verified,
    }


def read_source_image(
    stores: ImageStores, image: KeptImage, use: Callable[[Image.Image], T], *, draft_size: int = WORK_SIDE
) -> T | str:
    """`use` applied to the image's pixels, read again through `stores` and decoded the way the
    manifest and the embedders decode (core.decode: EXIF orientation applied, huge images reduced,
    JPEGs decoded at a reduced scale covering `draft_size`), or why it cannot be: unreadable,
    changed since its manifest (another sha256), undecodable. Never raises for the content."""
    try:
        data = stores.read_uri(image.source_uri)
    except OSError as exc:
        return f"unreadable: {exc}"
    if sha256_hex(data) != image.sha256:
        return "changed since its manifest"
    decoded = decode_image(data, draft_size=draft_size)
    if not isinstance(decoded, DecodedImage):
        return f"undecodable: {decoded.error}"
    try:
        return use(decoded.image)
    except Exception as exc:  # noqa: BLE001 - one odd image rejects its pairs, never the drop
        return f"undecodable: {type(exc).__name__}: {exc}"


class PairVerifier:
    """The `verify` callback of cluster_duplicates: reads both images of every proposed link
    (candidate positions) through `stores`, computes each image's verification features once,
    verifies the pairs in `workers` threads (OpenCV and numpy release the GIL), and appends one
    record per pair to `records`. Links are processed in chunks so that at most about
    `max_cached` images' features are held at once. An image that cannot be read, changed since
    its manifest, or cannot be decoded rejects its pairs (reason says which) and fails nothing."""

    def __init__(
        self,
        candidates: list[KeptImage],
        settings: VerifierSettings,
        stores: ImageStores,
        workers: int,
        records: list[dict],
        *,
        chunk: int = 4000,
        max_cached: int = 3000,
    ) -> None:
        self.candidates = candidates
        self.settings = settings
        self.stores = stores
        self.workers = max(1, workers)
        self.records = records
        self.chunk = chunk
        self.max_cached = max_cached
        self.seconds = 0.0
        self.prepared = 0

    def _load(self, pos: int) -> VerifyImage | str:
        return read_source_image(self.stores, self.candidates[pos], prepare)

    def __call__(self, links: list[Link]) -> list[bool]:
        started = time.perf_counter()
        cache: dict[int, VerifyImage | str] = {}
        out: list[bool] = []
        # parallel across pairs, so OpenCV and BLAS single-threaded inside each (nested pools
        # oversubscribe the cores: measured 66 s instead of 40 s on benchmarks/dedup_hard.py)
        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with threadpool_limits(1), ThreadPoolExecutor(self.workers) as pool:
                out = self._run(links, cache, pool)
        finally:
            cv2.setNumThreads(cv_threads)
        self.seconds += time.perf_counter() - started
        return out

    def _run(self, links: list[Link], cache: dict, pool: ThreadPoolExecutor) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(links), self.chunk):
            part = links[start : start + self.chunk]
            needed = {p for link in part for p in (link.i, link.j)}
            if len(cache) + len(needed) > self.max_cached:
                for pos in [p for p in cache if p not in needed]:
                    del cache[pos]
            missing = sorted(needed - set(cache))
            for pos, features in zip(missing, pool.map(self._load, missing)):
                cache[pos] = features
            self.prepared += len(missing)
            out += pool.map(lambda link: self._verify(link, cache), part)
        return out

    def _verify(self, link: Link, cache: dict) -> bool:
        a, b = cache[link.i], cache[link.j]
        if isinstance(a, str) or isinstance(b, str):
            problem = a if isinstance(a, str) else b
            key = self.candidates[link.i if isinstance(a, str) else link.j].object_key
            verdict = PairVerdict(False, f"{key}: {problem}"[:500])
        else:
            try:
                verdict = verify_pair(a, b, self.settings)
            except Exception as exc:  # noqa: BLE001 - one odd pair is rejected, never the drop
                verdict = PairVerdict(False, f"verification failed: {type(exc).__name__}: {exc}"[:500])
        ia, ib = self.candidates[link.i].image_id, self.candidates[link.j].image_id
        record = verdict.as_dict()
        record.update(
            image_a=min(ia, ib),
            image_b=max(ia, ib),
            tier=link.tier,
            similarity=float(link.similarity),
            mirrored=bool(link.mirrored or verdict.mirrored),
        )
        self.records.append(record)
        return verdict.accepted
