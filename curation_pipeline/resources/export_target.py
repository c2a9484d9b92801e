"""Where a curated export is written: a local folder or an S3 prefix. The only writable location.

Relative paths are made safe before they touch the target: every `..`, `.` and empty segment is
dropped and leading slashes removed, so an object key such as `../../etc/x.jpg` still lands
inside the export prefix. Writes of small files (manifests) are atomic: a local temp file renamed
into place, or one S3 PutObject (an object is never visible half-written).

`location_within` says whether one location lies inside another (local paths resolved, S3 compared
by bucket and whole key segments); the export step uses it to refuse a destination inside a drop."""

from __future__ import annotations

import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from .image_store import ImageStore, S3Settings, split_s3_uri


def safe_relative(path: str) -> str:
    """A '/'-separated relative path with no way out of its root."""
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    if not parts:
        raise ValueError(f"path {path!r} has no usable segment")
    return "/".join(parts)


def _location_parts(location: str) -> tuple[str, str, tuple[str, ...]]:
    """(scheme, bucket or host, path segments) of a local path, file:// URI or remote URI. Local
    paths are resolved (symlinks followed, `..` applied, whether or not they exist yet); remote keys
    are compared literally, as the service stores them, with a trailing '/' ignored."""
    scheme, sep, rest = location.partition("://")
    if not sep or scheme.lower() == "file":
        path = urlparse(location).path if sep else location
        return "", "", Path(path).expanduser().resolve().parts
    host, _, key = rest.partition("/")  # not urlparse: a key may hold '#' or '?'
    segments = key.split("/")
    while segments and segments[-1] == "":
        segments.pop()
    return scheme.lower(), host, tuple(segments)


def location_within(inner: str, outer: str) -> bool:
    """True when `inner` equals `outer` or lies below it: `s3://b/drops/d1/` holds `s3://b/drops/d1/x/`
    but not `s3://b/drops/d10/`; `/data/d1` holds `/data/link-to-d1/x` when the link points there."""
    i_scheme, i_host, i_parts = _location_parts(inner)
    o_scheme, o_host, o_parts = _location_parts(outer)
    return (i_scheme, i_host) == (o_scheme, o_host) and i_parts[: len(o_parts)] == o_parts


class ExportTarget(ABC):
    @abstractmethod
    def uri(self, rel: str) -> str: ...

    @abstractmethod
    def has(self, rel: str, size: int, sha256: str) -> bool:
        """True when `rel` already holds this content (re-runs skip it)."""

    @abstractmethod
    def copy_from(self, source_uri: str, rel: str, sha256: str, store: ImageStore) -> None: ...

    @abstractmethod
    def put_bytes(self, rel: str, data: bytes, content_type: str | None = None) -> None:
        """Write `data` at `rel`; `content_type` is stored where the target keeps one (S3), so a
        browser renders an HTML page instead of downloading it."""

    @abstractmethod
    def delete(self, rel: str) -> None: ...

    def presign(self, rel: str, seconds: int) -> str | None:
        return None


class LocalExportTarget(ExportTarget):
    def __init__(self, root: str) -> None:
        self.root = Path(urlparse(root).path if root.startswith("file://") else root).expanduser().resolve()

    def _path(self, rel: str) -> Path:
        path = (self.root / safe_relative(rel)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"export path {rel!r} escapes {self.root}")
        return path

    def uri(self, rel: str) -> str:
        return self._path(rel).as_posix()

    def has(self, rel: str, size: int, sha256: str) -> bool:
        path = self._path(rel)
        if not path.is_file() or path.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as fh:  # same size is not same content: a stale file is copied again
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest() == sha256

    def copy_from(self, source_uri: str, rel: str, sha256: str, store: ImageStore) -> None:
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        if urlparse(source_uri).scheme in ("", "file"):
            shutil.copyfile(urlparse(source_uri).path if source_uri.startswith("file://") else source_uri, tmp)
        else:
            tmp.write_bytes(store.read_uri(source_uri))
        os.replace(tmp, path)

    def put_bytes(self, rel: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def delete(self, rel: str) -> None:
        self._path(rel).unlink(missing_ok=True)


class S3ExportTarget(ExportTarget):
    """Objects under s3://bucket/prefix/. S3 sources are copied server-side (CopyObject: the bytes
    never pass through this machine); local sources are uploaded. The content hash travels as
    object metadata, so a re-run recognises what it already copied with one HeadObject."""

    def __init__(self, root: str, settings: S3Settings | None = None) -> None:
        self.bucket, prefix = split_s3_uri(root)
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.settings = settings or S3Settings()
        self.client = self.settings.client()

    def _key(self, rel: str) -> str:
        return self.prefix + safe_relative(rel)

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self._key(rel)}"

    def has(self, rel: str, size: int, sha256: str) -> bool:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(rel))
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return head.get("ContentLength") == size and head.get("Metadata", {}).get("sha256") == sha256

    def copy_from(self, source_uri: str, rel: str, sha256: str, store: ImageStore) -> None:
        if urlparse(source_uri).scheme == "s3":
            bucket, key = split_s3_uri(source_uri)
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self._key(rel),
                CopySource={"Bucket": bucket, "Key": key},
                Metadata={"sha256": sha256},
                MetadataDirective="REPLACE",
            )
        else:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(rel), Body=store.read_uri(source_uri), Metadata={"sha256": sha256}
            )

    def put_bytes(self, rel: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, **extra)

    def delete(self, rel: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(rel))

    def presign(self, rel: str, seconds: int) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(rel)}, ExpiresIn=int(seconds)
        )


def export_target_for(root: str, settings: S3Settings | None = None) -> ExportTarget:
    scheme = urlparse(root).scheme
    if scheme in ("", "file"):
        return LocalExportTarget(root)
    if scheme == "s3":
        return S3ExportTarget(root, settings)
    raise ValueError(f"no export target for {root!r}: use a local folder or s3://bucket/prefix/")


__all__ = [
    "ExportTarget",
    "LocalExportTarget",
    "S3ExportTarget",
    "export_target_for",
    "location_within",
    "safe_relative",
]
