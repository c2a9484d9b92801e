"""Export images with their labels to training and labelling tools.

Formats, written under `<target>/<name>/`:
  * coco: `annotations.json` (a split: `annotations_<part>.json` per part); `file_name` is the
    image's path in the export, `images/<drop>/<object key>` (as `curation export` lays it out);
  * yolo: `labels/<drop>/<key without extension>.txt` beside `images/...`, `classes.txt`, and
    `data.yaml` (class names; with a split, `<part>.txt` image lists that data.yaml points at);
  * labelstudio: `tasks.json` (one task per image; existing boxes as pre-annotations) and
    `label_config.xml` (RectangleLabels / Choices over the classes);
  * cvat: `annotations.xml` in "CVAT for images 1.1" (upload as annotations after creating the
    task from `image_urls.txt`).
Image URLs in Label Studio / CVAT files: presigned for S3 sources (or for the exported copies when
images are copied to S3), else the local path (`/data/local-files/?d=...` for Label Studio, which
serves it with LOCAL_FILES_SERVING_ENABLED and LOCAL_FILES_DOCUMENT_ROOT=/).

Which images: a selection (`curated_subset`), a split (every part), a label review's suspects
(as a Label Studio review task: the given label as a pre-annotation, the reason in the task), or
every labelled image of some drops."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import PurePosixPath
from urllib.parse import quote, urlparse
from xml.sax.saxutils import escape, quoteattr

from curation_pipeline.core.labels import to_coco, yolo_lines
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.export_target import ExportTarget, safe_relative
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores, split_s3_uri
from curation_pipeline.steps.export import export_paths

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("coco", "yolo", "labelstudio", "cvat")
DEFAULT_PRESIGN_SECONDS = 7 * 24 * 3600


def _image_rows(catalog: Catalog, image_ids: list[int]) -> list[dict]:
    rows = catalog.images_by_id(image_ids)
    return [rows[i] for i in image_ids if i in rows]


def _which_images(catalog: Catalog, *, selection: str | None, split: str | None, drop_keys, version, kind) -> tuple:
    """(image ids in order, {image_id: part} or None, label set ids)."""
    parts = None
    if selection:
        items = catalog.selection_items(selection)
        if not items:
            raise ValueError(f"selection {selection!r} has no images (materialize curated_subset {selection!r} first)")
        ids = [int(r["image_id"]) for r in items]
        drops = sorted({r["drop_key"] for r in items})
    elif split:
        parts = catalog.split_parts(split)
        if not parts:
            raise ValueError(f"split {split!r} does not exist (make it with `curation labels split --name {split}`)")
        ids = sorted(parts)
        drops = None
    else:
        sets = catalog.current_set_ids(kind, drop_keys, version)
        if not sets:
            raise ValueError(f"no {kind} in drops {list(drop_keys or [])} to export")
        ids = [r["image_id"] for r in catalog.images_with_labels(sets) if r["labelled"]]
        drops = drop_keys
    set_ids = catalog.current_set_ids(kind, drops, version)
    if split:
        config = (catalog.split_info(split) or {}).get("config", {})
        set_ids = catalog.current_set_ids(kind, None, config.get("version") or version)
    return ids, parts, set_ids


def image_url(uri: str, stores: ImageStores, presign_seconds: int, *, for_tool: str) -> str:
    """A URL a labelling tool can open for a source image."""
    if urlparse(uri).scheme == "s3":
        bucket, key = split_s3_uri(uri)
        return stores.s3.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(presign_seconds)
        )
    path = urlparse(uri).path if uri.startswith("file://") else uri
    return "/data/local-files/?d=" + quote(path.lstrip("/")) if for_tool == "labelstudio" else path


def export_labels(
    catalog: Catalog,
    target: ExportTarget,
    name: str,
    *,
    fmt: str,
    selection: str | None = None,
    split: str | None = None,
    drop_keys: list[str] | None = None,
    version: str | None = None,
    kind: str = "labels",
    copy_images: bool = False,
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS,
    stores: ImageStores = DEFAULT_STORES,
    logger: logging.Logger = log,
) -> dict:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: use one of {EXPORT_FORMATS}")
    started = time.perf_counter()
    ids, parts, set_ids = _which_images(
        catalog, selection=selection, split=split, drop_keys=drop_keys, version=version, kind=kind
    )
    images = _image_rows(catalog, ids)
    wanted = {r["image_id"] for r in images}
    objects = [o for o in catalog.label_objects(set_ids) if o["image_id"] in wanted]
    classes = catalog.label_classes(set_ids) or sorted({o["class_name"] for o in objects})
    by_image: dict[int, list[dict]] = defaultdict(list)
    for o in objects:
        by_image[o["image_id"]].append(o)
    paths = export_paths(images)
    rel = {r["image_id"]: paths[(r["drop_key"], r["object_key"])] for r in images}
    base = safe_relative(name)
    if copy_images:
        for r in images:
            dest = f"{base}/{rel[r['image_id']]}"
            if not target.has(dest, int(r.get("bytes") or -1), r["sha256"]):
                target.copy_from(r["source_uri"], dest, r["sha256"], stores.for_location(r["source_uri"]))

    def url(r: dict, tool: str) -> str:
        if copy_images:
            signed = target.presign(f"{base}/{rel[r['image_id']]}", presign_seconds)
            return signed or target.uri(f"{base}/{rel[r['image_id']]}")
        return image_url(r["source_uri"], stores, presign_seconds, for_tool=tool)

    written: list[str] = []

    def put(path: str, data: str, content_type: str | None = None) -> None:
        target.put_bytes(f"{base}/{path}", data.encode("utf-8"), content_type)
        written.append(target.uri(f"{base}/{path}"))

    if fmt == "coco":
        groups = _by_part(images, parts)
        for part, rows in groups.items():
            doc = to_coco(
                [
                    {"image_id": r["image_id"], "file_name": rel[r["image_id"]], "width": r["width"], "height": r["height"]}
                    for r in rows
                ],
                [o for r in rows for o in by_image.get(r["image_id"], [])],
                classes,
            )
            put("annotations.json" if part is None else f"annotations_{part}.json", json.dumps(doc), "application/json")
    elif fmt == "yolo":
        for r in images:
            stem = str(PurePosixPath(rel[r["image_id"]]).with_suffix(""))
            label_path = "labels/" + stem.removeprefix("images/") + ".txt"
            put(label_path, yolo_lines(by_image.get(r["image_id"], []), (r["width"], r["height"]), classes))
        put("classes.txt", "\n".join(classes) + "\n")
        lines = ["path: .", f"nc: {len(classes)}", "names:"] + [f"  {i}: {json.dumps(c)}" for i, c in enumerate(classes)]
        groups = _by_part(images, parts)
        if parts is not None:
            for part, rows in groups.items():
                put(f"{part}.txt", "".join(f"./{rel[r['image_id']]}\n" for r in rows))
                lines.append(f"{part}: {part}.txt")
        else:
            lines.append("train: images")
        put("data.yaml", "\n".join(lines) + "\n")
    elif fmt == "labelstudio":
        tasks = [_ls_task(r, by_image.get(r["image_id"], []), url(r, "labelstudio"), parts, version) for r in images]
        put("tasks.json", json.dumps(tasks, indent=1), "application/json")
        put("label_config.xml", label_studio_config(classes, boxes=any(o["box"] is not None for o in objects) or not objects))
    else:
        put("annotations.xml", cvat_xml(images, by_image, classes, rel, parts))
        put("image_urls.txt", "".join(url(r, "cvat") + "\n" for r in images))
    stats = {
        "name": name,
        "format": fmt,
        "images": len(images),
        "objects": len(objects),
        "classes": classes,
        "files": written,
        "copied_images": copy_images,
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("label export %s (%s): %d images, %d objects", name, fmt, len(images), len(objects))
    return stats


def _by_part(images: list[dict], parts: dict[int, str] | None) -> dict[str | None, list[dict]]:
    if parts is None:
        return {None: images}
    out: dict[str | None, list[dict]] = defaultdict(list)
    for r in images:
        out[parts[r["image_id"]]].append(r)
    return dict(out)


def _ls_box(o: dict, width: int, height: int, n: int) -> dict:
    x, y, w, h = o["box"]
    value = {"x": 100 * x / width, "y": 100 * y / height, "width": 100 * w / width, "height": 100 * h / height}
    value.update(rotation=0, rectanglelabels=[o["class_name"]])
    return {
        "id": f"b{n}",
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "value": value,
        **({"score": float(o["score"])} if o.get("score") is not None else {}),
    }


def _ls_task(r: dict, objs: list[dict], image_url_: str, parts, version, extra: dict | None = None) -> dict:
    data = {
        "image": image_url_,
        "image_id": int(r["image_id"]),
        "drop": r["drop_key"],
        "key": r["object_key"],
        **({"part": parts[r["image_id"]]} if parts else {}),
        **(extra or {}),
    }
    task: dict = {"data": data}
    result = [_ls_box(o, r["width"], r["height"], n) for n, o in enumerate(objs) if o["box"] is not None]
    result += [
        {"id": f"c{n}", "from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": [o["class_name"]]}}
        for n, o in enumerate(objs)
        if o["box"] is None
    ]
    if result:
        task["predictions"] = [{"model_version": version or "current labels", "result": result}]
    return task


def label_studio_config(classes: list[str], *, boxes: bool) -> str:
    labels = "".join(f"    <Label value={quoteattr(c)}/>\n" for c in classes)
    choices = "".join(f"    <Choice value={quoteattr(c)}/>\n" for c in classes)
    parts = ["<View>", '  <Image name="image" value="$image"/>']
    if boxes:
        parts.append(f'  <RectangleLabels name="label" toName="image">\n{labels}  </RectangleLabels>')
    parts.append(f'  <Choices name="class" toName="image" choice="single">\n{choices}  </Choices>')
    parts.append("</View>")
    return "\n".join(parts) + "\n"


def cvat_xml(images: list[dict], by_image: dict, classes: list[str], rel: dict, parts) -> str:
    out = ['<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>", "  <meta><task>"]
    out.append(
        "    <labels>"
        + "".join(f"<label><name>{escape(c)}</name><type>rectangle</type></label>" for c in classes)
        + "</labels>"
    )
    out.append("  </task></meta>")
    for n, r in enumerate(images):
        attrs = f'id="{n}" name={quoteattr(rel[r["image_id"]])} width="{r["width"]}" height="{r["height"]}"'
        if parts:
            attrs += f" subset={quoteattr(parts[r['image_id']])}"
        out.append(f"  <image {attrs}>")
        for o in by_image.get(r["image_id"], []):
            if o["box"] is None:
                out.append(f'    <tag label={quoteattr(o["class_name"])} source="file"/>')
                continue
            x, y, w, h = o["box"]
            out.append(
                f'    <box label={quoteattr(o["class_name"])} source="file" occluded="0"'
                f' xtl="{x:.2f}" ytl="{y:.2f}" xbr="{x + w:.2f}" ybr="{y + h:.2f}" z_order="0"/>'
            )
        out.append("  </image>")
    out.append("</annotations>")
    return "\n".join(out) + "\n"


def export_review(
    catalog: Catalog,
    target: ExportTarget,
    review: str,
    *,
    name: str | None = None,
    limit: int | None = None,
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS,
    stores: ImageStores = DEFAULT_STORES,
) -> dict:
    """A label review's suspects as a Label Studio review task: one task per suspect image, its
    current labels pre-annotated, the reasons (and the suggested class) in the task data."""
    issues = catalog.label_issues(review, limit)
    if not issues:
        raise ValueError(f"label review {review!r} has no suspects (materialize label_review first)")
    info = catalog.label_review(review) or {}
    config = info.get("config", {})
    set_ids = catalog.current_set_ids("labels", config.get("drop_keys"), config.get("version"))
    ids = list(dict.fromkeys(int(x["image_id"]) for x in issues))
    images = _image_rows(catalog, ids)
    objects = [o for o in catalog.label_objects(set_ids) if o["image_id"] in set(ids)]
    by_image: dict[int, list[dict]] = defaultdict(list)
    for o in objects:
        by_image[o["image_id"]].append(o)
    reasons: dict[int, list[dict]] = defaultdict(list)
    for x in issues:
        reasons[int(x["image_id"])].append(x)
    tasks = []
    for r in images:
        mine = reasons[r["image_id"]]
        extra = {
            "suspect_rank": min(x["rank"] for x in mine),
            "suspect_score": round(max(x["score"] for x in mine), 4),
            "suspects": "; ".join(f"{x['kind']}: {x['given'] or '-'} -> {x['suggested'] or '-'} ({x['reason']})" for x in mine),
        }
        tasks.append(
            _ls_task(
                r,
                by_image.get(r["image_id"], []),
                image_url(r["source_uri"], stores, presign_seconds, for_tool="labelstudio"),
                None,
                None,
                extra,
            )
        )
    base = safe_relative(name or f"review-{review}")
    classes = catalog.label_classes(set_ids)
    target.put_bytes(f"{base}/tasks.json", json.dumps(tasks, indent=1).encode(), "application/json")
    target.put_bytes(f"{base}/label_config.xml", label_studio_config(classes, boxes=True).encode())
    return {
        "review": review,
        "tasks": len(tasks),
        "suspects": len(issues),
        "files": [target.uri(f"{base}/tasks.json"), target.uri(f"{base}/label_config.xml")],
    }
