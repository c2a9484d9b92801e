"""The whole asset graph on a real Dagster instance and a real PostgreSQL + pgvector."""

from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from curation_pipeline.definitions import build_definitions, build_resources
from curation_pipeline.defs.dedup import dedup_clusters
from curation_pipeline.defs.ingest import image_embeddings, raw_image_manifest
from curation_pipeline.defs.resources import EmbedderResource
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline_tests.catalog_helpers import dedup_summary
from curation_pipeline_tests.conftest import jpeg, make_small_drop

INGEST = [raw_image_manifest, image_embeddings, dedup_clusters]


def _ingest(instance, database_url, key, folder):
    Catalog(database_url).register_drop(key, str(folder))
    if not instance.has_dynamic_partition("capture_drops", key):
        instance.add_dynamic_partitions("capture_drops", [key])
    result = dg.materialize(INGEST, partition_key=key, instance=instance, resources=build_resources(database_url=database_url))
    assert result.success
    return result


def _groups_by_key(catalog: Catalog, drop=None) -> dict[str, set[str]]:
    out = {}
    for g in catalog.duplicate_groups(drop):
        rep = g["representative"]["object_key"]
        out[rep] = {m["object_key"] for m in g["members"]}
    return out


def _snapshot(catalog: Catalog):
    with catalog.connection() as conn:
        images = conn.execute(
            "SELECT image_id, drop_key, object_key, sha256, status, error, width, height, phash FROM images ORDER BY 1"
        ).fetchall()
        emb = conn.execute("SELECT image_id, model, embedding::text FROM embeddings ORDER BY 1, 2").fetchall()
        dedup = conn.execute(
            "SELECT image_id, representative_id, is_representative, tier, round(similarity::numeric, 6)"
            " FROM dedup_members ORDER BY 1"
        ).fetchall()
    return images, emb, dedup


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_whole_graph_materializes_for_a_small_drop(tmp_path, database_url, curation_env, instance):
    drop = tmp_path / "drop-1"
    info = make_small_drop(drop)
    result = _ingest(instance, database_url, "drop-1", drop)
    catalog = Catalog(database_url)

    # every object recorded; bad files with their reason, not fatal
    with catalog.connection() as conn:
        rows = dict(conn.execute("SELECT object_key, status FROM images WHERE drop_key = 'drop-1'").fetchall())
        n_emb = dict(conn.execute("SELECT model, count(*) FROM embeddings GROUP BY model").fetchall())
    assert len(rows) == info["files"]
    for key, status in info["bad"].items():
        assert rows[key] == status
    # every valid image, once per configured model (the near-duplicate descriptor and the semantic model)
    assert len(n_emb) == 2 and set(n_emb.values()) == {info["files"] - len(info["bad"])}

    # each planted duplicate lands in its original's group, and nothing else is grouped
    groups = _groups_by_key(catalog)
    pairs = {frozenset([rep, m]) for rep, members in groups.items() for m in members}
    assert pairs == {frozenset(p) for p in info["duplicates"].items()}

    checks = result.get_asset_check_evaluations()
    assert len(checks) == 7 and all(c.passed for c in checks), [(c.check_name, c.passed) for c in checks]
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    meta = mats["dedup_clusters"].materialization.metadata
    assert meta["duplicates"].value == 4 and meta["exact_duplicates"].value == 2

    # curated subset + report, retrieval: through the jobs of the same Definitions
    defs = build_definitions(database_url=database_url)
    instance.add_dynamic_partitions("selections", ["pick"])
    sel = defs.resolve_job_def("select_and_report").execute_in_process(
        instance=instance,
        partition_key="pick",
        run_config={
            "ops": {
                "curated_subset": {"config": {"budget": 5}},
                "curation_report": {"config": {"output_dir": str(tmp_path / "reports")}},
            }
        },
    )
    assert sel.success
    subset = catalog.selection_items("pick")
    assert [s["rank"] for s in subset] == [1, 2, 3, 4, 5]
    members = {m for ms in groups.values() for m in ms}
    assert not {s["object_key"] for s in subset} & (members | set(info["bad"]))
    assert subset[0]["distance_at_pick"] is None and all(s["distance_at_pick"] > 0 for s in subset[1:])
    page = (tmp_path / "reports" / "pick" / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 5 + 4 and "truncated.jpg" in page
    assert "Threshold explorer" in page and "Leakage into protected drops" in page

    instance.add_dynamic_partitions("retrieval_queries", ["q"])
    query = drop / "img_05.jpg"
    ret = defs.resolve_job_def("retrieve").execute_in_process(
        instance=instance,
        partition_key="q",
        run_config={"ops": {"retrieval_set": {"config": {"query_paths": [str(query)], "k": 3}}}},
    )
    assert ret.success
    hits = catalog.retrieval_items("q")
    assert hits[0]["object_key"] == "img_05.jpg" and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 3 and hits[1]["similarity"] < 0.95
    page_path = curation_env / "reports" / "retrievals" / "q" / "index.html"
    retrieval_page = page_path.read_text()
    assert retrieval_page.count("data:image/jpeg;base64,") == 1 + 3  # the query and its 3 results
    assert "img_05.jpg" in retrieval_page and "cosine 1.000" in retrieval_page
    # the page is its own asset, with its path in metadata; no export_to: retrieval_export is skipped
    materialized = {m.asset_key.to_user_string(): m for m in ret.get_asset_materialization_events()}
    assert sorted(materialized) == ["retrieval_page", "retrieval_set"]
    page_meta = materialized["retrieval_page"].materialization.metadata
    assert page_meta["path"].value == str(page_path) and page_meta["results"].value == 3


def test_rematerializing_a_partition_leaves_the_same_rows(tmp_path, database_url, curation_env, instance):
    drop = tmp_path / "d"
    make_small_drop(drop)
    _ingest(instance, database_url, "d", drop)
    catalog = Catalog(database_url)
    before = _snapshot(catalog)
    models = [EmbedderResource().load(), EmbedderResource(backend="offline").load()]  # the process-wide instances the runs use
    forwards_before = [m.images_computed for m in models]
    second = _ingest(instance, database_url, "d", drop)
    assert _snapshot(catalog) == before
    assert [m.images_computed for m in models] == forwards_before  # no model call at all on the re-run
    emb_meta = {m.asset_key.to_user_string(): m for m in second.get_asset_materialization_events()}
    meta = emb_meta["image_embeddings"].materialization.metadata
    assert set(meta["computed"].value.values()) == {0} and len(meta["computed"].value) == 2
    assert set(meta["not_embedded"].value.values()) == {0}


def test_removed_objects_disappear_on_rerun(tmp_path, database_url, curation_env, instance):
    drop = tmp_path / "d"
    make_small_drop(drop)
    _ingest(instance, database_url, "d", drop)
    (drop / "copy_of_00.jpg").unlink()
    _ingest(instance, database_url, "d", drop)
    with Catalog(database_url).connection() as conn:
        keys = {r[0] for r in conn.execute("SELECT object_key FROM images").fetchall()}
        dedup = conn.execute("SELECT count(*) FROM dedup_members").fetchone()[0]
    assert "copy_of_00.jpg" not in keys and dedup == len(keys) - 3


def test_a_later_drop_is_deduplicated_against_earlier_drops(tmp_path, database_url, curation_env, instance):
    first, second = tmp_path / "one", tmp_path / "two"
    make_small_drop(first)
    _ingest(instance, database_url, "one", first)
    catalog = Catalog(database_url)
    before = [r for r in _snapshot(catalog)[2]]
    second.mkdir()
    (second / "again_05.jpg").write_bytes((first / "img_05.jpg").read_bytes())
    (second / "again_06_small.jpg").write_bytes(jpeg(Image.open(first / "img_06.jpg").reduce(2), 70))
    (second / "empty.png").write_bytes(b"")
    result = _ingest(instance, database_url, "two", second)
    groups = catalog.duplicate_groups(["two"])
    by_rep = {g["representative"]["object_key"]: (g["representative"]["drop_key"], g["members"]) for g in groups}
    assert by_rep["img_05.jpg"][0] == "one" and by_rep["img_05.jpg"][1][0]["tier"] == "exact"
    assert by_rep["img_06.jpg"][0] == "one" and by_rep["img_06.jpg"][1][0]["object_key"] == "again_06_small.jpg"
    assert [r for r in _snapshot(catalog)[2] if r in before] == before  # earlier drop untouched
    meta = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    assert meta["dedup_clusters"].materialization.metadata["duplicates_of_other_drops"].value == 2


def test_empty_drop_fails_its_blocking_check(tmp_path, database_url, curation_env, instance):
    empty = tmp_path / "empty"
    empty.mkdir()
    Catalog(database_url).register_drop("empty", str(empty))
    instance.add_dynamic_partitions("capture_drops", ["empty"])
    result = dg.materialize(
        INGEST,
        partition_key="empty",
        instance=instance,
        raise_on_error=False,
        resources=build_resources(database_url=database_url),
    )
    evals = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert evals["drop_not_empty"] is False
    assert not result.success  # the blocking check stops embeddings and dedup


def test_workspace_definitions_load(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


def test_one_backfill_run_ingests_several_drops_in_arrival_order(tmp_path, database_url, curation_env, instance):
    """BackfillPolicy.multi_run: one run (one model load) covers a range of drops."""
    keys = ["b-1", "b-2", "b-3"]
    for key in keys:
        make_small_drop(tmp_path / key, n_distinct=5)
        Catalog(database_url).register_drop(key, str(tmp_path / key))
    instance.add_dynamic_partitions("capture_drops", keys)
    defs = build_definitions(database_url=database_url)
    result = defs.resolve_job_def("ingest_drop").execute_in_process(
        instance=instance, tags={"dagster/asset_partition_range_start": "b-1", "dagster/asset_partition_range_end": "b-3"}
    )
    assert result.success
    mats = result.get_asset_materialization_events()
    per_asset = {}
    for m in mats:
        per_asset.setdefault(m.asset_key.to_user_string(), set()).add(m.partition)
    ingest = ("raw_image_manifest", "image_embeddings", "dedup_clusters", "drop_labels", "object_embeddings")
    assert per_asset == {a: set(keys) for a in ingest}
    catalog = Catalog(database_url)
    # later drops are identical copies of the first drop's photos: they dedup against it
    summary = {k: dedup_summary(catalog, k) for k in keys}
    assert summary["b-1"]["matched_other_drops"] == 0
    assert summary["b-2"]["matched_other_drops"] > 0 and summary["b-3"]["matched_other_drops"] > 0


def test_the_retrieve_job_retrieves_then_writes_the_page_and_exports_only_when_given_a_destination(
    tmp_path, database_url, curation_env, instance
):
    defs = build_definitions(database_url=database_url)
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("retrieve")
    keys = {"retrieval_set", "retrieval_page", "retrieval_export"}
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == keys
    for downstream in ("retrieval_page", "retrieval_export"):
        node = graph.get(dg.AssetKey(downstream))
        assert [p.to_user_string() for p in node.parent_keys] == ["retrieval_set"]
        assert node.partitions_def.name == "retrieval_queries"
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups["curated_export"] == groups["retrieval_export"] == "export"
    assert groups["curated_subset"] == "curate" and groups["retrieval_set"] == "retrieve"

    drop = tmp_path / "drop"
    make_small_drop(drop)
    _ingest(instance, database_url, "drop", drop)
    instance.add_dynamic_partitions("retrieval_queries", ["near"])
    ret = job.execute_in_process(
        instance=instance,
        partition_key="near",
        run_config={
            "ops": {
                "retrieval_set": {"config": {"query_paths": [str(drop / "img_02.jpg")], "k": 2}},
                "retrieval_export": {"config": {"export_to": str(tmp_path / "out")}},
            }
        },
    )
    assert ret.success
    materialized = {m.asset_key.to_user_string(): m for m in ret.get_asset_materialization_events()}
    assert set(materialized) == keys
    meta = materialized["retrieval_export"].materialization.metadata
    assert meta["images"].value == 2 and meta["manifest_jsonl"].value == str(tmp_path / "out" / "near" / "manifest.jsonl")
    assert (tmp_path / "out" / "near" / "_SUCCESS").exists()
    assert (tmp_path / "out" / "near" / "images" / "drop" / "img_02.jpg").is_file()
