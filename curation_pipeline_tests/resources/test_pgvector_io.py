import dagster as dg
import numpy as np
import pytest

from curation_pipeline.defs.io_manager import PgVectorIOManager
from curation_pipeline.resources.catalog import Catalog, EmbeddingSet
from curation_pipeline_tests.catalog_helpers import replace_manifest


def _seed(catalog: Catalog, drop: str, ids: list[int]):
    from curation_pipeline.core.manifest import ManifestRecord

    rows = [(i, f"/x/{i}.jpg", ManifestRecord(object_key=f"{i}.jpg", bytes=1, sha256=f"h{i}", status="ok"), None) for i in ids]
    replace_manifest(catalog, drop, rows)


def _emb(ids, drop, seed, dim=8):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(ids), dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return EmbeddingSet("test:model", np.array(ids, dtype=np.int64), [f"h{i}" for i in ids], v, [drop] * len(ids))


def test_round_trip_and_replace_per_partition(database_url):
    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 8, "random vectors")
    _seed(catalog, "d1", [1, 2, 3])
    _seed(catalog, "d2", [4, 5])
    io = PgVectorIOManager(url=database_url)
    key = dg.AssetKey("image_embeddings")
    pdef = dg.StaticPartitionsDefinition(["d1", "d2"])

    first = _emb([1, 2, 3], "d1", 0)
    io.handle_output(dg.build_output_context(asset_key=key, partition_key="d1", asset_partitions_def=pdef), first)
    io.handle_output(
        dg.build_output_context(asset_key=key, partition_key="d2", asset_partitions_def=pdef), _emb([4, 5], "d2", 1)
    )
    # re-running d1 with new vectors replaces its rows and leaves d2 alone
    second = _emb([1, 2, 3], "d1", 2)
    io.handle_output(dg.build_output_context(asset_key=key, partition_key="d1", asset_partitions_def=pdef), second)

    loaded = io.load_input(
        dg.build_input_context(
            asset_key=key,
            partition_key="d1",
            asset_partitions_def=pdef,
            upstream_output=dg.build_output_context(asset_key=key, partition_key="d1", asset_partitions_def=pdef),
        )
    )
    assert loaded.image_ids.tolist() == [1, 2, 3]
    assert np.allclose(loaded.vectors, second.vectors, atol=1e-6)
    with catalog.connection() as conn:
        counts = dict(conn.execute("SELECT drop_key, count(*) FROM embeddings GROUP BY 1").fetchall())
    assert counts == {"d1": 3, "d2": 2}


def test_loads_several_partitions_at_once(database_url):
    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 8, "random vectors")
    _seed(catalog, "d1", [1, 2])
    _seed(catalog, "d2", [3])
    catalog.replace_embeddings("d1", _emb([1, 2], "d1", 0))
    catalog.replace_embeddings("d2", _emb([3], "d2", 1))
    got = catalog.load_embeddings(["d1", "d2"], "test:model")
    assert sorted(got.image_ids.tolist()) == [1, 2, 3] and got.vectors.shape == (3, 8)


def test_model_dimension_conflict_is_a_clear_error(database_url):
    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 8, "x")
    with pytest.raises(ValueError, match="dimension 8 but the embedder produces 16"):
        catalog.register_model("test:model", "test", 16, "x")


def test_hnsw_neighbours_with_drop_filter(database_url):
    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 8, "x")
    _seed(catalog, "d1", list(range(1, 41)))
    _seed(catalog, "d2", list(range(41, 81)))
    e1, e2 = _emb(list(range(1, 41)), "d1", 0), _emb(list(range(41, 81)), "d2", 1)
    catalog.replace_embeddings("d1", e1)
    catalog.replace_embeddings("d2", e2)
    hits = catalog.nearest("test:model", e1.vectors[:2], 5, drop_keys=["d2"])
    assert all(len(h) == 5 for h in hits)
    assert all(41 <= i <= 80 for h in hits for i, _ in h)
    exact = np.sort(e2.vectors @ e1.vectors[0])[::-1][:5]
    assert np.allclose([s for _, s in hits[0]], exact, atol=1e-5)
    self_hit = catalog.nearest("test:model", e1.vectors[3], 1)[0][0]
    assert self_hit[0] == 4 and self_hit[1] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("storage", ["vector", "halfvec"])
def test_nearest_query_matches_the_partial_hnsw_index(database_url, storage):
    """The planner picks exact scans for tiny tables, so force index paths and EXPLAIN the very
    statement Catalog.nearest runs: if its expression or model predicate ever stops matching the
    partial index, this fails."""
    from curation_pipeline.resources.catalog import hnsw_index_name, wire_vector

    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 8, "x", storage=storage)
    _seed(catalog, "d1", list(range(1, 21)))
    catalog.replace_embeddings("d1", _emb(list(range(1, 21)), "d1", 0))
    q = wire_vector(_emb([1], "d1", 5).vectors[0], storage)
    stmt, _, _ = catalog.nearest_statement("test:model")
    with catalog.connection() as conn, conn.transaction():
        conn.execute("ANALYZE embeddings")
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # what a prepared statement reuses
        plan = conn.execute(b"EXPLAIN " + stmt.as_bytes(conn), (q, None, None, q, 3)).fetchall()
    assert hnsw_index_name("test:model") in " ".join(r[0] for r in plan)
    hits = catalog.nearest("test:model", _emb([1], "d1", 0).vectors, 3)[0]
    assert hits[0][0] == 1 and hits[0][1] == pytest.approx(1.0, abs=2e-3)


def test_fresh_statistics_keep_top_k_lookups_on_the_hnsw_index(database_url):
    """A bulk-loaded table that was never analysed looks empty to the planner, which then sorts
    every row through the (drop, model) btree instead of walking the HNSW index (seen as a 7x slower
    dedup). refresh_statistics analyses once enough rows changed, and the plan for the real
    statement, with no planner settings forced, then uses the model's HNSW index."""
    from curation_pipeline.resources.catalog import hnsw_index_name, wire_vector

    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 8, "x")
    ids = list(range(1, 5001))
    _seed(catalog, "d1", ids)
    catalog.replace_embeddings("d1", _emb(ids, "d1", 0))
    stmt, _, _ = catalog.nearest_statement("test:model")
    q = wire_vector(_emb([1], "d1", 5).vectors[0], "vector")

    def plan() -> str:
        with catalog.connection() as conn:
            return " ".join(
                r[0] for r in conn.execute(b"EXPLAIN " + stmt.as_bytes(conn), (q, ["d1"], ["d1"], q, 17)).fetchall()
            )

    assert catalog.refresh_statistics("embeddings") is True
    assert hnsw_index_name("test:model") in plan()
    assert catalog.refresh_statistics("embeddings") is False  # nothing changed since
    with pytest.raises(ValueError, match="unknown table"):
        catalog.refresh_statistics("embeddings; DROP TABLE images")


def test_dedup_lookups_use_hnsw_even_where_the_planner_would_sort(database_url):
    """The lookup settings keep dedup's prepared (generic-plan) top-k queries on the HNSW index.
    benchmarks/dedup_scale.py at a 3k corpus + 10k drop saw the planner compute every distance and
    sort instead (382 s for the drop's dedup; 14 s with these settings); this checks the plan the
    settings give, on the same statement and plan mode."""
    from curation_pipeline.resources.catalog import hnsw_index_name, hnsw_lookup_settings, wire_vector

    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 256, "x")
    ids = list(range(1, 3001))
    _seed(catalog, "d1", ids)
    catalog.replace_embeddings("d1", _emb(ids, "d1", 0, dim=256))
    catalog.refresh_statistics("embeddings")
    stmt, _, _ = catalog.nearest_statement("test:model")
    q = wire_vector(_emb([1], "d1", 5, dim=256).vectors[0], "vector")
    with catalog.connection() as conn, conn.transaction():
        hnsw_lookup_settings(conn, 100, 17)
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # what the prepared lookups reuse
        plan = " ".join(r[0] for r in conn.execute(b"EXPLAIN " + stmt.as_bytes(conn), (q, ["d1"], ["d1"], q, 17)))
    assert hnsw_index_name("test:model") in plan and "Sort" not in plan
