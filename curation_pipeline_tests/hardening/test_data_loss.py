"""What a careless or hostile user must not be able to destroy through the CLI: a drop re-ingested
from an empty (or unmounted, or mistyped) folder, a retrieval re-run against a drop that does not
exist, files deleted under a selection, sources missing when a report is written. Each test drives
`curation` as documented (in process, on a persistent instance and a real database) and then reads
the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation_pipeline.cli import main
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline_tests.conftest import make_small_drop

TABLES = (
    "images",
    "embeddings",
    "dedup_members",
    "dedup_pairs",
    "dedup_settings",
    "vector_buckets",
    "image_annotations",
    "selection_items",
    "retrieval_items",
    "label_sets",
    "label_objects",
)


# in process (`curation --in-process`): these tests are about what is refused or kept, not how a run is
# launched; test_cli.py, test_dead_runs.py and test_browser.py drive the launched path
def _cli(*args: str) -> None:
    assert main(["--in-process", *args]) == 0


def _refused(capsys, *args: str) -> str:
    """Run a command that must fail; return its message (the SystemExit text and stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(["--in-process", *args])
    assert exc.value.code not in (0, None)
    return f"{exc.value.code}\n{capsys.readouterr().err}"


def _snapshot(catalog: Catalog, drop: str) -> dict:
    with catalog.connection() as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # noqa: S608
        source = conn.execute("SELECT source_uri FROM drops WHERE drop_key = %s", (drop,)).fetchone()[0]
        keys = sorted(r[0] for r in conn.execute("SELECT object_key FROM images WHERE drop_key = %s", (drop,)))
    return {**counts, "source": source, "keys": keys}


def _ingest_with_selection(tmp_path: Path, drop: str, *, n_distinct: int = 8, budget: int = 4) -> tuple[Path, dict]:
    folder = tmp_path / drop
    info = make_small_drop(folder, n_distinct=n_distinct)
    _cli("ingest", str(folder), "--drop", drop)
    labels = tmp_path / "labels.csv"
    labels.write_text("object_key,label\n" + "".join(f"img_{i:02d}.jpg,cat{i % 3}\n" for i in range(n_distinct)))
    _cli("annotate", str(labels), "--key-column", "object_key")
    classes = tmp_path / f"{drop}-classes.csv"  # versioned labels too
    classes.write_text("image,label\n" + "".join(f"img_{i:02d}.jpg,cat{i % 3}\n" for i in range(n_distinct)))
    _cli("labels", "import", str(classes), "--drop", drop)
    _cli("select", "--budget", str(budget), "--name", "weekly")
    return folder, info


def test_reingesting_from_an_empty_or_mostly_empty_folder_is_refused_and_changes_nothing(
    tmp_path, curation_env, database_url, capsys
):
    folder, info = _ingest_with_selection(tmp_path, "victim-1")
    catalog = Catalog(database_url)
    before = _snapshot(catalog, "victim-1")
    assert before["images"] == info["files"] and before["selection_items"] == 4 and before["image_annotations"] == 8
    assert before["label_sets"] == 1 and before["label_objects"] == 8

    empty = tmp_path / "unmounted"
    empty.mkdir()
    message = _refused(capsys, "ingest", str(empty), "--drop", "victim-1")
    assert "refusing to re-ingest" in message and "--allow-shrink" in message and "curation drop remove" in message
    assert f"remove {info['files']} of its {info['files']} known objects" in message
    assert _snapshot(catalog, "victim-1") == before  # rows, vectors, links, labels, picks and the source

    # one file left of fifteen: most of the drop would go, so it is refused too
    nearly = tmp_path / "nearly"
    nearly.mkdir()
    (nearly / "img_00.jpg").write_bytes((folder / "img_00.jpg").read_bytes())
    assert "refusing" in _refused(capsys, "ingest", str(nearly), "--drop", "victim-1")
    assert _snapshot(catalog, "victim-1") == before

    # said on purpose, the shrink goes through, and the lost picks are recorded, not silent
    _cli("ingest", str(nearly), "--drop", "victim-1", "--allow-shrink")
    after = _snapshot(catalog, "victim-1")
    assert after["keys"] == ["img_00.jpg"] and after["source"] == str(nearly)
    lost = catalog.selection_info("weekly").lost
    assert len(lost) + after["selection_items"] == 4 and len(lost) >= 3
    assert all("no longer in drop victim-1" in x.reason for x in lost)
    assert "lost" in capsys.readouterr().err


def test_drop_remove_deletes_a_drop_and_says_what_selections_lost(tmp_path, curation_env, database_url, capsys):
    _ingest_with_selection(tmp_path, "gone")
    catalog = Catalog(database_url)
    _cli("drop", "remove", "gone")
    assert "lost 4 item(s)" in capsys.readouterr().err
    snap = {t: n for t, n in _snapshot_counts(catalog).items()}
    assert snap == {t: 0 for t in TABLES}
    assert catalog.known_drops() == [] and len(catalog.selection_info("weekly").lost) == 4
    import dagster as dg

    assert not dg.DagsterInstance.get().has_dynamic_partition("capture_drops", "gone")
    assert "no drop 'gone'" in _refused(capsys, "drop", "remove", "gone")


def _snapshot_counts(catalog: Catalog) -> dict:
    with catalog.connection() as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # noqa: S608


def test_a_retrieval_against_an_unknown_drop_fails_clearly_and_keeps_the_previous_results(
    tmp_path, curation_env, database_url, capsys
):
    folder = tmp_path / "d1"
    make_small_drop(folder)
    _cli("ingest", str(folder), "--drop", "d1")
    _cli("retrieve", "--query", str(folder / "img_03.jpg"), "--k", "3", "--name", "rq13")
    catalog = Catalog(database_url)
    before = catalog.retrieval_items("rq13")
    assert len(before) == 3
    message = _refused(
        capsys, "retrieve", "--query", str(folder / "img_03.jpg"), "--k", "3", "--name", "rq13", "--drop", "typo-drop"
    )
    assert "unknown drop 'typo-drop'" in message and "d1" in message
    assert catalog.retrieval_items("rq13") == before
    # a filter that matches nothing cannot empty it either
    message = _refused(
        capsys, "retrieve", "--query", str(folder / "img_03.jpg"), "--k", "3", "--name", "rq13", "--where", "width>100000"
    )
    assert "previous 3 results were kept" in message
    assert catalog.retrieval_items("rq13") == before


def test_files_deleted_under_a_selection_are_reported_as_lost_and_reselection_refills_the_budget(
    tmp_path, curation_env, database_url, capsys
):
    import dagster as dg

    from curation_pipeline.definitions import build_definitions

    folder, info = _ingest_with_selection(tmp_path, "shrinks", n_distinct=12, budget=5)
    catalog = Catalog(database_url)
    defs = build_definitions(database_url=database_url)
    instance = dg.DagsterInstance.get()
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # switched on: catches up once
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation.cursor)  # settled
    picked = [Path(it["source_uri"]).name for it in catalog.selection_items("weekly")]
    assert len(picked) == 5
    for name in picked[:3]:  # 3 of 19 files: an ordinary cleanup, allowed without a flag
        (folder / name).unlink()
    capsys.readouterr()
    _cli("ingest", str(folder), "--drop", "shrinks")
    assert "selection weekly lost 3 item(s)" in capsys.readouterr().err
    info_after = catalog.selection_info("weekly")
    assert sorted(Path(x.source_uri).name for x in info_after.lost) == sorted(picked[:3])
    assert len(catalog.selection_items("weekly")) == 2

    _cli("subset", "--name", "weekly", "--json")
    err = capsys.readouterr().err
    assert "lost 3 item(s)" in err and "re-ingested" in err

    # the automation asks for the selection again after the re-ingest's new dedup results, and its
    # run re-selects with the stored settings (no budget in its config): back to 5
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation.cursor)
    assert automation.get_requested_partitions(dg.AssetKey("curated_subset")) == {"weekly"}
    from curation_pipeline.cli import Runner
    from curation_pipeline.settings import Settings

    with Runner(Settings.from_env()) as runner:  # what the automation's run does: no budget in its config
        runner.run("select_and_report", "selections", "weekly", {"ops": {"curated_subset": {"config": {}}}})
    assert len(catalog.selection_items("weekly")) == 5
    assert catalog.selection_info("weekly").lost == []
    assert [it["rank"] for it in catalog.selection_items("weekly")] == [1, 2, 3, 4, 5]


def test_a_missing_source_file_leaves_the_selection_and_report_standing(tmp_path, curation_env, database_url, capsys):
    folder, _ = _ingest_with_selection(tmp_path, "d2", budget=4)
    catalog = Catalog(database_url)
    victim = Path(catalog.selection_items("weekly")[0]["source_uri"])
    victim.unlink()  # gone from disk, still in the manifest (no re-ingest)
    capsys.readouterr()
    _cli("select", "--budget", "4", "--name", "weekly", "--json")
    captured = capsys.readouterr()
    assert "1 source file(s) could not be read" in captured.err
    meta = json.loads(captured.out)
    report = Path(meta["curation_report"]["path"])
    html = report.read_text(encoding="utf-8")
    assert 'id="missing-sources"' in html and str(victim) in html and "source file missing" in html
    assert meta["curation_report"]["missing_sources"] == 1
    assert len(catalog.selection_items("weekly")) == 4
