"""Cheap per-image quality signals, computed on a bounded-size grey copy.

Values are comparable across image sizes because every image is first reduced so that its long
side is at most `QUALITY_LONG_SIDE` pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import laplace

QUALITY_LONG_SIDE = 512


@dataclass(frozen=True)
class QualitySignals:
    blur_variance: float  # variance of the Laplacian: low means blurry
    brightness: float  # mean grey level in [0, 1]
    contrast: float  # std of grey level in [0, 1]
    entropy: float  # Shannon entropy of the 256-bin grey histogram, bits (0..8)
    aspect_ratio: float  # width / height

    @property
    def sharpness_score(self) -> float:
        """Monotone in blur variance, in [0, 1): used to rank representatives."""
        return float(self.blur_variance / (self.blur_variance + 100.0))


def quality_signals(image: Image.Image) -> QualitySignals:
    width, height = image.size
    grey = image.convert("L")
    scale = QUALITY_LONG_SIDE / max(width, height)
    if scale < 1.0:
        grey = grey.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    pixels = np.asarray(grey, dtype=np.float32)
    hist = np.bincount(pixels.astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return QualitySignals(
        blur_variance=float(laplace(pixels).var()) if min(pixels.shape) >= 3 else 0.0,
        brightness=float(pixels.mean() / 255.0),
        contrast=float(pixels.std() / 255.0),
        entropy=float(-(p * np.log2(p)).sum()),
        aspect_ratio=float(width / height),
    )


# Quality issues as (column, comparison, threshold) over the stored signals: used by selection
# filters (`exclude: [blurry, dark]`) and by the report's quality gallery. Thresholds are for the
# signals above (grey image reduced to a long side of QUALITY_LONG_SIDE, levels in [0, 1]).
QUALITY_FLAGS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "blurry": (("blur_variance", "<", 20.0),),
    "dark": (("brightness", "<", 0.12),),
    "overexposed": (("brightness", ">", 0.92),),
    "low_contrast": (("contrast", "<", 0.04),),
    "tiny": (("min_side", "<", 64.0),),
    "odd_aspect": (("aspect_ratio", ">", 2.5), ("aspect_ratio", "<", 0.4)),
}


def quality_flags(signals: dict) -> list[str]:
    """Names of the QUALITY_FLAGS an image's stored signals raise (missing signals raise none)."""
    out = []
    for flag, tests in QUALITY_FLAGS.items():
        for column, op, threshold in tests:
            value = signals.get(column)
            if value is not None and (value < threshold if op == "<" else value > threshold):
                out.append(flag)
                break
    return out
