"""Dedup across drops against a real PostgreSQL + pgvector: order, models, re-ingest, concurrency."""

import threading
import time

from PIL import Image

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.image_store import LocalImageStore
from curation_pipeline.steps.dedup import dedup_drop
from curation_pipeline.steps.embed import EmbedOptions, embed_drop
from curation_pipeline.steps.manifest import build_manifest
from curation_pipeline_tests.conftest import jpeg, make_small_drop

TH = DedupThresholds()


OPTIONS = EmbedOptions(batch_size=8, workers=2)


def _ingest(catalog, folder, key, options=OPTIONS, dedup=True):
    catalog.register_drop(key, str(folder))
    build_manifest(catalog, LocalImageStore(), str(folder), key)
    stats = embed_drop(catalog, OfflineEmbedder(), key, options)
    catalog.publish_embeddings(key, stats["model"])
    if dedup:
        return dedup_drop(catalog, key, catalog.load_embeddings([key], stats["model"]), TH)
    return stats


def _second_drop(first, second):
    second.mkdir()
    (second / "again_05.jpg").write_bytes((first / "img_05.jpg").read_bytes())
    (second / "again_06_small.jpg").write_bytes(jpeg(Image.open(first / "img_06.jpg").reduce(2), 70))
    (second / "fresh.jpg").write_bytes(jpeg(Image.open(first / "img_07.jpg").rotate(90, expand=True)))


def _two_drops(tmp_path, first="one", second="two", catalog=None):
    """Drop `first` (a small drop) and drop `second` (copies and a fresh image); ingested in that
    order when a catalog is given."""
    make_small_drop(tmp_path / first)
    _second_drop(tmp_path / first, tmp_path / second)
    if catalog is not None:
        _ingest(catalog, tmp_path / first, first)
        _ingest(catalog, tmp_path / second, second)
    return tmp_path / first, tmp_path / second


def _pairs(catalog):
    return {(g["representative"]["object_key"], m["object_key"]) for g in catalog.duplicate_groups() for m in g["members"]}


def _violations(catalog, key, model="offline:colour-layout-v2"):
    return catalog.dedup_violations(key, model, TH.min_cosine, TH.max_hamming)


def test_drops_deduplicated_out_of_arrival_order_still_find_each_other(tmp_path, database_url):
    catalog = Catalog(database_url)
    _two_drops(tmp_path)
    catalog.register_drop("one", str(tmp_path / "one"))
    catalog.register_drop("two", str(tmp_path / "two"))
    _ingest(catalog, tmp_path / "two", "two")  # the later arrival runs first
    _ingest(catalog, tmp_path / "one", "one")
    pairs = _pairs(catalog)
    assert ("again_05.jpg", "img_05.jpg") in pairs and ("again_06_small.jpg", "img_06.jpg") in pairs
    assert _violations(catalog, "one")["orphaned_members"] == 0


def test_hash_tiers_see_drops_embedded_with_another_model(tmp_path, database_url):
    catalog = Catalog(database_url)
    _two_drops(tmp_path)
    _ingest(catalog, tmp_path / "one", "one")
    _ingest(catalog, tmp_path / "two", "two", options=EmbedOptions(batch_size=8, workers=2, draft=False))
    assert ("img_05.jpg", "again_05.jpg") in _pairs(catalog)


def test_reingesting_an_earlier_drop_repairs_later_members(tmp_path, database_url):
    catalog = Catalog(database_url)
    _two_drops(tmp_path, catalog=catalog)
    assert ("img_05.jpg", "again_05.jpg") in _pairs(catalog)
    (tmp_path / "one" / "img_05.jpg").unlink()
    rebuilt = build_manifest(catalog, LocalImageStore(), str(tmp_path / "one"), "one")  # re-ingest without img_05
    assert rebuilt["rows_removed_as_vanished"] == 1
    v = _violations(catalog, "two")
    assert v["orphaned_members"] == 0
    with catalog.connection() as conn:
        row = conn.execute(
            "SELECT is_representative FROM dedup_members m JOIN images i USING (image_id) WHERE i.object_key = 'again_05.jpg'"
        ).fetchone()
    assert row == (True,)  # promoted, not lost: it is selectable again
    assert all(g["representative"]["object_key"] for g in catalog.duplicate_groups())  # no KeyError
    # re-running drop two's dedup is consistent again
    dedup_drop(catalog, "two", catalog.load_embeddings(["two"], "offline:colour-layout-v2"), TH)
    assert _violations(catalog, "two") == {
        "unassigned": 0,
        "orphaned_members": 0,
        "below_threshold": 0,
        "malformed_representatives": 0,
    }


def test_rededuplicating_an_earlier_drop_keeps_its_representatives(tmp_path, database_url):
    catalog = Catalog(database_url)
    _two_drops(tmp_path, catalog=catalog)
    before = _pairs(catalog)
    stats = dedup_drop(catalog, "one", catalog.load_embeddings(["one"], "offline:colour-layout-v2"), TH)
    assert _pairs(catalog) == before and stats["repaired_members_elsewhere"] == 0


def test_dedup_of_two_drops_is_serialised(tmp_path, database_url):
    catalog = Catalog(database_url)
    make_small_drop(tmp_path / "one")
    _ingest(catalog, tmp_path / "one", "one", dedup=False)
    emb = catalog.load_embeddings(["one"], "offline:colour-layout-v2")
    result = {}
    with catalog.dedup_lock():  # another drop's dedup holds the lock
        worker = threading.Thread(target=lambda: result.update(dedup_drop(catalog, "one", emb, TH)))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # waiting, not running alongside
    worker.join(timeout=60)
    assert result["lock_wait_seconds"] >= 0.4 and result["images"] > 0


def test_the_dedup_check_recomputes_similarities(tmp_path, database_url):
    catalog = Catalog(database_url)
    make_small_drop(tmp_path / "one")
    _ingest(catalog, tmp_path / "one", "one")
    assert _violations(catalog, "one")["below_threshold"] == 0
    with catalog.connection() as conn:  # corrupt one recorded link: claim two unrelated images are duplicates
        a, b = conn.execute(
            "SELECT image_id FROM images WHERE object_key IN ('img_04.jpg', 'img_05.jpg') ORDER BY object_key"
        ).fetchall()
        conn.execute(
            "UPDATE dedup_members SET representative_id = %s, is_representative = false,"
            " tier = 'semantic', similarity = 0.99 WHERE image_id = %s",
            (b[0], a[0]),
        )
    assert _violations(catalog, "one")["below_threshold"] == 1


def test_a_mirrored_copy_is_a_perceptual_duplicate(tmp_path, database_url):
    from PIL import ImageOps

    catalog = Catalog(database_url)
    make_small_drop(tmp_path / "one")
    (tmp_path / "one" / "mirrored_05.jpg").write_bytes(jpeg(ImageOps.mirror(Image.open(tmp_path / "one" / "img_05.jpg"))))
    _ingest(catalog, tmp_path / "one", "one")
    groups = {g["representative"]["object_key"]: g["members"] for g in catalog.duplicate_groups()}
    members = {m["object_key"]: m["tier"] for ms in groups.values() for m in ms}
    assert members.get("mirrored_05.jpg") == "perceptual" or groups.get("mirrored_05.jpg")
    assert _violations(catalog, "one")["below_threshold"] == 0


def test_leaks_into_a_protected_drop_are_listed(tmp_path, database_url):
    catalog = Catalog(database_url)
    _two_drops(tmp_path, "test-set", "train", catalog=catalog)
    assert catalog.leaks() == []  # nothing protected yet
    catalog.set_protected("test-set", True)
    leaks = {(x["object_key"], x["protected_key"]) for x in catalog.leaks()}
    assert leaks == {("again_05.jpg", "img_05.jpg"), ("again_06_small.jpg", "img_06.jpg")}
    assert {x["object_key"] for x in catalog.leaks("train")} == {"again_05.jpg", "again_06_small.jpg"}
    # duplicates inside the protected drop itself are not leaks
    assert all(x["drop_key"] == "train" for x in catalog.leaks())


def test_bulk_mode_gives_the_same_clusters_as_incremental(tmp_path, database_url):
    catalog = Catalog(database_url)
    make_small_drop(tmp_path / "one")
    _ingest(catalog, tmp_path / "one", "one", dedup=False)
    emb = catalog.load_embeddings(["one"], "offline:colour-layout-v2")
    incremental = dedup_drop(catalog, "one", emb, TH)
    pairs_incremental = _pairs(catalog)
    bulk = dedup_drop(catalog, "one", emb, TH, bulk_from=1)
    assert (incremental["mode"], bulk["mode"]) == ("incremental", "bulk")
    assert _pairs(catalog) == pairs_incremental and len(pairs_incremental) == 4


def test_verified_dedup_of_the_demo_keeps_the_originals_as_representatives(tmp_path, database_url):
    """The demo's planted duplicates (identical copies under copies/, edits under edited/: JPEG
    q45, resize, crop, brightened, lower contrast as PNG, resize + q60) at the product defaults
    (proposal thresholds + pixel verification): no distinct images merged, and every group that
    holds the camera original is represented by it, not by a copy or an edit."""
    import json

    from curation_pipeline.core.verify import VerifierSettings
    from curation_pipeline.demo_data import build_demo_drops, score_dedup
    from curation_pipeline.resources.embedders import mirror_permutation_for
    from curation_pipeline.steps.dedup import default_thresholds

    demo = build_demo_drops(tmp_path / "demo")
    catalog = Catalog(database_url)
    drop = "demo-0001"
    catalog.register_drop(drop, str(demo.drops[drop]))
    build_manifest(catalog, LocalImageStore(), str(demo.drops[drop]), drop)
    stats = embed_drop(catalog, OfflineEmbedder(), drop, OPTIONS)
    catalog.publish_embeddings(drop, stats["model"])
    model = stats["model"]
    dedup = dedup_drop(
        catalog,
        drop,
        catalog.load_embeddings([drop], model),
        default_thresholds(model),
        verifier=VerifierSettings(),
        mirror_perm=mirror_permutation_for(model),
    )
    assert dedup["verified"] and dedup["pairs_verified"] > 0
    truth = {k: v for k, v in json.loads(demo.ground_truth.read_text())["files"].items() if k.startswith(drop + "/")}
    member_to_rep = {
        f"{drop}/{m['object_key']}": f"{drop}/{g['representative']['object_key']}"
        for g in catalog.duplicate_groups([drop])
        for m in g["members"]
    }
    score = score_dedup(truth, member_to_rep)
    assert score["precision"] == 1.0 and score["recall"] >= 0.9, score
    reps = {rep for rep in member_to_rep.values()}
    originals = {k for k in truth if "/rig-" in k}
    wrong = sorted(r for r in reps if r not in originals and any(truth[o] == truth[r] for o in originals))
    assert not wrong, f"copies or edits chosen over their original: {wrong}"


def test_a_pair_whose_image_cannot_be_read_or_verified_is_rejected_not_fatal(tmp_path, database_url, monkeypatch):
    """Verification reads pixels again: an image deleted since its manifest, or a verifier error on
    one pair, rejects that pair with the reason and the drop is still deduplicated."""
    from curation_pipeline.core.verify import VerifierSettings
    from curation_pipeline.resources.embedders import mirror_permutation_for
    from curation_pipeline.steps import dedup as dedup_step
    from curation_pipeline.steps.dedup import default_thresholds

    folder = tmp_path / "d"
    make_small_drop(folder)
    catalog = Catalog(database_url)
    stats = _ingest(catalog, folder, "d", dedup=False)
    (folder / "reencoded_03.jpg").unlink()  # gone after the manifest
    real = dedup_step.verify_pair
    calls = []

    def flaky(a, b, settings):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(a, b, settings)

    monkeypatch.setattr(dedup_step, "verify_pair", flaky)
    result = dedup_drop(
        catalog,
        "d",
        catalog.load_embeddings(["d"], stats["model"]),
        default_thresholds(stats["model"]),
        verifier=VerifierSettings(),
        mirror_perm=mirror_permutation_for(stats["model"]),
    )
    assert result["images"] == len(catalog.dedup_candidates("d", stats["model"])) and result["pairs_verified"] >= 2
    pairs = {frozenset((p["key_a"], p["key_b"])): p for p in catalog.dedup_pairs(["d"])}
    failed = [p for p in pairs.values() if p["reason"].startswith("verification failed: RuntimeError: boom")]
    assert len(failed) == 1 and not failed[0]["accepted"]
    gone = pairs[frozenset(("img_03.jpg", "reencoded_03.jpg"))]
    assert not gone["accepted"] and gone["reason"].startswith("reencoded_03.jpg: unreadable")
    grouped = [
        {g["representative"]["object_key"]} | {m["object_key"] for m in g["members"]} for g in catalog.duplicate_groups(["d"])
    ]
    assert not any({"img_03.jpg", "reencoded_03.jpg"} <= g for g in grouped)
    assert any({"img_00.jpg", "copy_of_00.jpg"} <= g for g in grouped)  # identical contents need no pixels


def test_verification_reads_pixels_as_the_manifest_does_exif_orientation_applied(tmp_path):
    """A camera original stored sideways with EXIF orientation 6 and an upright re-save of it are
    the same picture once decoded as the manifest decodes (core.decode); read raw, they are not."""
    import io

    from curation_pipeline.core.hashing import sha256_hex
    from curation_pipeline.core.verify import prepare, verify_pair
    from curation_pipeline.resources.catalog.records import KeptImage
    from curation_pipeline.resources.image_store import DEFAULT_STORES
    from curation_pipeline.steps.dedup import read_source_image
    from curation_pipeline_tests.conftest import photo_crops

    upright = photo_crops(1)[0].resize((240, 160))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=92, exif=exif)
    (tmp_path / "camera.jpg").write_bytes(buf.getvalue())
    (tmp_path / "resaved.jpg").write_bytes(jpeg(upright, 80))

    def kept(name: str) -> KeptImage:
        data = (tmp_path / name).read_bytes()
        return KeptImage(1, "d", 0, sha256_hex(data), 0, 0, 0.0, name, 0, str(tmp_path / name))

    a = read_source_image(DEFAULT_STORES, kept("camera.jpg"), prepare)
    b = read_source_image(DEFAULT_STORES, kept("resaved.jpg"), prepare)
    assert a.size == b.size  # both upright
    assert verify_pair(a, b).accepted
    raw = prepare(Image.open(tmp_path / "camera.jpg"))  # sideways, as stored
    assert not verify_pair(raw, b).accepted
    changed = kept("resaved.jpg")
    (tmp_path / "resaved.jpg").write_bytes(jpeg(upright, 50))
    assert read_source_image(DEFAULT_STORES, changed, prepare) == "changed since its manifest"
