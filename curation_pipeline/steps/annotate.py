"""Load per-image values (model predictions, uncertainty, labels, any metadata) from a CSV or
Parquet file into `image_annotations`, where selection scores, balance and filters find them."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from curation_pipeline.resources.catalog import Catalog

log = logging.getLogger(__name__)


def read_table(path: str | Path) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a .csv or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"annotations file {str(path)!r} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    raise ValueError(f"annotations file {str(path)!r}: use .csv, .tsv or .parquet")


def load_annotations(
    catalog: Catalog,
    path: str | Path,
    *,
    key_column: str = "uri",
    columns: list[str] | None = None,
    logger: logging.Logger = log,
) -> dict:
    """Each row names an image in `key_column` (its source URI, `drop/object_key`, or an object
    key unique in the corpus); every other column (or just `columns`) becomes an annotation of
    that name. Numbers are stored as numbers too. Rows naming no known image are counted, not
    fatal. Re-loading a file replaces the values it carries."""
    names, rows = read_table(path)
    if key_column not in names:
        raise ValueError(f"annotations file {str(path)!r} has no column {key_column!r} (columns: {names})")
    wanted = [c for c in (columns or names) if c != key_column]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ValueError(f"annotations file {str(path)!r} has no column(s) {missing}")
    refs = [str(r[key_column]) for r in rows if r.get(key_column) not in (None, "")]
    ids = catalog.image_ids_for_refs(refs)
    out = []
    for r in rows:
        image_id = ids.get(str(r.get(key_column)))
        if image_id is None:
            continue
        for c in wanted:
            value = r.get(c)
            if value is None or value == "":
                continue
            out.append((image_id, c, str(value), _as_number(value)))
    catalog.replace_annotations(out, source=str(path))
    stats = {
        "rows": len(rows),
        "matched_images": len({i for i, *_ in out}),
        "unmatched_rows": len(rows) - len([r for r in rows if str(r.get(key_column)) in ids]),
        "columns": wanted,
        "values": len(out),
    }
    logger.info("annotations from %s: %s", path, stats)
    return stats


def _as_number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
