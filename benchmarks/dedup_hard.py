"""Near-duplicates on hard negatives (issue 15 baseline): the product's defaults vs peers on a set
that is hard on purpose.

An external evaluation (1,845 images from 72 source pictures, 1,397 true duplicate pairs; hard
negatives: distinct crops of one picture, flat art, textures) scored the default `curation ingest`
at precision 0.769 / recall 0.869 / F1 0.816 with 66 false merges, while benchmarks/dedup_quality.py
reports precision 1.000 because its set leaves the hard cases out. This builds an equivalent set:

  * sources: the pictures of benchmarks/selection_semantic.py (scikit-image data, scikit-learn
    sample images, matplotlib sample data, Debian desktop backgrounds under /usr/share/backgrounds),
    flat / low-detail pictures KEPT, plus a few generated gradient "digital art" pictures. Each
    source is tagged photo / texture / flat;
  * per source: DISTINCT crops (different regions, IoU <= 0.15 where the picture allows, longest
    side <= 512; nearly uniform or indistinguishable crops skipped as label noise), hard negatives
    of each other; for ~55% of the crops 1-3 duplicates made by one
    edit (JPEG q40-80, resize 0.5-0.9, crop 5-15%, brightness/contrast, horizontal flip, rotate
    +-1-3 degrees, text overlay, gaussian noise, PNG re-encode, exact copy) or a chain of 2 edits.
    All files in one folder under random names, seed 0, written once under /tmp/dedup-hard/ with
    the ground truth (truth.json: file -> distinct id, edit chain, source, source kind).

Ours: the real steps at the product defaults (manifest -> embed with the offline descriptor, the
near-duplicate role's default -> publish -> dedup_drop with DedupThresholds' max_hamming and the
backend's default_min_cosine) in a throwaway PostgreSQL, plus a small sweep of min_cosine /
max_hamming. Peers (benchmarks/.peers-venv, see dedup_quality.py): imagededup PHash
(max_distance_threshold 0-20; default 10), cleanvision near+exact duplicates (phash hash_size
sweep; default 8), fastdup when it is installed in that venv and runs offline (default: connected
components of its k=2 neighbour edges at ccthreshold 0.96; sweep 0.85-0.99). Scored pairwise (all pairs inside a predicted
group vs all pairs of the same distinct image): precision, recall, F1; false merges (sum over
predicted groups of distinct images in the group - 1: the distinct images a keep-one-per-group
dedup deletes); false pairs by hard-negative type (crops of one photo / texture / flat art /
other, i.e. different sources); recall by edit and by chain length.

    .venv/bin/python benchmarks/dedup_hard.py            # ~2 min on 2 cores once the set is cached (building it: +40 s, once)
    .venv/bin/python benchmarks/dedup_hard.py --no-peers # ours only (default + 16 sweep points), ~1 min

fastdup is not installed by default: `benchmarks/.peers-venv/bin/python -m pip install fastdup` (its
default model ships in the wheel; it runs offline). Installing it downgrades numpy / pandas / Pillow
/ scikit-learn in that venv; imagededup and cleanvision still run.

Writes benchmarks/results/dedup_hard.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dedup_quality import _jpeg, _png  # noqa: E402  (the same encoders as the easier set)

ROOT = Path(tempfile.gettempdir()) / "dedup-hard"
DATA_VERSION = "v3"
PEERS_VENV = HERE / ".peers-venv"
DISTINCT_PER_SOURCE = 11
DUP_FRACTION = 0.55
EDITS = ["jpeg", "resize", "crop", "brightness_contrast", "flip", "rotate", "text", "noise", "png", "exact"]
# The edit slots duplicates take in turn: every single edit once, chains of two twice.
SLOTS = EDITS + ["chain2", "chain2"]
CHAINABLE = [e for e in EDITS if e != "exact"]
TEXTURE_KEYS = ("brick", "grass", "gravel", "hubble_deep_field", "wood", "pixels", "grid", "truchet", "stripes", "blinds")
FLAT_CONTRAST = 0.12
# Distinct crops nobody can tell apart are label noise, not hard negatives: a crop that is nearly
# uniform (grey std < MIN_CROP_STD of full range) or whose 32x32 thumbnail is within MIN_CROP_MAD
# (mean absolute difference, 0-255) of an earlier distinct crop, of any source, is skipped.
MIN_CROP_STD = 0.02
MIN_CROP_MAD = 3.0
TARGET_PRECISION = 0.98
TARGET_F1_MARGIN = 0.10


# ---- the image set -------------------------------------------------------------------------------


def _gradients(rng: random.Random) -> list[tuple[str, Image.Image]]:
    """Generated flat digital art: smooth linear / radial colour gradients, 1600x1000."""
    w, h = 1600, 1000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for k in range(6):
        a, b = np.array([rng.randint(0, 255) for _ in range(3)]), np.array([rng.randint(0, 255) for _ in range(3)])
        if k % 2 == 0:
            ang = rng.uniform(0, np.pi)
            t = (xx * np.cos(ang) + yy * np.sin(ang)) / (w * abs(np.cos(ang)) + h * abs(np.sin(ang)))
        else:
            cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
            t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / np.hypot(w, h)
        t = (t - t.min()) / (t.max() - t.min())
        arr = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
        out.append((f"gradient-{k}", Image.fromarray(arr.clip(0, 255).astype(np.uint8))))
    return out


def find_all_sources() -> list[dict]:
    """selection_semantic's sources with flat ones kept, plus generated gradients; tagged by kind."""
    from selection_semantic import _contrast, _open_rgb, source_paths

    found = source_paths()
    out = []
    for name, origin, path in found:
        try:
            im = _open_rgb(path)
        except Exception:  # noqa: BLE001 - an unreadable background is skipped
            continue
        if min(im.size) < 200:
            continue
        c = _contrast(im)
        kind = "texture" if any(k in name.lower() for k in TEXTURE_KEYS) else "flat" if c < FLAT_CONTRAST else "photo"
        out.append({"name": name, "origin": origin, "kind": kind, "contrast": round(c, 3), "image": im})
    for name, im in _gradients(random.Random(7)):
        out.append({"name": name, "origin": "generated", "kind": "flat", "contrast": round(_contrast(im), 3), "image": im})
    out.sort(key=lambda s: (s["origin"], s["name"]))
    names = defaultdict(int)
    for s in out:  # two pictures may share a file name (gnome wood, MATE Wood): keep ids unique
        names[s["name"]] += 1
        if names[s["name"]] > 1:
            s["name"] += f"-{names[s['name']]}"
    return out


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _distinct_boxes(w: int, h: int, count: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    boxes: list[tuple[int, int, int, int]] = []
    for max_iou in (0.15, 0.3, 0.5):  # relax only if the picture is too small for `count`
        for _ in range(600):
            if len(boxes) >= count:
                return boxes
            area = rng.uniform(0.06, 0.3) * w * h
            ratio = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))
            bw, bh = int(np.sqrt(area * ratio)), int(np.sqrt(area / ratio))
            if bw > w or bh > h or bw < 96 or bh < 96:
                continue
            x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
            box = (x, y, x + bw, y + bh)
            if all(_iou(box, b) <= max_iou for b in boxes):
                boxes.append(box)
    return boxes


def apply_edit(img: Image.Image, kind: str, rng: random.Random) -> tuple[Image.Image, str]:
    """The edited picture and a short label with its parameter."""
    w, h = img.size
    if kind == "jpeg":
        q = rng.randint(40, 80)
        return Image.open(io.BytesIO(_jpeg(img, q))).convert("RGB"), f"jpeg q{q}"
    if kind == "resize":
        f = rng.uniform(0.5, 0.9)
        return img.resize((max(16, int(w * f)), max(16, int(h * f))), Image.Resampling.LANCZOS), f"resize {f:.2f}"
    if kind == "crop":
        f = rng.uniform(0.05, 0.15)
        dx, dy = int(w * f), int(h * f)
        ox, oy = rng.randint(0, dx), rng.randint(0, dy)
        return img.crop((ox, oy, w - (dx - ox), h - (dy - oy))), f"crop {f:.2f}"
    if kind == "brightness_contrast":
        b, c = rng.choice([0.7, 0.8, 1.2, 1.3]), rng.choice([0.8, 0.9, 1.1, 1.2])
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c), f"brightness_contrast {b}/{c}"
    if kind == "flip":
        return ImageOps.mirror(img), "flip"
    if kind == "rotate":
        angle = rng.choice([-3, -2, -1, 1, 2, 3]) * rng.uniform(0.8, 1.0)
        return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)), f"rotate {angle:+.1f}"
    if kind == "text":
        out = img.convert("RGB").copy()
        draw = ImageDraw.Draw(out)
        size = max(12, h // rng.choice([8, 10, 14]))
        font = ImageFont.load_default(size=size)
        text = rng.choice(["(c) ACME 2026", "SAMPLE", "@curation_bot", "holiday 2019", "DO NOT COPY"])
        x, y = rng.randint(0, max(1, w // 3)), rng.randint(0, max(1, h - size - 2))
        draw.text((x, y), text, fill=(255, 255, 255), font=font, stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
        return out, f"text {size}px"
    if kind == "noise":
        sigma = rng.uniform(5, 15)
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
        noisy = np.clip(arr + np.random.default_rng(rng.randrange(1 << 30)).normal(0, sigma, arr.shape), 0, 255)
        return Image.fromarray(noisy.astype(np.uint8)), f"noise {sigma:.0f}"
    raise ValueError(kind)


def make_duplicate(path: Path, slot: str, rng: random.Random) -> tuple[bytes, str, list[str]]:
    """(file bytes, suffix, edit chain) for one duplicate of the original at `path`."""
    if slot == "exact":
        return path.read_bytes(), path.suffix, ["exact"]
    chain = rng.sample(CHAINABLE, 2) if slot == "chain2" else [slot]
    img = Image.open(path).convert("RGB")
    labels = []
    for i, kind in enumerate(chain):
        last = i == len(chain) - 1
        if kind == "png":
            labels.append("png")
            if last:
                return _png(img), ".png", labels
            continue
        img, label = apply_edit(img, kind, rng)
        labels.append(label)
        if last and kind == "jpeg":
            return _jpeg(img, int(label.split("q")[1])), ".jpg", labels
    return _jpeg(img, 90), ".jpg", labels


def build_set(root: Path = ROOT, seed: int = 0) -> dict:
    truth_path = root / "truth.json"
    if truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth.get("version") == DATA_VERSION:
            return truth
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    rng = random.Random(seed)
    sources = find_all_sources()
    files: dict[str, dict] = {}

    def new_name(suffix: str) -> str:
        return f"{rng.getrandbits(48):012x}{suffix}"

    originals, signatures, skipped = [], [], defaultdict(int)
    for s in sources:
        im = s["image"]
        for n, box in enumerate(_distinct_boxes(im.width, im.height, DISTINCT_PER_SOURCE, rng)):
            crop = im.crop(box)
            crop.thumbnail((512, 512), Image.Resampling.LANCZOS)
            if np.asarray(crop.convert("L"), dtype=np.float32).std() / 255.0 < MIN_CROP_STD:
                skipped["uniform"] += 1
                continue
            sig = np.asarray(crop.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
            if signatures and min(float(np.abs(sig - o).mean()) for o in signatures) < MIN_CROP_MAD:
                skipped["indistinguishable"] += 1
                continue
            signatures.append(sig)
            fname = new_name(".jpg")
            (folder / fname).write_bytes(_jpeg(crop, 92))
            did = f"{s['name']}#{n}"
            files[fname] = {"distinct": did, "edits": [], "source": s["name"], "kind": s["kind"]}
            originals.append(fname)
    turn = 0
    for src in sorted(rng.sample(originals, k=int(len(originals) * DUP_FRACTION))):
        for _ in range(rng.choice([1, 1, 2, 3])):
            slot = SLOTS[turn % len(SLOTS)]
            turn += 1
            data, suffix, chain = make_duplicate(folder / src, slot, rng)
            fname = new_name(suffix)
            (folder / fname).write_bytes(data)
            files[fname] = {**files[src], "edits": chain}
    truth = {
        "version": DATA_VERSION,
        "seed": seed,
        "files": files,
        "sources": [{k: v for k, v in s.items() if k != "image"} | {"size": list(s["image"].size)} for s in sources],
        "skipped_distinct_crops": dict(skipped),
    }
    truth_path.write_text(json.dumps(truth, indent=1))
    return truth


# ---- scoring -------------------------------------------------------------------------------------


def _pairs_of(groups) -> set[tuple[str, str]]:
    out = set()
    for g in groups:
        names = sorted(g)
        out |= {(a, b) for i, a in enumerate(names) for b in names[i + 1 :]}
    return out


def components(pairs: set) -> list[list[str]]:
    """Groups as a keep-one dedup would see them: connected components of the predicted pairs."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    by = defaultdict(list)
    for x in parent:
        by[find(x)].append(x)
    return list(by.values())


def _edit_key(edits: list[str]) -> str:
    return "+".join(e.split(" ")[0] for e in edits)


class Scorer:
    def __init__(self, files: dict[str, dict]):
        self.files = files
        by = defaultdict(list)
        for f, m in files.items():
            by[m["distinct"]].append(f)
        self.truth = _pairs_of(by.values())

    def pair_type(self, a: str, b: str) -> str:
        fa, fb = self.files[a], self.files[b]
        if fa["distinct"] == fb["distinct"]:
            return "true"
        if fa["source"] != fb["source"]:
            return "other"
        return {"texture": "texture", "flat": "flat_art"}.get(fa["kind"], "photo_crops")

    def score(self, pairs: set, groups: list[list[str]] | None = None) -> dict:
        pairs = {tuple(sorted(p)) for p in pairs}
        tp = len(pairs & self.truth)
        p = tp / len(pairs) if pairs else 1.0
        r = tp / len(self.truth) if self.truth else 1.0
        groups = groups if groups is not None else components(pairs)
        false_merges = sum(len({self.files[f]["distinct"] for f in g}) - 1 for g in groups)
        false_by = defaultdict(int)
        for a, b in pairs - self.truth:
            false_by[self.pair_type(a, b)] += 1
        # recall of the pairs (original, edited copy), by edit and by chain length
        by_edit, by_len = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
        orig = {m["distinct"]: f for f, m in self.files.items() if not m["edits"]}
        for f, m in self.files.items():
            if not m["edits"]:
                continue
            hit = tuple(sorted((f, orig[m["distinct"]]))) in pairs
            for key, table in (
                (_edit_key(m["edits"]) if len(m["edits"]) == 1 else "chain2", by_edit),
                (len(m["edits"]), by_len),
            ):
                table[key][0] += hit
                table[key][1] += 1
            if len(m["edits"]) > 1:  # a chain also counts towards each of its edits
                for e in m["edits"]:
                    by_edit["in_chain:" + e.split(" ")[0]][0] += hit
                    by_edit["in_chain:" + e.split(" ")[0]][1] += 1
        return {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "pairs_predicted": len(pairs),
            "false_pairs": len(pairs) - tp,
            "false_merges": false_merges,
            "false_pairs_by_type": {k: false_by.get(k, 0) for k in ("photo_crops", "texture", "flat_art", "other")},
            "recall_by_edit": {k: round(v[0] / v[1], 3) for k, v in sorted(by_edit.items())},
            "recall_by_chain_length": {str(k): round(v[0] / v[1], 3) for k, v in sorted(by_len.items())},
        }


# ---- ours ----------------------------------------------------------------------------------------


def ours(folder: Path, sweep: list[tuple[int, float]], calibrate: bool = True) -> dict:
    """The product's steps at their defaults (manifest -> descriptor embeddings -> dedup_drop with
    the asset's defaults: proposal thresholds, pixel verification, mirrored proposals), then the
    thresholds-only dedup (verification off, as before issue 15) at its defaults and over `sweep`."""
    from curation_pipeline.core.dedup import DedupThresholds
    from curation_pipeline.core.verify import VerifierSettings
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.resources.embedders import mirror_permutation_for
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.dedup import dedup_drop, default_thresholds
    from curation_pipeline.steps.embed import DEFAULT_OPTIONS, embed_drop
    from curation_pipeline.steps.manifest import build_manifest

    with tempfile.TemporaryDirectory(prefix="dedup-hard-pg-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        catalog = Catalog(db.url)
        catalog.register_drop("hard", str(folder))
        t0 = time.perf_counter()
        build_manifest(catalog, LocalImageStore(), str(folder), "hard")
        manifest_s = time.perf_counter() - t0
        embedder = _descriptor()
        t1 = time.perf_counter()
        stats = embed_drop(catalog, embedder, "hard", DEFAULT_OPTIONS)
        catalog.publish_embeddings("hard", stats["model"])
        emb = catalog.load_embeddings(["hard"], stats["model"])
        embed_s = time.perf_counter() - t1
        model = stats["model"]
        verified = default_thresholds(model)
        strict = default_thresholds(model, verify=False)
        runs = {("verified", verified.max_hamming, verified.min_cosine): (verified, VerifierSettings())}
        for key in [(strict.max_hamming, strict.min_cosine)] + [
            k for k in sweep if k != (strict.max_hamming, strict.min_cosine)
        ]:
            runs[("thresholds", *key)] = (DedupThresholds(max_hamming=key[0], min_cosine=key[1]), None)
        results, timings, dedup_stats = {}, {}, {}
        for key, (th, verifier) in runs.items():
            t0 = time.perf_counter()
            dedup_stats[key] = dedup_drop(
                catalog, "hard", emb, th, verifier=verifier, mirror_perm=mirror_permutation_for(model)
            )
            timings[key] = time.perf_counter() - t0
            results[key] = [
                [g["representative"]["object_key"]] + [m["object_key"] for m in g["members"]]
                for g in catalog.duplicate_groups()
            ]
            if verifier is not None:
                pairs = catalog.dedup_pairs(["hard"])
        calibration = None
        if calibrate:
            # what `curation calibrate` would pick on this corpus, then a dedup with it
            from curation_pipeline.steps.calibrate import calibrate_dedup

            dedup_drop(catalog, "hard", emb, verified, verifier=VerifierSettings(), mirror_perm=mirror_permutation_for(model))
            t0 = time.perf_counter()
            calibration = calibrate_dedup(catalog, embedder, model, sample=200)
            calibration_s = time.perf_counter() - t0
            th = DedupThresholds(max_hamming=calibration["proposal_max_hamming"], min_cosine=calibration["proposal_min_cosine"])
            key = ("calibrated", th.max_hamming, th.min_cosine)
            t0 = time.perf_counter()
            dedup_stats[key] = dedup_drop(
                catalog,
                "hard",
                emb,
                th,
                verifier=VerifierSettings(**calibration["verifier"]),
                mirror_perm=mirror_permutation_for(model),
            )
            timings[key] = time.perf_counter() - t0
            results[key] = [
                [g["representative"]["object_key"]] + [m["object_key"] for m in g["members"]]
                for g in catalog.duplicate_groups()
            ]
            calibration = {
                "seconds": round(calibration_s, 1),
                "proposal_min_cosine": calibration["proposal_min_cosine"],
                "verifier_min_share": calibration["verifier"]["min_share"],
                "summary": calibration["summary"],
            }
        db.close()
    default = next(iter(runs))
    return {
        "groups": results,
        "default": default,
        "strict": ("thresholds", strict.max_hamming, strict.min_cosine),
        "model": model,
        "manifest_seconds": manifest_s,
        "embed_seconds": embed_s,
        "dedup_seconds": timings,
        "dedup_stats": {k: dedup_stats[k] for k in (default,)},
        "pairs": pairs,
        "calibration": calibration,
    }


def _descriptor():
    """The near-duplicate descriptor `curation ingest` embeds with by default (the offline backend)."""
    from curation_pipeline.resources.embedders import OfflineEmbedder

    return OfflineEmbedder()


def _verdict_table(pairs: list[dict], scorer: "Scorer", files: dict) -> dict:
    """Proposed pairs and the verifier's verdicts by truth type (true duplicates / hard negatives)."""
    out: dict[str, dict] = {}
    for p in pairs:
        t = scorer.pair_type(p["key_a"], p["key_b"])
        row = out.setdefault(t, {"proposed": 0, "accepted": 0, "reasons": defaultdict(int)})
        row["proposed"] += 1
        row["accepted"] += bool(p["accepted"])
        if not p["accepted"]:
            row["reasons"][p["reason"] if ":" not in p["reason"] else "unreadable"] += 1
    for row in out.values():
        row["reasons"] = dict(sorted(row["reasons"].items(), key=lambda kv: -kv[1]))
    return dict(sorted(out.items()))


# ---- peers ---------------------------------------------------------------------------------------

PEER_SCRIPT = r"""
import json, logging, sys, time, tempfile
from pathlib import Path
logging.disable(logging.WARNING)
sys.path.insert(0, sys.argv[2])
folder = Path(sys.argv[1]).resolve()
out, secs, notes = {}, {}, {}
from _peers import imagededup_pairs
t = time.perf_counter(); out["imagededup_phash"] = imagededup_pairs(folder, list(range(0, 21)))
secs["imagededup_phash"] = time.perf_counter() - t
from cleanvision import Imagelab
out["cleanvision"] = {}
for hs in (8, 4, 6, 12, 16):
    t = time.perf_counter()
    lab = Imagelab(data_path=str(folder))
    lab.find_issues({"near_duplicates": {"hash_size": hs}, "exact_duplicates": {}}, verbose=False)
    pairs = set()
    for kind in ("near_duplicates", "exact_duplicates"):
        for group in lab.info[kind]["sets"]:
            names = sorted(str(Path(p).relative_to(folder)) for p in group)
            pairs |= {(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    out["cleanvision"][str(hs)] = sorted(pairs)
    secs["cleanvision_%d" % hs] = time.perf_counter() - t
try:
    import fastdup
    t = time.perf_counter()
    work = tempfile.mkdtemp(prefix="fastdup-")
    fd = fastdup.create(work_dir=work, input_dir=str(folder))
    fd.run(overwrite=True, threshold=0.85, verbose=False)
    sim = fd.similarity()
    cols = list(sim.columns)
    a, b = ("filename_from", "filename_to") if "filename_from" in cols else ("from", "to")
    edges = [(Path(str(x)).name, Path(str(y)).name, float(d)) for x, y, d in zip(sim[a], sim[b], sim["distance"])]
    out["fastdup"] = {"edges": edges, "version": getattr(fastdup, "__version__", "?")}
    secs["fastdup"] = time.perf_counter() - t
except Exception as e:
    notes["fastdup"] = type(e).__name__ + ": " + str(e)[:400]
print(json.dumps({"pairs": out, "seconds": secs, "notes": notes}))
"""


def run_peers(folder: Path) -> dict:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "imagededup", "cleanvision"], check=True)
    t0 = time.perf_counter()
    env = {**os.environ, "SENTRY_OPT_OUT": "True"}  # fastdup: no telemetry attempts (no network here)
    proc = subprocess.run(
        [str(python), "-c", PEER_SCRIPT, str(folder), str(HERE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
        env=env,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def fastdup_pairs(edges: list, threshold: float) -> set:
    """fastdup's groups at a similarity threshold: connected components of its nearest-neighbour edges."""
    pairs = {tuple(sorted((a, b))) for a, b, d in edges if d >= threshold and a != b}
    return _pairs_of(components(pairs))


# ---- main ----------------------------------------------------------------------------------------


def _row(method: str, s: dict, seconds: float | None = None) -> dict:
    return {"method": method, **s, "seconds": None if seconds is None else round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-calibration", action="store_true", help="skip the `curation calibrate` row (~1 min)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    truth = build_set()
    build_s = time.perf_counter() - t0
    files = truth["files"]
    folder = ROOT / "images"
    scorer = Scorer(files)
    n_distinct = len({m["distinct"] for m in files.values()})
    kinds = defaultdict(int)
    for s in truth["sources"]:
        kinds[s["kind"]] += 1
    print(
        f"set: {len(files)} files, {len(truth['sources'])} sources ({dict(kinds)}), {n_distinct} distinct images, "
        f"{len(scorer.truth)} true pairs; skipped distinct crops {truth['skipped_distinct_crops']}; "
        f"built/loaded in {build_s:.0f} s",
        file=sys.stderr,
    )

    sweep = [(4, c) for c in (0.76, 0.80, 0.84, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98, 1.0)]
    sweep += [(h, 0.80) for h in (0, 2, 6, 8)] + [(h, 1.0) for h in (0, 2)]
    mine = ours(folder, sweep, calibrate=not args.no_calibration)
    default = mine["default"]
    ingest_s = mine["manifest_seconds"] + mine["embed_seconds"] + mine["dedup_seconds"][default]
    rows, curve = [], []
    for key, groups in mine["groups"].items():
        s = scorer.score(_pairs_of(groups), groups)
        if key == default:
            rows.append(
                _row(f"curation_pipeline defaults (verified; proposals hamming<={key[1]}, cosine>={key[2]})", s, ingest_s)
            )
            continue
        if key[0] == "calibrated":
            rows.append(
                _row(
                    f"curation_pipeline after `curation calibrate` (proposals cosine>={key[2]}, agreeing share>="
                    f"{mine['calibration']['verifier_min_share']})",
                    s,
                    mine["dedup_seconds"][key],
                )
            )
            continue
        curve.append({"max_hamming": key[1], "min_cosine": key[2], "default": key == mine["strict"], **s})
        if key == mine["strict"]:
            rows.append(
                _row(f"curation_pipeline thresholds only, before verification (hamming<={key[1]}, cosine>={key[2]})", s)
            )
    best = max(curve, key=lambda r: (r["f1"], r["min_cosine"]))
    rows.append(
        _row(
            f"curation_pipeline thresholds only, best of sweep (hamming<={best['max_hamming']}, cosine>={best['min_cosine']})",
            best,
        )
    )
    verdicts = _verdict_table(mine["pairs"], scorer, files)

    peers = {}
    if not args.no_peers:
        peers = run_peers(folder)
        sec = peers["seconds"]
        idd = {int(t): {tuple(p) for p in v} for t, v in peers["pairs"]["imagededup_phash"].items()}
        idd_scores = {t: scorer.score(p) for t, p in idd.items()}
        rows.append(_row("imagededup PHash default (max_distance_threshold=10)", idd_scores[10], sec["imagededup_phash"]))
        bt = max(idd_scores, key=lambda t: idd_scores[t]["f1"])
        rows.append(_row(f"imagededup PHash best (max_distance_threshold={bt})", idd_scores[bt], sec["imagededup_phash"]))
        cv = {int(h): {tuple(p) for p in v} for h, v in peers["pairs"]["cleanvision"].items()}
        cv_scores = {h: scorer.score(p) for h, p in cv.items()}
        rows.append(_row("cleanvision near+exact default (phash hash_size=8)", cv_scores[8], sec.get("cleanvision_8")))
        bh = max(cv_scores, key=lambda h: cv_scores[h]["f1"])
        rows.append(_row(f"cleanvision best (hash_size={bh})", cv_scores[bh], sec.get(f"cleanvision_{bh}")))
        if "fastdup" in peers["pairs"]:
            edges = peers["pairs"]["fastdup"]["edges"]
            fd_scores = {
                t: scorer.score(fastdup_pairs(edges, t)) for t in (0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
            }
            rows.append(_row("fastdup default (components at ccthreshold=0.96)", fd_scores[0.96], sec["fastdup"]))
            bf = max(fd_scores, key=lambda t: fd_scores[t]["f1"])
            rows.append(_row(f"fastdup best (threshold={bf})", fd_scores[bf], sec["fastdup"]))
            peers["fastdup_sweep"] = {
                str(t): {k: s[k] for k in ("precision", "recall", "f1", "false_merges")} for t, s in fd_scores.items()
            }
        peers["imagededup_sweep"] = {
            str(t): {k: s[k] for k in ("precision", "recall", "f1", "false_merges")} for t, s in idd_scores.items()
        }
        peers["cleanvision_sweep"] = {
            str(h): {k: s[k] for k in ("precision", "recall", "f1", "false_merges")} for h, s in cv_scores.items()
        }

    print(
        "| method | precision | recall | F1 | false merges | false pairs: photo crops / texture / flat art / other | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fb, secs = r["false_pairs_by_type"], r["seconds"] if r["seconds"] else "-"
        print(
            f"| {r['method']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['false_merges']} | "
            f"{fb['photo_crops']} / {fb['texture']} / {fb['flat_art']} / {fb['other']} | {secs} |"
        )
    edits = [e for e in EDITS] + ["chain2"]
    print("\nrecall (original, copy) by edit:\n")
    print("| method | " + " | ".join(edits) + " | 1 edit | 2 edits |")
    print("|---" * (len(edits) + 3) + "|")
    for r in rows:
        re_, rl = r["recall_by_edit"], r["recall_by_chain_length"]
        print(
            f"| {r['method'].split(' (')[0]} | "
            + " | ".join(f"{re_.get(e, '-')}" for e in edits)
            + f" | {rl.get('1', '-')} | {rl.get('2', '-')} |"
        )
    print("\nverifier verdicts on the proposed pairs (by truth type):\n")
    print("| pair type | proposed | accepted | rejected | rejected by reason |")
    print("|---|---|---|---|---|")
    for t, v in verdicts.items():
        print(f"| {t} | {v['proposed']} | {v['accepted']} | {v['proposed'] - v['accepted']} | {v['reasons']} |")
    st = mine["dedup_stats"][default]
    print(
        f"\nverification: {st['pairs_verified']} pairs ({st['pairs_accepted']} accepted), {st['images_prepared']} images "
        f"prepared, {st['verify_seconds']:.1f} s; dedup stats {json.dumps(st)}"
    )
    print("\nours without verification, operating curve:\n")
    print("| max_hamming | min_cosine | precision | recall | F1 | false merges | false pairs photo / texture / flat / other |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(curve, key=lambda r: (r["max_hamming"], r["min_cosine"])):
        fb = r["false_pairs_by_type"]
        print(
            f"| {r['max_hamming']} | {r['min_cosine']}{' (default)' if r['default'] else ''} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['f1']:.3f} | {r['false_merges']} | "
            f"{fb['photo_crops']} / {fb['texture']} / {fb['flat_art']} / {fb['other']} |"
        )
    peer_rows = [r for r in rows if not r["method"].startswith("curation_pipeline")]
    d = rows[0]
    verdict = {"precision_target": TARGET_PRECISION, "precision_met": d["precision"] >= TARGET_PRECISION}
    if peer_rows:
        bp = max(peer_rows, key=lambda r: r["f1"])
        verdict |= {
            "best_peer": bp["method"],
            "best_peer_f1": bp["f1"],
            "f1_margin": round(d["f1"] - bp["f1"], 4),
            "f1_margin_target": TARGET_F1_MARGIN,
            "f1_margin_met": d["f1"] - bp["f1"] >= TARGET_F1_MARGIN,
        }
    print(
        f"\ningest at defaults: manifest {mine['manifest_seconds']:.1f} s + embed {mine['embed_seconds']:.1f} s + "
        f"dedup {mine['dedup_seconds'][default]:.1f} s = {ingest_s:.1f} s; peers wall {peers.get('wall_seconds', 0):.0f} s"
    )
    print("verdict: " + json.dumps(verdict))
    if peers.get("notes"):
        print("peer notes: " + json.dumps(peers["notes"]))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "dedup_hard.json").write_text(
        json.dumps(
            {
                "set": {
                    "root": str(ROOT),
                    "version": DATA_VERSION,
                    "files": len(files),
                    "sources": len(truth["sources"]),
                    "sources_by_kind": dict(kinds),
                    "distinct_images": n_distinct,
                    "true_pairs": len(scorer.truth),
                    "skipped_distinct_crops": truth["skipped_distinct_crops"],
                },
                "model": mine["model"],
                "default": {"verified": True, "proposal_max_hamming": default[1], "proposal_min_cosine": default[2]},
                "verifier_verdicts": verdicts,
                "calibration": mine["calibration"],
                "dedup_stats": mine["dedup_stats"][default],
                "rows": rows,
                "curve": curve,
                "timing": {
                    "manifest_seconds": round(mine["manifest_seconds"], 1),
                    "embed_seconds": round(mine["embed_seconds"], 1),
                    "dedup_seconds_default": round(mine["dedup_seconds"][default], 1),
                    "ingest_seconds": round(ingest_s, 1),
                    "peers_seconds": {k: round(v, 1) for k, v in peers.get("seconds", {}).items()},
                    "peers_wall_seconds": round(peers.get("wall_seconds", 0), 1),
                },
                "peer_sweeps": {k: v for k, v in peers.items() if k.endswith("_sweep")},
                "peer_notes": peers.get("notes", {}),
                "verdict": verdict,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
