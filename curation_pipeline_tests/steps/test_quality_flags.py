"""Quality flags end to end on a real database: the SQL filter and the Python evaluation come from
one registry and agree; `exclude: [blank]` keeps near-uniform frames out of a selection; the
report has a gallery per flag."""

import itertools

import pytest

from curation_pipeline.core.manifest import ManifestRecord
from curation_pipeline.core.quality import QUALITY_FLAGS, quality_flags
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.image_store import LocalImageStore
from curation_pipeline.steps import report as report_step
from curation_pipeline.steps.embed import EmbedOptions, embed_drop
from curation_pipeline.steps.manifest import build_manifest
from curation_pipeline.steps.select import SelectionSpec, select_subset
from curation_pipeline_tests.catalog_helpers import replace_manifest
from curation_pipeline_tests.conftest import jpeg, photo_crops
from curation_pipeline_tests.core.test_quality import near_uniform_frame

BLANK = {"lens_cap.jpg", "grey_wall.jpg", "wall_with_switch.jpg"}


def test_sql_and_python_raise_the_same_flags_on_the_same_rows(database_url):
    """Every combination of signal values either side of each threshold, some missing."""
    catalog = Catalog(database_url)
    values = {
        "blur_variance": (5.0, 500.0, None),
        "brightness": (0.05, 0.5, 0.97),
        "contrast": (0.01, 0.045, 0.2),
        "entropy": (2.0, 7.0, None),
        "aspect_ratio": (0.2, 1.3, 3.0),
        "size": ((640, 480), (50, 400), (None, None)),
    }
    rows, records = [], {}
    for i, combo in enumerate(itertools.product(*values.values())):
        signals = dict(zip(values, combo))
        width, height = signals.pop("size")
        key = f"img_{i:04d}.jpg"
        records[key] = {**signals, "width": width, "height": height}
        rows.append((i + 1, f"/x/{key}", ManifestRecord(key, 1, f"h{i}", "ok", width=width, height=height, **signals), None))
    replace_manifest(catalog, "d", rows)
    for flag in QUALITY_FLAGS:
        count, flagged = catalog.quality_flagged(flag, len(rows))
        expected = {key for key, record in records.items() if flag in quality_flags(record)}
        assert expected and {r["object_key"] for r in flagged} == expected and count == len(expected), flag


@pytest.fixture
def drop_with_blank_frames(tmp_path, database_url):
    """Six real photographs and three near-uniform frames, manifested and embedded (offline)."""
    folder = tmp_path / "rig"
    folder.mkdir()
    for i, crop in enumerate(photo_crops(6)):
        (folder / f"photo_{i}.jpg").write_bytes(jpeg(crop))
    frames = {
        "lens_cap.jpg": near_uniform_frame(level=6, noise=6, seed=1),
        "grey_wall.jpg": near_uniform_frame(level=128, noise=8, seed=2),
        "wall_with_switch.jpg": near_uniform_frame(level=200, noise=4, seed=3, bright_patch=True),
    }
    for name, frame in frames.items():
        (folder / name).write_bytes(jpeg(frame, 92))
    catalog = Catalog(database_url)
    catalog.register_drop("rig", str(folder))
    build_manifest(catalog, LocalImageStore(), str(folder), "rig")
    stats = embed_drop(catalog, OfflineEmbedder(), "rig", EmbedOptions(batch_size=4, workers=1))
    catalog.publish_embeddings("rig", stats["model"])
    return catalog, stats["model"]


def test_exclude_blank_keeps_near_uniform_frames_out_of_a_selection(drop_with_blank_frames):
    catalog, model = drop_with_blank_frames
    select_subset(catalog, "all", SelectionSpec(budget=9), model=model)
    assert BLANK <= {it["object_key"] for it in catalog.selection_items("all")}
    select_subset(catalog, "clean", SelectionSpec(budget=6, exclude=("blank",)), model=model)
    picked = {it["object_key"] for it in catalog.selection_items("clean")}
    assert picked == {f"photo_{i}.jpg" for i in range(6)}  # all 6 that pass: no blank frame among them


def _report_data(catalog, model, tmp_path, monkeypatch):
    """Select 4 images, write the report, and return the ReportData it rendered."""
    select_subset(catalog, "weekly", SelectionSpec(budget=4), model=model)
    seen = []
    render = report_step.render_html
    monkeypatch.setattr(report_step, "render_html", lambda data: seen.append(data) or render(data))
    report_step.write_report(catalog, "weekly", tmp_path / "report")
    (data,) = seen
    return data


def test_the_report_has_a_gallery_per_flag_and_counts_blank_frames(drop_with_blank_frames, tmp_path, monkeypatch):
    catalog, model = drop_with_blank_frames
    data = _report_data(catalog, model, tmp_path, monkeypatch)
    assert list(data.quality) == list(QUALITY_FLAGS)
    assert data.quality_counts["blank"] == 3
    assert {t.caption for t in data.quality["blank"]} == {f"rig/{name}" for name in BLANK}


def test_report_tiles_state_the_entropy_and_map_points_show_blank(drop_with_blank_frames, tmp_path, monkeypatch):
    catalog, model = drop_with_blank_frames
    data = _report_data(catalog, model, tmp_path, monkeypatch)
    details = [t.detail for t in data.quality["blank"]]
    assert len(details) == 3 and all(d.startswith("entropy ") and "?" not in d and "contrast 0.0" in d for d in details)
    by_caption = {p.caption: p.quality for p in data.map_points}
    assert all(by_caption[f"rig/{name}"] == "blank" for name in BLANK)
