"""Hostile exports: object keys that sanitise to one export path, and destinations inside a drop."""

import hashlib
import json
import random
import re
from pathlib import Path

import dagster as dg
import pytest

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.export_target import LocalExportTarget, S3ExportTarget, location_within
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores, LocalImageStore, S3ImageStore
from curation_pipeline.steps.dedup import dedup_drop
from curation_pipeline.steps.embed import EmbedOptions, embed_drop
from curation_pipeline.steps.export import export_paths, export_selection
from curation_pipeline.steps.manifest import build_manifest
from curation_pipeline.steps.select import SelectionSpec, select_subset
from curation_pipeline_tests.conftest import jpeg, new_bucket, photo_crops

BACKSLASH_KEY = "a\\b.jpg"  # a file literally named `a\b.jpg`, legal on Linux and in S3
SUFFIXED = re.compile(r"images/d1/a/b~[0-9a-f]{8}\.jpg$")


def _colliding_drop(folder: Path) -> dict[str, bytes]:
    """Four distinct photos; `a/b.jpg` (a folder `a` holding `b.jpg`) and `a\\b.jpg` (one file)."""
    crops = photo_crops(4)
    files = {"a/b.jpg": jpeg(crops[0]), BACKSLASH_KEY: jpeg(crops[1]), "c.jpg": jpeg(crops[2]), "d.jpg": jpeg(crops[3])}
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "b.jpg").write_bytes(files["a/b.jpg"])
    (folder / BACKSLASH_KEY).write_bytes(files[BACKSLASH_KEY])
    (folder / "c.jpg").write_bytes(files["c.jpg"])
    (folder / "d.jpg").write_bytes(files["d.jpg"])
    return files


def _ingest_and_select(
    catalog: Catalog, store, location: str, key: str = "d1", name: str = "batch-1", stores: ImageStores = DEFAULT_STORES
) -> None:
    """The real steps: manifest, embeddings, dedup, then a selection holding every image."""
    catalog.register_drop(key, location)
    build_manifest(catalog, store, location, key)
    stats = embed_drop(catalog, OfflineEmbedder(), key, EmbedOptions(batch_size=8, workers=1), stores=stores)
    catalog.publish_embeddings(key, stats["model"])
    dedup_drop(catalog, key, catalog.load_embeddings([key], stats["model"]), DedupThresholds())
    select_subset(catalog, name, SelectionSpec(budget=4), model=stats["model"])
    selected = {it["source_uri"].rsplit("/d1/", 1)[-1] for it in catalog.selection_items(name)}
    assert {"a/b.jpg", BACKSLASH_KEY} <= selected  # both colliding keys are exported


@pytest.fixture
def local_collision(tmp_path, database_url):
    folder = tmp_path / "drops" / "d1"
    files = _colliding_drop(folder)
    catalog = Catalog(database_url)
    _ingest_and_select(catalog, LocalImageStore(), str(folder))
    return catalog, folder, files


@pytest.fixture
def s3_collision(tmp_path, s3, database_url):
    bucket = new_bucket(s3, "input")
    files = _colliding_drop(tmp_path / "rig")
    client = s3.client()
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"drops/d1/{key}", Body=data)
    catalog = Catalog(database_url)
    _ingest_and_select(catalog, S3ImageStore(s3), f"s3://{bucket}/drops/d1/", stores=ImageStores(s3))
    return catalog, bucket, files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_manifest(entries: list[dict], files: dict[str, bytes], read) -> None:
    assert len({e["exported_uri"] for e in entries}) == len(entries) == 4  # one file per image
    for e in entries:
        assert e["sha256"] == _sha(files[e["object_key"]])
        assert _sha(read(e["exported_uri"])) == e["sha256"]  # the manifest matches the bytes
    by_key = {e["object_key"]: e["exported_uri"] for e in entries}
    assert by_key["a/b.jpg"].endswith("images/d1/a/b.jpg")  # a key that is already safe keeps its name
    assert SUFFIXED.search(by_key[BACKSLASH_KEY])  # the other one gets a stable suffix


def test_keys_that_sanitise_to_one_path_get_distinct_files_locally(tmp_path, local_collision):
    catalog, _, files = local_collision
    target = LocalExportTarget(str(tmp_path / "out"))
    first = export_selection(catalog, "batch-1", target)
    assert first["copied"] == 4
    entries = [json.loads(x) for x in (tmp_path / "out" / "batch-1" / "manifest.jsonl").read_text().splitlines()]
    _check_manifest(entries, files, lambda uri: Path(uri).read_bytes())
    exported = sorted(
        p.relative_to(tmp_path / "out" / "batch-1" / "images").as_posix()
        for p in (tmp_path / "out" / "batch-1" / "images").rglob("*")
        if p.is_file()
    )
    assert len(exported) == 4 and not [p for p in exported if "\\" in p or p.endswith(".part")]
    again = export_selection(catalog, "batch-1", target)
    assert again["copied"] == 0 and again["already_there"] == 4
    assert [
        json.loads(x)["exported_uri"] for x in (tmp_path / "out" / "batch-1" / "manifest.jsonl").read_text().splitlines()
    ] == [e["exported_uri"] for e in entries]


def test_keys_that_sanitise_to_one_path_get_distinct_objects_in_s3(s3, s3_collision):
    catalog, _, files = s3_collision
    client = s3.client()
    out_bucket = new_bucket(s3, "labeling")
    target = S3ExportTarget(f"s3://{out_bucket}/exports/", s3)
    first = export_selection(catalog, "batch-1", target)
    assert first["copied"] == 4

    def read(uri: str) -> bytes:
        bucket, key = uri[len("s3://") :].split("/", 1)
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    entries = [json.loads(x) for x in read(f"s3://{out_bucket}/exports/batch-1/manifest.jsonl").decode().splitlines()]
    _check_manifest(entries, files, read)
    again = export_selection(catalog, "batch-1", target)
    assert again["copied"] == 0 and again["already_there"] == 4


def test_export_paths_are_unique_and_do_not_depend_on_row_order_or_unrelated_rows():
    rows = [{"drop_key": "d1", "object_key": k} for k in ("a/b.jpg", BACKSLASH_KEY, "./a/b.jpg", "c.jpg")]
    paths = export_paths(rows)
    assert paths[("d1", "a/b.jpg")] == "images/d1/a/b.jpg" and paths[("d1", "c.jpg")] == "images/d1/c.jpg"
    assert len(set(paths.values())) == 4
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        more = shuffled + [{"drop_key": "d2", "object_key": "x.jpg"}, {"drop_key": "d1", "object_key": "e/f.jpg"}]
        again = export_paths(more)
        assert {p: again[p] for p in paths} == paths
    # alone, an unsafe key keeps its sanitised name (nothing collides with it)
    assert export_paths([{"drop_key": "d1", "object_key": BACKSLASH_KEY}]) == {("d1", BACKSLASH_KEY): "images/d1/a/b.jpg"}
    # a hostile key spelling out the suffix another key would get still cannot share its file
    hostile = paths[("d1", BACKSLASH_KEY)].removeprefix("images/d1/")
    crafted = export_paths(rows + [{"drop_key": "d1", "object_key": hostile}])
    assert len(set(crafted.values())) == 5 and crafted[("d1", hostile)] == f"images/d1/{hostile}"
    # a key repeated (a retrieval set can list an image under two queries) maps to one path
    assert len(export_paths(rows + rows)) == 4


# ---- item 8: a destination inside a drop or a watched root ----------------------------------------


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_an_export_into_a_registered_drop_is_refused_before_anything_is_written(tmp_path, local_collision):
    catalog, folder, _ = local_collision
    before = _files(tmp_path / "drops")
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    for destination in (
        folder,
        f"{folder}/",
        folder / "exports",
        tmp_path / "link",
        tmp_path / "link" / "out",
        f"file://{folder}/sub",
    ):
        with pytest.raises(ValueError) as err:
            export_selection(catalog, "batch-1", LocalExportTarget(str(destination)))
        message = str(err.value)
        assert str(folder.resolve()) in message and "'d1'" in message and "CURATION_EXPORT_ROOT" in message
        assert _files(tmp_path / "drops") == before  # nothing written, not even a folder
    # retrieval sets export through the same function: refused before its rows are even read
    with pytest.raises(ValueError, match="inside drop 'd1'"):
        export_selection(catalog, "no-such-query", LocalExportTarget(str(folder / "r")), kind="retrieval")
    # a sibling whose name merely starts with the drop's name is outside it
    done = export_selection(catalog, "batch-1", LocalExportTarget(str(tmp_path / "drops" / "d10")))
    assert done["images"] == 4 and _files(folder) == [p.removeprefix("d1/") for p in before if p.startswith("d1/")]


def test_an_export_into_a_watched_root_is_refused(tmp_path, local_collision):
    catalog, _, _ = local_collision
    watched = tmp_path / "drops"
    with pytest.raises(ValueError, match=r"inside the watched root .*CURATION_EXPORT_ROOT") as err:
        export_selection(catalog, "batch-1", LocalExportTarget(str(watched / "exports")), protected_roots=[f"{watched}/"])
    assert str(watched / "exports" / "batch-1") in str(err.value)
    assert not (watched / "exports").exists()
    assert (
        export_selection(catalog, "batch-1", LocalExportTarget(str(tmp_path / "out")), protected_roots=[str(watched)])["images"]
        == 4
    )


def test_an_s3_export_into_a_drop_prefix_is_refused_on_segment_boundaries(s3, s3_collision):
    catalog, bucket, _ = s3_collision
    client = s3.client()
    keys_before = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    for destination in (f"s3://{bucket}/drops/d1/", f"s3://{bucket}/drops/d1", f"s3://{bucket}/drops/d1/x/"):
        with pytest.raises(ValueError, match=rf"s3://{bucket}/drops/d1/.*inside drop 'd1'.*CURATION_EXPORT_ROOT"):
            export_selection(catalog, "batch-1", S3ExportTarget(destination, s3))
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]) == keys_before
    with pytest.raises(ValueError, match="watched root"):
        export_selection(
            catalog, "batch-1", S3ExportTarget(f"s3://{bucket}/drops/d10/", s3), protected_roots=[f"s3://{bucket}/drops"]
        )
    done = export_selection(catalog, "batch-1", S3ExportTarget(f"s3://{bucket}/drops/d10/", s3))
    assert done["images"] == 4


def test_location_within_compares_resolved_paths_and_s3_segments(tmp_path):
    (tmp_path / "real" / "d1").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    assert location_within(str(tmp_path / "alias" / "d1" / "x"), f"{tmp_path}/real/d1/")
    assert location_within(str(tmp_path / "real" / "d1"), f"file://{tmp_path}/alias/d1")
    assert location_within(f"{tmp_path}/real/d1/../d1/y", str(tmp_path / "real" / "d1"))
    assert not location_within(str(tmp_path / "real" / "d10"), str(tmp_path / "real" / "d1"))
    assert location_within("s3://b/drops/d1/x/", "s3://b/drops/d1/")
    assert location_within("s3://b/drops/d1", "s3://b/drops/d1/")
    assert location_within("s3://b/anything/", "s3://b")
    assert not location_within("s3://b/drops/d10/", "s3://b/drops/d1/")
    assert not location_within("s3://other/drops/d1/", "s3://b/drops/d1/")
    assert not location_within(str(tmp_path / "drops"), "s3://b/")
    assert not location_within("s3://b/drops/d1/", str(tmp_path))


def test_the_curated_export_asset_refuses_a_destination_under_curation_watch(
    tmp_path, monkeypatch, curation_env, database_url, local_collision
):
    """The watched roots reach the asset through the image store resource, built from the settings
    of the environment (CURATION_WATCH, else CURATION_DROP_ROOT) as the code location builds it."""
    from curation_pipeline.definitions import build_resources
    from curation_pipeline.defs.export import ExportConfig, curated_export

    _, folder, _ = local_collision
    watched = tmp_path / "watched"
    watched.mkdir()
    monkeypatch.setenv("CURATION_WATCH", f"s3://somewhere/drops/, {watched}")
    monkeypatch.delenv("CURATION_DROP_ROOT", raising=False)

    def export(destination: str):
        resources = {k: v for k, v in build_resources().items() if k in ("database", "image_store", "outputs")}
        context = dg.build_asset_context(partition_key="batch-1")
        return curated_export(context, config=ExportConfig(destination=destination), **resources)

    for destination, what in ((str(watched / "exports"), "watched root"), (str(folder / "out"), "drop 'd1'")):
        with pytest.raises(ValueError, match=what):
            export(destination)
    assert not (watched / "exports").exists() and not (folder / "out").exists()
    # unset, the watched roots default to the drop root
    monkeypatch.delenv("CURATION_WATCH")
    monkeypatch.setenv("CURATION_DROP_ROOT", str(watched))
    with pytest.raises(ValueError, match="watched root"):
        export(str(watched / "exports"))
    assert not (watched / "exports").exists()
