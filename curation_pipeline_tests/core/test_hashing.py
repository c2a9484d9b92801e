import io

import numpy as np
from PIL import Image, ImageEnhance

from curation_pipeline.core.hashing import hamming_distances, pairwise_hamming, perceptual_hash, sha256_hex
from curation_pipeline_tests.conftest import photo_crops


def _reencode(img, q):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_sha256_matches_known_digest():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_phash_survives_reencode_resize_and_brightness():
    img = photo_crops(1)[0]
    h = perceptual_hash(img)
    variants = [_reencode(img, 40), img.resize((img.width // 2, img.height // 2)), ImageEnhance.Brightness(img).enhance(1.2)]
    dists = hamming_distances(h, np.array([perceptual_hash(v) for v in variants], dtype=np.int64))
    assert dists.max() <= 6, dists


def test_phash_separates_different_photographs():
    hashes = np.array([perceptual_hash(c) for c in photo_crops(10)], dtype=np.int64)
    d = pairwise_hamming(hashes)
    off = d[~np.eye(len(hashes), dtype=bool)]
    assert off.min() > 6, off.min()
    assert (np.diag(d) == 0).all()


def test_phash_is_a_signed_int64_that_roundtrips():
    h = perceptual_hash(photo_crops(1)[0])
    assert -(2**63) <= h < 2**63
    assert hamming_distances(h, np.array([h], dtype=np.int64))[0] == 0
