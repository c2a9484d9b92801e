"""Pairwise near-duplicate verification: is image B an edited copy of image A?

Cheap tiers (pHash, descriptor or semantic cosine) only *propose* pairs; this module decides. The
verdict weighs several pieces of evidence, because none of them alone is enough on hard negatives
(distinct crops of one picture, periodic textures, flat digital art):

* geometry: SIFT keypoints (low contrast threshold, CLAHE, bounded image size, so flat art still
  has some), ratio-test matches, a RANSAC similarity transform, also against the mirrored image
  (flips). The transform must be one an edit can produce: scale within `max_scale`, rotation within
  `max_rotation_deg`;
* coverage: the share of *each* image the aligned overlap covers. Distinct crops of one picture
  align perfectly where they overlap, but their overlap is a small part of at least one of them;
  a crop-by-15% copy still covers 72% of its original;
* photometric agreement after alignment: zero-mean normalised correlation of the aligned overlap,
  at two resolutions (structure at 64 px, detail at 192 px). Periodic textures align under a
  translation by one period, but their detail does not agree; edits (JPEG, noise, brightness,
  text) lower the fine agreement far less than a different region does;
* images with too few keypoints (gradients, bokeh) are aligned photometrically instead (ECC,
  a similarity transform from identity, and mirrored) and must then agree more strictly.

Pure: numpy + OpenCV, no Dagster, no database. Features are computed once per image per run
(`prepare`), pairs are verified from them (`verify_pair`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

WORK_SIDE = 256  # every image is brought to this longest side (down or up) before keypoints
FINE_SIDE = 192  # longest side of the fine photometric comparison
COARSE_SIDE = 64  # longest side of the coarse one
SIFT_FEATURES = 600
SIFT_CONTRAST = 0.01  # OpenCV's default 0.04 finds ~13 keypoints on flat art at 512 px
RATIO = 0.8
FLAT_STD = 4.0  # grey levels: an overlap this flat has no structure to correlate
AGREE_TOLERANCE = 10.0  # grey levels (0-255) at FINE_SIDE after a 3x3 blur, at most

# verdict reasons
ACCEPTED_GEOMETRIC = "geometric"
ACCEPTED_PHOTOMETRIC = "photometric"
REJECTED_TRANSFORM = "transform not an edit"
REJECTED_COVERAGE = "overlap too small"
REJECTED_AGREEMENT = "pixels disagree"
REJECTED_NO_ALIGNMENT = "no alignment"


@dataclass(frozen=True)
class VerifierSettings:
    """What an edit can do, and how much agreement a copy must show. The defaults are calibrated
    on benchmarks/dedup_hard.py; `dedup_calibration` may replace the acceptance thresholds."""

    max_scale: float = 1.6  # crop chains magnify up to ~1.4x at equal working size
    max_rotation_deg: float = 8.0
    min_inliers: int = 10
    min_inlier_ratio: float = 0.25
    min_coverage: float = 0.65  # of each image: a 15% crop keeps 0.72 of its original
    min_share: float = 0.75  # geometric path: share of agreeing pixels at FINE_SIDE
    # geometric path: correlation at COARSE_SIDE, a floor only (overlays and a rotation's black
    # corners lower it; the share of agreeing pixels decides)
    min_correlation: float = 0.0
    # overwhelming geometry (this many RANSAC inliers, this share of the ratio-test matches; a
    # periodic texture's matches mostly fail the ratio test): a lossy resize of a fine texture
    # keeps its keypoints but loses the pixel detail, so a lower share suffices
    strong_inliers: int = 50
    strong_inlier_ratio: float = 0.8
    min_share_strong: float = 0.5
    max_colour_difference: float = 0.15  # geometric path: mean chromaticity difference
    keypoint_poor: int = 100  # below this many keypoints in either image, photometric alignment is tried
    min_photometric_share: float = 0.85  # keypoint-poor path
    min_photometric_correlation: float = 0.98
    max_photometric_colour_difference: float = 0.03
    max_photometric_rotation_deg: float = 4.0


@dataclass
class VerifyImage:
    """One image's verification features, computed once per run."""

    size: tuple[int, int]  # (width, height) of the working grey image
    grey: np.ndarray  # uint8, longest side WORK_SIDE
    colour: np.ndarray  # uint8 RGB, longest side 2 * COARSE_SIDE
    keypoints: np.ndarray  # (k, 2) float32, working coordinates
    descriptors: np.ndarray | None  # (k, 128) float32
    _mirrored: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)

    @property
    def n_keypoints(self) -> int:
        return len(self.keypoints)

    def mirrored(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Keypoints and descriptors of the horizontally mirrored image, derived from this
        image's own (no second detection): x -> width - x, and each SIFT descriptor's bins
        permuted as mirroring permutes them (_SIFT_MIRROR)."""
        if self._mirrored is None:
            pts = self.keypoints.copy()
            pts[:, 0] = self.size[0] - pts[:, 0]
            self._mirrored = (pts, None if self.descriptors is None else self.descriptors[:, _SIFT_MIRROR])
        return self._mirrored


def _sift_mirror_permutation() -> np.ndarray:
    """Index array mapping a SIFT descriptor (4 x 4 cells x 8 orientation bins, OpenCV layout) to
    the descriptor of the same keypoint in the mirrored image (its angle 180 - a): cell rows
    reversed, orientation bins reversed and rotated by one. Found by matching descriptors computed
    at mirrored keypoints of a mirrored photograph (mean |difference| 11% of the mean bin value;
    curation_pipeline_tests/core/test_verify.py checks it)."""
    idx = np.arange(128).reshape(4, 4, 8)
    return np.ascontiguousarray(np.roll(idx[::-1, :, ::-1], 1, axis=2).reshape(128))


_SIFT_MIRROR = _sift_mirror_permutation()


@dataclass(frozen=True)
class PairVerdict:
    accepted: bool
    reason: str
    mirrored: bool = False
    inliers: int = 0
    matches: int = 0
    coverage: float = 0.0  # min over the two images of the aligned overlap's share
    agreement: float = 0.0  # share of the aligned overlap's pixels that agree (0..1), at FINE_SIDE
    correlation: float = -1.0  # normalised correlation of the aligned overlap (-1..1), at COARSE_SIDE
    colour_difference: float = 1.0  # mean chromaticity difference of the aligned overlap
    scale: float = 0.0  # content scale B / A (1.0: same framing)
    rotation_deg: float = 0.0
    keypoints: int = 0  # the smaller of the two images' keypoint counts
    # geometric path, aligned: every test but the share of agreeing pixels passed (what calibration
    # varies); photometric-path verdicts are False here
    only_share_decides: bool = False

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _sift(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    sift = cv2.SIFT_create(nfeatures=SIFT_FEATURES, contrastThreshold=SIFT_CONTRAST)  # type: ignore[attr-defined]
    # CLAHE lifts local contrast so flat art yields keypoints (one object per call: not thread-safe)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    kps, desc = sift.detectAndCompute(clahe.apply(grey), None)
    # continuous coordinates (pixel i spans [i, i + 1)): they scale exactly with a resize
    pts = np.asarray([k.pt for k in kps], dtype=np.float32).reshape(-1, 2) + 0.5
    return pts, desc


def _resized(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    f = side / max(h, w)
    if f == 1.0:
        return img
    size = (max(4, round(w * f)), max(4, round(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def prepare(image: Image.Image | np.ndarray) -> VerifyImage:
    """Verification features of one image (PIL image or uint8 array, RGB or grey)."""
    if isinstance(image, Image.Image):
        image.draft("RGB", (WORK_SIDE, WORK_SIDE))  # JPEG: decode at a reduced scale where possible
        rgb = np.asarray(image.convert("RGB"))
    else:
        rgb = np.asarray(image, dtype=np.uint8)
        rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
    grey = np.ascontiguousarray(_resized(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY), WORK_SIDE))
    colour = np.ascontiguousarray(_resized(rgb, 2 * COARSE_SIDE))
    pts, desc = _sift(grey)
    return VerifyImage((grey.shape[1], grey.shape[0]), grey, colour, pts, desc)


def _match(da: np.ndarray | None, db: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches (Lowe): (indices into a, indices into b). Squared distances by one
    matrix product (BLAS), the two nearest by partition: several times faster than OpenCV's
    brute-force matcher at these sizes."""
    if da is None or db is None or len(da) < 2 or len(db) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.asarray(da, dtype=np.float32)
    b = np.asarray(db, dtype=np.float32)
    d2 = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    two = np.argpartition(d2, 1, axis=1)[:, :2]
    rows = np.arange(len(a))
    first, second = d2[rows, two[:, 0]], d2[rows, two[:, 1]]
    swap = second < first
    nearest = np.where(swap, two[:, 1], two[:, 0])
    d1, d2nd = np.minimum(first, second), np.maximum(first, second)
    ok = np.sqrt(np.maximum(d1, 0.0)) < RATIO * np.sqrt(np.maximum(d2nd, 0.0))
    return rows[ok].astype(np.int64), nearest[ok].astype(np.int64)


def _coverage(m: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int]) -> float:
    """min(overlap / area of A, overlap / area of B) for A's frame mapped into B's by `m`."""
    wa, ha = size_a
    wb, hb = size_b
    corners = np.asarray([[0, 0], [wa, 0], [wa, ha], [0, ha]], dtype=np.float32)
    mapped = corners @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    frame_b = np.asarray([[0, 0], [wb, 0], [wb, hb], [0, hb]], dtype=np.float32)
    inter, _ = cv2.intersectConvexConvex(mapped, frame_b)
    area_a_in_b = abs(cv2.contourArea(mapped))
    if area_a_in_b <= 0:
        return 0.0
    return float(min(inter / area_a_in_b, inter / float(wb * hb)))


def _ncc(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    sel = mask > 0
    if sel.sum() < 16:
        return -1.0
    a = x[sel].astype(np.float64)
    b = y[sel].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-9 else 0.0


def _warp_onto(src: np.ndarray, src_work: tuple[int, int], b: VerifyImage, m: np.ndarray, side: int):
    """`src` (A at any resolution; A's working size `src_work`) warped by `m` (working A ->
    working B) onto B's frame at longest side `side`: (warped float32, overlap mask, frame size).
    A is first resized (area filter) to the scale it lands at, so the warp itself is about 1:1
    and does not alias textures."""
    f = side / max(b.size)
    wb, hb = max(4, round(b.size[0] * f)), max(4, round(b.size[1] * f))
    target = f * float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # working A -> B-small scale
    aw, ah = max(4, round(src_work[0] * target)), max(4, round(src_work[1] * target))
    small = cv2.resize(src, (aw, ah), interpolation=cv2.INTER_AREA if aw < src.shape[1] else cv2.INTER_LINEAR)
    # small A pixel -> continuous -> working A -> working B -> small B continuous -> pixel
    ms = _pixel_map(m, aw / src_work[0], f)
    warped = cv2.warpAffine(small.astype(np.float32), ms, (wb, hb), flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpAffine(np.full((ah, aw), 255, np.uint8), ms, (wb, hb), flags=cv2.INTER_NEAREST, borderValue=0)
    return warped, cv2.erode(mask, np.ones((3, 3), np.uint8)), (wb, hb)


def _pixel_map(m: np.ndarray, fa: float, fb: float) -> np.ndarray:
    """`m` (continuous working A -> working B) as a warpAffine map between pixel grids of A
    resized by `fa` and B resized by `fb` (pixel centres at integer coordinates)."""
    shift_in = np.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    shift_out = np.asarray([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    full = shift_out @ np.diag([fb, fb, 1.0]) @ np.vstack([m, [0.0, 0.0, 1.0]]) @ np.diag([1 / fa, 1 / fa, 1.0]) @ shift_in
    return full[:2]


def _agreement(a: VerifyImage, b: VerifyImage, m: np.ndarray) -> tuple[float, float, float]:
    """(agreeing share at FINE_SIDE, correlation at COARSE_SIDE, colour difference at COARSE_SIDE)
    of A warped onto B by `m` (working coordinates), over their overlap."""
    warped, mask, size = _warp_onto(a.grey, a.size, b, m, FINE_SIDE)
    fine_b = cv2.resize(b.grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    share = _agreeing_share(cv2.GaussianBlur(warped, (3, 3), 0), cv2.GaussianBlur(fine_b, (3, 3), 0), mask)
    warped_c, mask_c, size_c = _warp_onto(a.colour, a.size, b, m, COARSE_SIDE)
    coarse_b = cv2.resize(b.colour, size_c, interpolation=cv2.INTER_AREA).astype(np.float32)
    grey_b = coarse_b.mean(axis=2)
    # a flat overlap (std under FLAT_STD levels) has no structure to correlate: it passes this
    # test and is judged by the share of agreeing pixels (whose tolerance shrinks with it) and colour
    flat = grey_b[mask_c > 0].std() < FLAT_STD if (mask_c > 0).sum() >= 16 else False
    corr = 1.0 if flat else _ncc(warped_c.mean(axis=2), grey_b, mask_c)
    return share, corr, _chroma_difference(warped_c, coarse_b, mask_c)


def _agreeing_share(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Share of the overlap's pixels that agree once a monotone intensity map (brightness,
    contrast, gamma, clipping) is fitted: the median of B's level in each of 16 quantile bins of
    A's. An overlay (text, a logo) spoils only the pixels it covers and moves no median; a
    different region (a texture shifted by one period) spoils most pixels. The tolerance is a
    quarter of B's own spread in the overlap, at most AGREE_TOLERANCE levels, so a flat image does
    not agree with everything."""
    sel = mask > 0
    if sel.sum() < 64:
        return 0.0
    a = x[sel].astype(np.float64)
    b = y[sel].astype(np.float64)
    edges = np.unique(np.quantile(a, np.linspace(0, 1, 17)))
    if len(edges) < 3:
        fitted = np.full_like(b, np.median(b))
    else:
        centres = [np.median(a[(a >= lo) & (a <= hi)]) for lo, hi in zip(edges[:-1], edges[1:])]
        levels = np.maximum.accumulate([np.median(b[(a >= lo) & (a <= hi)]) for lo, hi in zip(edges[:-1], edges[1:])])
        fitted = np.interp(a, centres, levels)
    tolerance = max(2.0, min(AGREE_TOLERANCE, 0.25 * float(b.std())))
    return float((np.abs(b - fitted) <= tolerance).mean())


def _chroma_difference(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Mean |chromaticity difference| (r, g of rgb / sum) over the overlap's pixels that are dark
    in neither image. Brightness and contrast edits keep chromaticity; another part of a colour
    gradient does not, which tells flat art apart where there are no keypoints."""
    sx, sy = x.sum(axis=2), y.sum(axis=2)
    sel = (mask > 0) & (sx > 60) & (sy > 60)
    if sel.sum() < 8:
        return 0.0
    cx = x[sel][:, :2] / sx[sel][:, None]
    cy = y[sel][:, :2] / sy[sel][:, None]
    return float(np.abs(cx - cy).sum(axis=1).mean())


def _geometric(a: VerifyImage, b: VerifyImage, mirrored: bool) -> tuple[np.ndarray | None, float, float, int, int]:
    """(similarity transform working A -> working B, its scale, its rotation in degrees, inliers,
    matches); A mirrored when asked (the transform then includes the mirror; scale and rotation
    are those after mirroring)."""
    pts_a, desc_a = a.mirrored() if mirrored else (a.keypoints, a.descriptors)
    ia, ib = _match(desc_a, b.descriptors)
    if len(ia) < 4:
        return None, 0.0, 0.0, 0, len(ia)
    m, inl = cv2.estimateAffinePartial2D(
        pts_a[ia], b.keypoints[ib], method=cv2.RANSAC, ransacReprojThreshold=4.0, maxIters=2000, confidence=0.995
    )
    if m is None:
        return None, 0.0, 0.0, 0, len(ia)
    spread = b.keypoints[ib][inl.ravel() > 0]
    if len(spread) < 3 or np.ptp(spread, axis=0).max() < 0.1 * max(b.size):
        return None, 0.0, 0.0, 0, len(ia)  # inliers bunched in one spot: no frame-wide alignment
    scale, rot = _affine_params(m)
    return (_unmirror(m, a) if mirrored else m), scale, rot, int(inl.sum()), len(ia)


def _unmirror(m: np.ndarray, a: VerifyImage) -> np.ndarray:
    """A transform of mirrored working A, expressed on working A itself (x -> w - x first)."""
    flip = np.asarray([[-1.0, 0.0, float(a.size[0])], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return (np.vstack([m, [0, 0, 1]]) @ flip)[:2]


def _identity(a: VerifyImage, b: VerifyImage) -> np.ndarray:
    """Working A stretched onto working B's frame (a resize or re-encode keeps the frame)."""
    return np.asarray([[b.size[0] / a.size[0], 0.0, 0.0], [0.0, b.size[1] / a.size[1], 0.0]])


def _ecc(a: VerifyImage, b: VerifyImage, mirrored: bool, side: int = 96) -> tuple[np.ndarray, float, float] | None:
    """Photometric alignment (ECC, similarity transform from the stretched identity) at `side` px,
    returned in working coordinates (A unmirrored), or None when it does not converge."""
    fb = side / max(b.size)
    wb, hb = max(8, round(b.size[0] * fb)), max(8, round(b.size[1] * fb))
    src = np.ascontiguousarray(a.grey[:, ::-1]) if mirrored else a.grey
    small_a = cv2.resize(src, (wb, hb), interpolation=cv2.INTER_AREA).astype(np.float32)
    small_b = cv2.resize(b.grey, (wb, hb), interpolation=cv2.INTER_AREA).astype(np.float32)
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
        _, warp = cv2.findTransformECC(small_b, small_a, warp, cv2.MOTION_AFFINE, criteria, None, 5)  # type: ignore[call-overload]
    except cv2.error:
        return None
    # warp maps B-small pixels to A-small pixels; invert, then express it in continuous working
    # coordinates: A-small = A-working * (wb / wa, hb / ha), B-small = B-working * fb
    inv = np.vstack([cv2.invertAffineTransform(warp).astype(np.float64), [0.0, 0.0, 1.0]])
    to_pixel = np.asarray([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    from_pixel = np.asarray([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    a_scale = np.diag([wb / a.size[0], hb / a.size[1], 1.0])
    m = (np.diag([1 / fb, 1 / fb, 1.0]) @ from_pixel @ inv @ to_pixel @ a_scale)[:2]
    scale, rot = _affine_params(m)
    return (_unmirror(m, a) if mirrored else m), scale, rot


def _affine_params(m: np.ndarray) -> tuple[float, float]:
    """Scale (geometric mean of the axes) and rotation of a 2x3 affine map."""
    a = m[:, :2]
    det = abs(float(np.linalg.det(a)))
    return float(np.sqrt(det)), float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))


def _judge(
    a: VerifyImage,
    b: VerifyImage,
    m: np.ndarray,
    scale: float,
    rot: float,
    *,
    photometric: bool,
    mirrored: bool,
    inliers: int,
    matches: int,
    kp: int,
    s: VerifierSettings,
) -> PairVerdict:
    """The verdict for one alignment `m` (working A -> working B) with its scale and rotation."""
    scale_rel = scale * float(np.sqrt(a.size[0] * a.size[1] / (b.size[0] * b.size[1])))  # 1.0: same framing
    max_rot = s.max_photometric_rotation_deg if photometric else s.max_rotation_deg
    base = PairVerdict(
        False, REJECTED_TRANSFORM, mirrored=mirrored, inliers=inliers, matches=matches, scale=scale_rel, rotation_deg=rot,
        keypoints=kp,
    )  # fmt: skip
    if not (1 / s.max_scale <= scale_rel <= s.max_scale) or abs(rot) > max_rot:
        return base
    cov = _coverage(m, a.size, b.size)
    if cov < s.min_coverage:
        return dataclasses.replace(base, reason=REJECTED_COVERAGE, coverage=cov)
    share, corr, colour = _agreement(a, b, m)
    others = False
    if photometric:
        ok = share >= s.min_photometric_share and corr >= s.min_photometric_correlation
        ok = ok and colour <= s.max_photometric_colour_difference
    else:
        others = corr >= s.min_correlation and colour <= s.max_colour_difference
        strong = inliers >= s.strong_inliers and inliers >= s.strong_inlier_ratio * max(matches, 1)
        strong_ok = others and strong and share >= s.min_share_strong  # accepted whatever min_share
        ok = strong_ok or (others and share >= s.min_share)
        others = others and not strong_ok
    reason = (ACCEPTED_PHOTOMETRIC if photometric else ACCEPTED_GEOMETRIC) if ok else REJECTED_AGREEMENT
    return dataclasses.replace(
        base,
        accepted=ok,
        reason=reason,
        coverage=cov,
        agreement=share,
        correlation=corr,
        colour_difference=colour,
        only_share_decides=others,
    )


def verify_pair(a: VerifyImage, b: VerifyImage, settings: VerifierSettings = VerifierSettings()) -> PairVerdict:
    """Is B an edited copy of A (or A of B)? See the module docstring for the evidence weighed."""
    s = settings
    kp = min(a.n_keypoints, b.n_keypoints)
    verdicts: list[PairVerdict] = []
    inliers_seen, matches_seen = 0, 0
    for mirrored in (False, True):
        m, scale, rot, inliers, matches = _geometric(a, b, mirrored)
        if inliers > inliers_seen:
            inliers_seen, matches_seen = inliers, matches
        if m is None or inliers < s.min_inliers or inliers < s.min_inlier_ratio * matches:
            continue
        v = _judge(a, b, m, scale, rot, photometric=False, mirrored=mirrored, inliers=inliers, matches=matches, kp=kp, s=s)
        if v.accepted:
            return v
        verdicts.append(v)
    if kp < s.keypoint_poor and inliers_seen < 2 * s.min_inliers:
        # keypoint-poor images: photometric alignment (the stretched frame as it is, and refined by
        # ECC; both also mirrored), stricter agreement, near-upright only
        for mirrored in (False, True):
            ident = _identity(a, b)
            tries = [(_unmirror(ident, a) if mirrored else ident, *_affine_params(ident))]
            found = _ecc(a, b, mirrored)
            if found is not None:
                tries.append(found)
            for m, scale, rot in tries:
                v = _judge(
                    a,
                    b,
                    m,
                    scale,
                    rot,
                    photometric=True,
                    mirrored=mirrored,
                    inliers=inliers_seen,
                    matches=matches_seen,
                    kp=kp,
                    s=s,
                )
                if v.accepted:
                    return v
                verdicts.append(v)
    if not verdicts:
        return PairVerdict(False, REJECTED_NO_ALIGNMENT, inliers=inliers_seen, matches=matches_seen, keypoints=kp)
    # the most telling rejection: the one that got furthest (agreement measured), best agreement
    return max(verdicts, key=lambda v: (v.reason == REJECTED_AGREEMENT, v.reason == REJECTED_COVERAGE, v.agreement, v.inliers))
