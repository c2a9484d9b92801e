"""Typed records that cross from the catalog into steps and Dagster: plain frozen dataclasses,
no database handles. Arrays carry their dtype and shape in the field comment."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

# storage -> (column, SQL type); vectors are always read back as `vector` (float32).
STORAGE_TYPES = {"vector": ("embedding", "vector"), "halfvec": ("embedding_half", "halfvec")}


@dataclass(frozen=True)
class ModelInfo:
    """A registered embedding model: vector dimension and storage ("vector" or "halfvec")."""

    dim: int
    storage: str

    @property
    def column(self) -> str:
        return STORAGE_TYPES[self.storage][0]

    @property
    def sqltype(self) -> str:
        return STORAGE_TYPES[self.storage][1]


@dataclass(frozen=True)
class EmbeddingSet:
    """Vectors of one model for a set of images: what the pgvector IO manager stores and loads."""

    model: str
    image_ids: np.ndarray  # (n,) int64
    sha256: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit norm
    drop_keys: list[str]  # (n,) drop of each row

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n or len(self.sha256) != n or len(self.drop_keys) != n:
            raise ValueError(
                f"EmbeddingSet for {self.model}: {n} ids, {len(self.sha256)} hashes, {len(self.drop_keys)} drops "
                f"and vectors of shape {self.vectors.shape} do not line up"
            )

    @classmethod
    def from_rows(cls, model: str, rows: list, dim: int) -> "EmbeddingSet":
        """From (image_id, sha256, drop_key, pgvector Vector, ...) rows; `dim` shapes an empty set."""
        vectors = np.stack([r[3].to_numpy() for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        return cls(model, np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows], vectors, [r[2] for r in rows])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.image_ids)

    def for_drop(self, drop_key: str) -> "EmbeddingSet":
        mask = np.asarray([d == drop_key for d in self.drop_keys], dtype=bool)
        idx = np.nonzero(mask)[0]
        return EmbeddingSet(
            self.model, self.image_ids[idx], [self.sha256[i] for i in idx], self.vectors[idx], [drop_key] * len(idx)
        )


@dataclass(frozen=True)
class CachedEmbeddings:
    """What image_embeddings outputs: 'the cache holds vectors of these models for these drops'.
    `roles` maps each job role to the model that serves it (near-duplicate `descriptor`,
    `semantic`); the pgvector IO manager publishes each model's rows for each partition, one
    transaction per partition and model, and a downstream input asks for a role."""

    roles: dict[str, str]
    drop_keys: tuple[str, ...]

    @property
    def models(self) -> list[str]:
        """Each model once, in role order."""
        return list(dict.fromkeys(self.roles.values()))


@dataclass(frozen=True)
class KeptImage:
    """A dedup candidate or published representative, with what ranks representatives.
    `sharpness` is core's score (QualitySignals.sharpness_score) of the stored signals."""

    image_id: int
    drop_key: str
    drop_ordinal: int
    sha256: str
    phash: int
    pixels: int
    sharpness: float
    object_key: str
    phash_mirror: int = 0
    source_uri: str = ""
    exif_datetime: datetime | None = None
    jpeg_quality: int | None = None
    last_modified: datetime | None = None


@dataclass(frozen=True)
class DedupCalibration:
    """Near-duplicate thresholds calibrated on the corpus for one descriptor model."""

    calibration_id: int
    model: str
    created_at: datetime
    sample_size: int
    target_recall: float
    target_precision: float
    proposal_min_cosine: float
    proposal_max_hamming: int
    verifier: dict
    summary: dict
    curve: dict


@dataclass(frozen=True)
class LostItem:
    """An item of a selection or retrieval set whose image was removed after it was materialized."""

    rank: int
    image_id: int
    drop_key: str
    source_uri: str
    reason: str
    lost_at: datetime


@dataclass(frozen=True)
class SelectionInfo:
    """A stored selection: its settings, pool, comparison with random, and what it lost since."""

    name: str
    model: str
    strategy: str
    config: dict[str, Any]
    pool_size: int
    created_at: datetime
    comparison: dict[str, Any] | None = None
    lost: list[LostItem] = field(default_factory=list)


@dataclass(frozen=True)
class DomainModelRecord:
    """One stored version of a domain model."""

    model_id: str
    version: int
    backbone_model: str
    dim: int
    sha256: str
    weights: bytes
    config: dict[str, Any]
    stats: dict[str, Any]
    images: int
    created_at: datetime


@dataclass(frozen=True)
class DedupSettings:
    """The thresholds one drop was last deduplicated with (run config may override the defaults)."""

    drop_key: str
    model: str
    max_hamming: int
    min_cosine: float
    deduplicated_at: datetime
    verifier: dict | None = None  # the verifier's settings; None: the thresholds alone decided
