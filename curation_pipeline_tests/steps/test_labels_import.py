"""Label and prediction files in: every format, versions, and bad files that import nothing."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation_pipeline.core.labels import LabelFileError
from curation_pipeline.resources.catalog import Catalog, LabelVersionExists
from curation_pipeline.steps.labels import import_labels
from curation_pipeline_tests.labels_helpers import (
    CLASSES,
    coco_doc,
    ingest_manifest,
    make_labelled_drop,
    write_coco,
    write_voc,
    write_yolo,
)


@pytest.fixture
def drop(tmp_path, database_url):
    catalog = Catalog(database_url)
    truth = make_labelled_drop(tmp_path / "drop")
    (tmp_path / "drop" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    ingest_manifest(catalog, tmp_path / "drop", "d1")
    return catalog, truth


def _boxes(catalog: Catalog, kind: str = "labels") -> dict[str, list]:
    out: dict[str, list] = {}
    for o in catalog.label_objects(catalog.current_set_ids(kind, ["d1"])):
        out.setdefault(o["object_key"], []).append((o["class_name"], tuple(round(v, 2) for v in o["box"])))
    return {k: sorted(v) for k, v in out.items()}


def _expected(truth: dict) -> dict[str, list]:
    return {k: sorted((c, tuple(round(v, 2) for v in b)) for c, b in boxes) for k, boxes in truth["boxes"].items()}


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_each_box_format_imports_the_same_boxes(drop, tmp_path, fmt):
    catalog, truth = drop
    writers = {
        "coco": lambda: write_coco(tmp_path / "labels.json", truth),
        "yolo": lambda: write_yolo(tmp_path / "yolo", truth),
        "voc": lambda: write_voc(tmp_path / "voc", truth),
    }
    stats = import_labels(catalog, writers[fmt](), drop_key="d1", fmt=fmt)
    assert stats["created"] and stats["version"] == "v1"
    assert stats["boxes"] == sum(len(b) for b in truth["boxes"].values())
    got = _boxes(catalog)
    want = _expected(truth)
    assert got.keys() == want.keys()
    for key in want:  # YOLO's 6 decimals of normalised coordinates: within a tenth of a pixel
        for (gc, gb), (wc, wb) in zip(got[key], want[key]):
            assert gc == wc
            assert max(abs(a - b) for a, b in zip(gb, wb)) < 0.1


def test_image_level_labels_and_prediction_probabilities_from_csv_and_parquet(drop, tmp_path):
    catalog, truth = drop
    names = list(truth["boxes"])
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image,label\n" + "".join(f"{n},{CLASSES[i % 3]}\n" for i, n in enumerate(names)))
    stats = import_labels(catalog, csv_path, drop_key="d1")
    assert stats["format"] == "csv" and stats["image_level"] == len(names)
    rows = [[n, 0.7, 0.2, 0.1] for n in names]
    table = pa.table({"image": [r[0] for r in rows], **{f"prob_{c}": [r[i + 1] for r in rows] for i, c in enumerate(CLASSES)}})
    pq.write_table(table, tmp_path / "preds.parquet")
    stats = import_labels(catalog, tmp_path / "preds.parquet", drop_key="d1", kind="predictions")
    objs = catalog.label_objects(catalog.current_set_ids("predictions", ["d1"]))
    assert len(objs) == len(names)
    assert all(o["class_name"] == "cat" and o["probs"] == pytest.approx([0.7, 0.2, 0.1]) for o in objs)
    assert all(o["score"] == pytest.approx(0.7) for o in objs)


def test_a_new_import_is_a_new_version_and_the_same_file_again_is_a_no_op(drop, tmp_path):
    catalog, truth = drop
    path = write_coco(tmp_path / "labels.json", truth)
    first = import_labels(catalog, path, drop_key="d1")
    again = import_labels(catalog, path, drop_key="d1")
    assert again == {**first, "created": False}
    doc = coco_doc(truth)
    doc["annotations"] = doc["annotations"][:-1]
    path.write_text(json.dumps(doc))
    second = import_labels(catalog, path, drop_key="d1")
    assert (second["version"], second["created"]) == ("v2", True)
    sets = catalog.label_sets("d1")
    assert [s["version"] for s in sets] == ["v1", "v2"]
    assert [s["objects"] for s in sets] == [first["objects"], first["objects"] - 1]
    with pytest.raises(LabelVersionExists, match="already has labels version 'v1'"):
        import_labels(catalog, path, drop_key="d1", version="v1")
    assert [s["objects"] for s in catalog.label_sets("d1")] == [first["objects"], first["objects"] - 1]
    import_labels(catalog, path, drop_key="d1", version="v1", replace=True)
    assert [s["objects"] for s in catalog.label_sets("d1")] == [first["objects"] - 1, first["objects"] - 1]


def _bad_coco(truth, mutate) -> dict:
    doc = coco_doc(truth)
    mutate(doc)
    return doc


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["images"].append({"id": 99, "file_name": "nope.jpg", "width": 10, "height": 10}),
            "unknown image 'nope.jpg'",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[150, 10, 40, 20]),
            "annotation id 1: box (150, 10, 40, 20) is outside the image",
        ),
        (lambda d: d["annotations"][1].update(category_id=7), "annotation id 2: unknown category id 7"),
        (lambda d: d["annotations"][2].update(id=1), "annotation id 1: duplicate annotation id"),
        (lambda d: d["annotations"][0].update(image_id=42), "annotation id 1: unknown image id 42"),
        (lambda d: d["images"][0].update(width=999), "the file says 'img_00.jpg' is 999x120, the image is 160x120"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, "x", 4]), "is not four numbers"),
    ],
)
def test_a_bad_coco_file_names_the_record_and_the_reason_and_imports_nothing(drop, tmp_path, mutate, message):
    catalog, truth = drop
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad_coco(truth, mutate)))
    with pytest.raises(LabelFileError) as err:
        import_labels(catalog, path, drop_key="d1")
    assert str(path) in str(err.value) and message in str(err.value) and "nothing imported" in str(err.value)
    assert catalog.label_sets("d1") == []


def test_bad_yolo_and_voc_files_name_file_line_and_reason(drop, tmp_path):
    catalog, truth = drop
    folder = write_yolo(tmp_path / "yolo", truth)
    (folder / "img_00.txt").write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n0 0.95 0.5 0.2 0.2\n")
    (folder / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(LabelFileError) as err:
        import_labels(catalog, folder, drop_key="d1", fmt="yolo")
    text = str(err.value)
    assert "img_00.txt line 2: unknown class id 5 (the class list has 3)" in text
    assert "img_00.txt line 3: box" in text and "outside the image" in text
    assert "unknown image 'ghost'" in text
    voc = write_voc(tmp_path / "voc", truth)
    (voc / "img_01.xml").write_text("<annotation><filename>img_01.jpg</filename><object><name>cat</name></object>")
    with pytest.raises(LabelFileError, match=r"img_01.xml: not XML"):
        import_labels(catalog, voc, drop_key="d1")
    assert catalog.label_sets("d1") == []


def test_annotations_of_a_corrupt_image_are_skipped_and_counted_not_fatal(drop, tmp_path):
    catalog, truth = drop
    doc = coco_doc(truth)
    doc["images"].append({"id": 50, "file_name": "broken.jpg"})
    doc["annotations"].append({"id": 500, "image_id": 50, "category_id": 1, "bbox": [1, 1, 5, 5]})
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(doc))
    stats = import_labels(catalog, path, drop_key="d1")
    assert stats["skipped_invalid_images"] == 1
    assert stats["boxes"] == sum(len(b) for b in truth["boxes"].values())


def test_labels_for_an_unknown_drop_are_refused(database_url, tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("image,label\na.jpg,cat\n")
    with pytest.raises(LookupError, match="drop 'nope' has no images"):
        import_labels(Catalog(database_url), path, drop_key="nope")
