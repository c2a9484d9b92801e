"""Embedding throughput against the hardware limits, and memory against drop size.

For each backend (the offline descriptor; open_clip ViT-B-32, random initialisation; the
`pretrained` backend, ImageNet EfficientNet-Lite0 with its real weights from the package registry)
and each drop size, in a fresh subprocess:
  (a) model alone: forward on already-preprocessed inputs, batch after batch (the compute limit);
  (b) loader alone: read + sha256 check + decode + preprocess with the same loader threads (the I/O limit);
  (c) end to end: the image_embeddings asset path (embed_drop into the cache, then publish the
      partition's rows) into PostgreSQL, on a cold cache;
then the ratio c / min(a, b) and the subprocess's peak RSS.

The drops are 640x480 JPEGs cut from the photographs bundled with scikit-image / scikit-learn
(random crops, flips and JPEG qualities), generated once and kept in --data-dir.

    .venv/bin/python benchmarks/embed_throughput.py                       # offline 1k + 10k, ViT-B-32 1k
    .venv/bin/python benchmarks/embed_throughput.py --backends offline --sizes 1000
    .venv/bin/python benchmarks/embed_throughput.py --only pretrained       # EfficientNet-Lite0 1k, batch 32
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


def make_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    """n distinct 640x480 JPEGs (deterministic); reused when already complete."""
    from curation_pipeline.demo_data import _sources

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".complete-{n}"
    if marker.exists():
        return folder
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for _, p in _sources()]
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = rng.randint(w // 3, w), rng.randint(h // 3, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = photo.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(80, 92))
        (folder / f"{i // 1000:03d}" / f"img_{i:06d}.jpg").parent.mkdir(exist_ok=True)
        (folder / f"{i // 1000:03d}" / f"img_{i:06d}.jpg").write_bytes(buf.getvalue())
    marker.write_text("ok")
    return folder


def _embedder(backend: str, device: str = "cpu"):
    from curation_pipeline.resources.embedders import OfflineEmbedder, OpenClipEmbedder

    if backend == "offline":
        return OfflineEmbedder()
    if backend == "vit-b-32":
        return OpenClipEmbedder("ViT-B-32", None, device=device)  # random init: timing only; fp16 autocast on CUDA
    if backend == "pretrained":
        from curation_pipeline.resources.embedders import LoadSpec, load_embedder

        # real ImageNet weights (efficientnet_lite0); fp32 on the CPU, fp16 autocast on CUDA
        return load_embedder("pretrained", LoadSpec(device=device))
    raise ValueError(backend)


def _server_cpu(server) -> float:
    """CPU seconds used so far by the embedded PostgreSQL's processes (its work shares our cores)."""
    if server is None:
        return 0.0
    import psutil

    try:
        root = psutil.Process(server.get_pid())
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            # exited backends (one per closed connection) are reaped by the postmaster: their time
            # shows up in its children_* fields
            total += t.user + t.system + (t.children_user + t.children_system if proc is root else 0.0)
        except psutil.Error:
            pass
    return total


def run_one(
    backend: str,
    data_dir: Path,
    n: int,
    batch_size: int,
    workers: int,
    model_images: int,
    loader: str = "threads",
    device: str = "cpu",
) -> dict:
    """Runs in its own process so peak RSS belongs to this configuration alone."""
    from curation_pipeline.core.decode import decode_image
    from curation_pipeline.core.pipeline import ordered_parallel_map
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.resources.image_store import LocalImageStore
    from curation_pipeline.settings import Settings
    from curation_pipeline.steps.embed import EmbedOptions, ImageLoader, embed_drop
    from curation_pipeline.steps.manifest import build_manifest

    embedder = _embedder(backend, device)
    options = EmbedOptions(batch_size=batch_size, workers=workers, loader=loader)
    files = sorted(p for p in data_dir.rglob("*.jpg"))[:n]
    if len(files) < n:
        raise SystemExit(f"dataset {data_dir} has {len(files)} images, need {n}")

    # (a) the model alone on preprocessed inputs
    sample = [
        embedder.preprocess(decode_image(f.read_bytes(), draft_size=embedder.decode_draft_size).image)
        for f in files[:batch_size]
    ]
    embedder.forward(sample)  # warm-up
    done, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while done < model_images:
        embedder.forward(sample)
        done += len(sample)
    model_ips = done / (time.perf_counter() - t0)
    model_cpu_ms = (time.process_time() - cpu0) / done * 1000

    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        tmp = Path(tmp)
        drop = tmp / "drop"
        drop.mkdir()
        for f in files:  # the drop: links to the shared dataset files
            os.link(f, drop / f.name)
        db = ThrowawayDatabase(tmp / "pg", Settings.from_env().database_url)
        url, server = db.url, db.server
        catalog = Catalog(url)
        key = f"bench-{backend}-{n}"
        catalog.register_drop(key, str(drop))
        build_manifest(catalog, LocalImageStore(), str(drop), key)

        # (b) the loader alone, same threads and window as the asset path
        load = ImageLoader(embedder.preprocessor, embedder.decode_draft_size)
        items = list(catalog.uncached_items(key, embedder.model_id))
        kind = options.loader
        t0, cpu0 = time.perf_counter(), time.process_time()
        ok = sum(
            1
            for _, (pre, err) in ordered_parallel_map(
                load, items, workers=workers, window=batch_size * 3 + workers, chunk=options.loader_chunk, executor=kind
            )
            if err is None
        )
        loader_ips = ok / (time.perf_counter() - t0)
        loader_cpu_ms = (time.process_time() - cpu0) / ok * 1000

        # (c) end to end into PostgreSQL, cold cache
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0, cpu0, db0 = time.perf_counter(), time.process_time(), _server_cpu(server)
        stats = embed_drop(catalog, embedder, key, options)
        t1 = time.perf_counter()
        cache_cpu_ms = (time.process_time() - cpu0) / max(1, stats["computed"]) * 1000
        db_cpu_ms = (_server_cpu(server) - db0) / max(1, stats["computed"]) * 1000
        rows = catalog.publish_embeddings(key, stats["model"])  # per-image rows + HNSW index maintenance
        e2e_s = time.perf_counter() - t0
        embed_s, publish_s = t1 - t0, time.perf_counter() - t1
        # (d) the same partition again: everything is served by the cache
        t0 = time.perf_counter()
        again = embed_drop(catalog, embedder, key, options)
        catalog.publish_embeddings(key, stats["model"])
        rerun_s = time.perf_counter() - t0
        db.close()
    e2e_ips = stats["computed"] / e2e_s
    cache_ips = stats["computed"] / embed_s
    return {
        "backend": backend,
        "model": stats["model"],
        "images": n,
        "batch_size": batch_size,
        "workers": workers,
        "loader": stats["loader"],
        "device": getattr(embedder, "device", "cpu"),
        "a_model_img_s": round(model_ips, 1),
        "b_loader_img_s": round(loader_ips, 1),
        "c_end_to_end_img_s": round(e2e_ips, 1),
        "ratio_c_over_min_ab": round(e2e_ips / min(model_ips, loader_ips), 3),
        "c1_streamed_to_cache_img_s": round(cache_ips, 1),
        "ratio_c1_over_min_ab": round(cache_ips / min(model_ips, loader_ips), 3),
        "publish_hnsw_rows_s": round(rows / publish_s, 1),
        # CPU time of this process per image in each phase (all threads): a + b is what one image
        # costs, so on `cores` cores no pipeline can beat cores / (a + b) when both halves are CPU work.
        "cpu_ms_a": round(model_cpu_ms, 3),
        "cpu_ms_b": round(loader_cpu_ms, 3),
        "cpu_ms_c1": round(cache_cpu_ms, 3),
        "cpu_ms_db_c1": round(db_cpu_ms, 3),
        "cpu_bound_img_s": round((os.cpu_count() or 1) * 1000 / (model_cpu_ms + loader_cpu_ms + db_cpu_ms), 1),
        "c1_over_cpu_bound": round(cache_ips / ((os.cpu_count() or 1) * 1000 / (model_cpu_ms + loader_cpu_ms + db_cpu_ms)), 3),
        "rows_published": rows,
        "rerun_seconds": round(rerun_s, 2),
        "rerun_computed": again["computed"],
        "peak_rss_mb_before_c": round(rss_before / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", default="offline,vit-b-32", help="offline, vit-b-32, pretrained (comma-separated)")
    p.add_argument("--only", help="run this backend alone (same as --backends NAME), e.g. --only pretrained")
    p.add_argument("--sizes", default="1000,10000", help="drop sizes for the offline backend")
    p.add_argument("--vit-sizes", default="1000", help="drop sizes for ViT-B-32 (~11 img/s on 2 CPU cores)")
    p.add_argument("--pretrained-sizes", default="1000", help="drop sizes for the pretrained backend (EfficientNet-Lite0)")
    p.add_argument("--pretrained-batch-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--loader", default="threads", choices=["threads", "processes"])
    p.add_argument("--device", default="cpu", help="for ViT-B-32: cpu, cuda, mps or auto")
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "curation-embed-bench"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        cfg = json.loads(args.worker)
        print(json.dumps(run_one(**{**cfg, "data_dir": Path(cfg["data_dir"])})))
        return

    sizes = {
        "offline": [int(s) for s in args.sizes.split(",")],
        "vit-b-32": [int(s) for s in args.vit_sizes.split(",")],
        "pretrained": [int(s) for s in args.pretrained_sizes.split(",")],
    }
    backends = [args.only] if args.only else args.backends.split(",")
    unknown = [b for b in backends if b not in sizes]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}: use {', '.join(sizes)}")
    data = make_dataset(Path(args.data_dir), max(max(sizes[b]) for b in backends))
    batch = {"offline": args.batch_size, "vit-b-32": 32, "pretrained": args.pretrained_batch_size}
    model_images = {"offline": 20_000, "vit-b-32": 640, "pretrained": 1_280}
    rows = []
    for backend in backends:
        for n in sizes[backend]:
            cfg = {
                "backend": backend,
                "data_dir": str(data),
                "n": n,
                "batch_size": batch[backend],
                "workers": args.workers,
                "loader": args.loader,
                "device": args.device,
                "model_images": model_images[backend],
            }
            out = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    cols = [
        "backend",
        "images",
        "loader",
        "a_model_img_s",
        "b_loader_img_s",
        "c1_streamed_to_cache_img_s",
        "ratio_c1_over_min_ab",
        "cpu_ms_a",
        "cpu_ms_b",
        "cpu_ms_db_c1",
        "cpu_bound_img_s",
        "c1_over_cpu_bound",
        "publish_hnsw_rows_s",
        "c_end_to_end_img_s",
        "ratio_c_over_min_ab",
        "peak_rss_mb",
        "rerun_seconds",
        "rerun_computed",
    ]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / "embed_throughput.json"
    # a partial run (--only pretrained) replaces its own rows and keeps the others'
    new = {(r["backend"], r["images"]) for r in rows}
    try:
        kept = [r for r in json.loads(path.read_text()).get("rows", []) if (r["backend"], r["images"]) not in new]
    except (OSError, ValueError):
        kept = []
    path.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
                "rows": kept + rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
