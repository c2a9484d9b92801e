"""Assembles the Definitions: nothing else lives here."""

import dagster as dg

from curation_pipeline.defs.dedup import dedup_clusters
from curation_pipeline.defs.ingest import image_embeddings, raw_image_manifest
from curation_pipeline.defs.jobs import ingest_drop_job, retrieve_job, select_job
from curation_pipeline.defs.report import curation_report
from curation_pipeline.defs.selection import curated_subset, retrieval_set
from curation_pipeline.resources.dagster_resources import (
    DatabaseResource,
    EmbedderResource,
    ImageStoreResource,
)
from curation_pipeline.resources.pgvector_io import PgVectorIOManager

ASSETS = [raw_image_manifest, image_embeddings, dedup_clusters, curated_subset, retrieval_set, curation_report]


def build_resources(*, database_url: str | None = None, embedder: EmbedderResource | None = None,
                    drop_root: str | None = None) -> dict:
    """Arguments override resources for tests and the CLI; the defaults read DATABASE_URL /
    CURATION_HOME / CURATION_DROP_ROOT and use the offline embedder."""
    return {
        "database": DatabaseResource(url=database_url),
        "image_store": ImageStoreResource(drop_root=drop_root),
        "embedder": embedder or EmbedderResource(),
        "pgvector_io_manager": PgVectorIOManager(url=database_url),
    }


def build_definitions(**overrides) -> dg.Definitions:
    """The code location; keyword arguments go to build_resources."""
    return dg.Definitions(assets=ASSETS, jobs=[ingest_drop_job, select_job, retrieve_job],
                          resources=build_resources(**overrides))


defs = build_definitions()
