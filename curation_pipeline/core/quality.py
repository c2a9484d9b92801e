"""Cheap per-image quality signals, computed on a bounded-size grey copy.

Values are comparable across image sizes because every image is first reduced so that its long
side is at most `QUALITY_LONG_SIDE` pixels."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

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


# ---- the quality-flag registry -----------------------------------------------------------------
# One entry per flag. Everything else derives from it: the SQL behind selection and retrieval
# filters (`exclude: [blurry, dark]`, resources/filters.py), the report's quality galleries and the
# wording of each tile, the flag an embedding-map point shows and its colour. Thresholds are on the
# stored signals above (grey image reduced to a long side of QUALITY_LONG_SIDE, levels in [0, 1]).
# Adding a flag is one entry here plus its test.

# Every signal a flag may test: the manifest's stored columns, plus `min_side`, derived from the
# stored width and height (resources/filters.py IMAGE_COLUMNS maps each to its SQL expression).
QUALITY_SIGNALS = ("blur_variance", "brightness", "contrast", "entropy", "aspect_ratio", "min_side")
_COMPARE = {"<": lambda a, b: a < b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


@dataclass(frozen=True)
class QualityTest:
    signal: str  # one of QUALITY_SIGNALS
    op: str  # <, >, <= or >=
    threshold: float

    def __post_init__(self) -> None:
        if self.signal not in QUALITY_SIGNALS:
            raise ValueError(f"quality test on unknown signal {self.signal!r}: use one of {QUALITY_SIGNALS}")
        if self.op not in _COMPARE:
            raise ValueError(f"quality test {self.signal} {self.op!r}: use one of {sorted(_COMPARE)}")

    def holds(self, signals: dict) -> bool:
        """False when the signal is missing (not measured, or not fetched): no evidence, no flag."""
        value = signals.get(self.signal)
        return value is not None and bool(_COMPARE[self.op](float(value), self.threshold))


@dataclass(frozen=True)
class QualityFlag:
    name: str
    tests: tuple[QualityTest, ...]
    describe: Callable[[dict], str]  # an image's record (stored signals, width, height) -> the measured value, in words
    colour: str  # its points on the report's embedding map (#rrggbb)
    summary: str  # what it means, for config docs and CLI help
    match: str = "any"  # "any": one test raising is enough; "all": every test must hold

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", self.name):
            raise ValueError(f"quality flag name {self.name!r}: lower-case letters, digits and _ (a CLI and config value)")
        if not self.tests:
            raise ValueError(f"quality flag {self.name!r} has no tests")
        if self.match not in ("any", "all"):
            raise ValueError(f"quality flag {self.name!r}: match must be 'any' or 'all', got {self.match!r}")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", self.colour):
            raise ValueError(f"quality flag {self.name!r}: colour must be #rrggbb, got {self.colour!r}")

    def raised_by(self, signals: dict) -> bool:
        results = (t.holds(signals) for t in self.tests)
        return any(results) if self.match == "any" else all(results)


def _fmt(record: dict, key: str, spec: str) -> str:
    value = record.get(key)
    return "?" if value is None else format(value, spec)


def _size(record: dict) -> str:
    return f"{_fmt(record, 'width', 'd')} x {_fmt(record, 'height', 'd')}"


def _flags(*flags: QualityFlag) -> dict[str, QualityFlag]:
    out: dict[str, QualityFlag] = {}
    for flag in flags:
        if flag.name in out:
            raise ValueError(f"quality flag {flag.name!r} is registered twice")
        out[flag.name] = flag
    return out


# Order matters: the embedding map shows an image's first flag, so the most specific come first.
QUALITY_FLAGS: dict[str, QualityFlag] = _flags(
    QualityFlag(
        # A near-uniform frame: lens cap, sky, a wall, a grey frame from a camera still starting up.
        # Both tests must hold: few grey levels in use (Shannon entropy under 3.5 bits, fewer than
        # ~11 equally used levels) AND little spread (std under 0.05). Entropy alone would flag a
        # half-black frame with content (a retina photo's black corners: 2.5-2.8 bits, contrast 0.2);
        # contrast alone is low_contrast, which also catches fog and dusk that one may want to keep.
        # Calibrated on the demo photographs and on synthetic blank frames (JPEG 80, sensor noise
        # of standard deviation sd). None of the 127 images of the demo drops raises it; of 510
        # crops of the photographs (1x1 to 4x4 grids) two do, a flat patch of lunar surface (3.40
        # bits, contrast 0.014) and a page margin (3.22, 0.046); a crop of empty sky stays just
        # clear (3.64) and 50 low-contrast crops with content stay clear (3.79-5.5 bits). Lens-cap
        # and wall frames measure 1.8-3.4 bits up to sd 4 at 640x480, sd 8 at 1280x720 and sd 12 at
        # 1920x1080 (large frames are reduced to QUALITY_LONG_SIDE first, which averages noise
        # away); noisier small frames and smooth gradients (a sky spanning 20+ grey levels:
        # 4.4-5.4 bits) are not blank (low_contrast catches the flat ones).
        name="blank",
        tests=(QualityTest("entropy", "<", 3.5), QualityTest("contrast", "<", 0.05)),
        match="all",
        describe=lambda r: f"entropy {_fmt(r, 'entropy', '.2f')} bits, contrast {_fmt(r, 'contrast', '.3f')}",
        colour="#111111",
        summary="near-uniform frame (lens cap, sky, wall): entropy < 3.5 bits and contrast < 0.05",
    ),
    QualityFlag(
        name="blurry",
        tests=(QualityTest("blur_variance", "<", 20.0),),
        describe=lambda r: f"Laplacian variance {_fmt(r, 'blur_variance', '.1f')}",
        colour="#9467bd",
        summary="out of focus or motion-blurred: Laplacian variance < 20",
    ),
    QualityFlag(
        name="dark",
        tests=(QualityTest("brightness", "<", 0.12),),
        describe=lambda r: f"brightness {_fmt(r, 'brightness', '.2f')}",
        colour="#393b79",
        summary="under-exposed: mean grey level < 0.12",
    ),
    QualityFlag(
        name="overexposed",
        tests=(QualityTest("brightness", ">", 0.92),),
        describe=lambda r: f"brightness {_fmt(r, 'brightness', '.2f')}",
        colour="#bcbd22",
        summary="over-exposed: mean grey level > 0.92",
    ),
    QualityFlag(
        name="low_contrast",
        tests=(QualityTest("contrast", "<", 0.04),),
        describe=lambda r: f"contrast {_fmt(r, 'contrast', '.3f')}",
        colour="#8c564b",
        summary="flat (fog, haze, blank): grey-level std < 0.04",
    ),
    QualityFlag(
        name="tiny",
        tests=(QualityTest("min_side", "<", 64.0),),
        describe=lambda r: f"{_size(r)} px",
        colour="#e377c2",
        summary="shorter side under 64 px",
    ),
    QualityFlag(
        name="odd_aspect",
        tests=(QualityTest("aspect_ratio", ">", 2.5), QualityTest("aspect_ratio", "<", 0.4)),
        describe=lambda r: f"aspect {_fmt(r, 'aspect_ratio', '.2f')} ({_size(r)})",
        colour="#17becf",
        summary="panorama or strip: width / height > 2.5 or < 0.4",
    ),
)


def stored_signals(record: dict) -> dict:
    """The QUALITY_SIGNALS of an image record (a manifest row, or any dict of its columns);
    `min_side` is derived from width and height when not given. Missing signals are left out."""
    signals = {s: record[s] for s in QUALITY_SIGNALS if record.get(s) is not None}
    if "min_side" not in signals and record.get("width") is not None and record.get("height") is not None:
        signals["min_side"] = min(record["width"], record["height"])
    return signals


def quality_flags(record: dict) -> list[str]:
    """Names of the QUALITY_FLAGS an image raises, in registry order, from its stored signals
    (`stored_signals`: a record with width and height gets `min_side`). Missing signals raise none."""
    signals = stored_signals(record)
    return [name for name, flag in QUALITY_FLAGS.items() if flag.raised_by(signals)]


def describe_flag(flag: str, record: dict) -> str:
    """The measured value behind `flag` for one image, in words (report tiles)."""
    return quality_flag(flag).describe(record)


def quality_flag(name: str) -> QualityFlag:
    if name not in QUALITY_FLAGS:
        raise ValueError(f"unknown quality flag {name!r}: use any of {', '.join(QUALITY_FLAGS)}")
    return QUALITY_FLAGS[name]
