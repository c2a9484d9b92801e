"""Self-calibrating near-duplicate thresholds, for any embedder, without labels.

Kept images of the user's own corpus are edited synthetically (the edit families a copy goes
through: JPEG, resize, crop 5-15%, brightness/contrast, horizontal flip, rotation up to 3 degrees,
text overlay, noise, PNG re-encode, and chains of two). Each (image, its edit) pair is a known
duplicate; each (image, its nearest distinct neighbour in the corpus) a known non-duplicate as
hard as the corpus offers. From the two score distributions:

* the proposal cosine is the highest value that still proposes `target_recall` of the edits (the
  cheap tier only proposes, so it must not lose copies);
* the verifier's acceptance (the share of agreeing pixels) is the loosest value whose precision
  on the calibration pairs reaches `target_precision`, but never looser than the default (the
  corpus's nearest neighbours are usually easier than the hard negatives the default was set on,
  benchmarks/dedup_hard.py), and only where it keeps 90% of the default's recall: without labels
  a neighbour the verifier accepts may be a real duplicate the corpus holds, and chasing it would
  discard most true copies. Where no such value exists the default stays, and the calibration
  says the precision target was not met on its pairs.

Pure: PIL + numpy; the caller embeds, hashes and verifies (steps/calibrate.py)."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

EDIT_FAMILIES = ("jpeg", "resize", "crop", "brightness_contrast", "flip", "rotate", "text", "noise", "png")


def synthetic_edit(image: Image.Image, rng: random.Random, kind: str | None = None) -> tuple[Image.Image, str]:
    """An edited copy of `image` and a label naming the edit(s). `kind`: one of EDIT_FAMILIES or
    "chain2" (two different families in turn); None draws one (a chain one time in four)."""
    if kind is None:
        kind = "chain2" if rng.random() < 0.25 else rng.choice(EDIT_FAMILIES)
    if kind == "chain2":
        first, second = rng.sample(EDIT_FAMILIES, 2)
        edited, a = synthetic_edit(image, rng, first)
        edited, b = synthetic_edit(edited, rng, second)
        return edited, f"{a} + {b}"
    img = image.convert("RGB")
    w, h = img.size
    if kind == "jpeg":
        q = rng.randint(40, 80)
        return _reencode(img, "JPEG", quality=q), f"jpeg q{q}"
    if kind == "png":
        return _reencode(img, "PNG"), "png"
    if kind == "resize":
        f = rng.uniform(0.5, 0.9)
        return img.resize((max(16, int(w * f)), max(16, int(h * f))), Image.Resampling.LANCZOS), f"resize {f:.2f}"
    if kind == "crop":
        f = rng.uniform(0.05, 0.15)
        dx, dy = int(w * f), int(h * f)
        ox, oy = rng.randint(0, dx), rng.randint(0, dy)
        return img.crop((ox, oy, w - (dx - ox), h - (dy - oy))), f"crop {f:.2f}"
    if kind == "brightness_contrast":
        bright, contrast = rng.choice([0.7, 0.8, 1.2, 1.3]), rng.choice([0.8, 0.9, 1.1, 1.2])
        edited = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(bright)).enhance(contrast)
        return edited, f"brightness {bright} contrast {contrast}"
    if kind == "flip":
        return ImageOps.mirror(img), "flip"
    if kind == "rotate":
        angle = rng.uniform(1.0, 3.0) * rng.choice([-1, 1])
        return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)), f"rotate {angle:+.1f}"
    if kind == "text":
        out = img.copy()
        size = max(12, h // rng.choice([8, 10, 14]))
        x, y = rng.randint(0, max(1, w // 3)), rng.randint(0, max(1, h - size - 2))
        ImageDraw.Draw(out).text(
            (x, y),
            "(c) 2026",
            fill=(255, 255, 255),
            font=ImageFont.load_default(size=size),
            stroke_width=1,
            stroke_fill=(0, 0, 0),
        )
        return out, f"text {size}px"
    if kind == "noise":
        sigma = rng.uniform(5, 15)
        arr = np.asarray(img, dtype=np.float32)
        noisy = arr + np.random.default_rng(rng.randrange(1 << 30)).normal(0, sigma, arr.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), f"noise {sigma:.0f}"
    raise ValueError(f"unknown edit family {kind!r}: use one of {', '.join(EDIT_FAMILIES)} or chain2")


def _reencode(img: Image.Image, fmt: str, **options) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@dataclass(frozen=True)
class CalibrationPick:
    proposal_min_cosine: float
    proposal_recall: float  # share of the edits the picked cosine proposes
    negatives_proposed: float  # share of the nearest distinct neighbours it proposes too
    min_share: float  # verifier acceptance (share of agreeing pixels, geometric path)
    verifier_recall: float  # share of the edits the verifier accepts at min_share
    verifier_precision: float  # on the calibration pairs (as many edits as neighbours)
    precision_target_met: bool
    cosine_curve: list[dict]  # per cosine threshold: recall of edits, share of neighbours proposed
    share_curve: list[dict]  # per share threshold: verifier recall, false accepts, precision


def pick_thresholds(
    positive_cosine: np.ndarray,
    negative_cosine: np.ndarray,
    positive_share: np.ndarray,
    negative_share: np.ndarray,
    *,
    default_share: float,
    target_recall: float = 0.97,
    target_precision: float = 0.99,
    min_cosine_floor: float = 0.5,
    max_recall_loss: float = 0.9,
) -> CalibrationPick:
    """Thresholds from the score distributions (see the module docstring). `*_share`: for each
    calibration pair, the verifier's agreeing share where only that share decides its verdict,
    NaN where it is rejected whatever the threshold, +inf where it is accepted whatever it."""
    pos_c = np.asarray(positive_cosine, dtype=np.float64)
    neg_c = np.asarray(negative_cosine, dtype=np.float64)
    if len(pos_c) == 0:
        raise ValueError("calibration needs at least one edited image")
    grid = np.round(np.arange(0.50, 1.0001, 0.01), 2)
    cosine_curve = [
        {
            "min_cosine": float(t),
            "recall": float((pos_c >= t).mean()),
            "negatives_proposed": float((neg_c >= t).mean()) if len(neg_c) else 0.0,
        }
        for t in grid
    ]
    # the highest threshold that still proposes target_recall of the edits (floor: 0.5)
    feasible = [r for r in cosine_curve if r["recall"] >= target_recall and r["min_cosine"] >= min_cosine_floor]
    chosen_c = max(feasible, key=lambda r: r["min_cosine"]) if feasible else cosine_curve[0]

    # NaN: rejected whatever the threshold; +inf: accepted whatever the threshold
    pos_s = np.nan_to_num(np.asarray(positive_share, dtype=np.float64), nan=-1.0, posinf=2.0)
    neg_s = np.nan_to_num(np.asarray(negative_share, dtype=np.float64), nan=-1.0, posinf=2.0)
    share_curve = []
    for t in np.round(np.arange(0.60, 0.9901, 0.01), 2):
        tp, fp = int((pos_s >= t).sum()), int((neg_s >= t).sum())
        share_curve.append(
            {
                "min_share": float(t),
                "recall": tp / len(pos_s),
                "false_accepts": fp,
                "precision": tp / (tp + fp) if tp + fp else 1.0,
            }
        )
    at_default = min(share_curve, key=lambda r: abs(r["min_share"] - default_share))
    # tighten only where it reaches the target at a bounded cost: a threshold that keeps at least
    # max_recall_loss of the default's recall. Nearest neighbours the verifier accepts may be real,
    # unmerged duplicates of the corpus (there are no labels), and chasing them would discard most
    # true copies (on benchmarks/dedup_hard.py: share 0.99, recall 0.23).
    passing = [
        r
        for r in share_curve
        if r["min_share"] >= default_share - 1e-9
        and r["precision"] >= target_precision
        and r["recall"] >= max_recall_loss * at_default["recall"]
    ]
    min_share = min(r["min_share"] for r in passing) if passing else float(default_share)
    at = min(share_curve, key=lambda r: abs(r["min_share"] - min_share))
    return CalibrationPick(
        proposal_min_cosine=float(chosen_c["min_cosine"]),
        proposal_recall=float(chosen_c["recall"]),
        negatives_proposed=float(chosen_c["negatives_proposed"]),
        min_share=round(min_share, 2),
        verifier_recall=float(at["recall"]),
        verifier_precision=float(at["precision"]),
        precision_target_met=bool(at["precision"] >= target_precision),
        cosine_curve=cosine_curve,
        share_curve=share_curve,
    )
