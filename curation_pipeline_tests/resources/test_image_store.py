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
    with pytest.raises(NotImplementedError, match="not supported yet"):
        store_for("gs://bucket/drop")
