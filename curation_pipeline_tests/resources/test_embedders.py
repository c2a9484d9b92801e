"""Real model loading code, exercised with tiny checkpoints the tests build and save locally."""

import numpy as np
import pytest

from curation_pipeline.resources.dagster_resources import EmbedderResource
from curation_pipeline.resources.embedders import OfflineEmbedder, OpenClipEmbedder, TransformersEmbedder
from curation_pipeline_tests.conftest import photo_crops


@pytest.fixture(scope="module")
def tiny_open_clip(tiny_clip_files):
    return tiny_clip_files


def test_open_clip_loads_local_checkpoint_and_embeds_images_and_text(tiny_open_clip):
    import torch

    config, ckpt, reference = tiny_open_clip
    emb = OpenClipEmbedder("tiny-test-clip", str(ckpt), model_config_path=str(config), device="cpu")
    assert emb.dim == 16 and emb.model_id == "open_clip:tiny-test-clip/tiny-test-clip.pt"
    images = photo_crops(3)
    v = emb.embed_images(images)
    assert v.shape == (3, 16) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    # the weights really came from the checkpoint, and the split uint8 preprocessing matches
    # open_clip's own transform: same output as the saved model fed by open_clip's pipeline
    with torch.no_grad():
        ref = reference.eval().encode_image(torch.stack([emb._preprocess(im) for im in images])).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(v, ref, atol=1e-5)
    t = emb.embed_texts(["a photo of a cat", "a rocket"])
    assert t.shape == (2, 16) and emb.supports_text


def test_open_clip_through_the_dagster_resource(tiny_open_clip):
    config, ckpt, _ = tiny_open_clip
    res = EmbedderResource(
        backend="open_clip", model_name="tiny-test-clip", pretrained=str(ckpt), model_config_path=str(config), device="cpu"
    )
    model = res.load()
    assert model.backend == "open_clip" and model.embed_images(photo_crops(1)).shape == (1, 16)


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("tiny_dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True).save_pretrained(
        folder
    )
    return folder


def test_transformers_loads_local_directory(tiny_dinov2):
    emb = TransformersEmbedder(str(tiny_dinov2), device="cpu")
    assert emb.dim == 32 and emb.model_id == f"hf:{tiny_dinov2.name}"
    v = emb.embed_images(photo_crops(3))
    assert v.shape == (3, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert not np.allclose(v[0], v[1])  # different images, different vectors
    with pytest.raises(NotImplementedError, match="cannot embed text"):
        emb.embed_texts(["x"])


def test_offline_embedder_needs_no_torch_and_is_named_honestly():
    emb = OfflineEmbedder()
    assert emb.model_id == "offline:colour-layout-v2" and "not for semantics" in emb.description
    assert emb.embed_images(photo_crops(2)).shape == (2, emb.dim)


def test_unknown_backend_and_missing_model_name_fail_clearly():
    with pytest.raises(ValueError, match="needs model_name"):
        EmbedderResource(backend="transformers").load()
    # open_clip without a model name is the production default (its weights are not loaded here)
    assert EmbedderResource(backend="open_clip").resolved_model() == ("ViT-B-32", "laion2b_s34b_b79k")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="backend"):
        EmbedderResource(backend="nonsense")
