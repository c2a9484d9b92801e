"""Values that used to slip through validation: each is refused before any work, and the message
names the value and what to do."""

from __future__ import annotations

import pytest

from curation_pipeline.cli import main
from curation_pipeline.core.ids import validate_name
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline_tests.conftest import make_small_drop


# in process (`curation --in-process`): these tests are about what is refused or kept, not how a run is
# launched; test_cli.py, test_dead_runs.py and test_browser.py drive the launched path
def _refused(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["--in-process", *args])
    assert exc.value.code not in (0, None)
    return f"{exc.value.code}\n{capsys.readouterr().err}"


@pytest.mark.parametrize("name", ["nl\n", "x\r", "ok\n\n", "tab\t", "\nlead"])
def test_names_with_line_breaks_are_refused(name):
    with pytest.raises(ValueError, match="invalid"):
        validate_name(name, "selection name")


def test_selection_values_that_slipped_through_are_refused_before_any_work(tmp_path, curation_env, database_url, capsys):
    folder = tmp_path / "d"
    make_small_drop(folder)
    assert main(["--in-process", "ingest", str(folder), "--drop", "d"]) == 0
    catalog = Catalog(database_url)

    assert "budget must be at least 1, got 0" in _refused(capsys, "select", "--budget", "0", "--name", "zero")
    message = _refused(capsys, "select", "--budget", "3", "--strategy", "diversity:nan", "--name", "nan")
    assert "weight must be a finite number" in message and "nan" in message
    assert "weight must be a finite number" in _refused(
        capsys, "select", "--budget", "3", "--strategy", "typicality:inf", "--name", "inf"
    )
    assert "seed must be an integer from 0" in _refused(capsys, "select", "--budget", "3", "--seed", "-1", "--name", "neg")
    message = _refused(capsys, "select", "--budget", "3", "--where", "nosuchcol>0.2", "--name", "col")
    assert "unknown column 'nosuchcol'" in message and "brightness" in message
    message = _refused(capsys, "select", "--budget", "3", "--strategy", "balance,column=nosuchcol", "--name", "bal")
    assert "unknown column 'nosuchcol'" in message
    message = _refused(capsys, "retrieve", "--query", str(folder / "img_01.jpg"), "--where", "nosuchcol=1", "--name", "rcol")
    assert "unknown column 'nosuchcol'" in message
    message = _refused(capsys, "select", "--budget", "3", "--drop", "nosuchdrop", "--name", "drop")
    assert "unknown drop 'nosuchdrop'" in message
    message = _refused(capsys, "select", "--budget", "3", "--name", "nl\n")
    assert "invalid selection name" in message
    assert not (curation_env / "reports" / "nl\n").exists()
    for name in ("zero", "nan", "inf", "neg", "col", "bal", "drop"):
        assert catalog.selection_info(name) is None  # nothing was stored for any of them
    assert catalog.retrieval_config("rcol") is None
