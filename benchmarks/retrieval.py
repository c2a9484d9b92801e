"""Retrieval quality and latency.

1. recall@10 on the labelled near-duplicate set of dedup_quality.py (real photographs and their
   edited copies, offline embedder): each original that has copies is the query (`query_images`,
   through the real `retrieve_similar` step), and recall@10 is the fraction of its copies among the
   10 nearest other images. Reported overall and per edit.
2. latency of single queries against 1M synthetic 512-d vectors in pgvector (halfvec HNSW index,
   bulk-built): p50 / p99 through `Catalog.search` (a connection per call, as the asset does),
   through one persistent connection (server time), with a drop filter keeping 10% of the rows,
   and with 50 concurrent clients.

    .venv/bin/python benchmarks/retrieval.py                  # ~15 min; --rows 100000 for a quick run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def recall_at_10() -> dict:
    from dedup_quality import build_dataset

    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.resources.embedders import OfflineEmbedder
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.embed import EmbedOptions, embed_drop
    from curation_pipeline.steps.manifest import build_manifest
    from curation_pipeline.steps.retrieve import RetrievalSpec, retrieve_similar

    with tempfile.TemporaryDirectory(prefix="retrieval-quality-") as tmp:
        folder = Path(tmp) / "set"
        data = build_dataset(folder)
        groups, kinds = data["groups"], data["kinds"]
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        catalog = Catalog(db.url)
        catalog.register_drop("set", str(folder))
        build_manifest(catalog, LocalImageStore(), str(folder), "set")
        embedder = OfflineEmbedder()
        stats = embed_drop(catalog, embedder, "set", EmbedOptions(batch_size=64, workers=2))
        catalog.publish_embeddings("set", stats["model"])
        members = defaultdict(list)
        for f, g in groups.items():
            members[g].append(f)
        found = total = 0
        by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        latencies = []
        for f, kind in kinds.items():
            if kind != "original" or len(members[groups[f]]) < 2:
                continue
            t0 = time.perf_counter()
            retrieve_similar(catalog, embedder, "q", RetrievalSpec(query_images=(f"set/{f}",), k=11))
            latencies.append(time.perf_counter() - t0)
            hits = [it["object_key"] for it in catalog.retrieval_items("q") if it["object_key"] != f][:10]
            for copy in members[groups[f]]:
                if copy == f:
                    continue
                ok = copy in hits
                found += ok
                total += 1
                by_kind[kinds[copy]][0] += ok
                by_kind[kinds[copy]][1] += 1
        db.close()
    return {
        "queries": len(latencies),
        "duplicates": total,
        "recall_at_10": round(found / total, 4),
        "by_edit": {k: round(a / b, 3) for k, (a, b) in sorted(by_kind.items())},
        "step_p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
    }


def latency(rows: int, queries: int, clients: int) -> dict:
    from dedup_scale import DIM, load_drop, make_vectors
    from psycopg import sql

    from curation_pipeline.resources.catalog import Catalog, hnsw_index_name, wire_vector
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.resources.filters import Predicate
    from curation_pipeline.settings import Settings

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    out: dict = {"rows": rows}
    with tempfile.TemporaryDirectory(prefix="retrieval-latency-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        catalog = Catalog(db.url)
        model = "synthetic:halfvec"
        catalog.register_model(model, "synthetic", DIM, "benchmark vectors", storage="halfvec")
        index = hnsw_index_name(model)
        t0 = time.perf_counter()
        with catalog.connection() as conn:
            ddl = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,)).fetchone()[0]
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
            per_drop = rows // 10
            for d in range(10):  # ten drops, so a drop filter keeps 10% of the rows
                with conn.transaction():
                    ids = np.arange(d * per_drop + 1, (d + 1) * per_drop + 1)
                    load_drop(
                        conn, f"drop-{d}", ids, make_vectors(per_drop, rng, centres), model, "halfvec", representatives=False
                    )
            out["load_s"] = round(time.perf_counter() - t0, 1)
            conn.execute("SET maintenance_work_mem = '4GB'")
            t0 = time.perf_counter()
            conn.execute(ddl)
            out["hnsw_build_s"] = round(time.perf_counter() - t0, 1)
            conn.execute("ANALYZE embeddings")
            out["index_mb"] = round(conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()[0] / 2**20, 1)
        qs = make_vectors(queries, rng, centres)

        def pct(xs):
            return {
                "p50_ms": round(float(np.percentile(xs, 50)) * 1000, 2),
                "p99_ms": round(float(np.percentile(xs, 99)) * 1000, 2),
            }

        def timed(fn, q):
            t0 = time.perf_counter()
            fn(q)
            return time.perf_counter() - t0

        for q in qs[:20]:  # warm the index into shared buffers / page cache
            catalog.search(model, q, 10)
        out["search_unfiltered"] = pct([timed(lambda q: catalog.search(model, q, 10), q) for q in qs])
        out["search_drop_filter_10pct"] = pct(
            [timed(lambda q: catalog.search(model, q, 10, drop_keys=["drop-3"]), q) for q in qs]
        )
        out["search_metadata_filter"] = pct(
            [
                timed(lambda q: catalog.search(model, q, 10, predicates=[Predicate.parse("drop_key in drop-1,drop-2")]), q)
                for q in qs
            ]
        )
        stmt, _, _ = catalog.nearest_statement(model)
        with catalog.connection() as conn:
            conn.execute("SET hnsw.ef_search = 100")
            server = []
            for q in qs:
                w = wire_vector(q, "halfvec")
                t0 = time.perf_counter()
                conn.execute(stmt, (w, None, None, w, 10), prepare=True).fetchall()
                server.append(time.perf_counter() - t0)
        out["persistent_connection"] = pct(server)

        def client(part):
            lat = []
            with catalog.connection() as conn:
                conn.execute("SET hnsw.ef_search = 100")
                for q in part:
                    w = wire_vector(q, "halfvec")
                    t0 = time.perf_counter()
                    conn.execute(stmt, (w, None, None, w, 10), prepare=True).fetchall()
                    lat.append(time.perf_counter() - t0)
            return lat

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            lat = [x for part in pool.map(client, np.array_split(np.tile(qs, (2, 1)), clients)) for x in part]
        wall = time.perf_counter() - t0
        out[f"concurrent_{clients}_clients"] = {**pct(lat), "queries_per_s": round(len(lat) / wall, 1)}
        db.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--skip-recall", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    args = p.parse_args()
    result = {}
    if not args.skip_recall:
        result["recall"] = recall_at_10()
        print(json.dumps(result["recall"]), file=sys.stderr, flush=True)
    if not args.skip_latency:
        result["latency"] = latency(args.rows, args.queries, args.clients)
        print(json.dumps(result["latency"]), file=sys.stderr, flush=True)
    if "recall" in result:
        r = result["recall"]
        print(f"recall@10 over {r['duplicates']} duplicates of {r['queries']} queries: {r['recall_at_10']}")
        print("| edit | " + " | ".join(r["by_edit"]) + " |")
        print("|---|" + "---|" * len(r["by_edit"]))
        print("| recall@10 | " + " | ".join(str(v) for v in r["by_edit"].values()) + " |")
    if "latency" in result:
        lat = result["latency"]
        print(
            f"\n{lat['rows']} vectors: load {lat['load_s']} s, HNSW build {lat['hnsw_build_s']} s, index {lat['index_mb']} MB"
        )
        print("| query path | p50 ms | p99 ms |\n|---|---|---|")
        for key, v in lat.items():
            if isinstance(v, dict):
                extra = f" ({v['queries_per_s']} queries/s)" if "queries_per_s" in v else ""
                print(f"| {key}{extra} | {v['p50_ms']} | {v['p99_ms']} |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "retrieval.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
