from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from curation_pipeline.core.dedup import (
    TIER_EXACT,
    TIER_PERCEPTUAL,
    TIER_SEMANTIC,
    DedupThresholds,
    cluster_duplicates,
    hamming_pairs,
    representative_order,
)


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


FAR = np.array([0, 0xFFFF, 0xFFFF0000, 0xFFFF00000000, -1], dtype=np.int64)  # pairwise >= 16 bits apart


def _cluster(sha, hashes, v, pairs, th, locked=None, order=None):
    n = len(sha)
    order = np.arange(n) if order is None else np.asarray(order)
    locked = np.zeros(n, bool) if locked is None else np.asarray(locked)
    return cluster_duplicates(
        sha,
        np.asarray(hashes, dtype=np.int64),
        v,
        np.ones(n, bool),
        order,
        locked,
        np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        th,
    )


def test_no_chaining_across_a_similarity_chain():
    # A~B (0.95) and B~C (0.95) but A vs C only ~0.80: C must not join A's cluster.
    v = _unit([[1, 0, 0], [np.cos(0.32), np.sin(0.32), 0], [np.cos(0.64), np.sin(0.64), 0]])
    th = DedupThresholds(max_hamming=0, min_cosine=0.94)
    out = _cluster(["a", "b", "c"], FAR[:3], v, [[0, 1], [1, 2], [0, 2]], th)
    assert [a.leader for a in out] == [0, 0, 2]
    for a in out:
        assert float(v[a.index] @ v[a.leader]) >= th.min_cosine - 1e-6


def test_identical_content_collapses_and_copies_follow_their_group():
    # 500 identical frames + one near-duplicate of them: no pairwise blow-up, all in one cluster
    n = 501
    sha = ["same"] * 500 + ["other"]
    v = _unit(np.tile([1.0, 0.0], (n, 1)) + np.r_[np.zeros((500, 2)), [[0.0, 0.1]]])
    hashes = np.r_[np.zeros(500, np.int64), [1 << 40]]
    out = _cluster(sha, hashes, v, [[500, 3]], DedupThresholds(max_hamming=0, min_cosine=0.99))
    assert {a.leader for a in out} == {0}
    assert sum(a.tier == TIER_EXACT for a in out) == 499 and out[500].tier == TIER_SEMANTIC


def test_tiers_and_exact_similarities_are_recorded():
    v = _unit([[1, 0, 0], [0.999, 0.04, 0], [0, 0, 1], [0, 0.2, 1]])
    hashes = np.array([0, 0b111, 1 << 50, (1 << 50) | (0xFFFF << 2)], dtype=np.int64)
    out = _cluster(["a", "b", "c", "d"], hashes, v, [[0, 1], [2, 3]], DedupThresholds(max_hamming=4, min_cosine=0.95))
    assert (out[1].leader, out[1].tier) == (0, TIER_PERCEPTUAL) and out[1].similarity == pytest.approx(1 - 3 / 64)
    assert (out[3].leader, out[3].tier) == (2, TIER_SEMANTIC)
    assert out[3].similarity == pytest.approx(float(v[2] @ v[3]))


def test_only_proposed_pairs_are_checked():
    v = _unit([[1, 0], [1, 0.01], [1, 0.02]])
    out = _cluster(["a", "b", "c"], FAR[:3], v, [[0, 2]], DedupThresholds(max_hamming=0, min_cosine=0.9))
    assert [a.leader for a in out] == [0, 1, 0]


def test_locked_representatives_lead_and_are_never_absorbed():
    # E1 (locked) ~ E2 (locked) ~ X; X must join a locked leader it links to, and E2 stays a leader
    v = _unit([[1, 0], [1, 0.05], [1, 0.1]])
    out = _cluster(
        ["e1", "e2", "x"],
        FAR[:3],
        v,
        [[0, 1], [1, 2]],
        DedupThresholds(max_hamming=0, min_cosine=0.99),
        locked=[True, True, False],
    )
    assert out[0].leader == 0 and out[1].leader == 1  # E2 not absorbed by E1
    assert out[2].leader == 1  # X joins the representative it is directly similar to


def test_vectorless_candidates_still_match_by_hash():
    v = np.zeros((2, 4), np.float32)
    out = cluster_duplicates(
        ["a", "b"],
        np.array([0, 1], np.int64),
        v,
        np.array([False, False]),
        np.arange(2),
        np.zeros(2, bool),
        np.array([[0, 1]]),
        DedupThresholds(max_hamming=2),
    )
    assert out[1].leader == 0 and out[1].tier == TIER_PERCEPTUAL


def test_hamming_pairs_match_brute_force_in_small_chunks():
    rng = np.random.default_rng(0)
    base = rng.integers(-(2**63), 2**63 - 1, size=40, dtype=np.int64)
    a = np.r_[base, base[:10] ^ np.int64(0b1011)]  # 10 near copies at distance 3
    got = {tuple(p) for p in hamming_pairs(a, None, 4, max_cells=7).tolist()}
    want = {
        (i, j)
        for i in range(len(a))
        for j in range(i + 1, len(a))
        if bin((int(a[i]) ^ int(a[j])) & (2**64 - 1)).count("1") <= 4
    }
    assert got == want and len(want) >= 10
    cross = hamming_pairs(a[:5], a, 0, max_cells=3)
    assert {tuple(p) for p in cross.tolist()} >= {(i, i) for i in range(5)}


def test_representative_prefers_prior_leader_then_resolution():
    order = representative_order(
        pixels=np.array([100, 400, 400, 50]),
        drop_rank=np.array([2, 2, 2, 1]),
        prior_leader=np.array([False, False, False, True]),
        keys=["a", "c", "b", "d"],
    )
    assert order.tolist() == [3, 2, 1, 0]


def test_representative_is_the_original_not_an_edit_or_a_later_copy():
    t0 = datetime(2026, 10, 1, 8, 0, tzinfo=timezone.utc)
    # 0: camera original (EXIF, q92); 1: brightened re-save (q90, no EXIF, sharper); 2: an identical
    # copy written later under copies/ (sorts first by key); 3: a lossless contrast edit (PNG)
    order = representative_order(
        pixels=np.array([640 * 480] * 4),
        drop_rank=np.zeros(4, int),
        prior_leader=np.zeros(4, bool),
        keys=["rig-A/x.jpg", "edited/x-brighter.jpg", "copies/x-copy.jpg", "edited/x-contrast.png"],
        jpeg_quality=[92, 90, 92, None],
        captured=[t0, None, t0, None],
        modified=[t0, t0 + timedelta(seconds=5), t0 + timedelta(seconds=9), t0 + timedelta(seconds=7)],
    )
    assert order[0] == 0 and order[1] == 2  # the original, then its identical copy
    # without capture times: a lossless file outranks a lossy re-save, then the earliest wins
    order = representative_order(
        pixels=np.array([100, 100, 100]),
        drop_rank=np.zeros(3, int),
        prior_leader=np.zeros(3, bool),
        keys=["c.png", "b.jpg", "a.jpg"],
        jpeg_quality=[None, 45, 60],
        modified=[t0, t0, t0 - timedelta(days=1)],
    )
    assert order.tolist() == [0, 2, 1]


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="min_cosine"):
        DedupThresholds(min_cosine=1.5)
    with pytest.raises(ValueError, match="max_hamming"):
        DedupThresholds(max_hamming=65)


def test_indexed_hamming_pairs_equal_the_brute_force_scan():
    from curation_pipeline.core.dedup import hamming_pairs_indexed

    rng = np.random.default_rng(1)
    base = rng.integers(-(2**63), 2**63 - 1, size=300, dtype=np.int64)
    flips = rng.integers(0, 64, size=(120, 4))
    near = np.array(
        [
            base[i] ^ np.int64(sum(1 << int(b) for b in set(f.tolist())) - (1 << 64 if 63 in f else 0))
            for i, f in enumerate(flips)
        ],
        dtype=np.int64,
    )
    hashes = np.r_[base, near, np.zeros(50, np.int64)]  # 50 identical blank-frame hashes too
    for radius in (2, 4, 6):
        want = {tuple(p) for p in hamming_pairs(hashes, None, radius).tolist()}
        got = {tuple(p) for p in hamming_pairs_indexed(hashes, radius, max_bucket=16).tolist()}
        assert got == want and len(want) > 50


def test_semdedup_bulk_pairs_match_exact_search():
    from curation_pipeline.core.dedup import semdedup_pairs

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(40, 32))
    base = centres[rng.integers(0, 40, size=2000)] + 0.6 * rng.normal(size=(2000, 32))
    dups = base[:300] + 0.05 * rng.normal(size=(300, 32))
    v = np.r_[base, dups].astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    want = {(i, j) for i, j in zip(*np.nonzero(np.triu(sims >= 0.97, k=1)))}
    got = {tuple(p) for p in semdedup_pairs(v, 0.97, max_cells=50_000).tolist()}
    assert got <= want  # every proposed pair really is above the threshold
    assert len(got & want) / len(want) >= 0.99 and len(want) >= 300


def test_cross_pairs_by_multi_index_hashing_match_the_full_scan():
    from curation_pipeline.core.dedup import hamming_cross_pairs, hamming_pairs

    rng = np.random.default_rng(5)
    b = rng.integers(-(2**63), 2**63 - 1, size=5000, dtype=np.int64)
    b[:50] = b[0]  # a large bucket of identical hashes (blank frames)
    flips = rng.integers(0, 64, size=(300, 6))
    a = b[rng.integers(0, len(b), size=300)].copy()
    for row, bits in enumerate(flips):  # 0..6 bit flips each
        for bit in bits[: row % 7]:
            a[row] ^= np.int64(1) << np.int64(bit) if bit < 63 else np.int64(-(2**63))
    for radius in (0, 2, 4):
        fast = hamming_cross_pairs(a, b, radius, max_candidates=97)
        slow = hamming_pairs(a, b, radius)
        assert sorted(map(tuple, fast.tolist())) == sorted(map(tuple, slow.tolist()))
        assert len(fast) > 0
