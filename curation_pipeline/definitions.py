"""Assembles the Definitions: nothing else lives here."""

import os

import dagster as dg

from curation_pipeline.defs.curation import curated_subset
from curation_pipeline.defs.dedup import dedup_clusters
from curation_pipeline.defs.export import curated_export, retrieval_export
from curation_pipeline.defs.ingest import image_embeddings, raw_image_manifest
from curation_pipeline.defs.io_manager import PgVectorIOManager
from curation_pipeline.defs.jobs import export_job, ingest_drop_job, retrieve_job, select_job
from curation_pipeline.defs.report import curation_report, retrieval_page
from curation_pipeline.defs.resources import (
    CurationS3Resource,
    DatabaseResource,
    EmbedderResource,
    ImageStoreResource,
)
from curation_pipeline.defs.retrieval import retrieval_set
from curation_pipeline.defs.sensors import WatchSettings, build_drop_sensor
from curation_pipeline.resources.database import curation_home

# In data-flow order (tests take ASSETS[:3] for ingest and ASSETS[3] for the selection).
ASSETS = [
    raw_image_manifest,
    image_embeddings,
    dedup_clusters,
    curated_subset,
    curation_report,
    curated_export,
    retrieval_set,
    retrieval_page,
    retrieval_export,
]

# Declarative automation: curated subsets and their reports follow new dedup results (see the
# assets' automation_condition). Like every sensor it must be switched on (UI or
# CURATION_SENSOR_RUNNING=1) before anything runs on its own.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=dg.AssetSelection.all(),
    default_status=(
        dg.DefaultSensorStatus.RUNNING if os.environ.get("CURATION_SENSOR_RUNNING") == "1" else dg.DefaultSensorStatus.STOPPED
    ),
    minimum_interval_seconds=30,
)


def build_resources(
    *,
    database_url: str | None = None,
    embedder: EmbedderResource | None = None,
    drop_root: str | None = None,
    s3: CurationS3Resource | None = None,
) -> dict:
    """Arguments override resources for tests and the CLI; the defaults read DATABASE_URL /
    CURATION_HOME / CURATION_DROP_ROOT, CURATION_S3_ENDPOINT_URL / _REGION / _PROFILE (S3 credentials
    come from boto3's usual chain) and use the offline embedder."""
    s3 = s3 or CurationS3Resource(
        endpoint_url=os.environ.get("CURATION_S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("CURATION_S3_REGION") or None,
        profile_name=os.environ.get("CURATION_S3_PROFILE") or None,
    )
    return {
        "database": DatabaseResource(url=database_url),
        "image_store": ImageStoreResource(
            drop_root=drop_root, s3=s3, drop_marker=os.environ.get("CURATION_DROP_MARKER", "_SUCCESS")
        ),
        "embedder": embedder
        or EmbedderResource(
            backend=os.environ.get("CURATION_EMBEDDER") or "offline",
            model_name=os.environ.get("CURATION_EMBEDDER_MODEL") or "",
            pretrained=os.environ.get("CURATION_EMBEDDER_PRETRAINED") or "",
        ),
        "pgvector_io_manager": PgVectorIOManager(url=database_url),
    }


def build_definitions(*, watch: WatchSettings | None = None, **overrides) -> dg.Definitions:
    """The code location; `watch` configures the drop sensor (default: from the environment, see
    WatchSettings.from_env), other keyword arguments go to build_resources."""
    watch = watch or WatchSettings.from_env(
        default_root=overrides.get("drop_root") or os.environ.get("CURATION_DROP_ROOT") or str(curation_home() / "drops")
    )
    return dg.Definitions(
        assets=ASSETS,
        jobs=[ingest_drop_job, select_job, retrieve_job, export_job],
        sensors=[build_drop_sensor(watch), automation_sensor],
        resources=build_resources(**overrides),
        executor=_executor(),
    )


def _executor():
    """CURATION_EXECUTOR=k8s: one pod per step (needs dagster-k8s, installed in the deployment
    image), so the GPU tag on image_embeddings puts that step alone on a GPU node. Default: Dagster's
    multiprocess executor."""
    choice = os.environ.get("CURATION_EXECUTOR", "")
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if choice not in ("", "multiprocess"):
        raise ValueError(f"CURATION_EXECUTOR={choice!r}: use k8s or multiprocess")
    return None


defs = build_definitions()
