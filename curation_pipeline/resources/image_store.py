"""Where a drop's objects come from. One small interface; a local folder now, S3 next.

An image store lists the objects of a drop location and reads each object's bytes. Locations are
URIs: a plain path or `file://...` for local folders; `s3://bucket/prefix` is reserved for the S3
store (a later change adds it behind the same interface)."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"})


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the drop location, '/'-separated
    size: int
    etag: str  # changes when the object changes (local: size + mtime_ns)
    last_modified: datetime


class ImageStore(ABC):
    """Lists and reads one drop location."""

    @abstractmethod
    def list_objects(self, location: str) -> Iterator[ObjectInfo]:
        """Every object under `location`, sorted by key, including ones that may not be images
        (the manifest decides and records why)."""

    @abstractmethod
    def read_bytes(self, location: str, key: str) -> bytes:
        """The object's bytes; raises FileNotFoundError if it vanished since listing."""

    @abstractmethod
    def object_uri(self, location: str, key: str) -> str:
        """A URI that names the object for people and for exports."""

    @abstractmethod
    def read_uri(self, uri: str) -> bytes:
        """Bytes of an object named by a URI that `object_uri` returned."""


class LocalImageStore(ImageStore):
    """A local folder. Symlinks are not followed out of the drop, and hidden files are skipped."""

    def _root(self, location: str) -> Path:
        parsed = urlparse(location)
        if parsed.scheme not in ("", "file"):
            raise ValueError(f"LocalImageStore cannot read {location!r}: scheme {parsed.scheme!r} is not local")
        path = Path(parsed.path if parsed.scheme == "file" else location).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"drop location {location!r} is not a folder")
        return path

    def list_objects(self, location: str) -> Iterator[ObjectInfo]:
        root = self._root(location)
        entries = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith("."):
                    continue
                full = Path(dirpath) / name
                if full.is_symlink():
                    target = full.resolve()
                    if root not in target.parents:
                        continue  # a symlink out of the drop is not part of the drop
                entries.append(full)
        for full in sorted(entries, key=lambda p: p.relative_to(root).as_posix()):
            try:
                st = full.stat()
            except FileNotFoundError:
                continue  # vanished between walk and stat
            yield ObjectInfo(
                key=full.relative_to(root).as_posix(),
                size=st.st_size,
                etag=hashlib.md5(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest(),
                last_modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
            )

    def read_bytes(self, location: str, key: str) -> bytes:
        root = self._root(location)
        path = (root / key).resolve()
        if root not in path.parents:
            raise ValueError(f"object key {key!r} escapes drop location {location!r}")
        return path.read_bytes()

    def object_uri(self, location: str, key: str) -> str:
        return (self._root(location) / key).as_posix()

    def read_uri(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        return Path(parsed.path if parsed.scheme == "file" else uri).read_bytes()


def store_for(location: str) -> ImageStore:
    scheme = urlparse(location).scheme
    if scheme in ("", "file"):
        return LocalImageStore()
    raise NotImplementedError(
        f"no image store for {location!r}: scheme {scheme!r} is not supported yet (local folders only)"
    )
