"""What labels are for: object embeddings, the ranked label review, leak-free splits and exports
that round-trip (export, import, same boxes), on real PostgreSQL and real image files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.catalog.labels import object_index_name
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.export_target import LocalExportTarget
from curation_pipeline.resources.image_store import DEFAULT_STORES
from curation_pipeline.steps.dedup import dedup_drop
from curation_pipeline.steps.embed import EmbedOptions, embed_drop
from curation_pipeline.steps.label_export import export_labels, export_review
from curation_pipeline.steps.label_review import ReviewSpec, review_labels
from curation_pipeline.steps.labels import import_labels
from curation_pipeline.steps.objects import embed_objects
from curation_pipeline.steps.splits import SplitSpec, make_split
from curation_pipeline_tests.labels_helpers import (
    coco_doc,
    ingest_manifest,
    make_colour_drop,
    make_labelled_drop,
    write_coco,
    write_yolo,
)


def _embed_and_dedup(catalog: Catalog, key: str) -> str:
    stats = embed_drop(catalog, OfflineEmbedder(), key, EmbedOptions(batch_size=16, workers=2))
    catalog.publish_embeddings(key, stats["model"])
    dedup_drop(catalog, key, catalog.load_embeddings([key], stats["model"]), DedupThresholds())
    return stats["model"]


@pytest.fixture
def colour_drop(tmp_path, database_url):
    catalog = Catalog(database_url)
    folder = tmp_path / "colours"
    truth = make_colour_drop(folder)
    # two exact copies: a duplicate group that a split must keep in one part
    (folder / "copy_red_00.jpg").write_bytes((folder / "red_00.jpg").read_bytes())
    (folder / "copy_blue_03.jpg").write_bytes((folder / "blue_03.jpg").read_bytes())
    truth["classes"]["copy_red_00.jpg"] = "red"
    truth["classes"]["copy_blue_03.jpg"] = "blue"
    ingest_manifest(catalog, folder, "c1")
    model = _embed_and_dedup(catalog, "c1")
    return catalog, truth, model, folder


def _flip(truth: dict, flips: dict[str, str]) -> dict:
    return {**truth["classes"], **flips}


def test_the_review_ranks_flipped_image_labels_first_with_neighbours_that_disagree(colour_drop, tmp_path):
    catalog, truth, model, _ = colour_drop
    flips = {"red_03.jpg": "blue", "green_05.jpg": "red"}
    labels = _flip(truth, flips)
    path = tmp_path / "labels.csv"
    path.write_text("image,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    import_labels(catalog, path, drop_key="c1")
    stats = review_labels(catalog, ReviewSpec(name="r1", k=5), model=model)
    assert stats["image_labels"]["items"] == len(labels)
    issues = catalog.label_issues("r1")
    top = [x["object_key"] for x in issues[:2]]
    assert sorted(top) == sorted(flips), issues[:4]
    first = next(x for x in issues if x["object_key"] == "red_03.jpg")
    assert (first["given"], first["suggested"]) == ("blue", "red")
    assert first["neighbours"] and sum(n["label"] == "red" for n in first["neighbours"]) >= 3
    assert "nearest images are labelled otherwise" in first["reason"]


def test_object_embeddings_and_the_review_of_box_labels_overlaps_and_missing_boxes(colour_drop, tmp_path):
    catalog, truth, model, _ = colour_drop
    doc = coco_doc({"boxes": truth["boxes"], "sizes": truth["sizes"]}, classes=["red", "blue"])
    flipped = doc["annotations"][6]  # the red box of the fourth image, now "blue"
    assert flipped["category_id"] == 1
    flipped["category_id"] = 2
    dup = dict(doc["annotations"][0], id=1000, category_id=2)  # the first red box labelled twice
    doc["annotations"].append(dup)
    (tmp_path / "boxes.json").write_text(json.dumps(doc))
    import_labels(catalog, tmp_path / "boxes.json", drop_key="c1")
    first_image = doc["images"][0]["file_name"]
    preds = tmp_path / "preds.csv"
    preds.write_text(f"image,label,score,x,y,w,h\n{first_image},blue,0.93,100,5,20,20\n{first_image},red,0.2,2,60,10,10\n")
    import_labels(catalog, preds, drop_key="c1", kind="predictions")

    stats = embed_objects(catalog, OfflineEmbedder(), "c1")
    assert stats["embedded"] == stats["boxes"] == len(doc["annotations"]) + 2
    assert stats["tiny"] == 1  # the 10 px prediction
    assert catalog.object_embedding_count("c1", stats["model"]) == {"objects": stats["boxes"], "tiny": 1}
    with catalog.connection() as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'object_embeddings'")}
    assert object_index_name(stats["model"]) in indexes  # "more objects like this" walks an HNSW graph

    review = review_labels(catalog, ReviewSpec(name="boxes", k=5), model=model)
    assert review["box_labels"]["items"] == len(doc["annotations"])
    issues = catalog.label_issues("boxes")
    kinds = {x["kind"] for x in issues}
    assert {"mislabel", "overlap", "missing_label"} <= kinds
    mislabels = [x for x in issues if x["kind"] == "mislabel"]
    assert mislabels[0]["object_id"] is not None and mislabels[0]["given"] == "blue" and mislabels[0]["suggested"] == "red"
    assert mislabels[0]["object_key"] == doc["images"][3]["file_name"] or mislabels[0]["box"] == tuple(dup["bbox"])
    missing = [x for x in issues if x["kind"] == "missing_label"]
    assert len(missing) == 1 and missing[0]["suggested"] == "blue"  # the 0.2 prediction is not confident
    overlap = next(x for x in issues if x["kind"] == "overlap")
    assert overlap["object_key"] == first_image

    # the asset page's preview: each top suspect's crop beside its neighbours' crops and labels
    from curation_pipeline.steps.previews import suspects_markdown

    md = suspects_markdown(catalog, "boxes", DEFAULT_STORES)
    shown = sum(1 + min(3, len(x["neighbours"] or [])) for x in issues[:4])  # itself + up to 3 neighbours
    assert shown >= 7 and md.count("](data:image/jpeg;base64,") == shown
    assert "| rank | image | kind | given | suggested | score | why |" in md and "missing_label" in md

    # "more objects like this crop": the nearest objects of a red box are red boxes
    ids, vecs = catalog.object_vectors(catalog.current_set_ids("labels", ["c1"]), model)
    red_id = next(
        o["object_id"] for o in catalog.label_objects(catalog.current_set_ids("labels", ["c1"])) if o["class_name"] == "red"
    )
    near = catalog.nearest_objects(vecs[list(ids).index(red_id)], model, k=5, exclude=red_id)
    assert sum(o["class_name"] == "red" for o in near) >= 4

    # the suspects as a Label Studio review task
    out = export_review(catalog, LocalExportTarget(str(tmp_path / "out")), "boxes")
    tasks = json.loads((tmp_path / "out" / "review-boxes" / "tasks.json").read_text())
    assert out["tasks"] == len(tasks) and all("suspects" in t["data"] for t in tasks)


def test_a_split_keeps_duplicate_groups_together_and_stratifies_classes(colour_drop, tmp_path):
    catalog, truth, model, _ = colour_drop
    path = tmp_path / "labels.csv"
    path.write_text("image,label\n" + "".join(f"{k},{v}\n" for k, v in truth["classes"].items()))
    import_labels(catalog, path, drop_key="c1")
    stats = make_split(catalog, SplitSpec(name="s", fractions="train=0.5,val=0.25,test=0.25"), model=model)
    parts = catalog.split_parts("s")
    keys = {r["image_id"]: r["object_key"] for r in catalog.drop_image_index("c1")}
    by_key = {keys[i]: p for i, p in parts.items()}
    assert by_key["copy_red_00.jpg"] == by_key["red_00.jpg"]
    assert by_key["copy_blue_03.jpg"] == by_key["blue_03.jpg"]
    assert catalog.split_leaks("s") == [] and stats["leaks"] == 0
    for part in ("train", "val", "test"):
        assert set(stats["parts"][part]["classes"]) == {"red", "green", "blue"}, stats
    assert 10 <= stats["parts"]["train"]["items"] <= 16


def test_a_protected_drop_never_enters_a_split(colour_drop, tmp_path):
    catalog, truth, model, _ = colour_drop
    path = tmp_path / "labels.csv"
    path.write_text("image,label\n" + "".join(f"{k},{v}\n" for k, v in truth["classes"].items()))
    import_labels(catalog, path, drop_key="c1")
    catalog.set_protected("c1", True)
    with pytest.raises(ValueError, match="no labels"):
        make_split(catalog, SplitSpec(name="s"), model=model)


@pytest.fixture
def box_drop(tmp_path, database_url):
    catalog = Catalog(database_url)
    truth = make_labelled_drop(tmp_path / "drop")
    ingest_manifest(catalog, tmp_path / "drop", "d1")
    return catalog, truth


def _box_set(catalog: Catalog, version: str) -> dict:
    sets = catalog.current_set_ids("labels", ["d1"], version)
    out: dict = {}
    for o in catalog.label_objects(sets):
        out.setdefault(o["object_key"], []).append((o["class_name"], tuple(round(v, 1) for v in o["box"])))
    return {k: sorted(v) for k, v in out.items()}


def test_coco_export_then_import_gives_the_same_boxes(box_drop, tmp_path):
    catalog, truth = box_drop
    import_labels(catalog, write_coco(tmp_path / "in.json", truth), drop_key="d1")
    stats = export_labels(catalog, LocalExportTarget(str(tmp_path / "out")), "coco-out", fmt="coco", drop_keys=["d1"])
    assert stats["images"] == len(truth["boxes"])
    exported = tmp_path / "out" / "coco-out" / "annotations.json"
    doc = json.loads(exported.read_text())
    assert {i["file_name"] for i in doc["images"]} == {f"images/d1/{k}" for k in truth["boxes"]}
    again = import_labels(catalog, exported, drop_key="d1")
    assert again["version"] == "v2"
    assert _box_set(catalog, "v2") == _box_set(catalog, "v1")


def test_yolo_export_then_import_gives_the_same_boxes(box_drop, tmp_path):
    catalog, truth = box_drop
    import_labels(catalog, write_yolo(tmp_path / "yolo-in", truth), drop_key="d1")
    export_labels(catalog, LocalExportTarget(str(tmp_path / "out")), "yolo-out", fmt="yolo", drop_keys=["d1"])
    folder = tmp_path / "out" / "yolo-out"
    assert (folder / "labels" / "d1" / "sub" / "img_02.txt").is_file()
    assert "names:" in (folder / "data.yaml").read_text()
    again = import_labels(catalog, folder / "labels", drop_key="d1", fmt="yolo", classes_file=folder / "classes.txt")
    assert again["version"] == "v2"
    first, second = _box_set(catalog, "v1"), _box_set(catalog, "v2")
    assert first.keys() == second.keys()
    for key in first:
        for (c1, b1), (c2, b2) in zip(first[key], second[key]):
            assert c1 == c2 and max(abs(a - b) for a, b in zip(b1, b2)) <= 0.1


def test_label_studio_and_cvat_exports_carry_every_image_and_box(box_drop, tmp_path):
    catalog, truth = box_drop
    import_labels(catalog, write_coco(tmp_path / "in.json", truth), drop_key="d1")
    target = LocalExportTarget(str(tmp_path / "out"))
    export_labels(catalog, target, "ls", fmt="labelstudio", drop_keys=["d1"])
    tasks = json.loads((tmp_path / "out" / "ls" / "tasks.json").read_text())
    assert len(tasks) == len(truth["boxes"])
    task = next(t for t in tasks if t["data"]["key"] == "img_00.jpg")
    assert task["data"]["image"].startswith("/data/local-files/?d=") and task["data"]["image"].endswith("img_00.jpg")
    (cls, (x, y, w, h)) = truth["boxes"]["img_00.jpg"][0]
    box = task["predictions"][0]["result"][0]["value"]
    assert (
        box["rectanglelabels"] == [cls]
        and box["x"] == pytest.approx(100 * x / 160)
        and box["height"] == pytest.approx(100 * h / 120)
    )
    assert "<RectangleLabels" in (tmp_path / "out" / "ls" / "label_config.xml").read_text()
    export_labels(catalog, target, "cvat", fmt="cvat", drop_keys=["d1"])
    root = ET.parse(tmp_path / "out" / "cvat" / "annotations.xml").getroot()
    images = root.findall("image")
    assert len(images) == len(truth["boxes"])
    assert sum(len(i.findall("box")) for i in images) == sum(len(b) for b in truth["boxes"].values())
    first = next(i for i in images if i.get("name") == "images/d1/img_00.jpg")
    assert float(first.find("box").get("xbr")) == pytest.approx(x + w, abs=0.01)
    urls = (tmp_path / "out" / "cvat" / "image_urls.txt").read_text().split()
    assert len(urls) == len(images)


def _labelled_colour_drop(catalog: Catalog, folder, key: str, *, per_class: int, keep_blue: int | None = None) -> dict:
    truth = make_colour_drop(folder, per_class=per_class)
    if keep_blue is not None:
        for name in [n for n in truth["classes"] if n.startswith("blue_")][keep_blue:]:
            (folder / name).unlink()
            del truth["classes"][name]
    ingest_manifest(catalog, folder, key)
    _embed_and_dedup(catalog, key)
    labels = folder.parent / f"{key}-labels.csv"
    labels.write_text("image,label\n" + "".join(f"{k},{v}\n" for k, v in truth["classes"].items()))
    import_labels(catalog, labels, drop_key=key)
    return truth


def test_class_balance_spends_the_budget_on_rare_classes_and_the_evaluation_scores_it_on_a_protected_drop(
    tmp_path, database_url
):
    from curation_pipeline.steps.evaluation import evaluate_selection
    from curation_pipeline.steps.select import SelectionSpec, select_subset
    from curation_pipeline.steps.strategies import StrategySpec

    catalog = Catalog(database_url)
    _labelled_colour_drop(catalog, tmp_path / "pool", "pool", per_class=8, keep_blue=2)
    _labelled_colour_drop(catalog, tmp_path / "eval", "eval", per_class=4)
    catalog.set_protected("eval", True)
    model = "offline:colour-layout-v2"
    spec = SelectionSpec(budget=6, strategies=(StrategySpec("class_balance"), StrategySpec("diversity")))
    select_subset(catalog, "balanced", spec, model=model)
    items = catalog.selection_items("balanced")
    assert all(it["drop_key"] == "pool" for it in items)  # the protected drop never enters a subset
    picked = [it["object_key"].split("_")[0] for it in items]
    assert sorted(picked) == ["blue", "blue", "green", "green", "red", "red"]
    assert {it["group_key"] for it in items} == {"class-red", "class-green", "class-blue"}

    result = evaluate_selection(catalog, "balanced", model=model, seeds=3)
    assert result["eval_drop"] == "eval" and result["eval"] == 12 and result["pool"] == 18
    assert result["budgets"] == [1, 3, 6]
    assert len(result["subset"]) == len(result["random_mean"]) == 3
    # two of each class beat mostly-red-and-green random picks on a balanced evaluation drop
    assert result["subset"][-1] > result["random_mean"][-1]
    assert 0.0 <= min(result["random_min"]) <= max(result["random_max"]) <= 1.0 and result["everything"] > 1 / 3
    assert catalog.subset_evaluation("balanced")["result"]["subset"] == result["subset"]
    catalog.set_protected("eval", False)
    with pytest.raises(ValueError, match="is not protected"):
        evaluate_selection(catalog, "balanced", model=model, eval_drop="eval")


def test_the_report_shows_class_counts_objects_suspects_and_the_evaluation_curve(tmp_path, database_url):
    from curation_pipeline.steps.evaluation import evaluate_selection
    from curation_pipeline.steps.report import write_report
    from curation_pipeline.steps.select import SelectionSpec, select_subset
    from curation_pipeline.steps.strategies import StrategySpec

    catalog = Catalog(database_url)
    truth = _labelled_colour_drop(catalog, tmp_path / "pool", "pool", per_class=6)
    _labelled_colour_drop(catalog, tmp_path / "eval", "eval", per_class=3)
    catalog.set_protected("eval", True)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(coco_doc({"boxes": truth["boxes"], "sizes": truth["sizes"]}, classes=["red", "blue"])))
    import_labels(catalog, boxes, drop_key="pool", version="boxes")
    embed_objects(catalog, OfflineEmbedder(), "pool")
    model = "offline:colour-layout-v2"
    review_labels(catalog, ReviewSpec(name="rev", k=5), model=model)
    select_subset(catalog, "s", SelectionSpec(budget=6, strategies=(StrategySpec("class_balance"),)), model=model)
    evaluate_selection(catalog, "s", model=model, seeds=2)
    write_report(catalog, "s", tmp_path / "report")
    html = (tmp_path / "report" / "index.html").read_text()
    labels = html[html.index('id="labels"') : html.index('id="suspects"')]
    # the pool's newest labels are the boxes (one red, one blue per image); the protected drop is no pool
    assert "<td>red</td><td>18</td><td>6</td>" in labels and "<td>green</td>" not in labels
    assert labels.count("<img") >= 6  # crops of the subset's boxes
    evaluation = html[html.index('id="evaluation"') : html.index('id="quality"')]
    assert "protected drop eval" in evaluation and evaluation.count("<tr>") == 1 + 3
    suspects = html[html.index('id="suspects"') : html.index('id="evaluation"')]
    assert "review rev" in suspects


def test_label_studio_tasks_for_an_s3_drop_carry_presigned_urls_that_open_the_image(tmp_path, database_url, s3):
    import urllib.request

    from curation_pipeline.resources.image_store import ImageStores, S3ImageStore
    from curation_pipeline.steps.manifest import build_manifest
    from curation_pipeline_tests.conftest import new_bucket, upload_folder

    catalog = Catalog(database_url)
    truth = make_labelled_drop(tmp_path / "drop")
    bucket = new_bucket(s3)
    upload_folder(s3, tmp_path / "drop", bucket, "drops/d1/")
    location = f"s3://{bucket}/drops/d1/"
    catalog.register_drop("d1", location)
    build_manifest(catalog, S3ImageStore(s3), location, "d1")
    import_labels(catalog, write_coco(tmp_path / "in.json", truth), drop_key="d1")
    stores = ImageStores(s3)
    export_labels(catalog, LocalExportTarget(str(tmp_path / "out")), "ls", fmt="labelstudio", drop_keys=["d1"], stores=stores)
    tasks = json.loads((tmp_path / "out" / "ls" / "tasks.json").read_text())
    task = next(t for t in tasks if t["data"]["key"] == "img_00.jpg")
    url = task["data"]["image"]
    assert url.startswith(s3.endpoint_url) and "Signature" in url and "Expires" in url
    with urllib.request.urlopen(url, timeout=30) as response:  # the presigned URL opens the image over HTTP
        assert response.read() == (tmp_path / "drop" / "img_00.jpg").read_bytes()


def test_repeat_counts_count_the_same_object_in_other_images_of_its_class_only():
    import numpy as np

    from curation_pipeline.core.objects import repeat_counts

    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    vectors = np.stack([a, a, a, b, a]).astype(np.float32)
    images = np.array([1, 2, 2, 3, 4])
    classes = ["car", "car", "car", "car", "person"]
    # object 0 is seen again in image 2 (twice); objects 1 and 2 share an image, so each sees only object 0
    assert repeat_counts(vectors, images, classes, min_cosine=0.9).tolist() == [2, 1, 1, 0, 0]


def test_object_novelty_prefers_images_whose_objects_are_not_seen_again(tmp_path, database_url):
    import numpy as np
    from PIL import Image, ImageDraw

    from curation_pipeline.steps.select import SelectionSpec, select_subset
    from curation_pipeline.steps.strategies import StrategySpec

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(3)

    def pattern(seed: int) -> Image.Image:  # a 4x4 grid of random colours: an object with a look of its own
        cells = np.random.default_rng(seed).integers(0, 255, (4, 4, 3), dtype=np.uint8)
        return Image.fromarray(cells).resize((40, 40), Image.Resampling.NEAREST)

    rows = ["image,label,x,y,w,h"]
    for i in range(8):
        im = Image.new("RGB", (160, 120), (120, 120, 120))  # one scene ...
        draw = ImageDraw.Draw(im)
        for _ in range(5):  # ... with clutter of its own in every frame: no two frames are near-duplicates
            x0, y0 = int(rng.integers(0, 140)), int(rng.integers(0, 100))
            draw.rectangle((x0, y0, x0 + 20, y0 + 20), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        x, y = 20 + 10 * i, 30 + 5 * (i % 3)
        im.paste(pattern(0) if i < 4 else pattern(i), (x, y))  # the same object in four frames, then four others
        im.save(folder / f"frame_{i}.jpg", quality=95)
        rows.append(f"frame_{i}.jpg,thing,{x},{y},40,40")
    catalog = Catalog(database_url)
    ingest_manifest(catalog, folder, "seq")
    model = _embed_and_dedup(catalog, "seq")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    import_labels(catalog, tmp_path / "boxes.csv", drop_key="seq")
    embed_objects(catalog, OfflineEmbedder(), "seq")
    novelty = StrategySpec("object_novelty", min_cosine=0.85)
    select_subset(catalog, "fresh", SelectionSpec(budget=4, strategies=(novelty,)), model=model)
    picked = sorted(it["object_key"] for it in catalog.selection_items("fresh"))
    assert picked == ["frame_4.jpg", "frame_5.jpg", "frame_6.jpg", "frame_7.jpg"]
