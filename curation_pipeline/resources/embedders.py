"""Image (and text) embedders behind one interface.

Backends:
  * offline      - the hand-crafted colour/layout/gradient descriptor (core.colour_layout);
                   no weights, no torch, deterministic. Model id `offline:colour-layout-v1`.
  * open_clip    - any open_clip architecture with a pretrained tag (e.g. ViT-B-32 /
                   laion2b_s34b_b79k) or a local checkpoint path; optional JSON model config for
                   custom architectures. Model id `open_clip:<arch>/<tag-or-checkpoint-name>`.
  * transformers - AutoModel from a hub id or a local directory (e.g. facebook/dinov2-small).
                   CLIP-family models use get_image_features; others the pooled output, else
                   the CLS token. Model id `hf:<id-or-dir-name>`.
torch, open_clip and transformers are imported lazily, and CUDA is only touched when a model is
loaded, never at import."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from curation_pipeline.core.colour_layout import DESCRIPTOR_DIM, DESCRIPTOR_NAME, colour_layout_batch

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

    @abstractmethod
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError(f"model {self.model_id} cannot embed text (not a CLIP-family model)")

    @property
    def supports_text(self) -> bool:
        return False


class OfflineEmbedder(Embedder):
    backend = "offline"

    def __init__(self) -> None:
        self.model_id = f"offline:{DESCRIPTOR_NAME}"
        self.dim = DESCRIPTOR_DIM
        self.description = (
            "hand-crafted colour/layout/gradient descriptor (no learned weights): good for near-duplicates "
            "and colour/layout diversity, not for semantics"
        )

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return l2_normalise(colour_layout_batch(images))


def _pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class OpenClipEmbedder(Embedder):
    backend = "open_clip"

    def __init__(self, model_name: str, pretrained: str | None = None, *, model_config_path: str | None = None,
                 device: str = "auto", batch_size: int = 32) -> None:
        import open_clip
        import torch

        if model_config_path:
            open_clip.add_model_config(model_config_path)
        self.device = _pick_device(device)
        self.batch_size = batch_size
        self._torch = torch
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained or None, device=self.device
        )
        model.eval()
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        tag = Path(pretrained).name if pretrained and Path(pretrained).exists() else (pretrained or "random-init")
        self.model_id = validate_model_id(f"open_clip:{model_name}/{tag}")
        with torch.no_grad():
            probe = self.preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(self.device)
            self.dim = int(model.encode_image(probe).shape[-1])
        self.description = f"open_clip {model_name} pretrained={pretrained or 'none'} on {self.device}"

    @property
    def supports_text(self) -> bool:
        return True

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = self._torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
                out.append(self.model.encode_image(batch.to(self.device)).float().cpu().numpy())
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._torch.no_grad():
            tokens = self.tokenizer(texts).to(self.device)
            return l2_normalise(self.model.encode_text(tokens).float().cpu().numpy())


class TransformersEmbedder(Embedder):
    backend = "transformers"

    def __init__(self, model_name_or_path: str, *, device: str = "auto", batch_size: int = 32) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.device = _pick_device(device)
        self.batch_size = batch_size
        self._torch = torch
        self.processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        model = AutoModel.from_pretrained(model_name_or_path)
        model.eval().to(self.device)
        self.model = model
        self._clip_like = hasattr(model, "get_image_features")
        name = Path(model_name_or_path).name if Path(model_name_or_path).exists() else model_name_or_path
        self.model_id = validate_model_id(f"hf:{name}")
        self.dim = int(self._forward([Image.new("RGB", (32, 32))]).shape[-1])
        self.description = f"transformers {type(model).__name__} from {model_name_or_path} on {self.device}"

    def _forward(self, images: list[Image.Image]) -> np.ndarray:
        inputs = self.processor(images=images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)
        with self._torch.no_grad():
            if self._clip_like:
                feats = self.model.get_image_features(pixel_values=pixel_values)
                if not isinstance(feats, self._torch.Tensor):  # some versions return a model output
                    feats = getattr(feats, "pooler_output", None) or feats[0]
            else:
                outputs = self.model(pixel_values=pixel_values)
                pooled = getattr(outputs, "pooler_output", None)
                feats = pooled if pooled is not None else outputs.last_hidden_state[:, 0]
        return feats.float().cpu().numpy()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        out = [self._forward(images[s:s + self.batch_size]) for s in range(0, len(images), self.batch_size)]
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)
