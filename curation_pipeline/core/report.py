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
    map_points: list["MapPoint"] = field(default_factory=list)
    map_method: str = ""
    map_pool: int = 0  # images the map's sample was drawn from
    galleries: list[tuple[str, str, list[list[Tile]]]] = field(default_factory=list)  # (id, title, [cluster tiles])
    outliers: list[Tile] = field(default_factory=list)
    quality: dict[str, list[Tile]] = field(default_factory=dict)  # flag -> tiles
    quality_counts: dict[str, int] = field(default_factory=dict)
    missing_sources: list[tuple[str, str]] = field(default_factory=list)  # (source URI, why it cannot be shown)


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


def _json_for_script(value) -> str:
    """JSON safe inside <script>: no way to close the tag or open a comment from data."""
    import json

    return json.dumps(value, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def map_svg(points: list[MapPoint], method: str, pool: int) -> str:
    """The embedding map: one circle per sampled image, coloured by cluster / selected / duplicate /
    quality (buttons), thumbnail on hover, wheel to zoom, drag to pan."""
    if not points:
        return '<p class="muted">No embedded images to map.</p>'
    w, h, pad = 1000, 640, 20
    circles = []
    for i, p in enumerate(points):
        cx = pad + p.x * (w - 2 * pad)
        cy = pad + (1 - p.y) * (h - 2 * pad)
        circles.append(
            f'<circle class="pt" data-i="{i}" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{_PALETTE[p.cluster % 16]}">'
            f"<title>{html.escape(p.caption)}</title></circle>"
        )
    data = [{"c": p.cluster, "s": int(p.selected), "d": int(p.duplicate), "q": p.quality, "t": p.thumb or ""} for p in points]
    return f"""<p class="muted">{len(points)} of {pool} images, sampled so that every cluster is represented
(selected images first); {html.escape(method.upper())} of the embeddings. Colour by:
<button type="button" class="mapmode" data-mode="cluster">cluster</button>
<button type="button" class="mapmode" data-mode="selected">selected</button>
<button type="button" class="mapmode" data-mode="duplicate">has duplicates</button>
<button type="button" class="mapmode" data-mode="quality">quality issue</button>
<button type="button" id="map-reset">reset zoom</button> (wheel zooms, drag pans)</p>
<div id="map-wrap"><svg id="embedding-map" data-points="{len(points)}" viewBox="0 0 {w} {h}" width="100%"
 preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/><g id="map-points">{"".join(circles)}</g></svg>
<div id="map-tip" hidden><img id="map-tip-img" alt="" hidden><div id="map-tip-cap"></div></div></div>
<script type="application/json" id="map-data">{_json_for_script(data)}</script>
<script>{_MAP_JS}</script>"""


_MAP_JS = """
(function () {
  var svg = document.getElementById('embedding-map');
  if (!svg) { return; }
  var data = JSON.parse(document.getElementById('map-data').textContent);
  var palette = %s;
  var pts = svg.querySelectorAll('circle.pt');
  var modes = {
    cluster: function (d) { return palette[d.c %% palette.length]; },
    selected: function (d) { return d.s ? '#d62728' : '#c7c7c7'; },
    duplicate: function (d) { return d.d ? '#ff7f0e' : '#c7c7c7'; },
    quality: function (d) { return d.q ? '#9467bd' : '#c7c7c7'; }
  };
  function colour(mode) {
    for (var i = 0; i < pts.length; i++) { pts[i].setAttribute('fill', modes[mode](data[i])); }
  }
  var buttons = document.querySelectorAll('button.mapmode');
  for (var b = 0; b < buttons.length; b++) {
    buttons[b].addEventListener('click', function (e) { colour(e.target.getAttribute('data-mode')); });
  }
  var vb = svg.viewBox.baseVal, base = [vb.x, vb.y, vb.width, vb.height];
  svg.addEventListener('wheel', function (e) {
    e.preventDefault();
    var r = svg.getBoundingClientRect(), k = e.deltaY < 0 ? 0.8 : 1.25;
    var mx = vb.x + (e.clientX - r.left) / r.width * vb.width, my = vb.y + (e.clientY - r.top) / r.height * vb.height;
    vb.x = mx - (mx - vb.x) * k; vb.y = my - (my - vb.y) * k; vb.width *= k; vb.height *= k;
  }, {passive: false});
  var drag = null;
  svg.addEventListener('mousedown', function (e) { drag = [e.clientX, e.clientY, vb.x, vb.y]; });
  window.addEventListener('mouseup', function () { drag = null; });
  window.addEventListener('mousemove', function (e) {
    if (!drag) { return; }
    var r = svg.getBoundingClientRect();
    vb.x = drag[2] - (e.clientX - drag[0]) / r.width * vb.width;
    vb.y = drag[3] - (e.clientY - drag[1]) / r.height * vb.height;
  });
  document.getElementById('map-reset').addEventListener('click', function () {
    vb.x = base[0]; vb.y = base[1]; vb.width = base[2]; vb.height = base[3];
  });
  var tip = document.getElementById('map-tip'), img = document.getElementById('map-tip-img');
  var cap = document.getElementById('map-tip-cap');
  svg.addEventListener('mouseover', function (e) {
    var t = e.target;
    if (!t.classList || !t.classList.contains('pt')) { return; }
    var d = data[+t.getAttribute('data-i')];
    if (d.t) { img.src = d.t; img.hidden = false; } else { img.hidden = true; }
    cap.textContent = t.textContent;
    var r = svg.getBoundingClientRect();
    tip.style.left = (e.clientX - r.left + 12) + 'px'; tip.style.top = (e.clientY - r.top + 12) + 'px';
    tip.hidden = false;
  });
  svg.addEventListener('mouseout', function (e) {
    if (e.target.classList && e.target.classList.contains('pt')) { tip.hidden = true; }
  });
})();
""" % _json_for_script(list(_PALETTE))


def bars_svg(rows: list[tuple[str, float | None, float | None]], *, better: str = "higher") -> str:
    """Side-by-side horizontal bars, subset vs random, for metrics in [0, 1]-ish ranges."""
    rows = [(label, a, b) for label, a, b in rows if a is not None and b is not None]
    if not rows:
        return ""
    top = max(max(a, b) for _, a, b in rows) or 1.0
    h = 34 * len(rows) + 20
    parts = []
    for i, (label, a, b) in enumerate(rows):
        y = 10 + 34 * i
        parts.append(
            f'<text x="0" y="{y + 11}" font-size="11">{html.escape(label)}</text>'
            f'<rect class="bar-subset" x="300" y="{y}" width="{400 * a / top:.1f}" height="12" fill="#2ca02c"/>'
            f'<text x="{305 + 400 * a / top:.1f}" y="{y + 10}" font-size="10">{a:.3f}</text>'
            f'<rect class="bar-random" x="300" y="{y + 14}" width="{400 * b / top:.1f}" height="12" '
            f'fill="#aaa"/><text x="{305 + 400 * b / top:.1f}" y="{y + 24}" font-size="10">{b:.3f}</text>'
        )
    return (
        f'<svg class="bars" viewBox="0 0 760 {h}" width="760" height="{h}" xmlns="http://www.w3.org/2000/svg">'
        f'{"".join(parts)}</svg><p class="muted">green: subset, grey: random of equal size ({better} is better)</p>'
    )


_COMPARISON_ROWS = (
    ("fine clusters covered (fraction)", "fine_clusters_covered", "higher is better"),
    ("mean nearest-neighbour distance inside the subset", "nn_distance_mean", "higher = less redundant"),
    ("min nearest-neighbour distance inside the subset", "nn_distance_min", "higher = less redundant"),
    ("mean distance from a pool image to the subset", "coverage_distance_mean", "lower = better covered"),
    ("max distance from a pool image to the subset", "coverage_distance_max", "lower = no region left out"),
)


def comparison_charts(comparison: dict | None) -> str:
    if not comparison:
        return ""
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
    return bars_svg(higher, better="higher") + bars_svg(lower, better="lower")


def comparison_table(comparison: dict | None) -> str:
    """The subset next to a random subset of equal size from the same pool."""
    if not comparison:
        return '<p class="muted">No comparison stored for this selection.</p>'
    sub, rnd = comparison.get("subset", {}), comparison.get("random", {})
    rows = [(label, sub.get(key), rnd.get(key), note) for label, key, note in _COMPARISON_ROWS]
    for column, value in sorted(sub.get("metadata_coverage", {}).items()):
        rows.append(
            (f"{column}: values covered (fraction)", value, rnd.get("metadata_coverage", {}).get(column), "higher is better")
        )
    body = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td>"
        f'<td class="muted">{html.escape(note)}</td></tr>'
        for label, a, b, note in rows
    )
    return (
        f'<p class="muted">{html.escape(str(comparison.get("fine_clusters", "?")))} fine clusters from an '
        f"independent k-means; random subset of {html.escape(str(rnd.get('size', '?')))} images, seeded.</p>"
        f"<table><tr><th></th><th>subset</th><th>random</th><th></th></tr>{body}</table>"
    )


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
#map-wrap{position:relative;background:#fff;border:1px solid #ddd;max-width:1000px}
#embedding-map{display:block;cursor:grab} circle.pt{stroke:#fff;stroke-width:0.8}
#map-tip{position:absolute;background:#fff;border:1px solid #999;padding:4px;font-size:11px;pointer-events:none;
max-width:160px;word-break:break-all} #map-tip img{width:96px;height:96px;object-fit:contain;display:block}
button{margin:0 2px} .bars{display:block;margin:8px 0}
"""


def _tile(t: Tile, extra_class: str = "") -> str:
    img = (
        f'<img src="{html.escape(t.thumb, quote=True)}" alt="{html.escape(t.caption, quote=True)}" >'
        if t.thumb
        else '<div class="missing">no preview</div>'
    )
    detail = f'<div class="muted">{html.escape(t.detail)}</div>' if t.detail else ""
    return f'<div class="tile {extra_class}">{img}<div>{html.escape(t.caption)}</div>{detail}</div>'


def _table(rows: dict[str, object]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def histogram_svg(
    values: list[float],
    threshold: float | None,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    bins: int = 50,
    width: int = 640,
    height: int = 160,
) -> str:
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
    axis = "".join(
        f'<text x="{(t - lo) / (hi - lo) * width:.1f}" y="{height - 4}" font-size="10">{t:.1f}</text>'
        for t in np.linspace(lo, hi, 6)
    )
    line = ""
    if threshold is not None:
        x = (threshold - lo) / (hi - lo) * width
        line = (
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height - 16}" stroke="#c22" stroke-width="2"/>'
            f'<text x="{x + 3:.1f}" y="12" font-size="11" fill="#c22">threshold {threshold:.2f}</text>'
        )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="nearest-neighbour similarity histogram">'
        f"{bars}{line}{axis}</svg>"
    )


def _pairs(pairs: list[tuple[Tile, Tile, float]]) -> str:
    if not pairs:
        return '<p class="muted">None in the sample.</p>'
    return "".join(
        f'<div class="group">{_tile(a)}{_tile(b)}<div class="muted">cosine {sim:.3f}</div></div>' for a, b, sim in pairs
    )


def render_html(data: ReportData) -> str:
    groups = (
        "".join(
            '<div class="group">' + "".join(_tile(t, "rep" if i == 0 else "") for i, t in enumerate(g)) + "</div>"
            for g in data.duplicate_groups
        )
        or '<p class="muted">No duplicates found.</p>'
    )
    shown = (
        f'<p class="muted">Showing {len(data.duplicate_groups)} of {data.groups_total} groups; '
        "the representative is outlined and first.</p>"
    )
    subset = '<div class="grid">' + "".join(_tile(t) for t in data.subset) + "</div>"
    leaks = (
        "".join(f'<div class="group">{_tile(a)}{_tile(b, "rep")}</div>' for a, b in data.leaks)
        or '<p class="muted">No image of another drop duplicates an image of a protected drop.</p>'
    )
    failed = (
        ('<div class="grid">' + "".join(_tile(t) for t in data.failed) + "</div>")
        if data.failed
        else '<p class="muted">No failed objects.</p>'
    )
    galleries = "".join(
        f'<h3 id="{gid}">{html.escape(title)}</h3>'
        + (
            "".join('<div class="group">' + "".join(_tile(t) for t in tiles) + "</div>" for tiles in clusters)
            or '<p class="muted">None.</p>'
        )
        for gid, title, clusters in data.galleries
    )
    outliers = (
        ('<div class="grid">' + "".join(_tile(t) for t in data.outliers) + "</div>")
        if data.outliers
        else '<p class="muted">None.</p>'
    )
    quality = "".join(
        f"<h3>{html.escape(flag)} ({data.quality_counts.get(flag, len(tiles))})</h3>"
        + ('<div class="grid">' + "".join(_tile(t) for t in tiles) + "</div>" if tiles else '<p class="muted">None.</p>')
        for flag, tiles in data.quality.items()
    )
    missing = (
        (
            f"<p>{len(data.missing_sources)} source file(s) could not be read when this report was written; their "
            'tiles say "no preview". Re-ingest their drops (or restore the files) to bring them back.</p><table>'
            + "".join(f"<tr><td>{html.escape(uri)}</td><td>{html.escape(why)}</td></tr>" for uri, why in data.missing_sources)
            + "</table>"
        )
        if data.missing_sources
        else '<p class="muted">Every source file could be read.</p>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(data.title)}</h1><p class="muted">generated {html.escape(data.generated_at)}</p>
<nav class="muted">Sections: <a href="#counts">counts</a> · <a href="#map">embedding map</a> ·
<a href="#clusters">clusters</a> · <a href="#duplicates">duplicates</a> · <a href="#threshold">threshold</a> ·
<a href="#versus-random">subset vs random</a> · <a href="#subset">subset</a> · <a href="#quality">quality</a> ·
<a href="#failed">failed</a> · <a href="#missing-sources">missing sources</a></nav>
<h2 id="counts">Counts</h2>{_table(data.counts)}
<h2 id="selection">Selection</h2>{_table(data.selection)}
<h2 id="map">Embedding map</h2>{map_svg(data.map_points, data.map_method, data.map_pool)}
<h2 id="clusters">Clusters</h2>{galleries}
<h3 id="outliers">Outliers and edge cases (farthest from their neighbours)</h3>{outliers}
<h2 id="duplicates">Duplicate groups</h2>{shown}{groups}
<h2 id="threshold">Threshold explorer</h2>
<p class="muted">Nearest-neighbour cosine similarity of {len(data.nn_similarities)} sampled images; pairs at or above the
threshold are semantic duplicates.</p>
{histogram_svg(data.nn_similarities, data.threshold)}
<h3>Just above the threshold (merged)</h3>{_pairs(data.pairs_above)}
<h3>Just below the threshold (kept apart)</h3>{_pairs(data.pairs_below)}
<h2 id="leaks">Leakage into protected drops</h2>{leaks}
<h2 id="versus-random">Subset vs random of equal size</h2>{comparison_charts(data.comparison)}
{comparison_table(data.comparison)}
<h2 id="subset">Curated subset ({len(data.subset)} images, in pick order)</h2>{subset}
<h2 id="quality">Quality issues</h2>{quality or '<p class="muted">No quality checks ran.</p>'}
<h2 id="failed">Failed objects (corrupt, unsupported, unreadable)</h2>{failed}
<h2 id="missing-sources">Missing sources</h2>{missing}
</body></html>
"""


def render_markdown(data: ReportData, report_path: str, max_thumbs: int = 12) -> str:
    lines = [f"### {data.title}", "", "| count | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in data.counts.items()]
    lines += ["", f"Full report: `{report_path}`", "", "**Subset (first picks)**", ""]
    thumbs = [t for t in data.subset if t.thumb][:max_thumbs]
    lines.append(" ".join(f"![{t.caption.replace(']', '')}]({t.thumb})" for t in thumbs))
    return "\n".join(lines)


def render_retrieval_html(
    title: str, generated_at: str, settings: dict[str, object], queries: list[Tile], results: list[Tile]
) -> str:
    """A retrieval set's page: its settings, the query images (or prompts) and the results in rank
    order with their similarity. Self-contained like the curation report."""
    q = (
        '<div class="grid">' + "".join(_tile(t) for t in queries) + "</div>"
        if queries
        else '<p class="muted">No query images.</p>'
    )
    r = (
        '<div class="grid">' + "".join(_tile(t) for t in results) + "</div>"
        if results
        else '<p class="muted">No results (nothing above the threshold, or nothing passed the filters).</p>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1><p class="muted">generated {html.escape(generated_at)}</p>
<h2 id="settings">Query</h2>{_table(settings)}
<h2 id="queries">Query images</h2>{q}
<h2 id="results">Results ({len(results)}, most similar first)</h2>{r}
</body></html>
"""
