"""Label and prediction files in and out: COCO JSON, YOLO txt (with its class list), Pascal VOC XML
and image-level tables (CSV/Parquet rows already read into dicts). Pure: bytes and dicts in,
records out; matching image names to the manifest and checking boxes against the real image sizes
happens in steps/labels.py.

Every parser checks the whole file and lists each problem with the record it is in (annotation id,
file and line, row number) in `LabelFile.problems`; the importer adds its own and raises one
LabelFileError with all of them, so a bad file is fixed in one pass and nothing of it is imported.
A file that cannot be read at all (not JSON, no categories) raises at once.

Boxes are (x, y, w, h) in pixels from the top-left corner, except YOLO's, which stay normalised
(`normalized=True`) until the image's size is known."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

FORMATS = ("coco", "yolo", "voc", "csv")
KINDS = ("labels", "predictions")
# A box may stick out of its image by this many pixels (rounding in the tools that drew it).
BOX_TOLERANCE_PX = 1.0
MAX_PROBLEMS_SHOWN = 20

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LabelRecord:
    """One annotation: a box of a class, or (box None) a class for the whole image."""

    image: str  # the image as the file names it: a path, a file name or (YOLO) a stem
    class_name: str
    box: Box | None = None  # (x, y, w, h): pixels, or fractions of the image when `normalized`
    normalized: bool = False
    score: float | None = None  # a prediction's confidence
    probs: tuple[float, ...] | None = None  # a prediction's probability per class (LabelFile.classes)
    ref: str = ""  # where it is in the file, for errors: "annotation id 17", "a.txt line 3", "row 5"
    image_size: tuple[int, int] | None = None  # (width, height) the file declares for the image


@dataclass
class LabelFile:
    format: str
    classes: list[str]
    records: list[LabelRecord]
    # every image the file names, annotated or not (an image listed with no box is "labelled empty")
    images: list[str] = field(default_factory=list)
    # (record, why) of every record left out; the importer adds its own (unknown image, ...) and
    # refuses the file when any exist (`check`)
    problems: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def check(self) -> "LabelFile":
        """Raise LabelFileError when the file had any problem."""
        if self.problems:
            raise LabelFileError(self.source, self.problems)
        return self


class LabelFileError(ValueError):
    """A label file that cannot be imported: names the file and each problem with its record."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = "; ".join(f"{ref}: {why}" if ref else why for ref, why in self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        super().__init__(
            f"labels file {source!r}: {len(self.problems)} problem(s), nothing imported: {shown}"
            + (f"; and {more} more" if more > 0 else "")
        )


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[str, str]] = []

    def add(self, ref: str, why: str) -> None:
        self.items.append((ref, why))


def _finite(values: Iterable) -> list[float] | None:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def box_problem(box: Box, size: tuple[int, int] | None, *, normalized: bool = False) -> str | None:
    """Why a box is unusable (not positive, or outside its image), or None."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"box {fmt_box(box)} has no area"
    if normalized:
        tol = 1e-3
        if x < -tol or y < -tol or x + w > 1 + tol or y + h > 1 + tol:
            return f"box {fmt_box(box)} is outside the image (normalised coordinates must lie in 0..1)"
        return None
    if size is not None:
        width, height = size
        tol = BOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return f"box {fmt_box(box)} is outside the image ({width}x{height})"
    return None


def fmt_box(box: Box) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in box) + ")"


def clip_box(box: Box, size: tuple[int, int]) -> Box:
    """The box clipped to the image (after the tolerance check let it stick out a little)."""
    x, y, w, h = box
    width, height = size
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    return (x0, y0, max(x1 - x0, 1e-6), max(y1 - y0, 1e-6))


# ---- COCO ---------------------------------------------------------------------------------------
def parse_coco(data: bytes, source: str = "coco.json") -> LabelFile:
    """A COCO detection file: `images` (id, file_name, width, height), `categories` (id, name) and
    `annotations` (id, image_id, category_id, bbox [x, y, w, h]; `score` makes it a prediction).
    Annotations without a bbox are image-level labels."""
    problems = _Problems(source)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelFileError(source, [("", f"not JSON: {exc}")]) from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise LabelFileError(source, [("", "a COCO file is an object with lists 'images', 'annotations' and 'categories'")])
    categories: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        cid, name = (cat.get("id"), cat.get("name")) if isinstance(cat, dict) else (None, None)
        if not isinstance(cid, int) or not isinstance(name, str) or not name:
            problems.add(f"category #{i}", "needs an integer 'id' and a 'name'")
        elif cid in categories:
            problems.add(f"category id {cid}", "duplicate category id")
        else:
            categories[cid] = name
    images: dict[int, tuple[str, tuple[int, int] | None]] = {}
    for i, img in enumerate(doc["images"]):
        iid, name = (img.get("id"), img.get("file_name")) if isinstance(img, dict) else (None, None)
        if not isinstance(iid, int) or not isinstance(name, str) or not name:
            problems.add(f"image #{i}", "needs an integer 'id' and a 'file_name'")
            continue
        if iid in images:
            problems.add(f"image id {iid}", "duplicate image id")
            continue
        w, h = img.get("width"), img.get("height")
        images[iid] = (name, (int(w), int(h)) if isinstance(w, int | float) and isinstance(h, int | float) else None)
    records: list[LabelRecord] = []
    seen_ids: set = set()
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            problems.add(f"annotation #{i}", "is not an object")
            continue
        aid = ann.get("id")
        ref = f"annotation id {aid}" if aid is not None else f"annotation #{i}"
        if aid is not None:
            if aid in seen_ids:
                problems.add(ref, "duplicate annotation id")
                continue
            seen_ids.add(aid)
        image = images.get(ann.get("image_id"))  # type: ignore[arg-type]
        if image is None:
            problems.add(ref, f"unknown image id {ann.get('image_id')!r}")
            continue
        cat = categories.get(ann.get("category_id"))  # type: ignore[arg-type]
        if cat is None:
            problems.add(ref, f"unknown category id {ann.get('category_id')!r}")
            continue
        box: Box | None = None
        if ann.get("bbox") is not None:
            vals = _finite(ann["bbox"]) if isinstance(ann["bbox"], list) else None
            if vals is None or len(vals) != 4:
                problems.add(ref, f"bbox {ann['bbox']!r} is not four numbers [x, y, w, h]")
                continue
            box = (vals[0], vals[1], vals[2], vals[3])
            why = box_problem(box, image[1])
            if why:
                problems.add(ref, why)
                continue
        score = ann.get("score")
        if score is not None and _finite([score]) is None:
            problems.add(ref, f"score {score!r} is not a number")
            continue
        records.append(
            LabelRecord(image[0], cat, box, score=None if score is None else float(score), ref=ref, image_size=image[1])
        )
    classes = [categories[k] for k in sorted(categories)]
    return LabelFile("coco", classes, records, [n for n, _ in images.values()], problems.items, source)


# ---- YOLO ---------------------------------------------------------------------------------------
def parse_class_list(text: str, source: str) -> list[str]:
    """Class names from classes.txt (one per line) or a data.yaml `names:` (list or {id: name})."""
    if source.endswith((".yaml", ".yml")):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise LabelFileError(source, [("", f"not YAML: {exc}")]) from None
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict) and all(isinstance(k, int) for k in names):
            if sorted(names) != list(range(len(names))):
                raise LabelFileError(source, [("names", "class ids must be 0..n-1")])
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise LabelFileError(source, [("", "no 'names' list or mapping")])
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise LabelFileError(source, [("", "the class list needs one non-empty name per line")])
    return names


def parse_yolo(files: Mapping[str, str], classes: Sequence[str], source: str = "labels") -> LabelFile:
    """YOLO label files {relative path: text}: one `class cx cy w h [confidence]` line per box,
    normalised to the image; the file's stem names the image. An empty file is an image with
    no boxes."""
    problems = _Problems(source)
    records: list[LabelRecord] = []
    for path in sorted(files):
        stem = path.rsplit(".", 1)[0]
        for n, line in enumerate(files[path].splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            ref = f"{path} line {n}"
            if len(parts) not in (5, 6):
                problems.add(ref, f"expected 'class cx cy w h [confidence]', got {len(parts)} fields")
                continue
            try:
                cid = int(parts[0])
            except ValueError:
                problems.add(ref, f"class id {parts[0]!r} is not an integer")
                continue
            if not 0 <= cid < len(classes):
                problems.add(ref, f"unknown class id {cid} (the class list has {len(classes)})")
                continue
            vals = _finite(parts[1:])
            if vals is None:
                problems.add(ref, "coordinates are not finite numbers")
                continue
            cx, cy, w, h = vals[:4]
            box = (cx - w / 2, cy - h / 2, w, h)
            why = box_problem(box, None, normalized=True)
            if why:
                problems.add(ref, why)
                continue
            score = vals[4] if len(vals) == 5 else None
            records.append(LabelRecord(stem, classes[cid], box, normalized=True, score=score, ref=ref))
    stems = [p.rsplit(".", 1)[0] for p in sorted(files)]
    return LabelFile("yolo", list(classes), records, stems, problems.items, source)


# ---- Pascal VOC ---------------------------------------------------------------------------------
def parse_voc(files: Mapping[str, bytes], classes: Sequence[str] | None = None, source: str = "voc") -> LabelFile:
    """Pascal VOC XML files {relative path: bytes}: `filename`, `size` and `object`s with `name`
    and `bndbox` (xmin, ymin, xmax, ymax). Classes are the given list, else every name seen,
    sorted."""
    problems = _Problems(source)
    records: list[LabelRecord] = []
    images: list[str] = []
    for path in sorted(files):
        try:
            root = ET.fromstring(files[path])
        except ET.ParseError as exc:
            problems.add(path, f"not XML: {exc}")
            continue
        name = (root.findtext("filename") or "").strip()
        if not name:
            problems.add(path, "no <filename>")
            continue
        images.append(name)
        size = None
        w_text, h_text = root.findtext("size/width"), root.findtext("size/height")
        dims = _finite([w_text, h_text]) if w_text and h_text else None
        if dims:
            size = (int(dims[0]), int(dims[1]))
        for n, obj in enumerate(root.findall("object"), start=1):
            ref = f"{path} object {n}"
            cls = (obj.findtext("name") or "").strip()
            if not cls:
                problems.add(ref, "no <name>")
                continue
            if classes is not None and cls not in classes:
                problems.add(ref, f"unknown class {cls!r}")
                continue
            bb = obj.find("bndbox")
            vals = _finite([bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]) if bb is not None else None
            if vals is None:
                problems.add(ref, "no numeric <bndbox> xmin/ymin/xmax/ymax")
                continue
            box = (vals[0], vals[1], vals[2] - vals[0], vals[3] - vals[1])
            why = box_problem(box, size)
            if why:
                problems.add(ref, why)
                continue
            score = _finite([obj.findtext("score")]) if obj.findtext("score") else None
            records.append(LabelRecord(name, cls, box, score=score[0] if score else None, ref=ref, image_size=size))
    names = list(classes) if classes is not None else sorted({r.class_name for r in records})
    return LabelFile("voc", names, records, images, problems.items, source)


# ---- image-level tables -------------------------------------------------------------------------
IMAGE_COLUMNS = ("image", "uri", "file_name", "filename", "path", "key")
LABEL_COLUMNS = ("label", "class", "class_name")
PROB_PREFIX = "prob_"


def parse_table(columns: Sequence[str], rows: Sequence[Mapping], source: str = "labels.csv") -> LabelFile:
    """Image-level rows: an image column (image, uri, file_name, filename, path or key), a label
    column (label, class or class_name), optional `score`, optional box columns x, y, w, h, and
    optional `prob_<class>` columns with a prediction's probability per class (the label is then
    their argmax when no label column is given)."""
    problems = _Problems(source)
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
    prob_cols = [c for c in columns if c.startswith(PROB_PREFIX) and len(c) > len(PROB_PREFIX)]
    if image_col is None:
        raise LabelFileError(source, [("", f"no image column (one of {list(IMAGE_COLUMNS)}); columns: {list(columns)}")])
    if label_col is None and not prob_cols:
        raise LabelFileError(source, [("", f"no label column (one of {list(LABEL_COLUMNS)}) and no prob_<class> columns")])
    has_box = all(c in columns for c in ("x", "y", "w", "h"))
    prob_classes = [c[len(PROB_PREFIX) :] for c in prob_cols]
    records: list[LabelRecord] = []
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        ref = f"row {n}"
        image = str(row.get(image_col) or "").strip()
        if not image:
            problems.add(ref, f"empty {image_col!r}")
            continue
        probs = None
        if prob_cols:
            vals = _finite(row.get(c) for c in prob_cols)
            if vals is None or any(v < 0 for v in vals) or abs(sum(vals) - 1) > 0.02:
                problems.add(ref, "prob_ columns must be non-negative numbers that sum to 1")
                continue
            probs = tuple(vals)
        label = str(row.get(label_col) or "").strip() if label_col else ""
        if not label:
            if probs is None:
                problems.add(ref, f"empty {label_col!r}")
                continue
            label = prob_classes[max(range(len(probs)), key=probs.__getitem__)]
        if prob_cols and label not in prob_classes:
            problems.add(ref, f"label {label!r} has no prob_{label} column")
            continue
        box: Box | None = None
        if has_box and all(row.get(c) not in (None, "") for c in ("x", "y", "w", "h")):
            vals = _finite(row.get(c) for c in ("x", "y", "w", "h"))
            if vals is None:
                problems.add(ref, "x, y, w, h are not numbers")
                continue
            box = (vals[0], vals[1], vals[2], vals[3])
            why = box_problem(box, None)
            if why:
                problems.add(ref, why)
                continue
        score = None
        if row.get("score") not in (None, ""):
            vals = _finite([row.get("score")])
            if vals is None:
                problems.add(ref, f"score {row.get('score')!r} is not a number")
                continue
            score = vals[0]
        elif probs is not None:
            score = max(probs)
        records.append(LabelRecord(image, label, box, score=score, probs=probs, ref=ref))
    classes = prob_classes or sorted({r.class_name for r in records})
    return LabelFile("csv", classes, records, [r.image for r in records], problems.items, source)


# ---- out ----------------------------------------------------------------------------------------
def to_coco(images: Sequence[dict], objects: Sequence[dict], classes: Sequence[str]) -> dict:
    """A COCO detection file. `images`: {image_id, file_name, width, height}; `objects`:
    {image_id, class_name, box (x, y, w, h) or None, score or None}. Category ids are 1-based in
    `classes` order (COCO's convention); predictions keep their score."""
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    anns = []
    for n, obj in enumerate(objects, start=1):
        ann: dict = {"id": n, "image_id": int(obj["image_id"]), "category_id": cat_ids[obj["class_name"]], "iscrowd": 0}
        if obj.get("box") is not None:
            x, y, w, h = (round(float(v), 3) for v in obj["box"])
            ann.update(bbox=[x, y, w, h], area=round(w * h, 3))
        if obj.get("score") is not None:
            ann["score"] = float(obj["score"])
        anns.append(ann)
    return {
        "info": {"description": "exported by curation_pipeline"},
        "images": [
            {"id": int(i["image_id"]), "file_name": i["file_name"], "width": i["width"], "height": i["height"]} for i in images
        ],
        "categories": [{"id": cat_ids[c], "name": c, "supercategory": ""} for c in classes],
        "annotations": anns,
    }


def yolo_lines(objects: Sequence[dict], size: tuple[int, int], classes: Sequence[str]) -> str:
    """One image's YOLO label file: `class cx cy w h` per box, normalised to `size` (width, height),
    6 decimals; predictions add their confidence."""
    width, height = size
    ids = {c: i for i, c in enumerate(classes)}
    lines = []
    for obj in objects:
        if obj.get("box") is None:
            continue
        x, y, w, h = (float(v) for v in obj["box"])
        fields = [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
        line = f"{ids[obj['class_name']]} " + " ".join(f"{v:.6f}" for v in fields)
        if obj.get("score") is not None:
            line += f" {float(obj['score']):.6f}"
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
