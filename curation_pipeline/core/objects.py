"""Objects as items: the crop of a box that gets embedded, with context around it.

A box is cut with `padding` of its size on every side (an object's surroundings tell a model what
it is: a sign on a pole, a cup on a table), grown to at least `min_crop` pixels around its centre,
clipped to the image. Crops whose longer side is under `upscale_to` are upscaled (bicubic) so that
a 12-pixel object reaches the embedder as a shape, not as four pixels of blur; such objects are
counted as tiny."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CropSettings:
    padding: float = 0.15  # context on each side, as a share of the box's width / height
    min_crop: int = 32  # the crop is at least this many pixels wide and high (where the image allows)
    upscale_to: int = 64  # crops with a longer side below this are upscaled to it
    tiny_side: float = 16.0  # boxes with a shorter side below this count as tiny


DEFAULT_CROP = CropSettings()


def context_crop(box: Box, image_size: tuple[int, int], settings: CropSettings = DEFAULT_CROP) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop for a (x, y, w, h) box in an image of (width, height)."""
    x, y, w, h = box
    width, height = image_size
    cx, cy = x + w / 2, y + h / 2
    half_w = max(w * (1 + 2 * settings.padding), settings.min_crop) / 2
    half_h = max(h * (1 + 2 * settings.padding), settings.min_crop) / 2
    left, right = max(0, int(round(cx - half_w))), min(width, int(round(cx + half_w)))
    top, bottom = max(0, int(round(cy - half_h))), min(height, int(round(cy + half_h)))
    if right <= left:
        right = min(width, left + 1)
    if bottom <= top:
        bottom = min(height, top + 1)
    return left, top, right, bottom


def is_tiny(box: Box, settings: CropSettings = DEFAULT_CROP) -> bool:
    return min(box[2], box[3]) < settings.tiny_side


def crop_object(image: Image.Image, box: Box, settings: CropSettings = DEFAULT_CROP) -> Image.Image:
    """The object's crop with context, upscaled when small, in RGB."""
    crop = image.crop(context_crop(box, image.size, settings)).convert("RGB")
    longer = max(crop.size)
    if longer < settings.upscale_to:
        scale = settings.upscale_to / longer
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.BICUBIC)
    return crop


def repeat_counts(
    vectors: np.ndarray, groups: np.ndarray, classes: Sequence[str], *, min_cosine: float, chunk_rows: int = 4096
) -> np.ndarray:
    """For each object (rows of unit-norm `vectors`), how many objects of the same class in another
    group (another image) are at least `min_cosine` similar: the same object seen again, e.g. in
    the next frames of a sequence. Exact, per class, in row chunks (memory: chunk_rows x class size)."""
    v = np.asarray(vectors, dtype=np.float32)
    groups = np.asarray(groups)
    labels = np.asarray(classes, dtype=object)
    out = np.zeros(len(v), dtype=np.int64)
    for cls in set(labels.tolist()):
        rows = np.nonzero(labels == cls)[0]
        sub, sub_groups = v[rows], groups[rows]
        for start in range(0, len(rows), chunk_rows):
            sims = sub[start : start + chunk_rows] @ sub.T
            same = sub_groups[start : start + chunk_rows, None] == sub_groups[None, :]
            out[rows[start : start + chunk_rows]] = ((sims >= min_cosine) & ~same).sum(axis=1)
    return out
