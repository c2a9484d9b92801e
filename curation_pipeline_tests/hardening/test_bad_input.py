"""Hostile and odd inputs on the manifest and decode path: every object gets a row with a status
and a readable reason, nothing raises, nothing valid is lost."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from curation_pipeline.core.manifest import inspect_object
from curation_pipeline.core.quality import quality_flags
from curation_pipeline.resources.embedders import OfflineEmbedder

STATUSES = {"ok", "empty", "corrupt", "unsupported", "too_large", "unreadable"}


def _jpeg(w=64, h=48, seed=0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, **save)
    return buf.getvalue()


SEEDS = [_jpeg(), _jpeg(seed=1, progressive=True)]
for fmt in ("PNG", "GIF", "WEBP", "BMP", "TIFF"):
    b = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(b, format=fmt)
    SEEDS.append(b.getvalue())


def _check(record):
    assert record.status in STATUSES
    assert record.sha256 and len(record.sha256) == 64
    if record.status != "ok":
        assert record.error and len(record.error) < 2000  # a readable reason, not a dump
    else:
        assert record.width >= 1 and record.height >= 1 and record.phash is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    cuts=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=12),
    truncate=st.integers(0, 5000),
)
def test_mutated_images_never_raise(seed, cuts, truncate):
    data = bytearray(SEEDS[seed])
    for pos, value in cuts:  # flip bytes anywhere, headers included
        if data:
            data[pos % len(data)] = value
    if truncate:
        data = data[: max(0, len(data) - truncate)]
    _check(inspect_object("fuzz.bin", bytes(data)))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(data):
    _check(inspect_object("random.jpg", data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's calling card)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    record = inspect_object("bomb.png", _png_header_only(60_000, 60_000))
    assert record.status == "too_large", record
    assert "3600000000" in record.error.replace(",", "").replace("_", "").replace(" ", "") or "pixels" in record.error


def test_huge_exif_and_extreme_sizes_are_valid_images():
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 kB EXIF block
    big_exif = _jpeg(exif=exif.tobytes())
    assert inspect_object("exif.jpg", big_exif).status == "ok"
    tiny = inspect_object("1x1.png", _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))
    strip = inspect_object("strip.png", _encode(Image.new("L", (30_000, 20), 90), "PNG"))
    assert tiny.status == "ok" and (tiny.width, tiny.height) == (1, 1)
    assert strip.status == "ok" and (strip.width, strip.height) == (30_000, 20)
    assert "tiny" in quality_flags({"min_side": 1, "blur_variance": tiny.blur_variance, "brightness": tiny.brightness})
    assert "odd_aspect" in quality_flags({"aspect_ratio": strip.aspect_ratio})
    # and both still embed: the offline model squashes any size to its 64 x 64 input
    vecs = OfflineEmbedder().embed_images([Image.new("RGB", (1, 1), (200, 10, 10)), Image.new("L", (30_000, 20), 90)])
    assert vecs.shape == (2, 448) and np.isfinite(vecs).all()


def _encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name",
    [
        "spaces in name.jpg",
        "ünïcödé 🐍.jpg",
        "tab\tnewline\nbell\x07.jpg",
        "<script>alert(1)<\\script>.jpg",
        "quote'\"semicolon;--.jpg",
    ],
)
def test_odd_names_are_data(tmp_path, database_url, name):
    """Names with control characters, markup or SQL punctuation go through listing, manifest and
    the database unchanged (bound parameters), and come back out byte for byte."""
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.steps.manifest import build_manifest

    (tmp_path / name).write_bytes(_jpeg())
    catalog = Catalog(database_url)
    catalog.register_drop("odd", str(tmp_path))
    build_manifest(catalog, LocalImageStore(), str(tmp_path), "odd")
    with catalog.connection() as conn:
        rows = conn.execute("SELECT object_key, status FROM images WHERE drop_key = 'odd'").fetchall()
    assert rows == [(name, "ok")]


def test_a_file_that_vanishes_after_listing_is_recorded_not_fatal(tmp_path, database_url):
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.steps.manifest import build_manifest

    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(seed=i))

    class Vanishing(LocalImageStore):
        def read_bytes(self, location, key):
            if key == "1.jpg":
                (tmp_path / key).unlink(missing_ok=True)
            return super().read_bytes(location, key)

    catalog = Catalog(database_url)
    catalog.register_drop("v", str(tmp_path))
    stats = build_manifest(catalog, Vanishing(), str(tmp_path), "v")
    assert stats["valid_images"] == 2 and stats["by_status"].get("unreadable") == 1
    assert [f["object_key"] for f in catalog.failed_images("v")] == ["1.jpg"]
