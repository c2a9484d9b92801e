"""Label import speed and memory (issue 17): a COCO file of 100,000 boxes on 10,000 images.

The drop's manifest rows are written directly (no image files: the import reads only the manifest's
keys and sizes), then the real `import_labels` step parses, matches every image, checks every box
against its image's size and stores the set with COPY, in a throwaway PostgreSQL. Peak memory is
the process's resident high-water mark, measured in a fresh child process per run.

    .venv/bin/python benchmarks/label_import.py            # ~1 min on 2 cores

Writes benchmarks/results/label_import.json and prints a markdown table.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def write_coco(path: Path, images: int, boxes: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    imgs = [{"id": i + 1, "file_name": f"frames/{i:06d}.jpg", "width": 1280, "height": 720} for i in range(images)]
    anns = []
    for n in range(boxes):
        w, h = float(rng.integers(8, 300)), float(rng.integers(8, 300))
        x, y = float(rng.integers(0, 1280 - int(w))), float(rng.integers(0, 720 - int(h)))
        anns.append(
            {
                "id": n + 1,
                "image_id": int(rng.integers(1, images + 1)),
                "category_id": int(rng.integers(1, 81)),
                "bbox": [x, y, w, h],
            }
        )
    cats = [{"id": c, "name": f"class_{c:02d}"} for c in range(1, 81)]
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))


def child(url: str, coco: str, images: int) -> dict:
    from curation_pipeline.core.manifest import ManifestRecord
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.steps.labels import import_labels

    catalog = Catalog(url)
    catalog.register_drop("frames", None)
    with catalog.manifest_writer("frames") as writer:
        for i in range(images):
            key = f"frames/{i:06d}.jpg"
            rec = ManifestRecord(object_key=key, bytes=1000, sha256=f"s{i}", status="ok", width=1280, height=720)
            writer.add(i + 1, f"/data/frames/{key}", rec, None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    stats = import_labels(catalog, coco, drop_key="frames")
    seconds = time.perf_counter() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "boxes": stats["boxes"],
        "images_annotated": stats["images_annotated"],
        "seconds": round(seconds, 2),
        "boxes_per_second": round(stats["boxes"] / seconds),
        "peak_rss_mb": round(rss_after / 1024, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--boxes", type=int, default=100_000)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.settings import Settings

    with tempfile.TemporaryDirectory(prefix="label-import-") as tmp:
        coco = Path(tmp) / "coco.json"
        write_coco(coco, args.images, args.boxes)
        size_mb = coco.stat().st_size / 1e6
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--child", db.url, str(coco), str(args.images)],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            db.close()
    result = {**json.loads(out.stdout.strip().splitlines()[-1]), "file_mb": round(size_mb, 1), "images": args.images}
    dest = HERE / "results" / "label_import.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print("| boxes | images | file | seconds | boxes/s | peak RSS | RSS growth during import |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {result['boxes']:,} | {result['images']:,} | {result['file_mb']} MB | {result['seconds']} | "
        f"{result['boxes_per_second']:,} | {result['peak_rss_mb']} MB | {result['rss_growth_mb']} MB |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
