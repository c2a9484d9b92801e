"""Near-duplicate detection quality: this project vs imagededup (PHash) and cleanvision.

Builds a labelled set from photographs bundled with scikit-image / scikit-learn: non-overlapping
crops are the distinct images; duplicates are made from them by JPEG re-encoding (quality 40-80),
resizing, cropping, brightness/contrast, horizontal flip, small rotation, watermark text, noise,
PNG re-encoding, and a few exact copies. All files sit in one folder under random names. Every
method's predicted duplicate pairs (all pairs inside a predicted group) are scored against the
true pairs (all pairs from the same distinct image): pairwise precision, recall, F1.

The peers run in their own virtualenv (benchmarks/.peers-venv, created on first run with
`pip install imagededup cleanvision`), so their dependencies never touch the project's.

    .venv/bin/python benchmarks/dedup_quality.py

`--backend pretrained` runs the semantic tier on the `pretrained` backend's vectors (ImageNet
EfficientNet-Lite0, real weights) instead of the offline descriptor, sweeping min_cosine 0.85-0.99
at the default Hamming radius, to calibrate that backend's `default_min_cosine` (the threshold with
precision >= 0.98 and the best F1). `--textures` adds hard negatives: non-overlapping crops of the
texture photographs (brick, grass, gravel, deep field) as distinct images with no copies, and every
run reports, per threshold, the false pairs among distinct crops of one photograph and among
texture crops. `--no-peers` skips imagededup / cleanvision.

    .venv/bin/python benchmarks/dedup_quality.py --backend pretrained --textures --no-peers
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".peers-venv"
# Photographs with distinct regions; pure textures (grass, gravel, brick) and the deep field are
# left out because their crops are near-identical to each other and would make the labels wrong.
PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "retina",
    "motorcycle_left",
    "ihc",
    "camera",
    "coins",
    "page",
    "china",
    "flower",
    "moon",
]
# Hard negatives (--textures): every crop is its own distinct image, never a copy of another.
TEXTURES = ["brick", "grass", "gravel", "hubble_deep_field"]
TRANSFORMS = ["jpeg", "resize", "crop", "brightness_contrast", "flip", "rotate", "watermark", "noise", "png", "exact"]


def _jpeg(img: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def make_duplicate(img: Image.Image, kind: str, rng: random.Random) -> tuple[bytes, str]:
    w, h = img.size
    if kind == "jpeg":
        return _jpeg(img, rng.randint(40, 80)), ".jpg"
    if kind == "resize":
        f = rng.uniform(0.5, 0.8)
        return _jpeg(img.resize((max(16, int(w * f)), max(16, int(h * f))), Image.Resampling.LANCZOS), 90), ".jpg"
    if kind == "crop":
        f = rng.uniform(0.05, 0.10)
        dx, dy = int(w * f), int(h * f)
        ox, oy = rng.randint(0, dx), rng.randint(0, dy)
        return _jpeg(img.crop((ox, oy, w - (dx - ox), h - (dy - oy))), 90), ".jpg"
    if kind == "brightness_contrast":
        out = ImageEnhance.Brightness(img).enhance(rng.choice([0.75, 0.8, 1.2, 1.3]))
        return _jpeg(ImageEnhance.Contrast(out).enhance(rng.choice([0.8, 1.2])), 90), ".jpg"
    if kind == "flip":
        return _jpeg(ImageOps.mirror(img), 90), ".jpg"
    if kind == "rotate":
        angle = rng.choice([-5, -3, 3, 5])
        return _jpeg(img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)), 90), ".jpg"
    if kind == "watermark":
        out = img.convert("RGB").copy()
        draw = ImageDraw.Draw(out)
        draw.text((int(w * 0.05), int(h * 0.8)), "(c) ACME ROBOTICS 2026", fill=(255, 255, 255))
        return _jpeg(out, 90), ".jpg"
    if kind == "noise":
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
        noisy = np.clip(arr + np.random.default_rng(rng.randrange(1 << 30)).normal(0, 8, arr.shape), 0, 255)
        return _jpeg(Image.fromarray(noisy.astype(np.uint8)), 90), ".jpg"
    if kind == "png":
        return _png(img), ".png"
    raise ValueError(kind)


def build_dataset(folder: Path, seed: int = 0, grid: tuple[int, int] = (3, 3)) -> dict:
    """Files in `folder`; returns {"groups": {file: distinct_id}, "kinds": {file: transform or 'original'}}."""
    from curation_pipeline.demo_data import _crops, _sources

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = dict(_sources())
    groups, kinds = {}, {}
    distinct = []
    for name in PHOTOS:
        if name not in sources:
            continue
        photo = Image.open(sources[name]).convert("RGB")
        for n, crop in enumerate(_crops(photo, *grid)):
            if np.asarray(crop.convert("L"), dtype=np.float32).std() / 255.0 < 0.08 or min(crop.size) < 64:
                continue
            distinct.append((f"{name}-{n}", crop))

    def new_name(suffix: str) -> str:
        return f"{rng.getrandbits(48):012x}{suffix}"

    for did, crop in distinct:
        fname = new_name(".jpg")
        (folder / fname).write_bytes(_jpeg(crop, 92))
        groups[fname], kinds[fname] = did, "original"
    originals = [f for f, k in kinds.items() if k == "original"]
    # duplicates: 70% of the distinct images get 1-3 copies, the transforms taking turns; a
    # third of the copies get a second edit on top (a photo that is re-shared is usually both
    # resized and recompressed, or cropped and brightened), so copies must match each other too
    chosen = rng.sample(originals, k=int(len(originals) * 0.7))
    turn = 0
    for src in chosen:
        for _ in range(rng.choice([1, 1, 2, 3])):
            kind = TRANSFORMS[turn % len(TRANSFORMS)]
            turn += 1
            img = Image.open(folder / src).convert("RGB")
            if kind == "exact":
                data, suffix = (folder / src).read_bytes(), Path(src).suffix
            else:
                if rng.random() < 0.33:
                    second = rng.choice(["jpeg", "resize", "crop", "brightness_contrast", "noise"])
                    img = Image.open(io.BytesIO(make_duplicate(img, second, rng)[0])).convert("RGB")
                data, suffix = make_duplicate(img, kind, rng)
            fname = new_name(suffix)
            (folder / fname).write_bytes(data)
            groups[fname], kinds[fname] = groups[src], kind
    return {"groups": groups, "kinds": kinds}


def add_textures(folder: Path, data: dict, seed: int = 1, grid: tuple[int, int] = (3, 3)) -> int:
    """Hard negatives: non-overlapping crops of the texture photographs, each a distinct image
    without copies (own random stream, so the main set's files and names do not change)."""
    from curation_pipeline.demo_data import _crops, _sources

    rng = random.Random(seed)
    sources = dict(_sources())
    added = 0
    for name in TEXTURES:
        if name not in sources:
            continue
        photo = Image.open(sources[name]).convert("RGB")
        for n, crop in enumerate(_crops(photo, *grid)):
            if min(crop.size) < 64:
                continue
            fname = f"{rng.getrandbits(48):012x}.jpg"
            (folder / fname).write_bytes(_jpeg(crop, 92))
            data["groups"][fname], data["kinds"][fname] = f"{name}-{n}", "texture"
            added += 1
    return added


def hard_negative_pairs(groups: dict[str, str]) -> dict[str, set]:
    """Non-duplicate pairs that look alike: distinct crops of one photograph (photo crops), and
    crops of one texture photograph (texture crops)."""
    photo = {g: g.rsplit("-", 1)[0] for g in set(groups.values())}
    out: dict[str, set] = {"photo_crops": set(), "texture_crops": set()}
    files = sorted(groups)
    for i, a in enumerate(files):
        for b in files[i + 1 :]:
            ga, gb = groups[a], groups[b]
            if ga != gb and photo[ga] == photo[gb]:
                out["texture_crops" if photo[ga] in TEXTURES else "photo_crops"].add((a, b))
    return out


def true_pairs(groups: dict[str, str]) -> set[tuple[str, str]]:
    by = defaultdict(list)
    for f, g in groups.items():
        by[g].append(f)
    return {tuple(sorted((a, b))) for fs in by.values() for i, a in enumerate(fs) for b in fs[i + 1 :]}


def score(pred: set, truth: set) -> dict:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "pairs_predicted": len(pred),
    }


def recall_by_kind(pred: set, truth: set, kinds: dict) -> dict:
    out = {}
    for kind in TRANSFORMS:
        pairs = {pr for pr in truth if kinds[pr[0]] == kind or kinds[pr[1]] == kind}
        if pairs:
            out[kind] = round(len(pairs & pred) / len(pairs), 2)
    return out


def _embedder(backend: str):
    from curation_pipeline.resources.embedders import LoadSpec, OfflineEmbedder, load_embedder

    if backend == "offline":
        return OfflineEmbedder()
    return load_embedder(backend, LoadSpec(device="cpu"))  # pretrained: EfficientNet-Lite0, fp32


def ours(folder: Path, sweep: list[tuple[int, float]], backend: str = "offline") -> dict:
    from curation_pipeline.core.dedup import DedupThresholds
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.dedup import dedup_drop
    from curation_pipeline.steps.embed import EmbedOptions, embed_drop
    from curation_pipeline.steps.manifest import build_manifest

    with tempfile.TemporaryDirectory(prefix="dedup-quality-pg-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        url = db.url
        catalog = Catalog(url)
        catalog.register_drop("quality", str(folder))
        t0 = time.perf_counter()
        build_manifest(catalog, LocalImageStore(), str(folder), "quality")
        embedder = _embedder(backend)
        batch = 64 if backend == "offline" else 32
        stats = embed_drop(catalog, embedder, "quality", EmbedOptions(batch_size=batch, workers=2))
        catalog.publish_embeddings("quality", stats["model"])
        emb = catalog.load_embeddings(["quality"], stats["model"])
        ingest_s = time.perf_counter() - t0
        key_of = {c.image_id: c.object_key for c in catalog.dedup_candidates("quality", stats["model"])}
        file_names = [key_of[int(i)] for i in emb.image_ids]
        results = {}
        for max_hamming, min_cosine in sweep:
            t0 = time.perf_counter()
            dedup_drop(catalog, "quality", emb, DedupThresholds(max_hamming=max_hamming, min_cosine=min_cosine))
            pairs = set()
            for g in catalog.duplicate_groups():
                names = sorted([g["representative"]["object_key"]] + [m["object_key"] for m in g["members"]])
                pairs |= {(a, b) for i, a in enumerate(names) for b in names[i + 1 :]}
            results[(max_hamming, min_cosine)] = (pairs, time.perf_counter() - t0)
        db.close()
    return {
        "results": results,
        "ingest_seconds": ingest_s,
        "model": stats["model"],
        "names": file_names,
        "vectors": emb.vectors,
    }


def cosine_pairs(names: list[str], vectors: np.ndarray, min_cosine: float) -> set:
    """The semantic tier alone: every pair whose cosine reaches the threshold (no hashes, no clustering)."""
    sims = vectors @ vectors.T
    i, j = np.nonzero(np.triu(sims >= min_cosine - 1e-6, k=1))
    return {tuple(sorted((names[a], names[b]))) for a, b in zip(i.tolist(), j.tolist())}


def calibrate(mine: dict, truth: set, hard: dict, kinds: dict, max_hamming: int, cosines: list[float]) -> list[dict]:
    """Per threshold: the product path (hash tiers + semantic tier at `min_cosine`, star
    clustering) and the semantic tier alone, with false pairs among the hard negatives."""
    rows = []
    for c in cosines:
        pairs, _ = mine["results"][(max_hamming, c)]
        alone = cosine_pairs(mine["names"], mine["vectors"], c)
        rows.append(
            {
                "min_cosine": c,
                **score(pairs, truth),
                "false_photo_crop_pairs": len(pairs & hard["photo_crops"]),
                "false_texture_pairs": len(pairs & hard["texture_crops"]),
                "false_other_pairs": len(pairs - truth - hard["photo_crops"] - hard["texture_crops"]),
                "by_transform": recall_by_kind(pairs, truth, kinds),
                "semantic_alone": {
                    **score(alone, truth),
                    "false_photo_crop_pairs": len(alone & hard["photo_crops"]),
                    "false_texture_pairs": len(alone & hard["texture_crops"]),
                },
            }
        )
    return rows


def recommend(rows: list[dict], min_precision: float = 0.98) -> dict | None:
    """Precision first: among thresholds with precision >= min_precision, the best F1 (ties: the
    stricter threshold)."""
    ok = [r for r in rows if r["precision"] >= min_precision]
    return max(ok, key=lambda r: (r["f1"], r["min_cosine"])) if ok else None


def ensure_peers_venv() -> Path:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "imagededup", "cleanvision"], check=True)
    return python


def main() -> None:
    import argparse

    from curation_pipeline.core.dedup import DedupThresholds

    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="offline", choices=["offline", "pretrained"], help="vectors of the semantic tier")
    ap.add_argument("--textures", action="store_true", help="add texture crops as hard negatives")
    ap.add_argument("--no-peers", action="store_true", help="skip imagededup and cleanvision")
    ap.add_argument("--min-precision", type=float, default=0.98)
    args = ap.parse_args()
    if args.backend != "offline":
        pretrained_main(args)
        return

    default = DedupThresholds()
    sweep = sorted(
        {(h, round(c, 2)) for h in (2, 4, 6, 8, 10) for c in np.arange(0.66, 1.001, 0.02)}
        | {(default.max_hamming, default.min_cosine)}
    )
    with tempfile.TemporaryDirectory(prefix="dedup-quality-") as tmp:
        folder = Path(tmp) / "images"
        data, truth, hard = labelled_set(folder, args.textures)
        n_files = len(data["groups"])
        mine = ours(folder, sweep)
        if args.no_peers:
            _print_calibration(mine, truth, hard, data, default.max_hamming, sorted({c for _, c in sweep}), args)
            return
        python = ensure_peers_venv()
        t0 = time.perf_counter()
        peers = json.loads(
            subprocess.run([str(python), str(HERE / "_peers.py"), str(folder)], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        peers_s = time.perf_counter() - t0

    rows = []
    d_pairs, _ = mine["results"][(default.max_hamming, default.min_cosine)]
    rows.append(
        {
            "method": f"curation_pipeline defaults (hamming<={default.max_hamming}, cosine>={default.min_cosine})",
            **score(d_pairs, truth),
            "by_transform": recall_by_kind(d_pairs, truth, data["kinds"]),
        }
    )
    best = max(mine["results"].items(), key=lambda kv: (score(kv[1][0], truth)["f1"], -kv[0][0]))
    rows.append(
        {
            "method": f"curation_pipeline best (hamming<={best[0][0]}, cosine>={best[0][1]})",
            **score(best[1][0], truth),
            "by_transform": recall_by_kind(best[1][0], truth, data["kinds"]),
        }
    )
    hash_only = mine["results"].get((default.max_hamming, 1.0))
    if hash_only:
        rows.append(
            {
                "method": f"curation_pipeline hashes only (hamming<={default.max_hamming}, no semantic tier)",
                **score(hash_only[0], truth),
                "by_transform": recall_by_kind(hash_only[0], truth, data["kinds"]),
            }
        )
    idd = {int(t): {tuple(p) for p in pairs} for t, pairs in peers["imagededup_phash"].items()}
    rows.append(
        {
            "method": "imagededup PHash default (max_distance_threshold=10)",
            **score(idd[10], truth),
            "by_transform": recall_by_kind(idd[10], truth, data["kinds"]),
        }
    )
    best_t = max(idd, key=lambda t: score(idd[t], truth)["f1"])
    rows.append(
        {
            "method": f"imagededup PHash best (max_distance_threshold={best_t})",
            **score(idd[best_t], truth),
            "by_transform": recall_by_kind(idd[best_t], truth, data["kinds"]),
        }
    )
    cv = {tuple(p) for p in peers["cleanvision"]}
    rows.append(
        {
            "method": "cleanvision near_duplicates + exact_duplicates (defaults)",
            **score(cv, truth),
            "by_transform": recall_by_kind(cv, truth, data["kinds"]),
        }
    )

    print("method | precision | recall | F1 | pairs predicted")
    for r in rows:
        print(f"{r['method']} | {r['precision']} | {r['recall']} | {r['f1']} | {r['pairs_predicted']}")
    print("\nrecall by transform: " + " | ".join(TRANSFORMS))
    for r in rows:
        print(r["method"].split(" (")[0] + " | " + " | ".join(str(r["by_transform"].get(k, "-")) for k in TRANSFORMS))
    peer_best = max(r["f1"] for r in rows if not r["method"].startswith("curation_pipeline"))
    print(f"\nF1 margin over the best peer: defaults {rows[0]['f1'] - peer_best:+.4f}, best {rows[1]['f1'] - peer_best:+.4f}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "dedup_quality.json").write_text(
        json.dumps(
            {
                "files": n_files,
                "true_pairs": len(truth),
                "rows": rows,
                "ingest_seconds": round(mine["ingest_seconds"], 2),
                "peers_seconds": round(peers_s, 2),
                "sweep": [
                    {"max_hamming": h, "min_cosine": c, **score(p, truth)} for (h, c), (p, _) in sorted(mine["results"].items())
                ],
            },
            indent=1,
        )
    )


def _print_calibration(mine, truth, hard, data, max_hamming, cosines, args, out_name=None) -> dict:
    rows = calibrate(mine, truth, hard, data["kinds"], max_hamming, cosines)
    print(
        f"model {mine['model']}; hash tiers at hamming <= {max_hamming}; hard-negative pairs: "
        f"{len(hard['photo_crops'])} photo-crop, {len(hard['texture_crops'])} texture"
    )
    print(
        "min_cosine | precision | recall | F1 | pairs | false photo-crop / texture / other pairs"
        " | semantic alone: precision | recall | F1 | false photo-crop / texture"
    )
    for r in rows:
        a = r["semantic_alone"]
        print(
            f"{r['min_cosine']:.2f} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['pairs_predicted']} | "
            f"{r['false_photo_crop_pairs']} / {r['false_texture_pairs']} / {r['false_other_pairs']} | "
            f"{a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | "
            f"{a['false_photo_crop_pairs']} / {a['false_texture_pairs']}"
        )
    best = recommend(rows, args.min_precision)
    if best:
        print(
            f"\nrecommended min_cosine {best['min_cosine']:.2f} (precision >= {args.min_precision}, best F1): "
            f"precision {best['precision']:.4f}, recall {best['recall']:.4f}, F1 {best['f1']:.4f}"
        )
        print("recall by transform: " + ", ".join(f"{k} {v}" for k, v in best["by_transform"].items()))
    else:
        print(f"\nno threshold reaches precision {args.min_precision}")
    if out_name:
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / out_name).write_text(
            json.dumps(
                {
                    "model": mine["model"],
                    "backend": args.backend,
                    "textures": args.textures,
                    "files": len(data["groups"]),
                    "true_pairs": len(truth),
                    "hard_negative_pairs": {k: len(v) for k, v in hard.items()},
                    "max_hamming": max_hamming,
                    "ingest_seconds": round(mine["ingest_seconds"], 2),
                    "recommended": best,
                    "sweep": rows,
                },
                indent=1,
            )
        )
    return {"rows": rows, "best": best}


def labelled_set(folder: Path, textures: bool) -> tuple[dict, set, dict]:
    """Write the labelled set into `folder` (with the texture hard negatives if asked) and return
    (dataset, true pairs, hard-negative pairs), saying what it holds on stderr."""
    data = build_dataset(folder)
    n_textures = add_textures(folder, data) if textures else 0
    truth = true_pairs(data["groups"])
    hard = hard_negative_pairs(data["groups"])
    print(
        f"dataset: {len(data['groups'])} files ({n_textures} texture crops), "
        f"{len(set(data['groups'].values()))} distinct images, {len(truth)} true duplicate pairs",
        file=sys.stderr,
    )
    return data, truth, hard


def pretrained_main(args) -> None:
    """Calibrate the semantic threshold of a learned backend: the product path at the default
    Hamming radius with min_cosine swept, plus the semantic tier alone, plus the hash tiers alone."""
    from curation_pipeline.core.dedup import DedupThresholds

    default = DedupThresholds()
    cosines = [round(c, 2) for c in np.arange(0.85, 0.9901, 0.01)] + [1.0]
    with tempfile.TemporaryDirectory(prefix="dedup-quality-") as tmp:
        folder = Path(tmp) / "images"
        data, truth, hard = labelled_set(folder, args.textures)
        mine = ours(folder, [(default.max_hamming, c) for c in cosines], backend=args.backend)
    suffix = "_textures" if args.textures else ""
    _print_calibration(
        mine, truth, hard, data, default.max_hamming, cosines, args, out_name=f"dedup_quality_{args.backend}{suffix}.json"
    )


if __name__ == "__main__":
    main()
