"""Publishing a model's vectors from the embedding cache into `embeddings` (HNSW-indexed), by path.

Synthetic clustered 512-d unit vectors are written to the embedding cache (CacheWriter, untimed),
then published with Catalog.publish_embeddings. Per size and storage (`vector`, `halfvec`):

    floor        the same rows COPYed (binary, from the client) into a table without any index
    old          today's path: one backend inserting through the model's HNSW index, the rows
                 published as consecutive 10k drops so that the rate can be read as the index grows;
                 past --old-budget seconds the rest is extrapolated at the last drop's rate (an
                 optimistic figure for the old path: its rate only falls as the index grows)
    bulk         the new path for a first import: drop the index, insert, rebuild it (parallel
                 maintenance workers, maintenance_work_mem sized for the graph), one transaction

Columns: rows/s, rows/s as a share of the floor's, index build seconds and maintenance_work_mem
(bulk), index size, and for the drop-by-drop paths the rate of the last 10k drop (the routine
case: a drop into an index of size - 10k).

    .venv/bin/python benchmarks/publish_scale.py --sizes 10000,100000 [--storages vector,halfvec]
    .venv/bin/python benchmarks/publish_scale.py --sizes 1000000 --variants floor,old,bulk --old-budget 120
Each (size, storage) runs in its own process with its own embedded PostgreSQL (or $DATABASE_URL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIM = 512
CHUNK = 10_000  # vectors per generated batch and per drop of the drop-by-drop paths


def make_chunk(index: int, n: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1_000 + index)
    v = centres[rng.integers(0, len(centres), size=n)] + rng.normal(size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def chunks(n: int):
    centres = np.random.default_rng(0).normal(size=(1000, DIM)).astype(np.float32)
    for c, start in enumerate(range(0, n, CHUNK)):
        yield c, start, make_chunk(c, min(CHUNK, n - start), centres)


def sha(i: int) -> str:
    return f"{i:064x}"


def add_images(conn, drop_key: str, ids: range) -> None:
    conn.execute("INSERT INTO drops (drop_key) VALUES (%s) ON CONFLICT DO NOTHING", (drop_key,))
    with (
        conn.cursor() as cur,
        cur.copy("COPY images (image_id, drop_key, object_key, source_uri, bytes, sha256, status) FROM STDIN") as cp,
    ):
        for i in ids:
            cp.write_row((i, drop_key, f"{i}.jpg", f"/synthetic/{i}.jpg", 1000, sha(i % 10**9), "ok"))


def run_one(n: int, storage: str, variants: list[str], old_budget: float) -> dict:
    from psycopg import sql

    from curation_pipeline.resources.catalog import STORAGE_TYPES, Catalog, hnsw_index_name, wire_vector
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.settings import Settings

    column, sqltype = STORAGE_TYPES[storage]
    out: dict = {"rows": n, "storage": storage, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="publish-scale-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        catalog = Catalog(db.url)
        with catalog.connection() as conn:
            out["server"] = {
                k: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(k))).fetchone()[0]
                for k in ("max_parallel_maintenance_workers", "max_parallel_workers", "max_worker_processes", "shared_buffers")
            }
        # Every variant publishes the same vectors under its own model id: the cache is per model.
        models = {v: f"{v}:{storage}" for v in variants if v != "floor"}
        for model in models.values():
            catalog.register_model(model, "synthetic", DIM, "benchmark vectors", storage=storage)
        base = {v: (k + 1) * 10**9 for k, v in enumerate(variants)}  # image id ranges per variant
        t_cache = time.perf_counter()
        for c, start, vecs in chunks(n):
            hashes = [sha(i) for i in range(start, start + len(vecs))]
            for variant, model in models.items():
                with catalog.cache_writer(model, storage) as writer:
                    writer.write(hashes, vecs)
                with catalog.connection() as conn, conn.transaction():
                    # one drop per 10k for the drop-by-drop paths, one drop for the bulk path
                    key = f"{variant}-all" if variant == "bulk" else f"{variant}-{c:04d}"
                    add_images(conn, key, range(base[variant] + start, base[variant] + start + len(vecs)))
        out["cache_and_images_s"] = round(time.perf_counter() - t_cache, 1)
        with catalog.connection() as conn:
            conn.execute("VACUUM ANALYZE images")
            conn.execute("VACUUM ANALYZE embedding_cache")

        if "floor" in variants:
            with catalog.connection() as conn:
                conn.execute(
                    sql.SQL("CREATE TABLE floor_copy (image_id bigint, model text, drop_key text, sha256 text, {} {})").format(
                        sql.Identifier(column), sql.SQL(sqltype)
                    )
                )
                t0 = time.perf_counter()
                for _, start, vecs in chunks(n):
                    with (
                        conn.cursor() as cur,
                        cur.copy(
                            sql.SQL(
                                "COPY floor_copy (image_id, model, drop_key, sha256, {}) FROM STDIN WITH (FORMAT BINARY)"
                            ).format(sql.Identifier(column))
                        ) as cp,
                    ):
                        cp.set_types(["int8", "text", "text", "text", sqltype])
                        for i, vec in zip(range(start, start + len(vecs)), vecs):
                            cp.write_row((i, "floor", "floor", sha(i), wire_vector(vec, storage)))
                floor_s = time.perf_counter() - t0
            out["variants"]["floor"] = {"rows_s": round(n / floor_s, 1), "seconds": round(floor_s, 1)}
            print(json.dumps({"rows": n, "storage": storage, "floor": out["variants"]["floor"]}), file=sys.stderr, flush=True)

        for variant, model in models.items():
            res: dict = {}
            if variant == "bulk":
                t0 = time.perf_counter()
                report = catalog.publish_embeddings_report("bulk-all", model)
                seconds = time.perf_counter() - t0
                assert report.rows == n, report
                res.update(
                    method=report.method,  # "auto" picks incremental below BULK_MIN_ROWS
                    seconds=round(seconds, 1),
                    rows_s=round(n / seconds, 1),
                    build_s=round(report.build_s or 0, 1),
                    build_memory_mb=round((report.build_memory_bytes or 0) / 2**20),
                    build_workers=report.build_workers,
                )
            else:
                done, seconds, last_rate = 0, 0.0, None
                for c in range(-(-n // CHUNK)):
                    if seconds > old_budget:
                        break
                    t0 = time.perf_counter()
                    report = catalog.publish_embeddings_report(f"{variant}-{c:04d}", model, method="incremental")
                    dt = time.perf_counter() - t0
                    seconds += dt
                    done += report.inserted
                    last_rate = report.inserted / dt
                rest = n - done
                total = seconds + (rest / last_rate if rest else 0.0)
                res.update(
                    seconds=round(total, 1),
                    rows_s=round(n / total, 1),
                    timed_rows=done,
                    extrapolated=bool(rest),
                    last_drop_rows_s=round(last_rate, 1),
                )
            with catalog.connection() as conn:
                res["index_mb"] = round(
                    conn.execute("SELECT pg_relation_size(%s::regclass)", (hnsw_index_name(model),)).fetchone()[0] / 2**20, 1
                )
            out["variants"][variant] = res
            print(json.dumps({"rows": n, "storage": storage, variant: res}), file=sys.stderr, flush=True)
        db.close()
    floor = out["variants"].get("floor", {}).get("rows_s")
    for res in out["variants"].values():
        res["ratio_to_floor"] = round(res["rows_s"] / floor, 4) if floor else None
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--storages", default="vector,halfvec")
    p.add_argument("--variants", default="floor,old,bulk")
    p.add_argument("--old-budget", type=float, default=400.0, help="seconds of drop-by-drop publishing before extrapolating")
    p.add_argument("--out", default="publish_scale.json", help="file name under benchmarks/results (rows are merged)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(run_one(cfg["n"], cfg["storage"], cfg["variants"], cfg["old_budget"])))
        return
    variants = args.variants.split(",")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for storage in args.storages.split(","):
            cfg = {"n": n, "storage": storage, "variants": variants, "old_budget": args.old_budget}
            res = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(cfg)], stdout=subprocess.PIPE, text=True, check=True
            )
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(
        "| rows | storage | path | rows/s | ratio to floor | seconds | index build s | maintenance_work_mem MB"
        " | index MB | last 10k drop rows/s | note |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        for variant, v in r["variants"].items():
            note = f"extrapolated from the first {v['timed_rows']:,} rows" if v.get("extrapolated") else ""
            if variant == "bulk":
                bulk = v.get("method", "bulk") == "bulk"
                note = f"{v['build_workers']} parallel maintenance workers" if bulk else "auto chose incremental (small)"
            print(
                f"| {r['rows']:,} | {r['storage']} | {variant} | {v['rows_s']:,.0f} | {v['ratio_to_floor']} | {v['seconds']}"
                f" | {v.get('build_s', '')} | {v.get('build_memory_mb', '')} | {v.get('index_mb', '')}"
                f" | {v.get('last_drop_rows_s', '')} | {note} |"
            )
    path = HERE / "results" / args.out
    path.parent.mkdir(exist_ok=True)
    new = {(r["rows"], r["storage"]) for r in rows}
    try:
        kept = [r for r in json.loads(path.read_text())["rows"] if (r["rows"], r["storage"]) not in new]
    except (OSError, ValueError, KeyError):
        kept = []
    path.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "rows": kept + rows}, indent=1))


if __name__ == "__main__":
    main()
