"""Where a drop's objects come from: a local folder or an S3 prefix, behind one small interface.

An image store lists the objects of a drop location and reads each object's bytes. Locations are
URIs: a plain path or `file://...` for local folders, `s3://bucket/prefix/` for S3. The stores only
ever list and read (S3: ListObjectsV2 and GetObject); nothing here writes to an input location.

Whatever a drop holds, listing never fails on one entry and reading never blocks or reads without
bound: odd entries (symlink loops, dangling links, named pipes, sockets, devices) are listed with a
`problem` and never opened, reads open without blocking and refuse anything but a regular file,
and no object over MAX_OBJECT_BYTES is read (see `ObjectTooLarge`)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from curation_pipeline.core.decode import STATUS_UNREADABLE, STATUS_UNSUPPORTED

# The largest object any store reads into memory. The decoder refuses images over MAX_PIXELS
# (120 Mpx) anyway, and the largest 8-bit image within that limit, stored uncompressed as RGBA, is
# 480 MB: 512 MiB admits every such image in any encoding while one read, plus its decode, stays
# well inside a loader's memory. Anything bigger is recorded as too_large from its size alone.
MAX_OBJECT_BYTES = 512 << 20

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"})


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the drop location, '/'-separated
    size: int
    etag: str  # changes when the object changes (local: size + mtime_ns)
    last_modified: datetime
    # (status, error) for an entry listed but never to be read: a symlink loop, a dangling link, a
    # named pipe, a socket, a device. The manifest records it as it is, without opening it.
    problem: tuple[str, str] | None = None


class NotARegularFile(OSError):
    """Raised instead of reading a named pipe, socket, device or directory: opening a FIFO for
    reading blocks until a writer comes, and a device can stream forever."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"not a regular file ({kind})")
        self.kind = kind


class ObjectTooLarge(OSError):
    """Raised instead of reading an object of more than `limit` bytes into memory."""

    def __init__(self, size: int | None, limit: int) -> None:
        super().__init__(
            f"object is larger than the limit of {limit} bytes"
            if size is None
            else f"object is {size} bytes, over the limit of {limit} bytes"
        )
        self.size = size
        self.limit = limit


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
        """The object's bytes; raises FileNotFoundError if it vanished since listing,
        NotARegularFile for a pipe/socket/device and ObjectTooLarge past MAX_OBJECT_BYTES."""

    def read_prefix(self, location: str, key: str, n: int) -> bytes:
        """At most the first `n` bytes of the object (fewer only if the object is shorter): enough
        to identify a format and read a header without holding a huge object in memory."""
        return self.read_bytes(location, key)[:n]

    @abstractmethod
    def object_uri(self, location: str, key: str) -> str:
        """A URI that names the object for people and for exports."""

    @abstractmethod
    def read_uri(self, uri: str) -> bytes:
        """Bytes of an object named by a URI that `object_uri` returned."""


# ---- local folders ------------------------------------------------------------------------------
#
# Keys are text (they go to PostgreSQL, logs, URIs), but a POSIX file name is bytes and need not be
# UTF-8. A name component that is valid UTF-8 is its own key text, unchanged. A component that is
# not is kept losslessly as text: every undecodable byte is written \xHH and, in such a component
# only, every backslash is written \x5c, so its escapes alone decide its bytes (b"bad_\xff.jpg"
# becomes the 12 characters `bad_\xff.jpg`). Mapping a key back (`_fs_path`) goes component by
# component, literal first: the entry whose UTF-8 name equals the component; failing that, the
# entry whose bytes escape to exactly that component (a round trip, so `\x2f` can never smuggle in
# a '/', nor any valid-UTF-8 name be produced). The search only follows entries that exist, so it is
# bounded by the folder. The one ambiguity, a UTF-8 sibling literally named like another file's
# escaped name, is settled at listing time: the entry the literal-first rule does not reach is
# listed under a unique key with a problem telling to rename it, so no row is lost and no key ever
# reads the wrong file.

_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def _escape_name(name: bytes) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name.replace(b"\\", b"\\x5c").decode("utf-8", "backslashreplace")


def _unescape_name(text: str) -> bytes | None:
    """The non-UTF-8 name bytes that `_escape_name` turns into `text`, or None if there are none."""
    if "\\x" not in text:
        return None
    parts = _ESCAPE.split(text)  # text, hex, text, hex, ..., text
    raw = b"".join(p.encode("utf-8", "surrogateescape") if i % 2 == 0 else bytes([int(p, 16)]) for i, p in enumerate(parts))
    return raw if _escape_name(raw) == text else None


def _escape_path(path: bytes) -> str:
    return "/".join(_escape_name(c) for c in path.split(b"/"))


def _fs_path(base: bytes, rel: str) -> bytes:
    """The file system path of `rel` (a '/'-separated key) under `base`; see the comment above."""
    parts = [p for p in rel.split("/") if p]
    literal = os.path.join(base, *[p.encode("utf-8", "surrogateescape") for p in parts]) if parts else base

    def search(at: bytes, i: int) -> bytes | None:
        if i == len(parts):
            return at
        raw = _unescape_name(parts[i])
        for name in (parts[i].encode("utf-8", "surrogateescape"), raw):
            if name is None:
                continue
            path = os.path.join(at, name)
            try:
                mode = os.lstat(path).st_mode
            except (OSError, ValueError):
                continue
            if i + 1 == len(parts) or stat.S_ISDIR(mode):
                found = search(path, i + 1)
                if found is not None:
                    return found
        return None

    return search(base, 0) or literal


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return kind
    return "special file"


def read_local_file(
    path: str | bytes | os.PathLike, n: int | None = None, *, max_bytes: int = MAX_OBJECT_BYTES, follow_symlinks: bool = True
) -> bytes:
    """The bytes of a regular local file (its first `n` bytes if n is given), race-proof: anything
    that is not a regular file is refused by stat before opening, and again after opening (the
    entry may have been swapped in between), and the open never blocks (O_NONBLOCK: a FIFO opens
    at once instead of waiting for a writer) nor takes a terminal (O_NOCTTY). Raises
    NotARegularFile, ObjectTooLarge (whole reads over `max_bytes`) or the OSError of the open."""
    st = os.stat(path, follow_symlinks=follow_symlinks)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(_kind(st.st_mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket swapped in after the stat
            raise NotARegularFile("socket") from exc
        raise
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(_kind(st.st_mode))
        if n is None:
            if st.st_size > max_bytes:
                raise ObjectTooLarge(st.st_size, max_bytes)
            n = max_bytes + 1  # a file that grows while read still stops here
        chunks, left = [], n
        while left > 0:
            chunk = f.read(min(left, 8 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ObjectTooLarge(None, max_bytes)
    return data


_SKIP = object()  # an entry that is not part of the drop (a symlink out of it), or that vanished


def _entry(root: bytes, path: bytes):
    """(os.stat_result, problem) for one listed entry, or _SKIP."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _SKIP  # vanished between walk and stat
    except OSError as exc:
        return None, (STATUS_UNREADABLE, f"cannot stat: {exc.strerror}")
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return st, (
                    STATUS_UNREADABLE,
                    "symlink loop: the link never resolves to a file (too many levels of symbolic links)",
                )
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return st, (STATUS_UNREADABLE, "dangling symlink: its target does not exist")
            return st, (STATUS_UNREADABLE, f"cannot follow symlink: {exc.strerror}")
        if not os.path.realpath(path).startswith(root.rstrip(b"/") + b"/"):
            # Never followed (security): what is outside the drop is not part of it. Not even a
            # row: an existing test asserts these are absent from the listing.
            return _SKIP
        st = target
    if not stat.S_ISREG(st.st_mode):
        return st, (STATUS_UNSUPPORTED, f"not a regular file ({_kind(st.st_mode)})")
    return st, None


class LocalImageStore(ImageStore):
    """A local folder. Symlinks are not followed out of the drop, and hidden files are skipped.
    Reads are capped at `max_object_bytes`."""

    def __init__(self, max_object_bytes: int = MAX_OBJECT_BYTES) -> None:
        self.max_object_bytes = max_object_bytes

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
        root = os.fsencode(self._root(location))
        found: list[tuple[str, bytes, os.stat_result, tuple[str, str] | None]] = []
        # bytes all the way: names exactly as on disk, whatever their encoding
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(b"."))
            for name in filenames:
                if name.startswith(b"."):
                    continue
                path = os.path.join(dirpath, name)
                entry = _entry(root, path)
                if entry is _SKIP:
                    continue
                st, problem = entry
                found.append((_escape_path(os.path.relpath(path, root)), path, st, problem))
        keys = {key for key, *_ in found}
        if len(keys) < len(found):
            found = self._settle_collisions(root, found, keys)
        for key, _, st, problem in sorted(found, key=lambda f: f[0]):
            size = st.st_size if st is not None else 0
            mtime_ns = st.st_mtime_ns if st is not None else 0
            yield ObjectInfo(
                key=key,
                size=size,
                etag=hashlib.md5(f"{size}:{mtime_ns}".encode()).hexdigest(),
                last_modified=datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc),
                problem=problem,
            )

    @staticmethod
    def _settle_collisions(root: bytes, found: list, keys: set[str]) -> list:
        """Entries sharing a key (a non-UTF-8 name whose escaped text is also a UTF-8 name): the one
        `_fs_path` reaches keeps the key, the others get a unique key and a problem."""
        by_key: dict[str, list] = {}
        for item in found:
            by_key.setdefault(item[0], []).append(item)
        out = []
        for key, items in by_key.items():
            if len(items) == 1:
                out += items
                continue
            owner = _fs_path(root, key)
            for item in items:
                if item[1] == owner:
                    out.append(item)
                    continue
                n = 2
                while f"{key} (non-UTF-8 name {n})" in keys:
                    n += 1
                unique = f"{key} (non-UTF-8 name {n})"
                keys.add(unique)
                out.append(
                    (
                        unique,
                        item[1],
                        item[2],
                        (
                            STATUS_UNREADABLE,
                            f"file name is not valid UTF-8 and its escaped form {key!r} is "
                            "also another file's name: rename one of them",
                        ),
                    )
                )
        return out

    def _path(self, location: str, key: str) -> bytes:
        root = os.fsencode(self._root(location))
        path = os.path.realpath(_fs_path(root, key))
        if not path.startswith(root.rstrip(b"/") + b"/"):
            raise ValueError(f"object key {key!r} escapes drop location {location!r}")
        return path

    def read_bytes(self, location: str, key: str) -> bytes:
        # the real path is checked to lie inside the drop, then opened without following a link
        # (a link swapped in after the check fails with ELOOP instead of leading out)
        return read_local_file(self._path(location, key), max_bytes=self.max_object_bytes, follow_symlinks=False)

    def read_prefix(self, location: str, key: str, n: int) -> bytes:
        return read_local_file(self._path(location, key), n, max_bytes=self.max_object_bytes, follow_symlinks=False)

    def object_uri(self, location: str, key: str) -> str:
        return _escape_path(os.fsencode(self._root(location))) + "/" + key

    def read_uri(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        text = parsed.path if parsed.scheme == "file" else uri
        path = _fs_path(b"/" if text.startswith("/") else b"", text)
        return read_local_file(path, max_bytes=self.max_object_bytes)


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3 (or any S3-compatible server). Picklable, so loader processes can build
    their own client. Empty fields fall back to boto3's own chain (environment, profile, IMDS; for
    the endpoint boto3's $AWS_ENDPOINT_URL): nothing here reads the project's own variables, the
    caller hands in what it was configured with (settings.py, the Dagster resource)."""

    endpoint_url: str | None = None
    region_name: str | None = None
    profile_name: str | None = None
    max_attempts: int = 10
    retry_mode: str = "adaptive"  # client-side rate limiting on throttling, plus exponential backoff
    # explicit credentials (default: boto3's chain); kept out of repr so they never reach a log
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)

    def client(self):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(retries={"max_attempts": self.max_attempts, "mode": self.retry_mode}, signature_version="s3v4"),
        )


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

    def __init__(self, settings: S3Settings | None = None, client=None, max_object_bytes: int = MAX_OBJECT_BYTES) -> None:
        self.settings = settings or S3Settings()
        self._client = client
        self.max_object_bytes = max_object_bytes

    def __getstate__(self):  # loader processes build their own client
        return {"settings": self.settings, "_client": None, "max_object_bytes": self.max_object_bytes}

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
                name = common["Prefix"][len(prefix) :].rstrip("/")
                if name and not name.startswith("."):
                    yield name, f"s3://{bucket}/{common['Prefix']}"

    def list_objects(self, location: str) -> Iterator[ObjectInfo]:
        bucket, prefix = self._prefix(location)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):  # keys come back in UTF-8 binary order
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix) :]
                if not key or key.endswith("/") or any(p.startswith(".") and p not in (".", "..") for p in key.split("/")):
                    # folder markers and hidden objects (.DS_Store, .write_access probes) are not
                    # images; keys with `..` segments are legal in S3 and kept (exports make them safe)
                    continue
                yield ObjectInfo(
                    key=key, size=int(obj["Size"]), etag=str(obj.get("ETag", "")).strip('"'), last_modified=obj["LastModified"]
                )

    def read_bytes(self, location: str, key: str) -> bytes:
        bucket, prefix = self._prefix(location)
        return self._get(bucket, prefix + key)

    def read_prefix(self, location: str, key: str, n: int) -> bytes:
        bucket, prefix = self._prefix(location)
        return self._get(bucket, prefix + key, n)

    def _get(self, bucket: str, key: str, n: int | None = None) -> bytes:
        """The object's bytes, or its first n (a ranged GetObject: the rest never leaves S3)."""
        try:
            if n is not None:
                response = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max(n, 1) - 1}")
            else:
                response = self.client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:  # botocore ClientError: a vanished object reads like a missing file
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{bucket}/{key} does not exist (deleted after listing?)") from exc
            if code == "InvalidRange" and n is not None:
                return b""  # a range of an empty object
            raise
        body = response["Body"]
        with body:
            if n is not None:
                return body.read(n)
            size = response.get("ContentLength")
            if size is not None and size > self.max_object_bytes:
                raise ObjectTooLarge(size, self.max_object_bytes)  # refused before reading the body
            data = body.read(self.max_object_bytes + 1)
        if len(data) > self.max_object_bytes:
            raise ObjectTooLarge(None, self.max_object_bytes)
        return data

    def object_uri(self, location: str, key: str) -> str:
        bucket, prefix = self._prefix(location)
        return f"s3://{bucket}/{prefix}{key}"

    def read_uri(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        return self._get(bucket, key)


@lru_cache(maxsize=8)
def _s3_store(settings: S3Settings) -> S3ImageStore:
    """One store (one boto3 client, which is thread-safe) per settings and process: loaders read
    every object through it. A cache of values, not configuration: the settings are the key."""
    return S3ImageStore(settings)


def _local_store(s3: S3Settings) -> ImageStore:
    return LocalImageStore()


# URI scheme -> the store that reads it, built from the S3 settings it is handed (only S3 uses them).
# A new kind of store (another object store, a bag-file reader) is one ImageStore subclass and one
# entry here; the manifest, embedding, report, export and retrieval steps reach it through store_for.
IMAGE_STORES: dict[str, Callable[[S3Settings], ImageStore]] = {
    "": _local_store,
    "file": _local_store,
    "s3": _s3_store,
}


def store_for(location: str, s3: S3Settings | None = None) -> ImageStore:
    """The store that reads `location`; s3:// locations through `s3` (default: boto3's own chain)."""
    scheme = urlparse(location).scheme
    factory = IMAGE_STORES.get(scheme)
    if factory is None:
        known = ", ".join(f"{k}://" for k in IMAGE_STORES if k) + " or a local path"
        raise ValueError(f"no image store for {location!r}: use {known}")
    return factory(s3 or S3Settings())


@dataclass(frozen=True)
class ImageStores:
    """What a step reads images through, whatever their location: local paths and file:// URIs from
    disk, s3:// through `s3`. A small immutable value, handed to each step by its caller (the Dagster
    resource, the CLI, a test) and pickled into loader processes, so every process reads with the
    configuration it was given and none falls back to another."""

    s3: S3Settings = S3Settings()

    def for_location(self, location: str) -> ImageStore:
        return store_for(location, self.s3)

    def read_uri(self, uri: str) -> bytes:
        """Bytes of an object named by a URI that a store's `object_uri` returned."""
        return self.for_location(uri).read_uri(uri)


# Local files, and S3 through boto3's own chain: the default of steps called without stores (tests,
# benchmarks, local drops). An immutable value, so no caller can change what another one reads with.
DEFAULT_STORES = ImageStores()
