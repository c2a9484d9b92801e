"""Named train/val/test splits of the labelled images (core/splits.py), stored in `splits` and
checked for leakage with the dedup step's duplicate groups (the check `curation leaks` uses): a
split whose parts share a duplicate group is refused, never stored.

An image's class for stratification is its image-level label, else the most frequent class of
its boxes. Clusters are k-means clusters of the model's image vectors (images without a vector
form their own stratum). Images of protected drops (evaluation sets) are left out."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from curation_pipeline.core.selection import spherical_kmeans
from curation_pipeline.core.splits import parse_fractions, split_report, stratified_group_split
from curation_pipeline.resources.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSpec:
    name: str = "default"
    fractions: str = "train=0.8,val=0.1,test=0.1"
    drop_keys: tuple[str, ...] | None = None  # default: every unprotected drop with labels
    version: str | None = None  # label version (default: each drop's newest)
    clusters: int = 0  # k-means strata; 0: about one per 50 images, at most 64
    seed: int = 0


def image_classes(objects: list[dict]) -> dict[int, str]:
    """{image_id: its class}: the image-level label, else its most frequent box class."""
    level: dict[int, str] = {}
    boxes: dict[int, Counter] = {}
    for o in objects:
        if o["box"] is None:
            level.setdefault(o["image_id"], o["class_name"])
        else:
            boxes.setdefault(o["image_id"], Counter())[o["class_name"]] += 1
    out = {i: c.most_common(1)[0][0] for i, c in boxes.items()}
    out.update(level)
    return out


def make_split(catalog: Catalog, spec: SplitSpec, *, model: str | None, logger: logging.Logger = log) -> dict:
    fractions = parse_fractions(spec.fractions)
    protected = set(catalog.protected_drops())
    drops = [d for d in (spec.drop_keys or catalog.known_drops()) if d not in protected]
    set_ids = catalog.current_set_ids("labels", drops, spec.version)
    if not set_ids:
        raise ValueError(f"split {spec.name!r}: no labels in drops {drops[:10]} (import some with `curation labels import`)")
    classes = image_classes(catalog.label_objects(set_ids))
    image_ids = sorted(classes)
    groups = catalog.duplicate_group_of(image_ids)
    clusters = None
    if model:
        vectors = catalog.vectors_for(image_ids, model)
        with_vec = [i for i in image_ids if i in vectors]
        if len(with_vec) >= 20:
            k = spec.clusters or max(2, min(64, len(with_vec) // 50))
            labels, _ = spherical_kmeans(np.stack([vectors[i] for i in with_vec]), k, seed=spec.seed)
            by_id = dict(zip(with_vec, labels.tolist()))
            clusters = [by_id.get(i, -1) for i in image_ids]
    parts = stratified_group_split(
        [groups[i] for i in image_ids], [classes[i] for i in image_ids], fractions, clusters=clusters, seed=spec.seed
    )
    report = split_report(parts, [classes[i] for i in image_ids])
    stats = {
        "images": len(image_ids),
        "duplicate_groups": len(set(groups.values())),
        "parts": report,
        "fractions": fractions,
        "clusters": len(set(clusters)) if clusters else 0,
        "protected_drops_left_out": sorted(protected),
    }
    catalog.replace_split(spec.name, {**asdict(spec), "model": model}, stats, dict(zip(image_ids, parts)))
    leaks = catalog.split_leaks(spec.name)
    if leaks:  # cannot happen by construction; a stored leaking split would be worse than none
        catalog.replace_split(spec.name, {**asdict(spec), "model": model}, {**stats, "refused": True}, {})
        raise RuntimeError(f"split {spec.name!r}: {len(leaks)} duplicate pairs across parts, e.g. {leaks[0]}")
    stats["leaks"] = 0
    logger.info("split %s: %s", spec.name, {p: r["items"] for p, r in report.items()})
    return stats
