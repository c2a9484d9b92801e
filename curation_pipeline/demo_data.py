"""Build sample capture drops from real photographs that ship inside installed packages.

Distinct images are non-overlapping crops of scikit-image's and scikit-learn's sample photos
(low-contrast crops such as empty sky are dropped: they would be genuine near-duplicates of each
other). Planted into the drops: exact byte copies, near-duplicates (JPEG re-encode, resize, crop,
brightness, contrast), corrupt files (zero bytes, truncated JPEG, text named .jpg, random bytes),
and a second drop that repeats some of the first drop's images. A ground-truth file outside the
drops maps every file to the distinct image it came from, so the demo can score dedup."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def _sources() -> list[tuple[str, Path]]:
    import skimage.data
    import sklearn.datasets

    sk = Path(skimage.data.__file__).parent
    skl = Path(sklearn.datasets.__file__).parent / "images"
    names = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "hubble_deep_field.jpg",
        "retina.jpg",
        "motorcycle_left.png",
        "ihc.png",
        "camera.png",
        "coins.png",
        "moon.png",
        "brick.png",
        "grass.png",
        "gravel.png",
        "page.png",
    ]
    found = [(n.rsplit(".", 1)[0], sk / n) for n in names if (sk / n).exists()]
    found += [(n.rsplit(".", 1)[0], skl / n) for n in ("china.jpg", "flower.jpg") if (skl / n).exists()]
    if len(found) < 8:
        raise RuntimeError(f"too few sample photographs found in scikit-image/scikit-learn ({len(found)})")
    return found


@dataclass
class DemoDrops:
    root: Path
    drops: dict[str, Path]
    ground_truth: Path
    query_image: Path


def _crops(img: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    w, h = img.size
    out = []
    for r in range(rows):
        for c in range(cols):
            box = (c * w // cols, r * h // rows, (c + 1) * w // cols, (r + 1) * h // rows)
            out.append(img.crop(box))
    return out


def _jpeg_bytes(img: Image.Image, quality: int, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, exif=exif if exif is not None else b"")
    return buf.getvalue()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _exif(when: datetime, model: str) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "CurationDemo"  # Make
    exif[0x0110] = model  # Model
    exif[0x0132] = when.strftime("%Y:%m:%d %H:%M:%S")
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    return exif


_NEAR_DUP_KINDS = ("jpeg_q45", "resize_60", "crop_92", "brighter_25", "lower_contrast", "jpeg_resize")


def _near_duplicate(img: Image.Image, kind: str) -> bytes:
    w, h = img.size
    if kind == "jpeg_q45":
        return _jpeg_bytes(img, 45)
    if kind == "resize_60":
        return _jpeg_bytes(img.resize((max(8, int(w * 0.6)), max(8, int(h * 0.6))), Image.Resampling.LANCZOS), 85)
    if kind == "crop_92":
        dx, dy = int(w * 0.04), int(h * 0.04)
        return _jpeg_bytes(img.crop((dx, dy, w - dx, h - dy)), 90)
    if kind == "brighter_25":
        return _jpeg_bytes(ImageEnhance.Brightness(img).enhance(1.25), 90)
    if kind == "lower_contrast":
        return _png_bytes(ImageEnhance.Contrast(img).enhance(0.8))
    if kind == "jpeg_resize":
        return _jpeg_bytes(img.resize((max(8, int(w * 0.75)), max(8, int(h * 0.75))), Image.Resampling.BILINEAR), 60)
    raise ValueError(kind)


def build_demo_drops(
    root: Path, *, seed: int = 7, crops_per_side: tuple[int, int] = (2, 3), drops_root: Path | None = None
) -> DemoDrops:
    """Write two drops under `drops_root` (default root/drops), each with a `_SUCCESS` marker, and
    root/ground_truth.json and root/query.jpg. Deterministic for a seed."""
    rng = random.Random(seed)
    root = Path(root)
    drops_root = Path(drops_root) if drops_root is not None else root / "drops"
    drop1 = drops_root / "demo-0001"
    drop2 = drops_root / "demo-0002"
    root.mkdir(parents=True, exist_ok=True)
    for d in (drop1, drop2):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.rglob("*"):
            if old.is_file():
                old.unlink()
    truth: dict[str, str] = {}  # "drop/key" -> distinct image id
    originals: list[tuple[str, Image.Image, str]] = []  # (distinct id, crop, drop1 key)
    start = datetime(2026, 10, 1, 8, 0, 0)

    for source_name, path in _sources():
        photo = Image.open(path)
        photo.load()
        photo = photo.convert("RGB")
        for n, crop in enumerate(_crops(photo, *crops_per_side)):
            grey = np.asarray(crop.convert("L"), dtype=np.float32) / 255.0
            if grey.std() < 0.08 or min(crop.size) < 48:
                continue  # featureless crops (sky, background) are real near-duplicates of each other
            distinct = f"{source_name}-{n}"
            camera = "rig-A" if len(originals) % 2 == 0 else "rig-B"
            when = start + timedelta(minutes=7 * len(originals))
            if len(originals) % 5 == 4:
                key = f"{camera}/{distinct}.png"
                (drop1 / key).parent.mkdir(parents=True, exist_ok=True)
                (drop1 / key).write_bytes(_png_bytes(crop))
            else:
                key = f"{camera}/{distinct}.jpg"
                (drop1 / key).parent.mkdir(parents=True, exist_ok=True)
                (drop1 / key).write_bytes(_jpeg_bytes(crop, 92, _exif(when, camera)))
            truth[f"demo-0001/{key}"] = distinct
            originals.append((distinct, crop, key))

    picks = rng.sample(range(len(originals)), k=min(len(originals), 30))
    exact, near = picks[:8], picks[8:30]
    (drop1 / "copies").mkdir(exist_ok=True)
    for i in exact:
        distinct, _, key = originals[i]
        target = f"copies/{distinct}-copy{Path(key).suffix}"
        (drop1 / target).write_bytes((drop1 / key).read_bytes())
        truth[f"demo-0001/{target}"] = distinct
    (drop1 / "edited").mkdir(exist_ok=True)
    for j, i in enumerate(near):
        distinct, crop, _ = originals[i]
        kind = _NEAR_DUP_KINDS[j % len(_NEAR_DUP_KINDS)]
        suffix = ".png" if kind == "lower_contrast" else ".jpg"
        target = f"edited/{distinct}-{kind}{suffix}"
        (drop1 / target).write_bytes(_near_duplicate(crop, kind))
        truth[f"demo-0001/{target}"] = distinct

    broken = drop1 / "broken"
    broken.mkdir(exist_ok=True)
    some_jpeg = next((drop1 / k).read_bytes() for _, _, k in originals if k.endswith(".jpg"))
    (broken / "zero-bytes.jpg").write_bytes(b"")
    (broken / "truncated.jpg").write_bytes(some_jpeg[: len(some_jpeg) * 2 // 5])
    (broken / "notes-named-as.jpg").write_text("this is a text file, not a photograph\n")
    (broken / "random-bytes.png").write_bytes(bytes(rng.randrange(256) for _ in range(2048)))

    # Drop 2 arrives later: a few repeats of drop 1 (exact and edited) plus images drop 1 never saw
    # (the crops of the last source photograph are held back for it).
    held_back = [o for o in originals if o[0].startswith(originals[-1][0].rsplit("-", 1)[0] + "-")]
    for distinct, crop, key in held_back:
        (drop1 / key).unlink()
        del truth[f"demo-0001/{key}"]
        (drop2 / "new").mkdir(exist_ok=True)
        (drop2 / "new" / f"{distinct}.jpg").write_bytes(_jpeg_bytes(crop, 92))
        truth[f"demo-0002/new/{distinct}.jpg"] = distinct
    for stale in list(truth):
        if stale.startswith("demo-0001/") and not (drop1 / stale.split("/", 1)[1]).exists():
            del truth[stale]
    remaining = [o for o in originals if o not in held_back]
    (drop2 / "repeat").mkdir(exist_ok=True)
    for j, (distinct, crop, key) in enumerate(rng.sample(remaining, k=min(6, len(remaining)))):
        if j % 2 == 0:
            target = f"repeat/{distinct}{Path(key).suffix}"
            (drop2 / target).write_bytes((drop1 / key).read_bytes())
        else:
            target = f"repeat/{distinct}-reencoded.jpg"
            (drop2 / target).write_bytes(_near_duplicate(crop, "jpeg_resize"))
        truth[f"demo-0002/{target}"] = distinct

    # image-level labels that travel with drop 1 (`_labels/`, imported at ingest): each image's
    # source photograph, with a few labels flipped for the label review to find
    labels = {k.split("/", 1)[1]: d.rsplit("-", 1)[0] for k, d in sorted(truth.items()) if k.startswith("demo-0001/")}
    classes = sorted(set(labels.values()))
    flips: dict[str, str] = {}
    for key in rng.sample(sorted(k for k in labels if "/" in k and k.split("/")[0] in ("rig-A", "rig-B")), k=3):
        flips[key] = labels[key]
        labels[key] = rng.choice([c for c in classes if c != labels[key]])
    (drop1 / "_labels").mkdir(exist_ok=True)
    (drop1 / "_labels" / "labels.csv").write_text("image,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))

    query = root / "query.jpg"
    q_distinct, q_crop, _ = remaining[len(remaining) // 2]
    query.write_bytes(_jpeg_bytes(q_crop.rotate(0), 80))
    for d in (drop1, drop2):
        (d / "_SUCCESS").write_bytes(b"")  # complete, as a rig marks a finished upload
    gt = root / "ground_truth.json"
    gt.write_text(json.dumps({"files": truth, "query_distinct": q_distinct, "label_flips": flips}, indent=1, sort_keys=True))
    return DemoDrops(root=root, drops={"demo-0001": drop1, "demo-0002": drop2}, ground_truth=gt, query_image=query)


def score_dedup(ground_truth: dict[str, str], member_to_rep: dict[str, str]) -> dict:
    """Score clustering against the ground truth. `member_to_rep` maps "drop/key" of every
    duplicate to its representative's "drop/key". A member is correct when it came from the same
    distinct image as its representative."""
    detected = len(member_to_rep)
    correct = sum(
        1 for m, r in member_to_rep.items() if m in ground_truth and r in ground_truth and ground_truth[m] == ground_truth[r]
    )
    groups: dict[str, int] = {}
    for distinct in ground_truth.values():
        groups[distinct] = groups.get(distinct, 0) + 1
    planted = sum(n - 1 for n in groups.values())
    return {
        "planted_duplicates": planted,
        "detected_duplicates": detected,
        "correct": correct,
        "precision": round(correct / detected, 4) if detected else 1.0,
        "recall": round(correct / planted, 4) if planted else 1.0,
    }
