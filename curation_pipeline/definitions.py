"""Assembles the Definitions: nothing else lives here. The configuration comes from settings.py
(read once, where the code location loads); every resource is built from it, so what a step reads
through travels with the run as resource config, whichever process or pod runs the step."""

from __future__ import annotations

import dataclasses

import dagster as dg

from curation_pipeline.defs.curation import curated_subset
from curation_pipeline.defs.dedup import dedup_calibration, dedup_clusters
from curation_pipeline.defs.domain import domain_embedder, domain_embeddings
from curation_pipeline.defs.executors import curation_in_process_executor
from curation_pipeline.defs.export import curated_export, retrieval_export
from curation_pipeline.defs.ingest import image_embeddings, raw_image_manifest
from curation_pipeline.defs.io_manager import PgVectorIOManager
from curation_pipeline.defs.jobs import (
    calibrate_dedup_job,
    domain_embed_job,
    evaluate_job,
    export_job,
    ingest_drop_job,
    object_embed_job,
    retrieve_job,
    review_labels_job,
    select_job,
    split_job,
    train_domain_job,
)
from curation_pipeline.defs.labels import dataset_split, drop_labels, label_review, object_embeddings, subset_evaluation
from curation_pipeline.defs.report import curation_report, retrieval_page
from curation_pipeline.defs.resources import (
    CurationS3Resource,
    DatabaseResource,
    EmbedderResource,
    ImageStoreResource,
    ModelChoiceResource,
    OutputsResource,
)
from curation_pipeline.defs.retrieval import retrieval_set
from curation_pipeline.defs.sensors import WatchSettings, build_drop_sensor
from curation_pipeline.settings import Settings

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
    domain_embedder,
    domain_embeddings,
    dedup_calibration,
    drop_labels,
    object_embeddings,
    label_review,
    dataset_split,
    subset_evaluation,
]


def _settings(settings: Settings | None, database_url: str | None, drop_root: str | None) -> Settings:
    settings = settings or Settings.from_env()
    if database_url:
        settings = dataclasses.replace(settings, database_url=database_url)
    if drop_root:
        settings = dataclasses.replace(settings, drop_root=drop_root)
    return settings


def build_resources(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    embedder: EmbedderResource | None = None,
    descriptor: EmbedderResource | None = None,
    drop_root: str | None = None,
    s3: CurationS3Resource | None = None,
) -> dict:
    """Every resource, from `settings` (default: Settings.from_env()); keyword arguments override
    parts of it for tests and the CLI. S3 credentials come from boto3's usual chain."""
    settings = _settings(settings, database_url, drop_root)
    pgdata = str(settings.embedded_pgdata)
    s3 = s3 or CurationS3Resource(
        endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, profile_name=settings.s3_profile
    )
    return {
        "database": DatabaseResource(url=settings.database_url, embedded_pgdata=pgdata),
        "image_store": ImageStoreResource(
            drop_root=settings.drop_root, s3=s3, drop_marker=settings.drop_marker, watch=list(settings.watch)
        ),
        # the semantic model (selection, map, retrieval) and the near-duplicate descriptor: ingest embeds with both
        "embedder": embedder
        or EmbedderResource(
            backend=settings.embedder_backend, model_name=settings.embedder_model, pretrained=settings.embedder_pretrained
        ),
        "descriptor": descriptor or EmbedderResource(backend=settings.descriptor_backend),
        "models": ModelChoiceResource(selection=settings.selection_model, retrieval=settings.retrieval_model),
        "outputs": OutputsResource(
            reports_dir=str(settings.reports_dir), export_root=settings.export_root, reports_url=settings.reports_url
        ),
        "pgvector_io_manager": PgVectorIOManager(url=settings.database_url, embedded_pgdata=pgdata),
    }


def build_definitions(settings: Settings | None = None, *, watch: WatchSettings | None = None, **overrides) -> dg.Definitions:
    """The code location, from `settings` (default: Settings.from_env()). `watch` configures the drop
    sensor (default: from the settings, watching the image store's roots); other keyword arguments
    go to build_resources."""
    settings = _settings(settings, overrides.get("database_url"), overrides.get("drop_root"))
    resources = build_resources(settings, **overrides)
    watch = watch or WatchSettings.from_settings(settings, roots=resources["image_store"].watched_roots())
    # Declarative automation: curated subsets and their reports follow new dedup results (see the
    # assets' automation_condition). Like every sensor it must be switched on (UI or
    # CURATION_SENSOR_RUNNING=1) before anything runs on its own.
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "curation_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING if settings.sensors_running else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
    )
    return dg.Definitions(
        assets=ASSETS,
        jobs=[
            ingest_drop_job,
            select_job,
            retrieve_job,
            export_job,
            train_domain_job,
            domain_embed_job,
            calibrate_dedup_job,
            object_embed_job,
            review_labels_job,
            split_job,
            evaluate_job,
        ],
        sensors=[build_drop_sensor(watch), automation_sensor],
        resources=resources,
        executor=_executor(settings.executor),
    )


def _executor(choice: str):
    """The executor of every job, ad-hoc UI materializations included. Unset or in_process: every
    step of a run in the run's process (defs/executors.py; a small drop is done in seconds, and
    the `gpu` pool still serialises the embedding step across runs). multiprocess: Dagster's
    process per step. k8s: one pod per step (needs dagster-k8s, installed in the deployment image),
    so the GPU tag on image_embeddings puts that step alone on a GPU node."""
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    return curation_in_process_executor


@dg.definitions
def defs() -> dg.Definitions:
    """What `dagster dev -m curation_pipeline.definitions`, `dagster api grpc` and workspace.yaml load:
    built when Dagster asks for it, from the environment of the process that loads it."""
    return build_definitions()
