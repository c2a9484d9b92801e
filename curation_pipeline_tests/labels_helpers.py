"""A small labelled drop on disk, in the catalog, and its labels in each format (tests only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.image_store import LocalImageStore
from curation_pipeline.steps.manifest import build_manifest

CLASSES = ["cat", "dog", "car"]


def make_labelled_drop(folder: Path, n: int = 6) -> dict:
    """n images of varied sizes with one or two drawn boxes each; returns {file: [(class, box)]}
    and the sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    truth, sizes = {}, {}
    for i in range(n):
        w, h = 160 + 20 * i, 120 + 10 * i
        im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        boxes = []
        for j in range(1 + i % 2):
            bw, bh = 30 + 5 * j, 25 + 4 * i
            x, y = 10 + 60 * j, 12 + 3 * i
            draw.rectangle((x, y, x + bw, y + bh), fill=(255, 255 - 40 * j, 0))
            boxes.append((CLASSES[(i + j) % 3], (float(x), float(y), float(bw), float(bh))))
        name = f"sub/img_{i:02d}.jpg" if i % 3 == 2 else f"img_{i:02d}.jpg"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(folder / name, quality=92)
        truth[name] = boxes
        sizes[name] = (w, h)
    return {"boxes": truth, "sizes": sizes}


def ingest_manifest(catalog: Catalog, folder: Path, drop_key: str) -> None:
    catalog.register_drop(drop_key, str(folder))
    build_manifest(catalog, LocalImageStore(), str(folder), drop_key)


def coco_doc(drop: dict, *, score: bool = False, classes: list[str] = CLASSES) -> dict:
    images, anns = [], []
    for i, (name, boxes) in enumerate(drop["boxes"].items(), start=1):
        w, h = drop["sizes"][name]
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for cls, box in boxes:
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": classes.index(cls) + 1, "bbox": list(box)}
            if score:
                ann["score"] = 0.9
            anns.append(ann)
    return {"images": images, "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)], "annotations": anns}


def write_coco(path: Path, drop: dict, **kw) -> Path:
    path.write_text(json.dumps(coco_doc(drop, **kw)))
    return path


def write_yolo(folder: Path, drop: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name, boxes in drop["boxes"].items():
        w, h = drop["sizes"][name]
        lines = [
            f"{CLASSES.index(c)} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
            for c, (x, y, bw, bh) in boxes
        ]
        (folder / (Path(name).stem + ".txt")).write_text("\n".join(lines) + "\n")
    return folder


def write_voc(folder: Path, drop: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, boxes in drop["boxes"].items():
        w, h = drop["sizes"][name]
        objs = "".join(
            f"<object><name>{c}</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + bw}</xmax>"
            f"<ymax>{y + bh}</ymax></bndbox></object>"
            for c, (x, y, bw, bh) in boxes
        )
        xml = f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"
        (folder / (Path(name).stem + ".xml")).write_text(xml)
    return folder


COLOURS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 200)}


def make_colour_drop(folder: Path, per_class: int = 8) -> dict:
    """Images whose class is their dominant colour (varied shade and texture), each with a red box
    and a blue box drawn on grey: image-level classes and box classes that any embedding separates.
    Returns {"classes": {file: class}, "boxes": {file: [(class, box)]}, "sizes": {...}}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    classes, boxes, sizes = {}, {}, {}
    for cls, rgb in COLOURS.items():
        for i in range(per_class):
            w, h = 128, 96
            base = np.clip(np.asarray(rgb) + rng.integers(-25, 26, 3), 0, 255)
            pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(pixels)
            draw = ImageDraw.Draw(im)
            for _ in range(6):  # a layout of its own: no two images are near-duplicates
                x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
                shade = tuple(int(v) for v in rng.integers(0, 256, 3))
                draw.rectangle((x0, y0, x0 + int(rng.integers(8, 30)), y0 + int(rng.integers(8, 30))), fill=shade)
            red = (float(rng.integers(0, 24)), float(rng.integers(0, 50)), 40.0, 36.0)
            blue = (float(rng.integers(70, 84)), float(rng.integers(0, 52)), 44.0, 40.0)
            draw.rectangle((red[0], red[1], red[0] + red[2], red[1] + red[3]), fill=(230, 20, 20), outline=(0, 0, 0))
            draw.ellipse((blue[0], blue[1], blue[0] + blue[2], blue[1] + blue[3]), fill=(20, 20, 230), outline=(255, 255, 255))
            name = f"{cls}_{i:02d}.jpg"
            im.save(folder / name, quality=92)
            classes[name] = cls
            boxes[name] = [("red", red), ("blue", blue)]
            sizes[name] = (w, h)
    return {"classes": classes, "boxes": boxes, "sizes": sizes}
