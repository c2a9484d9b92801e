"""curated_subset: one partition per named selection (its settings in SelectionConfig)."""

import dataclasses
import typing
from typing import Optional

import dagster as dg
import pydantic

from curation_pipeline.core.quality import QUALITY_FLAGS
from curation_pipeline.resources.image_store import read_local_file
from curation_pipeline.steps.annotate import load_annotations
from curation_pipeline.steps.embed import embed_query_images
from curation_pipeline.steps.previews import selection_markdown
from curation_pipeline.steps.select import SelectionSpec, select_subset, spec_from_mapping
from curation_pipeline.steps.strategies import STRATEGIES, StrategySpec, option_docs

from .dedup import dedup_clusters
from .partitions import FOLLOW_DEDUP, selections
from .resources import DatabaseResource, EmbedderResource, ImageStoreResource, ModelChoiceResource, project_models


def _strategy_config() -> type[dg.Config]:
    """StrategyConfig, built from StrategySpec's fields and their documentation (steps/strategies.py):
    a strategy option added to the registry is in the run-config schema (and the UI's launchpad) with
    nothing to change here. Tuples become lists; `name` lists the registered strategies."""
    docs = option_docs()
    hints = typing.get_type_hints(StrategySpec)
    fields: dict[str, typing.Any] = {}
    for f in dataclasses.fields(StrategySpec):
        kind: typing.Any = hints[f.name]
        default: typing.Any = f.default
        if typing.get_origin(kind) is tuple:
            kind, default = list[typing.get_args(kind)[0]], list(default)  # type: ignore[misc]
        doc = docs.get(f.name) or " | ".join(STRATEGIES)
        field = pydantic.Field(description=doc) if default is dataclasses.MISSING else pydantic.Field(default, description=doc)
        fields[f.name] = (kind, field)
    model: type[dg.Config] = pydantic.create_model("StrategyConfig", __base__=dg.Config, __module__=__name__, **fields)
    return model


StrategyConfig = _strategy_config()


class SelectionConfig(dg.Config):
    budget: Optional[int] = None
    """Maximum number of images to select. Left empty (as in automated runs after new drops), the
    selection's stored settings are reused; a new selection without a budget takes 50."""
    strategies: list[StrategyConfig] = []  # type: ignore[valid-type]  # built at import from the registry
    """Weighted strategies; default: cluster coverage + diversity."""
    min_distance: float = 0.0
    """With diversity: stop once the farthest remaining image is closer than this cosine distance."""
    drop_keys: Optional[list[str]] = None
    """Restrict the pool to these drops (default: every drop)."""
    where: list[str] = []
    """Metadata filters, e.g. 'brightness>=0.2', 'camera_model=X100', 'label in car,truck'."""
    exclude: list[str] = pydantic.Field(default=[], description="Quality flags to leave out: " + ", ".join(QUALITY_FLAGS))
    seed: int = 0
    """Seed for k-means, random scores and the random comparison subset."""
    candidate_pool_cap: Optional[int] = None
    """Select from a seeded sample of at most this many candidates (bounds time on huge pools)."""
    annotations_file: Optional[str] = None
    """CSV/Parquet file of per-image values (e.g. model uncertainty) to load before selecting."""
    annotations_key_column: str = "uri"
    """Column of annotations_file naming the image (source URI, drop/object_key or unique object key)."""
    model: Optional[str] = None
    """Model whose vectors to select on: semantic, domain, descriptor or a stored model id (default: the
    selection's stored choice on an automated re-run, else the project's selection model,
    CURATION_SELECTION_MODEL, normally semantic). The report's map, clusters and outliers use it too."""

    def spec(self, stored: Optional[dict] = None) -> SelectionSpec:
        """The spec from this config, or the stored one when no budget is given (re-selection with
        the same settings after new drops arrive)."""
        if self.budget is None and stored:
            return spec_from_mapping(stored)
        return spec_from_mapping({**self.model_dump(), "budget": 50 if self.budget is None else self.budget})


@dg.asset(
    partitions_def=selections,
    group_name="curate",
    kinds={"pgvector"},
    owners=["team:curation"],
    deps=[dg.AssetDep(dedup_clusters, partition_mapping=dg.AllPartitionMapping())],
    automation_condition=FOLLOW_DEDUP,
    description="The subset a labeling budget should buy: valid, non-duplicate images chosen by weighted "
    "strategies (diversity, typicality, cluster coverage, outliers, query similarity, metadata balance, "
    "user scores) after filters; rows keep rank, score and the strategy that chose them, and the subset "
    "is compared with a random one of equal size.",
    check_specs=[
        dg.AssetCheckSpec(
            "no_duplicates_selected",
            asset="curated_subset",
            blocking=True,
            description="No selected image is a duplicate of another image.",
        ),
        dg.AssetCheckSpec("within_budget", asset="curated_subset", blocking=True, description="1 <= selected <= budget."),
    ],
)
def curated_subset(
    context: dg.AssetExecutionContext,
    config: SelectionConfig,
    database: DatabaseResource,
    embedder: EmbedderResource,
    descriptor: EmbedderResource,
    models: ModelChoiceResource,
    image_store: ImageStoreResource,
) -> dg.MaterializeResult:
    catalog = database.catalog()
    excluded = drops_not_deduplicated(context, catalog)
    if excluded:
        context.log.warning(
            f"selection {context.partition_key}: {len(excluded)} drop(s) left out, no dedup results: "
            + "; ".join(f"{k} ({why})" for k, why in list(excluded.items())[:10])
        )
    previous = catalog.selection_info(context.partition_key)
    stored = previous.config if previous else None
    # the selection's own choice, else (an automated re-run) the one it was made with, else the project's
    choice = config.model or ((stored or {}).get("model_choice") if config.budget is None else None) or models.selection
    resolved = project_models(embedder, descriptor).resolve(catalog, choice)
    model = resolved.model_id
    context.log.info(f"selection {context.partition_key}: model {resolved.describe()}")
    if config.annotations_file:
        load_annotations(catalog, config.annotations_file, key_column=config.annotations_key_column, logger=context.log)

    def embed_files(paths: list[str]):
        blobs = []
        for p in paths:
            try:  # never blocks on a FIFO, refuses special files and oversized reads
                blobs.append((p, read_local_file(p)))
            except (OSError, ValueError) as exc:
                raise ValueError(f"selection {context.partition_key!r}: cannot read query image {p!r}: {exc}") from exc
        return embed_query_images(resolved.embedder(), blobs, resolved.options)

    spec = config.spec(stored)
    stats = select_subset(
        catalog,
        context.partition_key,
        spec,
        model=model,
        model_choice=resolved.role or model,
        query_embedder=embed_files,
        logger=context.log,
    )
    dupes = catalog.selected_duplicates(context.partition_key)
    info = catalog.selection_info(context.partition_key)
    comparison = info.comparison if info else None
    metadata = {k: v for k, v in stats.items() if v is not None and not isinstance(v, dict)}
    metadata["picked_by"] = dg.MetadataValue.json(stats["picked_by"])
    metadata["model_role"] = resolved.role or "explicit id"
    if comparison:
        metadata["vs_random"] = dg.MetadataValue.md(comparison_markdown(comparison))
    metadata["picks"] = dg.MetadataValue.md(selection_markdown(catalog, context.partition_key, image_store.stores()))
    metadata["drops_left_out"] = dg.MetadataValue.json(excluded)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="no_duplicates_selected", passed=dupes == 0, metadata={"selected_duplicates": dupes}
            ),
            dg.AssetCheckResult(
                check_name="within_budget",
                passed=1 <= stats["selected"] <= spec.budget,
                metadata={"selected": stats["selected"], "budget": spec.budget},
            ),
        ],
    )


def drops_not_deduplicated(context: dg.AssetExecutionContext, catalog, limit: int = 20) -> dict[str, str]:
    """Drop partitions a selection cannot draw from (no dedup results), with why, for the first
    `limit`: a failed or empty drop never blocks the selections (the automation skips it), and this
    says which drops are missing from them."""
    done = set(catalog.deduplicated_drops(exclude=""))
    missing = [k for k in context.instance.get_dynamic_partitions("capture_drops") if k not in done]
    reasons = {}
    for key in missing[:limit]:
        records = context.instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
        run = records[0].dagster_run if records else None
        if run is None:
            reasons[key] = "never ingested"
        elif run.status == dg.DagsterRunStatus.FAILURE:
            reasons[key] = f"its last run failed ({run.run_id[:8]}, {run.job_name})"
        elif not run.is_finished:
            reasons[key] = f"being ingested (run {run.run_id[:8]})"
        else:
            reasons[key] = f"its last run ended {run.status.value.lower()} without dedup results ({run.run_id[:8]})"
    if len(missing) > limit:
        reasons["..."] = f"{len(missing) - limit} more"
    return reasons


def comparison_markdown(comparison: dict) -> str:
    """The subset-vs-random table for Dagster metadata."""
    sub, rnd = comparison["subset"], comparison["random"]
    rows = [
        ("fine clusters covered", "fine_clusters_covered"),
        ("mean NN distance in subset", "nn_distance_mean"),
        ("min NN distance in subset", "nn_distance_min"),
        ("mean distance pool -> subset", "coverage_distance_mean"),
        ("max distance pool -> subset", "coverage_distance_max"),
    ]
    lines = ["| | subset | random |", "|---|---|---|"]
    lines += [f"| {label} | {sub.get(key, '-')} | {rnd.get(key, '-')} |" for label, key in rows]
    for column, value in sub.get("metadata_coverage", {}).items():
        lines.append(f"| {column} values covered | {value} | {rnd.get('metadata_coverage', {}).get(column, '-')} |")
    return "\n".join(lines)
