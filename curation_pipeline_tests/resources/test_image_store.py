import dataclasses
import os

import pytest

from curation_pipeline.resources.image_store import ImageStores, LocalImageStore, S3Settings, store_for


def test_lists_sorted_relative_keys_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.jpg").write_bytes(b"x")
    (tmp_path / "a 1 ü.jpg").write_bytes(b"yy")
    (tmp_path / ".hidden.jpg").write_bytes(b"z")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.jpg").write_bytes(b"z")
    store = LocalImageStore()
    objs = list(store.list_objects(str(tmp_path)))
    assert [o.key for o in objs] == ["a 1 ü.jpg", "b/2.jpg"]
    assert objs[0].size == 2
    assert store.read_bytes(str(tmp_path), "b/2.jpg") == b"x"


def test_symlinks_out_of_the_drop_are_ignored_and_keys_cannot_escape(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"s")
    os.symlink(secret, drop / "link.jpg")
    store = LocalImageStore()
    assert [o.key for o in store.list_objects(str(drop))] == []
    with pytest.raises(ValueError, match="escapes"):
        store.read_bytes(str(drop), "../secret.jpg")


def test_missing_location_and_unknown_scheme_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list(LocalImageStore().list_objects(str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="no image store for .gs:"):
        store_for("gs://bucket/drop")


def test_s3_store_lists_every_page_and_reads_odd_keys(s3):
    from curation_pipeline.resources.image_store import S3ImageStore
    from curation_pipeline_tests.conftest import new_bucket

    bucket = new_bucket(s3)
    client = s3.client()
    odd = ["drop/a key with spaces.jpg", "drop/ünïcödé/żółw.jpg", "drop/sub/x+y=z&.jpg"]
    for key in odd:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for i in range(1005):  # more than one ListObjectsV2 page (1,000 keys)
        client.put_object(Bucket=bucket, Key=f"drop/many/{i:05d}.jpg", Body=b"x")
    client.put_object(Bucket=bucket, Key="drop/.hidden.jpg", Body=b"h")
    client.put_object(Bucket=bucket, Key="other/not-mine.jpg", Body=b"o")
    store = S3ImageStore(s3)
    objs = list(store.list_objects(f"s3://{bucket}/drop"))
    keys = [o.key for o in objs]
    assert len(keys) == 1008 and "not-mine.jpg" not in " ".join(keys) and ".hidden.jpg" not in keys
    for key in odd:
        rel = key[len("drop/") :]
        assert rel in keys
        assert store.read_bytes(f"s3://{bucket}/drop/", rel) == key.encode()
        assert store.read_uri(store.object_uri(f"s3://{bucket}/drop", rel)) == key.encode()
    assert all(o.etag and o.size >= 1 for o in objs)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.read_bytes(f"s3://{bucket}/drop", "vanished.jpg")
    # one client per settings and process, however the stores are reached
    assert store_for(f"s3://{bucket}/drop", s3) is store_for(f"s3://{bucket}/other", s3)
    assert ImageStores(s3).for_location(f"s3://{bucket}/a") is store_for(f"s3://{bucket}/b", dataclasses.replace(s3))


def test_image_stores_pickle_with_their_settings_and_read_every_location(tmp_path, s3):
    """Loader processes get the stores pickled: they must read with the settings they were given,
    not with whatever their own process would default to."""
    import pickle

    from curation_pipeline_tests.conftest import new_bucket

    bucket = new_bucket(s3)
    s3.client().put_object(Bucket=bucket, Key="drop/x.bin", Body=b"from s3")
    (tmp_path / "y.bin").write_bytes(b"from disk")
    stores = pickle.loads(pickle.dumps(ImageStores(s3)))
    assert stores == ImageStores(s3) and stores.s3.endpoint_url == s3.endpoint_url
    assert stores.read_uri(f"s3://{bucket}/drop/x.bin") == b"from s3"
    assert stores.read_uri(str(tmp_path / "y.bin")) == b"from disk"
    assert stores.read_uri(f"file://{tmp_path}/y.bin") == b"from disk"
    with pytest.raises(ValueError, match="no image store"):
        stores.for_location("gs://bucket/drop")


def test_s3_settings_never_show_credentials():
    settings = S3Settings(endpoint_url="http://x", aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="s3cr3t")
    assert "s3cr3t" not in repr(settings) and "AKIAEXAMPLE" not in repr(settings)


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_non_utf8_names_are_escaped_losslessly_and_read_back(tmp_path):
    """Undecodable bytes become \\xHH (and, in such a name only, backslashes \\x5c), per path
    component; reading maps each component back literal first, so a directory with a literal
    backslash in its name and a non-UTF-8 file inside it both resolve."""
    root = os.fsencode(tmp_path)
    os.mkdir(os.path.join(root, b"dir\\x41"))  # a UTF-8 name that merely looks escaped
    os.mkdir(os.path.join(root, b"raw\xe9"))  # latin-1 'é'
    files = {
        b"dir\\x41/in\xff.jpg": "dir\\x41/in\\xff.jpg",
        b"raw\xe9/a\\b\xfe.jpg": "raw\\xe9/a\\x5cb\\xfe.jpg",
        b"plain \xc3\xbc.jpg": "plain ü.jpg",  # valid UTF-8: unchanged
    }
    for i, name in enumerate(files):
        _write(os.path.join(root, name), b"content %d" % i)
    store = LocalImageStore()
    objs = list(store.list_objects(str(tmp_path)))
    assert sorted(o.key for o in objs) == sorted(files.values()) and all(o.problem is None for o in objs)
    for i, key in enumerate(files.values()):
        assert store.read_bytes(str(tmp_path), key) == b"content %d" % i
        uri = store.object_uri(str(tmp_path), key)
        assert uri.encode("utf-8") and store.read_uri(uri) == b"content %d" % i
    # an escape can never name a '/' or a '..': `\x2f` and `\x2e\x2e` are only literal text
    with pytest.raises((FileNotFoundError, ValueError)):
        store.read_bytes(str(tmp_path), "raw\\xe9\\x2f..\\x2f..\\x2fetc\\x2fpasswd")
    with pytest.raises(FileNotFoundError):
        store.read_bytes(str(tmp_path), "\\x2e\\x2e/secret.jpg")


def test_an_escaped_name_colliding_with_a_literal_name_loses_nothing(tmp_path):
    root = os.fsencode(tmp_path)
    _write(os.path.join(root, b"a\xff.jpg"), b"raw bytes name")
    _write(os.path.join(root, b"a\\xff.jpg"), b"literal name")
    store = LocalImageStore()
    objs = {o.key: o for o in store.list_objects(str(tmp_path))}
    assert len(objs) == 2
    assert objs["a\\xff.jpg"].problem is None  # the literal name keeps its key and reads itself
    assert store.read_bytes(str(tmp_path), "a\\xff.jpg") == b"literal name"
    (other,) = [o for k, o in objs.items() if k != "a\\xff.jpg"]
    assert other.problem[0] == "unreadable" and "rename" in other.problem[1]


def test_local_reads_are_capped_and_prefix_reads_are_bounded(tmp_path):
    from curation_pipeline.resources.image_store import ObjectTooLarge

    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    store = LocalImageStore(max_object_bytes=4096)
    assert store.read_prefix(str(tmp_path), "big.bin", 100) == b"x" * 100
    with pytest.raises(ObjectTooLarge, match="5000 bytes, over the limit of 4096"):
        store.read_bytes(str(tmp_path), "big.bin")
    with pytest.raises(ObjectTooLarge):
        store.read_uri(store.object_uri(str(tmp_path), "big.bin"))


def test_s3_prefix_reads_are_ranged_and_whole_reads_capped(s3):
    from curation_pipeline.resources.image_store import ObjectTooLarge, S3ImageStore
    from curation_pipeline_tests.conftest import new_bucket

    bucket = new_bucket(s3)
    client = s3.client()
    client.put_object(Bucket=bucket, Key="drop/big.bin", Body=b"0123456789" * 1000)
    client.put_object(Bucket=bucket, Key="drop/empty.jpg", Body=b"")
    store = S3ImageStore(s3, max_object_bytes=5000)
    loc = f"s3://{bucket}/drop"
    assert store.read_prefix(loc, "big.bin", 12) == b"012345678901"
    assert store.read_prefix(loc, "empty.jpg", 12) == b""
    with pytest.raises(ObjectTooLarge, match="10000 bytes"):
        store.read_bytes(loc, "big.bin")
    assert S3ImageStore(s3).read_bytes(loc, "big.bin") == b"0123456789" * 1000


def test_a_new_image_store_is_one_class_and_one_registry_entry(database_url, monkeypatch):
    """An in-memory store registered for mem:// serves the manifest and the embedding steps through
    store_for, with nothing else changed."""
    from datetime import datetime, timezone

    from curation_pipeline.resources import image_store
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.embedders import OfflineEmbedder
    from curation_pipeline.resources.image_store import ImageStore, ObjectInfo
    from curation_pipeline.steps.embed import embed_drop
    from curation_pipeline.steps.manifest import build_manifest
    from curation_pipeline_tests.conftest import jpeg, photo_crops

    blobs = {f"frame_{i}.jpg": jpeg(c) for i, c in enumerate(photo_crops(3))}

    class MemoryStore(ImageStore):
        def list_drops(self, root):
            yield "d", "mem://d/"

        def list_objects(self, location):
            for key in sorted(blobs):
                yield ObjectInfo(key, len(blobs[key]), str(len(blobs[key])), datetime.now(timezone.utc))

        def read_bytes(self, location, key):
            return blobs[key]

        def object_uri(self, location, key):
            return f"mem://d/{key}"

        def read_uri(self, uri):
            return blobs[uri.removeprefix("mem://d/")]

    monkeypatch.setitem(image_store.IMAGE_STORES, "mem", lambda s3: MemoryStore())
    catalog = Catalog(database_url)
    stats = build_manifest(catalog, store_for("mem://d/"), "mem://d/", "d")
    assert stats["valid_images"] == 3
    embedded = embed_drop(catalog, OfflineEmbedder(), "d")
    assert embedded["valid_images"] == 3 and embedded["not_embedded"] == 0
