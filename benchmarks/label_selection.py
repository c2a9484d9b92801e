"""Class-balanced selection and what a subset buys (issue 17).

The set: the glyph objects of benchmarks/label_quality.py (letters of 10 classes pasted on real
photographs, embedded as object crops with the packaged EfficientNet-Lite0; cached there), made
long-tailed: class k keeps round(600 / (k + 1) ** 1.5) objects, or as many as the set has (255 down
to 19, 852 in all). A balanced evaluation set of 30 objects per class is held out first. Labels are
imported as image-level labels through the real `import_labels`; selections run through the real
`select_subset` in a throwaway PostgreSQL.

At 2, 5 and 10% budgets: the product's default strategies (coverage + diversity), class_balance +
diversity, and random (mean of 5 seeds). Scored: the rarest class's share of the subset, the
smallest class count, classes covered, and the accuracy of a linear probe trained on the subset and
scored on the balanced evaluation set (core/evaluation.py, what the `subset_evaluation` asset
reports), against random subsets of the same size and against the whole pool.

    .venv/bin/python benchmarks/label_selection.py   # ~2 min on 2 cores once label_quality.py cached the vectors

Writes benchmarks/results/label_selection.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from curation_pipeline.core.evaluation import probe_accuracy  # noqa: E402

SEEDS = 5


def long_tail(labels: np.ndarray, n_classes: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, eval rows): class k keeps round(600 / (k+1)^1.5) rows, 30 more per class evaluate."""
    pool, held = [], []
    for k in range(n_classes):
        rows = rng.permutation(np.nonzero(labels == k)[0])
        keep = int(round(600 / (k + 1) ** 1.5))
        held.append(rows[:30])
        pool.append(rows[30 : 30 + keep])
    return np.concatenate(pool), np.concatenate(held)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="0.02,0.05,0.1")
    args = ap.parse_args()
    import label_quality as lq

    from curation_pipeline.core.manifest import ManifestRecord
    from curation_pipeline.resources.catalog import Catalog, EmbeddingSet
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.labels import import_labels
    from curation_pipeline.steps.select import SelectionSpec, StrategySpec, select_subset

    images, labels, names, boxes = lq.glyph_images(3000)
    from curation_pipeline.core.objects import crop_object

    vectors = lq.embed("glyph-objects3000", [crop_object(im, b) for im, b in zip(images, boxes)], False)
    rng = np.random.default_rng(0)
    pool_rows, eval_rows = long_tail(labels, len(names), rng)
    x, y = vectors[pool_rows], labels[pool_rows]
    ex, ey = vectors[eval_rows], labels[eval_rows]
    n = len(pool_rows)
    counts = np.bincount(y, minlength=len(names))
    rarest = int(counts.argmin())
    model = "pretrained:efficientnet_lite0-objects"
    results: dict = {"pool": n, "class_counts": {names[k]: int(c) for k, c in enumerate(counts)}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="label-selection-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        try:
            catalog = Catalog(db.url)
            catalog.register_drop("glyphs", None)
            catalog.register_model(model, "pretrained", x.shape[1], "glyph object crops")
            ids = np.arange(1, n + 1)
            with catalog.manifest_writer("glyphs") as writer:
                for i in ids:
                    rec = ManifestRecord(object_key=f"g{i}.jpg", bytes=1, sha256=f"g{i}", status="ok", width=96, height=96)
                    writer.add(int(i), f"/glyphs/g{i}.jpg", rec, None)
            catalog.replace_embeddings("glyphs", EmbeddingSet(model, ids, [f"g{i}" for i in ids], x, ["glyphs"] * n))
            csv = Path(tmp) / "labels.csv"
            csv.write_text("image,label\n" + "".join(f"g{i}.jpg,{names[c]}\n" for i, c in zip(ids, y)))
            import_labels(catalog, csv, drop_key="glyphs")
            row_of = {int(i): r for r, i in enumerate(ids)}

            def score(name: str, spec) -> dict:
                t0 = time.perf_counter()
                select_subset(catalog, name, spec, model=model)
                seconds = time.perf_counter() - t0
                rows = [row_of[int(it["image_id"])] for it in catalog.selection_items(name)]
                sub = np.bincount(y[rows], minlength=len(names))
                return {
                    "rarest_share": float(sub[rarest] / len(rows)),
                    "min_class": int(sub.min()),
                    "classes": int((sub > 0).sum()),
                    "probe_accuracy": probe_accuracy(x[rows], y[rows], ex, ey),
                    "seconds": seconds,
                }

            for frac in [float(b) for b in args.budgets.split(",")]:
                budget = max(1, int(round(frac * n)))
                rnd = [
                    score(f"random-{budget}-{s}", SelectionSpec(budget=budget, seed=s, strategies=(StrategySpec("random"),)))
                    for s in range(SEEDS)
                ]
                row = {
                    "budget_fraction": frac,
                    "budget": budget,
                    "random": {k: float(np.mean([r[k] for r in rnd])) for k in rnd[0]},
                    "random_probe_std": float(np.std([r["probe_accuracy"] for r in rnd])),
                    "default (coverage + diversity)": score(f"default-{budget}", SelectionSpec(budget=budget)),
                    "class_balance + diversity": score(
                        f"balanced-{budget}",
                        SelectionSpec(budget=budget, strategies=(StrategySpec("class_balance"), StrategySpec("diversity"))),
                    ),
                }
                results["rows"].append(row)
        finally:
            db.close()
    results["everything_probe_accuracy"] = probe_accuracy(x, y, ex, ey)
    dest = HERE / "results" / "label_selection.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(results, indent=2))
    print(f"pool {n} objects, class counts {results['class_counts']}; rarest class: {names[rarest]}")
    print(f"probe on the whole pool: {results['everything_probe_accuracy']:.3f} (balanced eval, 30 per class)\n")
    print("| budget | method | rarest class share | smallest class | classes | probe accuracy |")
    print("|---|---|---|---|---|---|")
    for row in results["rows"]:
        for method in ("random", "default (coverage + diversity)", "class_balance + diversity"):
            r = row[method]
            extra = f" ± {row['random_probe_std']:.3f}" if method == "random" else ""
            print(
                f"| {row['budget']} ({row['budget_fraction']:.0%}) | {method} | {r['rarest_share']:.3f} |"
                f" {r['min_class']:.1f} | {r['classes']:.1f} | {r['probe_accuracy']:.3f}{extra} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
