"""Real model loading code, exercised with tiny checkpoints the tests build and save locally."""

import numpy as np
import pytest
from PIL import Image

from curation_pipeline.defs.resources import EmbedderResource
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


# ---- timm backend -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_timm(tmp_path_factory):
    """timm's smallest ConvNeXt (`test_convnext`, 0.2 M parameters), seeded, saved as a local state
    dict: the backend must load exactly these weights (and never reach a hub)."""
    import timm
    import torch

    folder = tmp_path_factory.mktemp("tiny_timm")
    torch.manual_seed(0)
    model = timm.create_model("test_convnext", pretrained=False, num_classes=0).eval()
    ckpt = folder / "tiny-convnext.pth"
    torch.save(model.state_dict(), ckpt)
    return ckpt, model


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import huggingface_hub
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(builder, "download_cached_file", refuse, raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def test_timm_loads_a_local_checkpoint_and_matches_timms_own_pipeline(tiny_timm, no_hub):
    import torch
    from timm.data import create_transform, resolve_model_data_config

    from curation_pipeline.resources.embedders import TimmEmbedder

    ckpt, reference = tiny_timm
    emb = TimmEmbedder("test_convnext", str(ckpt), device="cpu")
    assert emb.dim == reference.num_features == 64 and emb.model_id == "timm:test_convnext/tiny-convnext.pth"
    # the loader may decode JPEGs reduced, but not below timm's resize step (168), which precedes the 160 crop
    assert emb.input_size == 160 and emb.draft_size == 168
    images = photo_crops(3)
    v = emb.embed_images(images)
    assert v.shape == (3, 64) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    # the weights came from the file, and the split uint8 preprocessing matches timm's own eval
    # transform: same vectors as the saved model fed by timm's pipeline
    transform = create_transform(**resolve_model_data_config(reference))
    with torch.no_grad():
        ref = reference(torch.stack([transform(im) for im in images])).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(v, ref, atol=1e-4)
    assert not emb.supports_text
    with pytest.raises(NotImplementedError, match="cannot embed text"):
        emb.embed_texts(["x"])


def test_timm_through_the_dagster_resource(tiny_timm, no_hub):
    ckpt, _ = tiny_timm
    model = EmbedderResource(backend="timm", model_name="test_convnext", pretrained=str(ckpt), device="cpu").load()
    assert model.backend == "timm" and model.embed_images(photo_crops(1)).shape == (1, 64)


def test_timm_takes_a_checkpoint_with_its_classifier_head_in_safetensors(tmp_path, no_hub):
    import timm
    import torch
    from safetensors.torch import save_file

    from curation_pipeline.resources.embedders import TimmEmbedder

    torch.manual_seed(1)
    full = timm.create_model("test_convnext", pretrained=False).eval()  # with its 1000-class head
    save_file(full.state_dict(), str(tmp_path / "head.safetensors"))
    emb = TimmEmbedder("test_convnext", str(tmp_path / "head.safetensors"), device="cpu")
    assert emb.model_id == "timm:test_convnext/head.safetensors" and emb.dim == 64
    loaded = emb.model.state_dict()
    assert not any(name.startswith("head.fc") for name in loaded)  # the classifier is gone, not loaded
    for name, value in full.state_dict().items():
        if not name.startswith("head.fc"):
            assert torch.equal(loaded[name], value), name


def test_timm_refuses_hub_names_missing_files_and_checkpoints_that_do_not_fit(tmp_path, tiny_timm, no_hub):
    import timm
    import torch

    from curation_pipeline.resources.embedders import TimmEmbedder

    ckpt, _ = tiny_timm
    with pytest.raises(ValueError, match="not a timm architecture name"):
        TimmEmbedder("hf-hub:timm/test_convnext.r160_in1k", str(ckpt), device="cpu")
    with pytest.raises(ValueError, match="not a timm architecture name"):
        TimmEmbedder("no_such_net", str(ckpt), device="cpu")
    with pytest.raises(ValueError, match="never downloaded at run time"):
        TimmEmbedder("test_convnext", str(tmp_path / "absent.pth"), device="cpu")
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit timm 'test_convnext': missing keys stem"):
        TimmEmbedder("test_convnext", str(other), device="cpu")


# ---- the backend registry -----------------------------------------------------------------------


def test_every_backend_makes_model_ids_that_map_back_to_it(tiny_open_clip, tiny_dinov2, tiny_timm):
    from curation_pipeline.resources.embedders import EMBEDDER_BACKENDS, LoadSpec, backend_for_model

    config, clip_ckpt, _ = tiny_open_clip
    timm_ckpt, _ = tiny_timm
    specs = {
        "offline": LoadSpec(),
        "open_clip": LoadSpec("tiny-test-clip", str(clip_ckpt), str(config), device="cpu"),
        "transformers": LoadSpec(str(tiny_dinov2), device="cpu"),
        "timm": LoadSpec("test_convnext", str(timm_ckpt), device="cpu"),
        "pretrained": LoadSpec("efficientnet_lite0", device="cpu"),  # real weights, small, from its package
    }
    assert set(specs) == set(EMBEDDER_BACKENDS), "a new backend needs a tiny local model here"
    for name, spec in specs.items():
        entry = EMBEDDER_BACKENDS[name]
        emb = entry.load(spec)
        assert emb.backend == name and emb.model_id.startswith(entry.model_id_prefix + ":")
        assert backend_for_model(emb.model_id) is entry and backend_for_model(emb.model_id + "+nodraft") is entry
        if entry.embeds_text is not None:
            assert emb.supports_text == entry.embeds_text, name


def test_the_default_threshold_is_the_backends_and_an_unknown_backend_is_an_error():
    from curation_pipeline.resources.embedders import EMBEDDER_BACKENDS, default_min_cosine

    assert default_min_cosine("offline:colour-layout-v2") == 0.80
    assert default_min_cosine("hf:dinov2-small") == EMBEDDER_BACKENDS["transformers"].default_min_cosine == 0.92
    assert default_min_cosine("timm:convnext_tiny/convnext_tiny.pth") == EMBEDDER_BACKENDS["timm"].default_min_cosine
    assert default_min_cosine("pretrained:tf_efficientnet_lite0/w.pth") == 0.96
    # a domain model's id takes its backbone's threshold
    assert default_min_cosine("domain:pretrained:tf_efficientnet_lite0/w.pth@v3-0123456789ab") == 0.96
    for model_id in ("transformers:dinov2-small", "resnet:50", "no-prefix"):
        with pytest.raises(ValueError, match="names no known embedder backend.*set min_cosine explicitly"):
            default_min_cosine(model_id)


def test_the_registry_refuses_a_second_backend_with_the_same_name_or_prefix():
    from curation_pipeline.resources.embedders import EMBEDDER_BACKENDS, _registry

    offline = EMBEDDER_BACKENDS["offline"]
    with pytest.raises(ValueError, match="already registered"):
        _registry(offline, EMBEDDER_BACKENDS["transformers"].__class__(**{**offline.__dict__, "name": "other"}))


def test_the_resource_schema_and_errors_come_from_the_registry():
    from curation_pipeline.resources.embedders import EMBEDDER_BACKENDS

    field = EmbedderResource.to_config_schema().as_field().config_type.fields["backend"]
    assert [v.config_value for v in field.config_type.enum_values] == list(EMBEDDER_BACKENDS)
    assert all(b.summary in field.description for b in EMBEDDER_BACKENDS.values())
    with pytest.raises(ValueError, match="embedder backend 'timm' needs pretrained .*never downloaded"):
        EmbedderResource(backend="timm", model_name="test_convnext").load()


def test_the_pretrained_backend_loads_offline_from_its_package_and_knows_an_espresso():
    """EfficientNet-Lite0's ImageNet weights ship in a registry package: they load with no network,
    give unit 1280-d vectors through the registry, and the same weights with timm's ImageNet head
    call scikit-image's coffee photograph an espresso (class 967)."""
    import skimage.data
    import timm
    import torch

    from curation_pipeline.resources.embedders import PACKAGED_WEIGHTS, LoadSpec, load_embedder

    embedder = load_embedder("pretrained", LoadSpec(model_name="efficientnet_lite0", device="cpu"))
    assert embedder.dim == 1280 and embedder.model_id.startswith("pretrained:tf_efficientnet_lite0/")
    coffee = Image.fromarray(skimage.data.coffee()).convert("RGB")
    vectors = embedder.embed_images([coffee, coffee.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert vectors.shape == (2, 1280) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    weights = PACKAGED_WEIGHTS["efficientnet_lite0"]
    classifier = timm.create_model(weights.timm_arch, pretrained=False)
    classifier.load_state_dict(weights.remap(torch.load(weights.path(), map_location="cpu", weights_only=True)))
    classifier.eval()
    with torch.inference_mode():
        pixels = timm.data.create_transform(**timm.data.resolve_model_data_config(classifier))(coffee)
        probs = torch.softmax(classifier(pixels[None]), dim=1)[0]
    assert int(probs.argmax()) == 967 and float(probs[967]) > 0.5  # 967: espresso


def test_a_cpu_torch_embedder_keeps_its_activation_buffers_mapped():
    """On glibc, loading a CPU torch model raises malloc's mmap and trim thresholds, so freed
    activation buffers stay in the heap instead of being unmapped and faulted in on every batch."""
    import ctypes
    import platform

    from curation_pipeline.resources import embedders

    if platform.libc_ver()[0] != "glibc":
        pytest.fail("this machine's Python does not run on glibc: the allocator tuning cannot be checked here")
    embedders.load_embedder("pretrained", embedders.LoadSpec(device="cpu"))
    assert embedders.keep_cpu_activations_mapped() is True

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
        ]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB: above glibc's default mmap threshold
    mmapped = libc.mallinfo2().hblkhd
    del block
    assert mmapped == libc.mallinfo2().hblkhd  # it came from the heap, not from its own mapping
