"""The catalog's pooled connections and the domain rules it takes from core, against a real
PostgreSQL + pgvector."""

import os
import subprocess
import sys
import time
from contextlib import ExitStack

import numpy as np
import pytest

from curation_pipeline.core.dedup import mirror_max_hamming
from curation_pipeline.core.manifest import ManifestRecord
from curation_pipeline.core.quality import QualitySignals
from curation_pipeline.resources import database
from curation_pipeline.resources.catalog import Catalog, EmbeddingSet, hnsw_lookup_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _manifest(catalog: Catalog, drop: str, records: dict[int, ManifestRecord]) -> None:
    with catalog.manifest_writer(drop) as writer:
        for image_id, record in records.items():
            writer.add(image_id, f"/{drop}/{record.object_key}", record, None)


def _ok(key: str, **kw) -> ManifestRecord:
    return ManifestRecord(object_key=key, bytes=1, sha256=kw.pop("sha256", "h-" + key), status="ok", **kw)


def _unit(rng, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_pooled_connection_is_reused_and_comes_back_clean(database_url):
    catalog = Catalog(database_url)
    with catalog.connection() as conn:
        first = conn.info.backend_pid
        conn.execute("SET enable_sort = off")
        conn.execute("CREATE TEMP TABLE leftover (x int)")
        conn.execute("SELECT pg_advisory_lock(4242)")
    with catalog.connection() as conn:
        assert conn.info.backend_pid == first  # the same server process: no new connection
        assert conn.execute("SHOW enable_sort").fetchone()[0] == "on"
        assert conn.execute("SELECT to_regclass('pg_temp.leftover')").fetchone()[0] is None
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (first,)).fetchone()[0]
    assert held == 0


def test_hnsw_settings_end_with_their_transaction_and_only_nearest_turns_sorting_off(database_url):
    catalog = Catalog(database_url)
    with catalog.connection() as conn:
        for prefer_index, inside in ((True, "off"), (False, "on")):
            with conn.transaction():
                hnsw_lookup_settings(conn, 40, 500, prefer_index=prefer_index)
                assert conn.execute("SHOW enable_sort").fetchone()[0] == inside
                assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "500"  # at least k
            assert conn.execute("SHOW enable_sort").fetchone()[0] == "on"


def test_search_leaves_the_planner_an_exact_plan_for_a_selective_filter(database_url):
    """search() does not turn sorting off (see hnsw_lookup_settings): on a small table with a filter
    few rows pass, the planner answers exactly instead of walking the graph for them."""
    from curation_pipeline.resources.catalog import wire_vector
    from curation_pipeline.resources.catalog.embeddings import model_info
    from curation_pipeline.resources.catalog.search import _search_statement
    from curation_pipeline.resources.filters import Predicate, compile_filters

    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 256, "x")
    ids = np.arange(1, 3001)
    _manifest(catalog, "d", {int(i): _ok(f"{i}.jpg", width=5000 if i % 200 == 0 else 10, height=10) for i in ids})
    vectors = _unit(np.random.default_rng(0), len(ids), 256)
    catalog.replace_embeddings("d", EmbeddingSet("test:model", ids, [f"h-{i}.jpg" for i in ids], vectors, ["d"] * len(ids)))
    catalog.refresh_statistics("embeddings")
    catalog.refresh_statistics("images")
    joins, where, join_params, where_params = compile_filters([Predicate("width", ">=", 4000)], ())
    q = wire_vector(vectors[0], "vector")
    with catalog.connection() as conn, conn.transaction():
        stmt = _search_statement(model_info(conn, "test:model"), "test:model", joins, where, exact=False)
        hnsw_lookup_settings(conn, 100, 10, prefer_index=False)
        plan = " ".join(
            r[0] for r in conn.execute(b"EXPLAIN " + stmt.as_bytes(conn), (q, None, None, *join_params, *where_params, q, 10))
        )
    assert "Sort" in plan
    hits = catalog.search("test:model", vectors[:1], 10, predicates=[Predicate("width", ">=", 4000)])[0]
    wide = ids[ids % 200 == 0]
    exact = wide[np.argsort(-(vectors[wide - 1] @ vectors[0]), kind="stable")[:10]]
    assert [i for i, _ in hits] == exact.tolist()


def test_cache_writers_of_both_storages_in_one_process(database_url):
    """CacheWriter's staging table is a temp table: it must not outlive the writer on a pooled
    connection, or the next writer, for a model stored as halfvec, would COPY into a vector table."""
    catalog = Catalog(database_url)
    rng = np.random.default_rng(1)
    for model, storage in (("test:full", "vector"), ("test:half", "halfvec")):
        catalog.register_model(model, "test", 8, "x", storage=storage)
        with catalog.cache_writer(model, storage) as writer:
            assert writer.write(["a", "b", "c"], _unit(rng, 3, 8)) == 3
    with catalog.connection() as conn:
        counts = dict(conn.execute("SELECT model, count(*) FROM embedding_cache GROUP BY 1").fetchall())
    assert counts == {"test:full": 3, "test:half": 3}


def test_a_caller_waiting_on_a_full_pool_is_told_every_connection_is_in_use(database_url, monkeypatch):
    monkeypatch.setattr(database, "POOL_TIMEOUT_S", 0.5)
    catalog = Catalog(database_url + " application_name=full_pool")  # a pool of its own
    with ExitStack() as stack:
        for _ in range(database.POOL_MAX_SIZE):
            stack.enter_context(catalog.connection())
        with pytest.raises(database.PoolTimeout, match="in use"):
            catalog.known_drops()
    assert catalog.known_drops() == []  # all returned: the pool serves again


def test_a_process_keeps_few_pools_and_closes_the_least_recently_used(database_url):
    urls = [database_url + f" application_name=pool{i}" for i in range(database.MAX_POOLS_PER_PROCESS + 2)]
    pools = []
    for url in urls:
        Catalog(url).known_drops()
        pools.append(database._pools[(os.getpid(), url)].pool)
    mine = [k for k in database._pools if k[0] == os.getpid() and k[1] in urls]
    assert len(mine) <= database.MAX_POOLS_PER_PROCESS
    assert pools[0].closed and pools[1].closed and not pools[-1].closed
    assert Catalog(urls[0]).known_drops() == []  # an evicted URL gets a new pool


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_uses_or_closes_its_parents_connections(database_url):
    catalog = Catalog(database_url)
    with catalog.connection() as conn:
        parent_backend = conn.info.backend_pid
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with Catalog(database_url).connection() as conn:
                os.write(write, str(conn.info.backend_pid).encode())
            database.close_pools()  # what atexit does in a child that exits normally
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    child_backend = int(os.read(read, 64).decode() or 0)
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backend not in (0, parent_backend)
    with catalog.connection() as conn:  # the parent's pooled connection survived the child
        assert conn.info.backend_pid == parent_backend
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_a_process_with_a_pool_exits_promptly(database_url):
    code = (
        "import sys; from curation_pipeline.resources.catalog import Catalog;"
        "c = Catalog(sys.argv[1]); c.register_drop('d', None); print(c.known_drops())"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code, database_url], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['d']"
    assert time.monotonic() - started < 30


def test_representatives_are_ranked_by_cores_sharpness_score(database_url):
    catalog = Catalog(database_url)
    catalog.register_model("test:model", "test", 8, "x")
    blur = {1: 0.0, 2: 35.5, 3: 900.0}
    records = {
        i: _ok(f"{i}.jpg", blur_variance=b, brightness=0.5, contrast=0.2, entropy=6.0, aspect_ratio=1.0)
        for i, b in blur.items()
    }
    records[4] = _ok("4.jpg")  # no signals stored: ranks as the blurriest
    _manifest(catalog, "d", records)
    ids = np.array(sorted(records))
    catalog.replace_embeddings(
        "d", EmbeddingSet("test:model", ids, [f"h-{i}.jpg" for i in ids], _unit(np.random.default_rng(2), 4, 8), ["d"] * 4)
    )
    got = {k.image_id: k.sharpness for k in catalog.dedup_candidates("d", "test:model")}
    expected = {i: QualitySignals(b, 0.5, 0.2, 6.0, 1.0).sharpness_score for i, b in blur.items()}
    assert got == pytest.approx({**expected, 4: 0.0})


@pytest.mark.parametrize("max_hamming", [4, 5])
def test_the_dedup_check_accepts_mirror_matches_within_cores_radius_only(database_url, max_hamming):
    """A perceptual member whose mirrored hash is within mirror_max_hamming bits of its
    representative's hash passes the check; one bit further fails it."""
    radius = mirror_max_hamming(max_hamming)
    assert radius == max_hamming // 2
    rep, far = 0, (1 << 40) - 1  # 40 bits apart: never a plain match
    records = {
        1: _ok("rep.jpg", phash=rep, phash_mirror=-1),  # its mirror is 24 bits from either member
        2: _ok("in.jpg", phash=far, phash_mirror=(1 << radius) - 1),  # mirror `radius` bits from rep
        3: _ok("out.jpg", phash=far, phash_mirror=(1 << (radius + 1)) - 1),  # one bit further
    }
    catalog = Catalog(database_url)
    _manifest(catalog, "d", records)
    rows = [(1, 1, True, None, 1.0), (2, 1, False, "perceptual", 0.9), (3, 1, False, "perceptual", 0.9)]
    catalog.replace_dedup("d", "test:model", rows, max_hamming=4, min_cosine=0.8)
    assert catalog.dedup_violations("d", "test:model", 0.9, max_hamming)["below_threshold"] == 1
    catalog.replace_dedup("d", "test:model", rows[:2], max_hamming=4, min_cosine=0.8)
    assert catalog.dedup_violations("d", "test:model", 0.9, max_hamming)["below_threshold"] == 0
