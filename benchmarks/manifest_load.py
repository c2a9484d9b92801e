"""A 200k-image manifest through the real ManifestWriter (metadata only, generated), with the
database, table and index sizes it leaves, and a re-run (same objects: upsert, no growth).

    .venv/bin/python benchmarks/manifest_load.py --rows 200000 --drops 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--drops", type=int, default=10)
    args = p.parse_args()
    from curation_pipeline.core.ids import image_id_for
    from curation_pipeline.core.manifest import ManifestRecord
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.database import ThrowawayDatabase
    from curation_pipeline.settings import Settings

    rng = np.random.default_rng(0)
    per_drop = args.rows // args.drops
    out: dict = {"rows": per_drop * args.drops, "drops": args.drops}
    with tempfile.TemporaryDirectory(prefix="manifest-load-") as tmp:
        db = ThrowawayDatabase(Path(tmp) / "pg", Settings.from_env().database_url)
        catalog = Catalog(db.url)

        def load(pass_name: str) -> None:
            t0 = time.perf_counter()
            for d in range(args.drops):
                key = f"load-{d:03d}"
                catalog.register_drop(key, f"s3://bench/drops/{key}/")
                with catalog.manifest_writer(key) as writer:
                    for i in range(per_drop):
                        obj = f"cam{i % 8}/frame_{i:07d}.jpg"
                        h = int(rng.integers(-(2**63), 2**63 - 1))
                        writer.add(
                            image_id_for(key, obj),
                            f"s3://bench/drops/{key}/{obj}",
                            ManifestRecord(
                                object_key=obj,
                                bytes=int(rng.integers(50_000, 900_000)),
                                sha256=f"{d:04d}{i:060d}",
                                status="ok",
                                format="JPEG",
                                width=1920,
                                height=1080,
                                mode="RGB",
                                camera_model=f"cam{i % 8}",
                                phash=h,
                                phash_mirror=h ^ 0x0F0F,
                                blur_variance=float(rng.random() * 900),
                                brightness=float(rng.random()),
                                contrast=0.2,
                                entropy=7.1,
                                aspect_ratio=16 / 9,
                            ),
                            None,
                        )
            seconds = time.perf_counter() - t0
            out[f"{pass_name}_s"] = round(seconds, 1)
            out[f"{pass_name}_rows_per_s"] = round(out["rows"] / seconds)

        load("first_load")
        with catalog.connection() as conn:
            conn.execute("VACUUM ANALYZE images")
            sizes = conn.execute(
                "SELECT pg_database_size(current_database()), pg_table_size('images'), pg_indexes_size('images'),"
                " (SELECT count(*) FROM images)"
            ).fetchone()
        out.update(
            database_mb=round(sizes[0] / 2**20, 1),
            images_table_mb=round(sizes[1] / 2**20, 1),
            images_indexes_mb=round(sizes[2] / 2**20, 1),
            images_rows=sizes[3],
            bytes_per_row_with_indexes=round((sizes[1] + sizes[2]) / sizes[3]),
        )
        load("rerun")  # the same objects again: upserts, nothing added
        with catalog.connection() as conn:
            out["rows_after_rerun"] = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        db.close()
    print("| " + " | ".join(out) + " |")
    print("|" + "---|" * len(out))
    print("| " + " | ".join(str(v) for v in out.values()) + " |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "manifest_load.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
