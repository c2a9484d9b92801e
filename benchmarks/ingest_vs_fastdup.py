"""`curation ingest` against fastdup on the same 2,000 real-photo images, and a stage profile of the ingest.

Issue 18 point 5 ("ingest on every core"): `curation ingest` of a 2k-image drop with the default models
should take at most fastdup's wall time in the same run, or a profile should show what bounds it.

Data: 2,000 images of ~0.5-1 MP (800x600 to 1200x900, some portrait), ~90% JPEG and ~10% PNG, built from
the photographs bundled with scikit-image / scikit-learn (curation_pipeline.demo_data._sources): random
crops rescaled to the target size, alone or as 2- and 4-tile mosaics, random flips, brightness / contrast /
colour changes and a little sensor-like noise; ~10% are planted near-duplicates of an earlier image
(re-encode at another quality, a small crop, a brightness change, a downscale, a mirror, a PNG copy of a
JPEG). Generated once under --data-dir (not timed) and read once before timing, so every run finds the
files in the page cache.

Comparison (--reps, alternating which tool goes first): each run is a whole process, as a user runs it:
  (a) `curation ingest DROP --drop bench` with a fresh CURATION_HOME (so a fresh embedded PostgreSQL,
      started by the command itself and counted: initdb + server start + migrations), default models
      (descriptor offline:colour-layout-v2, semantic pretrained EfficientNet-Lite0) and default settings
      (DATABASE_URL and every CURATION_* variable removed from the environment); the server is stopped
      afterwards (`curation db stop`, not timed);
  (b) fastdup (benchmarks/.peers-venv) `fastdup.create(work_dir=..., input_dir=DROP).run(overwrite=True)`:
      its default run (its ONNX embedding model, nearest neighbours, components, image statistics).
For each: wall seconds; machine CPU seconds over the run window from /proc/stat (user + nice + system +
irq + softirq, all cores: PostgreSQL, the Dagster code server and run worker, loader threads all count,
and so does anyone else's work on the machine); the run's own CPU (the waited process tree's rusage, plus
the embedded PostgreSQL's postmaster and its backends, read before the server stops); busy cores = CPU /
wall; and the seconds during which fewer than 1.5 cores were busy (from /proc/stat sampled every 0.25 s).

Profile: the same drop through the plain-Python steps the ingest_drop job runs, in this process, against
a fresh embedded PostgreSQL, wired as curation_pipeline/defs does: build_manifest (as raw_image_manifest),
embed_drop for each role of project_models(...).ingest_roles() with the default EmbedderResources,
publish_embeddings per model (the pgvector IO manager), the embeddings checks, dedup_drop with the
default (verifying) thresholds, VerifierSettings() and the descriptor's mirror permutation
(dedup_clusters), and its checks. Per stage: wall, machine CPU, own CPU (this process + PostgreSQL) and
busy cores. Dagster launch overhead = median ingest wall - sum of the stages.

    flock /tmp/bench.lock .venv/bin/python benchmarks/ingest_vs_fastdup.py [--n 2000] [--reps 3]

Prints markdown tables; JSON goes to benchmarks/results/ingest_vs_fastdup.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
TICK = os.sysconf("SC_CLK_TCK")
SIZES = [(800, 600), (960, 720), (1024, 768), (1120, 840), (1200, 900), (600, 800), (768, 1024), (900, 1200)]

# ---- the drop ------------------------------------------------------------------------------------------


def _tile(photos: list[Image.Image], rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A random crop of a random photograph at `size`'s aspect, rescaled to it, maybe mirrored."""
    photo = rng.choice(photos)
    w, h = photo.size
    aspect = size[0] / size[1]
    frac = rng.uniform(0.35, 0.85)
    cw = min(w, int(round(frac * w)))
    ch = int(round(cw / aspect))
    if ch > h:
        ch = min(h, int(round(frac * h)))
        cw = int(round(ch * aspect))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
    return ImageOps.mirror(img) if rng.random() < 0.5 else img


def _compose(photos: list[Image.Image], rng: random.Random, np_rng: np.random.Generator) -> Image.Image:
    w, h = rng.choice(SIZES)
    layout = rng.random()
    if layout < 0.55:
        img = _tile(photos, rng, (w, h))
    elif layout < 0.8:  # two tiles side by side
        img = Image.new("RGB", (w, h))
        img.paste(_tile(photos, rng, (w // 2, h)), (0, 0))
        img.paste(_tile(photos, rng, (w - w // 2, h)), (w // 2, 0))
    else:  # 2 x 2
        img = Image.new("RGB", (w, h))
        for cx, cy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            tw, th = (w // 2 if cx == 0 else w - w // 2), (h // 2 if cy == 0 else h - h // 2)
            img.paste(_tile(photos, rng, (tw, th)), (cx * (w // 2), cy * (h // 2)))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    # a little sensor-like noise: the rescaled crops are smoother than camera output
    arr = np.asarray(img, dtype=np.int16) + np_rng.normal(0, rng.uniform(1.5, 4.0), (h, w, 1)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _near_duplicate(base: Image.Image, rng: random.Random) -> tuple[Image.Image, str, int]:
    """(image, edit, jpeg quality) of one planted near-duplicate of `base`."""
    w, h = base.size
    edit = rng.choice(["reencode", "crop", "brightness", "downscale", "mirror", "png"])
    if edit == "crop":
        f = rng.uniform(0.03, 0.08)
        dx, dy = int(w * f * rng.random()), int(h * f * rng.random())
        img = base.crop((dx, dy, dx + int(w * (1 - f)), dy + int(h * (1 - f)))).resize((w, h), Image.Resampling.BICUBIC)
    elif edit == "brightness":
        img = ImageEnhance.Brightness(base).enhance(rng.choice([0.85, 0.9, 1.1, 1.15]))
    elif edit == "downscale":
        img = base.resize((int(w * 0.8), int(h * 0.8)), Image.Resampling.BILINEAR)
    elif edit == "mirror":
        img = ImageOps.mirror(base)
    else:
        img = base
    return img, edit, rng.randint(60, 78) if edit == "reencode" else rng.randint(82, 94)


def make_drop(folder: Path, n: int, seed: int = 0) -> dict:
    """n images (deterministic), reused when already complete; returns the generation summary."""
    marker = folder / f".complete-{n}-v1.json"
    if marker.exists():
        return json.loads(marker.read_text())
    from curation_pipeline.demo_data import _sources

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    photos = []
    for _, path in _sources():
        with Image.open(path) as im:
            photos.append(im.convert("RGB"))
    recent: deque[Image.Image] = deque(maxlen=150)
    edits: dict[str, int] = {}
    formats = {"JPEG": 0, "PNG": 0}
    pixels = []
    started = time.perf_counter()
    for i in range(n):
        if i >= 40 and rng.random() < 0.10:
            img, edit, quality = _near_duplicate(rng.choice(recent), rng)
            edits[edit] = edits.get(edit, 0) + 1
            as_png = edit == "png"
        else:
            img = _compose(photos, rng, np_rng)
            recent.append(img)
            quality, as_png = rng.randint(82, 94), rng.random() < 0.09
        buf = io.BytesIO()
        if as_png:
            img.save(buf, format="PNG", compress_level=6)
            name, formats["PNG"] = f"img_{i:05d}.png", formats["PNG"] + 1
        else:
            img.save(buf, format="JPEG", quality=quality)
            name, formats["JPEG"] = f"img_{i:05d}.jpg", formats["JPEG"] + 1
        (folder / name).write_bytes(buf.getvalue())
        pixels.append(img.size[0] * img.size[1])
    summary = {
        "images": n,
        "formats": formats,
        "planted_near_duplicates": edits,
        "megapixels_median": round(statistics.median(pixels) / 1e6, 3),
        "megapixels_range": [round(min(pixels) / 1e6, 3), round(max(pixels) / 1e6, 3)],
        "bytes_total": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        "generation_seconds": round(time.perf_counter() - started, 1),
        "seed": seed,
    }
    marker.write_text(json.dumps(summary))
    return summary


def warm_page_cache(folder: Path) -> None:
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            p.read_bytes()


# ---- CPU accounting -------------------------------------------------------------------------------------


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far: user + nice + system + irq + softirq, all cores."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / TICK


def _stat_of(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime + cutime + cstime seconds) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), sum(int(v) for v in rest[11:15]) / TICK


def tree_cpu(root: int | None) -> float:
    """CPU seconds of `root`, its reaped children and its live descendants (a postmaster: its
    exited backends are in its cutime/cstime, the running ones are added)."""
    if root is None:
        return 0.0
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat_of(int(entry))) is not None:
            procs[int(entry)] = st
    if root not in procs:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += procs[pid][1]
        todo.extend(children.get(pid, []))
    return total


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Sampler:
    """Samples machine busy cores every `period` seconds on a thread; `low_seconds` is the time spent
    under `threshold` busy cores."""

    def __init__(self, period: float = 0.25) -> None:
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last_t, last_c = time.perf_counter(), machine_cpu()
        while not self._stop.wait(self.period):
            t, c = time.perf_counter(), machine_cpu()
            self.samples.append((t - last_t, (c - last_c) / max(t - last_t, 1e-9)))
            last_t, last_c = t, c

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def low_seconds(self, threshold: float = 1.5) -> float:
        return round(sum(dt for dt, busy in self.samples if busy < threshold), 1)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---- whole-process runs ---------------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphaned descendants (the daemonised PostgreSQL, a code server its parent never waited for) are
    re-parented to this process instead of init, so their CPU reaches RUSAGE_CHILDREN once reaped."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans(timeout: float = 10.0) -> None:
    """Wait for every child still around (orphans re-parented here), so their CPU is counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed_process(cmd: list[str], env: dict, log: Path, cwd: Path) -> dict:
    with log.open("w") as out, Sampler() as sampler:
        m0, t0, epoch = machine_cpu(), time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall, machine = time.perf_counter() - t0, machine_cpu() - m0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}; log: {log}\n{log.read_text()[-3000:]}")
    return {
        "wall_s": wall,
        "machine_cpu_s": machine,
        "process_cpu_s": usage.ru_utime + usage.ru_stime,  # the command and the descendants it waited for
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "seconds_under_1.5_cores": sampler.low_seconds(),
        "started_epoch": epoch,
    }


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_") and k not in ("DATABASE_URL", "DAGSTER_HOME")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_events(dagster_home: Path, started_epoch: float) -> dict:
    """Seconds from the command's start to each event of the run it launched (from its event log):
    where the launch overhead goes and how long each step of the real job took."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        run = instance.get_runs(limit=1)[0]
        out: dict = {
            "run_created": round(instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp() - started_epoch, 2)
        }
        steps: dict = {}
        for entry in instance.all_logs(run.run_id):
            if entry.dagster_event is None:
                continue
            kind, at = entry.dagster_event.event_type.name, round(entry.timestamp - started_epoch, 2)
            if kind in ("RUN_START", "RUN_SUCCESS", "RUN_FAILURE"):
                out[kind.lower()] = at
            elif kind in ("STEP_START", "STEP_SUCCESS", "STEP_SKIPPED", "STEP_FAILURE"):
                steps.setdefault(entry.step_key, {})[kind.lower()] = at
        out["steps"] = steps
        return out
    finally:
        instance.dispose()


def run_ours(drop: Path, work: Path, rep: int) -> dict:
    home = work / f"home-{rep}"
    shutil.rmtree(home, ignore_errors=True)
    env = {**clean_env(), "CURATION_HOME": str(home)}
    c0 = children_cpu()
    try:
        cmd = [str(VENV_BIN / "curation"), "ingest", str(drop), "--drop", "bench"]
        r = _timed_process(cmd, env, work / f"ours-{rep}.log", REPO)
        r["postgres_cpu_s"] = tree_cpu(postmaster_pid(home / "pg"))  # the server outlives the command
        try:
            r["events"] = run_events(home / "dagster_home", r["started_epoch"])
        except Exception as exc:  # noqa: BLE001 - timings only
            r["events"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        stop = subprocess.Popen(
            [str(VENV_BIN / "curation"), "db", "stop"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _, _, stop_usage = os.wait4(stop.pid, 0)
        reap_orphans()  # the stopped postmaster (re-parented here), and anything else the command left
        shutil.rmtree(home, ignore_errors=True)
    # everything the command started, the PostgreSQL server included (not the `db stop` command itself)
    r["own_cpu_s"] = children_cpu() - c0 - (stop_usage.ru_utime + stop_usage.ru_stime)
    return r


FASTDUP_SCRIPT = """
import sys
import fastdup
fd = fastdup.create(work_dir=sys.argv[2], input_dir=sys.argv[1])
fd.run(overwrite=True)
"""


def run_fastdup(drop: Path, work: Path, rep: int) -> dict:
    fd_work = work / f"fastdup-{rep}"
    shutil.rmtree(fd_work, ignore_errors=True)
    env = {**clean_env(), "SENTRY_OPT_OUT": "True"}  # no telemetry attempts (no network here)
    cmd = [str(PEERS_PYTHON), "-c", FASTDUP_SCRIPT, str(drop), str(fd_work)]
    c0 = children_cpu()
    r = _timed_process(cmd, env, work / f"fastdup-{rep}.log", REPO)
    reap_orphans(1.0)
    r["own_cpu_s"] = children_cpu() - c0
    sim = next(iter(fd_work.rglob("similarity.csv")), None)
    if sim is not None:
        with sim.open() as f:
            rows = list(csv.DictReader(f))
        r["similarity_rows"] = len(rows)
        r["pairs_at_0.96"] = sum(1 for row in rows if float(row.get("distance", 0)) >= 0.96) // 2
    shutil.rmtree(fd_work, ignore_errors=True)
    return r


# ---- stage profile --------------------------------------------------------------------------------------


class StageTimer:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata, self.rows = pgdata, []

    def run(self, name: str, fn, note: str = ""):
        with Sampler() as sampler:
            pg0 = tree_cpu(postmaster_pid(self.pgdata))
            m0, s0, t0 = machine_cpu(), self_cpu() + children_cpu(), time.perf_counter()
            result = fn()
            wall, machine, own = time.perf_counter() - t0, machine_cpu() - m0, self_cpu() + children_cpu() - s0
            pg = tree_cpu(postmaster_pid(self.pgdata)) - pg0
        self.rows.append(
            {
                "stage": name,
                "wall_s": wall,
                "machine_cpu_s": machine,
                "process_cpu_s": own,
                "postgres_cpu_s": pg,
                "busy_cores": machine / max(wall, 1e-9),
                "own_busy_cores": (own + pg) / max(wall, 1e-9),
                "seconds_under_1.5_cores": sampler.low_seconds(),
                "note": note,
            }
        )
        return result


def profile(drop: Path, work: Path) -> dict:
    home = work / "profile-home"
    shutil.rmtree(home, ignore_errors=True)
    pgdata = home / "pg"
    timer = StageTimer(pgdata)
    detail: dict = {}
    try:
        from curation_pipeline.resources.catalog import Catalog

        def start_db():
            from curation_pipeline.resources.database import resolve_database_url

            catalog = Catalog(resolve_database_url(None, pgdata))
            catalog.register_drop("bench", str(drop))  # first connection: migrations
            return catalog

        catalog = timer.run("PostgreSQL start (initdb, server, migrations)", start_db)

        from curation_pipeline.definitions import build_resources
        from curation_pipeline.defs.resources import project_models
        from curation_pipeline.settings import Settings

        resources = build_resources(Settings.from_env(clean_env()))
        image_store = resources["image_store"]
        models = timer.run(
            "load models (torch, timm weights)",
            lambda: project_models(resources["embedder"], resources["descriptor"]).ingest_roles(),
        )

        from curation_pipeline.resources.catalog import ShrinkGuard
        from curation_pipeline.steps.manifest import build_manifest

        location = image_store.location_for("bench", str(drop))
        detail["manifest"] = timer.run(
            "manifest (read, decode, sha256, pHash, quality)",
            lambda: build_manifest(
                catalog,
                image_store.store(location),
                location,
                "bench",
                control_objects=frozenset({"_SUCCESS", image_store.drop_marker}),
                source_uri=location,
                shrink=ShrinkGuard(),
            ),
        )

        from curation_pipeline.steps.embed import embed_drop, model_id_for

        stores = image_store.stores()
        ids = {}
        for role, (model, options) in models.items():
            ids[role] = model_id_for(model, options)
            st = timer.run(
                f"embed {role} ({ids[role].split('/')[0]})",
                lambda model=model, options=options: embed_drop(catalog, model, "bench", options, stores=stores),
            )
            detail[f"embed_{role}"] = st
            timer.rows[-1]["note"] = (
                f"model {st['model_seconds']:.1f} s of {st['seconds']:.1f} s, {st['loader_workers']} loaders"
            )
        model_ids = sorted(set(ids.values()))
        timer.run("publish embeddings (IO manager)", lambda: [catalog.publish_embeddings("bench", m) for m in model_ids])
        timer.run("embedding checks", lambda: [catalog.embedding_stats("bench", m) for m in model_ids])

        from curation_pipeline.core.verify import VerifierSettings
        from curation_pipeline.resources.embedders import mirror_permutation_for
        from curation_pipeline.steps.dedup import dedup_drop, default_thresholds

        descriptor = ids["descriptor"]
        embeddings = timer.run("load descriptor vectors (IO manager)", lambda: catalog.load_embeddings(["bench"], descriptor))
        assert catalog.dedup_calibration(descriptor) is None  # fresh database: the default thresholds, as dedup_clusters
        thresholds = default_thresholds(descriptor, verify=True)
        d = timer.run(
            "dedup (candidates + pixel verification)",
            lambda: dedup_drop(
                catalog,
                "bench",
                embeddings,
                thresholds,
                neighbours=16,
                bulk_from=50_000,
                verifier=VerifierSettings(),
                mirror_perm=mirror_permutation_for(descriptor),
                stores=stores,
            ),
        )
        detail["dedup"] = d
        timer.rows[-1]["note"] = (
            f"{d['duplicates']} duplicates; {d.get('pairs_verified', 0)} pairs verified in {d.get('verify_seconds', 0):.1f} s"
        )

        from curation_pipeline.steps.previews import duplicate_groups_markdown

        timer.run(
            "dedup checks + metadata",
            lambda: (
                catalog.dedup_violations("bench", descriptor, thresholds.min_cosine, thresholds.max_hamming),
                catalog.leaks("bench"),
                duplicate_groups_markdown(catalog, "bench", stores),
            ),
        )
    finally:
        from curation_pipeline.resources.database import close_pools, stop_embedded_server

        close_pools()
        stop_embedded_server(pgdata)
        shutil.rmtree(home, ignore_errors=True)
    return {"stages": timer.rows, "detail": detail}


# ---- report ---------------------------------------------------------------------------------------------


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for _, k in cols) + " |" for r in rows]
    return "\n".join(lines)


def _timeline(run: dict) -> list[dict]:
    ev = run["events"]
    rows = [
        {"phase": "CLI start, code server, launch (-> run created)", "from_s": 0.0, "to_s": ev.get("run_created")},
        {"phase": "run worker start (-> RUN_START)", "from_s": ev.get("run_created"), "to_s": ev.get("run_start")},
    ]
    for step, t in sorted(ev["steps"].items(), key=lambda kv: kv[1].get("step_start", 1e9)):
        end = t.get("step_success") or t.get("step_failure") or t.get("step_skipped")
        rows.append({"phase": f"step {step}", "from_s": t.get("step_start", end), "to_s": end})
    rows.append({"phase": "run end -> process exit", "from_s": ev.get("run_success"), "to_s": round(run["wall_s"], 2)})
    for row in rows:
        ok = isinstance(row["from_s"], float) and isinstance(row["to_s"], float)
        row["seconds"] = round(row["to_s"] - row["from_s"], 2) if ok else None
    return rows


def _median_row(tool: str, runs: list[dict]) -> dict:
    med = {
        k: statistics.median(r[k] for r in runs) for k in ("wall_s", "machine_cpu_s", "own_cpu_s", "seconds_under_1.5_cores")
    }
    return {
        "tool": tool,
        **med,
        "busy_cores": med["machine_cpu_s"] / med["wall_s"],
        "own_busy_cores": med["own_cpu_s"] / med["wall_s"],
        "walls": ", ".join(f"{r['wall_s']:.1f}" for r in runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/ingest-vs-fastdup"))
    p.add_argument("--skip-compare", action="store_true")
    p.add_argument("--skip-profile", action="store_true")
    args = p.parse_args()

    drop = args.data_dir / f"drop-{args.n}"
    data = make_drop(drop, args.n)
    print(f"drop: {drop} {json.dumps(data)}", flush=True)
    warm_page_cache(drop)
    become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="ingest-vs-fastdup-"))
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": load_average()},
        "data": {"folder": str(drop), **data},
    }
    print(f"load average before: {load_average()}", flush=True)
    runs: dict[str, list[dict]] = {"curation ingest": [], "fastdup": []}
    if not args.skip_compare:
        for rep in range(args.reps):
            order = ["curation ingest", "fastdup"] if rep % 2 == 0 else ["fastdup", "curation ingest"]
            for tool in order:
                r = run_ours(drop, work, rep) if tool == "curation ingest" else run_fastdup(drop, work, rep)
                r["load_after"] = load_average()
                runs[tool].append(r)
                shown = {
                    k: round(v, 2) if isinstance(v, float) else v for k, v in r.items() if k not in ("events", "started_epoch")
                }
                print(f"rep {rep} {tool}: {json.dumps(shown)}")
                sys.stdout.flush()
        summary = [_median_row(tool, rs) for tool, rs in runs.items()]
        ratio = summary[0]["wall_s"] / summary[1]["wall_s"]
        result["runs"], result["summary"], result["ratio_wall_ours_over_fastdup"] = runs, summary, ratio
        print(f"\n### Whole process, median of {args.reps} ({args.n} images, {os.cpu_count()} cores)\n")
        print(
            _table(
                summary,
                [
                    ("tool", "tool"),
                    ("wall s", "wall_s"),
                    ("machine CPU s", "machine_cpu_s"),
                    ("busy cores", "busy_cores"),
                    ("own CPU s", "own_cpu_s"),
                    ("own busy cores", "own_busy_cores"),
                    ("s under 1.5 cores", "seconds_under_1.5_cores"),
                    ("walls", "walls"),
                ],
            )
        )
        print(f"\nratio ours / fastdup wall: {ratio:.2f}x")
        ours_runs = sorted(runs["curation ingest"], key=lambda r: r["wall_s"])
        median_run = ours_runs[len(ours_runs) // 2]
        if "steps" in median_run.get("events", {}):
            result["median_ingest_timeline"] = timeline = _timeline(median_run)
            print("\n### Inside the median `curation ingest` run (its Dagster event log; seconds from the command's start)\n")
            print(_table(timeline, [("phase", "phase"), ("from s", "from_s"), ("to s", "to_s"), ("seconds", "seconds")]))
    if not args.skip_profile:
        prof = profile(drop, work)
        stages = prof["stages"]
        total = {k: sum(s[k] for s in stages) for k in ("wall_s", "machine_cpu_s", "process_cpu_s", "postgres_cpu_s")}
        total.update(
            stage="sum of stages",
            busy_cores=total["machine_cpu_s"] / total["wall_s"],
            own_busy_cores=(total["process_cpu_s"] + total["postgres_cpu_s"]) / total["wall_s"],
            **{"seconds_under_1.5_cores": sum(s["seconds_under_1.5_cores"] for s in stages)},
        )
        rows = stages + [total]
        if runs["curation ingest"]:
            ours = statistics.median(r["wall_s"] for r in runs["curation ingest"])
            own = statistics.median(r["own_cpu_s"] for r in runs["curation ingest"])
            prof["dagster_overhead_s"] = ours - total["wall_s"]
            prof["dagster_overhead_cpu_s"] = own - total["process_cpu_s"] - total["postgres_cpu_s"]
            rows.append(
                {
                    "stage": "Dagster launch + run overhead (ingest median - sum)",
                    "wall_s": prof["dagster_overhead_s"],
                    "note": f"own CPU {prof['dagster_overhead_cpu_s']:.1f} s (ingest own CPU median - stages' own CPU)",
                }
            )
        prof["total"] = total
        result["profile"] = prof
        print(f"\n### Stage profile of the ingest (in process, {os.cpu_count()} cores)\n")
        print(
            _table(
                rows,
                [
                    ("stage", "stage"),
                    ("wall s", "wall_s"),
                    ("machine CPU s", "machine_cpu_s"),
                    ("process CPU s (+ waited children)", "process_cpu_s"),
                    ("PostgreSQL CPU s", "postgres_cpu_s"),
                    ("busy cores", "busy_cores"),
                    ("own busy cores", "own_busy_cores"),
                    ("s under 1.5 cores", "seconds_under_1.5_cores"),
                    ("note", "note"),
                ],
            )
        )
    result["machine"]["load_after"] = load_average()
    print(f"\nload average after: {load_average()}")
    logs = args.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    for log in work.glob("*.log"):
        shutil.copy(log, logs / log.name)
    shutil.rmtree(work, ignore_errors=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest_vs_fastdup.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
