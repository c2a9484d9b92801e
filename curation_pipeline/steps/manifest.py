"""List, read, validate, hash and measure every object of a drop."""

from __future__ import annotations

import logging
import time

from curation_pipeline.core import progress
from curation_pipeline.core.decode import STATUS_OK, STATUS_UNREADABLE
from curation_pipeline.core.ids import image_id_for
from curation_pipeline.core.manifest import ManifestRecord, inspect_object
from curation_pipeline.resources.catalog import DEFAULT_SHRINK_GUARD, Catalog, ShrinkGuard
from curation_pipeline.resources.image_store import ImageStore

log = logging.getLogger(__name__)


def build_manifest(catalog: Catalog, store: ImageStore, location: str, drop_key: str,
                   logger: logging.Logger = log, progress_every: int = 200,
                   control_objects: frozenset[str] = frozenset({"_SUCCESS"}), *, source_uri: str | None = None,
                   shrink: ShrinkGuard = DEFAULT_SHRINK_GUARD) -> dict:
    """`control_objects`: keys at the top of the drop that signal completion (the sensor's marker),
    not images: they are left out of the manifest instead of being recorded as failed objects.
    `source_uri`: recorded as the drop's source in the same transaction as its manifest (a refused
    or failed listing leaves the old source). `shrink`: a listing that would remove more of the
    drop's known objects than this allows is refused and nothing is written."""
    started = time.perf_counter()
    listed = 0
    bytes_total = 0
    with catalog.manifest_writer(drop_key, source_uri=source_uri, shrink=shrink) as writer:
        for info in store.list_objects(location):
            if info.key in control_objects:
                continue
            listed += 1
            try:
                data = store.read_bytes(location, info.key)
                record = inspect_object(info.key, data)
            except FileNotFoundError:
                record = ManifestRecord(object_key=info.key, bytes=info.size, sha256="", status=STATUS_UNREADABLE,
                                        error="object vanished between listing and reading")
            except OSError as exc:
                record = ManifestRecord(object_key=info.key, bytes=info.size, sha256="", status=STATUS_UNREADABLE,
                                        error=f"cannot read object: {exc}")
            if record.status != STATUS_OK:
                logger.warning("drop %s: %s recorded as %s: %s", drop_key, info.key, record.status, record.error)
            bytes_total += record.bytes
            writer.add(image_id_for(drop_key, info.key), store.object_uri(location, info.key), record, info.etag)
            progress.report(f"manifest {drop_key}", listed)
            if listed % progress_every == 0:
                logger.info("drop %s: inspected %d objects", drop_key, listed)
    summary = catalog.manifest_summary(drop_key)
    elapsed = time.perf_counter() - started
    return {
        "objects_listed": listed,
        "rows": summary["total"],
        "valid_images": summary["by_status"].get(STATUS_OK, 0),
        "failed": summary["total"] - summary["by_status"].get(STATUS_OK, 0),
        "by_status": summary["by_status"],
        "duplicate_keys": summary["duplicate_keys"],
        "rows_removed_as_vanished": writer.deleted_vanished,
        "items_lost": writer.lost_items,  # {"selection"|"retrieval": {name: items}} whose image was removed
        "bytes_total": bytes_total,
        "seconds": round(elapsed, 3),
        "images_per_second": round(listed / elapsed, 1) if elapsed > 0 else None,
    }
