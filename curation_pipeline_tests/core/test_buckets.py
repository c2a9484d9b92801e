"""Coarse buckets and the exact re-check inside them (core.buckets), against brute force."""

import numpy as np

from curation_pipeline.core.buckets import bucket_count, nearest_buckets, recheck_pairs, self_pairs, train_centroids


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _corpus_and_copies(n=6000, copies=400, dim=64, noise=0.04, seed=0):
    """Isotropic corpus (the hard case for buckets: no cluster structure at all) and near-copies
    of some of its rows, a few of them right at the threshold."""
    rng = np.random.default_rng(seed)
    corpus = _unit(rng.normal(size=(n, dim)))
    sources = rng.choice(n, size=copies, replace=False)
    new = _unit(corpus[sources] + rng.normal(scale=noise, size=(copies, dim)))
    fresh = _unit(rng.normal(size=(copies, dim)))
    return corpus, np.r_[new, fresh], sources


def _chunks(corpus, centroids, ids):
    own = nearest_buckets(corpus, centroids, 1)[:, 0]
    for b in np.unique(own):
        members = np.flatnonzero(own == b)
        yield int(b), ids[members], corpus[members].astype(np.float16)


def test_recheck_finds_every_pair_brute_force_finds_on_unclustered_vectors():
    corpus, queries, _ = _corpus_and_copies()
    ids = np.arange(len(corpus), dtype=np.int64) + 1000
    centroids = train_centroids(corpus, bucket_count(len(corpus)))
    assert len(centroids) == bucket_count(len(corpus)) > 1
    threshold = 0.9
    truth = {(int(q), int(ids[c])) for q, c in zip(*np.nonzero(queries @ corpus.T >= threshold))}
    assert len(truth) >= 300  # the copies, not an empty set that any method would "recall"
    probe = nearest_buckets(queries, centroids, 8)  # dedup's default (steps.buckets.PROBES)
    rows, found_ids, sims = recheck_pairs(queries, probe, _chunks(corpus, centroids, ids), threshold - 0.02)
    found = {(int(r), int(i)) for r, i, s in zip(rows, found_ids, sims) if s >= threshold}
    assert len(truth & found) / len(truth) >= 0.99
    # and the similarities are exact (float16 storage: within its rounding)
    exact = np.einsum("ij,ij->i", queries[rows], corpus[found_ids - 1000])
    assert np.abs(exact - sims).max() < 2e-3


def test_recheck_with_one_probe_misses_border_pairs_that_three_probes_catch():
    corpus, queries, _ = _corpus_and_copies(noise=0.12, seed=1)
    ids = np.arange(len(corpus), dtype=np.int64)
    centroids = train_centroids(corpus, 64)
    threshold = 0.5
    truth = {(int(q), int(c)) for q, c in zip(*np.nonzero(queries @ corpus.T >= threshold))}

    def recall(p):
        probe = nearest_buckets(queries, centroids, p)
        rows, found, _ = recheck_pairs(queries, probe, _chunks(corpus, centroids, ids), threshold)
        return len(truth & set(zip(rows.tolist(), found.tolist()))) / len(truth)

    assert recall(1) < recall(3) <= recall(64) == 1.0  # every bucket probed is brute force


def test_recheck_keeps_the_most_similar_hits_per_query_only():
    rng = np.random.default_rng(2)
    base = _unit(rng.normal(size=(1, 32)))
    blob = _unit(base + rng.normal(scale=0.01, size=(200, 32)))  # 200 near-identical frames
    ids = np.arange(200, dtype=np.int64)
    q = blob[:3]
    rows, found, sims = recheck_pairs(q, np.zeros((3, 1), np.int32), [(0, ids, blob)], 0.9, keep=5)
    assert np.bincount(rows).tolist() == [5, 5, 5]
    for r in range(3):
        best = np.sort(blob @ q[r])[::-1][:5]
        assert np.allclose(np.sort(sims[rows == r])[::-1], best, atol=1e-6)


def test_self_pairs_equal_brute_force_and_cap_links_per_row():
    corpus, queries, _ = _corpus_and_copies(n=800, copies=100, seed=3)
    x = np.r_[corpus[:500], queries]
    sims = x @ x.T
    np.fill_diagonal(sims, -1)
    truth = {(int(i), int(j)) for i, j in zip(*np.nonzero(sims >= 0.9)) if i < j}
    got = {tuple(p) for p in self_pairs(x, 0.9, chunk_rows=64).tolist()}
    assert truth and got == truth
    blob = np.repeat(x[:1], 50, axis=0)
    assert len(self_pairs(blob, 0.99, keep=4)) <= 50 * 4


def test_nearest_buckets_are_ordered_and_bucket_count_grows_as_sqrt():
    rng = np.random.default_rng(4)
    c = _unit(rng.normal(size=(10, 8)))
    x = _unit(rng.normal(size=(30, 8)))
    probe = nearest_buckets(x, c, 4)
    s = np.take_along_axis(x @ c.T, probe, axis=1)
    assert (np.diff(s, axis=1) <= 1e-7).all() and (probe[:, 0] == np.argmax(x @ c.T, axis=1)).all()
    assert bucket_count(1000) == 1 and bucket_count(1_000_000) == 1000 and bucket_count(10**9) == 8192
