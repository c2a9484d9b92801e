"""Duplicate clustering in three tiers, cheapest first: exact (sha256), perceptual (pHash Hamming
distance), semantic (embedding cosine similarity).

Identical contents (same sha256) are collapsed into one node first, so a thousand frames of a
static camera cost one node, not half a million links. Nodes are then clustered with *star*
(leader) clustering, not connected components: nodes are visited in representative-preference
order, an unassigned node becomes a leader, and only nodes with a *direct* link to that leader
join it. So every member is within the threshold of its representative; chains A~B~C with
A !~ C never merge A and C (the failure of approximate neighbour-chaining tools). Locked nodes
(representatives already published by other drops) always lead their own cluster and are never
absorbed, so existing clusters stay stable while a new drop's copies join them.

Similarities are recomputed exactly for every candidate pair the caller proposes (ANN neighbours,
hash matches); nothing here builds an all-pairs matrix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from .hashing import HASH_BITS

TIER_EXACT = "exact"
TIER_PERCEPTUAL = "perceptual"
TIER_SEMANTIC = "semantic"
_TIER_RANK = {TIER_EXACT: 3, TIER_PERCEPTUAL: 2, TIER_SEMANTIC: 1}


# The semantic (cosine) threshold depends on the embedder that made the vectors. Each backend's
# default is in its registry entry (resources/embedders.py EMBEDDER_BACKENDS, looked up by model id
# with resources.embedders.default_min_cosine); callers pass it in: core knows no backends.
# DedupThresholds' own default is the default backend's (offline descriptor), calibrated by
# benchmarks/dedup_quality.py (precision 1.0, best F1 region 0.74-0.82 on its labelled set).
OFFLINE_MIN_COSINE = 0.80
DEFAULT_MAX_HAMMING = 4  # calibrated by the same benchmark: 6 already merges distinct crops
# With pixel verification (core.verify) the hashes only propose: benchmarks/dedup_hard.py
PROPOSAL_MAX_HAMMING = 12


@dataclass(frozen=True)
class DedupThresholds:
    max_hamming: int = DEFAULT_MAX_HAMMING  # pHash bits out of 64
    min_cosine: float = OFFLINE_MIN_COSINE  # semantic tier, on L2-normalised embeddings (pass the backend's)

    def __post_init__(self) -> None:
        if not 0 <= self.max_hamming <= HASH_BITS:
            raise ValueError(f"max_hamming must be within [0, {HASH_BITS}], got {self.max_hamming}")
        if not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be within (0, 1], got {self.min_cosine}")


@dataclass(frozen=True)
class Link:
    """An undirected duplicate link between candidate positions i < j."""

    i: int
    j: int
    tier: str
    similarity: float
    mirrored: bool = False  # the similarity is the mirrored image's (a horizontal flip)


@dataclass(frozen=True)
class Assignment:
    index: int  # candidate position
    leader: int  # candidate position of its representative (itself for a representative)
    tier: str | None  # tier linking it to the representative; None for the representative itself
    similarity: float  # similarity to the representative (1.0 for the representative)


def representative_order(
    pixels: np.ndarray,
    drop_rank: np.ndarray,
    prior_leader: np.ndarray,
    keys: list[str],
    *,
    jpeg_quality: Sequence[int | None] | None = None,
    captured: Sequence[datetime | None] | None = None,
    modified: Sequence[datetime | None] | None = None,
) -> np.ndarray:
    """Candidate positions, most preferred representative first, i.e. the original of a group:
    1. already a representative of another drop (groups stay stable);
    2. the largest resolution (resizes and crops lose);
    3. a camera capture time (EXIF): originals carry it, edited and re-saved copies mostly lose it;
    4. the least re-encoding damage: the JPEG quality its quantisation tables give (a lossless
       file counts as 100);
    5. the earliest drop, then the earliest capture time, then the earliest last-modified time
       (of identical copies, the one that was there first), then the key.
    Sharpness does not decide: brightening or sharpening an edit raises it."""
    n = len(keys)
    quality = list(jpeg_quality) if jpeg_quality is not None else [None] * n
    shot = list(captured) if captured is not None else [None] * n
    changed = list(modified) if modified is not None else [None] * n

    def key(i: int) -> tuple:
        q = quality[i]
        return (
            not bool(prior_leader[i]),
            -int(pixels[i]),
            shot[i] is None,
            -(100 if q is None else int(q)),
            int(drop_rank[i]),
            (shot[i] is None, _stamp(shot[i])),
            (changed[i] is None, _stamp(changed[i])),
            keys[i],
        )

    return np.asarray(sorted(range(n), key=key), dtype=np.int64)


def _stamp(t: datetime | None) -> float:
    if t is None:
        return 0.0
    return t.timestamp() if t.tzinfo is not None else t.replace(tzinfo=timezone.utc).timestamp()


def hamming_pairs(a: np.ndarray, b: np.ndarray | None, max_hamming: int, *, max_cells: int = 1 << 21) -> np.ndarray:
    """(m, 2) index pairs (i into a, j into b) with Hamming distance <= max_hamming, computed in row
    chunks of at most `max_cells` comparisons (memory O(max_cells)). With b None: pairs i < j within a."""
    a = np.asarray(a, dtype=np.int64)
    other = a if b is None else np.asarray(b, dtype=np.int64)
    if len(a) == 0 or len(other) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    rows = max(1, max_cells // len(other))
    found = []
    for start in range(0, len(a), rows):
        stop = min(len(a), start + rows)
        dist = np.bitwise_count(np.bitwise_xor(a[start:stop, None], other[None, :]).view(np.uint64))
        r, c = np.nonzero(dist <= max_hamming)
        r = r + start
        if b is None:
            keep = r < c
            r, c = r[keep], c[keep]
        found.append(np.stack([r, c], axis=1))
    return np.concatenate(found).astype(np.int64)


def cluster_duplicates(
    sha256: list[str],
    phash: np.ndarray,
    vectors: np.ndarray,
    has_vector: np.ndarray,
    order: np.ndarray,
    locked: np.ndarray,
    pairs: np.ndarray,
    thresholds: DedupThresholds,
    phash_mirror: np.ndarray | None = None,
    mirror_perm: np.ndarray | None = None,
    verify: Callable[[list[Link]], list[bool]] | None = None,
) -> list[Assignment]:
    """Assign every candidate position to a representative.

    sha256 (n,), phash (n,) int64, vectors (n, d) unit rows (rows without a vector: has_vector
    False), order: preference permutation (see representative_order), locked (n,) bool: existing
    representatives, pairs (m, 2): candidate pairs to check for perceptual/semantic links,
    phash_mirror (n,): pHash of each mirrored image, so a horizontal flip counts as perceptual;
    mirror_perm: the index permutation turning a vector into its mirrored image's (the offline
    descriptor has one), so a flip with a second edit counts as semantic.

    Without `verify`, every link within the thresholds is a duplicate link. With it, the
    thresholds only *propose*: `verify` gets the proposed links between distinct contents and
    returns a verdict for each; only accepted links (and identical contents) cluster."""
    if len(sha256) == 0:
        return []
    node = content_nodes(sha256, order)
    links = proposed_links(node, phash, vectors, has_vector, pairs, thresholds, phash_mirror, mirror_perm)
    if verify is not None and links:
        links = [link for link, ok in zip(links, verify(links)) if ok]
    return star_clusters(node, links, order, locked)


def content_nodes(sha256: list[str], order: np.ndarray) -> np.ndarray:
    """Identical contents (same sha256) as one node: the anchor position (the most preferred
    member, by `order`) of each position."""
    anchor_of: dict[str, int] = {}
    for pos in np.asarray(order).tolist():
        anchor_of.setdefault(sha256[pos], pos)
    return np.asarray([anchor_of[h] for h in sha256], dtype=np.int64)


def proposed_links(
    node: np.ndarray,
    phash: np.ndarray,
    vectors: np.ndarray,
    has_vector: np.ndarray,
    pairs: np.ndarray,
    thresholds: DedupThresholds,
    phash_mirror: np.ndarray | None = None,
    mirror_perm: np.ndarray | None = None,
) -> list[Link]:
    """Links between content nodes (anchor positions, see content_nodes) for the candidate
    `pairs`, strongest tier per node pair, similarity computed exactly; sorted by (i, j)."""
    links: list[Link] = []
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(p):
        return links
    a, b = node[p[:, 0]], node[p[:, 1]]
    keep = a != b
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    if not len(a):
        return links
    uniq = np.unique(np.stack([a, b], axis=1), axis=0)
    ph = np.asarray(phash, dtype=np.int64)
    ham = np.bitwise_count(np.bitwise_xor(ph[uniq[:, 0]], ph[uniq[:, 1]]).view(np.uint64)).astype(np.int64)
    ham_mirrored = np.zeros(len(uniq), dtype=bool)
    if phash_mirror is not None:
        # Mirror matches must be twice as close: left/right halves of symmetric scenes
        # (a fundus photo, a corridor) are mirror images of each other without being copies.
        pm = np.asarray(phash_mirror, dtype=np.int64)
        for x, y in ((pm[uniq[:, 0]], ph[uniq[:, 1]]), (ph[uniq[:, 0]], pm[uniq[:, 1]])):
            mirrored = np.bitwise_count(np.bitwise_xor(x, y).view(np.uint64)).astype(np.int64)
            use = (mirrored <= mirror_max_hamming(thresholds.max_hamming)) & (mirrored < ham)
            ham = np.where(use, mirrored, ham)
            ham_mirrored |= use
    v = np.asarray(vectors, dtype=np.float32)
    both = np.asarray(has_vector, dtype=bool)[uniq[:, 0]] & np.asarray(has_vector, dtype=bool)[uniq[:, 1]]
    cos = np.where(both, np.einsum("ij,ij->i", v[uniq[:, 0]], v[uniq[:, 1]]), -1.0)
    cos_mirrored = np.zeros(len(uniq), dtype=bool)
    if mirror_perm is not None:
        # a flipped copy's vector is (close to) the original's vector permuted: a flip with a
        # second edit (crop, text, JPEG) fails the pHash radius but not this
        cm = np.where(both, np.einsum("ij,ij->i", v[uniq[:, 0]][:, mirror_perm], v[uniq[:, 1]]), -1.0)
        cos_mirrored = cm > cos
        cos = np.maximum(cos, cm)
    for (i, j), h, hm, c, cmir in zip(uniq.tolist(), ham.tolist(), ham_mirrored.tolist(), cos.tolist(), cos_mirrored.tolist()):
        if h <= thresholds.max_hamming:
            links.append(Link(i, j, TIER_PERCEPTUAL, 1.0 - h / HASH_BITS, bool(hm)))
        elif c >= thresholds.min_cosine:
            links.append(Link(i, j, TIER_SEMANTIC, float(c), bool(cmir)))
    return links


def star_clusters(node: np.ndarray, links: list[Link], order: np.ndarray, locked: np.ndarray) -> list[Assignment]:
    """Star clustering over content nodes: nodes visited in preference order (locked nodes first,
    never absorbed); an unassigned node leads, and the unassigned nodes with a direct link to it
    join it (strongest tier, then highest similarity first). Expanded back to positions."""
    n = len(node)
    rank = np.empty(n, dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(n)
    neighbours: dict[int, list[Link]] = {}
    for link in links:
        neighbours.setdefault(link.i, []).append(link)
        neighbours.setdefault(link.j, []).append(link)
    is_locked = {int(x) for x in node[np.asarray(locked, dtype=bool)]}
    leader_of: dict[int, tuple[int, str | None, float]] = {}
    anchors = sorted(set(node.tolist()), key=lambda x: (x not in is_locked, rank[x]))
    for lead in anchors:
        if lead in leader_of:
            continue
        leader_of[lead] = (lead, None, 1.0)
        for link in sorted(neighbours.get(lead, []), key=lambda lk: (-_TIER_RANK[lk.tier], -lk.similarity)):
            other = link.j if link.i == lead else link.i
            if other not in leader_of and other not in is_locked:
                leader_of[other] = (lead, link.tier, link.similarity)
    out = []
    for pos in range(n):
        anchor = int(node[pos])
        lead, tier, sim = leader_of[anchor]
        if lead == anchor:
            out.append(Assignment(pos, anchor, None, 1.0) if pos == anchor else Assignment(pos, anchor, TIER_EXACT, 1.0))
        else:
            out.append(Assignment(pos, lead, tier, sim))
    return out


def hamming_pairs_indexed(hashes: np.ndarray, max_hamming: int, *, max_bucket: int = 4096) -> np.ndarray:
    """All pairs i < j within `max_hamming` bits, without the n^2 scan: multi-index hashing.
    The 64 bits are cut into max_hamming + 1 segments; two hashes within the radius agree exactly
    on at least one segment (pigeonhole), so only hashes sharing a segment value are compared.
    Same result as hamming_pairs(hashes, None, max_hamming). Buckets larger than `max_bucket`
    (one value shared by very many images, e.g. blank frames) are compared in chunks."""
    h = np.asarray(hashes, dtype=np.int64)
    n = len(h)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    u = h.view(np.uint64)
    segments = max_hamming + 1
    bounds = np.linspace(0, 64, segments + 1).astype(int)
    found = []

    def close(block: np.ndarray, members: np.ndarray) -> np.ndarray:
        return np.bitwise_count(np.bitwise_xor(h[block, None], h[None, members]).view(np.uint64)) <= max_hamming

    for s in range(segments):
        lo, hi = bounds[s], bounds[s + 1]
        key = (u >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        for members in _buckets(key, np.arange(n)):
            found += _pairs_in_bucket(members, max_bucket, close)
    return _unique_pairs(found)


def hamming_cross_pairs(a: np.ndarray, b: np.ndarray, max_hamming: int, *, max_candidates: int = 1 << 22) -> np.ndarray:
    """(m, 2) pairs (i into a, j into b) within `max_hamming` bits, by multi-index hashing: b's
    segment values are sorted once per segment and each hash of a looks up the hashes of b that
    share a segment value (pigeonhole: a pair within the radius shares at least one of the
    max_hamming + 1 segments). Cost O((len(a) + len(b)) log len(b) + candidates) instead of
    len(a) * len(b): a new drop against a corpus of millions. Same result as hamming_pairs(a, b, r).
    Candidates are verified in chunks of at most `max_candidates`."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ua, ub = a.view(np.uint64), b.view(np.uint64)
    segments = max_hamming + 1
    bounds = np.linspace(0, 64, segments + 1).astype(int)
    found = []
    for s in range(segments):
        lo, hi = bounds[s], bounds[s + 1]
        mask = np.uint64((1 << (hi - lo)) - 1)
        kb = (ub >> np.uint64(lo)) & mask
        order = np.argsort(kb, kind="stable")
        sorted_kb = kb[order]
        ka = (ua >> np.uint64(lo)) & mask
        left = np.searchsorted(sorted_kb, ka, side="left")
        right = np.searchsorted(sorted_kb, ka, side="right")
        counts = right - left
        hit = np.flatnonzero(counts)
        if len(hit) == 0:
            continue
        # expand (i, each j in its range) in chunks of at most max_candidates pairs
        cum = np.cumsum(counts[hit])
        start = 0
        while start < len(hit):
            base = cum[start - 1] if start else 0
            stop = int(np.searchsorted(cum, base + max_candidates, side="right"))
            stop = max(stop, start + 1)
            rows = hit[start:stop]
            reps = counts[rows]
            i = np.repeat(rows, reps)
            offsets = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
            j = order[np.repeat(left[rows], reps) + offsets]
            close = np.bitwise_count(np.bitwise_xor(a[i], b[j]).view(np.uint64)) <= max_hamming
            if close.any():
                found.append(np.stack([i[close], j[close]], axis=1))
            start = stop
    return _unique_pairs(found)


def semdedup_pairs(
    vectors: np.ndarray,
    min_cosine: float,
    *,
    n_clusters: int | None = None,
    assignments: int = 2,
    seed: int = 0,
    max_cells: int = 1 << 22,
) -> np.ndarray:
    """Bulk-mode semantic candidates (SemDeDup-style) for a very large first import: k-means the
    unit vectors into C clusters, put each vector in its `assignments` nearest clusters (so pairs
    straddling a border are still seen), then compute exact cosine similarities inside each
    cluster in row chunks of at most `max_cells` products. Returns unique pairs i < j with
    cosine >= min_cosine. Memory: O(n * assignments + max_cells), never n^2."""
    from sklearn.cluster import MiniBatchKMeans

    v = np.asarray(vectors, dtype=np.float32)
    n = len(v)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    c = n_clusters or max(1, min(n // 2, int(np.sqrt(n) * 2)))
    km = MiniBatchKMeans(n_clusters=c, random_state=seed, batch_size=4096, n_init=3).fit(v)
    centres = km.cluster_centers_.astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
    k = min(assignments, c)
    member_of = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, max(1, max_cells // c)):
        stop = min(n, start + max(1, max_cells // c))
        sims = v[start:stop] @ centres.T
        member_of[start:stop] = np.argsort(-sims, axis=1)[:, :k]
    found = []

    def similar(block: np.ndarray, members: np.ndarray) -> np.ndarray:
        return v[block] @ v[members].T >= min_cosine

    for members in _buckets(member_of.ravel(), np.repeat(np.arange(n), k)):
        found += _pairs_in_bucket(members, max(1, max_cells // len(members)), similar)
    return _unique_pairs(found)


def _buckets(keys: np.ndarray, items: np.ndarray):
    """The arrays of `items` that share a key, for every key held by at least two items."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for a, b in zip(starts.tolist(), ends.tolist()):
        if b - a >= 2:
            yield items[order[a:b]]


def _pairs_in_bucket(members: np.ndarray, rows: int, hit) -> list[np.ndarray]:
    """Pairs i < j of one bucket for which hit(block, members) is true, `rows` members at a time."""
    out = []
    for r0 in range(0, len(members), rows):
        block = members[r0 : r0 + rows]
        r, c = np.nonzero(hit(block, members))
        i, j = block[r], members[c]
        keep = i < j
        if keep.any():
            out.append(np.stack([i[keep], j[keep]], axis=1))
    return out


def _unique_pairs(found: list[np.ndarray]) -> np.ndarray:
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0).astype(np.int64)


def mirror_max_hamming(max_hamming: int) -> int:
    """The pHash radius within which an image's mirrored hash counts as a perceptual match: half the
    plain radius, rounded down. Mirror matches must be twice as close because the left and right
    halves of symmetric scenes (a fundus photo, a corridor) are mirror images of each other without
    being copies. The stored-link check (catalog dedup_violations) binds this value."""
    return int(max_hamming) // 2
