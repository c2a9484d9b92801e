"""The quality-flag registry: every flag evaluated from the stored signals, worded by its entry,
and the `blank` flag calibrated on real photographs and synthetic near-uniform frames."""

import io
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image, ImageDraw

from curation_pipeline.core.quality import (
    QUALITY_FLAGS,
    QUALITY_SIGNALS,
    QualityFlag,
    QualityTest,
    describe_flag,
    quality_flags,
    quality_signals,
    stored_signals,
)
from curation_pipeline.demo_data import _crops, _sources

CLEAN = {"blur_variance": 500.0, "brightness": 0.5, "contrast": 0.2, "entropy": 7.0, "aspect_ratio": 4 / 3}


def _record(image: Image.Image) -> dict:
    """What the manifest stores for an image: its signals, width and height."""
    return {**asdict(quality_signals(image)), "width": image.width, "height": image.height}


def _jpeg(image: Image.Image, quality: int = 80) -> Image.Image:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def near_uniform_frame(size=(1280, 720), level=128, noise=6.0, seed=0, bright_patch=False) -> Image.Image:
    """A frame with nothing in it (lens cap, wall), with camera sensor noise; JPEG as a rig saves it."""
    w, h = size
    grey = np.full((h, w), float(level)) + np.random.default_rng(seed).normal(0.0, noise, (h, w))
    image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    if bright_patch:  # a light switch on the wall: 5% of the frame
        ImageDraw.Draw(image).rectangle([w // 2, h // 2, w // 2 + w // 20, h // 2 + h // 20], fill=(250, 250, 250))
    return _jpeg(image)


@pytest.mark.parametrize(
    "frame",
    [
        near_uniform_frame(level=6, noise=6),  # lens cap
        near_uniform_frame(level=128, noise=8),  # grey wall, noisy sensor
        near_uniform_frame(level=235, noise=4, size=(640, 480)),  # white wall, small frame
        near_uniform_frame(level=128, noise=4, bright_patch=True),  # wall with a light switch
        near_uniform_frame(level=128, noise=12, size=(1920, 1080)),
    ],
    ids=["lens-cap", "grey-wall", "white-wall-vga", "wall-with-switch", "noisy-1080p"],
)
def test_near_uniform_frames_are_blank(frame):
    assert quality_flags(_record(frame))[0] == "blank"  # first: the map shows it, not "blurry"


def test_no_demo_photograph_is_blank_and_half_black_crops_with_content_are_not_either():
    crops = []
    for _, path in _sources():
        photo = Image.open(path).convert("RGB")
        crops += [c for c in _crops(photo, 2, 3) if c.width >= 48 and c.height >= 48]
    assert len(crops) > 80
    assert [i for i, c in enumerate(crops) if "blank" in quality_flags(_record(c))] == []
    # a corner of the retina photograph: half black, few grey levels (entropy < 3), but content:
    # the contrast test keeps it out (entropy alone would flag it)
    retina = dict(_sources())["retina"]
    corner = _record(_crops(Image.open(retina).convert("RGB"), 4, 4)[15])
    assert corner["entropy"] < 3.0 and corner["contrast"] > 0.15 and "blank" not in quality_flags(corner)


def test_every_stored_signal_can_raise_its_flag():
    cases = {
        "blank": {"entropy": 2.0, "contrast": 0.01},
        "blurry": {"blur_variance": 3.0},
        "dark": {"brightness": 0.05},
        "overexposed": {"brightness": 0.97},
        "low_contrast": {"contrast": 0.03},
        "tiny": {"width": 40, "height": 300},  # min_side derived from width and height
        "odd_aspect": {"aspect_ratio": 0.2},
    }
    assert set(cases) == set(QUALITY_FLAGS), "a new flag needs its case here"
    assert quality_flags({**CLEAN, "width": 640, "height": 480}) == []
    for flag, change in cases.items():
        assert flag in quality_flags({**CLEAN, "width": 640, "height": 480, **change}), flag


def test_a_flag_that_needs_all_its_tests_is_not_raised_by_one():
    assert "blank" not in quality_flags({**CLEAN, "entropy": 2.5})  # few levels but spread: content
    assert "blank" not in quality_flags({**CLEAN, "contrast": 0.01})  # flat but many levels: fog
    assert quality_flags({"contrast": 0.01}) == ["low_contrast"]  # entropy not measured: no evidence


def test_each_flag_describes_its_measured_value():
    record = {**CLEAN, "entropy": 2.345, "contrast": 0.0123, "width": 30_000, "height": 20, "aspect_ratio": 1500.0}
    assert describe_flag("blank", record) == "entropy 2.35 bits, contrast 0.012"
    assert describe_flag("blurry", record) == "Laplacian variance 500.0"
    assert describe_flag("dark", record) == "brightness 0.50"
    assert describe_flag("low_contrast", record) == "contrast 0.012"
    assert describe_flag("tiny", record) == "30000 x 20 px"
    assert describe_flag("odd_aspect", record) == "aspect 1500.00 (30000 x 20)"
    # a signal the row lacks reads as unknown instead of failing the report
    assert describe_flag("blank", {"contrast": 0.01}) == "entropy ? bits, contrast 0.010"
    with pytest.raises(ValueError, match="unknown quality flag 'ugly': use any of blank, blurry"):
        describe_flag("ugly", record)


def test_stored_signals_derive_min_side_and_skip_missing_ones():
    assert stored_signals({"width": 640, "height": 48, "brightness": None, "entropy": 5.0}) == {"entropy": 5.0, "min_side": 48}
    assert set(QUALITY_SIGNALS) >= {t.signal for f in QUALITY_FLAGS.values() for t in f.tests}


def test_registry_entries_are_checked():
    with pytest.raises(ValueError, match="unknown signal 'sharpness'"):
        QualityTest("sharpness", "<", 1.0)
    with pytest.raises(ValueError, match="use one of"):
        QualityTest("entropy", "==", 1.0)
    with pytest.raises(ValueError, match="colour must be #rrggbb"):
        QualityFlag("x", (QualityTest("entropy", "<", 1.0),), describe=str, colour="purple", summary="")
    with pytest.raises(ValueError, match="lower-case letters"):
        QualityFlag("Odd Aspect", (QualityTest("entropy", "<", 1.0),), describe=str, colour="#000000", summary="")
    with pytest.raises(ValueError, match="match must be"):
        QualityFlag("x", (QualityTest("entropy", "<", 1.0),), describe=str, colour="#000000", summary="", match="most")
    assert len({f.colour for f in QUALITY_FLAGS.values()}) == len(QUALITY_FLAGS)  # one colour each on the map
