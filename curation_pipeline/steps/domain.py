"""The domain model: train a projection of the semantic model's vectors on the drops, and embed
drops with it.

Training (CPU-practical, the LightlyTrain idea without its cost): the semantic backbone stays
frozen; a seeded sample of the corpus is read once, K augmented views of each image go through the
backbone once, and only a small head is trained (resources/domain_model.py) so that an image's
stored vector and its views' land together in a 32-128 d space. Each training is a new version
stored with its content hash (a retraining that reproduces the current weights keeps its id, so
nothing goes stale). Embedding a drop never touches its images: the head projects the drop's
stored semantic vectors."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np

from curation_pipeline.core.decode import DecodedImage, decode_image
from curation_pipeline.resources.catalog import Catalog, DomainModelRecord, EmbeddingSet
from curation_pipeline.resources.domain_model import DomainTrainingConfig, train_head, view_features
from curation_pipeline.resources.embedders import Embedder
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores

from .models import domain_head

log = logging.getLogger(__name__)

# Images are decoded for the views at up to this multiple of the model input: a crop of a fifth of
# the picture still has pixels to spare, and a 24 MP photograph costs a 448-px decode.
VIEW_DECODE_FACTOR = 2
VIEW_CHUNK = 128  # images decoded and augmented at a time (bounds memory)


def train_domain_model(
    catalog: Catalog,
    backbone: Embedder,
    backbone_model: str,
    config: DomainTrainingConfig,
    *,
    stores: ImageStores = DEFAULT_STORES,
    logger: logging.Logger = log,
) -> tuple[DomainModelRecord, bool, dict]:
    """Train a head on a sample of the corpus's `backbone_model` vectors and store it as the new
    current version. Returns (record, whether it is a new version, figures). Images that can no
    longer be read are left out of the sample (and counted), never fatal."""
    started = time.perf_counter()
    image_ids, uris, plain = catalog.embedded_sample(backbone_model, config.sample, config.seed)
    if len(image_ids) < 2:
        raise ValueError(
            f"domain model: {len(image_ids)} image(s) have {backbone_model} vectors; ingest drops with the semantic "
            "model first (at least 2 distinct images)"
        )
    draft = (backbone.decode_draft_size or 224) * VIEW_DECODE_FACTOR
    keep_rows: list[int] = []
    features: list[np.ndarray] = []
    unreadable: list[str] = []
    view_seconds = 0.0
    for start in range(0, len(uris), VIEW_CHUNK):
        images, rows = [], []
        for row in range(start, min(start + VIEW_CHUNK, len(uris))):
            try:
                decoded = decode_image(stores.read_uri(uris[row]), draft_size=draft)
            except (OSError, ValueError) as exc:
                unreadable.append(f"{uris[row]}: {exc}")
                continue
            if not isinstance(decoded, DecodedImage):
                unreadable.append(f"{uris[row]}: {decoded.error}")
                continue
            images.append(decoded.image)
            rows.append(row)
        if not images:
            continue
        t0 = time.perf_counter()
        features.append(view_features(backbone, images, config.views, config.seed + start))
        view_seconds += time.perf_counter() - t0
        keep_rows.extend(rows)
        logger.info("domain model: view features for %d of %d images", len(keep_rows), len(uris))
    if len(keep_rows) < 2:
        raise ValueError(f"domain model: only {len(keep_rows)} sampled image(s) could be read: {unreadable[:3]}")
    for problem in unreadable[:5]:
        logger.warning("domain model: left out %s", problem)
    t0 = time.perf_counter()
    head = train_head(plain[keep_rows], np.concatenate(features), config, backbone_model=backbone_model)
    head_seconds = time.perf_counter() - t0
    record, is_new = catalog.save_domain_model(
        backbone_model=backbone_model,
        dim=head.dim,
        sha256=head.sha256,
        weights=head.to_bytes(),
        config=asdict(config),
        stats={k: v for k, v in head.stats.items() if isinstance(v, (int, float, str, list))},
        images=len(keep_rows),
    )
    stats = {
        "model": record.model_id,
        "version": record.version,
        "new_version": is_new,
        "backbone": backbone_model,
        "dim": head.dim,
        "images": len(keep_rows),
        "views": config.views,
        "unreadable": len(unreadable),
        "view_feature_seconds": round(view_seconds, 2),
        "head_seconds": round(head_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "sha256": record.sha256,
    }
    return record, is_new, stats


def domain_embeddings(catalog: Catalog, record: DomainModelRecord, backbone_vectors: EmbeddingSet) -> EmbeddingSet:
    """The domain model's vectors of the images in `backbone_vectors` (its backbone's stored
    vectors of one or more drops), projected without reading an image; the model is registered
    (its HNSW index made) on first use."""
    if backbone_vectors.model != record.backbone_model:
        raise ValueError(
            f"domain model {record.model_id} projects {record.backbone_model} vectors, got {backbone_vectors.model}: "
            "retrain it (domain_embedder) after changing the semantic model"
        )
    head = domain_head(record)
    catalog.register_model(
        record.model_id,
        "domain",
        head.dim,
        f"domain model v{record.version}: {head.dim}-d projection of {record.backbone_model} trained on {record.images} images",
        preprocess=f"projection-of:{record.backbone_model}",
    )
    return EmbeddingSet(
        record.model_id,
        backbone_vectors.image_ids,
        list(backbone_vectors.sha256),
        head.project(backbone_vectors.vectors),
        list(backbone_vectors.drop_keys),
    )
