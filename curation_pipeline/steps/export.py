"""Export a curated subset for labeling: copies of the images plus a manifest (JSONL and Parquet).

Layout under the export root: `<selection>/images/<drop>/<object key>`, `<selection>/manifest.jsonl`,
`<selection>/manifest.parquet`, and `<selection>/_SUCCESS` written last. The marker is removed
before anything else is written, so a crashed or failed export never presents a half manifest as
complete; a re-run skips images already copied (same size and content hash) and rewrites the
manifests. Sources are only read.

Export paths are unique within an export: keys that sanitise to one path (`a/b.jpg` and `a\\b.jpg`)
get one file each, the key that is already safe keeping the plain name and the others a suffix
from a hash of (drop, key), `a/b~3f2a91c0.jpg`, so the manifest always describes the bytes at its
path. A destination inside a registered drop's source or a watched root is refused before anything
is written: the next ingest would take the copies for part of the drop."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.export_target import ExportTarget, location_within, safe_relative
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "rank",
    "uri",
    "exported_uri",
    "presigned_url",
    "sha256",
    "cluster",
    "score",
    "reason",
    "group",
    "distance_at_pick",
    "drop_key",
    "object_key",
    "bytes",
    "format",
    "width",
    "height",
    "camera_make",
    "camera_model",
    "exif_datetime",
    "blur_variance",
    "brightness",
    "contrast",
    "annotations",
)


def export_paths(rows: Iterable[dict]) -> dict[tuple[str, str], str]:
    """`images/<drop>/<key>` for each distinct (drop_key, object_key), sanitised and unique. Where
    several keys sanitise to one path, a key that needed no sanitising keeps it and the others get
    `~<hash of drop and key>` before the extension (longer if even that collides). The result for a
    key depends only on the keys it collides with, never on row order or unrelated rows."""
    plain = {}
    for r in rows:
        key = (r["drop_key"], r["object_key"])
        if key not in plain:
            plain[key] = f"images/{safe_relative(key[0])}/{safe_relative(key[1])}"
    verbatim = {k for k, rel in plain.items() if rel == f"images/{k[0]}/{k[1]}"}
    names = dict(plain)
    for width in (8, 16, 64):
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for key, rel in names.items():
            groups[rel].append(key)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return names
        for group in clashes:
            keepers = [k for k in group if k in verbatim and names[k] == plain[k]]
            for key in group:
                if keepers != [key]:
                    names[key] = _suffixed(plain[key], key, width)
    groups = defaultdict(list)
    for key, rel in names.items():
        groups[rel].append(key)
    clash = next(g for g in groups.values() if len(g) > 1)
    raise ValueError(f"export: object keys {sorted(clash)} cannot be given distinct export paths")


def _suffixed(rel: str, key: tuple[str, str], width: int) -> str:
    digest = hashlib.sha256(f"{key[0]}\0{key[1]}".encode("utf-8", "surrogatepass")).hexdigest()[:width]
    folder, _, filename = rel.rpartition("/")
    stem, dot, ext = filename.rpartition(".")
    if not stem:  # no extension, or a name like `.hidden`
        stem, dot, ext = filename, "", ""
    return f"{folder}/{stem}~{digest}{dot}{ext}"


def check_destination(catalog: Catalog, name: str, destination: str, protected_roots: Sequence[str] = ()) -> None:
    """Refuse a destination that equals or lies inside a registered drop's source or a watched
    root: whatever is written there would be ingested as part of the drop."""
    inside = [(f"drop {k!r} (source {src})", src) for k, src in catalog.drop_sources().items()]
    inside += [(f"the watched root {root} (CURATION_WATCH, default the drop root)", root) for root in protected_roots]
    for what, location in inside:
        if location and location_within(destination, location):
            raise ValueError(
                f"export {name!r}: the destination {destination} is inside {what}; the exported copies would "
                f"become part of that drop at its next ingest. Nothing was written. Choose a destination outside "
                f"the drops and watched roots, e.g. $CURATION_EXPORT_ROOT or --destination /exports or "
                f"s3://bucket/exports/."
            )


def export_selection(
    catalog: Catalog,
    name: str,
    target: ExportTarget,
    *,
    copy_images: bool = True,
    presign_seconds: int | None = None,
    kind: str = "selection",
    protected_roots: Sequence[str] = (),
    stores: ImageStores = DEFAULT_STORES,
    logger: logging.Logger = log,
) -> dict:
    """Export a selection (kind "selection") or a retrieval set (kind "retrieval": score is the
    similarity and group the query it matched) to `target`, reading sources that are not copied
    server-side through `stores`. A destination inside a registered drop's source or one of
    `protected_roots` (the watched drop roots) is refused first."""
    if presign_seconds is not None and not 1 <= presign_seconds <= 7 * 24 * 3600:
        raise ValueError(f"export {name!r}: presign_seconds must be between 1 and 604800 (7 days), got {presign_seconds}")
    base = safe_relative(name)
    check_destination(catalog, name, target.uri(base), protected_roots)
    started = time.perf_counter()
    rows = catalog.export_rows(name, kind)
    if not rows:
        asset = "curated_subset" if kind == "selection" else "retrieval_set"
        raise ValueError(f"export {name!r}: the {kind} has no images (materialize {asset} {name!r} first)")
    paths = export_paths(rows)
    target.delete(f"{base}/_SUCCESS")  # from here until the end the export reads as incomplete
    copied = skipped = 0
    entries = []
    for r in rows:
        rel = f"{base}/{paths[(r['drop_key'], r['object_key'])]}"
        if copy_images:
            if target.has(rel, int(r["bytes"]), r["sha256"]):
                skipped += 1
            else:
                target.copy_from(r["source_uri"], rel, r["sha256"], stores.for_location(r["source_uri"]))
                copied += 1
            if (copied + skipped) % 200 == 0:
                logger.info("export %s: %d / %d images", name, copied + skipped, len(rows))
        entry = {
            "rank": r["rank"],
            "uri": r["source_uri"],
            "exported_uri": target.uri(rel) if copy_images else None,
            "presigned_url": target.presign(rel, presign_seconds) if copy_images and presign_seconds else None,
            "sha256": r["sha256"],
            "cluster": r["cluster"],
            "score": r["score"],
            "reason": r["reason"],
            "group": r["group_key"],
            "distance_at_pick": r["distance_at_pick"],
            **{
                k: r[k]
                for k in (
                    "drop_key",
                    "object_key",
                    "bytes",
                    "format",
                    "width",
                    "height",
                    "camera_make",
                    "camera_model",
                    "blur_variance",
                    "brightness",
                    "contrast",
                )
            },
            "exif_datetime": r["exif_datetime"].isoformat() if r["exif_datetime"] else None,
            "annotations": r["annotations"] or {},
        }
        entries.append(entry)
    jsonl = "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in entries).encode("utf-8")
    target.put_bytes(f"{base}/manifest.jsonl", jsonl)
    target.put_bytes(f"{base}/manifest.parquet", _parquet(entries))
    summary = {
        kind: name,
        "images": len(entries),
        "copied": copied,
        "already_there": skipped,
        "manifest_jsonl": target.uri(f"{base}/manifest.jsonl"),
        "manifest_parquet": target.uri(f"{base}/manifest.parquet"),
        "presigned_expiry_seconds": presign_seconds,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    target.put_bytes(f"{base}/_SUCCESS", json.dumps(summary).encode())
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["complete_marker"] = target.uri(f"{base}/_SUCCESS")
    logger.info("export %s: %s", name, summary)
    return summary


def _parquet(entries: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {c: [e.get(c) for e in entries] for c in MANIFEST_COLUMNS}
    columns["annotations"] = [json.dumps(a, default=str) for a in columns["annotations"]]  # free-form: JSON text
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()
