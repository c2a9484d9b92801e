import os

import pytest

from curation_pipeline.resources.image_store import LocalImageStore, store_for


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
        rel = key[len("drop/"):]
        assert rel in keys
        assert store.read_bytes(f"s3://{bucket}/drop/", rel) == key.encode()
        assert store.read_uri(store.object_uri(f"s3://{bucket}/drop", rel)) == key.encode()
    assert all(o.etag and o.size >= 1 for o in objs)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.read_bytes(f"s3://{bucket}/drop", "vanished.jpg")
    assert store_for(f"s3://{bucket}/drop") is store_for(f"s3://{bucket}/other")  # one client per process


def test_s3_settings_never_show_credentials():
    from curation_pipeline.resources.image_store import S3Settings

    settings = S3Settings(endpoint_url="http://x", aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="s3cr3t")
    assert "s3cr3t" not in repr(settings) and "AKIAEXAMPLE" not in repr(settings)
