"""Selection on real photographs with hard structure (issue 14): does a small subset cover the
source pictures, and does the self-supervised domain model help?

An external evaluation ran the default ingest + select on 1,845 photographs and digital-art images
cut from 72 source pictures (several distinct crops per picture, near-duplicates among them): a 5%
subset covered 65% of the source pictures, what random subsets cover. This builds an equivalent,
deliberately hard set:

  * sources: photographs that ship with installed packages: scikit-image's data (greyscale ones
    converted to RGB, textures brick / grass / gravel included), scikit-learn's sample images,
    matplotlib's sample data when installed, and desktop backgrounds from Debian packages when
    installed (photographs and digital art under /usr/share/backgrounds; `--apt-install` tries
    `apt-get install mate-backgrounds ukui-wallpapers gnome-backgrounds lomiri-wallpapers-16.04
    lomiri-wallpapers-20.04`). Colour / light-dark variants of one picture count once; nearly flat
    pictures are dropped. With fewer than --min-sources pictures, the widest photographs are split
    into left / right halves, each its own source (look-alike palettes: hard negatives);
  * per source ~23 images: distinct crops (different regions, 0.15-0.6 of the area, aspect 1:2 to
    2:1, overlapping at most IoU 0.3), JPEG-recompressed / resized near-duplicates of some of them,
    and a few mirrored / colour-shifted ones. Label: the source. Seed 0, written once under /tmp.

Each image is embedded with the offline descriptor, the pretrained EfficientNet-Lite0, and the
domain model (resources/domain_model.py at its defaults: head trained on these images' pretrained
vectors plus the pretrained features of augmented views). Embeddings are cached under /tmp
(`--fresh` recomputes). For each model and budget (2 / 5 / 10% of the images) the real selection
step runs (`select_subset` in a throwaway PostgreSQL, as in selection_quality.py) with the product's
default strategies, with plain k-center greedy ("diversity") and with random (mean and std of 10
seeds). Scored: source coverage (sources with >= 1 pick), 1-NN accuracy of labelling every
non-picked image with the source of its nearest pick (in the model's own space), and a linear probe
(logistic regression on the picks' pretrained features, same fixed feature space for every model,
scored on the non-picked images).

    .venv/bin/python benchmarks/selection_semantic.py              # first run ~30 min (2 cores), cached re-run ~15 min
    .venv/bin/python benchmarks/selection_semantic.py --train-timing 10000   # domain-model training time, ~10 min

Most of a cached re-run is the 270 selection runs (k-means over 1280-d pretrained vectors: ~20 s
each at default strategies). The first run adds the embeddings: pretrained ~1.5 min, the view
features of the domain model (4 x 1,824 backbone forwards) ~6 min on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = Path(tempfile.gettempdir()) / "selection-semantic"
DATA_VERSION = "v1"
TARGET_IMAGES = 1800
BUDGETS = (0.02, 0.05, 0.10)
RANDOM_SEEDS = 10
APT_PACKAGES = (
    "mate-backgrounds",
    "ukui-wallpapers",
    "gnome-backgrounds",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
)
BACKGROUND_DIRS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
SKIMAGE_NAMES = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "camera.png",
    "moon.png",
    "page.png",
    "text.png",
    "cell.png",
    "clock_motion.png",
    "color.png",
    "microaneurysms.png",
)
MODELS = ("offline", "pretrained", "domain")
TARGET_COVERAGE_5 = 0.95
TARGET_GAIN_5 = 0.20


# ---- sources -------------------------------------------------------------------------------------


def _open_rgb(path: Path) -> Image.Image:
    im = Image.open(path)
    im.draft("RGB", (2048, 2048))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        im = Image.alpha_composite(bg, rgba)
    im = im.convert("RGB")
    if max(im.size) > 2048:
        im.thumbnail((2048, 2048), Image.Resampling.LANCZOS)
    return im


def _variant_key(path: Path) -> str:
    """Colour / light-dark / resolution variants of one picture share a key."""
    stem = path.stem.lower()
    stem = re.sub(r"_\d+x\d+$", "", stem)  # Elephants_3840x2160
    stem = re.sub(r"-(d|l|dark|light)$", "", stem)  # gnome adwaita-d / -l, MATE-Stripes-Dark
    stem = re.sub(r"^ubuntu-mate-(cold|dark|radioactive|warm)-no-logo$", "ubuntu-mate-aurora", stem)
    return f"{path.parent.name}/{stem}"


def _contrast(im: Image.Image) -> float:
    small = im.copy()
    small.thumbnail((256, 256))
    return float(np.asarray(small.convert("L"), dtype=np.float32).std() / 255.0)


def source_paths() -> list[tuple[str, str, Path]]:
    """[(name, origin, path)] of every picture that ships with installed packages: scikit-image's
    data, scikit-learn's samples, matplotlib's sample data and Debian desktop backgrounds, one file
    per variant group (the largest). Also used by dedup_hard.py."""
    import skimage.data
    import sklearn.datasets

    found: list[tuple[str, str, Path]] = []
    sk = Path(skimage.data.__file__).parent
    found += [(p.stem, "scikit-image", p) for p in (sk / n for n in SKIMAGE_NAMES) if p.exists()]
    skl = Path(sklearn.datasets.__file__).parent / "images"
    found += [(p.stem, "scikit-learn", p) for p in (skl / n for n in ("china.jpg", "flower.jpg")) if p.exists()]
    try:
        import matplotlib

        mpl = Path(matplotlib.get_data_path()) / "sample_data"
        found += [(p.stem, "matplotlib", p) for p in sorted(mpl.glob("*")) if p.suffix.lower() in (".jpg", ".png")]
    except ImportError:
        pass
    seen: set[str] = set()
    for folder in BACKGROUND_DIRS:
        if not folder.is_dir():
            continue
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        paths.sort(key=lambda p: -p.stat().st_size)  # of a variant group keep the largest file
        for p in paths:
            key = _variant_key(p)
            if key not in seen:
                seen.add(key)
                found.append((key.rsplit("/", 1)[1], "desktop backgrounds", p))
    return found


def find_sources(min_sources: int) -> tuple[list[tuple[str, str, Image.Image]], dict]:
    """[(name, origin, image)], and counts by origin."""
    found = source_paths()
    out, dropped = [], []
    for name, origin, path in found:
        im = _open_rgb(path)
        if _contrast(im) < 0.06 or min(im.size) < 200:
            dropped.append(name)
            continue
        out.append((name, origin, im))
    out.sort(key=lambda t: (t[1], t[0]))
    split = 0
    if len(out) < min_sources:  # split the widest photographs into left / right halves
        wide = sorted(range(len(out)), key=lambda i: -out[i][2].width / out[i][2].height)
        for i in wide[: min_sources - len(out)]:
            name, origin, im = out[i]
            w, h = im.size
            out[i] = (name + "-left", origin + " (split)", im.crop((0, 0, w // 2, h)))
            out.append((name + "-right", origin + " (split)", im.crop((w // 2, 0, w, h))))
            split += 1
    counts: dict = {}
    for _, origin, _ in out:
        counts[origin] = counts.get(origin, 0) + 1
    return out, {"by_origin": counts, "dropped_flat_or_small": dropped, "split_into_halves": split}


# ---- the image set -------------------------------------------------------------------------------


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def _distinct_boxes(w: int, h: int, count: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    boxes: list[tuple[int, int, int, int]] = []
    for max_iou in (0.3, 0.5, 0.7, 1.01):  # relax only if a picture is too small for `count`
        for _ in range(400):
            if len(boxes) >= count:
                return boxes
            area = rng.uniform(0.15, 0.6) * w * h
            ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
            bw, bh = int(np.sqrt(area * ratio)), int(np.sqrt(area / ratio))
            if bw > w or bh > h or bw < 32 or bh < 32:
                continue
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = (x, y, x + bw, y + bh)
            if all(_iou(box, b) <= max_iou for b in boxes):
                boxes.append(box)
    return boxes


def _save(im: Image.Image, path: Path, quality: int = 90) -> None:
    im.convert("RGB").save(path, format="JPEG", quality=quality)


def build_images(root: Path, min_sources: int) -> dict:
    """Write the image set under root (once); returns the index {files, labels, sources, info}."""
    index_path = root / "index.json"
    if index_path.exists():
        return json.loads(index_path.read_text())
    sources, info = find_sources(min_sources)
    per = max(8, round(TARGET_IMAGES / len(sources)))
    n_near, n_shift = max(1, round(per * 0.13)), max(1, round(per * 0.09))
    n_distinct = per - n_near - n_shift
    rng = np.random.default_rng(0)
    files, labels = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for s, (name, _origin, im) in enumerate(sources):
        w, h = im.size
        crops = []
        for box in _distinct_boxes(w, h, n_distinct, rng):
            crop = im.crop(box)
            crop.thumbnail((512, 512), Image.Resampling.LANCZOS)
            crops.append(crop)
        made = [("c", c, 90) for c in crops]
        for _ in range(n_near):  # resized + recompressed near-duplicates of a crop
            c = crops[int(rng.integers(len(crops)))]
            f = rng.uniform(0.5, 0.85)
            made.append(("n", c.resize((max(16, int(c.width * f)), max(16, int(c.height * f)))), int(rng.integers(35, 70))))
        for _ in range(n_shift):  # mirrored and / or colour-shifted
            c = crops[int(rng.integers(len(crops)))]
            if rng.uniform() < 0.6:
                c = ImageOps.mirror(c)
            c = ImageEnhance.Brightness(c).enhance(float(rng.uniform(0.75, 1.25)))
            c = ImageEnhance.Color(c).enhance(float(rng.uniform(0.6, 1.4)))
            made.append(("s", c, 85))
        for k, (kind, c, q) in enumerate(made):
            rel = f"images/{s:03d}-{name[:40]}-{k:02d}{kind}.jpg"
            _save(c, root / rel, q)
            files.append(rel)
            labels.append(s)
    index = {
        "version": DATA_VERSION,
        "files": files,
        "labels": labels,
        "sources": [{"name": n, "origin": o, "size": list(im.size)} for n, o, im in sources],
        "per_source": {"distinct": n_distinct, "near_duplicates": n_near, "shifted": n_shift},
        "info": info,
    }
    index_path.write_text(json.dumps(index, indent=1))
    return index


def load_images(root: Path, files: list[str]) -> list[Image.Image]:
    out = []
    for f in files:
        with Image.open(root / f) as im:
            out.append(im.convert("RGB"))
    return out


# ---- embeddings ----------------------------------------------------------------------------------


def _pretrained():
    from curation_pipeline.resources.embedders import LoadSpec, load_embedder

    return load_embedder("pretrained", LoadSpec(device="cpu"))


def embed_all(root: Path, index: dict, fresh: bool) -> tuple[dict, dict, dict]:
    """{model: vectors}, {model: model id}, timings."""
    from curation_pipeline.resources.domain_model import DomainTrainingConfig, train_head, view_features
    from curation_pipeline.resources.embedders import LoadSpec, load_embedder

    config = DomainTrainingConfig()
    images = None
    vecs, ids, timing = {}, {}, {}

    def cached(name: str, compute):
        nonlocal images
        path = root / f"{name}.npz"
        if path.exists() and not fresh:
            z = np.load(path)
            return z["v"], json.loads(str(z["meta"]))
        if images is None:
            images = load_images(root, index["files"])
        t0 = time.perf_counter()
        v, meta = compute(images)
        meta["seconds"] = time.perf_counter() - t0
        np.savez(path, v=v, meta=json.dumps(meta))
        return v, meta

    def offline(ims):
        e = load_embedder("offline", LoadSpec())
        return np.concatenate([e.embed_images(ims[i : i + 256]) for i in range(0, len(ims), 256)]), {"model": e.model_id}

    backbone = None

    def backbone_model():
        nonlocal backbone
        if backbone is None:
            backbone = _pretrained()
        return backbone

    def pretrained(ims):
        e = backbone_model()
        return np.concatenate([e.embed_images(ims[i : i + 64]) for i in range(0, len(ims), 64)]), {"model": e.model_id}

    def views(ims):
        e = backbone_model()
        return view_features(e, ims, config.views, config.seed), {"model": e.model_id, "views": config.views}

    vecs["offline"], meta = cached("offline", offline)
    ids["offline"] = meta["model"]
    timing["offline_embed_s"] = meta["seconds"]
    vecs["pretrained"], meta = cached("pretrained", pretrained)
    ids["pretrained"] = meta["model"]
    timing["pretrained_embed_s"] = meta["seconds"]
    view_vecs, meta = cached(f"views-{config.views}-seed{config.seed}", views)
    timing["view_features_s"] = meta["seconds"]
    head = train_head(vecs["pretrained"], view_vecs, config, backbone_model=ids["pretrained"])
    t0 = time.perf_counter()
    vecs["domain"] = head.project(vecs["pretrained"])
    timing["head_train_s"] = head.stats["seconds"]
    timing["project_s"] = time.perf_counter() - t0
    ids["domain"] = f"domain:{head.sha256[:16]}"
    timing["head_stats"] = {k: v for k, v in head.stats.items() if k != "loss_curve"}
    timing["config"] = asdict(config)
    return vecs, ids, timing


# ---- scoring -------------------------------------------------------------------------------------


def knn_accuracy(vectors: np.ndarray, labels: np.ndarray, picked: np.ndarray) -> float:
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    nearest = np.argmax(vectors[rest] @ vectors[picked].T, axis=1)
    return float(np.mean(labels[picked][nearest] == labels[rest]))


def probe_accuracy(features: np.ndarray, labels: np.ndarray, picked: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    rest = np.setdiff1d(np.arange(len(labels)), picked)
    if len(set(labels[picked].tolist())) < 2:
        return float(np.mean(labels[rest] == labels[picked][0]))
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(features[picked], labels[picked])
    return float(clf.score(features[rest], labels[rest]))


def run_selections(vecs: dict, ids: dict, labels: np.ndarray, budgets, seeds: int) -> list[dict]:
    from curation_pipeline.core.manifest import ManifestRecord
    from curation_pipeline.resources.catalog import Catalog, EmbeddingSet
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.select import SelectionSpec, StrategySpec, select_subset

    n = len(labels)
    image_ids = np.arange(1, n + 1)
    row_of = {int(i): r for r, i in enumerate(image_ids)}
    n_sources = len(set(labels.tolist()))
    probe_space = vecs["pretrained"]
    results = []
    with tempfile.TemporaryDirectory(prefix="selection-semantic-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        catalog = Catalog(db.url)
        with catalog.manifest_writer("photos") as writer:
            for i in image_ids:
                rec = ManifestRecord(object_key=f"{i}.jpg", bytes=1, sha256=f"s{i}", status="ok", width=64, height=64)
                writer.add(int(i), f"photos/{i}.jpg", rec, None)
        for m in MODELS:
            v = vecs[m]
            catalog.register_model(ids[m], m, v.shape[1], f"selection_semantic {m}")
            catalog.replace_embeddings(
                "photos", EmbeddingSet(ids[m], image_ids, [f"s{i}" for i in image_ids], v.astype(np.float32), ["photos"] * n)
            )

        counter = [0]

        def run(m: str, budget: int, spec_kw: dict) -> dict:
            counter[0] += 1
            name = f"sel-{counter[0]}"
            t0 = time.perf_counter()
            select_subset(catalog, name, SelectionSpec(budget=budget, **spec_kw), model=ids[m])
            seconds = time.perf_counter() - t0
            picked = np.array([row_of[int(it["image_id"])] for it in catalog.selection_items(name)])
            return {
                "coverage": len(set(labels[picked].tolist())) / n_sources,
                "knn1": knn_accuracy(vecs[m], labels, picked),
                "probe": probe_accuracy(probe_space, labels, picked),
                "seconds": seconds,
            }

        for frac in budgets:
            budget = max(1, int(round(frac * n)))
            for m in MODELS:
                rnd = [run(m, budget, {"seed": s, "strategies": (StrategySpec("random"),)}) for s in range(seeds)]
                row = {
                    "budget_fraction": frac,
                    "budget": budget,
                    "model": m,
                    "model_id": ids[m],
                    "random": {k: float(np.mean([r[k] for r in rnd])) for k in rnd[0]},
                    "random_std": {k: float(np.std([r[k] for r in rnd])) for k in rnd[0]},
                    "default": run(m, budget, {}),
                    "k-center": run(m, budget, {"strategies": (StrategySpec("diversity"),)}),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
        db.close()
    return results


def verdicts(results: list[dict]) -> list[tuple[str, bool]]:
    out = []
    by = {(r["budget_fraction"], r["model"]): r for r in results}
    for m in MODELS:
        r = by.get((0.05, m))
        if r is None:
            continue
        cov, rnd = r["default"]["coverage"], r["random"]["coverage"]
        out.append((f"{m}: 5% default covers >= {TARGET_COVERAGE_5:.2f} of the sources ({cov:.3f})", cov >= TARGET_COVERAGE_5))
        out.append((f"{m}: 5% default beats random by >= {TARGET_GAIN_5:.2f} ({cov - rnd:+.3f})", cov - rnd >= TARGET_GAIN_5))
    for frac in sorted({r["budget_fraction"] for r in results}):
        d, p = by.get((frac, "domain")), by.get((frac, "pretrained"))
        if d and p:
            dc, pc = d["default"]["coverage"], p["default"]["coverage"]
            out.append((f"{int(frac * 100)}% default: domain coverage >= pretrained ({dc:.3f} vs {pc:.3f})", dc >= pc))
    return out


def print_table(results: list[dict]) -> None:
    budgets = sorted({(r["budget_fraction"], r["budget"]) for r in results})
    head = " | ".join(f"{int(f * 100)}% ({b}) cover / 1-NN / probe" for f, b in budgets)
    print(f"\n| model | strategy | {head} |")
    print("|---|---|" + "---|" * len(budgets))
    by = {(r["budget_fraction"], r["model"]): r for r in results}
    for m in MODELS:
        for strat in ("default", "k-center", "random"):
            cells = []
            for f, _ in budgets:
                r = by[(f, m)]
                s = r[strat]
                if strat == "random":
                    sd = r["random_std"]
                    cells.append(f"{s['coverage']:.3f}±{sd['coverage']:.3f} / {s['knn1']:.3f} / {s['probe']:.3f}")
                else:
                    cells.append(f"{s['coverage']:.3f} / {s['knn1']:.3f} / {s['probe']:.3f}")
            print(f"| {m} | {strat} | " + " | ".join(cells) + " |")


# ---- training time -------------------------------------------------------------------------------


def train_timing(n_target: int, measure_views: int) -> dict:
    """Domain-model training time for a drop of n_target images, on this machine's threads.
    View features: measured on `measure_views` images (real photo crops), extrapolated linearly to
    the number of images actually trained on. Head: measured for real (random unit features)."""
    import torch

    from curation_pipeline.resources.domain_model import DomainTrainingConfig, train_head, view_features

    root = CACHE / DATA_VERSION
    index = build_images(root, 60)
    files = index["files"]
    rng = np.random.default_rng(1)
    pick = rng.choice(len(files), min(measure_views, len(files)), replace=False)
    images = load_images(root, [files[i] for i in pick])
    while len(images) < measure_views:  # more crops than the set has: mirrored copies
        images += [ImageOps.mirror(im) for im in images[: measure_views - len(images)]]
    config = DomainTrainingConfig()
    e = _pretrained()
    t0 = time.perf_counter()
    view_features(e, images, config.views, config.seed)
    view_s = time.perf_counter() - t0
    per_image = view_s / len(images)
    out = {
        "torch_threads": torch.get_num_threads(),
        "views": config.views,
        "view_features_measured_images": len(images),
        "view_features_measured_s": view_s,
        "view_features_s_per_image": per_image,
        "rows": [],
    }
    for sample in (config.sample, n_target):
        trained = min(sample, n_target)
        d = e.dim
        g = np.random.default_rng(2)
        plain = g.standard_normal((n_target, d)).astype(np.float32)
        plain /= np.linalg.norm(plain, axis=1, keepdims=True)
        views = plain[:, None, :] + 0.3 * g.standard_normal((n_target, config.views, d)).astype(np.float32)
        views /= np.linalg.norm(views, axis=2, keepdims=True)
        cfg = DomainTrainingConfig(sample=sample)
        head = train_head(plain, views, cfg, backbone_model=e.model_id)
        t0 = time.perf_counter()
        head.project(plain)
        project_s = time.perf_counter() - t0
        row = {
            "images": n_target,
            "sample": sample,
            "trained_on": trained,
            "view_features_s": per_image * trained,
            "view_features_basis": "measured" if trained <= len(images) else f"extrapolated from {len(images)}",
            "head_s": head.stats["seconds"],
            "project_s": project_s,
        }
        row["total_s"] = row["view_features_s"] + row["head_s"] + row["project_s"]
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
        if sample >= n_target:
            break
    return out


# ---- main ----------------------------------------------------------------------------------------


def cli_run(root: Path, index: dict, budgets: list[float], domain: bool) -> dict:
    """The product end to end at its defaults, as a user runs it: `curation ingest` of the image
    folder (manifest, descriptor + semantic embeddings, dedup), `curation select --budget N` (the
    default model and strategies), optionally `curation train-domain` and `--model domain`, in a
    throwaway CURATION_HOME. Coverage is read from `curation subset --json`. Unlike the table above,
    dedup runs first, so near-duplicates leave the pool as they do for users."""
    labels = np.array(index["labels"])
    label_of = {str((root / f).resolve()): int(lab) for f, lab in zip(index["files"], labels)}
    n_sources = len(index["sources"])
    curation = str(Path(sys.executable).with_name("curation"))
    out: dict = {"selections": []}
    with tempfile.TemporaryDirectory(prefix="selection-cli-") as home:
        env = {**os.environ, "CURATION_HOME": home}
        env.pop("DAGSTER_HOME", None)
        env.pop("DATABASE_URL", None)

        def run(*args: str) -> str:
            t0 = time.perf_counter()
            done = subprocess.run([curation, *args], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"curation {' '.join(args)} failed:\n{done.stderr[-3000:]}")
            out.setdefault("seconds", {})[args[0] + ("-" + args[-1] if args[0] == "select" else "")] = round(
                time.perf_counter() - t0, 1
            )
            return done.stdout

        try:
            run("ingest", str(root / "images"), "--drop", "bench")
            if domain:
                run("train-domain")
            for frac in budgets:
                budget = max(1, int(round(frac * len(labels))))
                for model in ("semantic", "domain") if domain else ("semantic",):
                    name = f"b{int(frac * 100)}-{model}"
                    run("select", "--budget", str(budget), "--name", name, *(("--model", model) if model != "semantic" else ()))
                    picked = json.loads(run("subset", "--name", name, "--json"))
                    covered = len({label_of[str(Path(p).resolve())] for p in picked})
                    row = {"budget_fraction": frac, "budget": budget, "model": model, "cover": covered / n_sources}
                    out["selections"].append(row)
                    print(json.dumps(row), flush=True)
        finally:
            subprocess.run([curation, "db", "stop"], env=env, capture_output=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    p.add_argument("--seeds", type=int, default=RANDOM_SEEDS)
    p.add_argument("--fresh", action="store_true", help="recompute the embeddings (the image set is kept)")
    p.add_argument("--min-sources", type=int, default=60, help="split photographs in halves below this many")
    p.add_argument("--apt-install", action="store_true", help=f"try apt-get install {' '.join(APT_PACKAGES)}")
    p.add_argument("--train-timing", type=int, metavar="N", help="only measure domain-model training time for N images")
    p.add_argument("--timing-views-on", type=int, default=2000, help="images the view-feature time is measured on")
    p.add_argument("--cli", action="store_true", help="only run the product's CLI at its defaults on the image set")
    p.add_argument("--cli-domain", action="store_true", help="with --cli: also train the domain model and select on it")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(2)
    if args.apt_install:
        r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], capture_output=True)
        print(f"apt-get install: exit {r.returncode}", file=sys.stderr)
    (HERE / "results").mkdir(exist_ok=True)
    if args.train_timing:
        out = train_timing(args.train_timing, args.timing_views_on)
        (HERE / "results" / "selection_semantic_training.json").write_text(json.dumps(out, indent=1))
        return

    root = CACHE / DATA_VERSION
    index = build_images(root, args.min_sources)
    labels = np.array(index["labels"])
    print(
        f"{len(labels)} images from {len(index['sources'])} sources {index['info']['by_origin']} "
        f"(split into halves: {index['info']['split_into_halves']}; per source {index['per_source']}); cache {root}",
        flush=True,
    )
    if args.cli:
        out = cli_run(root, index, [float(b) for b in args.budgets.split(",")], args.cli_domain)
        (HERE / "results" / "selection_semantic_cli.json").write_text(json.dumps(out, indent=1))
        print(json.dumps(out["seconds"]))
        return
    vecs, ids, timing = embed_all(root, index, args.fresh)
    print(json.dumps({k: v for k, v in timing.items() if k != "config"}), flush=True)
    results = run_selections(vecs, ids, labels, [float(b) for b in args.budgets.split(",")], args.seeds)
    print_table(results)
    checks = verdicts(results)
    print()
    for text, ok in checks:
        print(f"{'met   ' if ok else 'MISSED'}  {text}")
    out = {
        "images": len(labels),
        "sources": index["sources"],
        "source_info": index["info"],
        "per_source": index["per_source"],
        "timing": timing,
        "results": results,
        "targets": [{"target": t, "met": ok} for t, ok in checks],
    }
    (HERE / "results" / "selection_semantic.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
