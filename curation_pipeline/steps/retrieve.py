"""Find the images nearest to a query: image files, a folder, an S3 prefix, corpus images, or text.

Image queries are embedded exactly as drop images are (same decode scale and preprocessing), so a
query identical to a stored image scores 1.0. Text queries need a CLIP-family model (open_clip or a
transformers CLIP); the offline descriptor has no text tower and says so. Results: top-k per
query, merged across queries by best similarity, optionally only those at or above a threshold,
filtered by drop and metadata (see Catalog.search: filters stay correct under HNSW)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from curation_pipeline.core.decode import DecodedImage, decode_image
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import Embedder
from curation_pipeline.resources.filters import Predicate, check_columns
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores, read_local_file
from curation_pipeline.steps.embed import DEFAULT_OPTIONS, EmbedOptions, embed_query_images, model_id_for

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_QUERY_IMAGES = 1000


@dataclass(frozen=True)
class RetrievalSpec:
    query_paths: tuple[str, ...] = ()  # image files or folders (every image inside, recursively)
    query_prefix: str | None = None  # an S3 prefix (s3://bucket/prefix/) or a folder URI
    query_images: tuple[str, ...] = ()  # corpus images by source URI or drop/object_key
    text: tuple[str, ...] = ()  # text prompts (CLIP-family models)
    k: int = 20
    min_similarity: float | None = None
    drop_keys: tuple[str, ...] | None = None
    where: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_mirrored: bool = True  # also search for horizontally flipped copies, where the model allows it

    def validate(self, name: str) -> None:
        if not (self.query_paths or self.query_prefix or self.query_images or self.text):
            raise ValueError(f"retrieval {name!r}: give query images, a folder, an S3 prefix, corpus images or text")
        if self.k < 1:
            raise ValueError(f"retrieval {name!r}: k must be at least 1, got {self.k}")
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"retrieval {name!r}: min_similarity must be in [-1, 1], got {self.min_similarity}")


def retrieve_similar(
    catalog: Catalog,
    embedder: Embedder,
    name: str,
    spec: RetrievalSpec,
    *,
    options: EmbedOptions = DEFAULT_OPTIONS,
    stores: ImageStores = DEFAULT_STORES,
    logger: logging.Logger = log,
) -> dict:
    """Answer the query `spec` and store its results as retrieval set `name`; a query prefix is
    listed and read through `stores`."""
    spec.validate(name)
    started = time.perf_counter()
    model = model_id_for(embedder, options)
    catalog.model_dim(model)  # clear error if nothing was embedded with this model yet
    unknown = catalog.unknown_drops(spec.drop_keys or ())
    if unknown:
        raise ValueError(
            f"retrieval {name!r}: unknown drop {unknown[0]!r} (known drops: "
            f"{', '.join(catalog.known_drops()) or 'none'}); nothing was changed"
        )
    predicates = [Predicate.parse(w) for w in spec.where]
    check_columns([p.column for p in predicates], catalog.annotation_names(), f"retrieval {name!r}")
    refs, queries = query_vectors(catalog, embedder, model, spec, options, name, stores=stores, logger=logger)
    hits_per_query = catalog.search(
        model,
        queries,
        spec.k,
        drop_keys=spec.drop_keys,
        predicates=predicates,
        exclude_flags=spec.exclude,
        min_similarity=spec.min_similarity,
    )
    best: dict[int, tuple[float, str]] = {}
    for ref, hits in zip(refs, hits_per_query):
        for image_id, sim in hits:
            if image_id not in best or sim > best[image_id][0]:
                best[image_id] = (sim, ref)
    ranked = sorted(best.items(), key=lambda t: (-t[1][0], t[0]))[: spec.k]
    results = [(image_id, sim, ref) for image_id, (sim, ref) in ranked]
    config = {**asdict(spec), "model": model, "resolved_queries": len(refs)}
    previous = len(catalog.retrieval_items(name))
    if not results and previous:
        raise ValueError(
            f"retrieval {name!r}: no image matched (min_similarity {spec.min_similarity}, filters "
            f"{list(spec.where) + [f'not {f}' for f in spec.exclude] or 'none'}); the previous "
            f"{previous} results were kept"
        )
    catalog.replace_retrieval(name, model, config, results)
    stats = {
        "retrieval": name,
        "queries": len(refs),
        "k": spec.k,
        "min_similarity": spec.min_similarity,
        "results": len(results),
        "top_similarity": results[0][1] if results else None,
        "kth_similarity": results[-1][1] if results else None,
        "model": model,
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("retrieval %s: %s", name, stats)
    return stats


def query_vectors(
    catalog: Catalog,
    embedder: Embedder,
    model: str,
    spec: RetrievalSpec,
    options: EmbedOptions,
    name: str,
    *,
    stores: ImageStores = DEFAULT_STORES,
    logger: logging.Logger = log,
) -> tuple[list[str], np.ndarray]:
    """(query references, (q, dim) unit vectors) for every kind of query in the spec.

    A query image that cannot be used (unreadable, not a regular file, not an image, corrupt, too
    large) is skipped with a warning naming it and why; only if none of the query images is usable
    does the retrieval fail, with the reasons. Named pipes and devices are never opened blocking."""
    refs: list[str] = []
    parts: list[np.ndarray] = []
    sources: list[tuple[str, Callable[[], bytes]]] = []  # (reference, read its bytes)
    for path in spec.query_paths:
        p = Path(path)
        if p.is_dir():
            # every non-folder entry with an image suffix: pipes, sockets and loops are refused by name
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
            if not files:
                raise ValueError(f"retrieval {name!r}: folder {path!r} holds no images")
            sources += [(str(f), partial(read_local_file, f)) for f in files]
        else:
            sources.append((str(path), partial(read_local_file, p)))
    if spec.query_prefix:
        store = stores.for_location(spec.query_prefix)
        objects = [o for o in store.list_objects(spec.query_prefix) if Path(o.key).suffix.lower() in IMAGE_SUFFIXES]
        if not objects:
            raise ValueError(f"retrieval {name!r}: no images under {spec.query_prefix!r}")
        for o in objects[:MAX_QUERY_IMAGES]:
            uri = store.object_uri(spec.query_prefix, o.key)
            if o.problem is not None:  # listed but never to be opened (a pipe, a loop, ...)
                logger.warning("retrieval %s: skipping query image %r: %s", name, uri, o.problem[1])
            else:
                sources.append((uri, partial(store.read_bytes, spec.query_prefix, o.key)))
    if len(sources) > MAX_QUERY_IMAGES:
        raise ValueError(f"retrieval {name!r}: {len(sources)} query images; at most {MAX_QUERY_IMAGES} per query set")
    if sources:
        blobs, skipped = _usable_query_images(sources, embedder, options)
        for ref, reason in skipped:
            logger.warning("retrieval %s: skipping query image %r: %s", name, ref, reason)
        if not blobs:
            reasons = "; ".join(f"{ref!r}: {reason}" for ref, reason in skipped[:5])
            raise ValueError(f"retrieval {name!r}: no usable query image among {len(sources)} ({reasons})")
        try:
            parts.append(embed_query_images(embedder, blobs, options))
        except ValueError as exc:
            raise ValueError(f"retrieval {name!r}: {exc}") from exc
        refs += [b[0] for b in blobs]
    if spec.query_images:
        found = catalog.image_ids_for_refs(spec.query_images)
        unknown = [r for r in spec.query_images if r not in found]
        if unknown:
            raise ValueError(
                f"retrieval {name!r}: {unknown[0]!r} is not an image of the corpus (give its source URI or drop/object_key)"
            )
        parts.append(catalog.vectors_for_images([found[r] for r in spec.query_images], model))
        refs += list(spec.query_images)
    perm = embedder.mirror_permutation() if spec.include_mirrored else None
    if perm is not None and parts:
        images = np.concatenate(parts).astype(np.float32)
        mirrored = images[:, perm]
        mirrored /= np.linalg.norm(mirrored, axis=1, keepdims=True) + 1e-12
        parts.append(mirrored)
        refs += list(refs)  # a result matched by the mirrored query names the same query image
    if spec.text:
        if not embedder.supports_text:
            raise ValueError(
                f"retrieval {name!r}: text queries need a CLIP-family model (open_clip or a transformers "
                f"CLIP); model {model!r} embeds images only"
            )
        parts.append(embedder.embed_texts(list(spec.text)))
        refs += [f"text:{t}" for t in spec.text]
    return refs, np.concatenate(parts).astype(np.float32)


def _usable_query_images(
    sources: list[tuple[str, Callable[[], bytes]]], embedder: Embedder, options: EmbedOptions
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """([(reference, bytes)] of the query images that read and decode, [(reference, why not)] of
    the others. Decoded as embed_query_images will decode them, so what passes here embeds."""
    draft_size = embedder.decode_draft_size if options.draft else None
    usable, skipped = [], []
    for ref, read in sources:
        try:
            data = read()
        except (OSError, ValueError) as exc:  # ValueError: a key escaping its prefix
            skipped.append((ref, f"cannot read it: {exc}"))
            continue
        decoded = decode_image(data, draft_size=draft_size)
        if isinstance(decoded, DecodedImage):
            usable.append((ref, data))
        else:
            skipped.append((ref, f"{decoded.status}: {decoded.error}"))
    return usable, skipped
