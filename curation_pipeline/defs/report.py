"""curation_report: a static HTML page per named selection, summary in Dagster metadata."""


from pathlib import Path

import dagster as dg

from curation_pipeline.resources.dagster_resources import DatabaseResource
from curation_pipeline.resources.database import curation_home
from curation_pipeline.steps.report import write_report

from .dedup import dedup_clusters
from .partitions import FOLLOW_DEDUP, selections
from .selection import curated_subset


class ReportConfig(dg.Config):
    output_dir: str = ""
    """Folder for reports (default: $CURATION_HOME/reports); the page goes to <output_dir>/<selection>/index.html."""
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
        dg.AssetCheckSpec("report_written", asset="curation_report", blocking=True,
                          description="The page exists, is non-empty and every thumbnail rendered."),
    ],
)
def curation_report(context: dg.AssetExecutionContext, config: ReportConfig,
                    database: DatabaseResource) -> dg.MaterializeResult:
    root = config.output_dir or str(curation_home() / "reports")
    out = write_report(database.catalog(), context.partition_key, Path(root) / context.partition_key,
                       max_groups=config.max_groups, max_subset=config.max_subset, logger=context.log)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(out["path"]),
            "summary": dg.MetadataValue.md(out["markdown"]),
            "bytes": out["bytes"],
            "duplicate_groups": out["duplicate_groups"],
            "subset_shown": out["subset_shown"],
            "failed_objects": out["failed_objects"],
        },
        check_results=[
            dg.AssetCheckResult(check_name="report_written",
                                passed=out["bytes"] > 0 and out["thumbnails_missing"] == 0,
                                metadata={"bytes": out["bytes"], "thumbnails_missing": out["thumbnails_missing"]}),
        ],
    )
