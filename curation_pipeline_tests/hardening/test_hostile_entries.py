"""Hostile file-system entries and hostile sizes in a drop or a query folder: odd names, symlink
loops, dangling links, named pipes and sockets, huge files, huge images. Each listed object gets a
manifest row with a status and a readable error; nothing hangs, nothing fails the partition, and
memory stays bounded whatever the object's size."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation_pipeline.core.ids import image_id_for

STATUSES = {"ok", "empty", "corrupt", "unsupported", "too_large", "unreadable"}


def _jpeg(seed: int = 0, w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _unblock_fifos(folder: Path) -> None:
    """Open every FIFO under `folder` for writing and close it: a reader stuck in open() gets EOF."""
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            os.close(fd)


def _run_with_timeout(fn, folder: Path, seconds: float = 30.0):
    """fn() in a thread; fails the test (instead of hanging the suite) if it blocks longer."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _unblock_fifos(folder)
        thread.join(10)
        pytest.fail(f"blocked for more than {seconds} s (a FIFO opened for reading?)")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _manifest(database_url: str, folder, drop: str = "d", store=None) -> tuple[dict, dict[str, tuple[str, str]]]:
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.steps.manifest import build_manifest

    catalog = Catalog(database_url)
    catalog.register_drop(drop, str(folder))
    stats = _run_with_timeout(
        lambda: build_manifest(catalog, store or LocalImageStore(), str(folder), drop), Path(os.fsdecode(folder))
    )
    with catalog.connection() as conn:
        rows = conn.execute("SELECT object_key, status, error FROM images WHERE drop_key = %s", (drop,)).fetchall()
    for _, status, error in rows:
        assert status in STATUSES and (status == "ok" or error)
    return stats, {key: (status, error) for key, status, error in rows}


# ---- names that are not UTF-8 -------------------------------------------------------------------


def test_image_id_for_never_raises_and_keeps_existing_ids():
    import hashlib

    expected = int.from_bytes(hashlib.sha256("d\x00a/b ü.jpg".encode()).digest()[:8], "big") >> 1
    assert image_id_for("d", "a/b ü.jpg") == expected  # ids of ordinary keys are unchanged
    for key in ("bad_\udcff\udcfe.jpg", "\ud800", "\udfff\ud800", "\x00"):
        value = image_id_for("d", key)
        assert 0 <= value < 2**63 and value == image_id_for("d", key)
    assert image_id_for("d", "\udcff") != image_id_for("d", "\\xff")


def test_a_non_utf8_file_name_gets_a_row_and_reads_back(tmp_path, database_url):
    from curation_pipeline.resources.image_store import LocalImageStore

    drop = tmp_path / "drop"
    drop.mkdir()
    bad, good = _jpeg(1), _jpeg(2)
    with open(os.path.join(os.fsencode(drop), b"bad_\xff\xfe.jpg"), "wb") as f:
        f.write(bad)
    (drop / "good.jpg").write_bytes(good)
    stats, rows = _manifest(database_url, drop)
    key = "bad_\\xff\\xfe.jpg"  # the bytes kept losslessly as escapes, with a literal backslash
    assert rows == {key: ("ok", None), "good.jpg": ("ok", None)}
    assert stats["valid_images"] == 2
    store = LocalImageStore()
    assert store.read_bytes(str(drop), key) == bad
    assert store.read_uri(store.object_uri(str(drop), key)) == bad


# ---- symlinks -----------------------------------------------------------------------------------


def test_symlink_loops_get_an_unreadable_row_and_the_rest_is_ingested(tmp_path, database_url):
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    os.symlink("loop.jpg", tmp_path / "loop.jpg")  # ln -s loop loop
    os.symlink("b.jpg", tmp_path / "a.jpg")  # a -> b -> a
    os.symlink("a.jpg", tmp_path / "b.jpg")
    stats, rows = _manifest(database_url, tmp_path)
    assert rows["good.jpg"] == ("ok", None)
    for key in ("loop.jpg", "a.jpg", "b.jpg"):
        status, error = rows[key]
        assert status == "unreadable" and "symlink loop" in error, rows[key]
    assert stats["objects_listed"] == 4 and stats["valid_images"] == 1


def test_a_dangling_symlink_gets_an_unreadable_row(tmp_path, database_url):
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    os.symlink("missing.jpg", tmp_path / "dangling.jpg")
    _, rows = _manifest(database_url, tmp_path)
    assert rows["good.jpg"] == ("ok", None)
    status, error = rows["dangling.jpg"]
    assert status == "unreadable" and "dangling symlink" in error


# ---- special files ------------------------------------------------------------------------------


def test_a_fifo_and_a_socket_get_unsupported_rows_and_are_never_opened(tmp_path, database_url, monkeypatch):
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    os.mkfifo(tmp_path / "pipe.jpg")
    monkeypatch.chdir(tmp_path)  # AF_UNIX paths are limited to ~100 bytes: bind a relative name
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.jpg")
    try:
        _, rows = _manifest(database_url, tmp_path)
    finally:
        sock.close()
    assert rows["good.jpg"] == ("ok", None)
    assert rows["pipe.jpg"] == ("unsupported", "not a regular file (named pipe)")
    assert rows["sock.jpg"] == ("unsupported", "not a regular file (socket)")


def test_a_device_file_gets_an_unsupported_row(tmp_path, database_url):
    try:
        os.mknod(tmp_path / "null.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here: {exc}")
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    _, rows = _manifest(database_url, tmp_path)
    assert rows["null.jpg"] == ("unsupported", "not a regular file (character device)")
    assert rows["good.jpg"] == ("ok", None)


def test_reads_refuse_a_file_replaced_by_a_fifo_after_listing(tmp_path, database_url):
    """The listing saw a regular file; by the time it is read it is a named pipe. The read must
    not block: it opens without waiting for a writer and checks the opened file is regular."""
    from curation_pipeline.resources.image_store import LocalImageStore

    (tmp_path / "good.jpg").write_bytes(_jpeg())
    (tmp_path / "swapped.jpg").write_bytes(_jpeg(3))

    class Swapping(LocalImageStore):
        def list_objects(self, location):
            listed = list(super().list_objects(location))
            (tmp_path / "swapped.jpg").unlink()
            os.mkfifo(tmp_path / "swapped.jpg")
            return iter(listed)

    _, rows = _manifest(database_url, tmp_path, store=Swapping())
    assert rows["good.jpg"] == ("ok", None)
    status, error = rows["swapped.jpg"]
    assert status == "unsupported" and "not a regular file (named pipe)" in error
    store = LocalImageStore()
    with pytest.raises(OSError, match="not a regular file"):
        _run_with_timeout(lambda: store.read_bytes(str(tmp_path), "swapped.jpg"), tmp_path)
    with pytest.raises(OSError, match="not a regular file"):
        _run_with_timeout(lambda: store.read_uri(store.object_uri(str(tmp_path), "swapped.jpg")), tmp_path)


# ---- huge objects: memory stays bounded ---------------------------------------------------------


def _peak_rss_run(script: str, **env) -> dict:
    """Run `script` in a fresh interpreter; it prints one JSON line. Adds the child's peak RSS (MB)."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a child forked
    # from a large pytest process would report the parent's size; VmHWM belongs to the new image.
    code = textwrap.dedent(script) + textwrap.dedent("""
        with open("/proc/self/status") as _status:
            _hwm = next(line for line in _status if line.startswith("VmHWM:"))
        OUT["peak_mb"] = int(_hwm.split()[1]) / 1024
        print(json.dumps(OUT))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_MANIFEST_SCRIPT = """
    import json, os
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.steps.manifest import build_manifest
    catalog = Catalog(os.environ["T_DB"])
    catalog.register_drop("huge", os.environ["T_DROP"])
    build_manifest(catalog, LocalImageStore(), os.environ["T_DROP"], "huge")
    with catalog.connection() as conn:
        rows = conn.execute("SELECT object_key, status, error, sha256 FROM images").fetchall()
    OUT = {"rows": {k: [s, e, h] for k, s, e, h in rows}}
"""


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    )


def test_huge_objects_are_classified_from_their_header_without_being_read(tmp_path, database_url):
    """A sparse 2 GiB text file is `unsupported` and a 600 MB 'PNG' is `too_large` (byte cap), a
    PNG header claiming 3.6 gigapixels is `too_large` (pixel limit): none is read whole, so the
    process never holds more than a small prefix of any of them."""
    from curation_pipeline.resources.image_store import MAX_OBJECT_BYTES

    with open(tmp_path / "huge.jpg", "wb") as f:
        f.write(b"hello, I am not an image\n" * 10)
        f.truncate(2 << 30)
    with open(tmp_path / "big.png", "wb") as f:  # a plausible header, then more bytes than the cap
        f.write(_png_header(4000, 3000))
        f.truncate(MAX_OBJECT_BYTES + (64 << 20))
    with open(tmp_path / "bomb.png", "wb") as f:
        f.write(_png_header(60_000, 60_000))
        f.truncate(8 << 20)
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    out = _peak_rss_run(_MANIFEST_SCRIPT, T_DB=database_url, T_DROP=str(tmp_path))
    rows = out["rows"]
    assert rows["good.jpg"][0] == "ok"
    assert rows["huge.jpg"][0] == "unsupported" and "not a recognised image" in rows["huge.jpg"][1]
    assert rows["big.png"][0] == "too_large" and "bytes" in rows["big.png"][1]
    assert rows["bomb.png"][0] == "too_large" and "pixels" in rows["bomb.png"][1]
    assert out["peak_mb"] < 600, out["peak_mb"]  # the file is 2048 MB; reading it whole peaked at ~2200


def test_one_110_megapixel_png_decodes_in_bounded_memory(tmp_path):
    """A palette PNG with transparency, 11000 x 10000: RGBA compositing at full size peaked at
    ~1.85 GB. Decoding now reduces to a bounded working size before any conversion."""
    img = Image.new("P", (11_000, 10_000), 3)
    img.putpalette([i % 256 for i in range(768)])
    rng = np.random.default_rng(0)
    for k in range(8):
        img.paste(Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8), "L").convert("P"), (k * 1200, k * 1100))
    path = tmp_path / "big.png"
    img.save(path, transparency=3, compress_level=1)
    del img
    out = _peak_rss_run(
        """
        import json
        from curation_pipeline.core.manifest import inspect_object
        r = inspect_object("big.png", open(%r, "rb").read())
        OUT = {"status": r.status, "size": [r.width, r.height], "brightness": r.brightness}
    """
        % str(path)
    )
    assert out["status"] == "ok" and out["size"] == [11_000, 10_000]
    assert out["brightness"] > 0.9  # transparent background composited on white
    assert out["peak_mb"] < 500, out["peak_mb"]  # the stored image alone is 110 MB


# ---- retrieval queries --------------------------------------------------------------------------


@pytest.fixture
def ingested_drop(tmp_path, database_url):
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline_tests.conftest import make_small_drop
    from curation_pipeline_tests.steps.test_dedup import _ingest

    folder = tmp_path / "d"
    make_small_drop(folder)
    catalog = Catalog(database_url)
    _ingest(catalog, folder, "d", dedup=False)
    return catalog, folder


def test_a_corrupt_file_in_a_query_folder_is_skipped_with_a_warning(ingested_drop, tmp_path, caplog):
    from curation_pipeline.resources.embedders import OfflineEmbedder
    from curation_pipeline.steps.retrieve import RetrievalSpec, retrieve_similar

    catalog, folder = ingested_drop
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "q06.jpg").write_bytes((folder / "img_06.jpg").read_bytes())
    good = (folder / "img_04.jpg").read_bytes()
    (queries / "broken.jpg").write_bytes(good[: len(good) // 3])
    (queries / "notes.png").write_text("not an image")
    os.mkfifo(queries / "pipe.jpg")
    with caplog.at_level(logging.WARNING):
        out = _run_with_timeout(
            lambda: retrieve_similar(catalog, OfflineEmbedder(), "qf", RetrievalSpec(query_paths=(str(queries),), k=3)), queries
        )
    assert out["results"] == 3
    top = catalog.retrieval_items("qf")[0]
    assert top["object_key"] == "img_06.jpg" and top["similarity"] > 0.99
    warned = caplog.text
    assert "broken.jpg" in warned and "cannot decode" in warned
    assert "notes.png" in warned and "pipe.jpg" in warned and "not a regular file" in warned


def test_a_fifo_given_as_a_query_file_is_refused_without_blocking(ingested_drop, tmp_path, caplog):
    from curation_pipeline.resources.embedders import OfflineEmbedder
    from curation_pipeline.steps.retrieve import RetrievalSpec, retrieve_similar

    catalog, folder = ingested_drop
    fifo = tmp_path / "query.jpg"
    os.mkfifo(fifo)
    spec = RetrievalSpec(query_paths=(str(fifo), str(folder / "img_05.jpg")), k=2)
    with caplog.at_level(logging.WARNING):
        out = _run_with_timeout(lambda: retrieve_similar(catalog, OfflineEmbedder(), "qp", spec), tmp_path)
    assert out["results"] == 2 and catalog.retrieval_items("qp")[0]["object_key"] == "img_05.jpg"
    assert "query.jpg" in caplog.text and "not a regular file (named pipe)" in caplog.text
    with pytest.raises(ValueError, match="no usable query image") as err:
        _run_with_timeout(
            lambda: retrieve_similar(catalog, OfflineEmbedder(), "qn", RetrievalSpec(query_paths=(str(fifo),), k=2)), tmp_path
        )
    assert "not a regular file" in str(err.value)


def test_a_fifo_as_a_query_similarity_image_is_refused_without_blocking(tmp_path, curation_env):
    """`--strategy query_similarity,queries=FILE` reads FILE in the curated_subset asset: a FIFO there
    fails the selection with a message naming it, instead of waiting for a writer forever."""
    from curation_pipeline.cli import main
    from curation_pipeline_tests.conftest import make_small_drop

    folder = tmp_path / "d"
    make_small_drop(folder)
    assert main(["--in-process", "ingest", str(folder), "--drop", "d"]) == 0
    fifo = tmp_path / "q.jpg"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as err:
        _run_with_timeout(
            lambda: main(
                ["--in-process", "select", "--budget", "2", "--name", "qs", "--strategy", f"query_similarity,queries={fifo}"]
            ),
            tmp_path,
            seconds=120,
        )
    assert "cannot read query image" in str(err.value.code) and "not a regular file" in str(err.value.code)
