"""Static HTML and markdown for the curation report. Pure: data in, text out.

Every user-controlled string (object keys, drop keys, errors, names) goes through html.escape;
thumbnails are data: URIs built here from image bytes, so the page is self-contained."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .decode import DecodedImage, decode_image


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
    threshold: float | None = None  # semantic threshold of the model
    nn_similarities: list[float] = field(default_factory=list)  # nearest-neighbour cosine of a sample
    pairs_above: list[tuple[Tile, Tile, float]] = field(default_factory=list)  # just above the threshold
    pairs_below: list[tuple[Tile, Tile, float]] = field(default_factory=list)  # just below: near misses
    leaks: list[tuple[Tile, Tile]] = field(default_factory=list)  # (leaked image, protected image)
    comparison: dict | None = None  # {"subset": {...}, "random": {...}, "fine_clusters": n}


_COMPARISON_ROWS = (
    ("fine clusters covered (fraction)", "fine_clusters_covered", "higher is better"),
    ("mean nearest-neighbour distance inside the subset", "nn_distance_mean", "higher = less redundant"),
    ("min nearest-neighbour distance inside the subset", "nn_distance_min", "higher = less redundant"),
    ("mean distance from a pool image to the subset", "coverage_distance_mean", "lower = better covered"),
    ("max distance from a pool image to the subset", "coverage_distance_max", "lower = no region left out"),
)


def comparison_table(comparison: dict | None) -> str:
    """The subset next to a random subset of equal size from the same pool."""
    if not comparison:
        return '<p class="muted">No comparison stored for this selection.</p>'
    sub, rnd = comparison.get("subset", {}), comparison.get("random", {})
    rows = [(label, sub.get(key), rnd.get(key), note) for label, key, note in _COMPARISON_ROWS]
    for column, value in sorted(sub.get("metadata_coverage", {}).items()):
        rows.append((f"{column}: values covered (fraction)", value, rnd.get("metadata_coverage", {}).get(column),
                     "higher is better"))
    body = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td>"
                   f'<td class="muted">{html.escape(note)}</td></tr>' for label, a, b, note in rows)
    return (f'<p class="muted">{html.escape(str(comparison.get("fine_clusters", "?")))} fine clusters from an '
            f"independent k-means; random subset of {html.escape(str(rnd.get('size', '?')))} images, seeded.</p>"
            f"<table><tr><th></th><th>subset</th><th>random</th><th></th></tr>{body}</table>")


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px} .group{display:flex;gap:6px;align-items:flex-start;
padding:8px;margin:8px 0;background:#fff;border:1px solid #e4e4e4;border-radius:6px;overflow-x:auto}
.tile{width:136px;font-size:11px;word-break:break-all} .tile img{width:128px;height:128px;object-fit:contain;
background:#eee;display:block} .rep img{outline:3px solid #2a7} .missing{width:128px;height:128px;
background:#fdd;display:flex;align-items:center;justify-content:center}
.muted{color:#777}
"""


def _tile(t: Tile, extra_class: str = "") -> str:
    img = (f'<img src="{html.escape(t.thumb, quote=True)}" alt="{html.escape(t.caption, quote=True)}" loading="lazy">'
           if t.thumb else '<div class="missing">no preview</div>')
    detail = f'<div class="muted">{html.escape(t.detail)}</div>' if t.detail else ""
    return f'<div class="tile {extra_class}">{img}<div>{html.escape(t.caption)}</div>{detail}</div>'


def _table(rows: dict[str, object]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def histogram_svg(values: list[float], threshold: float | None, *, lo: float = 0.0, hi: float = 1.0,
                  bins: int = 50, width: int = 640, height: int = 160) -> str:
    """Inline SVG histogram of similarities with the threshold drawn as a red line."""
    if not values:
        return '<p class="muted">No embeddings to sample.</p>'
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()))
    bar_w = width / bins
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - 20 - (c / top) * (height - 30):.1f}" width="{bar_w - 1:.1f}" '
        f'height="{(c / top) * (height - 30):.1f}" fill="#58a"><title>{edges[i]:.2f}-{edges[i + 1]:.2f}: {c}</title></rect>'
        for i, c in enumerate(counts.tolist())
    )
    axis = "".join(f'<text x="{(t - lo) / (hi - lo) * width:.1f}" y="{height - 4}" font-size="10">{t:.1f}</text>'
                   for t in np.linspace(lo, hi, 6))
    line = ""
    if threshold is not None:
        x = (threshold - lo) / (hi - lo) * width
        line = (f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height - 16}" stroke="#c22" stroke-width="2"/>'
                f'<text x="{x + 3:.1f}" y="12" font-size="11" fill="#c22">threshold {threshold:.2f}</text>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="nearest-neighbour similarity histogram">'
            f"{bars}{line}{axis}</svg>")


def _pairs(pairs: list[tuple[Tile, Tile, float]]) -> str:
    if not pairs:
        return '<p class="muted">None in the sample.</p>'
    return "".join(f'<div class="group">{_tile(a)}{_tile(b)}<div class="muted">cosine {sim:.3f}</div></div>'
                   for a, b, sim in pairs)


def render_html(data: ReportData) -> str:
    groups = "".join(
        '<div class="group">' + "".join(_tile(t, "rep" if i == 0 else "") for i, t in enumerate(g)) + "</div>"
        for g in data.duplicate_groups
    ) or '<p class="muted">No duplicates found.</p>'
    shown = (f'<p class="muted">Showing {len(data.duplicate_groups)} of {data.groups_total} groups; '
             "the representative is outlined and first.</p>")
    subset = '<div class="grid">' + "".join(_tile(t) for t in data.subset) + "</div>"
    leaks = "".join(f'<div class="group">{_tile(a)}{_tile(b, "rep")}</div>' for a, b in data.leaks) or \
        '<p class="muted">No image of another drop duplicates an image of a protected drop.</p>'
    failed = ('<div class="grid">' + "".join(_tile(t) for t in data.failed) + "</div>") if data.failed else \
        '<p class="muted">No failed objects.</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(data.title)}</h1><p class="muted">generated {html.escape(data.generated_at)}</p>
<h2 id="counts">Counts</h2>{_table(data.counts)}
<h2 id="selection">Selection</h2>{_table(data.selection)}
<h2 id="duplicates">Duplicate groups</h2>{shown}{groups}
<h2 id="threshold">Threshold explorer</h2>
<p class="muted">Nearest-neighbour cosine similarity of {len(data.nn_similarities)} sampled images; pairs at or above the
threshold are semantic duplicates.</p>
{histogram_svg(data.nn_similarities, data.threshold)}
<h3>Just above the threshold (merged)</h3>{_pairs(data.pairs_above)}
<h3>Just below the threshold (kept apart)</h3>{_pairs(data.pairs_below)}
<h2 id="leaks">Leakage into protected drops</h2>{leaks}
<h2 id="versus-random">Subset vs random of equal size</h2>{comparison_table(data.comparison)}
<h2 id="subset">Curated subset ({len(data.subset)} images, in pick order)</h2>{subset}
<h2 id="failed">Failed objects</h2>{failed}
</body></html>
"""


def render_markdown(data: ReportData, report_path: str, max_thumbs: int = 12) -> str:
    lines = [f"### {data.title}", "", "| count | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in data.counts.items()]
    lines += ["", f"Full report: `{report_path}`", "", "**Subset (first picks)**", ""]
    thumbs = [t for t in data.subset if t.thumb][:max_thumbs]
    lines.append(" ".join(f"![{t.caption.replace(']', '')}]({t.thumb})" for t in thumbs))
    return "\n".join(lines)
