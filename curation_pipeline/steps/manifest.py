"""List, read, validate, hash and measure every object of a drop."""

from __future__ import annotations

import logging
import os
import time

from curation_pipeline.core import progress
from curation_pipeline.core.decode import (
    SNIFF_BYTES,
    STATUS_OK,
    STATUS_TOO_LARGE,
    STATUS_UNREADABLE,
    STATUS_UNSUPPORTED,
)
from curation_pipeline.core.ids import image_id_for
from curation_pipeline.core.manifest import ManifestRecord, inspect_header, inspect_object
from curation_pipeline.core.pipeline import ordered_parallel_map
from curation_pipeline.resources.catalog import DEFAULT_SHRINK_GUARD, Catalog, ShrinkGuard
from curation_pipeline.resources.image_store import (
    MAX_OBJECT_BYTES,
    ImageStore,
    NotARegularFile,
    ObjectInfo,
    ObjectTooLarge,
)

log = logging.getLogger(__name__)

# Label and prediction files that travel with a drop: imported at ingest, never manifest rows.
SIDECAR_PREFIX = "_labels/"


def inspect_listed(store: ImageStore, location: str, info: ObjectInfo) -> ManifestRecord:
    """The manifest record of one listed object; never raises for what the object is or holds.
    An entry listed with a problem (loop, dangling link, pipe, socket, device) is never opened.
    An object larger than SNIFF_BYTES is identified from its first SNIFF_BYTES first: non-images,
    headers over the pixel limit and objects over the byte cap are recorded without reading the
    rest, so memory never depends on what a file claims or weighs."""

    def failed(status: str, error: str) -> ManifestRecord:
        return ManifestRecord(object_key=info.key, bytes=info.size, sha256="", status=status, error=error)

    if info.problem is not None:
        return failed(*info.problem)
    try:
        if info.size > SNIFF_BYTES:
            head = store.read_prefix(location, info.key, SNIFF_BYTES)
            if len(head) < SNIFF_BYTES:  # shrank since listing: this is all of it
                return inspect_object(info.key, head)
            record = inspect_header(info.key, info.size, head, getattr(store, "max_object_bytes", MAX_OBJECT_BYTES))
            if record is not None:
                return record
        return inspect_object(info.key, store.read_bytes(location, info.key))
    except FileNotFoundError:
        return failed(STATUS_UNREADABLE, "object vanished between listing and reading")
    except NotARegularFile as exc:  # swapped for a pipe, socket or device since listing
        return failed(STATUS_UNSUPPORTED, str(exc))
    except ObjectTooLarge as exc:  # grew past the cap since listing
        return failed(STATUS_TOO_LARGE, str(exc))
    except OSError as exc:
        return failed(STATUS_UNREADABLE, f"cannot read object: {exc}")


def build_manifest(
    catalog: Catalog,
    store: ImageStore,
    location: str,
    drop_key: str,
    logger: logging.Logger = log,
    progress_every: int = 200,
    control_objects: frozenset[str] = frozenset({"_SUCCESS"}),
    *,
    source_uri: str | None = None,
    shrink: ShrinkGuard = DEFAULT_SHRINK_GUARD,
    workers: int | None = None,
) -> dict:
    """`control_objects`: keys at the top of the drop that signal completion (the sensor's marker),
    not images: they are left out of the manifest instead of being recorded as failed objects, as
    is everything under `_labels/` (label files that travel with the drop: steps/labels.py).
    `source_uri`: recorded as the drop's source in the same transaction as its manifest (a refused
    or failed listing leaves the old source). `shrink`: a listing that would remove more of the
    drop's known objects than this allows is refused and nothing is written. `workers` threads
    (default: one per core, at least 4 for network stores) read, decode, hash and measure objects
    while the listing goes on; rows are written in listing order."""
    started = time.perf_counter()
    listed = 0
    bytes_total = 0
    # Pillow's decoders, hashlib on large buffers, OpenCV and numpy release the GIL, and object reads
    # wait on disk or network: threads keep every core busy (one thread left a core idle at ingest)
    workers = workers or max(4, os.cpu_count() or 1)
    images = (i for i in store.list_objects(location) if i.key not in control_objects and not i.key.startswith(SIDECAR_PREFIX))
    with catalog.manifest_writer(drop_key, source_uri=source_uri, shrink=shrink) as writer:
        inspected = ordered_parallel_map(
            lambda info: inspect_listed(store, location, info), images, workers=workers, window=8 * workers, chunk=2
        )
        for info, record in inspected:
            listed += 1
            if record.status != STATUS_OK:
                logger.warning("drop %s: %s recorded as %s: %s", drop_key, info.key, record.status, record.error)
            bytes_total += record.bytes
            writer.add(
                image_id_for(drop_key, info.key), store.object_uri(location, info.key), record, info.etag, info.last_modified
            )
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
