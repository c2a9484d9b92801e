import numpy as np
import pytest

from curation_pipeline.core.dedup import (
    TIER_EXACT,
    TIER_PERCEPTUAL,
    TIER_SEMANTIC,
    DedupThresholds,
    find_links,
    representative_order,
    star_clusters,
)


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _far_hashes(n):
    # pairwise at least 16 bits apart, so the perceptual tier stays out of the way
    return np.array([0, 0xFFFF, 0xFFFF0000, 0xFFFF00000000][:n], dtype=np.int64)


def test_no_chaining_across_a_similarity_chain():
    # A~B (0.95) and B~C (0.95) but A vs C only ~0.80: C must not join A's cluster.
    a = [1.0, 0.0, 0.0]
    b = [np.cos(0.32), np.sin(0.32), 0.0]
    c = [np.cos(0.64), np.sin(0.64), 0.0]
    v = _unit([a, b, c])
    th = DedupThresholds(max_hamming=0, min_cosine=0.94)
    links = find_links(["h1", "h2", "h3"], _far_hashes(3), v, th)
    assert {(l.i, l.j) for l in links} == {(0, 1), (1, 2)}
    order = np.array([0, 1, 2])
    out = star_clusters(3, links, order)
    assert out[0].leader == 0 and out[1].leader == 0
    assert out[2].leader == 2  # C stays its own representative
    # every member is directly above the threshold to its representative
    for a_ in out:
        assert float(v[a_.index] @ v[a_.leader]) >= th.min_cosine - 1e-6


def test_strongest_tier_wins_per_pair():
    v = _unit([[1, 0], [1, 0], [0, 1]])
    links = find_links(["same", "same", "other"], np.array([5, 5, -1], dtype=np.int64), v,
                       DedupThresholds(max_hamming=4, min_cosine=0.9))
    assert [(l.i, l.j, l.tier) for l in links] == [(0, 1, TIER_EXACT)]


def test_perceptual_and_semantic_tiers_recorded_with_similarity():
    v = _unit([[1, 0, 0], [0.999, 0.04, 0], [0, 0, 1], [0, 0.2, 1]])
    hashes = np.array([0, 0b111, 1 << 50, (1 << 50) | (0xFFFF << 2)], dtype=np.int64)
    links = find_links(["a", "b", "c", "d"], hashes, v, DedupThresholds(max_hamming=4, min_cosine=0.95))
    by_pair = {(l.i, l.j): l for l in links}
    assert by_pair[(0, 1)].tier == TIER_PERCEPTUAL
    assert by_pair[(0, 1)].similarity == pytest.approx(1 - 3 / 64)
    assert by_pair[(2, 3)].tier == TIER_SEMANTIC
    assert by_pair[(2, 3)].similarity == pytest.approx(float(v[2] @ v[3]))


def test_extra_pairs_limit_semantic_checks_to_candidates():
    v = _unit([[1, 0], [1, 0.01], [1, 0.02]])
    hashes = np.array([0, 1 << 20, 1 << 40], dtype=np.int64)
    th = DedupThresholds(max_hamming=0, min_cosine=0.9)
    links = find_links(["a", "b", "c"], hashes, v, th, extra_pairs=np.array([[0, 2]]))
    assert [(l.i, l.j) for l in links] == [(0, 2)]


def test_representative_prefers_prior_leader_then_resolution_then_sharpness():
    order = representative_order(
        pixels=np.array([100, 400, 400, 50]),
        sharpness=np.array([0.9, 0.2, 0.5, 0.1]),
        drop_rank=np.array([2, 2, 2, 1]),
        prior_leader=np.array([False, False, False, True]),
        keys=["a", "b", "c", "d"],
    )
    assert order.tolist() == [3, 2, 1, 0]


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="min_cosine"):
        DedupThresholds(min_cosine=1.5)
    with pytest.raises(ValueError, match="max_hamming"):
        DedupThresholds(max_hamming=65)
