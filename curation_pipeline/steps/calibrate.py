"""Calibrate the near-duplicate thresholds of a descriptor model on the corpus (dedup_calibration).

A seeded sample of kept images is read, each is edited synthetically (core.calibration), and the
edit is embedded with the same model and hashed. Positives: (image, its edit). Negatives: (image,
its nearest distinct neighbour in the corpus, by the model's HNSW index, skipping identical
contents and members of its own duplicate group). Both kinds of pair are scored by the proposal
tiers (cosine, mirrored where the model allows; pHash) and by the pixel verifier; core.calibration
picks the thresholds; the result is stored (dedup_calibrations) and dedup uses it for this model."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from curation_pipeline.core.calibration import pick_thresholds, synthetic_edit
from curation_pipeline.core.dedup import PROPOSAL_MAX_HAMMING
from curation_pipeline.core.hashing import hamming_distances, perceptual_hashes
from curation_pipeline.core.verify import VerifierSettings, prepare, verify_pair
from curation_pipeline.resources.catalog import Catalog, KeptImage
from curation_pipeline.resources.embedders import Embedder, mirror_permutation_for
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores
from curation_pipeline.steps.dedup import read_source_image

log = logging.getLogger(__name__)


def _read(stores: ImageStores, image: KeptImage) -> Image.Image | None:
    """The image's pixels (at least 1024 px a side where it has them), or None where it cannot be
    read (it is left out of the sample)."""
    found = read_source_image(stores, image, lambda im: im, draft_size=1024)
    return None if isinstance(found, str) else found


def _share(verdict) -> float:
    """What the calibrated acceptance (the geometric path's agreeing share) decides about a pair:
    its share where every other test passed; +inf where the pair is accepted whatever that
    threshold (the photometric path); NaN where another test rejects it whatever the threshold."""
    if verdict.only_share_decides:
        return float(verdict.agreement)
    return float("inf") if verdict.accepted else float("nan")


def calibrate_dedup(
    catalog: Catalog,
    embedder: Embedder,
    model: str,
    *,
    stores: ImageStores = DEFAULT_STORES,
    sample: int = 200,
    seed: int = 0,
    target_recall: float = 0.97,
    target_precision: float = 0.99,
    workers: int = 2,
    logger: logging.Logger = log,
) -> dict:
    """Calibrate and store; returns the stored record (with its id) and figures."""
    started = time.perf_counter()
    images = catalog.calibration_sample(model, sample, seed)
    if not images:
        raise ValueError(f"no embedded images of model {model} to calibrate on: ingest a drop first")
    vectors = catalog.vectors_for([k.image_id for k in images], model)
    perm = mirror_permutation_for(model)
    rng = random.Random(seed)
    defaults = VerifierSettings()

    with ThreadPoolExecutor(workers) as pool:
        originals = list(pool.map(lambda k: _read(stores, k), images))
    usable = [(k, im) for k, im in zip(images, originals) if im is not None and k.image_id in vectors]
    if not usable:
        raise ValueError(f"none of the {len(images)} sampled images of model {model} could be read")
    edits = [synthetic_edit(im, rng) for _, im in usable]
    edit_vectors = embedder.embed_images([e for e, _ in edits])

    # negatives: each image's nearest distinct neighbour in the corpus
    own = np.stack([vectors[k.image_id] for k, _ in usable])
    hits = catalog.nearest(model, own, 8, drop_keys=None)
    group = catalog.representatives_of(sorted({k.image_id for k, _ in usable} | {h for hs in hits for h, _ in hs}))
    neighbour_ids = []
    for (k, _), hs in zip(usable, hits):
        mine = group.get(k.image_id, k.image_id)
        neighbour_ids.append(next((h for h, _ in hs if h != k.image_id and group.get(h, h) != mine), None))
    known = {n for n in neighbour_ids if n is not None}
    neighbour_info = {x.image_id: x for x in catalog.candidate_images(sorted(known))} if known else {}
    neighbour_vectors = catalog.vectors_for(sorted(known), model) if known else {}

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        c = float(a @ b)
        return max(c, float(a[perm] @ b)) if perm is not None else c

    def score_positive(i: int) -> tuple[float, int, float, bool]:
        (k, im), (edited, _) = usable[i], edits[i]
        h, _ = perceptual_hashes(edited)
        ham = int(hamming_distances(h, np.asarray([k.phash, k.phash_mirror], dtype=np.int64)).min())
        v = verify_pair(prepare(im), prepare(edited), defaults)
        return cosine(own[i], edit_vectors[i]), ham, _share(v), v.accepted

    def score_negative(i: int) -> tuple[float, float, bool] | None:
        n = neighbour_ids[i]
        if n is None or n not in neighbour_info or n not in neighbour_vectors:
            return None
        other = _read(stores, neighbour_info[n])
        if other is None:
            return None
        v = verify_pair(prepare(usable[i][1]), prepare(other), defaults)
        return cosine(own[i], neighbour_vectors[n]), _share(v), v.accepted

    with ThreadPoolExecutor(workers) as pool:
        positives = list(pool.map(score_positive, range(len(usable))))
        negatives = [r for r in pool.map(score_negative, range(len(usable))) if r is not None]
    pick = pick_thresholds(
        np.asarray([p[0] for p in positives]),
        np.asarray([n[0] for n in negatives]),
        np.asarray([p[2] for p in positives]),
        np.asarray([n[1] for n in negatives]),
        default_share=defaults.min_share,
        target_recall=target_recall,
        target_precision=target_precision,
    )
    verifier = dataclasses.replace(defaults, min_share=pick.min_share)
    hamming = np.asarray([p[1] for p in positives])
    summary = {
        "edits": len(positives),
        "neighbours": len(negatives),
        "unreadable": len(images) - len(usable),
        "proposal_recall": round(pick.proposal_recall, 4),
        "neighbours_proposed": round(pick.negatives_proposed, 4),
        "edits_within_proposal_hamming": round(float((hamming <= PROPOSAL_MAX_HAMMING).mean()), 4),
        "verifier_recall": round(pick.verifier_recall, 4),
        "verifier_precision": round(pick.verifier_precision, 4),
        "precision_target_met": pick.precision_target_met,
        "verifier_accepts_edits_at_defaults": round(float(np.mean([p[3] for p in positives])), 4),
        "verifier_accepts_neighbours_at_defaults": int(sum(n[2] for n in negatives)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    record = {
        "model": model,
        "sample_size": len(usable),
        "target_recall": target_recall,
        "target_precision": target_precision,
        "proposal_min_cosine": pick.proposal_min_cosine,
        "proposal_max_hamming": PROPOSAL_MAX_HAMMING,
        "verifier": dataclasses.asdict(verifier),
        "summary": summary,
        "curve": {
            "cosine": pick.cosine_curve,
            "share": pick.share_curve,
            "edits": [{"edit": label, "cosine": round(p[0], 4), "accepted": p[3]} for (_, label), p in zip(edits, positives)],
        },
    }
    record["calibration_id"] = catalog.save_dedup_calibration(record)
    logger.info("dedup calibration %s for %s: %s", record["calibration_id"], model, summary)
    return record
