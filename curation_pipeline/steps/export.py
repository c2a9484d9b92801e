"""Export a curated subset for labeling: copies of the images plus a manifest (JSONL and Parquet).

Layout under the export root: `<selection>/images/<drop>/<object key>`, `<selection>/manifest.jsonl`,
`<selection>/manifest.parquet`, and `<selection>/_SUCCESS` written last. The marker is removed
before anything else is written, so a crashed or failed export never presents a half manifest as
complete; a re-run skips images already copied (same size and content hash) and rewrites the
manifests. Sources are only read."""

from __future__ import annotations

import io
import json
import logging
import time
from datetime import datetime, timezone

from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.export_target import ExportTarget, safe_relative
from curation_pipeline.resources.image_store import store_for

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("rank", "uri", "exported_uri", "presigned_url", "sha256", "cluster", "score", "reason", "group",
                    "distance_at_pick", "drop_key", "object_key", "bytes", "format", "width", "height", "camera_make",
                    "camera_model", "exif_datetime", "blur_variance", "brightness", "contrast", "annotations")


def export_selection(catalog: Catalog, name: str, target: ExportTarget, *, copy_images: bool = True,
                     presign_seconds: int | None = None, kind: str = "selection",
                     logger: logging.Logger = log) -> dict:
    """Export a selection (kind "selection") or a retrieval set (kind "retrieval": score is the
    similarity and group the query it matched) to `target`."""
    if presign_seconds is not None and not 1 <= presign_seconds <= 7 * 24 * 3600:
        raise ValueError(f"export {name!r}: presign_seconds must be between 1 and 604800 (7 days), got {presign_seconds}")
    started = time.perf_counter()
    rows = catalog.export_rows(name, kind)
    if not rows:
        asset = "curated_subset" if kind == "selection" else "retrieval_set"
        raise ValueError(f"export {name!r}: the {kind} has no images (materialize {asset} {name!r} first)")
    base = safe_relative(name)
    target.delete(f"{base}/_SUCCESS")  # from here until the end the export reads as incomplete
    copied = skipped = 0
    entries = []
    for r in rows:
        rel = f"{base}/images/{safe_relative(r['drop_key'])}/{safe_relative(r['object_key'])}"
        if copy_images:
            if target.has(rel, int(r["bytes"]), r["sha256"]):
                skipped += 1
            else:
                target.copy_from(r["source_uri"], rel, r["sha256"], store_for(r["source_uri"]))
                copied += 1
            if (copied + skipped) % 200 == 0:
                logger.info("export %s: %d / %d images", name, copied + skipped, len(rows))
        entry = {
            "rank": r["rank"], "uri": r["source_uri"], "exported_uri": target.uri(rel) if copy_images else None,
            "presigned_url": target.presign(rel, presign_seconds) if copy_images and presign_seconds else None,
            "sha256": r["sha256"], "cluster": r["cluster"], "score": r["score"], "reason": r["reason"],
            "group": r["group_key"], "distance_at_pick": r["distance_at_pick"],
            **{k: r[k] for k in ("drop_key", "object_key", "bytes", "format", "width", "height", "camera_make",
                                 "camera_model", "blur_variance", "brightness", "contrast")},
            "exif_datetime": r["exif_datetime"].isoformat() if r["exif_datetime"] else None,
            "annotations": r["annotations"] or {},
        }
        entries.append(entry)
    jsonl = "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in entries).encode("utf-8")
    target.put_bytes(f"{base}/manifest.jsonl", jsonl)
    target.put_bytes(f"{base}/manifest.parquet", _parquet(entries))
    summary = {kind: name, "images": len(entries), "copied": copied, "already_there": skipped,
               "manifest_jsonl": target.uri(f"{base}/manifest.jsonl"),
               "manifest_parquet": target.uri(f"{base}/manifest.parquet"),
               "presigned_expiry_seconds": presign_seconds,
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
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
