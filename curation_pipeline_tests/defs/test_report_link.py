"""The report opens from its asset page: a link to where it is served, locally or on S3."""

import urllib.request

import dagster as dg

from curation_pipeline.definitions import build_definitions
from curation_pipeline.defs.resources import CurationS3Resource
from curation_pipeline.settings import Settings
from curation_pipeline_tests.conftest import make_small_drop, new_bucket


def _report_metadata(instance) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("curation_report"), asset_partitions=["web"]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def _select(defs, instance, root):
    make_small_drop(root / "d1")
    instance.add_dynamic_partitions("capture_drops", ["d1"])
    assert defs.resolve_job_def("ingest_drop").execute_in_process(instance=instance, partition_key="d1").success
    instance.add_dynamic_partitions("selections", ["web"])
    assert (
        defs.resolve_job_def("select_and_report")
        .execute_in_process(
            instance=instance, partition_key="web", run_config={"ops": {"curated_subset": {"config": {"budget": 3}}}}
        )
        .success
    )


def test_a_local_report_links_the_served_reports_folder(tmp_path, database_url):
    root = tmp_path / "drops"
    settings = Settings(
        home=tmp_path / "home", drop_root=str(root), export_root=str(tmp_path / "exports"), reports_url="http://127.0.0.1:3001/"
    )
    defs = build_definitions(settings, database_url=database_url)
    with dg.instance_for_test() as instance:
        _select(defs, instance, root)
        meta = _report_metadata(instance)
    assert meta["report"] == "http://127.0.0.1:3001/web/index.html"
    assert meta["path"] == str(tmp_path / "home" / "reports" / "web" / "index.html")
    assert "[open the full report](http://127.0.0.1:3001/web/index.html)" in meta["summary"]


def test_on_s3_the_report_is_published_next_to_the_exports_and_linked_by_a_presigned_url(tmp_path, s3, database_url):
    bucket = new_bucket(s3, "exports")
    root = tmp_path / "drops"
    settings = Settings(
        home=tmp_path / "home",
        drop_root=str(root),
        export_root=f"s3://{bucket}/curation/",
        reports_url="http://127.0.0.1:3001/",
    )
    s3_resource = CurationS3Resource(endpoint_url=s3.endpoint_url, region_name="us-east-1")
    defs = build_definitions(settings, database_url=database_url, s3=s3_resource)
    with dg.instance_for_test() as instance:
        _select(defs, instance, root)
        meta = _report_metadata(instance)
    assert meta["report_s3"] == f"s3://{bucket}/curation/reports/web/index.html"
    link = meta["report"]
    assert link.startswith(f"{s3.endpoint_url}/{bucket}/curation/reports/web/index.html?") and "Signature" in link
    assert f"[open the full report]({link})" in meta["summary"]
    with urllib.request.urlopen(link, timeout=30) as response:  # what a browser fetches from the link
        assert response.headers["Content-Type"].startswith("text/html")
        page = response.read().decode()
    assert "<title>Curation report: web</title>" in page and page.count("data:image/jpeg;base64,") >= 3
