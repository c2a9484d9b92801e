"""The self-supervised domain model: augmentation, view features, head training, serialisation.
Small synthetic features (and the offline descriptor as a backbone) keep these fast."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from curation_pipeline.resources.domain_model import (
    DEFAULT_DIM,
    DomainHead,
    DomainTrainingConfig,
    augment,
    train_head,
    view_features,
)
from curation_pipeline_tests.conftest import photo_crops

FAST = {"epochs": 30, "hidden": 64, "batch_size": 100, "lr": 1e-2}


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def nuisance_set(n=300, identity=8, nuisance=40, views=3, seed=0):
    """Backbone-like features whose identity lives in a few dimensions while most of the variance
    is nuisance that changes from view to view (as crop / colour changes move a real backbone)."""
    rng = np.random.default_rng(seed)
    ident = rng.standard_normal((n, identity)) * 1.5

    def draw(*shape):
        return np.concatenate(
            [
                np.broadcast_to(ident.reshape(n, *([1] * (len(shape) - 1)), identity), shape + (identity,)),
                rng.standard_normal(shape + (nuisance,)),
            ],
            axis=-1,
        )

    plain = _unit(draw(n))
    view = _unit(draw(n, views))
    return plain, view


def top1(queries, keys):
    """Fraction of queries whose most similar key is their own row."""
    return float(np.mean(np.argmax(queries @ keys.T, axis=1) == np.arange(len(queries))))


@pytest.fixture(scope="module")
def trained():
    plain, views = nuisance_set()
    head = train_head(plain, views, DomainTrainingConfig(dim=32, views=3, **FAST), backbone_model="test:nuisance")
    return plain, views, head


def test_module_import_does_not_import_torch():
    code = "import sys, curation_pipeline.resources.domain_model as m; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_projection_is_unit_rows_of_the_configured_dimension(trained):
    plain, _, head = trained
    out = head.project(plain)
    assert out.shape == (len(plain), 32) and out.dtype == np.float32 and head.dim == 32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert head.project(np.zeros((0, plain.shape[1]), np.float32)).shape == (0, 32)
    with pytest.raises(ValueError, match="projects"):
        head.project(np.ones((2, plain.shape[1] + 1), np.float32))
    assert head.backbone_model == "test:nuisance" and DEFAULT_DIM == DomainTrainingConfig().dim == 64
    stats = head.stats
    assert stats["images"] == len(plain) and stats["seconds"] >= 0 and stats["loss_last"] < stats["loss_first"]


def test_the_head_learns_what_views_share(trained):
    """Before training, nuisance swamps identity: a view's nearest plain vector is seldom its own
    image's. After training, positives (plain and views of one image) end much closer than
    negatives, and the view finds its image."""
    plain, views, head = trained
    before = np.mean([top1(views[:, v], plain) for v in range(views.shape[1])])
    p = head.project(plain)
    after = np.mean([top1(head.project(views[:, v]), p) for v in range(views.shape[1])])
    assert before < 0.5 and after > 0.9 and after > before + 0.4
    q = head.project(views[:, 0])
    pos = np.mean(np.sum(q * p, axis=1))
    neg = np.mean(q @ p.T) - pos / len(p)
    raw_pos = np.mean(np.sum(views[:, 0] * plain, axis=1))
    assert pos - neg > 0.5 and pos > raw_pos


@pytest.mark.parametrize("dim", [16, 31, 129, 512])
def test_dimensions_outside_32_to_128_are_refused(dim):
    with pytest.raises(ValueError, match="32..128"):
        DomainTrainingConfig(dim=dim)


def test_other_bad_settings_are_refused():
    for bad in ({"views": 0}, {"temperature": 0.0}, {"sample": 1}, {"epochs": 0}):
        with pytest.raises(ValueError):
            DomainTrainingConfig(**bad)
    plain, views = nuisance_set(n=20, views=2)
    with pytest.raises(ValueError, match="views"):
        train_head(plain, views, DomainTrainingConfig(views=4, **FAST), backbone_model="x")
    with pytest.raises(ValueError, match="\\(n, d\\)"):
        train_head(plain, views[:10], DomainTrainingConfig(views=2, **FAST), backbone_model="x")


def test_bytes_round_trip_exactly(trained):
    plain, _, head = trained
    back = DomainHead.from_bytes(head.to_bytes())
    assert back.sha256 == head.sha256 and back.config == head.config and back.backbone_model == head.backbone_model
    assert back.stats == head.stats
    assert np.array_equal(back.project(plain), head.project(plain))


@pytest.mark.parametrize("garbage", [b"", b"not a head", b"PK\x03\x04" + b"\x00" * 40])
def test_garbage_bytes_are_a_clear_error(garbage):
    with pytest.raises(ValueError, match="not a valid domain head"):
        DomainHead.from_bytes(garbage)


def test_a_foreign_npz_is_refused():
    import io

    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(b'{"kind": "other"}', dtype=np.uint8))
    with pytest.raises(ValueError, match="not a valid domain head"):
        DomainHead.from_bytes(buf.getvalue())


def test_same_training_same_hash_other_seed_or_data_other_hash():
    plain, views = nuisance_set(n=120, views=2)
    config = DomainTrainingConfig(views=2, **FAST)
    a = train_head(plain, views, config, backbone_model="m")
    b = train_head(plain, views, config, backbone_model="m")
    assert a.sha256 == b.sha256 and np.array_equal(a.project(plain), b.project(plain))
    c = train_head(plain, views, DomainTrainingConfig(views=2, seed=1, **FAST), backbone_model="m")
    other_plain, other_views = nuisance_set(n=120, views=2, seed=5)
    d = train_head(other_plain, other_views, config, backbone_model="m")
    e = train_head(plain, views, config, backbone_model="another-backbone")
    assert len({a.sha256, c.sha256, d.sha256, e.sha256}) == 4


def test_the_sample_limits_the_images_trained_on():
    plain, views = nuisance_set(n=150, views=2)
    head = train_head(plain, views, DomainTrainingConfig(views=2, sample=60, **FAST), backbone_model="m")
    assert head.stats["images"] == 60
    assert head.project(plain).shape == (150, 64)


def test_augment_is_deterministic_for_a_seeded_rng_and_gives_rgb():
    image = photo_crops(1)[0].convert("L")  # greyscale in, RGB out
    a = augment(image, np.random.default_rng(7))
    b = augment(image, np.random.default_rng(7))
    c = augment(image, np.random.default_rng(8))
    assert a.mode == "RGB" and a.size == (256, 256)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    tiny = augment(Image.new("RGB", (3, 2), (200, 10, 10)), np.random.default_rng(0), size=32)
    assert tiny.size == (32, 32) and tiny.mode == "RGB"


def test_view_features_with_the_offline_descriptor_as_backbone():
    from curation_pipeline.resources.embedders import OfflineEmbedder

    backbone = OfflineEmbedder()
    images = photo_crops(3)
    v = view_features(backbone, images, views=2, seed=3, batch_size=4)
    assert v.shape == (3, 2, backbone.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=2), 1.0, atol=1e-5)
    again = view_features(backbone, images, views=2, seed=3, batch_size=64)  # batching does not matter
    assert np.array_equal(v, again)
    assert not np.array_equal(v, view_features(backbone, images, views=2, seed=4))
    plain = backbone.embed_images(images)
    assert not np.allclose(v[:, 0], plain)  # views are not the plain image
