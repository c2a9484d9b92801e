"""Import label and prediction files into a drop's versioned label sets.

Reads the file (or folder), parses it (core/labels.py), matches every image it names to the drop's
manifest and checks every box against the image's real size; any problem (unknown image, box
outside the image, unknown class id, duplicate annotation id, a declared size that is not the
image's) fails the whole import with one error that names the file, each record and the reason,
and nothing is written. Annotations of images the manifest holds as corrupt are skipped and
counted: the image has no pixels to label."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

from curation_pipeline.core.labels import (
    FORMATS,
    KINDS,
    LabelFile,
    LabelFileError,
    box_problem,
    clip_box,
    parse_class_list,
    parse_coco,
    parse_table,
    parse_voc,
    parse_yolo,
)
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.image_store import ImageStore
from curation_pipeline.steps.manifest import SIDECAR_PREFIX

log = logging.getLogger(__name__)

CLASS_LIST_NAMES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")
MAX_LABEL_FILE_BYTES = 2 * 1024**3


def detect_format(path: Path) -> str:
    """coco for .json, csv for .csv/.tsv/.parquet, voc for .xml or a folder of XML, yolo for a
    folder of .txt files."""
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix == ".json":
            return "coco"
        if suffix in (".csv", ".tsv", ".parquet", ".pq"):
            return "csv"
        if suffix == ".xml":
            return "voc"
    elif path.is_dir():
        if any(path.rglob("*.xml")):
            return "voc"
        if any(path.rglob("*.txt")):
            return "yolo"
    raise ValueError(f"labels {str(path)!r}: cannot tell the format; pass --format ({' | '.join(FORMATS)})")


def _files(path: Path, suffix: str) -> dict[str, Path]:
    if path.is_file():
        return {path.name: path}
    if not path.is_dir():
        raise ValueError(f"labels {str(path)!r} is neither a file nor a folder")
    return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob(f"*{suffix}")) if p.is_file()}


def content_hash(path: Path) -> str:
    """sha256 over the file, or over (relative name, bytes) of every file under a folder."""
    h = hashlib.sha256()
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in paths:
        if p.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise ValueError(f"labels file {str(p)!r} is larger than {MAX_LABEL_FILE_BYTES} bytes")
        h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        h.update(p.read_bytes())
    return h.hexdigest()


def read_label_file(path: str | Path, fmt: str | None = None, *, classes_file: str | Path | None = None) -> LabelFile:
    """Parse a label file or folder in `fmt` (detected when None)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"labels {str(path)!r} does not exist")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"labels format {fmt!r}: use one of {FORMATS}")
    classes = None
    if classes_file is not None:
        cf = Path(classes_file)
        classes = parse_class_list(cf.read_text(encoding="utf-8"), str(cf))
    if fmt == "coco":
        return parse_coco(path.read_bytes(), str(path))
    if fmt == "csv":
        from curation_pipeline.steps.annotate import read_table

        names, rows = read_table(path)
        return parse_table(names, rows, str(path))
    if fmt == "voc":
        return parse_voc({k: p.read_bytes() for k, p in _files(path, ".xml").items()}, classes, str(path))
    # yolo: a folder of .txt label files and its class list (classes.txt / obj.names / data.yaml)
    if not path.is_dir():
        raise ValueError(f"YOLO labels {str(path)!r}: give the folder that holds the .txt files and the class list")
    if classes is None:
        found = next((path / n for n in CLASS_LIST_NAMES if (path / n).is_file()), None)
        if found is None:
            raise ValueError(f"YOLO labels {str(path)!r}: no class list ({', '.join(CLASS_LIST_NAMES)}); pass --classes FILE")
        classes = parse_class_list(found.read_text(encoding="utf-8"), str(found))
    texts = {k: p.read_text(encoding="utf-8") for k, p in _files(path, ".txt").items() if k not in CLASS_LIST_NAMES}
    return parse_yolo(texts, classes, str(path))


class ImageMatcher:
    """Finds a drop's image by the name a label file uses: its object key, a path that ends with it
    (or that it ends with), its unique file name, or (YOLO) its unique stem."""

    def __init__(self, rows: list[dict]) -> None:
        self.by_key = {r["object_key"]: r for r in rows}
        self.by_name: dict[str, list[dict]] = defaultdict(list)
        self.by_stem: dict[str, list[dict]] = defaultdict(list)
        self._memo: dict[str, tuple[dict | None, str]] = {}
        for r in rows:
            p = PurePosixPath(r["object_key"])
            self.by_name[p.name].append(r)
            self.by_stem[str(p.with_suffix(""))].append(r)
            if p.parent != PurePosixPath("."):
                self.by_stem[p.stem].append(r)

    def find(self, ref: str) -> tuple[dict | None, str]:
        """(the image row, "") or (None, why not); answers are remembered (a file names an image
        once per box)."""
        if ref not in self._memo:
            self._memo[ref] = self._find(ref)
        return self._memo[ref]

    def _find(self, ref: str) -> tuple[dict | None, str]:
        ref = ref.replace("\\", "/").removeprefix("./")
        if ref in self.by_key:
            return self.by_key[ref], ""
        name = PurePosixPath(ref).name
        same_name = self.by_name.get(name, [])
        tails = [r for r in same_name if r["object_key"].endswith("/" + ref) or ref.endswith("/" + r["object_key"])]
        if len(tails) == 1:
            return tails[0], ""
        for hits in (same_name, self.by_stem.get(ref, []), self.by_stem.get(name, [])):
            if len(hits) == 1:
                return hits[0], ""
            if len(hits) > 1:
                return None, f"image {ref!r} matches {len(hits)} images of the drop; name it by its full key"
        return None, f"unknown image {ref!r}: the drop has no such image"


def import_labels(
    catalog: Catalog,
    path: str | Path,
    *,
    drop_key: str,
    fmt: str | None = None,
    kind: str = "labels",
    version: str | None = None,
    classes_file: str | Path | None = None,
    replace: bool = False,
    source: str | None = None,
    logger: logging.Logger = log,
) -> dict:
    """Import a label or prediction file as a new version of the drop's `kind` set (`source`: what
    to record as its origin, default the file's path). Returns the version, counts and whether
    anything new was stored."""
    if kind not in KINDS:
        raise ValueError(f"--as {kind!r}: use one of {KINDS}")
    path = Path(path)
    parsed = read_label_file(path, fmt, classes_file=classes_file)
    images = catalog.drop_image_index(drop_key)
    if not images:
        raise LookupError(f"drop {drop_key!r} has no images in the catalog: ingest it before importing its labels")
    matcher = ImageMatcher(images)
    problems: list[tuple[str, str]] = list(parsed.problems)
    rows: list[tuple] = []
    skipped_invalid = 0
    matched: set[int] = set()
    for rec in parsed.records:
        image, why = matcher.find(rec.image)
        if image is None:
            problems.append((rec.ref, why))
            continue
        if image["status"] != "ok" or not image["width"]:
            skipped_invalid += 1
            continue
        size = (int(image["width"]), int(image["height"]))
        if rec.image_size is not None and (abs(rec.image_size[0] - size[0]) > 1 or abs(rec.image_size[1] - size[1]) > 1):
            declared = f"{rec.image_size[0]}x{rec.image_size[1]}"
            problems.append((rec.ref, f"the file says {rec.image[:80]!r} is {declared}, the image is {size[0]}x{size[1]}"))
            continue
        box = rec.box
        if box is not None:
            if rec.normalized:
                box = (box[0] * size[0], box[1] * size[1], box[2] * size[0], box[3] * size[1])
            why = box_problem(box, size)
            if why:
                problems.append((rec.ref, f"{why} of {image['object_key']!r}"))
                continue
            box = clip_box(box, size)
        matched.add(int(image["image_id"]))
        rows.append(
            (
                int(image["image_id"]),
                rec.class_name,
                *(box if box is not None else (None, None, None, None)),
                rec.score,
                list(rec.probs) if rec.probs is not None else None,
                rec.ref,
            )
        )
    for name in parsed.images:  # images listed with no annotation must exist too
        image, why = matcher.find(name)
        if image is None and why not in {w for _, w in problems}:
            problems.append((f"image {name!r}", why))
    if problems:
        raise LabelFileError(str(path), problems)
    stats = {
        "objects": len(rows),
        "boxes": sum(1 for r in rows if r[2] is not None),
        "image_level": sum(1 for r in rows if r[2] is None),
        "images_annotated": len(matched),
        "images_named": len(set(parsed.images)),
        "skipped_invalid_images": skipped_invalid,
        "classes": len(parsed.classes),
    }
    saved = catalog.save_label_set(
        drop_key=drop_key,
        kind=kind,
        version=version,
        fmt=parsed.format,
        source=source or str(path.resolve()),
        sha256=content_hash(path),
        classes=parsed.classes,
        objects=rows,
        stats=stats,
        replace=replace,
    )
    out = {"drop": drop_key, "kind": kind, "format": parsed.format, **saved, **stats}
    if saved["created"]:
        logger.info("drop %s: %s %s from %s: %s", drop_key, kind, saved["version"], path, stats)
    else:
        logger.info("drop %s: %s %s already holds %s; nothing imported", drop_key, kind, saved["version"], path)
    return out


def import_sidecars(
    catalog: Catalog, store: ImageStore, location: str, drop_key: str, *, logger: logging.Logger = log
) -> list[dict]:
    """Import the label files that travel with a drop, under `_labels/`: each file (.json COCO,
    .csv/.tsv/.parquet, .xml VOC) or folder (YOLO .txt with its class list, or VOC .xml) directly
    inside `_labels/` is one labels source, and each inside `_labels/predictions/` one predictions
    source. Each becomes a new version only when its content changed (a re-ingest is a no-op)."""
    keys = [o.key for o in store.list_objects(location) if o.key.startswith(SIDECAR_PREFIX)]
    if not keys:
        return []
    results = []
    with tempfile.TemporaryDirectory(prefix="curation-labels-") as tmp:
        root = Path(tmp)
        for key in keys:
            rel = PurePosixPath(key).relative_to(SIDECAR_PREFIX.rstrip("/"))
            if ".." in rel.parts:
                continue
            dest = root.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.read_bytes(location, key))
        sources = [("labels", p) for p in sorted(root.iterdir()) if p.name != "predictions"]
        if (root / "predictions").is_dir():
            sources += [("predictions", p) for p in sorted((root / "predictions").iterdir())]
        for kind, path in sources:
            origin = store.object_uri(location, SIDECAR_PREFIX + path.relative_to(root).as_posix())
            stats = import_labels(catalog, path, drop_key=drop_key, kind=kind, source=origin, logger=logger)
            results.append({**stats, "source": origin})
    return results
