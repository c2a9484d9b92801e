"""Peak memory of a selection at scale: loading the candidate pool from PostgreSQL and selecting.

N synthetic 512-d unit vectors (float32 `vector` storage) are loaded as one deduplicated drop into
an embedded PostgreSQL. Then, each in its own process so that peak RSS is that path's alone:

* `old pool load`: what `selection_pool` did before issue 18 (fetchall of every row as pgvector
  objects, `np.stack(...).astype(float32)`, then `pool.vectors[rows]` in the selection step);
* `pool load`: today's `Catalog.selection_pool` (rows streamed from a server-side cursor into one
  preallocated matrix), then k-center greedy (`greedy_select`, diversity, 100 picks) on it in place.

Reported: the candidate matrix's size, peak RSS after loading and after selecting, and their ratio
to the matrix.

    .venv/bin/python benchmarks/selection_memory.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DIM = 512
MODEL = "synthetic:vector"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed(url: str, n: int) -> None:
    from dedup_scale import load_drop, make_vectors
    from psycopg import sql

    from curation_pipeline.resources.catalog import Catalog, hnsw_index_name

    catalog = Catalog(url)
    catalog.register_model(MODEL, "synthetic", DIM, "benchmark vectors")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    with catalog.connection() as conn:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(hnsw_index_name(MODEL))))  # not read here
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            with conn.transaction():
                load_drop(
                    conn,
                    "pool",
                    np.arange(start + 1, stop + 1),
                    make_vectors(stop - start, rng, centres),
                    MODEL,
                    "vector",
                    representatives=True,
                )
        conn.execute("ANALYZE")


def measure(url: str, mode: str) -> dict:
    from curation_pipeline.core.selection import greedy_select
    from curation_pipeline.resources.catalog import Catalog, EmbeddingSet

    catalog = Catalog(url)
    base = peak_mb()
    t0 = time.perf_counter()
    if mode == "old":
        with catalog.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, sha256, drop_key, embedding FROM embeddings WHERE model = %s ORDER BY image_id", (MODEL,)
            ).fetchall()
        pool = EmbeddingSet.from_rows(MODEL, rows, DIM)
        del rows
        vectors = pool.vectors[np.arange(len(pool))]  # the step's copy
    else:
        pool, _ = catalog.selection_pool(MODEL)
        vectors = pool.vectors
    load_s = time.perf_counter() - t0
    after_load = peak_mb()
    t0 = time.perf_counter()
    res = greedy_select(vectors, 100, diversity_weight=1.0, reorder_in_place=True)
    select_s = time.perf_counter() - t0
    matrix_mb = vectors.nbytes / 2**20
    return {
        "mode": mode,
        "rows": len(vectors),
        "matrix_mb": round(matrix_mb, 1),
        "load_s": round(load_s, 1),
        "process_before_mb": round(base, 1),
        "peak_after_load_mb": round(after_load, 1),
        "peak_after_select_mb": round(peak_mb(), 1),
        "peak_over_matrix": round(peak_mb() / matrix_mb, 2),
        "load_growth_over_matrix": round((after_load - base) / matrix_mb, 2),
        "select_s_100_picks": round(select_s, 1),
        "pruned": bool(res.stats and res.stats.pruned),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(measure(args.url, args.mode)))
        return
    from curation_pipeline.resources.database import ThrowawayDatabase

    with tempfile.TemporaryDirectory(prefix="selection-memory-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", None)
        try:
            t0 = time.perf_counter()
            seed(db.url, args.rows)
            print(f"loaded {args.rows} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            rows = []
            for mode in ("old", "new"):
                out = subprocess.run(
                    [sys.executable, __file__, "--url", db.url, "--mode", mode], stdout=subprocess.PIPE, text=True, check=True
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            db.close()
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "selection_memory.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
