"""The embedding step against a real PostgreSQL + pgvector: cache, streaming, bad inputs, models."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from curation_pipeline.core.manifest import inspect_object
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.image_store import LocalImageStore
from curation_pipeline.steps.embed import EmbedOptions, embed_drop, model_id_for
from curation_pipeline.steps.manifest import build_manifest
from curation_pipeline_tests.catalog_helpers import embedding_failures
from curation_pipeline_tests.conftest import jpeg, make_small_drop, photo_crops


def _save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width, height):
    """A PNG whose header claims width x height (a decompression bomb shape) with almost no data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


SMALL_BATCHES = EmbedOptions(batch_size=4, workers=2)


def _ingest(catalog, folder, key, embedder, options=SMALL_BATCHES):
    catalog.register_drop(key, str(folder))
    build_manifest(catalog, LocalImageStore(), str(folder), key)
    stats = embed_drop(catalog, embedder, key, options)
    catalog.publish_embeddings(key, stats["model"])
    return stats


def test_rerun_and_shared_content_hit_the_cache(tmp_path, database_url):
    catalog = Catalog(database_url)
    embedder = OfflineEmbedder()
    info = make_small_drop(tmp_path / "a")
    first = _ingest(catalog, tmp_path / "a", "a", embedder)
    # exact copies inside the drop are embedded once: distinct contents only
    assert first["computed"] == info["files"] - len(info["bad"]) - 2
    calls = embedder.images_computed
    again = _ingest(catalog, tmp_path / "a", "a", embedder)
    assert again["computed"] == 0 and embedder.images_computed == calls
    # another drop with the same bytes under other names costs no model time either
    (tmp_path / "b").mkdir()
    for i, src in enumerate(sorted((tmp_path / "a").glob("img_*.jpg"))):
        (tmp_path / "b" / f"renamed_{i}.jpg").write_bytes(src.read_bytes())
    other = _ingest(catalog, tmp_path / "b", "b", embedder)
    assert other["computed"] == 0 and embedder.images_computed == calls
    assert catalog.embedding_stats("b", first["model"])["rows"] == info["distinct"]


def test_a_crash_mid_drop_keeps_finished_batches(tmp_path, database_url):
    catalog = Catalog(database_url)
    embedder = OfflineEmbedder()
    make_small_drop(tmp_path / "d", n_distinct=10)
    real_forward = embedder._forward
    calls = {"n": 0}

    def failing_forward(items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_forward(items)

    embedder._forward = failing_forward
    catalog.register_drop("d", str(tmp_path / "d"))
    build_manifest(catalog, LocalImageStore(), str(tmp_path / "d"), "d")
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_drop(catalog, embedder, "d", EmbedOptions(batch_size=3, workers=2))
    model = model_id_for(embedder, EmbedOptions())
    with catalog.connection() as conn:
        cached = conn.execute("SELECT count(*) FROM embedding_cache WHERE model = %s", (model,)).fetchone()[0]
        visible = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert cached == 6 and visible == 0  # two committed batches; nothing half-published
    embedder._forward = real_forward
    resumed = embed_drop(catalog, embedder, "d", EmbedOptions(batch_size=3, workers=2))
    total_distinct = resumed["computed"] + cached
    assert resumed["computed"] > 0 and total_distinct == 10 + 2  # 10 photos + 2 re-encodes


def test_mixed_bad_inputs_give_a_vector_or_a_readable_error(tmp_path, database_url):
    folder = tmp_path / "mixed"
    folder.mkdir()
    base = photo_crops(1)[0]
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [base.convert("P"), base.rotate(90).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    palette_alpha = base.convert("RGBA")
    palette_alpha.putalpha(128)
    files = {
        "cmyk.jpg": _save(base.convert("CMYK"), "JPEG"),
        "grey16.png": _save(Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)), "PNG"),
        "palette_transparent.png": _save(palette_alpha.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
        "rotated.jpg": _save(base, "JPEG", exif=exif),
        "grey.jpg": _save(base.convert("L"), "JPEG"),
        "animated.gif": buf.getvalue(),
        "photo.webp": _save(base, "WEBP"),
        "bomb.png": _png_header_only(30_000, 30_000),
        "will_change.jpg": jpeg(base.rotate(180)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    catalog = Catalog(database_url)
    embedder = OfflineEmbedder()
    catalog.register_drop("mixed", str(folder))
    build_manifest(catalog, LocalImageStore(), str(folder), "mixed")
    (folder / "will_change.jpg").write_bytes(jpeg(base.rotate(90)))  # changes after listing, before embedding
    stats = embed_drop(catalog, embedder, "mixed", EmbedOptions(batch_size=3, workers=2))
    catalog.publish_embeddings("mixed", stats["model"])

    with catalog.connection() as conn:
        status = dict(conn.execute("SELECT object_key, status || ': ' || coalesce(error, '') FROM images").fetchall())
        embedded = {
            r[0] for r in conn.execute("SELECT i.object_key FROM embeddings e JOIN images i USING (image_id)").fetchall()
        }
    assert status["bomb.png"].startswith("too_large") and "exceeds" in status["bomb.png"]
    assert embedded == set(files) - {"bomb.png", "will_change.jpg"}
    failures = dict(embedding_failures(catalog, "mixed", stats["model"]))
    assert "changed since the manifest" in failures["will_change.jpg"]
    rows = catalog.embedding_stats("mixed", stats["model"])
    assert rows["max_norm_error"] < 1e-5 and rows["min_dim"] == rows["max_dim"] == embedder.dim


def test_rotated_photo_embeds_like_its_upright_twin(tmp_path, database_url):
    base = photo_crops(1)[0]
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated; viewers turn it upright
    stored = base.rotate(-90, expand=True)
    v_upright = OfflineEmbedder().embed_images([base])[0]
    rec = inspect_object("r.jpg", _save(stored, "JPEG", exif=exif, quality=95))
    assert (rec.width, rec.height) == base.size
    from curation_pipeline.core.decode import decode_image

    v_rot = OfflineEmbedder().embed_images([decode_image(_save(stored, "JPEG", exif=exif, quality=95)).image])[0]
    assert float(v_upright @ v_rot) > 0.97


def test_two_models_side_by_side(tmp_path, database_url, tiny_clip_embedder):
    catalog = Catalog(database_url)
    make_small_drop(tmp_path / "d")
    offline = _ingest(catalog, tmp_path / "d", "d", OfflineEmbedder())
    clip = _ingest(catalog, tmp_path / "d", "d", tiny_clip_embedder)
    assert offline["model"] != clip["model"]
    a = catalog.load_embeddings(["d"], offline["model"])
    b = catalog.load_embeddings(["d"], clip["model"])
    assert a.vectors.shape[1] == 448 and b.vectors.shape[1] == tiny_clip_embedder.dim
    assert sorted(a.image_ids.tolist()) == sorted(b.image_ids.tolist())
    for emb in (a, b):
        hits = catalog.nearest(emb.model, emb.vectors[:1], 1)[0]
        assert hits[0][0] == emb.image_ids[0] and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(LookupError, match="2 models"):
        catalog.load_embeddings(["d"])


def test_halfvec_storage_halves_the_vector_and_still_retrieves(tmp_path, database_url):
    catalog = Catalog(database_url)
    make_small_drop(tmp_path / "d")
    embedder = OfflineEmbedder()
    embedder.model_id = "offline:colour-layout-v2-half"  # a separate model id for the halfvec copy
    stats = _ingest(catalog, tmp_path / "d", "d", embedder, EmbedOptions(batch_size=4, workers=2, storage="halfvec"))
    full = _ingest(catalog, tmp_path / "d", "d", OfflineEmbedder())
    with catalog.connection() as conn:
        half_bytes, n_half = conn.execute(
            "SELECT avg(pg_column_size(embedding_half)), count(*) FROM embeddings WHERE model = %s AND embedding IS NULL",
            (stats["model"],),
        ).fetchone()
        full_bytes = conn.execute(
            "SELECT avg(pg_column_size(embedding)) FROM embeddings WHERE model = %s", (full["model"],)
        ).fetchone()[0]
    assert n_half == stats["valid_images"] and float(half_bytes) < 0.55 * float(full_bytes)
    half = catalog.load_embeddings(["d"], stats["model"])
    ref = catalog.load_embeddings(["d"], full["model"])
    assert np.abs(half.vectors - ref.vectors).max() < 2e-3
    hit = catalog.nearest(stats["model"], ref.vectors[2], 1)[0][0]
    assert hit[0] == ref.image_ids[2] and hit[1] > 0.999
    with pytest.raises(ValueError, match="stored as halfvec"):
        catalog.register_model(stats["model"], "offline", 448, "x", preprocess="", storage="vector")


def test_preprocessing_is_part_of_the_model_identity(tmp_path, database_url):
    catalog = Catalog(database_url)
    make_small_drop(tmp_path / "d")
    drafted = _ingest(catalog, tmp_path / "d", "d", OfflineEmbedder())
    full = _ingest(catalog, tmp_path / "d", "d", OfflineEmbedder(), EmbedOptions(batch_size=4, workers=1, draft=False))
    assert full["model"] == drafted["model"] + "+nodraft" and full["computed"] > 0
    with pytest.raises(ValueError, match="preprocessing"):
        catalog.register_model(drafted["model"], "offline", 448, "x", preprocess="something-else")


def test_process_and_thread_loaders_give_identical_vectors(tmp_path, database_url, tiny_clip_embedder):
    """Loader processes (forkserver/spawn, never fork) receive the picklable preprocessor and
    produce exactly what loader threads produce, for the offline and an open_clip model."""
    make_small_drop(tmp_path / "d")
    for embedder in (OfflineEmbedder(), tiny_clip_embedder):
        results = {}
        for kind in ("threads", "processes"):
            catalog = Catalog(database_url)
            with catalog.connection() as conn:  # cold cache for each loader kind
                conn.execute("DELETE FROM embeddings")
                conn.execute("DELETE FROM embedding_cache")
            stats = _ingest(
                catalog, tmp_path / "d", "d", embedder, EmbedOptions(batch_size=4, workers=2, loader=kind, loader_chunk=3)
            )
            assert stats["loader"] == kind and stats["computed"] > 0
            results[kind] = catalog.load_embeddings(["d"], stats["model"])
        assert results["threads"].image_ids.tolist() == results["processes"].image_ids.tolist()
        assert np.allclose(results["threads"].vectors, results["processes"].vectors, atol=1e-6)
