import numpy as np
import pytest

from curation_pipeline.core.selection import (
    allocate,
    greedy_select,
    k_center_greedy,
    knn_similarity,
    rank_scores,
    spherical_kmeans,
    subset_quality,
)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(n_per=30, centres=6, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    c = _unit(rng.normal(size=(centres, dim)))
    x = np.repeat(c, n_per, axis=0) + rng.normal(scale=spread, size=(centres * n_per, dim))
    return _unit(x), np.repeat(np.arange(centres), n_per)


def test_k_center_greedy_visits_every_blob_first():
    x, labels = _blobs()
    idx, dist = k_center_greedy(x, 6)
    assert sorted(labels[idx].tolist()) == list(range(6))
    assert np.isinf(dist[0]) and np.all(np.diff(dist[1:]) <= 1e-6)  # farthest-first: distances shrink


def test_k_center_greedy_stops_at_min_distance():
    x, _ = _blobs()
    idx, dist = k_center_greedy(x, 100, min_distance=0.2)
    assert len(idx) == 6 and dist[-1] >= 0.2


def test_chunking_and_float16_do_not_change_the_choice():
    x, _ = _blobs(n_per=50)
    a, _ = k_center_greedy(x, 30, chunk_rows=7)
    b, _ = k_center_greedy(x, 30)
    c, dc = k_center_greedy(x.astype(np.float16), 30)
    _, db = k_center_greedy(x, 30)
    assert a.tolist() == b.tolist()
    # float16 rounding may swap near-ties inside a blob, never which blobs come first or how far
    assert c[:6].tolist() == b[:6].tolist()
    assert np.allclose(dc[1:], db[1:], atol=5e-3)


def test_bad_arguments_are_refused():
    x, _ = _blobs()
    with pytest.raises(ValueError, match="budget"):
        k_center_greedy(x, -1)
    with pytest.raises(ValueError, match="min_distance"):
        k_center_greedy(x, 3, min_distance=3.0)
    with pytest.raises(ValueError, match="shape"):
        greedy_select(x, 3, scores={"s": np.ones(3)})


def test_scores_alone_are_a_top_k_and_record_their_reason():
    x, _ = _blobs()
    s = np.linspace(0, 1, len(x)).astype(np.float32)
    res = greedy_select(x, 5, scores={"uncertainty": s})
    assert res.indices.tolist() == list(range(len(x) - 1, len(x) - 6, -1))
    assert set(res.reason) == {"uncertainty"}


def test_quotas_bound_every_group():
    x, labels = _blobs()
    quotas = np.array([3, 0, 1, 0, 0, 2])
    res = greedy_select(x, 10, diversity_weight=1.0, groups=labels, quotas=quotas)
    counts = np.bincount(labels[res.indices], minlength=6)
    assert len(res.indices) == 6 and counts.tolist() == quotas.tolist()


def test_score_plus_diversity_trades_off():
    """A high score pulls picks into one blob; diversity weight spreads them again."""
    x, labels = _blobs()
    s = (labels == 0).astype(np.float32)
    only_score = greedy_select(x, 6, scores={"s": s}, weights={"s": 1.0})
    mixed = greedy_select(x, 6, scores={"s": s}, weights={"s": 0.2}, diversity_weight=1.0)
    assert set(labels[only_score.indices].tolist()) == {0}
    assert len(set(labels[mixed.indices].tolist())) >= 5


def test_allocate_proportional_gives_every_group_one():
    q = allocate(np.array([1000, 10, 1, 0]), 20, "proportional")
    assert q.sum() == 20 and q[1] >= 1 and q[2] == 1 and q[3] == 0 and q[0] > q[1]


def test_allocate_equal_redistributes_what_small_groups_cannot_use():
    q = allocate(np.array([100, 2, 100]), 30, "equal")
    assert q.tolist() == [14, 2, 14]
    assert allocate(np.array([5, 5]), 100, "equal").tolist() == [5, 5]
    assert allocate(np.array([9, 5, 1]), 2, "proportional").tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="allocation"):
        allocate(np.array([1]), 1, "fair")


def test_knn_similarity_ranks_a_planted_outlier_last_and_buckets_match_exact():
    x, labels = _blobs()
    rng = np.random.default_rng(3)
    x = np.r_[x, _unit(rng.normal(size=(1, x.shape[1])))]
    dens = knn_similarity(x, 5, chunk_rows=17)
    assert int(np.argmin(dens)) == len(x) - 1
    one_bucket = knn_similarity(x, 5, buckets=np.zeros(len(x), dtype=np.int64))
    assert np.allclose(dens, one_bucket)


def test_rank_scores():
    r = rank_scores(np.array([3.0, np.nan, 1.0, 3.0, 2.0]))
    assert r[1] == 0 and r[2] == 0 and r[4] == pytest.approx(1 / 3, abs=1e-6)
    assert r[0] == r[3] == pytest.approx(5 / 6, abs=1e-6)  # tied: both get the mean of ranks 3 and 4


def test_subset_quality_tells_a_covering_subset_from_a_clumped_one():
    x, labels = _blobs()
    labels_k, _ = spherical_kmeans(x, 6, seed=0)
    covering, _ = k_center_greedy(x, 6)
    clumped = np.flatnonzero(labels == 0)[:6]
    good = subset_quality(x, covering, labels_k, metadata={"blob": labels.astype(object)})
    bad = subset_quality(x, clumped, labels_k, metadata={"blob": labels.astype(object)})
    assert good["fine_clusters_covered"] == 1.0 and bad["fine_clusters_covered"] < 0.5
    assert good["coverage_distance_max"] < bad["coverage_distance_max"]
    assert good["nn_distance_min"] > bad["nn_distance_min"]
    assert good["metadata_coverage"]["blob"] == 1.0 and bad["metadata_coverage"]["blob"] == pytest.approx(1 / 6, abs=1e-3)


def _low_dim_blobs(n=4000, dim=16, centres=12, directions=3, dup=200, seed=0):
    """Clusters with members along a few directions, plus exact duplicates of some rows scattered
    through the matrix, so equal distances (ties) occur and the lowest index must win them."""
    rng = np.random.default_rng(seed)
    c = _unit(rng.normal(size=(centres, dim)))
    labels = rng.integers(0, centres, size=n)
    basis = rng.normal(size=(centres, directions, dim))
    x = c[labels] + 0.3 * np.einsum("nk,nkd->nd", rng.normal(size=(n, directions)), basis[labels]) / np.sqrt(dim)
    x = _unit(x + rng.normal(scale=0.01, size=x.shape))
    copies = rng.choice(n, size=dup, replace=False)
    where = np.sort(rng.choice(n + dup, size=dup, replace=False))
    keep = np.setdiff1d(np.arange(n + dup), where)
    out = np.empty((n + dup, dim), dtype=np.float32)
    out[keep], out[where] = x, x[copies]
    lab = np.empty(n + dup, dtype=np.int64)
    lab[keep], lab[where] = labels, labels[copies]
    return out, lab


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pruned_updates_pick_exactly_what_full_updates_pick(dtype):
    x, labels = _low_dim_blobs()
    x = x.astype(dtype)
    n = len(x)
    rng = np.random.default_rng(1)
    score = rank_scores(rng.random(n))
    compositions = [
        {},
        {"scores": {"s": score}, "weights": {"s": 0.3}},
        {"groups": labels % 5, "quotas": np.array([40, 3, 0, 120, 25])},
        {"min_distance": 0.1},
        {"scores": {"s": score}, "weights": {"s": 0.5}, "groups": labels % 3, "quotas": np.array([30, 60, 10])},
    ]
    budget = 300 if dtype == np.float32 else 120
    halfway = greedy_select(x, budget, diversity_weight=1.0, prune=False).distance_at_pick[budget // 2]
    compositions[3]["min_distance"] = float(halfway) + 1e-3  # reached within the budget: an early stop
    for kw in compositions:
        exact = greedy_select(x, budget, diversity_weight=1.0, prune=False, **kw)
        pruned = greedy_select(x, budget, diversity_weight=1.0, prune=True, buckets=60, **kw)
        assert pruned.stats.pruned and not exact.stats.pruned
        assert pruned.indices.tolist() == exact.indices.tolist(), kw
        assert np.array_equal(pruned.distance_at_pick, exact.distance_at_pick)
        assert np.array_equal(pruned.objective, exact.objective) and pruned.reason == exact.reason
    # the min_distance composition stopped early, the quota ones at their quota sums
    assert len(greedy_select(x, budget, diversity_weight=1.0, prune=True, buckets=60, **compositions[3]).indices) < budget


def test_pruning_skips_most_work_on_low_dimensional_data():
    """A counter of rows multiplied, so pruning cannot silently fall back to reading every row."""
    x, _ = _low_dim_blobs(n=20_000, dim=8, directions=2, dup=0)
    res = greedy_select(x, 1500, diversity_weight=1.0, prune=True)
    full = greedy_select(x, 1500, diversity_weight=1.0, prune=False)
    assert res.indices.tolist() == full.indices.tolist()
    assert full.stats.rows_read == len(x) * 1499
    assert res.stats.skipped_fraction > 0.7
    assert res.stats.rows_read < 0.25 * full.stats.rows_read
    assert res.stats.bytes_read_per_update < 0.25 * len(x) * 8 * 4


def test_pruning_is_on_by_default_from_the_threshold_and_reorders_in_place_without_losing_rows():
    x, _ = _low_dim_blobs(n=50_000, dim=8, directions=2, dup=0)
    x = x.astype(np.float16)
    original = x.copy()
    auto = greedy_select(x, 40, diversity_weight=1.0, reorder_in_place=True)
    assert auto.stats.pruned and np.array_equal(x, original)  # moved back after the selection
    assert auto.indices.tolist() == greedy_select(x, 40, diversity_weight=1.0, prune=False).indices.tolist()
    assert greedy_select(x[:1000], 5, diversity_weight=1.0).stats.pruned is False


def test_rows_are_permuted_in_place_along_cycles():
    from curation_pipeline.core.selection import _permute_rows_in_place

    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    perm = np.r_[[1, 0, 2, 3], 4 + rng.permutation(996)]  # a cycle of two, fixed points, long cycles
    want = x[perm]
    _permute_rows_in_place(x, perm, chunk_rows=7)  # chunks far shorter than the cycles
    assert np.array_equal(x, want)
