"""settings.py reads the environment once; everything else is built from what it read."""

from __future__ import annotations

import ast
from pathlib import Path

import dagster as dg
import pytest

from curation_pipeline.definitions import build_definitions, build_resources
from curation_pipeline.settings import Settings

PACKAGE = Path(__file__).resolve().parents[1] / "curation_pipeline"


def test_settings_read_every_variable_with_its_default(tmp_path):
    env = {
        "CURATION_HOME": str(tmp_path / "home"),
        "DATABASE_URL": "postgresql://u@db/x",
        "CURATION_WATCH": "s3://in/drops/, /mnt/drops ,",
        "CURATION_DROP_COMPLETION": "quiet",
        "CURATION_DROP_QUIET_SECONDS": "30",
        "CURATION_SENSOR_RUNNING": "1",
        "CURATION_S3_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "CURATION_EMBEDDER": "open_clip",
        "CURATION_EXECUTOR": "k8s",
        "DAGSTER_HOME": str(tmp_path / "dh"),
        "CURATION_DESCRIPTOR": "timm",
        "CURATION_SELECTION_MODEL": "domain",
        "CURATION_RETRIEVAL_MODEL": "descriptor",
    }
    s = Settings.from_env(env)
    assert s.home == (tmp_path / "home").resolve() and s.database_url == "postgresql://u@db/x"
    assert s.drop_root == str(s.home / "drops") and s.export_root == str(s.home / "exports")
    assert s.watched_roots == ("s3://in/drops/", "/mnt/drops")
    assert (s.drop_completion, s.drop_quiet_seconds, s.sensors_running) == ("quiet", 30.0, True)
    assert (s.s3_endpoint_url, s.s3_region, s.s3_profile) == ("http://minio:9000", "eu-west-1", None)
    assert (s.embedder_backend, s.executor, s.dagster_home) == ("open_clip", "k8s", (tmp_path / "dh").resolve())
    assert (s.descriptor_backend, s.selection_model, s.retrieval_model) == ("timm", "domain", "descriptor")
    assert Settings.from_env({**env, "CURATION_S3_ENDPOINT_URL": "http://here"}).s3_endpoint_url == "http://here"

    bare = Settings.from_env({"CURATION_HOME": str(tmp_path)})
    assert bare.watched_roots == (bare.drop_root,) and bare.database_url is None and bare.dagster_home is None
    assert (bare.embedder_backend, bare.drop_marker, bare.sensors_running) == ("pretrained", "_SUCCESS", False)
    assert (bare.descriptor_backend, bare.selection_model, bare.retrieval_model) == ("offline", "semantic", "semantic")
    assert bare.embedded_pgdata == tmp_path.resolve() / "pg" and bare.reports_dir == tmp_path.resolve() / "reports"


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("CURATION_DROP_COMPLETION", "sometimes", "marker_or_quiet"),
        ("CURATION_EXECUTOR", "celery", "multiprocess"),
        ("CURATION_DROP_QUIET_SECONDS", "ten", "number of seconds"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_to_use(name, value, message):
    with pytest.raises(ValueError, match=f"{name}=.*{message}"):
        Settings.from_env({name: value})


def test_resources_and_sensors_carry_the_settings_without_the_environment(tmp_path, monkeypatch):
    """Built from a Settings value, nothing is left to read from the environment at run time."""
    for name in ("CURATION_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "CURATION_DROP_ROOT", "CURATION_WATCH", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(
        home=tmp_path,
        database_url="postgresql://u@db/x",
        drop_root="s3://in/drops/",
        export_root="s3://out/exports/",
        s3_endpoint_url="http://minio:9000",
        s3_region="eu-west-1",
        drop_marker="DONE",
        sensors_running=True,
        executor="in_process",
    )
    resources = build_resources(settings)
    store = resources["image_store"]
    assert store.stores().s3.endpoint_url == "http://minio:9000" and store.stores().s3.region_name == "eu-west-1"
    assert store.location_for("d1", None) == "s3://in/drops/d1" and store.drop_marker == "DONE"
    assert store.watched_roots() == ("s3://in/drops/",)
    assert resources["database"].url == resources["pgvector_io_manager"].url == "postgresql://u@db/x"
    assert resources["database"].embedded_pgdata == str(tmp_path / "pg")
    assert resources["outputs"].reports_dir == str(tmp_path / "reports")
    assert resources["outputs"].export_root == "s3://out/exports/"

    defs = build_definitions(settings)
    assert defs.resolve_job_def("ingest_drop").executor_def.name == "in_process"
    for name in ("capture_drop_sensor", "curation_automation"):
        assert defs.get_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
    assert "s3://in/drops/" in (defs.get_sensor_def("capture_drop_sensor").description or "")
    # a drop root given to the builder is also what the sensor watches when CURATION_WATCH is unset
    other = build_resources(settings, drop_root=str(tmp_path / "elsewhere"))["image_store"]
    assert other.watched_roots() == (str(tmp_path / "elsewhere"),)


def _environment_reads(path: Path) -> list[str]:
    """Reads of the process environment in one file: os.environ / os.getenv used other than as the
    target of an assignment (setting a variable for a library that reads it itself is not a read)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    writes = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"line {node.lineno}: from os import {a.name}" for a in node.names if a.name in ("environ", "getenv")]
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("environ", "environb", "getenv", "getenvb")
            and id(node) not in writes
        ):
            found.append(f"line {node.lineno}: os.{node.attr}")
    return sorted(found)


def test_only_settings_reads_the_environment():
    reads = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "settings.py" and (found := _environment_reads(path))
    }
    assert reads == {}


def test_the_environment_check_sees_reads_and_ignores_writes(tmp_path):
    code = tmp_path / "x.py"
    code.write_text('import os\nos.environ["A"] = "1"\nb = os.environ.get("B")\nc = os.getenv("C")\n')
    assert sorted(_environment_reads(code)) == ["line 3: os.environ", "line 4: os.getenv"]
