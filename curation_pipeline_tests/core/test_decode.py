import io

import numpy as np
import pytest
from PIL import Image

from curation_pipeline.core.decode import (
    STATUS_CORRUPT,
    STATUS_EMPTY,
    STATUS_OK,
    STATUS_TOO_LARGE,
    STATUS_UNSUPPORTED,
    DecodedImage,
    decode_image,
)
from curation_pipeline.core.manifest import inspect_object
from curation_pipeline_tests.conftest import jpeg, photo_crops


def _save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_zero_byte_file_is_recorded_as_empty():
    r = inspect_object("a.jpg", b"")
    assert r.status == STATUS_EMPTY and "empty" in r.error and r.bytes == 0


def test_truncated_jpeg_is_recorded_as_corrupt():
    data = jpeg(photo_crops(1)[0])
    r = inspect_object("t.jpg", data[: len(data) // 3])
    assert r.status == STATUS_CORRUPT
    assert "decode" in r.error


def test_text_named_jpg_is_unsupported_with_reason():
    r = inspect_object("notes.jpg", b"hello, I am text\n" * 10)
    assert r.status == STATUS_UNSUPPORTED
    assert "not a recognised image" in r.error


def test_pixel_limit_refuses_oversized_images():
    data = _save(Image.new("L", (400, 300)), "PNG")
    out = decode_image(data, max_pixels=100_000)
    assert out.status == STATUS_TOO_LARGE and "120000 pixels" in out.error


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA"])
def test_unusual_modes_decode_to_rgb(mode):
    img = photo_crops(1)[0].convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    out = decode_image(_save(img, fmt))
    assert isinstance(out, DecodedImage) and out.image.mode == "RGB" and out.mode == mode


def test_16_bit_png_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    img16 = Image.fromarray(arr)  # uint16 -> mode I;16
    assert img16.mode.startswith("I")
    out = decode_image(_save(img16, "PNG"))
    assert isinstance(out, DecodedImage)
    grey = np.asarray(out.image.convert("L"))
    assert grey.min() < 10 and grey.max() > 245


def test_exif_orientation_applied_and_exif_fields_read():
    img = Image.new("RGB", (80, 40), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    exif[0x010F] = "Acme"
    exif[0x0110] = "Rig 7"
    exif.get_ifd(0x8769)[0x9003] = "2026:10:01 12:34:56"
    out = decode_image(_save(img, "JPEG", exif=exif))
    assert isinstance(out, DecodedImage)
    assert (out.width, out.height) == (40, 80)
    assert out.camera_make == "Acme" and out.camera_model == "Rig 7"
    assert out.exif_datetime.isoformat() == "2026-10-01T12:34:56"


def test_valid_record_has_hashes_and_quality():
    r = inspect_object("ok.jpg", jpeg(photo_crops(1)[0]))
    assert r.status == STATUS_OK and r.error is None
    assert len(r.sha256) == 64 and r.phash is not None
    assert 0 < r.brightness < 1 and r.blur_variance > 0 and r.entropy > 0


@pytest.mark.parametrize("top", [1.0, 1000.0])
def test_float_tiff_is_scaled_not_black(top):
    """Mode F (32-bit float) TIFFs: values in [0, 1] are scaled by 255, other ranges min-max."""
    arr = np.linspace(0.0, top, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = decode_image(_save(Image.fromarray(arr, "F"), "TIFF"))
    assert isinstance(out, DecodedImage) and out.mode == "F" and out.image.mode == "RGB"
    grey = np.asarray(out.image.convert("L"), dtype=np.float64)
    assert grey.min() < 5 and grey.max() > 250 and 110 < grey.mean() < 145
    assert inspect_object("f.tif", _save(Image.fromarray(arr, "F"), "TIFF")).brightness > 0.4


def test_images_over_the_working_size_decode_reduced_but_report_full_size():
    """Over WORK_PIXELS the decoded image is reduced (bounded memory) before conversion and EXIF
    rotation; width/height stay the full size and the quality signals stay close to a full-size
    decode's."""
    from curation_pipeline.core.decode import WORK_PIXELS
    from curation_pipeline.core.quality import quality_signals

    y, x = np.mgrid[0:3000, 0:6000]
    grey = ((x // 40 + y // 40) % 2 * 160 + 40).astype(np.uint8)  # a checkerboard: 18 Mpx
    pal = Image.fromarray(grey, "L").convert("P")
    out = decode_image(_save(pal, "PNG", transparency=int(np.asarray(pal)[0, 0])))
    assert isinstance(out, DecodedImage) and (out.width, out.height) == (6000, 3000) and out.mode == "P"
    assert out.image.mode == "RGB" and out.image.width * out.image.height <= WORK_PIXELS
    assert out.image.size == (3000, 1500)  # factor 2, aspect kept
    assert np.asarray(out.image).max() == 255  # transparent squares composited on white
    full = decode_image(_save(pal, "PNG", transparency=int(np.asarray(pal)[0, 0])), work_pixels=10**9)
    reduced_q, full_q = quality_signals(out.image), quality_signals(full.image)
    assert abs(reduced_q.brightness - full_q.brightness) < 0.01 and abs(reduced_q.contrast - full_q.contrast) < 0.02

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1)).resize((6000, 4000))
    out = decode_image(_save(rgb, "JPEG", exif=exif.tobytes()))
    assert isinstance(out, DecodedImage) and (out.width, out.height) == (4000, 6000)
    assert out.image.height > out.image.width and out.image.width * out.image.height <= WORK_PIXELS
