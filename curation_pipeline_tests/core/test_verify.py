"""Pixel verification of proposed near-duplicate pairs (core.verify): real photographs from
scikit-image, their edited copies (accepted) and the hard negatives (rejected): distinct crops of one
picture that overlap, a texture shifted by about one period, and flat colour gradients."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps
from skimage import data

from curation_pipeline.core.verify import (
    ACCEPTED_GEOMETRIC,
    REJECTED_COVERAGE,
    VerifierSettings,
    prepare,
    verify_pair,
)


def _jpeg(img: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _text(img: Image.Image) -> Image.Image:
    out = img.copy()
    size = img.height // 10
    ImageDraw.Draw(out).text(
        (10, img.height // 3), "(c) ACME 2026", fill=(255, 255, 255), font=ImageFont.load_default(size=size)
    )
    return out


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((400, 400))


EDITS = {
    "jpeg q40": lambda im: _jpeg(im, 40),
    "resize 0.5": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "crop 12%": lambda im: im.crop((30, 18, im.width - 18, im.height - 30)),
    "flip": ImageOps.mirror,
    "rotate 2.5": lambda im: im.rotate(2.5, resample=Image.Resampling.BILINEAR),
    "text": _text,
    "brighter": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.3)).enhance(0.8),
    "flip + crop": lambda im: ImageOps.mirror(im).crop((20, 20, im.width - 10, im.height - 25)),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_copies_are_accepted(photo, edit):
    v = verify_pair(prepare(photo), prepare(EDITS[edit](photo)))
    assert v.accepted, v
    assert v.coverage >= 0.7 and v.agreement >= 0.75
    assert v.mirrored == ("flip" in edit)


def test_order_of_the_pair_does_not_matter(photo):
    copy = EDITS["crop 12%"](photo)
    assert verify_pair(prepare(copy), prepare(photo)).accepted


def test_distinct_crops_of_one_picture_are_rejected_even_where_they_overlap():
    big = Image.fromarray(data.astronaut())  # 512 x 512
    a = big.crop((0, 0, 300, 300))
    b = big.crop((200, 150, 500, 450))  # overlaps a on 100 x 150 px: identical pixels there
    v = verify_pair(prepare(a), prepare(b))
    assert not v.accepted
    assert v.reason == REJECTED_COVERAGE and v.inliers >= 10, v  # it aligned them, and saw the overlap is small


@pytest.mark.parametrize("box", [(256, 256, 512, 512), (256, 0, 512, 256), (120, 130, 376, 386)])
def test_other_parts_of_a_texture_are_rejected(box):
    # a brick wall repeats: its keypoints align under a shift by whole bricks, its pixels do not
    brick = Image.fromarray(data.brick()).convert("RGB")  # 512 x 512
    assert not verify_pair(prepare(brick.crop((0, 0, 256, 256))), prepare(brick.crop(box))).accepted


def _gradient(c0, c1, w=320, h=240) -> Image.Image:
    t = np.linspace(0, 1, w)[None, :, None]
    arr = np.asarray(c0)[None, None, :] * (1 - t) + np.asarray(c1)[None, None, :] * t
    return Image.fromarray(np.repeat(arr, h, axis=0).clip(0, 255).astype(np.uint8))


def test_flat_art_in_other_colours_is_rejected_and_its_copy_accepted():
    art = _gradient((30, 60, 200), (240, 200, 40))
    other = _gradient((200, 40, 60), (40, 220, 200))
    prepared = prepare(art)
    assert prepared.n_keypoints < VerifierSettings().keypoint_poor  # the photometric path decides
    assert not verify_pair(prepared, prepare(other)).accepted
    assert verify_pair(prepared, prepare(_jpeg(art.resize((240, 180)), 60))).accepted


def test_unrelated_photographs_are_rejected(photo):
    coffee = Image.fromarray(data.coffee())
    v = verify_pair(prepare(photo), prepare(coffee))
    assert not v.accepted and v.reason != ACCEPTED_GEOMETRIC


def test_verdict_records_its_evidence(photo):
    d = verify_pair(prepare(photo), prepare(EDITS["rotate 2.5"](photo))).as_dict()
    assert set(d) >= {
        "accepted",
        "reason",
        "inliers",
        "matches",
        "coverage",
        "agreement",
        "correlation",
        "scale",
        "rotation_deg",
    }
    assert abs(abs(d["rotation_deg"]) - 2.5) < 0.5 and abs(d["scale"] - 1.0) < 0.05


def test_a_lossy_resize_of_a_fine_texture_is_accepted_on_its_geometry():
    # grass at 170 x 256, resized to 75% and saved at JPEG q60: every keypoint still aligns, but
    # the blades' detail is gone from the pixels, so fewer than 75% of them agree
    grass = Image.fromarray(data.grass()).convert("RGB").crop((0, 0, 170, 256))
    copy = _jpeg(grass.resize((127, 192), Image.Resampling.BILINEAR), 60)
    v = verify_pair(prepare(copy), prepare(grass))
    assert v.accepted and v.inliers >= 50, v
