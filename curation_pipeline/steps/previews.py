"""Small pictures for the Dagster UI: markdown with thumbnails as data: URIs, for an asset's
materialization metadata (which the UI renders as markdown). What duplicated what in a drop, what a
selection picked, what a query found, each readable at a glance on the asset page; the HTML report
holds the full galleries.

Metadata lives in Dagster's event log, one copy per materialization, so every preview is capped:
a few small thumbnails (THUMB_SIDE px, JPEG quality 60, about 1-2 KB each), at most MAX_THUMBS."""

from __future__ import annotations

from curation_pipeline.core.report import thumbnail_data_uri
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.image_store import ImageStores
from curation_pipeline.steps.objects import crop_jpeg

THUMB_SIDE = 56
THUMB_QUALITY = 60
MAX_THUMBS = 16


class _Thumbs:
    """Thumbnails read through `stores`, at most `budget` of them; None for a source that cannot be
    shown (moved, unreadable) or past the budget."""

    def __init__(self, stores: ImageStores, budget: int = MAX_THUMBS) -> None:
        self.stores = stores
        self.budget = budget

    def __call__(self, uri: str) -> str | None:
        if self.budget <= 0:
            return None
        try:
            thumb = thumbnail_data_uri(self.stores.read_uri(uri), max_side=THUMB_SIDE, quality=THUMB_QUALITY)
        except (OSError, ValueError, NotImplementedError):
            return None
        if thumb is not None:
            self.budget -= 1
        return thumb


def _cell(thumb: str | None, caption: str) -> str:
    caption = _escape(caption)
    return f"![{caption}]({thumb}) {caption}" if thumb else f"(no preview) {caption}"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("[", "\\[").replace("]", "\\]").replace("\n", " ")


def duplicate_groups_markdown(
    catalog: Catalog, drop_key: str, stores: ImageStores, *, groups: int = 4, per_group: int = 3
) -> str:
    """The drop's largest duplicate groups (members of this drop; the representative may be in an
    earlier drop): representative, then up to `per_group` duplicates with tier and similarity."""
    found = catalog.duplicate_groups([drop_key])
    if not found:
        return f"No duplicates in drop {drop_key}."
    found.sort(key=lambda g: (-len(g["members"]), g["representative"]["object_key"]))
    thumbs = _Thumbs(stores)
    header = "| representative | " + " | ".join(f"duplicate {i + 1}" for i in range(per_group)) + " |"
    lines = [
        f"**{len(found)} duplicate groups** in drop {drop_key}; the {min(groups, len(found))} largest:",
        "",
        header,
        "|" + "---|" * (per_group + 1),
    ]
    for group in found[:groups]:
        rep = group["representative"]
        cells = [_cell(thumbs(rep["source_uri"]), f"{rep['drop_key']}/{rep['object_key']}")]
        for member in group["members"][:per_group]:
            cells.append(
                _cell(thumbs(member["source_uri"]), f"{member['object_key']} ({member['tier']} {member['similarity']:.3f})")
            )
        more = len(group["members"]) - per_group
        if more > 0:
            cells[-1] += f" +{more} more"
        cells += [""] * (per_group + 1 - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_markdown(catalog: Catalog, name: str, stores: ImageStores, *, rows: int = 20, strip: int = 8) -> str:
    """A thumbnail strip of the first `strip` picks, then the first `rows` picks: rank, image,
    cluster (group) and the strategy that picked it."""
    items = catalog.selection_items(name)
    if not items:
        return f"Selection {name} is empty."
    thumbs = _Thumbs(stores)
    shown = items[:strip]
    lines = [
        f"**{len(items)} images** in selection {name}; the first {len(shown)}:",
        "",
        "| " + " | ".join(f"#{it['rank']}" for it in shown) + " |",
        "|" + "---|" * len(shown),
        "| " + " | ".join(_cell(thumbs(it["source_uri"]), it["object_key"]) for it in shown) + " |",
        "",
        "| rank | image | cluster | picked by |",
        "|---|---|---|---|",
    ]
    for it in items[:rows]:
        cluster = it.get("group_key") or "-"
        lines.append(
            f"| {it['rank']} | {_escape(it['drop_key'] + '/' + it['object_key'])} | {_escape(cluster)} | "
            f"{_escape(it.get('reason') or '-')} |"
        )
    if len(items) > rows:
        lines.append(f"\n{len(items) - rows} more in the report.")
    return "\n".join(lines)


def retrieval_markdown(catalog: Catalog, name: str, stores: ImageStores, *, hits: int = 10) -> str:
    """Each query with its top hits (rank, similarity, thumbnail)."""
    items = catalog.retrieval_items(name)
    if not items:
        return f"Retrieval {name} found nothing."
    thumbs = _Thumbs(stores)
    by_query: dict[str, list[dict]] = {}
    for it in items:
        by_query.setdefault(str(it["query_ref"]), []).append(it)
    per_query = max(1, hits // len(by_query))
    lines = [f"**{len(items)} hits** for {len(by_query)} queries in retrieval {name}:"]
    for query, found in list(by_query.items())[:5]:
        shown = found[:per_query]
        lines += [
            "",
            f"query `{_escape(query)}`:",
            "",
            "| " + " | ".join(f"#{it['rank']} ({it['similarity']:.3f})" for it in shown) + " |",
            "|" + "---|" * len(shown),
            "| " + " | ".join(_cell(thumbs(it["source_uri"]), it["drop_key"] + "/" + it["object_key"]) for it in shown) + " |",
        ]
    return "\n".join(lines)


class _ObjectThumbs(_Thumbs):
    """Thumbnails of an image, or of an object's crop when a box is given."""

    def of(self, uri: str, box=None) -> str | None:
        if box is None:
            return self(uri)
        if self.budget <= 0:
            return None
        try:
            thumb = thumbnail_data_uri(crop_jpeg(self.stores.read_uri(uri), box), max_side=THUMB_SIDE, quality=THUMB_QUALITY)
        except (OSError, ValueError, NotImplementedError):
            return None
        if thumb is not None:
            self.budget -= 1
        return thumb


def suspect_neighbours(catalog: Catalog, issues: list[dict], per: int) -> list[tuple[dict, list[dict]]]:
    """Each suspect with its first `per` neighbours as {label, similarity, source_uri, box} (box:
    the neighbour object's, None for an image; source_uri None when the image is gone)."""
    near = [(x, (x["neighbours"] or [])[:per]) for x in issues]
    boxes = catalog.objects_by_id([n["object_id"] for _, ns in near for n in ns if n.get("object_id")])
    images = catalog.images_by_id([n["image_id"] for _, ns in near for n in ns])
    return [
        (
            x,
            [
                {
                    "label": n["label"],
                    "similarity": n["similarity"],
                    "source_uri": images[n["image_id"]]["source_uri"] if n["image_id"] in images else None,
                    "box": boxes.get(n["object_id"]) if n.get("object_id") else None,
                }
                for n in ns
            ],
        )
        for x, ns in near
    ]


def suspects_markdown(catalog: Catalog, review: str, stores: ImageStores, *, rows: int = 4, neighbours: int = 3) -> str:
    """The top suspects of a label review, each beside its nearest labelled neighbours and their
    labels (object crops for box labels), then a table of the first suspects with their reasons."""
    issues = catalog.label_issues(review, 25)
    if not issues:
        return f"Label review {review}: no suspects."
    thumbs = _ObjectThumbs(stores)
    lines = [
        f"**{len(issues)}{'+' if len(issues) == 25 else ''} suspects** in label review {review}; the top "
        f"{min(rows, len(issues))} beside their nearest "
        "labelled neighbours:",
        "",
        "| suspect | " + " | ".join(f"neighbour {i + 1}" for i in range(neighbours)) + " |",
        "|" + "---|" * (neighbours + 1),
    ]
    for x, near in suspect_neighbours(catalog, issues[:rows], neighbours):
        label = f"#{x['rank']} {x['kind']}: {x['given'] or '-'} → {x['suggested'] or '-'} ({x['score']:.2f})"
        cells = [_cell(thumbs.of(x["source_uri"], x["box"]), label)]
        for n in near:
            cells.append(
                _cell(
                    thumbs.of(n["source_uri"], n["box"]) if n["source_uri"] else None, f"{n['label']} ({n['similarity']:.2f})"
                )
            )
        cells += [""] * (neighbours + 1 - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| rank | image | kind | given | suggested | score | why |", "|---|---|---|---|---|---|---|"]
    for x in issues[:15]:
        lines.append(
            f"| {x['rank']} | {_escape(x['drop_key'] + '/' + x['object_key'])} | {x['kind']} | {_escape(x['given'] or '-')} | "
            f"{_escape(x['suggested'] or '-')} | {x['score']:.3f} | {_escape(x['reason'])} |"
        )
    return "\n".join(lines)
