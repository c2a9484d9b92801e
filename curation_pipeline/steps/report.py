"""Gather what the report shows and write it to disk."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from curation_pipeline.core.quality import QUALITY_FLAGS, describe_flag
from curation_pipeline.core.report import MapPoint, ReportData, Tile, render_html, render_markdown, thumbnail_data_uri
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import default_min_cosine
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores

log = logging.getLogger(__name__)


class Thumbnails:
    """Thumbnails of source images, remembering every source that could not be shown and why
    (deleted or moved since ingest, unreadable, no longer decodes): the report shows a placeholder
    for each and lists them, instead of failing. Sources are read through `stores`."""

    def __init__(self, stores: ImageStores = DEFAULT_STORES) -> None:
        self.stores = stores
        self.missing: dict[str, str] = {}  # source URI -> reason

    def __call__(self, uri: str, side: int) -> str | None:
        if uri in self.missing:
            return None
        try:
            thumb = thumbnail_data_uri(self.stores.read_uri(uri), max_side=side)
        except FileNotFoundError:
            self.missing[uri] = "source file missing (deleted or moved since ingest)"
            return None
        except (OSError, ValueError, NotImplementedError) as exc:
            self.missing[uri] = f"cannot read source: {exc}"
            return None
        if thumb is None:
            self.missing[uri] = "source no longer decodes as an image (changed since ingest)"
        return thumb


def _quality_detail(flag: str, r: dict) -> str:
    """The measured value behind `flag`, worded by the flag's registry entry (core.quality)."""
    return describe_flag(flag, r)


def _describe(value) -> object:
    """Config values for the report's table: strategies as `name:weight option=value` (registry wording)."""
    from curation_pipeline.steps.strategies import describe_strategies

    return describe_strategies(value)


def embedding_overview(
    catalog: Catalog,
    model: str,
    selection_name: str,
    groups: list[dict],
    *,
    map_points: int = 1500,
    map_thumbs: int = 300,
    pool_sample: int = 20_000,
    thumb_side: int = 128,
    thumbs: Thumbnails | None = None,
    logger: logging.Logger = log,
) -> dict:
    """The map, cluster galleries and outliers, from a bounded sample of kept images."""
    import numpy as np

    from curation_pipeline.core.projection import coverage_sample, project_2d
    from curation_pipeline.core.quality import quality_flags
    from curation_pipeline.core.selection import knn_similarity, spherical_kmeans

    thumbs = thumbs or Thumbnails()
    pool, selected = catalog.report_sample(model, pool_sample, selection_name)
    n = len(pool)
    out: dict = {"map_points": [], "map_method": "", "map_pool": catalog.kept_count(model), "galleries": [], "outliers": []}
    if n == 0:
        return out
    c = max(1, min(24, n // 5))
    labels, centres = spherical_kmeans(pool.vectors, c, seed=0)
    rows = coverage_sample(labels, map_points, must=selected, seed=0)
    coords, method = project_2d(pool.vectors[rows])
    logger.info("report map: %d of %d points by %s, %d clusters", len(rows), n, method, c)
    meta = catalog.images_by_id(pool.image_ids[rows].tolist())
    representatives = {g["representative"]["image_id"] for g in groups}
    thumbs_for = set(rows[np.argsort(~selected[rows], kind="stable")][:map_thumbs].tolist())
    points = []
    for (x, y), r in zip(coords.tolist(), rows.tolist()):
        m = meta[int(pool.image_ids[r])]
        flags = quality_flags(m)  # every stored signal the row carries (min_side from width and height)
        points.append(
            MapPoint(
                x=x,
                y=y,
                caption=f"{m['drop_key']}/{m['object_key']}",
                cluster=int(labels[r]),
                selected=bool(selected[r]),
                duplicate=int(pool.image_ids[r]) in representatives,
                quality=flags[0] if flags else "",
                thumb=thumbs(m["source_uri"], 64) if r in thumbs_for else None,
            )
        )
    out.update(map_points=points, map_method=method)

    # cluster galleries: tightness = mean cosine of members to their centre
    sims = np.einsum("ij,ij->i", pool.vectors, centres[labels])
    stats = []
    for k in range(c):
        members = np.flatnonzero(labels == k)
        if len(members):
            stats.append((k, len(members), float(sims[members].mean()), members[np.argsort(-sims[members])]))
    ids_needed = []

    def tiles(members) -> list[Tile]:
        ids = [int(pool.image_ids[i]) for i in members[:8]]
        ids_needed.extend(ids)
        return ids

    dense = sorted(stats, key=lambda t: (-t[1] * t[2], t[0]))[:4]
    shown = {t[0] for t in dense}  # the two galleries never show the same cluster
    sparse = sorted((t for t in stats if t[0] not in shown), key=lambda t: (t[2], t[0]))[:4]
    density = knn_similarity(pool.vectors, min(10, max(1, n - 1)))
    outlier_rows = np.argsort(density)[:12]
    outlier_ids = [int(pool.image_ids[i]) for i in outlier_rows]
    g_dense = [(k, size, tight, tiles(m)) for k, size, tight, m in dense]
    g_sparse = [(k, size, tight, tiles(m)) for k, size, tight, m in sparse]
    info = catalog.images_by_id(ids_needed + outlier_ids)

    def tile(image_id: int, detail: str = "") -> Tile:
        m = info[image_id]
        return Tile(f"{m['drop_key']}/{m['object_key']}", detail, thumbs(m["source_uri"], thumb_side))

    def gallery(rows_):
        return [
            [tile(ids[0], f"cluster {k}: {size} images, tightness {tight:.2f}")] + [tile(i) for i in ids[1:]]
            for k, size, tight, ids in rows_
        ]

    out["galleries"] = [
        ("dense-clusters", "Densest clusters (largest and tightest)", gallery(g_dense)),
        ("sparse-clusters", "Sparsest clusters (loosest)", gallery(g_sparse)),
    ]
    out["outliers"] = [tile(int(pool.image_ids[r]), f"neighbour similarity {density[r]:.2f}") for r in outlier_rows]
    return out


def write_report(
    catalog: Catalog,
    selection_name: str,
    out_dir: Path,
    *,
    max_groups: int = 50,
    max_subset: int = 200,
    thumb_side: int = 128,
    nn_sample: int = 2000,
    stores: ImageStores = DEFAULT_STORES,
    logger: logging.Logger = log,
    report_url: Callable[[str], str | None] | None = None,
) -> dict:
    """Write the selection's report to `out_dir/index.html`; thumbnails read through `stores`.
    `report_url` maps the page's path to where it is served (its summary then links it)."""
    info = catalog.selection_info(selection_name)
    if info is None:
        raise LookupError(f"selection {selection_name!r} does not exist: materialize curated_subset first")
    thumbs = Thumbnails(stores)
    counts = catalog.corpus_counts()
    groups = catalog.duplicate_groups()
    items = catalog.selection_items(selection_name)
    failed = catalog.failed_images()

    dup_tiles = []
    for g in groups[:max_groups]:
        rep = g["representative"]
        tiles = [Tile(f"{rep['drop_key']}/{rep['object_key']}", "representative", thumbs(rep["source_uri"], thumb_side))]
        tiles += [
            Tile(
                f"{m['drop_key']}/{m['object_key']}", f"{m['tier']} {m['similarity']:.3f}", thumbs(m["source_uri"], thumb_side)
            )
            for m in g["members"]
        ]
        dup_tiles.append(tiles)
    subset_tiles = [
        Tile(
            f"#{it['rank']} {it['drop_key']}/{it['object_key']}",
            (f"{it['reason']}" if it.get("reason") else "")
            + ("" if it["distance_at_pick"] is None else f" dist {it['distance_at_pick']:.3f}")
            + (f" [{it['group_key']}]" if it.get("group_key") else ""),
            thumbs(it["source_uri"], thumb_side),
        )
        for it in items[:max_subset]
    ]
    failed_tiles = [Tile(f"{f['drop_key']}/{f['object_key']}", f"{f['status']}: {f['error']}") for f in failed]

    # threshold explorer: nearest-neighbour similarities of a sample in the near-duplicate
    # descriptor's space (where the dedup threshold applies), and pairs either side
    model = info.model
    dedup_models = catalog.dedup_models()
    dedup_model = dedup_models[-1] if dedup_models else model
    settings = catalog.dedup_settings()
    # the threshold the drops were actually deduplicated with (the most common one, if run config
    # made them differ); the model's default only when nothing was deduplicated yet
    used = Counter(round(st.min_cosine, 6) for st in settings if st.model == dedup_model)
    threshold = used.most_common(1)[0][0] if used else default_min_cosine(dedup_model)
    nn = catalog.nearest_neighbour_sample(dedup_model, nn_sample)
    # the sampled pairs closest to the threshold on each side (each pair once)
    unique = {tuple(sorted((a, b))): sim for a, b, sim in nn}
    ranked = [(a, b, sim) for (a, b), sim in unique.items()]
    above = sorted([x for x in ranked if x[2] >= threshold], key=lambda x: x[2])[:6]
    below = sorted([x for x in ranked if x[2] < threshold], key=lambda x: -x[2])[:6]
    meta = catalog.images_by_id({i for a, b, _ in above + below for i in (a, b)})

    def tile(image_id: int) -> Tile:
        m = meta[image_id]
        return Tile(f"{m['drop_key']}/{m['object_key']}", "", thumbs(m["source_uri"], thumb_side))

    calibration = _calibration_view(catalog.dedup_calibration(dedup_model))
    rejected = catalog.dedup_pairs(accepted=False, limit=max_groups)
    rejected_total = catalog.dedup_pair_count(accepted=False)
    rejected_tiles = [
        (
            Tile(f"{p['drop_key']}/{p['key_a']}", "", thumbs(p["uri_a"], thumb_side)),
            Tile(p["key_b"], "", thumbs(p["uri_b"], thumb_side)),
            f"proposed by {p['tier']} ({p['similarity']:.3f}{', mirrored' if p['mirrored'] else ''})",
            _evidence(p),
        )
        for p in rejected
    ]

    leaks = catalog.leaks()
    leak_tiles = [
        (
            Tile(
                f"{x['drop_key']}/{x['object_key']}",
                f"leaks: {x['tier'] or 'representative'}",
                thumbs(x["source_uri"], thumb_side),
            ),
            Tile(f"{x['protected_drop']}/{x['protected_key']} (protected)", "", thumbs(x["protected_uri"], thumb_side)),
        )
        for x in leaks[:max_groups]
    ]

    overview = embedding_overview(catalog, model, selection_name, groups, thumb_side=thumb_side, thumbs=thumbs, logger=logger)
    quality, quality_counts = {}, {}
    for flag in QUALITY_FLAGS:
        count, rows_ = catalog.quality_flagged(flag, 12)
        quality_counts[flag] = count
        quality[flag] = [
            Tile(f"{r['drop_key']}/{r['object_key']}", _quality_detail(flag, r), thumbs(r["source_uri"], thumb_side))
            for r in rows_
        ]
    data = ReportData(
        title=f"Curation report: {selection_name}",
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        counts={**counts, "duplicate_groups": len(groups), "subset_size": len(items)},
        selection={
            "name": selection_name,
            "strategy": info.strategy,
            "model": info.model,
            "pool_size": info.pool_size,
            **{k: _describe(v) for k, v in info.config.items() if k not in ("model", "model_choice", "strategies_given")},
        },
        models={
            "selection, embedding map, clusters, outliers": info.model
            + (f" ({info.config['model_choice']})" if info.config.get("model_choice") not in (None, info.model) else ""),
            "duplicates, threshold explorer": "sha256, pHash and " + (", ".join(dedup_models) or "none yet"),
        },
        dedup_settings={
            st.drop_key: f"pHash Hamming <= {st.max_hamming}, cosine >= {st.min_cosine:g} on {st.model}"
            + (
                f", pixel-verified (agreeing share >= {st.verifier.get('min_share', 0):g}, coverage >= "
                f"{st.verifier.get('min_coverage', 0):g})"
                if st.verifier
                else ", thresholds only (not verified)"
            )
            + f" ({st.deduplicated_at:%Y-%m-%d %H:%M})"
            for st in settings
        },
        calibration=calibration,
        rejected_pairs=rejected_tiles,
        rejected_total=rejected_total,
        duplicate_groups=dup_tiles,
        subset=subset_tiles,
        failed=failed_tiles,
        groups_total=len(groups),
        threshold=threshold,
        nn_similarities=[x[2] for x in nn],
        pairs_above=[(tile(a), tile(b), sim) for a, b, sim in above],
        pairs_below=[(tile(a), tile(b), sim) for a, b, sim in below],
        leaks=leak_tiles,
        comparison=info.comparison,
        **overview,
        quality=quality,
        quality_counts=quality_counts,
        missing_sources=sorted(thumbs.missing.items()),
        **_label_sections(catalog, selection_name, items, thumbs, thumb_side, max_groups),
    )
    if thumbs.missing:
        logger.warning(
            "report %s: %d source file(s) could not be shown: %s",
            selection_name,
            len(thumbs.missing),
            "; ".join(f"{uri} ({why})" for uri, why in sorted(thumbs.missing.items())[:20]),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(data), encoding="utf-8")
    tmp.replace(path)  # a reader never sees a half-written report
    markdown = render_markdown(data, str(path), report_url=report_url(str(path)) if report_url else None)
    logger.info("report for %s written to %s", selection_name, path)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "markdown": markdown,
        "duplicate_groups": len(groups),
        "groups_shown": len(dup_tiles),
        "subset_shown": len(subset_tiles),
        "thumbnails_missing": sum(1 for t in subset_tiles if t.thumb is None)
        + sum(1 for g in dup_tiles for t in g if t.thumb is None),
        "missing_sources": dict(sorted(thumbs.missing.items())),
        "failed_objects": len(failed_tiles),
        "leaks": len(leaks),
        "nn_sampled": len(nn),
        "counts": data.counts,
        "models": data.models,
    }


def _label_sections(catalog: Catalog, selection: str, items: list[dict], thumbs: Thumbnails, side: int, limit: int) -> dict:
    """Labels and objects of the pool and the subset, the newest label review's suspects beside
    their neighbours, and the selection's subset_evaluation."""
    from curation_pipeline.steps.objects import crop_jpeg
    from curation_pipeline.steps.previews import suspect_neighbours

    def crop(uri: str, box) -> str | None:
        if box is None:
            return thumbs(uri, side)
        try:
            return thumbnail_data_uri(crop_jpeg(thumbs.stores.read_uri(uri), box), max_side=side)
        except (OSError, ValueError, NotImplementedError):
            return None

    protected = set(catalog.protected_drops())
    drops = [d for d in catalog.known_drops() if d not in protected]  # the pool selections draw from
    sets = catalog.current_set_ids("labels", drops) or catalog.current_set_ids("predictions", drops)
    objects = catalog.label_objects(sets) if sets else []
    picked = {int(it["image_id"]) for it in items}
    pool_counts = Counter(o["class_name"] for o in objects)
    subset_objects = [o for o in objects if o["image_id"] in picked]
    sub_counts = Counter(o["class_name"] for o in subset_objects)
    class_counts = [(c, pool_counts[c], sub_counts.get(c, 0)) for c in sorted(pool_counts, key=lambda c: (pool_counts[c], c))]
    object_tiles = [
        Tile(o["class_name"], f"{o['drop_key']}/{o['object_key']}", crop(o["source_uri"], o["box"]))
        for o in subset_objects
        if o["box"] is not None
    ][:limit]
    review_name = catalog.latest_label_review()
    suspects, review = [], None
    if review_name:
        issues = catalog.label_issues(review_name, 12)
        for x, near in suspect_neighbours(catalog, issues, 4):
            row = [
                Tile(
                    f"#{x['rank']} {x['kind']}: {x['given'] or '-'} -> {x['suggested'] or '-'}",
                    f"{x['drop_key']}/{x['object_key']} · {x['score']:.2f} · {x['reason']}",
                    crop(x["source_uri"], x["box"]),
                )
            ]
            row += [
                Tile(
                    n["label"],
                    f"neighbour, cosine {n['similarity']:.2f}",
                    crop(n["source_uri"], n["box"]) if n["source_uri"] else None,
                )
                for n in near
            ]
            suspects.append(row)
        info = catalog.label_review(review_name) or {}
        review = {"name": review_name, "total": (info.get("stats") or {}).get("kept", len(issues))}
    evaluation = catalog.subset_evaluation(selection)
    return {
        "class_counts": class_counts,
        "objects": object_tiles,
        "suspects": suspects,
        "review": review,
        "evaluation": evaluation["result"] if evaluation else None,
    }


def write_retrieval_page(
    catalog: Catalog, name: str, out_dir: Path, *, thumb_side: int = 128, stores: ImageStores = DEFAULT_STORES
) -> dict:
    """The page for one retrieval set (rank, similarity, which query each result matched);
    thumbnails read through `stores`."""
    from curation_pipeline.core.report import render_retrieval_html

    items = catalog.retrieval_items(name)
    config = catalog.retrieval_config(name) or {}
    thumbs = Thumbnails(stores)
    refs = sorted({it["query_ref"] for it in items})
    queries = [
        Tile(ref, "text prompt") if ref.startswith("text:") else Tile(ref, "", thumbs(ref, thumb_side)) for ref in refs[:50]
    ]
    results = [
        Tile(
            f"#{it['rank']} {it['drop_key']}/{it['object_key']}",
            f"cosine {it['similarity']:.3f} (query {it['query_ref']})",
            thumbs(it["source_uri"], thumb_side),
        )
        for it in items
    ]
    settings = {k: v for k, v in config.items() if v not in (None, [], ())}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(
        render_retrieval_html(
            f"Retrieval: {name}", datetime.now(timezone.utc).isoformat(timespec="seconds"), settings, queries, results
        ),
        encoding="utf-8",
    )
    tmp.replace(path)
    return {"path": str(path), "results": len(results), "thumbnails_missing": sum(1 for t in results if t.thumb is None)}


def _evidence(p: dict) -> str:
    """One line of what the verifier saw for a pair."""
    parts = [p["reason"]]
    if p.get("inliers"):
        parts.append(f"{p['inliers']}/{p['matches']} keypoint matches agree")
    if p.get("coverage"):
        parts.append(f"overlap {p['coverage']:.0%} of the smaller share")
    if p.get("agreement"):
        parts.append(f"{p['agreement']:.0%} of pixels agree")
    if p.get("scale") and p.get("reason") == "transform not an edit":
        parts.append(f"scale {p['scale']:.2f}, rotation {p['rotation_deg']:.1f} deg")
    return "; ".join(parts)


def _calibration_view(record) -> dict | None:
    """The latest calibration as the report shows it: a summary and the two curves (every 0.05,
    plus the values in use), the used rows marked."""
    if record is None:
        return None
    used_c = record.proposal_min_cosine
    used_s = record.verifier.get("min_share")
    cosine = [
        {**r, "picked": abs(r["min_cosine"] - used_c) < 1e-9}
        for r in record.curve.get("cosine", [])
        if round(r["min_cosine"] * 100) % 5 == 0 or abs(r["min_cosine"] - used_c) < 1e-9
    ]
    share = [
        {**r, "picked": used_s is not None and abs(r["min_share"] - used_s) < 1e-9}
        for r in record.curve.get("share", [])
        if round(r["min_share"] * 100) % 5 == 0 or (used_s is not None and abs(r["min_share"] - used_s) < 1e-9)
    ]
    s = record.summary
    return {
        "note": f"Calibration #{record.calibration_id} of {record.model} ({record.created_at:%Y-%m-%d %H:%M}): "
        f"{s.get('edits', 0)} synthetic edits of sampled images against {s.get('neighbours', 0)} nearest distinct "
        f"neighbours; targets: recall {record.target_recall:g} for proposals, precision {record.target_precision:g} "
        "for the verifier.",
        "summary": {
            "proposal cosine (used)": f"{used_c:g}: proposes {s.get('proposal_recall', 0):.1%} of edits, "
            f"{s.get('neighbours_proposed', 0):.1%} of nearest neighbours",
            "proposal pHash radius": f"{record.proposal_max_hamming} bits ({s.get('edits_within_proposal_hamming', 0):.1%} "
            "of edits within it)",
            "verifier acceptance (used)": f"agreeing share >= {used_s:g}: accepts {s.get('verifier_recall', 0):.1%} of "
            f"edits at precision {s.get('verifier_precision', 0):.3f}"
            + (
                ""
                if s.get("precision_target_met", True)
                else f" (target {record.target_precision:g} not reachable without discarding most copies: "
                f"{s.get('verifier_accepts_neighbours_at_defaults', 0)} nearest neighbours agree like copies; "
                "they may be duplicates the corpus still holds, so the default was kept)"
            ),
        },
        "cosine": cosine,
        "share": share,
    }
