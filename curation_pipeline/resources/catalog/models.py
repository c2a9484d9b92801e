"""Domain models: versions of a trained projection head, their weights (with a content hash) and
which one is current. The head's class lives in resources/domain_model.py; this module stores and
returns its bytes."""

from __future__ import annotations

import json
from typing import Any

from ..embedders import domain_model_id
from .base import Repository, scalar
from .records import DomainModelRecord

_COLUMNS = "model_id, version, backbone_model, dim, sha256, weights, config, stats, images, created_at"


def _record(row) -> DomainModelRecord:
    return DomainModelRecord(
        row[0], int(row[1]), row[2], int(row[3]), row[4], bytes(row[5]), row[6], row[7], int(row[8]), row[9]
    )


class ModelRepository(Repository):
    def save_domain_model(
        self,
        *,
        backbone_model: str,
        dim: int,
        sha256: str,
        weights: bytes,
        config: dict[str, Any],
        stats: dict[str, Any],
        images: int,
    ) -> tuple[DomainModelRecord, bool]:
        """Store a trained head as the new current version, unless the current version has the
        same content hash and backbone (a retraining that reproduced it): then that one stays, so
        nothing downstream goes stale. Returns (the current record, whether it is new)."""
        with self.connection() as conn, conn.transaction():
            conn.execute("LOCK TABLE domain_models IN SHARE ROW EXCLUSIVE MODE")
            row = conn.execute(f"SELECT {_COLUMNS} FROM domain_models ORDER BY version DESC LIMIT 1").fetchone()
            if row is not None and row[4] == sha256 and row[2] == backbone_model:
                return _record(row), False
            version = int(scalar(conn.execute("SELECT coalesce(max(version), 0) + 1 FROM domain_models")))
            model_id = domain_model_id(backbone_model, version, sha256)
            row = conn.execute(
                f"INSERT INTO domain_models ({_COLUMNS.replace(', created_at', '')})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING " + _COLUMNS,
                (model_id, version, backbone_model, dim, sha256, weights, json.dumps(config), json.dumps(stats), images),
            ).fetchone()
            return _record(row), True

    def current_domain_model(self) -> DomainModelRecord | None:
        """The newest version, or None when none has been trained."""
        with self.connection() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM domain_models ORDER BY version DESC LIMIT 1").fetchone()
        return _record(row) if row else None

    def domain_model(self, model_id: str) -> DomainModelRecord:
        with self.connection() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM domain_models WHERE model_id = %s", (model_id,)).fetchone()
        if row is None:
            raise LookupError(f"no domain model {model_id!r} is stored (see `curation models`)")
        return _record(row)

    def domain_models(self) -> list[DomainModelRecord]:
        """Every stored version, newest first."""
        with self.connection() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM domain_models ORDER BY version DESC").fetchall()
        return [_record(r) for r in rows]

    def drop_superseded_domain_rows(self, drop_key: str, current_model: str) -> int:
        """Delete the drop's vectors of older domain model versions, once the current one's are in."""
        with self.connection() as conn:
            return conn.execute(
                "DELETE FROM embeddings WHERE drop_key = %s AND model LIKE 'domain:%%' AND model <> %s",
                (drop_key, current_model),
            ).rowcount
