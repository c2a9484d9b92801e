"""Many capture-drop partitions (metadata only, no images): what the sensor, the automation and the
UI's GraphQL cost at 20,000 and 50,000 drops.

For each size: a throwaway Dagster instance (SQLite, the local default) and embedded PostgreSQL;
N `capture_drops` partitions, N drops registered in the catalog with their folders (empty) under a
watched root, and a materialization of `dedup_clusters` for each drop (runless events, as if every
drop had been ingested), plus one selection. Then, timed:
- the drop sensor's tick (list N folders, all known: nothing to do, which is every tick's common case);
- the automation's evaluation of the whole graph (what the daemon does every 30 s), first and next tick;
- the webserver's GraphQL for the asset page of dedup_clusters (partition keys, partition statuses
  and counts), the queries the UI sends when the page or its Partitions tab opens.
Prints a table; JSON goes to benchmarks/results/partition_scale.json.

    .venv/bin/python benchmarks/partition_scale.py [--sizes 20000,50000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dagster as dg

from curation_pipeline.definitions import build_definitions, build_resources
from curation_pipeline.defs.sensors import WatchSettings, evaluate_drops
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.database import ThrowawayDatabase
from curation_pipeline.settings import Settings

PARTITION_QUERIES = {
    "partition_keys": """{ assetNodeOrError(assetKey: {path: ["dedup_clusters"]}) { ... on AssetNode {
        partitionKeysByDimension { partitionKeys } } } }""",
    "partition_statuses": """{ assetNodes(assetKeys: [{path: ["dedup_clusters"]}]) {
        assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions
        materializingPartitions } } } }""",
    "partition_stats": """{ assetNodes(assetKeys: [{path: ["dedup_clusters"]}]) {
        partitionStats { numMaterialized numPartitions numFailed numMaterializing } } }""",
    "asset_catalog": """{ assetNodes { assetKey { path } partitionStats { numMaterialized numPartitions } } }""",
}


def _timed(fn, repeat: int = 1):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3), out


def _graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(
        base + "/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    body = json.loads(urllib.request.urlopen(req, timeout=600).read())
    if "errors" in body:
        raise RuntimeError(body["errors"])
    return body["data"]


def bench(size: int, tmp: Path, url: str) -> dict:
    home = tmp / f"dagster_home_{size}"
    home.mkdir()
    os.environ["DAGSTER_HOME"] = str(home)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    root = tmp / f"drops_{size}"
    root.mkdir()
    keys = [f"rig{i % 40:02d}-{i:06d}" for i in range(size)]
    row: dict = {"partitions": size}
    for k in keys:
        (root / k).mkdir()
    catalog = Catalog(url)
    with catalog.connection() as conn:
        conn.execute("TRUNCATE drops CASCADE")
        conn.execute(
            "INSERT INTO drops (drop_key, source_uri) SELECT k, %s || '/' || k FROM unnest(%s::text[]) k",
            (str(root), keys),
        )
    instance = dg.DagsterInstance.get()
    row["add_partitions_s"], _ = _timed(
        lambda: [instance.add_dynamic_partitions("capture_drops", keys[i : i + 5000]) for i in range(0, size, 5000)]
    )

    def materialize_all():
        for k in keys:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="dedup_clusters", partition=k))

    row["record_materializations_s"], _ = _timed(materialize_all)
    instance.add_dynamic_partitions("selections", ["weekly"])
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="curated_subset", partition="weekly"))

    # the drop sensor: one tick over N known drops
    resources = build_resources(database_url=url, drop_root=str(root))
    watch = WatchSettings(roots=(str(root),))
    row["sensor_tick_s"], result = _timed(
        lambda: evaluate_drops(
            dg.build_sensor_context(instance=instance), watch, resources["image_store"], resources["database"]
        ),
        repeat=3,
    )
    assert result.run_requests == [], "nothing should be requested for known drops"

    # the automation: every condition of the graph (the daemon's work per tick)
    defs = build_definitions(database_url=url, drop_root=str(root))
    row["automation_first_tick_s"], first = _timed(lambda: dg.evaluate_automation_conditions(defs=defs, instance=instance))
    row["automation_next_tick_s"], _ = _timed(
        lambda: dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    )

    # the webserver's GraphQL for the asset pages
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": url, "CURATION_DROP_ROOT": str(root)}
    web = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-m", "curation_pipeline.definitions", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(base + "/server_info", timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("webserver did not start") from None
                time.sleep(1)
        _graphql(base, PARTITION_QUERIES["asset_catalog"])  # warm the code location
        for name, query in PARTITION_QUERIES.items():
            row[f"graphql_{name}_s"], data = _timed(lambda q=query: _graphql(base, q), repeat=3)
            if name == "partition_stats":
                stats = data["assetNodes"][0]["partitionStats"]
                assert stats["numPartitions"] == size and stats["numMaterialized"] == size, stats
    finally:
        web.terminate()
        web.wait(timeout=30)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="20000,50000")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="curation-partitions-") as tmp:
        tmp = Path(tmp)
        db = ThrowawayDatabase(tmp / "pg", Settings.from_env().database_url)
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                rows.append(bench(size, tmp, db.url))
                print(rows[-1], flush=True)
        finally:
            db.close()
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "partition_scale.json").write_text(
        json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
