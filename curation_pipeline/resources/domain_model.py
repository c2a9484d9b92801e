"""A self-supervised domain model: a small projection head that adapts a pretrained backbone's
vector space to the user's own images, without labels.

The backbone stays frozen. Its features of a few augmented views of each image (random resized
crop, flip, colour jitter, blur, grayscale) are computed once (`view_features`); only a small MLP
head (backbone dim -> hidden -> `dim`) is trained (`train_head`), with a multi-positive InfoNCE
loss in which the plain (un-augmented) vector of an image and its views are positives and every
other image of the batch is a negative. At inference the head projects the stored plain backbone
vectors (`DomainHead.project`, numpy only), which is why the plain vectors are among the training
inputs.

The head keeps a linear path from the centred backbone vector, initialised to its top principal
directions, next to the MLP (whose output starts small): the projection starts as PCA of the
backbone space. The inputs are the backbone's unit vectors as they are (elements ~1/sqrt(d)), so
Adam's per-weight steps move the input-side weights slowly and the head stays near that start,
learning a mild correction (invariance to crop, flip and colour). That is deliberate: on
benchmarks/selection_semantic.py, rescaling the inputs to unit RMS or dropping the linear path let
the head drift into instance discrimination (lower loss, crops of one picture further apart) and
lost to the plain pretrained vectors, and twice the epochs was worse than the default; the head as
it is beats them (benchmarks/README.md, issue 14).

Pure module: no Dagster, and torch is imported only inside `train_head` (the backbone, if it is a
torch model, imports its own)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

if TYPE_CHECKING:
    from curation_pipeline.resources.embedders import Embedder

DEFAULT_DIM = 64
MIN_DIM = 32
MAX_DIM = 128
FORMAT_VERSION = 1
_AUG_SIDE = 256  # side of an augmented view (the backbone's own preprocessing resizes it again)
_MAX_SOURCE_SIDE = 1024  # larger images are reduced before augmenting (speed; crops stay sharp)


@dataclass(frozen=True)
class DomainTrainingConfig:
    dim: int = DEFAULT_DIM  # output dimension, MIN_DIM..MAX_DIM
    views: int = 4  # augmented views per image (besides the plain image)
    sample: int = 2000  # at most this many images are trained on (a seeded sample)
    epochs: int = 40
    batch_size: int = 256  # images per step (each brings its plain vector and its views)
    temperature: float = 0.1
    seed: int = 0
    hidden: int = 512  # hidden width of the MLP
    lr: float = 1e-3
    weight_decay: float = 1e-4
    linear_path: bool = True  # a linear (PCA-initialised) path next to the MLP
    threads: int = 1  # torch intra-op threads while training (1: bit-reproducible)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not MIN_DIM <= self.dim <= MAX_DIM:
            raise ValueError(f"domain model dim must be within {MIN_DIM}..{MAX_DIM}, got {self.dim}")
        if self.views < 1:
            raise ValueError(f"domain model views must be at least 1, got {self.views}")
        if self.sample < 2:
            raise ValueError(f"domain model sample must be at least 2 images, got {self.sample}")
        if self.epochs < 1:
            raise ValueError(f"domain model epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"domain model batch_size must be at least 2, got {self.batch_size}")
        if not 0.0 < self.temperature <= 10.0:
            raise ValueError(f"domain model temperature must be within (0, 10], got {self.temperature}")
        if self.hidden < 1:
            raise ValueError(f"domain model hidden width must be at least 1, got {self.hidden}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError("domain model lr must be > 0 and weight_decay >= 0")
        if self.threads < 1:
            raise ValueError(f"domain model threads must be at least 1, got {self.threads}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"domain model seed must be within 0..2**32-1, got {self.seed}")

    @classmethod
    def from_dict(cls, d: dict) -> "DomainTrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown domain model settings: {', '.join(unknown)}")
        return cls(**d)


# ---- augmentation ------------------------------------------------------------------------------


def _random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: area 0.2-1.0 of the image, aspect 3/4-4/3 (log-uniform)."""
    area = width * height
    log_ratio = (np.log(3 / 4), np.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.2, 1.0)
        ratio = float(np.exp(rng.uniform(*log_ratio)))
        w = int(round(np.sqrt(target * ratio)))
        h = int(round(np.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            return x, y, x + w, y + h
    side = min(width, height)  # fallback: the central square
    x, y = (width - side) // 2, (height - side) // 2
    return x, y, x + side, y + side


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def augment(image: Image.Image, rng: np.random.Generator, size: int = _AUG_SIDE) -> Image.Image:
    """One augmented RGB view, size x size: random resized crop (area 0.2-1.0, aspect 3/4-4/3,
    resized to size x size), horizontal flip (p 0.5), colour jitter (p 0.8: brightness, contrast,
    saturation 0.4, hue 0.05, random order), grayscale (p 0.2), gaussian blur (p 0.5). All random
    draws come from `rng`, so a given rng state gives the same view."""
    image = image.convert("RGB")
    draws = rng.uniform(size=12)
    box = _random_resized_box(image.width, image.height, rng)
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if draws[0] < 0.5:
        view = ImageOps.mirror(view)
    if draws[1] < 0.8:
        brightness, contrast, saturation = 0.6 + 0.8 * draws[2:5]
        hue = (draws[5] - 0.5) * 0.1
        order = np.argsort(draws[6:10])
        for op in order:
            if op == 0:
                view = ImageEnhance.Brightness(view).enhance(float(brightness))
            elif op == 1:
                view = ImageEnhance.Contrast(view).enhance(float(contrast))
            elif op == 2:
                view = ImageEnhance.Color(view).enhance(float(saturation))
            else:
                view = _shift_hue(view, float(hue))
    if draws[10] < 0.2:
        view = ImageOps.grayscale(view).convert("RGB")
    if draws[11] < 0.5:
        radius = (0.1 + 1.9 * float(rng.uniform())) * size / 224
        view = view.filter(ImageFilter.GaussianBlur(radius))
    return view


def _reduced(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    if max(image.size) > _MAX_SOURCE_SIDE:
        image = image.copy()
        image.thumbnail((_MAX_SOURCE_SIDE, _MAX_SOURCE_SIDE), Image.Resampling.BILINEAR)
    return image


def view_features(
    backbone: "Embedder", images: Sequence[Image.Image], views: int, seed: int, batch_size: int = 64
) -> np.ndarray:
    """(n, views, d) float32 unit rows: the backbone's features of `views` augmented views of each
    image. Image i's views come from np.random.default_rng([seed, i]): the same whatever the batch."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    n = len(images)
    out = np.zeros((n, views, backbone.dim), dtype=np.float32)
    pending: list[Any] = []
    slots: list[tuple[int, int]] = []

    def flush() -> None:
        if pending:
            vecs = backbone.forward(pending)
            for (i, v), vec in zip(slots, vecs):
                out[i, v] = vec
            pending.clear()
            slots.clear()

    for i, image in enumerate(images):
        rng = np.random.default_rng([seed, i])
        base = _reduced(image)
        for v in range(views):
            pending.append(backbone.preprocess(augment(base, rng)))
            slots.append((i, v))
            if len(pending) >= batch_size:
                flush()
    flush()
    return out


# ---- the head ----------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


_WEIGHT_NAMES = ("mean", "w1", "b1", "w2", "b2", "w0")


class DomainHead:
    """The trained projection: out = unit(relu((x - mean) @ w1 + b1) @ w2 + b2 + (x - mean) @ w0)
    (w0 absent without the linear path). Weights are float32 numpy arrays."""

    def __init__(
        self,
        backbone_model: str,
        config: DomainTrainingConfig,
        weights: dict[str, np.ndarray],
        stats: dict | None = None,
    ) -> None:
        config.validate()
        need = set(_WEIGHT_NAMES) if config.linear_path else set(_WEIGHT_NAMES) - {"w0"}
        if set(weights) != need:
            raise ValueError(f"domain head weights must be {sorted(need)}, got {sorted(weights)}")
        w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        d = w["mean"].shape[0]
        shapes = {
            "mean": (d,),
            "w1": (d, config.hidden),
            "b1": (config.hidden,),
            "w2": (config.hidden, config.dim),
            "b2": (config.dim,),
            "w0": (d, config.dim),
        }
        for k, v in w.items():
            if v.shape != shapes[k] or not np.all(np.isfinite(v)):
                raise ValueError(f"domain head weight {k}: shape {v.shape}, expected {shapes[k]} and finite values")
        self.backbone_model = backbone_model
        self.config = config
        self.dim = config.dim
        self.input_dim = d
        self.weights = w
        self.stats = dict(stats or {})

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d_backbone) -> (n, dim) float32 unit rows (numpy only)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or (x.shape[0] and x.shape[1] != self.input_dim):
            raise ValueError(f"domain head for {self.backbone_model} projects (n, {self.input_dim}) vectors, got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        w = self.weights
        xc = x - w["mean"]
        out = np.maximum(xc @ w["w1"] + w["b1"], 0.0) @ w["w2"] + w["b2"]
        if "w0" in w:
            out = out + xc @ w["w0"]
        return _unit(out)

    def _meta(self, with_stats: bool) -> dict:
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "kind": "curation-domain-head",
            "backbone_model": self.backbone_model,
            "config": asdict(self.config),
        }
        if with_stats:
            meta["stats"] = self.stats
        return meta

    @property
    def sha256(self) -> str:
        """Content hash of the weights and configuration (not the timing stats): identical training
        gives an identical hash."""
        h = hashlib.sha256(json.dumps(self._meta(False), sort_keys=True).encode())
        for k in sorted(self.weights):
            v = self.weights[k]
            h.update(f"{k}:{v.shape}:".encode())
            h.update(np.ascontiguousarray(v, dtype="<f4").tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """An .npz (no pickled objects): the float32 weights and a JSON header (format, backbone
        model id, config, stats)."""
        meta = json.dumps(self._meta(True), sort_keys=True, default=float).encode()
        buf = io.BytesIO()
        arrays = {k: v.astype("<f4") for k, v in self.weights.items()}
        np.savez(buf, meta=np.frombuffer(meta, dtype=np.uint8), **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "DomainHead":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: np.array(npz[k]) for k in npz.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
            if meta.get("kind") != "curation-domain-head":
                raise ValueError("not a domain head")
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"unsupported format {meta.get('format')!r}")
            config = DomainTrainingConfig.from_dict(meta["config"])
            return cls(str(meta["backbone_model"]), config, arrays, meta.get("stats") or {})
        except ValueError as e:
            raise ValueError(f"not a valid domain head: {e}") from None
        except Exception as e:  # zip, json, key errors: anything that is not a head we wrote
            raise ValueError(f"not a valid domain head ({type(e).__name__}: {e})") from None

    def __repr__(self) -> str:
        return f"DomainHead(backbone_model={self.backbone_model!r}, dim={self.dim}, sha256={self.sha256[:12]})"


# ---- training ----------------------------------------------------------------------------------


def _multi_positive_nce(z, groups: int, per: int, temperature: float):
    """InfoNCE where the `per` items of each group are positives of each other (SupCon form).
    z: (groups * per, dim) unit rows, group-major."""
    import torch

    sim = z @ z.T / temperature
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    label = torch.arange(groups, device=z.device).repeat_interleave(per)
    pos = (label[:, None] == label[None, :]) & ~eye
    return -(log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1)).mean()


def train_head(plain: np.ndarray, views: np.ndarray, config: DomainTrainingConfig, *, backbone_model: str) -> DomainHead:
    """Train the projection head. plain: (n, d) the backbone's unit vectors of the un-augmented
    images (what is stored for the backbone); views: (n, V, d) features of augmented views (V may
    exceed config.views: the first config.views are used). At most config.sample images (a seeded
    sample) are trained on. Deterministic for a given config.seed and thread count."""
    config.validate()
    plain = np.asarray(plain, dtype=np.float32)
    views = np.asarray(views, dtype=np.float32)
    if plain.ndim != 2 or views.ndim != 3 or views.shape[0] != plain.shape[0] or views.shape[2] != plain.shape[1]:
        raise ValueError(f"plain must be (n, d) and views (n, V, d), got {plain.shape} and {views.shape}")
    n, d = plain.shape
    if n < 2:
        raise ValueError(f"a domain head needs at least 2 images, got {n}")
    if views.shape[1] < config.views:
        raise ValueError(f"config asks for {config.views} views per image, only {views.shape[1]} given")
    if not (np.all(np.isfinite(plain)) and np.all(np.isfinite(views))):
        raise ValueError("plain and view features must be finite")
    views = views[:, : config.views]
    rng = np.random.default_rng(config.seed)
    if n > config.sample:
        keep = np.sort(rng.choice(n, config.sample, replace=False))
        plain, views = plain[keep], views[keep]
        n = config.sample

    import torch

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        mean = plain.mean(axis=0)
        centred = plain - mean
        items = np.concatenate([plain[:, None, :], views], axis=1) - mean  # (n, 1 + V, d)
        per = items.shape[1]
        x_all = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))

        lin1 = torch.nn.Linear(d, config.hidden)
        lin2 = torch.nn.Linear(config.hidden, config.dim)
        params = list(lin1.parameters()) + list(lin2.parameters())
        lin0 = None
        if config.linear_path:
            # PCA of the centred plain vectors: the head starts as the backbone space's top directions
            _, sing, vt = np.linalg.svd(centred, full_matrices=False)
            k = min(config.dim, vt.shape[0])
            w0 = np.zeros((d, config.dim), dtype=np.float32)
            w0[:, :k] = vt[:k].T * (np.sqrt(n) / max(float(sing[0]), 1e-12))
            lin0 = torch.nn.Parameter(torch.from_numpy(w0))
            params.append(lin0)
            with torch.no_grad():  # the MLP starts small next to the linear path
                lin2.weight.mul_(0.1)
                lin2.bias.zero_()

        def head(x):
            out = lin2(torch.relu(lin1(x)))
            return out + x @ lin0 if lin0 is not None else out

        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        batch = min(config.batch_size, n)
        steps_per_epoch = max(1, n // batch)
        total = steps_per_epoch * config.epochs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.1)
        gen = torch.Generator().manual_seed(config.seed)
        curve: list[float] = []
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=gen)
            epoch_loss = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch : (step + 1) * batch]
                xb = x_all[idx].reshape(-1, d)
                z = torch.nn.functional.normalize(head(xb), dim=1)
                loss = _multi_positive_nce(z, len(idx), per, config.temperature)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                epoch_loss += float(loss.detach())
            curve.append(epoch_loss / steps_per_epoch)
        weights = {
            "mean": mean.astype(np.float32),
            "w1": lin1.weight.detach().numpy().T.copy(),
            "b1": lin1.bias.detach().numpy().copy(),
            "w2": lin2.weight.detach().numpy().T.copy(),
            "b2": lin2.bias.detach().numpy().copy(),
        }
        if lin0 is not None:
            weights["w0"] = lin0.detach().numpy().copy()
    finally:
        torch.set_num_threads(threads)
    stats = {
        "images": int(n),
        "views": int(config.views),
        "steps": int(total),
        "loss_first": round(curve[0], 6),
        "loss_last": round(curve[-1], 6),
        "loss_curve": [round(v, 6) for v in curve],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return DomainHead(backbone_model, config, weights, stats)
