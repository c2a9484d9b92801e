"""Runs under Dagster's multiprocess executor, where every step is its own process: what a step reads
through must reach it from the resource, not from this process's memory or the environment."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from curation_pipeline.resources.catalog import Catalog
from curation_pipeline_tests.conftest import make_small_drop, new_bucket, upload_folder

REPOSITORY = Path(__file__).resolve().parents[2]


def curation_job(job_name: str, s3_endpoint_url: str) -> dg.JobDefinition:
    """Rebuilt in every step process (dg.build_reconstructable_job): the production Definitions, from
    the environment like `dagster api grpc` builds them, but with the S3 endpoint on the resource
    alone. The endpoint reaches the step processes only as this function's argument."""
    from curation_pipeline.definitions import build_definitions
    from curation_pipeline.defs.resources import CurationS3Resource

    s3 = CurationS3Resource(endpoint_url=s3_endpoint_url, region_name="us-east-1", max_attempts=2)
    return build_definitions(s3=s3).resolve_job_def(job_name)


def _run(instance, job_name: str, endpoint: str, partition: str, run_config: dict):
    job = dg.build_reconstructable_job(
        __name__,
        curation_job.__name__,
        reconstructable_args=(job_name, endpoint),
        reconstructor_working_directory=str(REPOSITORY),  # where a step process imports this module from
    )
    return dg.execute_job(job, instance=instance, tags={"dagster/partition": partition}, run_config=run_config)


def test_an_s3_drop_ingests_and_reports_under_the_multiprocess_executor_with_the_endpoint_only_on_the_resource(
    tmp_path, monkeypatch, s3, curation_env, database_url
):
    bucket = new_bucket(s3, "drops")
    info = make_small_drop(tmp_path / "rig-1")
    upload_folder(s3, tmp_path / "rig-1", bucket, "drops/rig-1/")
    source = f"s3://{bucket}/drops/rig-1/"
    # Nothing but the resource knows the endpoint: neither the variable the CLI reads nor boto3's own,
    # so a step that fell back to the environment would go to AWS and read nothing.
    monkeypatch.delenv("CURATION_S3_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("CURATION_EXECUTOR", "multiprocess")

    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        instance.add_dynamic_partitions("capture_drops", ["rig-1"])
        ingest = _run(
            instance, "ingest_drop", s3.endpoint_url, "rig-1", {"ops": {"raw_image_manifest": {"config": {"source": source}}}}
        )
        assert ingest.success
        starts = [e for e in ingest.all_events if e.event_type == dg.DagsterEventType.STEP_START]
        # manifest, embeddings, dedup, domain embeddings (skipped: no domain model yet), labels, object vectors
        assert len(starts) == 6 and os.getpid() not in {e.pid for e in starts}
        assert len({e.pid for e in starts}) == 6  # each step in a process of its own

        catalog = Catalog(database_url)
        valid = info["files"] - len(info["bad"])
        with catalog.connection() as conn:
            images = conn.execute("SELECT count(*) FROM images WHERE drop_key = 'rig-1'").fetchone()[0]
            uris = {r[0][: len(source)] for r in conn.execute("SELECT source_uri FROM images WHERE drop_key = 'rig-1'")}
            embedded = conn.execute("SELECT count(*) FROM embeddings WHERE drop_key = 'rig-1'").fetchone()[0]
            failures = conn.execute("SELECT count(*) FROM embedding_failures").fetchone()[0]
            clustered = conn.execute(
                "SELECT count(*) FROM dedup_members m JOIN images i USING (image_id) WHERE i.drop_key = 'rig-1'"
            ).fetchone()[0]
        assert images == info["files"] and uris == {source}
        # every valid image was read from S3 by the embedding step, once per model (descriptor and semantic)
        assert embedded == 2 * valid and failures == 0
        assert clustered == valid
        pairs = {
            frozenset([g["representative"]["object_key"], m["object_key"]])
            for g in catalog.duplicate_groups()
            for m in g["members"]
        }
        assert pairs == {frozenset(p) for p in info["duplicates"].items()}
        checks = {c.check_name: c for c in ingest.get_asset_check_evaluations()}
        assert checks["every_valid_image_embedded"].passed and checks["vectors_match_model"].passed

        # the report's thumbnails are read from S3 in the report step's own process
        instance.add_dynamic_partitions("selections", ["pick"])
        report = _run(
            instance,
            "select_and_report",
            s3.endpoint_url,
            "pick",
            {
                "ops": {
                    "curated_subset": {"config": {"budget": 5}},
                    "curation_report": {"config": {"output_dir": str(tmp_path / "reports")}},
                }
            },
        )
        assert report.success
        checks = {c.check_name: c for c in report.get_asset_check_evaluations()}
        written = {k: v.value for k, v in checks["report_written"].metadata.items()}
        assert checks["report_written"].passed and checks["sources_readable"].passed
        assert written["thumbnails_missing"] == 0 and written["missing_sources"] == 0
        page = (tmp_path / "reports" / "pick" / "index.html").read_text()
        assert page.count("data:image/jpeg;base64,") >= 5
