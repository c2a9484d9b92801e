"""The curation report and retrieval pages: this module builds their context (numbers, tiles,
geometry); the markup lives in templates/ (HTML, CSS and the map's script, package files read through
importlib.resources) and is rendered by Jinja2 with autoescape on. Pure: data in, text out.

Every user-controlled string (object keys, drop keys, errors, names, metadata columns) reaches the
page through an autoescaped expression; the map's data goes through `tojson`, which escapes <, >,
& and ' so nothing in it can end the script element. Thumbnails are data: URIs built here from image
bytes and the CSS and script are written inline, so each page is one self-contained file."""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass, field
from importlib import resources

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image

from .decode import DecodedImage, decode_image
from .quality import QUALITY_FLAGS


def thumbnail_data_uri(data: bytes, max_side: int = 128, quality: int = 70) -> str | None:
    """A small JPEG data: URI for image bytes, or None when they do not decode."""
    decoded = decode_image(data)
    if not isinstance(decoded, DecodedImage):
        return None
    img = decoded.image.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Tile:
    caption: str
    detail: str = ""
    thumb: str | None = None  # data: URI


@dataclass
class ReportData:
    title: str
    generated_at: str
    counts: dict[str, object]
    selection: dict[str, object]
    duplicate_groups: list[list[Tile]] = field(default_factory=list)  # representative first
    subset: list[Tile] = field(default_factory=list)
    failed: list[Tile] = field(default_factory=list)
    groups_total: int = 0
    models: dict[str, str] = field(default_factory=dict)  # report section -> the model that served it
    threshold: float | None = None  # near-duplicate threshold the drops were deduplicated with
    dedup_settings: dict[str, str] = field(default_factory=dict)  # drop -> the thresholds it was deduplicated with
    nn_similarities: list[float] = field(default_factory=list)  # nearest-neighbour cosine of a sample
    pairs_above: list[tuple[Tile, Tile, float]] = field(default_factory=list)  # just above the threshold
    pairs_below: list[tuple[Tile, Tile, float]] = field(default_factory=list)  # just below: near misses
    leaks: list[tuple[Tile, Tile]] = field(default_factory=list)  # (leaked image, protected image)
    # the latest dedup_calibration of the near-duplicate model: summary rows and curve tables
    calibration: dict | None = None
    # proposed pairs the pixel verifier rejected: (tile, tile, proposing tier + similarity, evidence)
    rejected_pairs: list[tuple[Tile, Tile, str, str]] = field(default_factory=list)
    rejected_total: int = 0
    comparison: dict | None = None  # {"subset": {...}, "random": {...}, "fine_clusters": n}
    map_points: list["MapPoint"] = field(default_factory=list)
    map_method: str = ""
    map_pool: int = 0  # images the map's sample was drawn from
    galleries: list[tuple[str, str, list[list[Tile]]]] = field(default_factory=list)  # (id, title, [cluster tiles])
    outliers: list[Tile] = field(default_factory=list)
    quality: dict[str, list[Tile]] = field(default_factory=dict)  # flag -> tiles
    quality_counts: dict[str, int] = field(default_factory=dict)
    missing_sources: list[tuple[str, str]] = field(default_factory=list)  # (source URI, why it cannot be shown)
    # labels: (class, objects in the pool, objects in the subset); object crops of the subset
    class_counts: list[tuple[str, int, int]] = field(default_factory=list)
    objects: list[Tile] = field(default_factory=list)
    # the label review's top suspects, each beside its nearest labelled neighbours; its name and total
    suspects: list[list[Tile]] = field(default_factory=list)
    review: dict | None = None
    # subset_evaluation: probe accuracy per budget, subset vs random vs everything
    evaluation: dict | None = None


@dataclass
class MapPoint:
    x: float  # in [0, 1]
    y: float
    caption: str
    cluster: int
    selected: bool = False
    duplicate: bool = False  # has duplicates (it represents a group)
    quality: str = ""  # first quality flag, or ""
    thumb: str | None = None  # small data: URI shown on hover


_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
)


# ---- templates -----------------------------------------------------------------------------------
def _template_text(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _inline(name: str) -> Markup:
    """A CSS or script file of templates/, marked safe to write verbatim inside <style>/<script>
    (it is ours, not data; escaping would break selectors and `<` in the script)."""
    text = _template_text(name)
    if "</" in text:  # would end the element it is written into
        raise ValueError(f"templates/{name} must not contain '</'")
    return Markup(text)


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (_template_text(name), None, lambda: True)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, **context) -> str:
    return _environment().get_template(template).render(css=_inline("report.css"), **context)


# ---- context -------------------------------------------------------------------------------------
MAP_WIDTH, MAP_HEIGHT, MAP_PAD = 1000, 640, 20


def map_context(points: list[MapPoint], method: str, pool: int) -> dict:
    """The embedding map: one circle per sampled image in SVG coordinates (y up in the projection,
    down on screen), filled by cluster; per-point data for the script's recolouring and hover tip."""
    inner_w, inner_h = MAP_WIDTH - 2 * MAP_PAD, MAP_HEIGHT - 2 * MAP_PAD
    return {
        "width": MAP_WIDTH,
        "height": MAP_HEIGHT,
        "pool": pool,
        "method": method.upper(),
        "palette": list(_PALETTE),
        "quality_colours": {name: flag.colour for name, flag in QUALITY_FLAGS.items()},
        "circles": [
            {
                "cx": MAP_PAD + p.x * inner_w,
                "cy": MAP_PAD + (1 - p.y) * inner_h,
                "fill": _PALETTE[p.cluster % len(_PALETTE)],
                "caption": p.caption,
            }
            for p in points
        ],
        # short keys: this is repeated per point in the page (c cluster, s selected, d has duplicates,
        # q quality flag, t thumbnail)
        "points": [
            {"c": p.cluster, "s": int(p.selected), "d": int(p.duplicate), "q": p.quality, "t": p.thumb or ""} for p in points
        ],
        "js": _inline("map.js"),
    }


def histogram_context(
    values: list[float],
    threshold: float | None,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    bins: int = 50,
    width: int = 640,
    height: int = 160,
) -> dict:
    """Histogram of similarities (clipped to [lo, hi]) as bar rectangles, axis ticks and the
    threshold's x; no bars when there are no values."""
    ctx: dict = {"width": width, "height": height, "bars": [], "ticks": [], "threshold": threshold, "threshold_x": 0.0}
    if not values:
        return ctx
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()))
    bar_w, plot_h = width / bins, height - 30
    ctx["bars"] = [
        {
            "x": i * bar_w,
            "y": height - 20 - (c / top) * plot_h,
            "width": bar_w - 1,
            "height": (c / top) * plot_h,
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "count": c,
        }
        for i, c in enumerate(counts.tolist())
    ]
    ctx["ticks"] = [{"x": (t - lo) / (hi - lo) * width, "value": float(t)} for t in np.linspace(lo, hi, 6)]
    if threshold is not None:
        ctx["threshold_x"] = (threshold - lo) / (hi - lo) * width
    return ctx


def bars_context(rows: list[tuple[str, float | None, float | None]], *, better: str) -> dict | None:
    """Side-by-side horizontal bars, subset vs random, scaled to the largest value; rows missing
    either value are left out, and no rows at all is no chart (None)."""
    present = [(label, a, b) for label, a, b in rows if a is not None and b is not None]
    if not present:
        return None
    top = max(max(a, b) for _, a, b in present) or 1.0
    return {
        "height": 34 * len(present) + 20,
        "better": better,
        "rows": [
            {
                "y": 10 + 34 * i,
                "label": label,
                "subset": a,
                "random": b,
                "subset_width": 400 * a / top,
                "random_width": 400 * b / top,
            }
            for i, (label, a, b) in enumerate(present)
        ],
    }


def comparison_charts(comparison: dict | None) -> list[dict]:
    """Two charts, metrics where higher is better and where lower is better."""
    if not comparison:
        return []
    sub, rnd = comparison.get("subset", {}), comparison.get("random", {})
    higher = [
        ("fine clusters covered", sub.get("fine_clusters_covered"), rnd.get("fine_clusters_covered")),
        ("mean NN distance in subset", sub.get("nn_distance_mean"), rnd.get("nn_distance_mean")),
    ]
    higher += [
        (f"{c} values covered", v, rnd.get("metadata_coverage", {}).get(c))
        for c, v in sorted(sub.get("metadata_coverage", {}).items())
    ]
    lower = [
        ("mean distance pool to subset", sub.get("coverage_distance_mean"), rnd.get("coverage_distance_mean")),
        ("max distance pool to subset", sub.get("coverage_distance_max"), rnd.get("coverage_distance_max")),
    ]
    charts = (bars_context(higher, better="higher"), bars_context(lower, better="lower"))
    return [c for c in charts if c is not None]


_COMPARISON_ROWS = (
    ("fine clusters covered (fraction)", "fine_clusters_covered", "higher is better"),
    ("mean nearest-neighbour distance inside the subset", "nn_distance_mean", "higher = less redundant"),
    ("min nearest-neighbour distance inside the subset", "nn_distance_min", "higher = less redundant"),
    ("mean distance from a pool image to the subset", "coverage_distance_mean", "lower = better covered"),
    ("max distance from a pool image to the subset", "coverage_distance_max", "lower = no region left out"),
)


def comparison_table(comparison: dict | None) -> dict | None:
    """The subset next to a random subset of equal size from the same pool, one row per metric."""
    if not comparison:
        return None
    sub, rnd = comparison.get("subset", {}), comparison.get("random", {})
    rows = [
        {"label": label, "subset": sub.get(key), "random": rnd.get(key), "note": note} for label, key, note in _COMPARISON_ROWS
    ]
    rows += [
        {
            "label": f"{column}: values covered (fraction)",
            "subset": value,
            "random": rnd.get("metadata_coverage", {}).get(column),
            "note": "higher is better",
        }
        for column, value in sorted(sub.get("metadata_coverage", {}).items())
    ]
    return {"fine_clusters": comparison.get("fine_clusters", "?"), "random_size": rnd.get("size", "?"), "rows": rows}


def report_context(data: ReportData) -> dict:
    """Everything templates/report.html needs: the data itself plus the computed pieces."""
    return {
        "d": data,
        "map": map_context(data.map_points, data.map_method, data.map_pool),
        "histogram": histogram_context(data.nn_similarities, data.threshold),
        "charts": comparison_charts(data.comparison),
        "comparison": comparison_table(data.comparison),
    }


# ---- rendering -----------------------------------------------------------------------------------
def render_html(data: ReportData) -> str:
    return _render("report.html", **report_context(data))


def render_markdown(data: ReportData, report_path: str, max_thumbs: int = 12, report_url: str | None = None) -> str:
    """The report's summary for the Dagster UI; `report_url` (where the page is served) makes
    "Full report" a link, else it names the file."""
    lines = [f"### {data.title}", "", "| count | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in data.counts.items()]
    if data.models:
        lines += ["", "| section | model |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in data.models.items()]
    where = f"[open the full report]({report_url}) (`{report_path}`)" if report_url else f"`{report_path}`"
    lines += ["", f"Full report: {where}", "", "**Subset (first picks)**", ""]
    thumbs = [t for t in data.subset if t.thumb][:max_thumbs]
    lines.append(" ".join(f"![{t.caption.replace(']', '')}]({t.thumb})" for t in thumbs))
    return "\n".join(lines)


def render_retrieval_html(
    title: str, generated_at: str, settings: dict[str, object], queries: list[Tile], results: list[Tile]
) -> str:
    """A retrieval set's page: its settings, the query images (or prompts) and the results in rank
    order with their similarity. Self-contained like the curation report."""
    return _render(
        "retrieval.html", title=title, generated_at=generated_at, settings=settings, queries=queries, results=results
    )
