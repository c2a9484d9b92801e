"""How long a small drop takes from launch to done, the way the UI launches it.

Starts `curation ui` (dagster dev: webserver, daemon, code server) on a throwaway home and embedded
PostgreSQL, once per executor (the code location reads CURATION_EXECUTOR when it loads), and
launches `ingest_drop` for fresh 5-image drops with `curation ingest`. With the daemon running, the
CLI submits to the run queue and the daemon launches the run through the code server, exactly as
the UI's Materialize button does. Per run: queued -> started (queue and run-worker start) and
started -> done (the steps), from the run's own records, and the CLI's wall time. Prints a table;
JSON goes to benchmarks/results/run_launch.json.

    .venv/bin/python benchmarks/run_launch.py [--drops 3] [--executors in_process,multiprocess]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CURATION = str(Path(sys.executable).parent / "curation")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _five_image_drops(root: Path, count: int) -> list[Path]:
    """`count` drops of 5 distinct JPEGs each, cut from the demo's photographs."""
    from curation_pipeline.demo_data import build_demo_drops

    demo = build_demo_drops(root / "demo")
    photos = sorted(p for p in demo.drops["demo-0001"].rglob("*.jpg") if "broken" not in p.parts)
    drops = []
    for i in range(count):
        folder = root / "drops" / f"small-{i}"
        folder.mkdir(parents=True)
        for j, photo in enumerate(photos[i * 5 : i * 5 + 5]):
            shutil.copy(photo, folder / f"img_{j}.jpg")
        drops.append(folder)
    return drops


def _run_times(env: dict, partition: str) -> dict:
    code = (
        "import json, dagster as dg\n"
        "i = dg.DagsterInstance.get()\n"
        f"r = i.get_run_records(filters=dg.RunsFilter(tags={{'dagster/partition': {partition!r}}}), limit=1)[0]\n"
        "print(json.dumps([r.create_timestamp.timestamp(), r.start_time, r.end_time, r.dagster_run.status.value]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    created, started, ended, status = json.loads(out.strip().splitlines()[-1])
    return {
        "queued_to_started_s": round(started - created, 2),
        "started_to_done_s": round(ended - started, 2),
        "status": status,
    }


def bench_executor(executor: str, drops: list[Path], home: Path) -> list[dict]:
    port = _free_port()
    env = {
        **os.environ,
        "CURATION_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "CURATION_EXECUTOR": executor,
    }
    ui = subprocess.Popen(
        [CURATION, "ui", "--port", str(port), "--no-reports"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rows = []
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                if time.time() > deadline or ui.poll() is not None:
                    raise SystemExit("the UI did not start") from None
                time.sleep(1)
        time.sleep(5)  # the daemon's first heartbeat: the CLI then queues its runs
        for folder in drops:
            key = f"{executor.replace('_', '-')}-{folder.name}"
            t0 = time.perf_counter()
            proc = subprocess.run([CURATION, "ingest", str(folder), "--drop", key], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            queued = "queued" in proc.stderr.split("\n", 1)[0]
            rows.append(
                {"executor": executor, "drop": key, "via_queue": queued, "cli_wall_s": round(wall, 2), **_run_times(env, key)}
            )
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--drops", type=int, default=3)
    p.add_argument("--executors", default="in_process,multiprocess")
    args = p.parse_args()
    executors = [e for e in args.executors.split(",") if e]
    with tempfile.TemporaryDirectory(prefix="curation-launch-") as tmp:
        tmp = Path(tmp)
        drops = _five_image_drops(tmp, args.drops * len(executors))
        home = tmp / "home"
        rows = []
        for n, executor in enumerate(executors):
            rows += bench_executor(executor, drops[n * args.drops : (n + 1) * args.drops], home)
        subprocess.run([CURATION, "db", "stop"], env={**os.environ, "CURATION_HOME": str(home)}, capture_output=True)
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    summary = {}
    for executor in executors:
        mine = [r for r in rows if r["executor"] == executor]
        summary[executor] = {
            k: round(statistics.median(r[k] for r in mine), 2)
            for k in ("queued_to_started_s", "started_to_done_s", "cli_wall_s")
        }
        summary[executor]["launch_to_done_s"] = round(
            statistics.median(r["queued_to_started_s"] + r["started_to_done_s"] for r in mine), 2
        )
    print("\nmedian per executor (5-image drop):")
    for executor, s in summary.items():
        print(f"  {executor:13s} " + ", ".join(f"{k} {v}" for k, v in s.items()))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "run_launch.json").write_text(
        json.dumps(
            {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rows": rows, "median": summary},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
