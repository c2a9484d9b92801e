"""Find the images nearest to one or more query images."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import Embedder
from curation_pipeline.steps.embed import DEFAULT_OPTIONS, EmbedOptions, embed_query_images, model_id_for

log = logging.getLogger(__name__)


def retrieve_similar(catalog: Catalog, embedder: Embedder, name: str, query_paths: list[str], *, k: int = 20,
                     drop_keys: list[str] | None = None, options: EmbedOptions = DEFAULT_OPTIONS,
                     logger: logging.Logger = log) -> dict:
    if not query_paths:
        raise ValueError(f"retrieval {name!r}: give at least one query image path")
    if k < 1:
        raise ValueError(f"retrieval {name!r}: k must be at least 1, got {k}")
    started = time.perf_counter()
    blobs, refs = [], []
    for path in query_paths:
        try:
            blobs.append((str(path), Path(path).read_bytes()))
        except OSError as exc:
            raise ValueError(f"retrieval {name!r}: cannot read query image {path!r}: {exc}") from exc
        refs.append(str(path))
    model = model_id_for(embedder, options)
    catalog.model_dim(model)  # clear error if nothing was embedded with this model yet
    try:
        queries = embed_query_images(embedder, blobs, options)
    except ValueError as exc:
        raise ValueError(f"retrieval {name!r}: {exc}") from exc
    best: dict[int, tuple[float, str]] = {}
    for ref, hits in zip(refs, catalog.nearest(model, queries, k, drop_keys=drop_keys)):
        for image_id, sim in hits:
            if image_id not in best or sim > best[image_id][0]:
                best[image_id] = (sim, ref)
    ranked = sorted(best.items(), key=lambda t: (-t[1][0], t[0]))[:k]
    results = [(image_id, sim, ref) for image_id, (sim, ref) in ranked]
    config = {"queries": refs, "k": k, "drop_keys": drop_keys, "model": model}
    catalog.replace_retrieval(name, model, config, results)
    stats = {
        "retrieval": name,
        "queries": len(refs),
        "k": k,
        "results": len(results),
        "top_similarity": results[0][1] if results else None,
        "kth_similarity": results[-1][1] if results else None,
        "model": model,
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("retrieval %s: %s", name, stats)
    return stats
