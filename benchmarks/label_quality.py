"""Mislabel detection (issue 17): how many of the top-ranked suspects are really mislabelled?

Two labelled sets, embedded with the product's default semantic model (the packaged ImageNet
EfficientNet-Lite0, as `curation ingest` embeds):

  * digits: scikit-learn's 1,797 handwritten digits (8x8, upscaled to 64x64), 10 classes;
  * glyphs: 3,000 objects pasted on photographs, scored twice: embedded as whole images, and as
    object crops (core/objects.py: the box with 15% context, as the `object_embeddings` asset cuts
    it): one capital letter of 10 classes that come in look-alike pairs (O/Q, E/F, C/G, P/R, M/N),
    in 12 fonts, random size (36-80 px), colour, rotation (+-15 degrees) and position, on a random
    crop of a real photograph (the pictures benchmarks/selection_semantic.py finds: scikit-image,
    scikit-learn, matplotlib, Debian backgrounds), 96x96 JPEG.

Noise, each scenario on a fresh copy of the clean labels (seed 0):
  * random: 5% of the labels flipped to a uniformly random other class;
  * look-alike: 5% flipped to the class's look-alike (glyphs: its pair; digits: the class whose
    centroid is nearest in the embedding space);
  * both: 5% random + 5% look-alike.

Methods (core/label_quality.py, the functions the `label_review` asset calls), and the list that
asset stores (items cleanlab flags or whose neighbours mostly disagree, ranked by confident
learning's score; its top 100 scored as shown to a person): kNN label
disagreement (k=10), cleanlab confident learning on out-of-fold probabilities of a linear probe,
their rank average (the product's default ranking), and a random ranking. Scored: precision and
recall of the top 100 and of the top N (N = the number of flipped labels). cleanlab is the peer
here: its own recipe (out-of-fold probabilities, `find_label_issues` at its defaults) is the
"cleanlab" row, and its issue mask is scored too.

    .venv/bin/python benchmarks/label_quality.py       # ~3 min on 2 cores (embeddings cached under /tmp after the first run)

Writes benchmarks/results/label_quality.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from curation_pipeline.core.label_quality import (  # noqa: E402
    confident_learning,
    knn_disagreement,
    knn_neighbours,
    out_of_fold_probs,
    precision_recall_at,
    rank_average,
)
from curation_pipeline.core.objects import crop_object  # noqa: E402

CACHE = Path("/tmp/label-quality-bench")
GLYPH_CLASSES = ["O", "Q", "E", "F", "C", "G", "P", "R", "M", "N"]
GLYPH_PAIRS = {"O": "Q", "Q": "O", "E": "F", "F": "E", "C": "G", "G": "C", "P": "R", "R": "P", "M": "N", "N": "M"}
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))


def fonts() -> list[Path]:
    found = sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob("*.ttf") if "ExtraLight" not in p.name)
    rng = np.random.default_rng(0)
    return [found[i] for i in sorted(rng.choice(len(found), size=min(12, len(found)), replace=False))]


def digits_images() -> tuple[list[Image.Image], np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [
        Image.fromarray((255 - im * 16).clip(0, 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR).convert("RGB")
        for im in d.images
    ]
    return images, d.target.astype(np.int64), [str(i) for i in range(10)]


def glyph_images(n: int = 3000, seed: int = 0) -> tuple[list[Image.Image], np.ndarray, list[str], list[tuple]]:
    """Images, labels, class names and (x, y, w, h) boxes of the pasted letters."""
    from selection_semantic import _open_rgb, source_paths

    rng = np.random.default_rng(seed)
    backgrounds = []
    for _, _, path in source_paths():
        im = _open_rgb(path)
        im.thumbnail((768, 768))
        if min(im.size) >= 128:
            backgrounds.append(im)
    font_paths = fonts()
    images, labels, boxes = [], [], []
    for _ in range(n):
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        side = int(rng.integers(96, min(bg.size) + 1))
        x0, y0 = int(rng.integers(0, bg.width - side + 1)), int(rng.integers(0, bg.height - side + 1))
        canvas = bg.crop((x0, y0, x0 + side, y0 + side)).resize((96, 96), Image.BILINEAR)
        cls = int(rng.integers(len(GLYPH_CLASSES)))
        size = int(rng.integers(36, 81))
        font = ImageFont.truetype(str(font_paths[int(rng.integers(len(font_paths)))]), size)
        layer = Image.new("L", (size * 2, size * 2), 0)
        ImageDraw.Draw(layer).text((size // 2, size // 4), GLYPH_CLASSES[cls], font=font, fill=255)
        layer = layer.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        bbox = layer.getbbox()
        if bbox is None:
            continue
        layer = layer.crop(bbox)
        if layer.width > 90 or layer.height > 90:
            layer.thumbnail((90, 90))
        px, py = int(rng.integers(0, 96 - layer.width + 1)), int(rng.integers(0, 96 - layer.height + 1))
        local = np.asarray(canvas.crop((px, py, px + layer.width, py + layer.height)).convert("L"), np.float32).mean()
        ink = int(rng.integers(0, 60)) if local > 128 else int(rng.integers(196, 256))
        colour = tuple(int(np.clip(ink + rng.integers(-40, 41), 0, 255)) for _ in range(3))
        canvas.paste(Image.new("RGB", layer.size, colour), (px, py), layer)
        images.append(canvas)
        labels.append(cls)
        boxes.append((px, py, layer.width, layer.height))
    return images, np.asarray(labels, np.int64), list(GLYPH_CLASSES), boxes


def embed(name: str, images: list[Image.Image], fresh: bool) -> np.ndarray:
    from curation_pipeline.resources.embedders import packaged_embedder

    path = CACHE / f"{name}-efficientnet_lite0.npy"
    if path.exists() and not fresh:
        vecs = np.load(path)
        if len(vecs) == len(images):
            return vecs
    embedder = packaged_embedder("efficientnet_lite0")
    t0 = time.perf_counter()
    out = [embedder.embed_images(images[i : i + 64]) for i in range(0, len(images), 64)]
    vecs = np.concatenate(out).astype(np.float32)
    print(f"embedded {len(images)} {name} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def look_alike_map(vectors: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[int, int]:
    if names == GLYPH_CLASSES:
        return {i: names.index(GLYPH_PAIRS[c]) for i, c in enumerate(names)}
    cents = np.stack([vectors[labels == c].mean(0) for c in range(len(names))])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    sims = cents @ cents.T
    np.fill_diagonal(sims, -np.inf)
    return {c: int(sims[c].argmax()) for c in range(len(names))}


def add_noise(labels: np.ndarray, n_classes: int, look: dict[int, int], scenario: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    n = len(labels)
    order = rng.permutation(n)
    k = int(round(0.05 * n))
    rand_idx = order[:k] if scenario in ("random", "both") else order[:0]
    look_idx = order[k : 2 * k] if scenario == "both" else (order[:k] if scenario == "look-alike" else order[:0])
    for i in rand_idx:
        noisy[i] = int(rng.choice([c for c in range(n_classes) if c != labels[i]]))
    for i in look_idx:
        noisy[i] = look[int(labels[i])]
    return noisy, noisy != labels


def evaluate(vectors: np.ndarray, noisy: np.ndarray, truth: np.ndarray, n_classes: int, k_nn: int = 10) -> dict:
    t0 = time.perf_counter()
    idx, sims = knn_neighbours(vectors, k_nn)
    knn_score, _ = knn_disagreement(noisy, idx, sims, n_classes)
    t_knn = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = out_of_fold_probs(vectors, noisy, n_classes)
    mask, cl_score = confident_learning(noisy, probs)
    t_cl = time.perf_counter() - t0
    combo = rank_average(knn_score, cl_score)
    rng = np.random.default_rng(1)
    n_bad = int(truth.sum())
    out = {}
    for name, score in (
        ("knn", knn_score),
        ("cleanlab (default)", cl_score),
        ("rank average", combo),
        ("random", rng.random(len(noisy))),
    ):
        p100, r100 = precision_recall_at(score, truth, 100)
        pn, rn = precision_recall_at(score, truth, n_bad)
        out[name] = {"p@100": round(p100, 3), "r@100": round(r100, 3), "p@N": round(pn, 3), "r@N": round(rn, 3)}
    # exactly what the label_review asset stores: items cleanlab flags or whose neighbours mostly
    # disagree (ReviewSpec.min_knn_disagreement), ranked by confident learning's score
    listed = np.nonzero(mask | (knn_score >= 0.6))[0]
    listed = listed[np.argsort(-cl_score[listed], kind="stable")]
    top = listed[:100]
    out["label_review list"] = {
        "listed": int(len(listed)),
        "p@100": round(float(truth[top].mean()) if len(top) else 0.0, 3),
        "r@100": round(float(truth[top].sum() / max(truth.sum(), 1)), 3),
        "r@all": round(float(truth[listed].sum() / max(truth.sum(), 1)), 3),
    }
    flagged = int(mask.sum())
    hits = int((mask & truth).sum())
    out["cleanlab issue mask"] = {
        "flagged": flagged,
        "precision": round(hits / max(flagged, 1), 3),
        "recall": round(hits / max(n_bad, 1), 3),
    }
    out["seconds"] = {"knn": round(t_knn, 2), "cleanlab (probe + cleanlab)": round(t_cl, 2)}
    out["flipped"] = n_bad
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fresh", action="store_true", help="recompute the embeddings")
    ap.add_argument("--glyphs", type=int, default=3000)
    args = ap.parse_args()
    results: dict = {"sets": {}}
    sets = {}
    images, labels, names = digits_images()
    sets["digits"] = (embed("digits", images, args.fresh), labels, names)
    images, labels, names, boxes = glyph_images(args.glyphs)
    sets["glyphs (whole image)"] = (embed(f"glyphs{args.glyphs}", images, args.fresh), labels, names)
    crops = [crop_object(im, box) for im, box in zip(images, boxes)]
    sets["glyphs (object crops)"] = (embed(f"glyph-objects{args.glyphs}", crops, args.fresh), labels, names)
    for set_name, (vecs, labels, names) in sets.items():
        look = look_alike_map(vecs, labels, names)
        # how separable the clean set is for a linear probe (the ceiling for probe-based methods)
        clean_probs = out_of_fold_probs(vecs, labels, len(names))
        entry = {
            "images": len(labels),
            "classes": names,
            "look_alike": {names[a]: names[b] for a, b in look.items()},
            "clean_probe_accuracy": round(float((clean_probs.argmax(1) == labels).mean()), 3),
            "scenarios": {},
        }
        for scenario in ("random", "look-alike", "both"):
            noisy, truth = add_noise(labels, len(names), look, scenario)
            entry["scenarios"][scenario] = evaluate(vecs, noisy, truth, len(names))
        results["sets"][set_name] = entry
    CACHE.mkdir(parents=True, exist_ok=True)
    out = HERE / "results" / "label_quality.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    for set_name, entry in results["sets"].items():
        print(f"\n### {set_name}: {entry['images']} images, clean probe accuracy {entry['clean_probe_accuracy']}\n")
        print("| scenario | flipped | method | P@100 | R@100 | P@N | R@N |")
        print("|---|---|---|---|---|---|---|")
        for scenario, res in entry["scenarios"].items():
            for method in ("knn", "cleanlab (default)", "rank average", "random"):
                r = res[method]
                print(f"| {scenario} | {res['flipped']} | {method} | {r['p@100']} | {r['r@100']} | {r['p@N']} | {r['r@N']} |")
            lr = res["label_review list"]
            print(
                f"| {scenario} | {res['flipped']} | label_review's list ({lr['listed']} listed) | {lr['p@100']} |"
                f" {lr['r@100']} | - | {lr['r@all']} (all listed) |"
            )
            m = res["cleanlab issue mask"]
            print(
                f"| {scenario} | {res['flipped']} | cleanlab issue mask ({m['flagged']} flagged) | - | - |"
                f" {m['precision']} | {m['recall']} |"
            )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
