"""Where a drop's objects come from: a local folder or an S3 prefix, behind one small interface.

An image store lists the objects of a drop location and reads each object's bytes. Locations are
URIs: a plain path or `file://...` for local folders, `s3://bucket/prefix/` for S3. The stores only
ever list and read (S3: ListObjectsV2 and GetObject); nothing here writes to an input location."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
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


@dataclass(frozen=True)
class DropState:
    """What a sensor needs to decide whether a drop has finished uploading."""

    name: str
    location: str
    has_marker: bool
    objects: int  # objects other than the marker
    newest: datetime | None  # last modification of the newest object


class ImageStore(ABC):
    """Lists and reads one drop location."""

    @abstractmethod
    def list_drops(self, root: str) -> Iterator[tuple[str, str]]:
        """(name, location) of every drop directly under `root` (sub-folders / common prefixes)."""

    def drop_state(self, name: str, location: str, marker: str) -> DropState:
        """Marker present?, object count and newest modification time of one drop."""
        count, newest, has_marker = 0, None, False
        for obj in self.list_objects(location):
            if obj.key == marker:
                has_marker = True
                continue
            count += 1
            newest = obj.last_modified if newest is None or obj.last_modified > newest else newest
        return DropState(name, location, has_marker, count, newest)

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

    def list_drops(self, root: str) -> Iterator[tuple[str, str]]:
        base = self._root(root)
        with os.scandir(base) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
        for name in names:
            yield name, str(base / name)

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


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3 (or any S3-compatible server). Picklable, so loader processes can build
    their own client. Empty fields fall back to boto3's own chain (environment, profile, IMDS);
    `endpoint_url` also reads $CURATION_S3_ENDPOINT_URL, then boto3's $AWS_ENDPOINT_URL."""

    endpoint_url: str | None = None
    region_name: str | None = None
    profile_name: str | None = None
    max_attempts: int = 10
    retry_mode: str = "adaptive"  # client-side rate limiting on throttling, plus exponential backoff
    # explicit credentials (default: boto3's chain); kept out of repr so they never reach a log
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> "S3Settings":
        return cls(endpoint_url=os.environ.get("CURATION_S3_ENDPOINT_URL") or None,
                   region_name=os.environ.get("CURATION_S3_REGION") or None,
                   profile_name=os.environ.get("CURATION_S3_PROFILE") or None)

    def client(self):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client("s3", region_name=self.region_name, endpoint_url=self.endpoint_url,
                              aws_access_key_id=self.aws_access_key_id,
                              aws_secret_access_key=self.aws_secret_access_key,
                              aws_session_token=self.aws_session_token,
                              config=Config(retries={"max_attempts": self.max_attempts, "mode": self.retry_mode},
                                            signature_version="s3v4"))


def split_s3_uri(uri: str) -> tuple[str, str]:
    """("bucket", "prefix/") of s3://bucket/prefix/ (prefix may be empty)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix/)")
    return parsed.netloc, parsed.path.lstrip("/")


class S3ImageStore(ImageStore):
    """An S3 prefix, listed with ListObjectsV2 (paginated, so drops of any size) and read with
    GetObject (the streaming body is read to the end). Keys may hold spaces and unicode: they are
    passed to boto3 as-is, never built into URLs by hand. Throttling (503 SlowDown) and 5xx are
    retried by botocore in adaptive mode."""

    def __init__(self, settings: S3Settings | None = None, client=None) -> None:
        self.settings = settings or S3Settings.from_env()
        self._client = client

    def __getstate__(self):  # loader processes build their own client
        return {"settings": self.settings, "_client": None}

    @property
    def client(self):
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    @staticmethod
    def _prefix(location: str) -> tuple[str, str]:
        bucket, prefix = split_s3_uri(location)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return bucket, prefix

    def list_drops(self, root: str) -> Iterator[tuple[str, str]]:
        bucket, prefix = self._prefix(root)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):  # 1 request per 1,000 drops
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix):].rstrip("/")
                if name and not name.startswith("."):
                    yield name, f"s3://{bucket}/{common['Prefix']}"

    def list_objects(self, location: str) -> Iterator[ObjectInfo]:
        bucket, prefix = self._prefix(location)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):  # keys come back in UTF-8 binary order
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix):]
                if not key or key.endswith("/") or any(p.startswith(".") and p not in (".", "..")
                                                       for p in key.split("/")):
                    # folder markers and hidden objects (.DS_Store, .write_access probes) are not
                    # images; keys with `..` segments are legal in S3 and kept (exports make them safe)
                    continue
                yield ObjectInfo(key=key, size=int(obj["Size"]), etag=str(obj.get("ETag", "")).strip('"'),
                                 last_modified=obj["LastModified"])

    def read_bytes(self, location: str, key: str) -> bytes:
        bucket, prefix = self._prefix(location)
        return self._get(bucket, prefix + key)

    def _get(self, bucket: str, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:  # botocore ClientError: a vanished object reads like a missing file
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{bucket}/{key} does not exist (deleted after listing?)") from exc
            raise
        with body:
            return body.read()

    def object_uri(self, location: str, key: str) -> str:
        bucket, prefix = self._prefix(location)
        return f"s3://{bucket}/{prefix}{key}"

    def read_uri(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        return self._get(bucket, key)


_default_s3: S3Settings | None = None


@lru_cache(maxsize=8)
def _s3_store(settings: S3Settings) -> S3ImageStore:
    """One store (one boto3 client, which is thread-safe) per settings and process: loaders call
    store_for for every object."""
    return S3ImageStore(settings)


def set_default_s3_settings(settings: S3Settings | None) -> None:
    """What `store_for` uses for s3:// locations in this process (set by the Dagster resource)."""
    global _default_s3
    _default_s3 = settings


def store_for(location: str, s3: S3Settings | None = None) -> ImageStore:
    scheme = urlparse(location).scheme
    if scheme in ("", "file"):
        return LocalImageStore()
    if scheme == "s3":
        return _s3_store(s3 or _default_s3 or S3Settings.from_env())
    raise ValueError(f"no image store for {location!r}: use a local path, file:// or s3://bucket/prefix/")
