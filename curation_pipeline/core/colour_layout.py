"""The offline embedder: a hand-crafted colour / layout / gradient descriptor.

This is *not* a learned model and makes no semantic claims. It needs no downloaded weights and
gives vectors that are useful for what curation needs offline: near-duplicate detection (re-encodes,
resizes, small crops and brightness changes stay close) and colour/layout diversity for selection.

Blocks, each centred and L2-normalised so that its cosine behaves like a correlation (unrelated
images score near 0, not near the positive mean of a histogram):
  * layout   256 = 16x16 grey thumbnail, standardised (invariant to brightness and contrast)
  * gradient 128 = 4x4 cells x 8 unsigned orientation bins, magnitude-weighted (edge layout)
  * colour    64 = 8x8 histogram of rg-chromaticity, square-rooted (colour, not brightness)
The blocks are weighted and the whole vector is L2-normalised: dim 448, float32."""

from __future__ import annotations

import numpy as np
from PIL import Image

DESCRIPTOR_NAME = "colour-layout-v1"
DESCRIPTOR_DIM = 448
_SIZE = 64
_BLOCK_WEIGHTS = {"layout": 0.60, "gradient": 0.55, "colour": 0.35}


def _centred_unit(block: np.ndarray) -> np.ndarray:
    block = block.astype(np.float64).ravel()
    block = block - block.mean()
    norm = np.linalg.norm(block)
    return block / norm if norm > 1e-12 else np.zeros_like(block)


def _resize_rgb(image: Image.Image) -> np.ndarray:
    # Squash to a square: aspect changes from small crops move vectors less than letterboxing would.
    return np.asarray(image.convert("RGB").resize((_SIZE, _SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0),
                      dtype=np.float64) / 255.0


def colour_layout_descriptor(image: Image.Image) -> np.ndarray:
    """(448,) float32 unit vector for one PIL image."""
    rgb = _resize_rgb(image)
    grey = rgb @ np.array([0.299, 0.587, 0.114])

    layout = grey.reshape(16, 4, 16, 4).mean(axis=(1, 3))

    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    orientation = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((orientation / np.pi * 8).astype(np.int64), 7)
    cell = (np.arange(_SIZE) // 16)
    cell_index = (cell[:, None] * 4 + cell[None, :]) * 8 + bins
    gradient = np.bincount(cell_index.ravel(), weights=magnitude.ravel(), minlength=128).reshape(16, 8)
    gradient = gradient / (np.linalg.norm(gradient, axis=1, keepdims=True) + 1e-6)

    total = rgb.sum(axis=2) + 1e-6
    r = np.minimum((rgb[..., 0] / total * 8).astype(np.int64), 7)
    g = np.minimum((rgb[..., 1] / total * 8).astype(np.int64), 7)
    colour = np.sqrt(np.bincount((r * 8 + g).ravel(), minlength=64) / float(_SIZE * _SIZE))

    parts = [
        _BLOCK_WEIGHTS["layout"] * _centred_unit(layout),
        _BLOCK_WEIGHTS["gradient"] * _centred_unit(gradient),
        _BLOCK_WEIGHTS["colour"] * _centred_unit(colour),
    ]
    vector = np.concatenate(parts)
    norm = np.linalg.norm(vector)
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def colour_layout_batch(images: list[Image.Image]) -> np.ndarray:
    """(n, 448) float32 unit vectors."""
    if not images:
        return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
    return np.stack([colour_layout_descriptor(im) for im in images])
