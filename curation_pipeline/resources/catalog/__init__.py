"""The catalog: every SQL statement the pipeline runs, as one repository per domain, each with its
SQL beside it, over pooled connections (database.pooled_connection).

    drops.py       drops, the manifest writer (shrink guard, lost items), manifest lookups
    embeddings.py  models, the embedding cache, publishing, vectors in and out, failures, stats
    search.py      HNSW top-k lookups and filtered search; the HNSW session settings, once
    buckets.py     coarse k-means buckets of a model's vectors: dedup's exact safety net
    dedup.py       the dedup lock, candidates and representatives, duplicate groups, checks, leaks
    sets.py        selections, retrievals, annotations, lost items, exports, report samples
    labels.py      versioned label and prediction sets, their objects, label reviews, splits
    models.py      domain models: trained versions, their weights and content hash
    records.py     the typed records that leave the catalog (EmbeddingSet, KeptImage, ModelInfo, ...)

`Catalog` is the thin facade the steps, Dagster resources and the CLI hold: it is every
repository at once, over one database URL. The rules every repository keeps are in base.py."""

from __future__ import annotations

from .base import Repository, wire_vector
from .buckets import BucketModel, BucketRepository
from .dedup import DedupRepository
from .drops import DEFAULT_SHRINK_GUARD, DropRepository, DropShrinkRefused, ManifestWriter, ShrinkGuard
from .embeddings import CacheWriter, EmbeddingRepository, hnsw_index_name
from .labels import LabelRepository, LabelVersionExists
from .models import ModelRepository
from .records import (
    STORAGE_TYPES,
    CachedEmbeddings,
    DedupCalibration,
    DedupSettings,
    DomainModelRecord,
    EmbeddingSet,
    KeptImage,
    LostItem,
    ModelInfo,
    SelectionInfo,
)
from .search import SearchRepository, hnsw_lookup_settings
from .sets import SetRepository

__all__ = [
    "BucketModel",
    "BucketRepository",
    "LostItem",
    "SelectionInfo",
    "DEFAULT_SHRINK_GUARD",
    "STORAGE_TYPES",
    "CacheWriter",
    "CachedEmbeddings",
    "Catalog",
    "DedupRepository",
    "DropRepository",
    "DropShrinkRefused",
    "DomainModelRecord",
    "DedupCalibration",
    "DedupSettings",
    "ModelRepository",
    "EmbeddingRepository",
    "EmbeddingSet",
    "KeptImage",
    "LabelRepository",
    "LabelVersionExists",
    "ManifestWriter",
    "ModelInfo",
    "Repository",
    "SearchRepository",
    "SetRepository",
    "ShrinkGuard",
    "hnsw_index_name",
    "hnsw_lookup_settings",
    "wire_vector",
]


class Catalog(
    DropRepository,
    EmbeddingRepository,
    SearchRepository,
    DedupRepository,
    BucketRepository,
    SetRepository,
    ModelRepository,
    LabelRepository,
):
    """Every repository over one database URL. The repositories share nothing but the URL (and so
    this process's connection pool for it); where one domain needs another's data it reads it with
    that module's function over its own connection, never through this class."""
