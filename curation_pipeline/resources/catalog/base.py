"""What every catalog repository shares: its database URL, pooled connections, and the SQL
fragments and wire formats for vectors.

Rules for every repository: values (partition keys, names, model ids, paths) are always bound
parameters; the only identifiers composed into SQL come from code, quoted with
psycopg.sql.Identifier. Every write that belongs to a partition is one transaction that replaces
that partition's rows, so re-runs are idempotent and a crash leaves the previous state."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector

from ..database import pooled_connection

# A stored vector read back as float32 `vector`, whichever column holds it.
READ_VECTOR = "coalesce(embedding, embedding_half::vector)"
READ_VECTOR_E = "coalesce(e.embedding, e.embedding_half::vector)"


def wire_vector(vec: np.ndarray, storage: str):
    """A vector as psycopg sends it for `storage` ("vector": float32, "halfvec": float16)."""
    if storage == "halfvec":
        return HalfVector(np.asarray(vec, dtype=np.float16))
    return np.asarray(vec, dtype=np.float32)


def scalar(cur) -> Any:
    """The first value of the cursor's one row (aggregates and RETURNING always have one)."""
    row = cur.fetchone()
    if row is None:
        raise LookupError("the query returned no row")
    return row[0]


def one_row(cur) -> tuple:
    """The cursor's one row, or LookupError (a query that must match, e.g. after a guard)."""
    row = cur.fetchone()
    if row is None:
        raise LookupError("the query returned no row")
    return row


def dict_rows(cur) -> list[dict]:
    """The cursor's remaining rows as dicts keyed by column name."""
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


class Repository:
    """One database (by URL). Connections come from this process's pool for the URL
    (database.pooled_connection): autocommit, pgvector registered, schema migrated."""

    def __init__(self, url: str) -> None:
        self.url = url

    def connection(self) -> AbstractContextManager[psycopg.Connection]:
        return pooled_connection(self.url)
