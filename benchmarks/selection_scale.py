"""k-center greedy at scale: selecting 10k and 100k from 1M x 512 synthetic clustered vectors.

Each greedy step must read the whole candidate matrix once (one matrix-vector product to update
every candidate's distance to the chosen set), so the floor per step is matrix bytes / memory
read bandwidth. The floor is measured on the same float32 matrix as the best of three BLAS
matrix-vector products with a ones vector (a pure streaming read at BLAS speed). Reported per
implementation:

* `core (float32)`: curation_pipeline.core.selection.k_center_greedy;
* `core (float16)`: the same on a float16 copy (half the bytes per step, torch's half kernel);
* `plain numpy`: `min_dist = np.minimum(min_dist, 1 - X @ c)` on the whole matrix at once.

Steps are timed over `--steps` picks and the totals for 10k and 100k picks are extrapolated
(each step costs the same: the matrix is read once per pick); 100k picks on 2 cores would take
hours. Memory: tracemalloc's peak of what the selection allocates besides the matrix, in a process
per implementation.

    .venv/bin/python benchmarks/selection_scale.py --rows 1000000 --steps 200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIM = 512


def make_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, 1000, size=stop - start)] + rng.normal(size=(stop - start, DIM)).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def plain_numpy(x: np.ndarray, steps: int) -> np.ndarray:
    min_dist = np.full(len(x), np.inf, dtype=np.float32)
    current = 0
    picked = [current]
    for _ in range(steps - 1):
        min_dist = np.minimum(min_dist, 1.0 - x @ x[current])
        min_dist[picked] = -np.inf
        current = int(np.argmax(min_dist))
        picked.append(current)
    return np.asarray(picked)


def run_one(impl: str, rows: int, steps: int) -> dict:
    from curation_pipeline.core.selection import k_center_greedy

    x = make_vectors(rows)
    if impl == "core-f16":
        x = x.astype(np.float16)
    matrix_mb = x.nbytes / 2**20
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # read-bandwidth floor: the best of 3 passes of BLAS over the same matrix
    ones = np.ones(DIM, dtype=np.float32)
    probe = x if x.dtype == np.float32 else None
    read_s = []
    if probe is not None:
        for _ in range(3):
            t0 = time.perf_counter()
            probe @ ones
            read_s.append(time.perf_counter() - t0)
    import tracemalloc

    if impl == "core-f16":
        import torch  # noqa: F401  (imported before the clock starts: the float16 path runs on torch)

        k_center_greedy(x[:1000], 2)
    tracemalloc.start()  # numpy reports its allocations to tracemalloc: the selection's own memory
    t0 = time.perf_counter()
    if impl == "plain":
        picked = plain_numpy(x, steps)
    else:
        picked, _ = k_center_greedy(x, steps, first=0)
    seconds = time.perf_counter() - t0
    per_step = seconds / steps
    traced_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "impl": impl,
        "rows": rows,
        "dim": DIM,
        "steps": steps,
        "matrix_mb": round(matrix_mb, 1),
        "ms_per_step": round(per_step * 1000, 2),
        "floor_ms_per_step_f32": round(min(read_s) * 1000, 2) if read_s else None,
        "extrapolated_10k_picks_s": round(per_step * 10_000, 1),
        "extrapolated_100k_picks_s": round(per_step * 100_000, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_before_select_mb": round(base_rss, 1),
        "selection_alloc_peak_mb": round(traced_peak_mb, 1),
        "memory_over_matrix": round((matrix_mb + traced_peak_mb) / matrix_mb, 3),
        "first_picks": picked[:5].tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--impls", default="core-f32,core-f16,plain")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.rows, args.steps)))
        return
    rows = []
    for impl in args.impls.split(","):
        res = subprocess.run(
            [sys.executable, __file__, "--one", impl, "--rows", str(args.rows), "--steps", str(args.steps)],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    floor = next((r["floor_ms_per_step_f32"] for r in rows if r["floor_ms_per_step_f32"]), None)
    print(
        "| implementation | matrix MB | ms / step | x f32 read floor | 10k picks s (extrap.) | 100k picks s (extrap.) "
        "| selection allocations peak MB | (matrix + allocations) / matrix |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ms_per_step'] / floor:.2f}" if floor else "-"
        print(
            f"| {r['impl']} | {r['matrix_mb']} | {r['ms_per_step']} | {ratio} | {r['extrapolated_10k_picks_s']} | "
            f"{r['extrapolated_100k_picks_s']} | {r['selection_alloc_peak_mb']} | {r['memory_over_matrix']} |"
        )
    print(f"f32 read floor: {floor} ms per step (one BLAS pass over the {rows[0]['rows']} x {DIM} float32 matrix)")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "selection_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
