"""Assembles the Definitions: nothing else lives here."""

import os

import dagster as dg

from curation_pipeline.defs.dedup import dedup_clusters
from curation_pipeline.defs.ingest import image_embeddings, raw_image_manifest
from curation_pipeline.defs.jobs import ingest_drop_job, retrieve_job, select_job
from curation_pipeline.defs.report import curation_report
from curation_pipeline.defs.selection import curated_subset, retrieval_set
from curation_pipeline.resources.dagster_resources import (
    CurationS3Resource,
    DatabaseResource,
    EmbedderResource,
    ImageStoreResource,
)
from curation_pipeline.resources.pgvector_io import PgVectorIOManager

ASSETS = [raw_image_manifest, image_embeddings, dedup_clusters, curated_subset, retrieval_set, curation_report]


def build_resources(*, database_url: str | None = None, embedder: EmbedderResource | None = None,
                    drop_root: str | None = None, s3: CurationS3Resource | None = None) -> dict:
    """Arguments override resources for tests and the CLI; the defaults read DATABASE_URL /
    CURATION_HOME / CURATION_DROP_ROOT, CURATION_S3_ENDPOINT_URL / _REGION / _PROFILE (S3 credentials
    come from boto3's usual chain) and use the offline embedder."""
    s3 = s3 or CurationS3Resource(endpoint_url=os.environ.get("CURATION_S3_ENDPOINT_URL") or None,
                                  region_name=os.environ.get("CURATION_S3_REGION") or None,
                                  profile_name=os.environ.get("CURATION_S3_PROFILE") or None)
    return {
        "database": DatabaseResource(url=database_url),
        "image_store": ImageStoreResource(drop_root=drop_root, s3=s3),
        "embedder": embedder or EmbedderResource(),
        "pgvector_io_manager": PgVectorIOManager(url=database_url),
    }


def build_definitions(**overrides) -> dg.Definitions:
    """The code location; keyword arguments go to build_resources."""
    return dg.Definitions(assets=ASSETS, jobs=[ingest_drop_job, select_job, retrieve_job],
                          resources=build_resources(**overrides))


defs = build_definitions()
