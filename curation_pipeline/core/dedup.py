"""Duplicate clustering in three tiers, cheapest first: exact (sha256), perceptual (pHash Hamming
distance), semantic (embedding cosine similarity).

Clustering is *star* (leader) clustering, not connected components: candidates are visited in
representative-preference order, an unassigned candidate becomes a leader, and only candidates
with a *direct* link to that leader join it. So every member is within the threshold of its
representative; chains A~B~C with A !~ C never merge A and C (the failure of approximate
neighbour-chaining tools). Leaders that are already representatives of earlier drops are visited
first, so a new drop's copies join the clusters that exist instead of re-electing them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hashing import HASH_BITS

TIER_EXACT = "exact"
TIER_PERCEPTUAL = "perceptual"
TIER_SEMANTIC = "semantic"
_TIER_RANK = {TIER_EXACT: 3, TIER_PERCEPTUAL: 2, TIER_SEMANTIC: 1}


@dataclass(frozen=True)
class DedupThresholds:
    max_hamming: int = 6  # pHash bits out of 64
    min_cosine: float = 0.93  # semantic tier, on L2-normalised embeddings

    def __post_init__(self) -> None:
        if not 0 <= self.max_hamming <= HASH_BITS:
            raise ValueError(f"max_hamming must be within [0, {HASH_BITS}], got {self.max_hamming}")
        if not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be within (0, 1], got {self.min_cosine}")


@dataclass(frozen=True)
class Link:
    """An undirected duplicate link between candidate positions i and j."""

    i: int
    j: int
    tier: str
    similarity: float


@dataclass(frozen=True)
class Assignment:
    index: int  # candidate position
    leader: int  # candidate position of its representative (itself for a representative)
    tier: str | None  # strongest tier linking it to the leader; None for the leader itself
    similarity: float  # similarity to the leader (1.0 for the leader)


def representative_order(pixels: np.ndarray, sharpness: np.ndarray, drop_rank: np.ndarray,
                         prior_leader: np.ndarray, keys: list[str]) -> np.ndarray:
    """Candidate positions, most preferred representative first: already a representative of an
    earlier drop, then largest resolution, then sharpest, then earliest drop, then key (stable)."""
    order = sorted(
        range(len(keys)),
        key=lambda i: (not bool(prior_leader[i]), -int(pixels[i]), -float(sharpness[i]), int(drop_rank[i]), keys[i]),
    )
    return np.asarray(order, dtype=np.int64)


def find_links(sha256: list[str], phash: np.ndarray, vectors: np.ndarray | None,
               thresholds: DedupThresholds, *, extra_pairs: np.ndarray | None = None,
               chunk_rows: int = 2048) -> list[Link]:
    """All duplicate links among n candidates, keeping the strongest tier per pair.

    Exact and perceptual links are all-pairs within the candidate set (cheap: hashes). Semantic
    links are exact cosine similarities, computed in row chunks so memory is O(chunk * n); when
    `extra_pairs` (m, 2) is given, semantic links are checked only on those pairs (the neighbour
    candidates an ANN index returned) instead of all pairs."""
    n = len(sha256)
    best: dict[tuple[int, int], Link] = {}

    def offer(i: int, j: int, tier: str, sim: float) -> None:
        if i == j:
            return
        a, b = (i, j) if i < j else (j, i)
        cur = best.get((a, b))
        if cur is None or _TIER_RANK[tier] > _TIER_RANK[cur.tier]:
            best[(a, b)] = Link(a, b, tier, float(sim))

    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(sha256):
        by_hash.setdefault(h, []).append(i)
    for members in by_hash.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                offer(members[x], members[y], TIER_EXACT, 1.0)

    ph = np.asarray(phash, dtype=np.int64)
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        xor = np.bitwise_xor(ph[start:stop, None], ph[None, :]).view(np.uint64)
        dist = np.bitwise_count(xor)
        rows, cols = np.nonzero(dist <= thresholds.max_hamming)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < c:
                offer(i, c, TIER_PERCEPTUAL, 1.0 - dist[r, c] / HASH_BITS)

    if vectors is not None and n > 1:
        v = np.asarray(vectors, dtype=np.float32)
        if extra_pairs is not None:
            pairs = np.asarray(extra_pairs, dtype=np.int64).reshape(-1, 2)
            if len(pairs):
                sims = np.einsum("ij,ij->i", v[pairs[:, 0]], v[pairs[:, 1]])
                for (i, j), s in zip(pairs.tolist(), sims.tolist()):
                    if s >= thresholds.min_cosine:
                        offer(i, j, TIER_SEMANTIC, s)
        else:
            for start in range(0, n, chunk_rows):
                stop = min(n, start + chunk_rows)
                sims = v[start:stop] @ v.T
                rows, cols = np.nonzero(sims >= thresholds.min_cosine)
                for r, c in zip(rows.tolist(), cols.tolist()):
                    i = start + r
                    if i < c:
                        offer(i, c, TIER_SEMANTIC, float(sims[r, c]))
    return sorted(best.values(), key=lambda link: (link.i, link.j))


def star_clusters(n: int, links: list[Link], order: np.ndarray) -> list[Assignment]:
    """Leader clustering over candidate positions 0..n-1 visited in `order`."""
    neighbours: dict[int, dict[int, Link]] = {}
    for link in links:
        neighbours.setdefault(link.i, {})[link.j] = link
        neighbours.setdefault(link.j, {})[link.i] = link
    assigned: dict[int, Assignment] = {}
    for leader in order.tolist():
        if leader in assigned:
            continue
        assigned[leader] = Assignment(leader, leader, None, 1.0)
        for other, link in sorted(neighbours.get(leader, {}).items()):
            if other not in assigned:
                assigned[other] = Assignment(other, leader, link.tier, link.similarity)
    return [assigned[i] for i in range(n)]

