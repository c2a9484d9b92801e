"""`curation labels ...` as a user runs it: labels that travel with a drop, the review of a flipped
box, a split, exports, and a bad file refused with its reason, on a persistent instance."""

from __future__ import annotations

import json
import os

import pytest

from curation_pipeline_tests.labels_helpers import coco_doc, make_colour_drop
from curation_pipeline_tests.test_cli import _run


@pytest.fixture
def env(curation_env):
    return {**os.environ}


def test_labels_from_a_drop_reviewed_split_and_exported(tmp_path, env):
    drop = tmp_path / "c1"
    truth = make_colour_drop(drop, per_class=6)
    doc = coco_doc({"boxes": truth["boxes"], "sizes": truth["sizes"]}, classes=["red", "blue"])
    flipped = doc["annotations"][4]  # the red box of the third image, labelled blue
    assert flipped["category_id"] == 1
    flipped["category_id"] = 2
    (drop / "_labels").mkdir()
    (drop / "_labels" / "boxes.json").write_text(json.dumps(doc))

    ingest = json.loads(_run(["ingest", str(drop), "--drop", "c1", "--json"], env).stdout)
    assert ingest["drop_labels"]["new_versions"] == 1
    assert ingest["object_embeddings"]["embedded"] == len(doc["annotations"])
    assert ingest["raw_image_manifest"]["objects_listed"] == len(truth["classes"])  # _labels/ is not an image
    sets = json.loads(_run(["labels", "list", "--json"], env).stdout)
    assert [(s["kind"], s["version"], s["format"], s["objects"]) for s in sets] == [
        ("labels", "v1", "coco", len(doc["annotations"]))
    ]

    # "more objects like this crop": a red box cut from a file finds red boxes
    name, boxes = next(iter(truth["boxes"].items()))
    red = next(b for c, b in boxes if c == "red")
    args = ["objects", "similar", "--image", str(drop / name), "--box", ",".join(str(v) for v in red), "--k", "5", "--json"]
    near = json.loads(_run(args, env).stdout)
    assert len(near) == 5 and near[0]["object_key"] == name and near[0]["similarity"] > 0.99
    assert sum(o["class_name"] == "red" for o in near) >= 4  # the flipped box is labelled blue

    review = _run(["labels", "review", "--json", "--show", "5"], env)
    issues = json.loads(review.stdout)
    wrong_image = doc["images"][2]["file_name"]
    mislabels = [x for x in issues if x["kind"] == "mislabel"]
    assert mislabels and mislabels[0]["object_key"] == wrong_image, issues
    assert (mislabels[0]["given"], mislabels[0]["suggested"]) == ("blue", "red")

    csv = tmp_path / "classes.csv"
    csv.write_text("image,label\n" + "".join(f"{k},{v}\n" for k, v in truth["classes"].items()))
    _run(["labels", "import", str(csv), "--drop", "c1"], env)
    split = json.loads(_run(["labels", "split", "--fractions", "0.5,0.25,0.25", "--json"], env).stdout)
    assert sum(p["items"] for p in split["stats"]["parts"].values()) == len(truth["classes"])

    out = tmp_path / "exports"
    _run(["labels", "export", "--format", "yolo", "--split", "default", "--destination", str(out), "--copy-images"], env)
    folder = out / "default-yolo"
    assert {p.name for p in folder.glob("*.txt")} >= {"train.txt", "val.txt", "test.txt", "classes.txt"}
    listed = [line for part in ("train", "val", "test") for line in (folder / f"{part}.txt").read_text().split()]
    assert len(listed) == len(truth["classes"]) and all((folder / p).is_file() for p in listed)
    tasks = out / "review-default" / "tasks.json"
    _run(["labels", "export", "--review", "default", "--destination", str(out)], env)
    assert json.loads(tasks.read_text())[0]["data"]["key"] == wrong_image

    # what a subset buys, scored on a protected, labelled drop that no subset draws from
    ev = tmp_path / "ev"
    ev_truth = make_colour_drop(ev, per_class=3)
    _run(["ingest", str(ev), "--drop", "ev"], env)
    ev_csv = tmp_path / "ev.csv"
    ev_csv.write_text("image,label\n" + "".join(f"{k},{v}\n" for k, v in ev_truth["classes"].items()))
    _run(["labels", "import", str(ev_csv), "--drop", "ev"], env)
    _run(["protect", "ev"], env)
    _run(["select", "--budget", "6", "--name", "pick", "--strategy", "class_balance", "--strategy", "diversity"], env)
    assert all(not p.startswith(str(ev)) for p in json.loads(_run(["subset", "--name", "pick", "--json"], env).stdout))
    curve = json.loads(_run(["labels", "evaluate", "--selection", "pick", "--seeds", "2", "--json"], env).stdout)
    assert curve["eval_drop"] == "ev" and curve["eval"] == 9 and curve["budgets"] == [1, 3, 6]
    assert all(0.0 <= a <= 1.0 for a in curve["subset"] + curve["random_mean"])

    bad = tmp_path / "bad.json"
    doc["annotations"][0]["category_id"] = 9
    bad.write_text(json.dumps(doc))
    refused = _run(["labels", "import", str(bad), "--drop", "c1"], env, check=False)
    assert refused.returncode != 0
    assert "annotation id 1: unknown category id 9" in refused.stderr.strip().splitlines()[-1]
    assert len(json.loads(_run(["labels", "list", "--drop", "c1", "--json"], env).stdout)) == 2
