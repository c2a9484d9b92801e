"""Dedup with pixel verification through the real asset graph (issue 15): every proposed pair of
distinct contents gets a stored verdict, look-alike crops of one picture stay apart while edited
copies join, and a corpus calibration is stored and then used by the next dedup."""

from __future__ import annotations

import dagster as dg
import pytest
from PIL import Image, ImageDraw, ImageOps

from curation_pipeline.definitions import build_definitions
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline_tests.conftest import jpeg, make_small_drop
from curation_pipeline_tests.defs.test_graph import _groups_by_key, _ingest


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _hard_drop(folder) -> None:
    """The small drop, plus a flipped-and-captioned copy of img_05, two overlapping crops of one
    photo (they share a strip of identical pixels), and a photo with a tighter framing of it."""
    make_small_drop(folder)
    im = Image.open(folder / "img_05.jpg").convert("RGB")
    flipped = ImageOps.mirror(im)
    ImageDraw.Draw(flipped).text((4, 4), "(c) 2026", fill=(255, 255, 255))
    (folder / "flipped_05.jpg").write_bytes(jpeg(flipped, 80))
    from skimage import data

    big = Image.fromarray(data.astronaut())
    (folder / "crop_left.jpg").write_bytes(jpeg(big.crop((0, 100, 300, 400))))
    (folder / "crop_right.jpg").write_bytes(jpeg(big.crop((200, 100, 500, 400))))
    coffee = Image.fromarray(data.coffee())  # 600 x 400; its centre, 75% a side: another framing
    (folder / "coffee.jpg").write_bytes(jpeg(coffee))
    (folder / "coffee_centre.jpg").write_bytes(jpeg(coffee.crop((75, 50, 525, 350))))


def test_verified_dedup_stores_every_verdict_and_keeps_look_alike_crops_apart(tmp_path, database_url, curation_env, instance):
    _hard_drop(tmp_path / "d1")
    result = _ingest(instance, database_url, "d1", tmp_path / "d1")
    meta = result.asset_materializations_for_node("dedup_clusters")[0].metadata
    assert meta["verified"].value is True and meta["pairs_verified"].value >= 3
    catalog = Catalog(database_url)
    groups = [{rep} | ms for rep, ms in _groups_by_key(catalog).items()]
    pairs = catalog.dedup_pairs(["d1"])
    for original, copy in [
        ("img_00", "copy_of_00"),
        ("img_01", "copy_of_01"),
        ("img_02", "reencoded_02"),
        ("img_03", "reencoded_03"),
        ("img_05", "flipped_05"),
    ]:
        assert any({f"{original}.jpg", f"{copy}.jpg"} <= g for g in groups), (original, groups)
    assert all(not {"crop_left.jpg", "crop_right.jpg"} <= g for g in groups)
    assert all(p["image_a"] < p["image_b"] for p in pairs)
    by_keys = {frozenset((p["key_a"], p["key_b"])): p for p in pairs}
    flip = by_keys[frozenset(("img_05.jpg", "flipped_05.jpg"))]
    assert flip["accepted"] and flip["mirrored"] and flip["inliers"] >= 10 and flip["coverage"] > 0.9
    crops = by_keys.get(frozenset(("crop_left.jpg", "crop_right.jpg")))
    if crops is not None:  # proposed: then the verifier must have said no, and why
        assert not crops["accepted"] and crops["reason"]
    # exact copies skip verification: identical contents are one node
    assert frozenset(("img_00.jpg", "copy_of_00.jpg")) not in by_keys
    settings = catalog.dedup_settings()[0]
    assert settings.verifier is not None and settings.verifier["min_share"] > 0
    framing = by_keys[frozenset(("coffee.jpg", "coffee_centre.jpg"))]  # proposed: the descriptor sees one scene
    assert not framing["accepted"] and framing["reason"] == "overlap too small"  # the verifier said no, and why
    assert all(not {"coffee.jpg", "coffee_centre.jpg"} <= g for g in groups)


def test_calibration_is_stored_and_used_by_the_next_dedup(tmp_path, database_url, curation_env, instance):
    _hard_drop(tmp_path / "d1")
    _ingest(instance, database_url, "d1", tmp_path / "d1")
    defs = build_definitions(database_url=database_url)
    calibrated = defs.resolve_job_def("calibrate_dedup").execute_in_process(
        instance=instance, run_config={"ops": {"dedup_calibration": {"config": {"sample": 12}}}}
    )
    assert calibrated.success
    meta = calibrated.asset_materializations_for_node("dedup_calibration")[0].metadata
    catalog = Catalog(database_url)
    record = catalog.dedup_calibration(meta["model"].value)
    assert record is not None and record.calibration_id == meta["calibration_id"].value
    assert record.summary["edits"] >= 10 and record.summary["neighbours"] >= 5
    assert 0.5 <= record.proposal_min_cosine <= 1.0 and record.summary["proposal_recall"] >= 0.97
    assert record.verifier["min_share"] >= 0.75  # never loosened below the default
    assert len(record.curve["cosine"]) == 51 and len(record.curve["share"]) >= 30
    again = _ingest(instance, database_url, "d1", tmp_path / "d1")
    dedup_meta = again.asset_materializations_for_node("dedup_clusters")[0].metadata
    assert dedup_meta["calibration_id"].value == record.calibration_id
    assert dedup_meta["min_cosine"].value == record.proposal_min_cosine
    assert catalog.dedup_settings()[0].verifier["min_share"] == record.verifier["min_share"]
    # the report's threshold explorer shows the calibration in use and the rejected pairs
    instance.add_dynamic_partitions("selections", ["s"])
    report = defs.resolve_job_def("select_and_report").execute_in_process(
        instance=instance, partition_key="s", run_config={"ops": {"curated_subset": {"config": {"budget": 3}}}}
    )
    page = open(report.asset_materializations_for_node("curation_report")[0].metadata["path"].value, encoding="utf-8").read()
    explorer = page.split('id="threshold"')[1].split('id="leaks"')[0]
    assert f"Calibration #{record.calibration_id} of {record.model}" in explorer
    assert f"{record.proposal_min_cosine:.2f} (used)" in explorer and f"{record.verifier['min_share']:.2f} (used)" in explorer
    assert "pixel-verified (agreeing share &gt;= " in explorer
    rejected = catalog.dedup_pair_count(accepted=False)
    assert f"Proposed but rejected by the pixel verifier ({rejected} pairs" in explorer
    for shown in catalog.dedup_pairs(accepted=False, limit=3):
        assert shown["key_b"] in explorer and shown["reason"] in explorer
