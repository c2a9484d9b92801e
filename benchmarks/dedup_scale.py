"""Incremental dedup of a new 10k drop against corpora of growing size, in PostgreSQL + pgvector.

Synthetic clustered 512-d unit vectors (1,000 centres) stand for a corpus already ingested and
deduplicated (one drop, every image a representative). A new drop of 10k vectors (9k fresh, 1k
near-copies of corpus vectors at cosine ~0.99) is then deduplicated through the real step
(HNSW candidates + exact re-check + star clustering). Reported per corpus size: HNSW build time
and index size for `vector` and `halfvec`, dedup time and peak RSS for the new drop, and
duplicate recall against exact brute force. Bulk mode's time on the corpus itself is reported too.

    .venv/bin/python benchmarks/dedup_scale.py --sizes 100000,300000,1000000 [--ef-search 100,250,400]
Each size runs in its own process with its own embedded PostgreSQL (or $DATABASE_URL).
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
DIM = 512
THRESHOLD = 0.95


def make_vectors(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    # centres and noise both ~N(0, 1) per dimension: members of one cluster sit at cosine ~0.5
    v = centres[rng.integers(0, len(centres), size=n)] + rng.normal(size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def load_drop(
    conn, drop_key: str, ids: np.ndarray, vectors: np.ndarray, model: str, storage: str, representatives: bool
) -> None:
    from curation_pipeline.resources.catalog import STORAGE_TYPES, wire_vector

    column, sqltype = STORAGE_TYPES[storage]
    conn.execute("INSERT INTO drops (drop_key) VALUES (%s) ON CONFLICT DO NOTHING", (drop_key,))
    rng = np.random.default_rng(len(ids))
    hashes = rng.integers(-(2**63), 2**63 - 1, size=len(ids), dtype=np.int64)
    with conn.cursor() as cur:
        with cur.copy(
            "COPY images (image_id, drop_key, object_key, source_uri, bytes, sha256, status, width, height,"
            " phash, phash_mirror) FROM STDIN"
        ) as copy:
            for i, h in zip(ids.tolist(), hashes.tolist()):
                copy.write_row(
                    (i, drop_key, f"{i}.jpg", f"/synthetic/{i}.jpg", 1000, f"{i:064x}", "ok", 640, 480, h, h ^ 0x5A5A5A5A)
                )
        with cur.copy(f"COPY embeddings (image_id, model, drop_key, sha256, {column}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "text", "text", sqltype])
            for i, vec in zip(ids.tolist(), vectors):
                copy.write_row((i, model, drop_key, f"{i:064x}", wire_vector(vec, storage)))
        if representatives:
            with cur.copy(
                "COPY dedup_members (image_id, drop_key, model, representative_id, is_representative, similarity) FROM STDIN"
            ) as copy:
                for i in ids.tolist():
                    copy.write_row((i, drop_key, model, i, True, 1.0))


def query_latency(catalog, model: str, queries: np.ndarray, clients: int) -> dict:
    """Single top-10 queries against the whole corpus: through Catalog.search (a connection per
    call, as the retrieval asset does), on one persistent connection (the server's time), and from
    `clients` concurrent connections."""
    from concurrent.futures import ThreadPoolExecutor

    from curation_pipeline.resources.catalog import wire_vector

    def pct(xs):
        return {
            "p50_ms": round(float(np.percentile(xs, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(xs, 99)) * 1000, 2),
        }

    out = {}
    for q in queries[:20]:
        catalog.search(model, q, 10)  # warm-up
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        catalog.search(model, q, 10)
        lat.append(time.perf_counter() - t0)
    out["search_per_call"] = pct(lat)
    stmt, _, storage = catalog.nearest_statement(model)

    def client(part):
        res = []
        with catalog.connection() as conn:
            conn.execute("SET hnsw.ef_search = 100")
            for q in part:
                w = wire_vector(q, storage)
                t0 = time.perf_counter()
                conn.execute(stmt, (w, None, None, w, 10), prepare=True).fetchall()
                res.append(time.perf_counter() - t0)
        return res

    out["persistent_connection"] = pct(client(queries))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(client, np.array_split(np.tile(queries, (2, 1)), clients)) for x in part]
    out[f"concurrent_{clients}"] = {**pct(lat), "queries_per_s": round(len(lat) / (time.perf_counter() - t0), 1)}
    return out


def run_size(
    n: int,
    efs: list[int],
    storages: tuple[str, ...] = ("halfvec", "vector"),
    latency_queries: int = 0,
    clients: int = 50,
    probes: list[int] | None = None,
    bulk_mode: bool = True,
) -> dict:
    from psycopg import sql

    from curation_pipeline.core.dedup import DedupThresholds, semdedup_pairs
    from curation_pipeline.resources.catalog import Catalog, EmbeddingSet, hnsw_index_name
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.buckets import PROBES, current_buckets
    from curation_pipeline.steps.dedup import dedup_drop, ef_search_for

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    corpus = make_vectors(n, rng, centres)
    fresh = make_vectors(9000, rng, centres)
    sources = rng.choice(n, size=1000, replace=False)
    copies = corpus[sources] + rng.normal(scale=0.01, size=(1000, DIM)).astype(np.float32)  # cosine ~0.975
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    new = np.r_[fresh, copies].astype(np.float32)
    out: dict = {"corpus": n, "new_drop": len(new)}
    with tempfile.TemporaryDirectory(prefix="dedup-scale-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        url = db.url
        catalog = Catalog(url)
        for storage in storages:  # the vector model is the one deduplicated below
            model = f"synthetic:{storage}"
            catalog.register_model(model, "synthetic", DIM, "benchmark vectors", storage=storage)
            index = hnsw_index_name(model)
            with catalog.connection() as conn:
                ddl = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,)).fetchone()[0]
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
                with conn.transaction():
                    load_drop(
                        conn,
                        f"corpus-{storage}",
                        np.arange(1, n + 1) + (10**9 if storage == "halfvec" else 0),
                        corpus,
                        model,
                        storage,
                        representatives=storage == "vector",
                    )
                # the whole graph in memory (1M x 512 needs ~3 GB; at 2 GB the 1M build spilled: 1,049 s)
                conn.execute("SET maintenance_work_mem = '4GB'")
                conn.execute("SET max_parallel_maintenance_workers = 1")
                t0 = time.perf_counter()
                conn.execute(ddl)  # bulk build after loading, as a first import would
                out[f"hnsw_build_s_{storage}"] = round(time.perf_counter() - t0, 1)
                out[f"index_mb_{storage}"] = round(
                    conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()[0] / 2**20, 1
                )
        model = "synthetic:vector"
        new_ids = np.arange(n + 1, n + 1 + len(new))
        with catalog.connection() as conn, conn.transaction():
            t0 = time.perf_counter()
            load_drop(conn, "new-drop", new_ids, new, model, "vector", representatives=False)
        out["new_drop_insert_s"] = round(time.perf_counter() - t0, 1)
        # exact brute force: which new images have a corpus (or new) match >= threshold
        best = np.full(len(new), -1.0, dtype=np.float32)
        for start in range(0, n, 50_000):
            best = np.maximum(best, (new @ corpus[start : start + 50_000].T).max(axis=1))
        within = new @ new.T
        np.fill_diagonal(within, -1)
        truth = (best >= THRESHOLD) | (within.max(axis=1) >= THRESHOLD)
        out["true_duplicates"] = int(truth.sum())
        out["default_ef_search"] = ef_search_for(n + len(new))
        # the corpus's k-means buckets, as every earlier drop's dedup would have left them: trained
        # on a sample and every corpus vector bucketed (timed apart: a one-off per 4x growth)
        t0 = time.perf_counter()
        buckets = current_buckets(catalog, model, [f"corpus-{storage}" for storage in storages if storage == "vector"])
        out["bucket_build_s"] = round(time.perf_counter() - t0, 1)
        out["buckets"] = buckets.n_buckets
        # The index is built once; the new drop is deduplicated at each beam width and probe count (a
        # re-run replaces the drop's rows), so recall vs time can be read off one build. Probes 0 is
        # the HNSW graph alone (the step before the exact re-check).
        runs = [(ef, p) for ef in (efs or [out["default_ef_search"]]) for p in (probes or [PROBES])]
        for ef, p in runs:
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            stats = dedup_drop(
                catalog,
                "new-drop",
                EmbeddingSet(model, new_ids, [f"{i:064x}" for i in new_ids], new, ["new-drop"] * len(new)),
                DedupThresholds(max_hamming=0, min_cosine=THRESHOLD),
                ef_search=ef,
                probes=p,
            )
            res = {"dedup_new_drop_s": round(time.perf_counter() - t0, 1), "probes": p, "recheck": stats["exact_recheck"]}
            res["rss_growth_in_dedup_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1)
            res["duplicates_found"] = stats["duplicates"]
            with catalog.connection() as conn:
                dup_ids = {
                    r[0]
                    for r in conn.execute(
                        "SELECT image_id FROM dedup_members WHERE drop_key = 'new-drop' AND NOT is_representative"
                    ).fetchall()
                }
            flagged = np.asarray([i in dup_ids for i in new_ids.tolist()])
            res["duplicate_recall"] = round(float((flagged & truth).sum() / max(1, truth.sum())), 4)
            res["duplicate_precision"] = round(float((flagged & truth).sum() / max(1, flagged.sum())), 4)
            out[f"ef_{ef}_p{p}"] = res
            print(json.dumps({"corpus": n, "ef_search": ef, **res}), file=sys.stderr, flush=True)
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if latency_queries:
            out["latency"] = query_latency(catalog, model, make_vectors(latency_queries, rng, centres), clients)
            print(json.dumps({"corpus": n, "latency": out["latency"]}), file=sys.stderr, flush=True)
        db.close()
    if bulk_mode:
        t0 = time.perf_counter()
        bulk = semdedup_pairs(corpus, THRESHOLD)
        out["bulk_mode_corpus_s"] = round(time.perf_counter() - t0, 1)
        out["bulk_mode_pairs"] = int(len(bulk))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="100000,300000")
    p.add_argument(
        "--ef-search",
        default="",
        help="comma-separated HNSW beam widths to dedup the new drop at (default: the step's own choice)",
    )
    p.add_argument(
        "--vector-only-from",
        type=int,
        default=10**9,
        help="from this corpus size on, build only the vector index (saves the halfvec build)",
    )
    p.add_argument(
        "--latency-queries",
        type=int,
        default=0,
        help="also time this many single top-10 queries (and 50 concurrent clients) per size",
    )
    p.add_argument(
        "--probes",
        default="0,8",
        help="comma-separated bucket probes of the exact re-check (0: the HNSW graph alone; 8: the default)",
    )
    p.add_argument("--skip-bulk-mode", action="store_true", help="do not time bulk mode on the corpus")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    efs = [int(e) for e in args.ef_search.split(",") if e]
    probes = [int(x) for x in args.probes.split(",") if x]
    if args.one:
        storages = ("vector",) if args.one >= args.vector_only_from else ("halfvec", "vector")
        res = run_size(args.one, efs, storages, args.latency_queries, probes=probes, bulk_mode=not args.skip_bulk_mode)
        print(json.dumps(res))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--ef-search",
                args.ef_search,
                "--vector-only-from",
                str(args.vector_only_from),
                "--latency-queries",
                str(args.latency_queries),
                "--probes",
                args.probes,
                *(["--skip-bulk-mode"] if args.skip_bulk_mode else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cols = [c for c in rows[0] if not c.startswith("ef_") and c != "latency"]
    extra = ["ef_search", "probes", "dedup_new_drop_s", "recheck_s", "duplicate_recall", "duplicate_precision"]
    print(" | ".join(cols + extra))
    for r in rows:
        for key in (k for k in r if k.startswith("ef_")):
            e = r[key]
            print(
                " | ".join(
                    [str(r.get(c)) for c in cols]
                    + [key[3:].split("_p")[0], str(e["probes"]), str(e["dedup_new_drop_s"])]
                    + [str(e["recheck"].get("seconds", 0)), str(e["duplicate_recall"]), str(e["duplicate_precision"])]
                )
            )
    for r in rows:
        if "latency" in r:
            print(f"latency at {r['corpus']}: {json.dumps(r['latency'])}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dedup_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
