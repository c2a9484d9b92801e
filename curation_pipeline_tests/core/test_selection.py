import numpy as np
import pytest

from curation_pipeline.core.selection import k_center_greedy


def _clusters(seed=0, per=50, centres=4, dim=16, spread=0.05):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    pts = np.concatenate([c[i] + spread * rng.normal(size=(per, dim)) for i in range(centres)])
    labels = np.repeat(np.arange(centres), per)
    return (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32), labels


def test_budget_equal_to_cluster_count_covers_every_cluster():
    x, labels = _clusters()
    idx, dist = k_center_greedy(x, 4)
    assert len(set(labels[idx])) == 4
    assert np.isinf(dist[0]) and (np.diff(dist[1:]) <= 1e-6).all()  # farthest-first: non-increasing


def test_min_distance_stops_early():
    x, _ = _clusters(spread=0.01)
    idx, dist = k_center_greedy(x, 100, min_distance=0.2)
    assert 4 <= len(idx) < 10
    assert (dist[1:] >= 0.2).all()


def test_deterministic_and_unique():
    x, _ = _clusters(seed=3)
    a, _ = k_center_greedy(x, 30, chunk_rows=7)
    b, _ = k_center_greedy(x, 30)
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 30


def test_budget_larger_than_pool_returns_all():
    x, _ = _clusters(per=3, centres=2)
    idx, _ = k_center_greedy(x, 100)
    assert sorted(idx.tolist()) == list(range(6))


def test_invalid_arguments_rejected():
    x, _ = _clusters(per=2)
    with pytest.raises(ValueError):
        k_center_greedy(x, -1)
    with pytest.raises(ValueError):
        k_center_greedy(x, 3, min_distance=3.0)
