"""Dedup's exact safety net (steps.buckets) against a real PostgreSQL + pgvector: duplicates the
HNSW graph does not return are still found; buckets follow drops, re-runs and corpus growth."""

import numpy as np

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.core.manifest import ManifestRecord
from curation_pipeline.resources.catalog import Catalog, EmbeddingSet
from curation_pipeline.steps.buckets import current_buckets
from curation_pipeline.steps.dedup import dedup_drop
from curation_pipeline_tests.catalog_helpers import replace_manifest

MODEL = "test:vectors"
DIM = 32
TH = DedupThresholds(max_hamming=0, min_cosine=0.95)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _drop(catalog: Catalog, key: str, ids: np.ndarray, vectors: np.ndarray) -> EmbeddingSet:
    rng = np.random.default_rng(int(ids[0]))
    hashes = rng.integers(0, 2**62, size=len(ids))  # distinct pHashes: no perceptual links
    rows = [
        (int(i), f"/x/{i}.jpg", ManifestRecord(f"{i}.jpg", 1, f"h{i}", "ok", width=64, height=64, phash=int(h)), None)
        for i, h in zip(ids, hashes)
    ]
    catalog.register_drop(key, f"/x/{key}")
    replace_manifest(catalog, key, rows)
    emb = EmbeddingSet(MODEL, ids.astype(np.int64), [f"h{i}" for i in ids], vectors, [key] * len(ids))
    catalog.replace_embeddings(key, emb)
    return emb


def _members(catalog, key):
    with catalog.connection() as conn:
        rows = conn.execute(
            "SELECT image_id, representative_id FROM dedup_members WHERE drop_key = %s AND NOT is_representative", (key,)
        ).fetchall()
    return {int(a): int(b) for a, b in rows}


def _chunk_rows(catalog, key=None):
    with catalog.connection() as conn:
        return conn.execute(
            "SELECT coalesce(sum(members), 0), count(*), count(DISTINCT version) FROM vector_buckets"
            " WHERE model = %s AND (%s::text IS NULL OR drop_key = %s)",
            (MODEL, key, key),
        ).fetchone()


def _setup(catalog, n=5000, copies=300, seed=0):
    rng = np.random.default_rng(seed)
    catalog.register_model(MODEL, "test", DIM, "random vectors")
    corpus = _unit(rng.normal(size=(n, DIM)))
    old = _drop(catalog, "old", np.arange(1, n + 1), corpus)
    dedup_drop(catalog, "old", old, TH)
    sources = rng.choice(n, size=copies, replace=False)
    new = np.r_[_unit(corpus[sources] + rng.normal(scale=0.03, size=(copies, DIM))), _unit(rng.normal(size=(200, DIM)))]
    return corpus, sources, new


def test_duplicates_the_hnsw_graph_does_not_return_are_found_by_the_exact_recheck(database_url, monkeypatch):
    catalog = Catalog(database_url)
    corpus, sources, new = _setup(catalog)
    new_ids = np.arange(100_001, 100_001 + len(new))
    emb = _drop(catalog, "new", new_ids, new)
    # a graph that returns nothing (the worst a degraded HNSW index can do)
    monkeypatch.setattr(catalog, "nearest", lambda model, queries, k, **kw: [[] for _ in range(len(queries))])
    stats = dedup_drop(catalog, "new", emb, TH)
    members = _members(catalog, "new")
    truth = {int(new_ids[q]) for q, c in zip(*np.nonzero(new @ corpus.T >= TH.min_cosine))}
    assert len(truth) >= 280  # nearly every copy is above the threshold
    assert len(truth & set(members)) / len(truth) >= 0.99
    assert set(members) <= truth | {int(i) for i in new_ids[np.nonzero((new @ new.T >= 0.95).sum(1) > 1)[0]]}
    # each found copy points at its own original
    for q in range(len(sources)):
        if int(new_ids[q]) in members:
            assert members[int(new_ids[q])] == int(sources[q]) + 1
    recheck = stats["exact_recheck"]
    assert recheck["buckets"] > 1 and recheck["hits"] >= len(truth)
    assert recheck["dot_products"] < len(new) * 5000 * 0.25  # probed buckets only, not brute force


def test_buckets_follow_reruns_removed_drops_and_corpus_growth(database_url):
    catalog = Catalog(database_url)
    corpus, _, new = _setup(catalog, n=3000)
    state = catalog.bucket_model(MODEL)
    assert state.n_buckets == 1 and _chunk_rows(catalog, "old")[0] == 3000  # small corpus: one bucket, exact
    emb = _drop(catalog, "new", np.arange(100_001, 100_001 + len(new)), new)
    dedup_drop(catalog, "new", emb, TH)
    dedup_drop(catalog, "new", emb, TH)  # a re-run replaces the drop's chunks
    assert _chunk_rows(catalog, "new")[0] == len(new)
    # the corpus grows past the single-bucket size: the next dedup retrains and re-buckets every drop
    more = _unit(np.random.default_rng(9).normal(size=(6000, DIM)))
    big = _drop(catalog, "more", np.arange(200_001, 206_001), more)
    dedup_drop(catalog, "more", big, TH)
    state = catalog.bucket_model(MODEL)
    assert state.version == 2 and state.n_buckets > 1
    total, chunks, versions = _chunk_rows(catalog)
    assert total == 3000 + len(new) + 6000 and chunks > 3 and versions == 1
    assert catalog.bucketed_drops(MODEL, state.version) == {"old", "new", "more"}
    # removing a drop removes its chunks (no orphan vectors left to match against)
    catalog.remove_drop("new")
    assert _chunk_rows(catalog, "new")[0] == 0
    assert current_buckets(catalog, MODEL, ["old", "more"]).version == 2  # nothing stale: no retrain
