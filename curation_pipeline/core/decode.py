"""Decoding untrusted image bytes into either a usable RGB image or a readable reason why not.

Nothing here raises for bad input: every failure becomes a `DecodeFailure` with a status and a
message that names the reason, so one corrupt object never fails a whole drop."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's default bomb limit (~89 Mpx warn, 2x that error) is global state; we pass our own limit
# explicitly and check it ourselves so the refusal is recorded with a clear reason.
MAX_PIXELS = 120_000_000
# Images over this many pixels are reduced by an integer box factor while they are decoded, before
# any mode conversion: decoding memory is then the stored image plus a bounded working copy (a
# 110 Mpx palette PNG with transparency peaked at 1.85 GB when composited at full size). Images up
# to this size decode exactly as before, so their quality signals and hashes are unchanged.
WORK_PIXELS = 16_000_000
_BAND_PIXELS = 4_000_000  # rows converted at a time while reducing
# How much of an object is read first to identify it (`sniff_image`): headers of every supported
# format fit, except rare files with huge metadata before the image header, which are then read whole.
SNIFF_BYTES = 1 << 20

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
    mode: str  # mode as stored in the file (e.g. CMYK, P, I;16, F)
    exif_datetime: datetime | None
    camera_make: str | None
    camera_model: str | None
    jpeg_quality: int | None = None  # estimated from the quantisation tables (JPEG only)


# The IJG (libjpeg) standard luminance quantisation table, in natural order: JPEG encoders scale it
# by the quality setting, so a file's own table gives its quality back.
_IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def estimate_jpeg_quality(quantization: dict | None) -> int | None:
    """The IJG quality (1-100) a JPEG was saved at, from its luminance quantisation table (the
    inverse of libjpeg's scaling: scale = mean(q / standard) * 100; quality = (200 - scale) / 2
    above 50, 5000 / scale below). None without a table. Tables are compared as sets of values
    (PIL may hand them in zig-zag or natural order; the mean does not depend on it)."""
    if not quantization:
        return None
    table = quantization.get(0)
    if table is None or len(table) != 64:
        return None
    scale = 100.0 * float(np.mean(np.asarray(table, dtype=np.float64) / np.asarray(_IJG_LUMINANCE, dtype=np.float64)))
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(100, max(1, round(quality))))


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


_NOT_RECOGNISED = "not a recognised image file (content does not match any image format)"
# Leading bytes of the supported formats (MPO is JPEG). A prefix that starts like one of these but
# does not open is inconclusive (its header may reach past the prefix), never "unsupported".
_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
)


def _too_many_pixels(w: int, h: int, max_pixels: int) -> str:
    return f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"


def sniff_image(prefix: bytes, *, max_pixels: int = MAX_PIXELS) -> DecodeFailure | None:
    """What the first bytes of an object (a prefix of at least SNIFF_BYTES, the object itself
    being longer) already prove: a DecodeFailure (unsupported: not an image or an unsupported
    format; too_large: the header's pixel count is over the limit), or None when only reading the
    whole object can tell. Reads headers only, never pixel data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(prefix)) as img:
                fmt = img.format or "unknown"
                w, h = img.size
    except Image.DecompressionBombError as exc:
        return DecodeFailure(STATUS_TOO_LARGE, f"decompression bomb refused: {exc}")
    except UnidentifiedImageError:
        looks_like_image = prefix.startswith(_SIGNATURES) or (prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP")
        return None if looks_like_image else DecodeFailure(STATUS_UNSUPPORTED, _NOT_RECOGNISED)
    except Exception:  # noqa: BLE001 - a header cut by the prefix: let the full decode decide
        return None
    if fmt not in SUPPORTED_FORMATS:
        return DecodeFailure(STATUS_UNSUPPORTED, f"image format {fmt} is not supported", fmt)
    if w > 0 and h > 0 and w * h > max_pixels:
        return DecodeFailure(STATUS_TOO_LARGE, _too_many_pixels(w, h, max_pixels), fmt)
    return None


def _reduction(w: int, h: int, work_pixels: int) -> int:
    """The smallest integer factor that brings w x h within work_pixels (1: no reduction)."""
    factor = max(1, math.isqrt(max(0, w * h - 1) // max(1, work_pixels)))
    while math.ceil(w / factor) * math.ceil(h / factor) > work_pixels:
        factor += 1
    return factor


def _value_range(img: Image.Image) -> tuple[float, float]:
    """(min, max) of the finite values of a 16/32-bit integer or float image, a band at a time."""
    import numpy as np

    w, h = img.size
    rows = max(1, _BAND_PIXELS // max(1, w))
    lo, hi = math.inf, -math.inf
    for top in range(0, h, rows):
        arr = np.asarray(img.crop((0, top, w, min(h, top + rows))), dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def _is_high_depth(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def _to_rgb(img: Image.Image, value_range: tuple[float, float] | None) -> Image.Image:
    """RGB of an image of any mode: alpha composited on white, 16/32-bit integer grey scaled by
    its maximum, float grey (mode F) scaled by 255 when in [0, 1] and min-max otherwise.
    `value_range`: (min, max) of the whole image, for a band of it."""
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if _is_high_depth(img.mode):
        import numpy as np

        lo, hi = value_range or _value_range(img)
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
            if 0.0 <= lo and hi <= 1.0:
                arr = arr * 255.0
            elif hi > lo:
                arr = (arr - lo) * (255.0 / (hi - lo))
            else:
                arr = arr * (255.0 / hi) if hi > 0 else np.zeros_like(arr)
        else:
            # 16/32-bit grey: scale to 8 bit by the maximum instead of clipping everything to white
            arr = arr * (255.0 / (hi or 1.0))
        return Image.fromarray(np.clip(arr, 0, 255).astype("uint8"), "L").convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _reduce_to_rgb(img: Image.Image, factor: int) -> Image.Image:
    """RGB of `img` reduced by `factor` (box average), converted a band of rows at a time so no
    full-size converted copy ever exists."""
    w, h = img.size
    value_range = _value_range(img) if _is_high_depth(img.mode) else None
    out = Image.new("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
    rows = max(1, _BAND_PIXELS // max(1, w) // factor) * factor  # whole reduction boxes per band
    for top in range(0, h, rows):
        band = _to_rgb(img.crop((0, top, w, min(h, top + rows))), value_range)
        out.paste(band.reduce(factor), (0, top // factor))
    return out


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_image(
    data: bytes, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None, work_pixels: int = WORK_PIXELS
) -> DecodedImage | DecodeFailure:
    """Decode bytes into an RGB image. `draft_size`: for JPEG, let libjpeg decode at a reduced
    scale (1/2, 1/4, 1/8) that still covers draft_size x draft_size pixels, which is several
    times faster when the consumer (a model's input) is small. Images over `work_pixels` come back
    reduced to at most that many pixels (JPEG: mostly by libjpeg's scaled decode). width/height
    always report the full-resolution size."""
    if len(data) == 0:
        return DecodeFailure(STATUS_EMPTY, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                return DecodeFailure(STATUS_UNSUPPORTED, f"image format {fmt} is not supported", fmt)
            w, h = img.size
            if w <= 0 or h <= 0:
                return DecodeFailure(STATUS_CORRUPT, f"invalid dimensions {w}x{h}", fmt)
            if w * h > max_pixels:
                return DecodeFailure(STATUS_TOO_LARGE, _too_many_pixels(w, h, max_pixels), fmt)
            stored_mode = img.mode
            quality = estimate_jpeg_quality(getattr(img, "quantization", None)) if fmt == "JPEG" else None
            exif = img.getexif()
            orientation = exif.get(_EXIF_ORIENTATION, 1)
            full_w, full_h = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            if fmt in ("JPEG", "MPO") and (draft_size or w * h > work_pixels):
                factor = _reduction(w, h, work_pixels)
                size = (math.ceil(w / factor), math.ceil(h / factor))
                if draft_size:
                    size = (min(size[0], draft_size), min(size[1], draft_size))
                img.draft("RGB" if img.mode in ("RGB", "YCbCr") else img.mode, size)
            img.seek(0)
            img.load()  # forces the full decode: truncated files fail here
            factor = _reduction(img.width, img.height, work_pixels)
            if factor == 1:
                img = _to_rgb(ImageOps.exif_transpose(img), None)
            else:
                img = _reduce_to_rgb(img, factor)
                if orientation in _TRANSPOSE:
                    img = img.transpose(_TRANSPOSE[orientation])
    except Image.DecompressionBombError as exc:
        return DecodeFailure(STATUS_TOO_LARGE, f"decompression bomb refused: {exc}")
    except UnidentifiedImageError:
        return DecodeFailure(STATUS_UNSUPPORTED, _NOT_RECOGNISED)
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
        jpeg_quality=quality,
    )
