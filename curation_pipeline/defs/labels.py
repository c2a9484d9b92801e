"""Labels and objects: drop_labels and object_embeddings per capture drop (in the ingest job), the
unpartitioned label_review and dataset_split that read every drop's current labels, and
subset_evaluation per selection."""

from typing import Optional

import dagster as dg

from curation_pipeline.steps.evaluation import evaluate_selection
from curation_pipeline.steps.label_review import ReviewSpec, review_labels
from curation_pipeline.steps.labels import import_sidecars
from curation_pipeline.steps.objects import embed_objects
from curation_pipeline.steps.previews import suspects_markdown
from curation_pipeline.steps.splits import SplitSpec, make_split

from .curation import curated_subset
from .dedup import dedup_clusters
from .ingest import image_embeddings, per_drop_metadata, raw_image_manifest
from .partitions import INGEST_BACKFILL_POLICY, capture_drops, selections
from .progress import progress_in_log
from .resources import DatabaseResource, EmbedderResource, ImageStoreResource, project_models

GROUP = "labels"


@dg.asset(
    partitions_def=capture_drops,
    backfill_policy=INGEST_BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"python", "pgvector"},
    owners=["team:curation"],
    deps=[raw_image_manifest],
    description="Label and prediction files that travel with the drop (under `_labels/`: COCO .json, "
    "CSV/Parquet, VOC .xml, a YOLO folder; `_labels/predictions/` for predictions), imported as new versions "
    "of the drop's label sets when their content changed. Files imported with `curation labels import` need no "
    "run of this asset.",
)
def drop_labels(
    context: dg.AssetExecutionContext, database: DatabaseResource, image_store: ImageStoreResource
) -> dg.MaterializeResult:
    catalog = database.catalog()
    by_drop = {}
    for key in catalog.drops_in_order(context.partition_keys):
        location = image_store.location_for(key, catalog.drop_source(key))
        imported = import_sidecars(catalog, image_store.store(location), location, key, logger=context.log)
        sets = catalog.label_sets(key)
        by_drop[key] = {
            "sidecar_files": len(imported),
            "new_versions": sum(1 for s in imported if s["created"]),
            "label_sets": dg.MetadataValue.json(
                [{k: s[k] for k in ("kind", "version", "format", "objects", "source")} for s in sets]
            ),
        }
    return dg.MaterializeResult(metadata=per_drop_metadata(context, by_drop))


@dg.asset(
    partitions_def=capture_drops,
    backfill_policy=INGEST_BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"pytorch", "pgvector"},
    owners=["team:curation"],
    deps=[drop_labels, image_embeddings],
    pool="gpu",
    description="One vector per box of the drop's current labels and predictions: the box cut with 15% context "
    "(at least 32 px, upscaled under 64 px; boxes under 16 px counted as tiny) and embedded by the semantic model, "
    "so objects are searched ('more objects like this crop'), reviewed and balanced like images.",
    check_specs=[
        dg.AssetCheckSpec(
            "every_box_embedded",
            asset="object_embeddings",
            description="Every box has a vector; boxes of unreadable images are listed (WARN).",
        )
    ],
)
def object_embeddings(
    context: dg.AssetExecutionContext,
    database: DatabaseResource,
    embedder: EmbedderResource,
    image_store: ImageStoreResource,
):
    catalog = database.catalog()
    stores = image_store.stores()
    model = embedder.load()
    by_drop = {}
    totals = {"boxes": 0, "embedded": 0, "images_unreadable": 0}
    with progress_in_log(context.log):
        for key in catalog.drops_in_order(context.partition_keys):
            stats = embed_objects(catalog, model, key, stores=stores, logger=context.log)
            by_drop[key] = {k: v for k, v in stats.items() if v is not None}
            for k in totals:
                totals[k] += stats[k]
    yield dg.MaterializeResult(
        metadata=per_drop_metadata(context, by_drop),
        check_results=[
            dg.AssetCheckResult(
                check_name="every_box_embedded",
                passed=totals["embedded"] == totals["boxes"],
                severity=dg.AssetCheckSeverity.WARN,
                metadata=totals,
            )
        ],
    )


class ReviewConfig(dg.Config):
    name: str = "default"
    """Name the review is stored under (`curation labels suspects --name`, exports)."""
    drop_keys: Optional[list[str]] = None
    """Drops to review (default: every drop with labels)."""
    version: Optional[str] = None
    """A label version to review (default: each drop's newest)."""
    k: int = 10
    """Nearest neighbours per labelled item (kNN disagreement and the neighbours shown)."""
    limit: int = 1000
    """Suspects kept, most suspect first."""
    overlap_iou: float = 0.7
    """Boxes of different classes overlapping at least this much are one suspect."""
    missing_min_score: float = 0.5
    """A predicted box at least this confident that no labelled box matches is a missing-label suspect."""


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pgvector"},
    owners=["team:curation"],
    deps=[
        dg.AssetDep(object_embeddings, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(image_embeddings, partition_mapping=dg.AllPartitionMapping()),
    ],
    description="Labels that are probably wrong and objects that are probably unlabelled, ranked: confident "
    "learning (cleanlab) on imported prediction probabilities or a linear probe's out-of-fold probabilities, "
    "kNN label disagreement in embedding space, boxes of two classes on one spot, and confident predictions no "
    "labelled box matches. Each suspect is shown beside its nearest labelled neighbours.",
)
def label_review(
    context: dg.AssetExecutionContext,
    config: ReviewConfig,
    database: DatabaseResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
    image_store: ImageStoreResource,
) -> dg.MaterializeResult:
    catalog = database.catalog()
    model = project_models(embedder, descriptor).semantic_id()
    spec = ReviewSpec(
        name=config.name,
        drop_keys=tuple(config.drop_keys) if config.drop_keys else None,
        version=config.version,
        k=config.k,
        limit=config.limit,
        overlap_iou=config.overlap_iou,
        missing_min_score=config.missing_min_score,
    )
    stats = review_labels(catalog, spec, model=model, logger=context.log)
    metadata = {
        "suspects": stats["kept"],
        "by_kind": dg.MetadataValue.json(stats["by_kind"]),
        "labels": stats["labels"],
        "predictions": stats["predictions"],
        "model": model,
        "seconds": stats["seconds"],
        "top_suspects": dg.MetadataValue.md(suspects_markdown(catalog, config.name, image_store.stores())),
    }
    for key in ("image_labels", "box_labels"):
        if key in stats:
            metadata[key] = dg.MetadataValue.json(stats[key])
    if stats["notes"]:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in stats["notes"]))
    return dg.MaterializeResult(metadata=metadata)


class SplitConfig(dg.Config):
    name: str = "default"
    """Name the split is stored under (`curation labels export --split NAME`)."""
    fractions: str = "train=0.8,val=0.1,test=0.1"
    """Parts and their shares: 'train=0.8,val=0.1,test=0.1' or '0.8,0.1,0.1'."""
    drop_keys: Optional[list[str]] = None
    """Drops to split (default: every unprotected drop with labels)."""
    version: Optional[str] = None
    """Label version (default: each drop's newest)."""
    clusters: int = 0
    """k-means clusters to stratify by (0: about one per 50 images, at most 64)."""
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"python", "pgvector"},
    owners=["team:curation"],
    deps=[
        dg.AssetDep(dedup_clusters, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(drop_labels, partition_mapping=dg.AllPartitionMapping()),
    ],
    description="A named train/val/test split of the labelled images, stratified by class and by embedding "
    "cluster; every duplicate group lies in one part (checked against the dedup clusters: a leaking split is "
    "refused). Protected drops (evaluation sets) are left out.",
    check_specs=[
        dg.AssetCheckSpec(
            "no_duplicates_across_parts",
            asset="dataset_split",
            blocking=True,
            description="No duplicate group has members in two parts.",
        )
    ],
)
def dataset_split(
    context: dg.AssetExecutionContext,
    config: SplitConfig,
    database: DatabaseResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
) -> dg.MaterializeResult:
    catalog = database.catalog()
    model = project_models(embedder, descriptor).semantic_id()
    spec = SplitSpec(
        name=config.name,
        fractions=config.fractions,
        drop_keys=tuple(config.drop_keys) if config.drop_keys else None,
        version=config.version,
        clusters=config.clusters,
        seed=config.seed,
    )
    stats = make_split(catalog, spec, model=model, logger=context.log)
    leaks = catalog.split_leaks(config.name)
    table = ["| part | images | " + " | ".join(sorted({c for p in stats["parts"].values() for c in p["classes"]})) + " |"]
    classes = sorted({c for p in stats["parts"].values() for c in p["classes"]})
    table.append("|" + "---|" * (len(classes) + 2))
    for part, entry in stats["parts"].items():
        table.append(f"| {part} | {entry['items']} | " + " | ".join(str(entry["classes"].get(c, 0)) for c in classes) + " |")
    return dg.MaterializeResult(
        metadata={
            "images": stats["images"],
            "duplicate_groups": stats["duplicate_groups"],
            "parts": dg.MetadataValue.md("\n".join(table)),
            "clusters": stats["clusters"],
        },
        check_results=[
            dg.AssetCheckResult(check_name="no_duplicates_across_parts", passed=not leaks, metadata={"leaks": len(leaks)})
        ],
    )


class EvaluationConfig(dg.Config):
    eval_drop: Optional[str] = None
    """The protected, labelled drop to score on (default: the only protected drop with labels)."""
    budgets: list[int] = []
    """Budgets to score besides a quarter, half and all of the selection's labelled picks."""
    seeds: int = 5
    """Random subsets per budget."""


def evaluation_markdown(result: dict) -> str:
    lines = [
        f"Linear probe accuracy on `{result['eval_drop']}` ({result['eval']} images, {result['classes']} classes); "
        f"the whole pool ({result['pool']} labelled images): **{result['everything']}**",
        "",
        "| budget | subset | random (mean ± std of %d) |" % result["seeds"],
        "|---|---|---|",
    ]
    for i, b in enumerate(result["budgets"]):
        lines.append(f"| {b} | {result['subset'][i]} | {result['random_mean'][i]} ± {result['random_std'][i]} |")
    return "\n".join(lines)


@dg.asset(
    partitions_def=selections,
    group_name=GROUP,
    kinds={"python", "scikitlearn"},
    owners=["team:curation"],
    deps=[curated_subset],
    description="What the subset buys: a linear probe on the embeddings of the selection's labelled picks, of "
    "random subsets of equal size and of every labelled image, scored on a protected labelled evaluation drop, "
    "at several budgets.",
)
def subset_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    database: DatabaseResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
) -> dg.MaterializeResult:
    catalog = database.catalog()
    info = catalog.selection_info(context.partition_key)
    if info is None:
        raise ValueError(f"selection {context.partition_key!r} does not exist: materialize curated_subset first")
    model = info.model or project_models(embedder, descriptor).semantic_id()
    result = evaluate_selection(
        catalog,
        context.partition_key,
        model=model,
        eval_drop=config.eval_drop,
        budgets=tuple(config.budgets),
        seeds=config.seeds,
        logger=context.log,
    )
    gain = [round(s - r, 4) for s, r in zip(result["subset"], result["random_mean"])]
    return dg.MaterializeResult(
        metadata={
            "curve": dg.MetadataValue.md(evaluation_markdown(result)),
            "budgets": dg.MetadataValue.json(result["budgets"]),
            "subset_accuracy": dg.MetadataValue.json(result["subset"]),
            "random_accuracy": dg.MetadataValue.json(result["random_mean"]),
            "gain_over_random": dg.MetadataValue.json(gain),
            "everything_accuracy": result["everything"],
            "eval_drop": result["eval_drop"],
            "model": model,
        }
    )
