"""Metadata columns and predicates for selection and retrieval, compiled to SQL safely.

A column is either one of the image manifest's columns below (identifiers from code) or the name
of a user annotation (a CSV/Parquet column loaded into `image_annotations`). Values are always
bound parameters; column names never reach SQL text unless they are in IMAGE_COLUMNS, and
annotation names travel as parameters too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from psycopg import sql

from curation_pipeline.core.quality import QUALITY_SIGNALS, quality_flag

# column -> SQL expression over images alias `i`
IMAGE_COLUMNS: dict[str, str] = {
    "drop_key": "i.drop_key",
    "object_key": "i.object_key",
    "format": "i.format",
    "camera_make": "i.camera_make",
    "camera_model": "i.camera_model",
    "width": "i.width",
    "height": "i.height",
    "min_side": "least(i.width, i.height)",
    "bytes": "i.bytes",
    "blur_variance": "i.blur_variance",
    "brightness": "i.brightness",
    "contrast": "i.contrast",
    "entropy": "i.entropy",
    "aspect_ratio": "i.aspect_ratio",
    "exif_datetime": "i.exif_datetime",
    "time_of_day": (
        "CASE WHEN i.exif_datetime IS NULL THEN NULL"
        " WHEN extract(hour FROM i.exif_datetime) < 6 THEN 'night'"
        " WHEN extract(hour FROM i.exif_datetime) < 12 THEN 'morning'"
        " WHEN extract(hour FROM i.exif_datetime) < 18 THEN 'afternoon' ELSE 'evening' END"
    ),
}
NUMERIC_COLUMNS = {"width", "height", "min_side", "bytes", "blur_variance", "brightness", "contrast", "entropy", "aspect_ratio"}
OPERATORS = {"=", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null"}


@dataclass(frozen=True)
class Predicate:
    column: str
    op: str
    value: Any = None

    @classmethod
    def parse(cls, text: str) -> "Predicate":
        """`camera_model=X100`, `brightness>=0.2`, `label in car,truck`, `label is null`."""
        t = text.strip()
        for op in ("is not null", "is null"):
            if t.lower().endswith(" " + op):
                return cls(t[: -len(op) - 1].strip(), op)
        for op in (" not in ", " in "):
            if op in t:
                col, _, rest = t.partition(op)
                return cls(col.strip(), op.strip(), [v.strip() for v in rest.split(",") if v.strip()])
        for op in ("!=", "<=", ">=", "=", "<", ">"):
            if op in t:
                col, _, rest = t.partition(op)
                return cls(col.strip(), op, rest.strip())
        raise ValueError(f"cannot read filter {text!r}: write column OP value, e.g. 'brightness>=0.2' or 'label in car,truck'")


def check_columns(columns: Sequence[str], annotation_names: Sequence[str], what: str) -> None:
    """Every column is a manifest column or a loaded annotation; otherwise a ValueError that names
    the column and lists what exists (instead of a filter that silently matches nothing)."""
    for column in columns:
        if column not in IMAGE_COLUMNS and column not in annotation_names:
            raise ValueError(
                f"{what}: unknown column {column!r}: use a manifest column ({', '.join(IMAGE_COLUMNS)}) or an "
                f"annotation loaded with `curation annotate` ({', '.join(annotation_names) or 'none loaded yet'})"
            )


def check_annotations(names: Sequence[str], annotation_names: Sequence[str], what: str) -> None:
    for name in names:
        if name not in annotation_names:
            raise ValueError(
                f"{what}: no annotation named {name!r}: load a CSV/Parquet file with that column "
                f"first (curation annotate FILE); loaded: {', '.join(annotation_names) or 'none'}"
            )


def column_expression(
    column: str, joins: dict[str, tuple[str, sql.Composable]], params: list, *, prefix: str = "a"
) -> tuple[sql.Composable, bool]:
    """(SQL expression, is_numeric) for `column`. Annotation columns add a LEFT JOIN to `joins`
    (alias -> (annotation name, join clause); the name is a bound parameter appended to `params`
    in join order). Aliases are `prefix` + a counter, so two join sets with different prefixes
    can share one query."""
    if column in IMAGE_COLUMNS:
        return sql.SQL(IMAGE_COLUMNS[column]), column in NUMERIC_COLUMNS
    if not column or len(column) > 200:
        raise ValueError(f"unknown column {column!r}")
    alias = f"{prefix}{len(joins)}"
    if column not in [k for k, _ in joins.values()]:
        joins[alias] = (
            column,
            sql.SQL("LEFT JOIN image_annotations {a} ON {a}.image_id = i.image_id AND {a}.name = %s").format(
                a=sql.Identifier(alias)
            ),
        )
        params.append(column)
    else:
        alias = next(a for a, (k, _) in joins.items() if k == column)
    return sql.SQL("coalesce({a}.value_num::text, {a}.value_text)").format(a=sql.Identifier(alias)), False


def compile_filters(
    predicates: Sequence[Predicate], exclude_flags: Sequence[str]
) -> tuple[sql.Composable, sql.Composable, list, list]:
    """(joins SQL, where SQL starting with ' AND ...' or empty, join params, where params)."""
    joins: dict[str, tuple[str, sql.Composable]] = {}
    join_params: list = []
    where: list[sql.Composable] = []
    params: list = []
    for p in predicates:
        op = p.op.lower()
        if op not in OPERATORS:
            raise ValueError(f"filter on {p.column!r}: unknown operator {p.op!r} (use one of {sorted(OPERATORS)})")
        expr, numeric = column_expression(p.column, joins, join_params)
        if p.column not in IMAGE_COLUMNS and op in ("<", "<=", ">", ">="):
            alias = next(a for a, (k, _) in joins.items() if k == p.column)
            expr, numeric = sql.SQL("{a}.value_num").format(a=sql.Identifier(alias)), True
        if op in ("is null", "is not null"):
            where.append(sql.SQL("{e} IS NULL" if op == "is null" else "{e} IS NOT NULL").format(e=expr))
            continue
        if op in ("in", "not in"):
            values = p.value if isinstance(p.value, (list, tuple)) else [p.value]
            cast = [_as_number(v, p) for v in values] if numeric else [str(v) for v in values]
            tmpl = "{e} = ANY(%s)" if op == "in" else "NOT ({e} = ANY(%s))"
            where.append(sql.SQL(tmpl).format(e=expr if numeric else sql.SQL("{}::text").format(expr)))
            params.append(cast)
            continue
        value = _as_number(p.value, p) if numeric else str(p.value)
        where.append(sql.SQL("{e} " + op + " %s").format(e=expr if numeric else sql.SQL("{}::text").format(expr)))
        params.append(value)
    for flag in exclude_flags:
        condition, flag_params = flag_condition(flag)
        where.append(sql.SQL("NOT {}").format(condition))
        params.extend(flag_params)
    join_sql = sql.SQL(" ").join(j for _, j in joins.values())
    where_sql = sql.SQL("").join(sql.SQL(" AND ") + w for w in where)
    return join_sql, where_sql, join_params, params


def flag_condition(flag: str) -> tuple[sql.Composable, list]:
    """(SQL that is true when an image (alias `i`) raises quality `flag`, its parameters), built
    from the flag's registry entry (core.quality.QUALITY_FLAGS): each test compares the signal's
    IMAGE_COLUMNS expression with a bound threshold; a missing signal makes its test false, as in
    core.quality.quality_flags."""
    entry = quality_flag(flag)
    tests = [sql.SQL("coalesce({e} " + t.op + " %s, false)").format(e=sql.SQL(IMAGE_COLUMNS[t.signal])) for t in entry.tests]
    joiner = " OR " if entry.match == "any" else " AND "
    return sql.SQL("({})").format(sql.SQL(joiner).join(tests)), [t.threshold for t in entry.tests]


def quality_signal_columns() -> sql.Composable:
    """`i.blur_variance AS blur_variance, ..., least(i.width, i.height) AS min_side, i.width, i.height`:
    every quality signal (core.quality.QUALITY_SIGNALS) for a SELECT over images alias `i`, so a
    row carries all a flag tests and describes."""
    parts = [sql.SQL(IMAGE_COLUMNS[s] + " AS {}").format(sql.Identifier(s)) for s in QUALITY_SIGNALS]
    return sql.SQL(", ").join([*parts, sql.SQL("i.width"), sql.SQL("i.height")])


def _as_number(value: Any, p: Predicate) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"filter {p.column} {p.op} {value!r}: {p.column} is numeric, give a number") from None
