"""Publishing a drop's vectors from the embedding cache: the bulk path (drop the model's HNSW index,
insert, rebuild it, one transaction) and the incremental path (one transaction through the
index), and what a failure part way leaves behind."""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest

from curation_pipeline.resources.catalog import Catalog, hnsw_index_name, wire_vector
from curation_pipeline.resources.catalog import embeddings as publish

DIM = 16


@pytest.fixture
def small_bulk(monkeypatch):
    """Bulk publishes for drops of a few hundred rows, so the tests stay fast."""
    monkeypatch.setattr(publish, "BULK_MIN_ROWS", 50)


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _drop(catalog: Catalog, drop_key: str, first_id: int, vectors: np.ndarray, models: list[str], storage: str) -> list[int]:
    """A drop of valid images whose contents are in the cache of every model in `models`."""
    ids = list(range(first_id, first_id + len(vectors)))
    hashes = [f"{drop_key}-{i:060x}" for i in ids]
    catalog.register_drop(drop_key, f"/synthetic/{drop_key}")
    with catalog.connection() as conn, conn.cursor() as cur:
        with cur.copy("COPY images (image_id, drop_key, object_key, source_uri, bytes, sha256, status) FROM STDIN") as cp:
            for i, h in zip(ids, hashes):
                cp.write_row((i, drop_key, f"{i}.jpg", f"/synthetic/{i}.jpg", 1000, h, "ok"))
    for model in models:
        with catalog.cache_writer(model, storage) as writer:
            writer.write(hashes, vectors)
    return ids


def _rows(catalog: Catalog, model: str) -> list[tuple]:
    with catalog.connection() as conn:
        return conn.execute(
            "SELECT image_id, drop_key, sha256, coalesce(embedding, embedding_half::vector)::text FROM embeddings"
            " WHERE model = %s ORDER BY image_id",
            (model,),
        ).fetchall()


def _index_state(catalog: Catalog, model: str):
    """(oid, relfilenode, valid) of the model's HNSW index, or None: a rebuild changes the oid."""
    with catalog.connection() as conn:
        return conn.execute(
            "SELECT c.oid, c.relfilenode, x.indisvalid FROM pg_class c JOIN pg_index x ON x.indexrelid = c.oid"
            " WHERE c.relname = %s",
            (hnsw_index_name(model),),
        ).fetchone()


def _plan_uses_index(catalog: Catalog, model: str, query: np.ndarray, storage: str) -> bool:
    stmt, _, _ = catalog.nearest_statement(model)
    q = wire_vector(query, storage)
    with catalog.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # a few hundred rows: the planner would rather sort
        conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = " ".join(r[0] for r in conn.execute(b"EXPLAIN " + stmt.as_bytes(conn), (q, None, None, q, 5)))
    return hnsw_index_name(model) in plan


@pytest.mark.parametrize("storage", ["vector", "halfvec"])
def test_a_first_import_is_bulk_and_its_rebuilt_index_serves_top_k(database_url, small_bulk, storage):
    catalog = Catalog(database_url)
    catalog.register_model("m", "test", DIM, "x", storage=storage)
    before = _index_state(catalog, "m")
    vecs = _vectors(300, 1)
    ids = _drop(catalog, "a", 1, vecs, ["m"], storage)

    report = catalog.publish_embeddings_report("a", "m")

    assert (report.method, report.rows, report.inserted) == ("bulk", 300, 300)
    assert report.build_memory_bytes == publish.BUILD_MEMORY_MIN_BYTES and report.build_s is not None
    after = _index_state(catalog, "m")
    assert after is not None and after[2] and after[0] != before[0]  # rebuilt, valid
    assert _plan_uses_index(catalog, "m", vecs[7], storage)
    hits = catalog.nearest("m", vecs[[7, 123, 299]], 1)
    assert [h[0][0] for h in hits] == [ids[7], ids[123], ids[299]]

    # a small drop next to it goes through the index, which is not rebuilt
    small = _vectors(20, 2)
    small_ids = _drop(catalog, "b", 1001, small, ["m"], storage)
    report = catalog.publish_embeddings_report("b", "m")
    assert (report.method, report.inserted, report.build_s) == ("incremental", 20, None)
    assert _index_state(catalog, "m") == after
    assert catalog.nearest("m", small[:1], 1)[0][0][0] == small_ids[0]

    # a re-run is a no-op diff: nothing inserted or deleted, the index untouched
    for key in ("a", "b"):
        again = catalog.publish_embeddings_report(key, "m")
        assert (again.method, again.inserted, again.deleted) == ("incremental", 0, 0)
    assert _index_state(catalog, "m") == after
    assert len(_rows(catalog, "m")) == 320


def test_bulk_and_incremental_publishes_store_identical_rows(database_url, small_bulk):
    catalog = Catalog(database_url)
    models = {"bulk": "m-bulk", "incremental": "m-inc"}
    for model in models.values():
        catalog.register_model(model, "test", DIM, "x")
    vecs = _vectors(257, 3)
    _drop(catalog, "a", -128, vecs, list(models.values()), "vector")  # negative ids too: ids are hashes
    # two images turn corrupt: the diff deletes their rows on the next publish
    assert catalog.publish_embeddings_report("a", models["bulk"], method="bulk").method == "bulk"
    assert catalog.publish_embeddings_report("a", models["incremental"], method="incremental").method == "incremental"
    rows = {k: [(r[0], r[1], r[2], r[3]) for r in _rows(catalog, m)] for k, m in models.items()}
    assert len(rows["bulk"]) == 257
    assert rows["bulk"] == rows["incremental"]

    with catalog.connection() as conn:
        conn.execute("UPDATE images SET status = 'corrupt' WHERE image_id IN (-128, 5)")
    reports = {
        "bulk": catalog.publish_embeddings_report("a", models["bulk"], method="bulk"),
        "incremental": catalog.publish_embeddings_report("a", models["incremental"]),
    }
    assert {(r.rows, r.deleted, r.inserted) for r in reports.values()} == {(255, 2, 0)}
    rows = {k: _rows(catalog, m) for k, m in models.items()}
    assert rows["bulk"] == rows["incremental"]
    assert _index_state(catalog, models["bulk"])[2]


def test_a_bulk_publish_that_fails_after_dropping_the_index_keeps_the_index_and_the_old_rows(database_url, small_bulk):
    catalog = Catalog(database_url)
    catalog.register_model("m", "test", DIM, "x")
    _drop(catalog, "a", 1, _vectors(100, 4), ["m"], "vector")
    assert catalog.publish_embeddings_report("a", "m").method == "bulk"
    old_rows, old_index = _rows(catalog, "m"), _index_state(catalog, "m")
    new = _vectors(400, 5)
    new_ids = _drop(catalog, "b", 1001, new, ["m"], "vector")
    with catalog.connection() as conn:
        # fires after DROP INDEX and the INSERT, before the rebuild
        conn.execute(
            "CREATE FUNCTION fail_publish() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'forced failure mid publish'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER fail_publish AFTER INSERT ON embeddings FOR EACH STATEMENT EXECUTE FUNCTION fail_publish()"
        )

    with pytest.raises(psycopg.errors.RaiseException, match="forced failure"):
        catalog.publish_embeddings("b", "m")

    assert _index_state(catalog, "m") == old_index  # the very same index, never dropped for good
    assert _rows(catalog, "m") == old_rows
    assert _plan_uses_index(catalog, "m", new[0], "vector")
    with catalog.connection() as conn:
        conn.execute("DROP TRIGGER fail_publish ON embeddings")
    report = catalog.publish_embeddings_report("b", "m")
    assert (report.method, report.rows) == ("bulk", 400)
    assert catalog.nearest("m", new[:1], 1)[0][0][0] == new_ids[0]


def test_two_drops_of_one_model_published_in_bulk_at_once(database_url, small_bulk):
    catalog = Catalog(database_url)
    catalog.register_model("m", "test", DIM, "x")
    drops = {"a": _vectors(300, 7), "b": _vectors(300, 8)}
    ids = {k: _drop(catalog, k, 1 + 1000 * n, v, ["m"], "vector") for n, (k, v) in enumerate(drops.items())}
    reports, errors = {}, []

    def run(key: str) -> None:
        try:
            reports[key] = catalog.publish_embeddings_report(key, "m")
        except Exception as exc:  # noqa: BLE001 (asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in drops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert {k: r.rows for k, r in reports.items()} == {"a": 300, "b": 300}
    assert "bulk" in {r.method for r in reports.values()}  # the first; the second decides again under the lock
    assert _index_state(catalog, "m")[2]
    for key, vecs in drops.items():  # the one index holds both drops' rows
        assert [h[0][0] for h in catalog.nearest("m", vecs[[0, 150]], 1)] == [ids[key][0], ids[key][150]]


def test_build_memory_is_sized_from_the_rows_and_capped():
    assert publish.build_memory_bytes(10, 512, "vector") == publish.BUILD_MEMORY_MIN_BYTES
    one_m_vector = publish.build_memory_bytes(1_000_000, 512, "vector")
    one_m_half = publish.build_memory_bytes(1_000_000, 512, "halfvec")
    # what pgvector 0.8 was measured to need (16 MB held 6,064 vector(512) / 9,649 halfvec(512) rows)
    assert one_m_vector >= 1_000_000 * 16 * 2**20 / 6064
    assert one_m_half >= 1_000_000 * 16 * 2**20 / 9649
    assert one_m_half < one_m_vector
    assert publish.build_memory_bytes(10**9, 2000, "vector") == publish.BUILD_MEMORY_MAX_BYTES
