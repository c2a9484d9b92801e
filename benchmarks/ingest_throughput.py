"""Per-stage throughput of the ingest path (manifest -> embeddings -> dedup) on real photographs.

Builds the demo drops with a finer crop grid (more, smaller distinct images), starts a throwaway
embedded PostgreSQL (or uses $DATABASE_URL), runs the plain-Python steps the assets call, and
prints a table; JSON goes to benchmarks/results/ingest_throughput.json.

    .venv/bin/python benchmarks/ingest_throughput.py [--rows 4 --cols 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.demo_data import build_demo_drops
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.database import ThrowawayDatabase
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.image_store import LocalImageStore
from curation_pipeline.settings import Settings
from curation_pipeline.steps.dedup import dedup_drop
from curation_pipeline.steps.embed import embed_drop
from curation_pipeline.steps.manifest import build_manifest


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=6)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="curation-bench-") as tmp:
        tmp = Path(tmp)
        demo = build_demo_drops(tmp / "demo", crops_per_side=(args.rows, args.cols))
        db = ThrowawayDatabase(tmp / "pg", Settings.from_env().database_url)
        url = db.url
        catalog = Catalog(url)
        embedder = OfflineEmbedder()
        rows = []
        for key, folder in demo.drops.items():
            catalog.register_drop(key, str(folder))
            t0 = time.perf_counter()
            m = build_manifest(catalog, LocalImageStore(), str(folder), key)
            t1 = time.perf_counter()
            e = embed_drop(catalog, embedder, key)
            catalog.publish_embeddings(key, e["model"])
            t2 = time.perf_counter()
            d = dedup_drop(catalog, key, catalog.load_embeddings([key], e["model"]), DedupThresholds())
            t3 = time.perf_counter()
            again = embed_drop(catalog, embedder, key)  # second pass: content cache
            t4 = time.perf_counter()
            rows.append(
                {
                    "drop": key,
                    "objects": m["objects_listed"],
                    "valid": m["valid_images"],
                    "manifest_img_s": round(m["objects_listed"] / (t1 - t0), 1),
                    "embed_img_s": round(e["computed"] / (t2 - t1), 1) if e["computed"] else None,
                    "dedup_img_s": round(d["images"] / (t3 - t2), 1),
                    "re_embed_s": round(t4 - t3, 3),
                    "re_embed_computed": again["computed"],
                    "duplicates": d["duplicates"],
                }
            )
        db.close()

    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest_throughput.json").write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "embedder": embedder.model_id,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
