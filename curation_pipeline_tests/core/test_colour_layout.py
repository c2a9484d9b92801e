import io

import numpy as np
from PIL import Image, ImageEnhance

from curation_pipeline.core.colour_layout import DESCRIPTOR_DIM, colour_layout_batch, colour_layout_descriptor
from curation_pipeline_tests.conftest import photo_crops


def _jpeg_roundtrip(img, q):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_vectors_are_unit_norm_float32_of_fixed_dim():
    v = colour_layout_batch(photo_crops(3))
    assert v.shape == (3, DESCRIPTOR_DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_near_duplicates_stay_close():
    img = photo_crops(1)[0]
    base = colour_layout_descriptor(img)
    w, h = img.size
    variants = [
        _jpeg_roundtrip(img, 40),
        img.resize((w * 3 // 5, h * 3 // 5)),
        ImageEnhance.Brightness(img).enhance(1.25),
        img.crop((w // 25, h // 25, w - w // 25, h - h // 25)),
    ]
    sims = [float(base @ colour_layout_descriptor(v)) for v in variants]
    assert min(sims) > 0.90, sims


def test_distinct_photographs_are_far_apart():
    v = colour_layout_batch(photo_crops(12))
    sims = v @ v.T
    off = sims[~np.eye(len(v), dtype=bool)]
    assert off.max() < 0.80, off.max()


def test_colour_changes_move_the_vector():
    img = photo_crops(1)[0]
    r, g, b = img.split()
    swapped = Image.merge("RGB", (b, g, r))
    assert float(colour_layout_descriptor(img) @ colour_layout_descriptor(swapped)) < 0.97


def test_deterministic():
    img = photo_crops(1)[0]
    assert np.array_equal(colour_layout_descriptor(img), colour_layout_descriptor(img))


def test_the_mirror_permutation_predicts_a_flipped_images_vector():
    from PIL import ImageOps

    from curation_pipeline.core.colour_layout import colour_layout_descriptor, mirror_permutation
    from curation_pipeline_tests.conftest import photo_crops

    perm = mirror_permutation()
    assert sorted(perm.tolist()) == list(range(448))  # a true permutation
    sims = []
    for im in photo_crops(12):
        flipped = colour_layout_descriptor(ImageOps.mirror(im))
        direct = colour_layout_descriptor(im)
        sims.append((float(flipped @ direct[perm]), float(flipped @ direct)))
    assert np.median([a for a, _ in sims]) > 0.98
    assert all(a > b for a, b in sims if b < 0.95)  # the permutation beats the unflipped vector
