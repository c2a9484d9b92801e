"""Which subset should a labeling budget buy? Each selection strategy against random, on real
labelled images: scikit-learn's bundled digits (1,797 8x8 scans of handwritten digits).

The digits are split 70/30 (stratified, seed 0). The training split's pixels, L2-normalised, are
loaded as one drop's vectors into a throwaway PostgreSQL, and every strategy runs through the real
selection step (`select_subset`: pool query, strategies, stored ranks and comparison). A logistic
regression trained on each subset's images and true labels is scored on the test split. Random is
the mean of 10 seeds. Also reported: classes covered (of 10) and fine clusters covered (the
comparison's independent k-means with one cluster per picked image).

    .venv/bin/python benchmarks/selection_quality.py          # ~2 min
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = "digits:pixels"
BUDGETS = (0.02, 0.05, 0.10, 0.20)
RANDOM_SEEDS = 10


def strategies():
    from curation_pipeline.steps.select import StrategySpec as S

    return {
        "default (coverage + diversity)": (),
        "coverage (k-means medoids)": (S("coverage"),),
        "coverage + typicality": (S("coverage", weight=0.5), S("typicality", weight=1.0)),
        "diversity (k-center greedy)": (S("diversity"),),
        "typicality": (S("typicality"),),
        "outliers": (S("outliers"),),
        "typicality + diversity": (S("typicality", weight=0.5), S("diversity")),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from curation_pipeline.core.manifest import ManifestRecord
    from curation_pipeline.resources.catalog import Catalog, EmbeddingSet
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.select import SelectionSpec, StrategySpec, select_subset

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    vectors = (x_train / np.linalg.norm(x_train, axis=1, keepdims=True)).astype(np.float32)
    n = len(vectors)
    ids = np.arange(1, n + 1)
    label_of = dict(zip(ids.tolist(), y_train.tolist()))
    row_of = {int(i): r for r, i in enumerate(ids)}

    def accuracy(image_ids) -> float:
        rows = [row_of[int(i)] for i in image_ids]
        if len(set(y_train[rows])) < 2:
            return float(np.mean(y_test == y_train[rows][0]))
        clf = LogisticRegression(max_iter=3000).fit(x_train[rows], y_train[rows])
        return float(clf.score(x_test, y_test))

    results = []
    with tempfile.TemporaryDirectory(prefix="selection-quality-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        catalog = Catalog(db.url)
        catalog.register_model(MODEL, "pixels", vectors.shape[1], "8x8 digit pixels, L2-normalised")
        with catalog.manifest_writer("digits") as writer:
            for i in ids:
                record = ManifestRecord(object_key=f"{i}.png", bytes=64, sha256=f"d{i}", status="ok", width=8, height=8)
                writer.add(int(i), f"digits/{i}.png", record, None)
        catalog.replace_embeddings("digits", EmbeddingSet(MODEL, ids, [f"d{i}" for i in ids], vectors, ["digits"] * n))

        def run(name: str, spec: SelectionSpec) -> dict:
            t0 = time.perf_counter()
            select_subset(catalog, name, spec, model=MODEL)
            seconds = time.perf_counter() - t0
            picked = [it["image_id"] for it in catalog.selection_items(name)]
            cmp = catalog.selection_info(name).comparison
            return {
                "accuracy": accuracy(picked),
                "classes": len({label_of[i] for i in picked}),
                "fine_clusters": cmp["subset"]["fine_clusters_covered"],
                "seconds": seconds,
            }

        for frac in [float(b) for b in args.budgets.split(",")]:
            budget = max(1, int(round(frac * n)))
            rnd = [
                run(f"random-{budget}-{s}", SelectionSpec(budget=budget, seed=s, strategies=(StrategySpec("random"),)))
                for s in range(RANDOM_SEEDS)
            ]
            row = {
                "budget_fraction": frac,
                "budget": budget,
                "random": {k: float(np.mean([r[k] for r in rnd])) for k in rnd[0]},
            }
            for label, strat in strategies().items():
                row[label] = run(f"s-{budget}-{len(row)}", SelectionSpec(budget=budget, strategies=strat))
            results.append(row)
            print(json.dumps(row), flush=True)
        db.close()

    labels = ["random"] + list(strategies())
    print(
        "\n| strategy | "
        + " | ".join(f"{int(r['budget_fraction'] * 100)}% ({r['budget']}) acc / classes / clusters" for r in results)
        + " |"
    )
    print("|---|" + "---|" * len(results))
    for label in labels:
        cells = [f"{r[label]['accuracy']:.3f} / {r[label]['classes']:.1f} / {r[label]['fine_clusters']:.2f}" for r in results]
        print(f"| {label} | " + " | ".join(cells) + " |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "selection_quality.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
