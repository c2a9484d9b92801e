"""Content and perceptual hashes.

`perceptual_hash` is the classic DCT pHash (Zauner 2010; the same construction as imagehash.phash):
grey 32x32 -> 2-D DCT -> low 8x8 block -> bit = coefficient > median. 64 bits stored as a signed
int64 so PostgreSQL's bigint holds it unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_BITS = 64


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hash_bits(pixels: np.ndarray) -> int:
    coeffs = dctn(pixels, type=2, norm="ortho")[:8, :8]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return int(np.array(value, dtype=np.uint64).view(np.int64))


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash of a PIL image, as a signed int64."""
    return perceptual_hashes(image)[0]


def perceptual_hashes(image: Image.Image) -> tuple[int, int]:
    """(pHash, pHash of the horizontally mirrored image): a flipped copy's pHash is close to the
    original's mirrored pHash, so the perceptual tier can match flips for one extra 32x32 DCT."""
    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    return _hash_bits(pixels), _hash_bits(pixels[:, ::-1])


def hamming_distances(query_hash: int, hashes_int64: np.ndarray) -> np.ndarray:
    """Hamming distance between one 64-bit hash and an array (n,) of int64 hashes -> (n,) uint8."""
    xor = np.bitwise_xor(np.asarray(hashes_int64, dtype=np.int64), np.int64(query_hash)).view(np.uint64)
    return np.bitwise_count(xor).astype(np.uint8)


def pairwise_hamming(hashes_int64: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances (n, n) uint8 for a small set of hashes (one drop's chunk)."""
    h = np.asarray(hashes_int64, dtype=np.int64)
    xor = np.bitwise_xor(h[:, None], h[None, :]).view(np.uint64)
    return np.bitwise_count(xor).astype(np.uint8)
