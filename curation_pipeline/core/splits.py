"""Train / val / test splits that do not leak: whole duplicate groups go to one part, and parts are
stratified by class and by embedding cluster.

Greedy over groups, largest and rarest first (iterative stratification, Sechidis et al. 2011, on
groups instead of items): each group goes to the part whose remaining demand for the group's
strata (its classes, its clusters, and plain size) is largest, as the unfilled share of that
part's target, classes weighing most. Rare classes go first, so they are spread over the parts
before common ones fill them."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

# How much each kind of stratum counts when a group picks its part.
WEIGHTS = {"class": 1.0, "cluster": 0.5, "all": 0.25}


def parse_fractions(text: str | Mapping[str, float]) -> dict[str, float]:
    """'train=0.8,val=0.1,test=0.1' or '0.8,0.1,0.1' (train, val, test) -> {part: fraction}."""
    if isinstance(text, Mapping):
        out = {str(k): float(v) for k, v in text.items()}
    else:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if all("=" in t for t in items):
            out = {k.strip(): float(v) for k, v in (t.split("=", 1) for t in items)}
        else:
            names = ["train", "val", "test"]
            if len(items) > len(names):
                raise ValueError(f"fractions {text!r}: name the parts (train=0.7,val=0.1,test=0.1,holdout=0.1)")
            out = {names[i]: float(v) for i, v in enumerate(items)}
    if not out or any(not (0 < v <= 1) for v in out.values()) or abs(sum(out.values()) - 1) > 1e-6:
        raise ValueError(f"fractions {dict(out)}: each in (0, 1], summing to 1")
    return out


def stratified_group_split(
    groups: Sequence[Hashable],
    classes: Sequence[Hashable | None],
    fractions: Mapping[str, float],
    *,
    clusters: Sequence[Hashable] | None = None,
    seed: int = 0,
) -> list[str]:
    """The part of each item. Items that share a group (a duplicate group) always share a part;
    `classes` (None: no class) and `clusters` are the strata."""
    n = len(groups)
    if len(classes) != n or (clusters is not None and len(clusters) != n):
        raise ValueError("groups, classes and clusters must have one entry per item")
    parts = list(fractions)
    frac = np.asarray([fractions[p] for p in parts], dtype=np.float64)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)

    def strata(i: int) -> list[tuple]:
        keys: list[tuple] = [("all",)]
        if classes[i] is not None:
            keys.append(("class", classes[i]))
        if clusters is not None:
            keys.append(("cluster", clusters[i]))
        return keys

    totals: Counter = Counter(k for i in range(n) for k in strata(i))
    need = {k: frac * c for k, c in totals.items()}  # remaining demand per part
    rng = np.random.default_rng(seed)
    order = list(members)
    tiebreak = {g: float(rng.random()) for g in order}

    def rarity(g) -> float:
        return min(totals[("class", classes[i])] for i in members[g]) if any(classes[i] is not None for i in members[g]) else n

    order.sort(key=lambda g: (rarity(g), -len(members[g]), tiebreak[g]))
    out = [""] * n
    for g in order:
        counts = Counter(k for i in members[g] for k in strata(i))
        score = np.zeros(len(parts))
        for key, c in counts.items():
            # the unfilled share of each part's target for this stratum: classes first, then
            # clusters, then plain size
            score += WEIGHTS[key[0]] * c * need[key] / (frac * totals[key])
        # ties (e.g. the first group): the part with the largest share
        best = int(np.lexsort((-frac, -score))[0])
        for key, c in counts.items():
            need[key][best] -= c
        for i in members[g]:
            out[i] = parts[best]
    return out


def split_report(parts: Sequence[str], classes: Sequence[Hashable | None]) -> dict:
    """{part: {"items": n, "classes": {class: n}}}."""
    out: dict = {}
    for p, c in zip(parts, classes):
        entry = out.setdefault(p, {"items": 0, "classes": Counter()})
        entry["items"] += 1
        if c is not None:
            entry["classes"][str(c)] += 1
    return {p: {"items": e["items"], "classes": dict(sorted(e["classes"].items()))} for p, e in out.items()}
