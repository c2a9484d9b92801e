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

Pruned engine (issue 18, `--pruned RUNS`): greedy_select's bucket-pruned update (same picks as the
full update), real runs, not extrapolated. A run is `set:rows:dim:dtype:picks`, set `iso` (the
clustered set above: 1000 centres plus full-rank noise as large as the centre, every member of a
cluster about equally far from every other, the worst case for bounds) or `lowM` (1000 clusters
whose members vary along M random directions, 12 by default, plus small isotropic noise: low
intrinsic dimension, closer to learned embeddings). Reported: ms per pick, bytes read per pick (rows multiplied x dim x
itemsize), fraction of buckets skipped, the bucketing time, and peak RSS of the selection (VmHWM
reset after the data is built, so it is the selection's peak over the matrix it was given; rows are
reordered in place). `--check ROWS:PICKS` first runs exact and pruned on both sets at a smaller
size, float32 and float16, and prints whether the picks are identical.

    .venv/bin/python benchmarks/selection_scale.py --check 100000:2000 \
        --pruned iso:1000000:512:float16:1000,low:1000000:512:float16:10000,low:1000000:512:float16:100000
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


def make_low_rank(
    n: int, dim: int, dtype=np.float32, *, seed: int = 0, centres: int = 1000, directions: int = 12
) -> np.ndarray:
    """Unit rows in `centres` clusters; a member is its centre plus a combination of its cluster's
    `directions` random unit directions (scale 0.25 each) plus isotropic noise (0.005 per
    coordinate), filled cluster by cluster into rows in random order, in `dtype` directly."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    labels = rng.integers(0, centres, size=n)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(centres + 1))
    out = np.empty((n, dim), dtype=dtype)
    for j in range(centres):
        rows = order[bounds[j] : bounds[j + 1]]
        basis = rng.normal(size=(directions, dim)).astype(np.float32)
        basis /= np.linalg.norm(basis, axis=1, keepdims=True)
        for start in range(0, len(rows), 50_000):
            part = rows[start : start + 50_000]
            block = c[j] + 0.25 * rng.normal(size=(len(part), directions)).astype(np.float32) @ basis
            block += rng.normal(scale=0.005, size=block.shape).astype(np.float32)
            out[part] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def make_set(kind: str, n: int, dim: int, dtype) -> np.ndarray:
    if kind.startswith("low"):  # lowM: M directions per cluster (low: 12)
        return make_low_rank(n, dim, dtype, directions=int(kind[3:] or 12))
    if dim != DIM:
        raise ValueError("the iso set is 512-d")
    x = make_vectors(n)
    return x if dtype == np.float32 else x.astype(dtype)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_pruned(spec: str) -> dict:
    from curation_pipeline.core.selection import greedy_select

    kind, rows, dim, dtype, picks = spec.split(":")
    rows, dim, picks = int(rows), int(dim), int(picks)
    x = make_set(kind, rows, dim, np.dtype(dtype).type)
    if x.dtype == np.float16:
        import torch  # noqa: F401  (imported before the clock starts)
    probe = np.random.default_rng(1).choice(rows, 64, replace=False)
    before = x[probe].copy()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on is the selection's
    rss_before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    res = greedy_select(x, picks, diversity_weight=1.0, prune=True, reorder_in_place=True)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    st = res.stats
    loop_s = seconds - st.build_seconds
    return {
        "set": kind,
        "rows": rows,
        "dim": dim,
        "dtype": dtype,
        "picks": int(len(res.indices)),
        "matrix_mb": round(x.nbytes / 2**20, 1),
        "buckets": st.buckets,
        "build_s": round(st.build_seconds, 1),
        "total_s": round(seconds, 1),
        "ms_per_pick": round(loop_s / max(1, len(res.indices)) * 1000, 2),
        "bytes_read_per_pick_mb": round(st.bytes_read_per_update / 2**20, 2),
        "full_read_mb": round(rows * dim * x.itemsize / 2**20, 1),
        "buckets_skipped": round(st.skipped_fraction, 4),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_over_matrix": round(peak / (x.nbytes / 2**20), 3),
        "rows_restored": bool(np.array_equal(before, x[probe])),
        "last_distance": float(res.distance_at_pick[-1]),
    }


def check_identical(rows: int, picks: int) -> list[dict]:
    from curation_pipeline.core.selection import greedy_select

    out = []
    for kind in ("iso", "low8"):
        base = make_set(kind, rows, DIM, np.float32)
        for dtype in (np.float32, np.float16):
            x = base.astype(dtype)
            t0 = time.perf_counter()
            exact = greedy_select(x, picks, diversity_weight=1.0, prune=False)
            t1 = time.perf_counter()
            pruned = greedy_select(x, picks, diversity_weight=1.0, prune=True)
            t2 = time.perf_counter()
            out.append(
                {
                    "set": kind,
                    "rows": rows,
                    "dtype": np.dtype(dtype).name,
                    "picks": picks,
                    "identical_picks": exact.indices.tolist() == pruned.indices.tolist(),
                    "identical_distances": bool(np.array_equal(exact.distance_at_pick, pruned.distance_at_pick)),
                    "exact_s": round(t1 - t0, 1),
                    "pruned_s": round(t2 - t1, 1),
                    "buckets_skipped": round(pruned.stats.skipped_fraction, 4),
                }
            )
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
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
    p.add_argument("--pruned", help="comma-separated set:rows:dim:dtype:picks runs of the pruned engine")
    p.add_argument("--check", help="ROWS:PICKS: exact vs pruned picks on both sets first")
    p.add_argument("--one-pruned", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.rows, args.steps)))
        return
    if args.one_pruned:
        print(json.dumps(run_pruned(args.one_pruned)))
        return
    if args.pruned or args.check:
        pruned_main(args.pruned, args.check)
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


def pruned_main(runs: str | None, check: str | None) -> None:
    checks = check_identical(*map(int, check.split(":"))) if check else []
    results = []
    for spec in (runs or "").split(","):
        if not spec:
            continue
        res = subprocess.run([sys.executable, __file__, "--one-pruned", spec], stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if checks:
        print("| set | rows x 512 | dtype | picks | pruned picks == exact picks | distances equal | exact s | pruned s |")
        print("|---|---|---|---|---|---|---|---|")
        for c in checks:
            print(
                f"| {c['set']} | {c['rows']:,} | {c['dtype']} | {c['picks']:,} | {c['identical_picks']} | "
                f"{c['identical_distances']} | {c['exact_s']} | {c['pruned_s']} |"
            )
        print()
    if results:
        print(
            "| set | rows x dim | dtype | picks | buckets | bucketing s | total s | ms / pick | MB read / pick "
            "(full: matrix MB) | buckets skipped | peak RSS MB (matrix MB) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['set']} | {r['rows']:,} x {r['dim']} | {r['dtype']} | {r['picks']:,} | {r['buckets']} | "
                f"{r['build_s']} | {r['total_s']} | {r['ms_per_pick']} | {r['bytes_read_per_pick_mb']} "
                f"({r['full_read_mb']}) | {r['buckets_skipped']:.1%} | {r['peak_rss_mb']} ({r['matrix_mb']}) |"
            )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "selection_scale_pruned.json").write_text(json.dumps({"checks": checks, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
