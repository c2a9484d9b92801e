"""The `curation` console script, run as a user would, on a persistent instance and real database."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from curation_pipeline_tests.conftest import make_small_drop

CURATION = str(Path(sys.executable).parent / "curation")


def _run(args, env, check=True):
    proc = subprocess.run([CURATION, *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def env(curation_env):
    return {**os.environ}


def test_ingest_select_retrieve_and_json_outputs(tmp_path, env):
    drop = tmp_path / "drop"
    info = make_small_drop(drop)
    ingest = _run(["ingest", str(drop), "--drop", "cli-drop"], env)
    assert "100%  embed cli-drop" in ingest.stderr  # the progress bar (plain lines on a pipe)

    dup = _run(["duplicates", "--json"], env)
    groups = json.loads(dup.stdout)  # stdout holds the JSON alone
    assert sorted(sorted(Path(p).name for p in g) for g in groups) == sorted(sorted(p) for p in info["duplicates"].items())
    for g in groups:
        assert all(Path(p).is_absolute() for p in g)

    sel = _run(["select", "--budget", "4", "--name", "cli-pick"], env)
    assert "report:" in sel.stderr and sel.stdout == ""
    subset = json.loads(_run(["subset", "--name", "cli-pick", "--json"], env).stdout)
    assert len(subset) == 4 and len(set(subset)) == 4
    # without --name and without a selection called "default": the most recent one, said on stderr
    latest = _run(["subset", "--json"], env)
    assert json.loads(latest.stdout) == subset and "'cli-pick', the most recent one" in latest.stderr

    hits = json.loads(_run(["retrieve", "--query", str(drop / "img_03.jpg"), "--k", "2", "--json"], env).stdout)
    assert len(hits) == 2 and Path(hits[0]["path"]).name in {"img_03.jpg", "reencoded_03.jpg"}

    exported = json.loads(
        _run(["export", "--name", "cli-pick", "--destination", str(tmp_path / "exports"), "--json"], env).stdout
    )
    assert exported["images"] == 4 and exported["copied"] == 4
    assert len(list((tmp_path / "exports" / "cli-pick" / "images").rglob("*.jpg"))) == 4
    assert (tmp_path / "exports" / "cli-pick" / "_SUCCESS").is_file()

    # composed strategies from the command line, with user scores loaded from a CSV
    preds = tmp_path / "preds.csv"
    preds.write_text("object_key,uncertainty\nimg_05.jpg,0.99\nimg_01.jpg,0.5\nimg_02.jpg,0.1\n")
    _run(["annotate", str(preds), "--key-column", "object_key"], env)
    picked = json.loads(
        _run(
            [
                "select",
                "--budget",
                "3",
                "--name",
                "uncertain",
                "--strategy",
                "score:1,column=uncertainty",
                "--strategy",
                "diversity:0.2",
                "--json",
            ],
            env,
        ).stdout
    )
    assert picked["curated_subset"]["strategy"] == "score+diversity"
    assert picked["comparison"]["subset"]["size"] == picked["comparison"]["random"]["size"] == 3
    ranked = json.loads(_run(["subset", "--name", "uncertain", "--json"], env).stdout)
    assert Path(ranked[0]).name == "img_05.jpg"
    # a folder of queries with a metadata filter; a text query on the offline embedder says why not
    qdir = tmp_path / "queries"
    qdir.mkdir()
    (qdir / "q.jpg").write_bytes((drop / "img_04.jpg").read_bytes())
    near = json.loads(
        _run(
            [
                "retrieve",
                "--query",
                str(qdir),
                "--where",
                "width>=1",
                "--k",
                "1",
                "--name",
                "folder",
                "--export-to",
                str(tmp_path / "found"),
                "--json",
            ],
            env,
        ).stdout
    )
    assert Path(near[0]["path"]).name == "img_04.jpg" and near[0]["similarity"] > 0.999
    found = (tmp_path / "found" / "folder" / "manifest.jsonl").read_text().splitlines()
    assert len(found) == 1 and json.loads(found[0])["reason"] == "retrieval"
    assert (tmp_path / "found" / "folder" / "images" / "cli-drop" / "img_04.jpg").is_file()
    text = _run(["retrieve", "--text", "a red car", "--name", "text"], env, check=False)
    assert text.returncode != 0 and "CLIP-family" in text.stderr

    # a protected drop and a later drop that copies one of its images: a leak
    _run(["protect", "cli-drop"], env)
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "copied.jpg").write_bytes((drop / "img_07.jpg").read_bytes())
    _run(["ingest", str(tmp_path / "later"), "--drop", "later-drop"], env)
    leaks = json.loads(_run(["leaks", "--json"], env).stdout)
    assert [(Path(x["path"]).name, Path(x["duplicates"]).name, x["protected_drop"]) for x in leaks] == [
        ("copied.jpg", "img_07.jpg", "cli-drop")
    ]

    # every CLI run was recorded on the persistent instance the UI reads
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        jobs = sorted(r.job_name for r in instance.get_runs())
    assert jobs == [
        "export",
        "ingest_drop",
        "ingest_drop",
        "retrieve",
        "retrieve",
        "retrieve",
        "select_and_report",
        "select_and_report",
    ]


def test_clear_errors_for_bad_input(tmp_path, env):
    missing = _run(["ingest", str(tmp_path / "nope"), "--drop", "x"], env, check=False)
    assert missing.returncode != 0 and "is not a folder" in missing.stderr
    bad_key = _run(["ingest", str(tmp_path), "--drop", "../etc"], env, check=False)
    assert bad_key.returncode != 0 and "invalid drop key" in bad_key.stderr
    no_sel = _run(["subset", "--name", "never", "--json"], env, check=False)
    assert no_sel.returncode != 0 and "does not exist" in no_sel.stderr and no_sel.stdout == ""


def _last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_the_last_error_line_states_the_cause(tmp_path, env):
    # an error raised inside an op: its own message, not dagster's "Error occurred while executing op"
    query = tmp_path / "query.jpg"
    make_small_drop(tmp_path / "photos")
    query.write_bytes((tmp_path / "photos" / "img_00.jpg").read_bytes())
    no_corpus = _run(["retrieve", "--query", str(query)], env, check=False)
    last = _last_line(no_corpus)
    assert no_corpus.returncode != 0
    assert last.startswith("curation: run ") and " of retrieve for 'default' failed at retrieval_set: " in last
    assert "no embeddings stored for model 'pretrained:" in last and last.endswith("materialize image_embeddings first")
    assert "Error occurred" not in last and "LookupError" not in last

    # a blocking asset check: which check failed and what it measured
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _run(["ingest", str(empty), "--drop", "empty"], env, check=False)
    last = _last_line(nothing)
    assert nothing.returncode != 0
    assert (
        "of ingest_drop for 'empty' failed at raw_image_manifest: check drop_not_empty failed: nothing listed in empty" in last
    )
    assert "objects_listed 0" in last and "empty_drops empty" in last, last


def test_error_text_is_the_innermost_cause_without_its_class():
    from dagster._utils.error import serializable_error_info_from_exc_info

    from curation_pipeline.runs import error_text

    def info(raiser):
        try:
            raiser()
        except Exception:  # noqa: BLE001 (serialised below, as dagster does for a failed step)
            return serializable_error_info_from_exc_info(sys.exc_info())

    def wrapped(inner):
        def raiser():
            try:
                inner()
            except Exception as exc:
                raise dg.DagsterExecutionStepExecutionError(
                    'Error occurred while executing op "x":',
                    user_exception=exc,
                    original_exc_info=sys.exc_info(),
                    step_key="x",
                    op_name="x",
                    op_def_name="x",
                ) from exc

        return raiser

    def not_a_folder():
        raise FileNotFoundError("drop location '/x' is not a folder")

    def multi_line():
        raise ValueError("bad value\n  DETAIL:  more")

    def missing_key():
        return {}["k"]

    def with_context():
        try:
            not_a_folder()
        except FileNotFoundError:
            raise dg.DagsterInvariantViolationError("wrapper") from None

    assert error_text(info(wrapped(not_a_folder))) == "drop location '/x' is not a folder"
    assert error_text(info(wrapped(multi_line))) == "bad value DETAIL: more"
    assert error_text(info(wrapped(missing_key))) == "KeyError: 'k'"  # a bug: the class is the information
    assert error_text(info(with_context)) == "wrapper"
