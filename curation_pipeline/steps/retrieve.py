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
from pathlib import Path

import numpy as np

from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import Embedder
from curation_pipeline.resources.filters import Predicate, check_columns
from curation_pipeline.resources.image_store import store_for
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


def retrieve_similar(catalog: Catalog, embedder: Embedder, name: str, spec: RetrievalSpec, *,
                     options: EmbedOptions = DEFAULT_OPTIONS, logger: logging.Logger = log) -> dict:
    spec.validate(name)
    started = time.perf_counter()
    model = model_id_for(embedder, options)
    catalog.model_dim(model)  # clear error if nothing was embedded with this model yet
    unknown = catalog.unknown_drops(spec.drop_keys or ())
    if unknown:
        raise ValueError(f"retrieval {name!r}: unknown drop {unknown[0]!r} (known drops: "
                         f"{', '.join(catalog.known_drops()) or 'none'}); nothing was changed")
    predicates = [Predicate.parse(w) for w in spec.where]
    check_columns([p.column for p in predicates], catalog.annotation_names(), f"retrieval {name!r}")
    refs, queries = query_vectors(catalog, embedder, model, spec, options, name)
    hits_per_query = catalog.search(model, queries, spec.k, drop_keys=spec.drop_keys, predicates=predicates,
                                    exclude_flags=spec.exclude, min_similarity=spec.min_similarity)
    best: dict[int, tuple[float, str]] = {}
    for ref, hits in zip(refs, hits_per_query):
        for image_id, sim in hits:
            if image_id not in best or sim > best[image_id][0]:
                best[image_id] = (sim, ref)
    ranked = sorted(best.items(), key=lambda t: (-t[1][0], t[0]))[:spec.k]
    results = [(image_id, sim, ref) for image_id, (sim, ref) in ranked]
    config = {**asdict(spec), "model": model, "resolved_queries": len(refs)}
    previous = len(catalog.retrieval_items(name))
    if not results and previous:
        raise ValueError(f"retrieval {name!r}: no image matched (min_similarity {spec.min_similarity}, filters "
                         f"{list(spec.where) + [f'not {f}' for f in spec.exclude] or 'none'}); the previous "
                         f"{previous} results were kept")
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


def query_vectors(catalog: Catalog, embedder: Embedder, model: str, spec: RetrievalSpec, options: EmbedOptions,
                  name: str) -> tuple[list[str], np.ndarray]:
    """(query references, (q, dim) unit vectors) for every kind of query in the spec."""
    refs: list[str] = []
    parts: list[np.ndarray] = []
    blobs: list[tuple[str, bytes]] = []
    for path in spec.query_paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"retrieval {name!r}: folder {path!r} holds no images")
            blobs += [(str(f), _read(f, name)) for f in files]
        else:
            blobs.append((str(path), _read(p, name)))
    if spec.query_prefix:
        store = store_for(spec.query_prefix)
        objects = [o for o in store.list_objects(spec.query_prefix) if Path(o.key).suffix.lower() in IMAGE_SUFFIXES]
        if not objects:
            raise ValueError(f"retrieval {name!r}: no images under {spec.query_prefix!r}")
        blobs += [(store.object_uri(spec.query_prefix, o.key), store.read_bytes(spec.query_prefix, o.key))
                  for o in objects[:MAX_QUERY_IMAGES]]
    if len(blobs) > MAX_QUERY_IMAGES:
        raise ValueError(f"retrieval {name!r}: {len(blobs)} query images; at most {MAX_QUERY_IMAGES} per query set")
    if blobs:
        try:
            parts.append(embed_query_images(embedder, blobs, options))
        except ValueError as exc:
            raise ValueError(f"retrieval {name!r}: {exc}") from exc
        refs += [b[0] for b in blobs]
    if spec.query_images:
        found = catalog.image_ids_for_refs(spec.query_images)
        unknown = [r for r in spec.query_images if r not in found]
        if unknown:
            raise ValueError(f"retrieval {name!r}: {unknown[0]!r} is not an image of the corpus (give its source URI "
                             "or drop/object_key)")
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
            raise ValueError(f"retrieval {name!r}: text queries need a CLIP-family model (open_clip or a transformers "
                             f"CLIP); model {model!r} embeds images only")
        parts.append(embedder.embed_texts(list(spec.text)))
        refs += [f"text:{t}" for t in spec.text]
    return refs, np.concatenate(parts).astype(np.float32)


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"retrieval {name!r}: cannot read query image {str(path)!r}: {exc}") from exc
