"""The pages people look at: curation_report (one per named selection, summary in Dagster metadata)
and retrieval_page (one per named query)."""

from pathlib import Path

import dagster as dg

from curation_pipeline.resources.export_target import export_target_for
from curation_pipeline.steps.report import write_report, write_retrieval_page

from .curation import curated_subset
from .dedup import dedup_clusters
from .partitions import FOLLOW_DEDUP, retrieval_queries, selections
from .resources import DatabaseResource, ImageStoreResource, OutputsResource
from .retrieval import retrieval_set

REPORT_LINK_SECONDS = 7 * 24 * 3600
"""How long the presigned link to a report on S3 stays valid (S3's maximum for SigV4); materialize
the report again for a fresh one."""


class ReportConfig(dg.Config):
    output_dir: str = ""
    """Folder for reports (default: the outputs resource's reports_dir, $CURATION_HOME/reports); the page
    goes to <output_dir>/<selection>/index.html."""
    max_groups: int = 50
    max_subset: int = 200


@dg.asset(
    partitions_def=selections,
    group_name="report",
    kinds={"html"},
    owners=["team:curation"],
    deps=[curated_subset, dg.AssetDep(dedup_clusters, partition_mapping=dg.AllPartitionMapping())],
    automation_condition=FOLLOW_DEDUP,
    description="Static HTML report: counts, duplicate groups as thumbnails (representative first), the "
    "subset as thumbnails, failed objects with their errors.",
    check_specs=[
        dg.AssetCheckSpec(
            "report_written",
            asset="curation_report",
            blocking=True,
            description="The page exists, is non-empty, and every thumbnail either rendered or "
            "its source is listed under 'Missing sources'.",
        ),
        dg.AssetCheckSpec(
            "sources_readable",
            asset="curation_report",
            description="Every source image shown in the report could be read (WARN: the missing ones are listed).",
        ),
    ],
)
def curation_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    database: DatabaseResource,
    image_store: ImageStoreResource,
    outputs: OutputsResource,
) -> dg.MaterializeResult:
    root = config.output_dir or outputs.reports_dir
    # an S3 deployment: the page also goes to the export location, linked by a presigned URL (a
    # loopback link would mean nothing to the people using that UI); else the served reports folder
    published = None
    if outputs.export_root.startswith("s3://"):
        target = export_target_for(outputs.export_root, image_store.s3.settings())
        rel = f"reports/{context.partition_key}/index.html"
        published = (target, rel, target.presign(rel, REPORT_LINK_SECONDS))
    out = write_report(
        database.catalog(),
        context.partition_key,
        Path(root) / context.partition_key,
        max_groups=config.max_groups,
        max_subset=config.max_subset,
        stores=image_store.stores(),
        logger=context.log,
        report_url=lambda page: published[2] if published else outputs.report_link(root, page),
    )
    missing = out["missing_sources"]
    link = outputs.report_link(root, out["path"])
    extra = {}
    if published:
        target, rel, link = published
        target.put_bytes(rel, Path(out["path"]).read_bytes(), content_type="text/html; charset=utf-8")
        extra = {"report_s3": dg.MetadataValue.path(target.uri(rel)), "link_expires_days": REPORT_LINK_SECONDS // 86400}
    return dg.MaterializeResult(
        metadata={
            **({"report": dg.MetadataValue.url(link)} if link else {}),
            "path": dg.MetadataValue.path(out["path"]),
            "summary": dg.MetadataValue.md(out["markdown"]),
            "bytes": out["bytes"],
            "duplicate_groups": out["duplicate_groups"],
            "subset_shown": out["subset_shown"],
            "failed_objects": out["failed_objects"],
            "missing_sources": len(missing),
            "models": dg.MetadataValue.json(out["models"]),
            **extra,
        },
        check_results=[
            # A thumbnail can only be absent because its source could not be read, and each such
            # source is listed in the page: an unreadable source is a warning, not a failed report.
            dg.AssetCheckResult(
                check_name="report_written",
                passed=out["bytes"] > 0 and (out["thumbnails_missing"] == 0 or bool(missing)),
                metadata={
                    "bytes": out["bytes"],
                    "thumbnails_missing": out["thumbnails_missing"],
                    "missing_sources": len(missing),
                },
            ),
            dg.AssetCheckResult(
                check_name="sources_readable",
                passed=not missing,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "missing_sources": len(missing),
                    "first_missing": dg.MetadataValue.json(dict(list(missing.items())[:20])),
                },
            ),
        ],
    )


class RetrievalPageConfig(dg.Config):
    output_dir: str = ""
    """Folder for retrieval pages (default: the outputs resource's reports_dir + /retrievals,
    $CURATION_HOME/reports/retrievals); the page goes to <output_dir>/<query name>/index.html."""


@dg.asset(
    partitions_def=retrieval_queries,
    group_name="report",
    kinds={"html"},
    owners=["team:curation"],
    deps=[retrieval_set],
    description="Static HTML page of a retrieval set: its settings, the query images (or prompts) and the "
    "results in rank order with their similarity and the query each matched.",
    check_specs=[
        dg.AssetCheckSpec(
            "sources_readable",
            asset="retrieval_page",
            description="Every result's source image could be read for its thumbnail (WARN: tiles say 'no preview').",
        ),
    ],
)
def retrieval_page(
    context: dg.AssetExecutionContext,
    config: RetrievalPageConfig,
    database: DatabaseResource,
    image_store: ImageStoreResource,
    outputs: OutputsResource,
) -> dg.MaterializeResult:
    root = Path(config.output_dir) if config.output_dir else Path(outputs.reports_dir) / "retrievals"
    page = write_retrieval_page(
        database.catalog(), context.partition_key, root / context.partition_key, stores=image_store.stores()
    )
    link = outputs.report_link(outputs.reports_dir, page["path"])
    return dg.MaterializeResult(
        metadata={
            **({"page": dg.MetadataValue.url(link)} if link else {}),
            "path": dg.MetadataValue.path(page["path"]),
            "results": page["results"],
            "thumbnails_missing": page["thumbnails_missing"],
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="sources_readable",
                passed=page["thumbnails_missing"] == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"thumbnails_missing": page["thumbnails_missing"]},
            )
        ],
    )
