"""Decoding untrusted image bytes into either a usable RGB image or a readable reason why not.

Nothing here raises for bad input: every failure becomes a `DecodeFailure` with a status and a
message that names the reason, so one corrupt object never fails a whole drop."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import datetime

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's default bomb limit (~89 Mpx warn, 2x that error) is global state; we pass our own limit
# explicitly and check it ourselves so the refusal is recorded with a clear reason.
MAX_PIXELS = 120_000_000

STATUS_OK = "ok"
STATUS_EMPTY = "empty"
STATUS_CORRUPT = "corrupt"
STATUS_UNSUPPORTED = "unsupported"
STATUS_TOO_LARGE = "too_large"
STATUS_UNREADABLE = "unreadable"

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})

_EXIF_DATETIME_ORIGINAL = 0x9003
_EXIF_DATETIME = 0x0132
_EXIF_MAKE = 0x010F
_EXIF_MODEL = 0x0110
_EXIF_IFD = 0x8769
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied, first frame of animations
    format: str
    width: int  # after EXIF orientation
    height: int
    mode: str  # mode as stored in the file (e.g. CMYK, P, I;16)
    exif_datetime: datetime | None
    camera_make: str | None
    camera_model: str | None


@dataclass(frozen=True)
class DecodeFailure:
    status: str
    error: str
    format: str | None = None


def _clean_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).replace("\x00", "").strip()
    return text[:200] or None


def _parse_exif_datetime(value: object) -> datetime | None:
    text = _clean_text(value)
    if not text:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M"):
        try:
            return datetime.strptime(text[:19], fmt)
        except ValueError:
            continue
    return None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None
                 ) -> DecodedImage | DecodeFailure:
    """Decode bytes into an RGB image. `draft_size`: for JPEG, let libjpeg decode at a reduced
    scale (1/2, 1/4, 1/8) that still covers draft_size x draft_size pixels, which is several
    times faster when the consumer (a model's input) is small. width/height always report the
    full-resolution size."""
    if len(data) == 0:
        return DecodeFailure(STATUS_EMPTY, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                return DecodeFailure(STATUS_UNSUPPORTED, f"image format {fmt} is not supported", fmt)
            w, h = img.size
            if w <= 0 or h <= 0:
                return DecodeFailure(STATUS_CORRUPT, f"invalid dimensions {w}x{h}", fmt)
            if w * h > max_pixels:
                return DecodeFailure(
                    STATUS_TOO_LARGE, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}", fmt
                )
            stored_mode = img.mode
            exif = img.getexif()
            full_w, full_h = (h, w) if exif.get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)
            if draft_size and fmt in ("JPEG", "MPO"):
                img.draft("RGB" if img.mode in ("RGB", "YCbCr") else img.mode, (draft_size, draft_size))
            img.seek(0)
            img.load()  # forces the full decode: truncated files fail here
            img = ImageOps.exif_transpose(img)
            if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba).convert("RGB")
            elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey: scale to 8 bit instead of clipping everything to white.
                import numpy as np

                arr = np.asarray(img, dtype=np.float64)
                top = arr.max() or 1.0
                img = Image.fromarray((arr * (255.0 / top)).astype("uint8"), "L").convert("RGB")
            elif img.mode != "RGB":
                img = img.convert("RGB")
    except Image.DecompressionBombError as exc:
        return DecodeFailure(STATUS_TOO_LARGE, f"decompression bomb refused: {exc}")
    except UnidentifiedImageError:
        return DecodeFailure(STATUS_UNSUPPORTED, "not a recognised image file (content does not match any image format)")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return DecodeFailure(STATUS_CORRUPT, f"cannot decode image: {exc}")
    except Exception as exc:  # noqa: BLE001 - a hostile file must never fail the partition
        return DecodeFailure(STATUS_CORRUPT, f"cannot decode image: {type(exc).__name__}: {exc}")

    exif_ifd = {}
    try:
        exif_ifd = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001 - malformed EXIF is metadata loss, not an image failure
        pass
    return DecodedImage(
        image=img,
        format=fmt,
        width=full_w,
        height=full_h,
        mode=stored_mode,
        exif_datetime=_parse_exif_datetime(exif_ifd.get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME)),
        camera_make=_clean_text(exif.get(_EXIF_MAKE)),
        camera_model=_clean_text(exif.get(_EXIF_MODEL)),
    )
