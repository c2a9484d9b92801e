"""The offline embedder: a hand-crafted colour / layout / gradient descriptor.

This is *not* a learned model and makes no semantic claims. It needs no downloaded weights and
gives vectors that are useful for what curation needs offline: near-duplicate detection (re-encodes,
resizes, small crops and brightness changes stay close) and colour/layout diversity for selection.

Blocks, each centred and L2-normalised so that its cosine behaves like a correlation (unrelated
images score near 0, not near the positive mean of a histogram):
  * layout   256 = 16x16 grey thumbnail, standardised (invariant to brightness and contrast)
  * gradient 128 = 4x4 cells x 8 unsigned orientation bins, magnitude-weighted (edge layout)
  * colour    64 = 8x8 histogram of rg-chromaticity, square-rooted (colour, not brightness)
The blocks are weighted and the whole vector is L2-normalised: dim 448, float32.

Split in two like a learned model: `preprocess` (decode-side, per image: a 64x64 RGB uint8 array)
and `descriptor_batch` (compute-side, vectorised over a batch of such arrays)."""

from __future__ import annotations

import numpy as np
from PIL import Image

DESCRIPTOR_NAME = "colour-layout-v2"
DESCRIPTOR_DIM = 448
INPUT_SIZE = 64
# JPEGs may be decoded at a reduced scale down to this side before the squash to 64x64: for 4:3
# photos libjpeg's 1/8 scale is then allowed, the decode is ~25% cheaper, and the descriptor (whose
# finest block is a 16x16 grey layout) does not notice.
DRAFT_SIZE = 32
_BLOCK_WEIGHTS = (0.60, 0.55, 0.35)  # layout, gradient, colour
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CELL = np.arange(INPUT_SIZE) // 16
_CELL_INDEX = ((_CELL[:, None] * 4 + _CELL[None, :]) * 8).astype(np.int64)  # (64, 64): first bin of the cell


def preprocess(image: Image.Image) -> np.ndarray:
    """(64, 64, 3) uint8. Squashed to a square: aspect changes from small crops move vectors less
    than letterboxing would."""
    return np.asarray(
        image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8
    )


def _centred_unit(block: np.ndarray) -> np.ndarray:
    """Row-wise: subtract the mean, divide by the norm (rows of zeros stay zero)."""
    block = block - block.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(block, axis=1, keepdims=True)
    return np.divide(block, norm, out=np.zeros_like(block), where=norm > 1e-12)


# Unsigned orientation in 8 bins of pi/8 without arctan2: fold each gradient into the upper
# half-plane, then count how many bin boundaries k*pi/8 (k = 1..7) it lies beyond (a cross product).
_BOUNDARY_COS = np.cos(np.arange(1, 8) * np.pi / 8).astype(np.float32)
_BOUNDARY_SIN = np.sin(np.arange(1, 8) * np.pi / 8).astype(np.float32)


def _orientation_bins(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    flip = (gy < 0) | ((gy == 0) & (gx < 0))
    fx = np.where(flip, -gx, gx)
    fy = np.where(flip, -gy, gy)
    bins = np.zeros(gx.shape, dtype=np.int64)
    for c, s in zip(_BOUNDARY_COS, _BOUNDARY_SIN):
        bins += (c * fy - s * fx) > 0
    return bins


def descriptor_batch(pixels: np.ndarray) -> np.ndarray:
    """(n, 64, 64, 3) uint8 -> (n, 448) float32 unit vectors."""
    pixels = np.asarray(pixels)
    n = pixels.shape[0]
    if n == 0:
        return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
    rgb = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    grey = rgb @ _GREY  # (n, 64, 64)

    layout = grey.reshape(n, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(n, 256)

    gy, gx = (np.asarray(g) for g in np.gradient(grey, axis=(1, 2)))
    magnitude = np.sqrt(gx * gx + gy * gy)
    bins = _orientation_bins(gx, gy)
    index = (np.arange(n, dtype=np.int64)[:, None, None] * 128 + _CELL_INDEX[None] + bins).ravel()
    gradient = np.bincount(index, weights=magnitude.ravel(), minlength=n * 128).reshape(n, 16, 8)
    gradient = (gradient / (np.linalg.norm(gradient, axis=2, keepdims=True) + 1e-6)).reshape(n, 128)

    total = rgb.sum(axis=3) + np.float32(1e-6)
    r = np.minimum((rgb[..., 0] / total * 8).astype(np.int64), 7)
    g = np.minimum((rgb[..., 1] / total * 8).astype(np.int64), 7)
    colour_index = (np.arange(n, dtype=np.int64)[:, None, None] * 64 + r * 8 + g).ravel()
    colour = np.sqrt(np.bincount(colour_index, minlength=n * 64).reshape(n, 64) / float(INPUT_SIZE * INPUT_SIZE))

    w_layout, w_gradient, w_colour = _BLOCK_WEIGHTS
    vector = np.concatenate(
        [
            w_layout * _centred_unit(layout.astype(np.float64)),
            w_gradient * _centred_unit(gradient.astype(np.float64)),
            w_colour * _centred_unit(colour.astype(np.float64)),
        ],
        axis=1,
    )
    norm = np.linalg.norm(vector, axis=1, keepdims=True)
    return np.divide(vector, norm, out=np.zeros_like(vector), where=norm > 0).astype(np.float32)


def colour_layout_descriptor(image: Image.Image) -> np.ndarray:
    """(448,) float32 unit vector for one PIL image."""
    return descriptor_batch(preprocess(image)[None])[0]


def colour_layout_batch(images: list[Image.Image]) -> np.ndarray:
    """(n, 448) float32 unit vectors."""
    if not images:
        return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
    return descriptor_batch(np.stack([preprocess(im) for im in images]))


def mirror_permutation() -> np.ndarray:
    """(448,) index array p such that descriptor(horizontally flipped image) ~= descriptor(image)[p]:
    layout and gradient cells swap columns, unsigned orientation bin b becomes 7 - b, and the colour
    histogram does not change. Exact up to gradients lying exactly on a bin boundary (measured
    cosine 0.80-1.00 on photo crops, median 0.99), so a flipped copy can be searched for with
    no second embedding."""
    layout = np.arange(256).reshape(16, 16)[:, ::-1].ravel()
    gradient = (256 + np.arange(128).reshape(4, 4, 8)[:, ::-1, ::-1]).ravel()
    return np.r_[layout, gradient, np.arange(384, 448)].astype(np.int64)
