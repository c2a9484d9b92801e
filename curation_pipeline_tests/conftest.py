"""Shared fixtures: a real PostgreSQL + pgvector server (embedded, or $DATABASE_URL), a fresh
database per test, a throwaway CURATION_HOME, and small real-photo drops."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from curation_pipeline.demo_data import _crops, _sources
from curation_pipeline.resources.database import ThrowawayDatabase


@pytest.fixture(scope="session")
def pg_server_url():
    """A running server. $DATABASE_URL wins; otherwise an embedded server in a temp dir."""
    root = Path(tempfile.mkdtemp(prefix="curation-pg-"))
    db = ThrowawayDatabase(root / "pgdata", os.environ.get("DATABASE_URL"))
    try:
        yield db.url
    finally:
        db.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(pg_server_url):
    """A brand-new, empty database on the test server (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_server_url)
    params["dbname"] = name
    url = make_conninfo(**params)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def curation_env(tmp_path, monkeypatch, database_url):
    """CURATION_HOME and DATABASE_URL for code that reads the environment (CLI, default Definitions)."""
    home = tmp_path / "curation_home"
    home.mkdir()
    monkeypatch.setenv("CURATION_HOME", str(home))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    return home


def photo_crops(limit: int = 12) -> list[Image.Image]:
    """Distinct real-photo crops from the packaged sample images (textured ones only)."""
    out = []
    for _, path in _sources():
        photo = Image.open(path).convert("RGB")
        for crop in _crops(photo, 2, 3):
            if np.asarray(crop.convert("L"), dtype=np.float32).std() / 255.0 >= 0.08 and min(crop.size) >= 48:
                out.append(crop)
                break  # one crop per photograph keeps them clearly distinct
        if len(out) >= limit:
            break
    return out


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_small_drop(folder: Path, n_distinct: int = 8) -> dict:
    """A small drop: n distinct photos, 2 exact copies, 2 re-encoded copies, 3 bad files."""
    folder.mkdir(parents=True, exist_ok=True)
    crops = photo_crops(n_distinct)
    for i, crop in enumerate(crops):
        (folder / f"img_{i:02d}.jpg").write_bytes(jpeg(crop))
    (folder / "copy_of_00.jpg").write_bytes((folder / "img_00.jpg").read_bytes())
    (folder / "copy_of_01.jpg").write_bytes((folder / "img_01.jpg").read_bytes())
    small = crops[2].resize((crops[2].width * 2 // 3, crops[2].height * 2 // 3))
    (folder / "reencoded_02.jpg").write_bytes(jpeg(small, 55))
    (folder / "reencoded_03.jpg").write_bytes(jpeg(crops[3], 40))
    (folder / "zero.jpg").write_bytes(b"")
    good = (folder / "img_04.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "text.jpg").write_text("not an image")
    return {
        "distinct": len(crops),
        "files": len(crops) + 7,
        "bad": {"zero.jpg": "empty", "truncated.jpg": "corrupt", "text.jpg": "unsupported"},
        "duplicates": {
            "copy_of_00.jpg": "img_00.jpg",
            "copy_of_01.jpg": "img_01.jpg",
            "reencoded_02.jpg": "img_02.jpg",
            "reencoded_03.jpg": "img_03.jpg",
        },
    }


TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory):
    """A tiny open_clip architecture config and a checkpoint saved from it (seeded, no network)."""
    import json

    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny_clip")
    config = folder / "tiny-test-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip", pretrained=None)
    ckpt = folder / "tiny-test-clip.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return config, ckpt, model


@pytest.fixture(scope="session")
def tiny_clip_embedder(tiny_clip_files):
    from curation_pipeline.resources.embedders import OpenClipEmbedder

    config, ckpt, _ = tiny_clip_files
    return OpenClipEmbedder("tiny-test-clip", str(ckpt), model_config_path=str(config), device="cpu")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 over real HTTP on a free loopback port; code reaches it only through endpoint_url."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Settings for the test S3 server, with throwaway credentials in the environment (as boto3's
    chain would find real ones). Code under test gets the settings handed to it (`ImageStores(s3)`,
    a resource's `endpoint_url`); CURATION_S3_ENDPOINT_URL points at the server too, for code that
    builds its configuration from the environment (the CLI, the default Definitions)."""
    from curation_pipeline.resources.image_store import S3Settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("CURATION_S3_ENDPOINT_URL", s3_server)
    return S3Settings(endpoint_url=s3_server, region_name="us-east-1", max_attempts=3)


def new_bucket(settings, prefix: str = "b") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    settings.client().create_bucket(Bucket=name)
    return name


def upload_folder(settings, folder: Path, bucket: str, prefix: str) -> list[str]:
    client = settings.client()
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = prefix + path.relative_to(folder).as_posix()
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
    return keys
