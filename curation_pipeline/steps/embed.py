"""Embed a drop: each distinct content once per model, streamed into the content cache.

Input pipeline: loader threads read, verify (sha256), decode (reduced-scale JPEG where the model
input is small) and preprocess up to a bounded window of images ahead, while the calling thread
runs the model on full batches; every batch's vectors are committed to the embedding cache as soon
as they exist. Memory is bounded by batch size and window, not by the drop. Content already in the
cache (any drop, same model and preprocessing) is never loaded or embedded again."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from curation_pipeline.core import progress
from curation_pipeline.core.decode import DecodedImage, decode_image
from curation_pipeline.core.hashing import sha256_hex
from curation_pipeline.core.pipeline import batched, ordered_parallel_map
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import Embedder, ProjectedEmbedder
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 64
    workers: int = 2
    loader_chunk: int = 16
    loader: str = "threads"  # threads | processes
    draft: bool = True
    storage: str = "vector"
    log_every_batches: int = 20


DEFAULT_OPTIONS = EmbedOptions()


def model_id_for(embedder: Embedder, options: EmbedOptions) -> str:
    """Reduced-scale decoding changes pixels, so it is part of the cached vectors' identity (a
    domain model's id already names its backbone's)."""
    if isinstance(embedder, ProjectedEmbedder):
        return embedder.model_id
    return embedder.model_id if options.draft or embedder.decode_draft_size is None else embedder.model_id + "+nodraft"


class BackgroundWriter:
    """Runs `write(*args)` calls on one thread, in order, at most `depth` queued: database commits
    overlap the model instead of stalling it, and memory stays bounded. Errors surface on the
    next submit or on exit."""

    def __init__(self, write, depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)

    def _run(self) -> None:
        while True:
            args = self._queue.get()
            if args is None:
                return
            if self._error is None:
                try:
                    self._write(*args)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def submit(self, *args) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(args)

    def __enter__(self) -> "BackgroundWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._error


class ImageLoader:
    """Loader work for one image: read, verify, decode, preprocess -> (item, None) or (None, error).
    Picklable (module-level class holding a picklable preprocessor and the image stores it reads
    through), so it runs in loader threads or processes alike, each reading with the same settings."""

    def __init__(self, preprocessor, draft_size: int | None, stores: ImageStores = DEFAULT_STORES) -> None:
        self.preprocessor = preprocessor
        self.draft_size = draft_size
        self.stores = stores

    def __call__(self, item: tuple[int, str, str, str]):
        _, key, sha, uri = item
        try:
            data = self.stores.read_uri(uri)
        except OSError as exc:
            return None, f"cannot read {key!r}: {exc}"
        if sha256_hex(data) != sha:
            return None, f"{key!r} changed since the manifest was built: re-materialize raw_image_manifest"
        decoded = decode_image(data, draft_size=self.draft_size)
        if not isinstance(decoded, DecodedImage):
            return None, f"{key!r}: {decoded.error}"
        try:
            return self.preprocessor(decoded.image), None
        except Exception as exc:  # noqa: BLE001 - one odd image must not fail the drop
            return None, f"{key!r}: preprocessing failed: {type(exc).__name__}: {exc}"


def embed_drop(
    catalog: Catalog,
    embedder: Embedder,
    drop_key: str,
    options: EmbedOptions = DEFAULT_OPTIONS,
    *,
    stores: ImageStores = DEFAULT_STORES,
    logger: logging.Logger = log,
) -> dict:
    """Fill the cache for the drop's valid images, read through `stores` (by source URI). Returns
    figures; publishing the partition's rows is a separate, atomic step (Catalog.publish_embeddings,
    done by the IO manager)."""
    started = time.perf_counter()
    model = model_id_for(embedder, options)
    catalog.register_model(
        model,
        embedder.backend,
        embedder.dim,
        embedder.description,
        preprocess=embedder.preprocess_version + ("" if options.draft else "-nodraft"),
        storage=options.storage,
    )
    draft_size = embedder.decode_draft_size if options.draft else None
    load = ImageLoader(embedder.preprocessor, draft_size, stores)
    kind = options.loader
    window = options.batch_size * 3 + options.workers
    failures: list[tuple[int, str]] = []
    computed = 0
    model_seconds = 0.0
    batches = 0
    to_embed = catalog.valid_image_count(drop_key)  # an upper bound: cached contents are skipped
    with catalog.cache_writer(model, options.storage) as writer, BackgroundWriter(writer.write) as background:
        loaded = ordered_parallel_map(
            load,
            catalog.uncached_items(drop_key, model),
            workers=options.workers,
            window=window,
            chunk=options.loader_chunk,
            executor=kind,
        )
        for chunk in batched(loaded, options.batch_size):
            ok = [(item, pre) for item, (pre, err) in chunk if err is None]
            failures.extend((item[0], err) for item, (_, err) in chunk if err is not None)
            if not ok:
                continue
            t0 = time.perf_counter()
            vectors = embedder.forward([pre for _, pre in ok])
            model_seconds += time.perf_counter() - t0
            background.submit([item[2] for item, _ in ok], vectors)  # the model goes on while this commits
            computed += len(ok)
            batches += 1
            progress.report(f"embed {drop_key}", computed, to_embed)
            if batches % options.log_every_batches == 0:
                rate = computed / (time.perf_counter() - started)
                logger.info("drop %s: embedded %d new images with %s (%.1f img/s)", drop_key, computed, model, rate)
    progress.report(f"embed {drop_key}", to_embed, to_embed)
    for image_id, err in failures:
        logger.warning("drop %s: image %d not embedded: %s", drop_key, image_id, err)
    catalog.replace_embedding_failures(drop_key, model, failures)
    elapsed = time.perf_counter() - started
    valid = catalog.valid_image_count(drop_key)
    return {
        "model": model,
        "backend": embedder.backend,
        "dim": embedder.dim,
        "storage": options.storage,
        "valid_images": valid,
        "computed": computed,
        "served_from_cache": max(0, valid - computed - len(failures)),
        "not_embedded": len(failures),
        "batch_size": options.batch_size,
        "loader_workers": options.workers,
        "loader": kind,
        "model_seconds": round(model_seconds, 3),
        "seconds": round(elapsed, 3),
        "images_per_second": round(computed / elapsed, 1) if elapsed > 0 and computed else None,
    }


def embed_query_images(embedder: Embedder, images_bytes: list[tuple[str, bytes]], options: EmbedOptions) -> np.ndarray:
    """Embed query images exactly as drop images are embedded (same decode scale and
    preprocessing), so a query identical to a stored image scores 1.0."""
    draft_size = embedder.decode_draft_size if options.draft else None
    items = []
    for name, data in images_bytes:
        decoded = decode_image(data, draft_size=draft_size)
        if not isinstance(decoded, DecodedImage):
            raise ValueError(f"query image {name!r} is unusable: {decoded.error}")
        items.append(embedder.preprocessor(decoded.image))
    return embedder.forward(items)
