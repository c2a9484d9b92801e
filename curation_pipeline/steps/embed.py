"""Embed a drop's valid images once per model, reusing vectors of identical content."""

from __future__ import annotations

import logging
import time

import numpy as np

from curation_pipeline.core.decode import DecodedImage, decode_image
from curation_pipeline.core.hashing import sha256_hex
from curation_pipeline.resources.catalog import Catalog, EmbeddingSet
from curation_pipeline.resources.embedders import Embedder
from curation_pipeline.resources.image_store import store_for

log = logging.getLogger(__name__)


def embed_drop(catalog: Catalog, embedder: Embedder, drop_key: str, *, batch_size: int = 64,
               logger: logging.Logger = log) -> tuple[EmbeddingSet, dict]:
    started = time.perf_counter()
    catalog.register_model(embedder.model_id, embedder.backend, embedder.dim, embedder.description)
    valid = catalog.valid_images(drop_key)
    cached = catalog.cached_vectors(embedder.model_id, sorted({h for _, _, h, _ in valid}))

    ids: list[int] = []
    hashes: list[str] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    pending: list[tuple[int, str, object]] = []
    computed = 0

    def flush() -> None:
        nonlocal computed
        if not pending:
            return
        out = embedder.embed_images([im for _, _, im in pending])
        for (image_id, h, _), vec in zip(pending, out):
            ids.append(image_id)
            hashes.append(h)
            vectors.append(vec)
            cached[h] = vec  # identical content later in the same drop reuses it
        computed += len(pending)
        pending.clear()
        logger.info("drop %s: embedded %d/%d images with %s", drop_key, computed, len(valid), embedder.model_id)

    for image_id, key, sha, uri in valid:
        if sha in cached:
            ids.append(image_id)
            hashes.append(sha)
            vectors.append(cached[sha])
            continue
        try:
            data = store_for(uri).read_uri(uri)
        except OSError as exc:
            skipped.append((key, f"cannot read: {exc}"))
            continue
        if sha256_hex(data) != sha:
            skipped.append((key, "content changed since the manifest was built: re-materialize raw_image_manifest"))
            continue
        decoded = decode_image(data)
        if not isinstance(decoded, DecodedImage):
            skipped.append((key, decoded.error))
            continue
        pending.append((image_id, sha, decoded.image))
        if len(pending) >= batch_size:
            flush()
    flush()
    for key, why in skipped:
        logger.warning("drop %s: %s not embedded: %s", drop_key, key, why)

    dim = embedder.dim
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    emb = EmbeddingSet(embedder.model_id, np.asarray(ids, dtype=np.int64), hashes, matrix, [drop_key] * len(ids))
    elapsed = time.perf_counter() - started
    norms = np.linalg.norm(matrix, axis=1) if len(matrix) else np.ones(0)
    stats = {
        "model": embedder.model_id,
        "backend": embedder.backend,
        "dim": dim,
        "valid_images": len(valid),
        "embedded": len(ids),
        "computed": computed,
        "reused_from_cache": len(ids) - computed,
        "not_embedded": len(skipped),
        "max_norm_error": float(np.abs(norms - 1.0).max()) if len(norms) else 0.0,
        "seconds": round(elapsed, 3),
        "images_per_second": round(computed / elapsed, 1) if elapsed > 0 and computed else None,
    }
    return emb, stats
