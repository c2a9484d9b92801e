"""Stable identifiers and key validation."""

from __future__ import annotations

import hashlib
import re

_PARTITION_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,127}")


def image_id_for(drop_key: str, object_key: str) -> int:
    """A stable positive 63-bit id for (drop, object key).

    Deterministic so that re-ingesting a drop keeps every image's id, and downstream rows
    (embeddings, clusters, selections) never dangle after an idempotent re-run. Never raises for
    any str: lone surrogates (undecodable file-name bytes under surrogateescape) are encoded with
    `surrogatepass`, which leaves every valid string's bytes, so every existing id, unchanged."""
    digest = hashlib.sha256(f"{drop_key}\x00{object_key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def validate_name(value: str, what: str = "partition key") -> str:
    """Partition keys and selection/query names are used in paths and shown in the UI:
    keep them to a safe alphabet so they can never escape a directory or look like markup."""
    if not isinstance(value, str) or not _PARTITION_KEY_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"invalid {what} {value!r}: use 1-128 characters from letters, digits, '.', '_', '-', '=' "
            "starting with a letter or digit, and no '..'"
        )
    return value
