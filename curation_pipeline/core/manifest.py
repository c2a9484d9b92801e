"""One manifest record per listed object: what it is, whether it is usable, and why not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from .decode import STATUS_OK, STATUS_TOO_LARGE, DecodedImage, DecodeFailure, decode_image, sniff_image
from .hashing import perceptual_hashes, sha256_hex
from .quality import quality_signals


@dataclass(frozen=True)
class ManifestRecord:
    object_key: str
    bytes: int
    sha256: str
    status: str
    error: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    exif_datetime: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    phash: int | None = None
    phash_mirror: int | None = None
    blur_variance: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    entropy: float | None = None
    aspect_ratio: float | None = None
    jpeg_quality: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def inspect_object(object_key: str, data: bytes) -> ManifestRecord:
    """Decode, hash and measure one object's bytes. Never raises for bad content."""
    digest = sha256_hex(data)
    decoded = decode_image(data)
    if not isinstance(decoded, DecodedImage):
        return ManifestRecord(
            object_key=object_key,
            bytes=len(data),
            sha256=digest,
            status=decoded.status,
            error=decoded.error,
            format=decoded.format,
        )
    q = quality_signals(decoded.image)
    phash, phash_mirror = perceptual_hashes(decoded.image)
    return ManifestRecord(
        object_key=object_key,
        bytes=len(data),
        sha256=digest,
        status=STATUS_OK,
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        mode=decoded.mode,
        exif_datetime=decoded.exif_datetime,
        camera_make=decoded.camera_make,
        camera_model=decoded.camera_model,
        phash=phash,
        phash_mirror=phash_mirror,
        blur_variance=q.blur_variance,
        brightness=q.brightness,
        contrast=q.contrast,
        entropy=q.entropy,
        aspect_ratio=q.aspect_ratio,
        jpeg_quality=decoded.jpeg_quality,
    )


def inspect_header(object_key: str, size: int, prefix: bytes, max_bytes: int) -> ManifestRecord | None:
    """The record of an object that its listed `size` and first bytes (`prefix`, the object being
    longer) already settle, or None when it must be read whole: not an image or an unsupported
    format (unsupported), a header over the pixel limit or a size over `max_bytes` (too_large).
    Such objects are never read whole, so their sha256 is left empty."""
    failure = sniff_image(prefix)
    if failure is None and size > max_bytes:
        failure = DecodeFailure(STATUS_TOO_LARGE, f"object is {size} bytes, over the limit of {max_bytes} bytes")
    if failure is None:
        return None
    return ManifestRecord(
        object_key=object_key, bytes=size, sha256="", status=failure.status, error=failure.error, format=failure.format
    )
