"""The capture-drop sensor against S3 over real HTTP (moto's server) and local folders."""

import json
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from curation_pipeline.definitions import build_definitions, build_resources
from curation_pipeline.defs.resources import CurationS3Resource, DatabaseResource, ImageStoreResource
from curation_pipeline.defs.sensors import WatchSettings, evaluate_drops
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline_tests.conftest import make_small_drop, new_bucket, upload_folder


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _resources(database_url, s3=None):
    return {
        "image_store": ImageStoreResource(
            s3=CurationS3Resource(endpoint_url=s3.endpoint_url if s3 else None, region_name="us-east-1")
        ),
        "database": DatabaseResource(url=database_url),
    }


def _tick(instance, settings, resources, cursor=None, now=None):
    """One sensor evaluation; like the daemon, apply its partition requests to the instance."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = evaluate_drops(ctx, settings, resources["image_store"], resources["database"], now=now)
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def _s3_drop(s3, bucket, name, files=2, marker=True):
    client = s3.client()
    for i in range(files):
        client.put_object(Bucket=bucket, Key=f"drops/{name}/img {i}.jpg", Body=b"x" * (i + 1))
    if marker:
        client.put_object(Bucket=bucket, Key=f"drops/{name}/_SUCCESS", Body=b"")


def test_a_completed_drop_is_added_once_and_a_partial_one_waits_for_its_marker(s3, database_url, instance):
    bucket = new_bucket(s3)
    _s3_drop(s3, bucket, "drop-a")
    _s3_drop(s3, bucket, "drop-b", marker=False)
    settings = WatchSettings(roots=(f"s3://{bucket}/drops/",), completion="marker")
    res = _resources(database_url, s3)

    first = _tick(instance, settings, res)
    assert [r.partition_key for r in first.run_requests] == ["drop-a"]
    assert first.run_requests[0].run_key == "drop:drop-a"
    assert Catalog(database_url).drop_source("drop-a") == f"s3://{bucket}/drops/drop-a/"
    assert json.loads(first.cursor)["waiting"] == {"drop-b": "no marker yet"}

    again = _tick(instance, settings, res, cursor=first.cursor)  # nothing new: nothing requested
    assert again.run_requests == [] and not again.dynamic_partitions_requests

    s3.client().put_object(Bucket=bucket, Key="drops/drop-b/_SUCCESS", Body=b"")
    # a restarted sensor resumes from its stored cursor and still adds each drop exactly once
    third = _tick(instance, settings, res, cursor=again.cursor)
    assert [r.partition_key for r in third.run_requests] == ["drop-b"]
    assert sorted(instance.get_dynamic_partitions("capture_drops")) == ["drop-a", "drop-b"]
    assert _tick(instance, settings, res, cursor=third.cursor).run_requests == []


def test_quiet_period_and_invalid_names(s3, database_url, instance):
    bucket = new_bucket(s3)
    _s3_drop(s3, bucket, "quiet-drop", marker=False)
    _s3_drop(s3, bucket, "bad..name", marker=True)
    settings = WatchSettings(roots=(f"s3://{bucket}/drops/",), completion="quiet", quiet_seconds=300)
    res = _resources(database_url, s3)
    now = datetime.now(timezone.utc)
    early = _tick(instance, settings, res, now=now)
    assert early.run_requests == [] and "quiet-drop" in json.loads(early.cursor)["waiting"]
    assert json.loads(early.cursor)["invalid"] == ["bad..name"]
    later = _tick(instance, settings, res, cursor=early.cursor, now=now + timedelta(seconds=301))
    assert [r.partition_key for r in later.run_requests] == ["quiet-drop"]


def test_a_tick_with_ten_thousand_known_drops_stays_within_the_sensor_limit(tmp_path, database_url, instance):
    root = tmp_path / "drops"
    root.mkdir()
    names = [f"drop-{i:05d}" for i in range(10_000)]
    for n in names:
        (root / n).mkdir()
    instance.add_dynamic_partitions("capture_drops", names)
    (root / "drop-new").mkdir()
    (root / "drop-new" / "a.jpg").write_bytes(b"x")
    (root / "drop-new" / "_SUCCESS").write_bytes(b"")
    settings = WatchSettings(roots=(str(root),))
    started = time.perf_counter()
    result = _tick(instance, settings, _resources(database_url))
    elapsed = time.perf_counter() - started
    assert [r.partition_key for r in result.run_requests] == ["drop-new"]
    assert elapsed < 60, f"a tick took {elapsed:.1f} s; Dagster stops sensors at 60 s"


def test_a_drop_uploaded_to_s3_reaches_postgres_through_a_tick_and_a_run(tmp_path, s3, database_url, curation_env, instance):
    """End to end, with an input bucket that must not be written: versioning on, so any write or
    delete the pipeline made would leave a version or a delete marker behind."""
    bucket = new_bucket(s3, "input")
    client = s3.client()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    folder = tmp_path / "rig"
    info = make_small_drop(folder)
    upload_folder(s3, folder, bucket, "drops/rig-0001/")
    client.put_object(Bucket=bucket, Key="drops/rig-0001/_SUCCESS", Body=b"")
    # from here on the bucket refuses writes (moto enforces this policy: a PutObject gets 403)
    client.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": ["s3:PutObject", "s3:DeleteObject"],
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    }
                ],
            }
        ),
    )
    with pytest.raises(Exception, match="Forbidden|AccessDenied"):
        client.put_object(Bucket=bucket, Key="drops/rig-0001/probe", Body=b"")
    versions_before = client.list_object_versions(Bucket=bucket)

    settings = WatchSettings(roots=(f"s3://{bucket}/drops/",))
    s3_resource = CurationS3Resource(endpoint_url=s3.endpoint_url, region_name="us-east-1")
    defs = build_definitions(watch=settings, database_url=database_url, s3=s3_resource)
    sensor = defs.get_sensor_def("capture_drop_sensor")
    with dg.build_sensor_context(
        instance=instance, resources=build_resources(database_url=database_url, s3=s3_resource)
    ) as ctx:
        result = sensor(ctx)
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    (request,) = result.run_requests
    run = defs.resolve_job_def("ingest_drop").execute_in_process(partition_key=request.partition_key, instance=instance)
    assert run.success
    catalog = Catalog(database_url)
    summary = catalog.manifest_summary("rig-0001")
    assert summary["total"] == info["files"]  # every uploaded file; the _SUCCESS marker is not an image
    with catalog.connection() as conn:
        uris = [r[0] for r in conn.execute("SELECT source_uri FROM images WHERE drop_key = 'rig-0001'").fetchall()]
        embedded = conn.execute(
            "SELECT count(*) FROM embeddings WHERE drop_key = 'rig-0001' AND model LIKE 'offline:%'"
        ).fetchone()[0]
    assert all(u.startswith(f"s3://{bucket}/drops/rig-0001/") for u in uris)
    assert embedded == info["distinct"] + 4  # every valid image (distinct + 2 exact + 2 re-encoded copies)
    assert {Catalog(database_url).duplicate_groups()[0]["representative"]["source_uri"][:5]} == {"s3://"}
    # the rest of the pipeline: a selection, its report (thumbnails read from S3) and an export
    out_bucket = new_bucket(s3, "exports")
    for job, config in (
        ("select_and_report", {"curated_subset": {"config": {"budget": 4}}}),
        ("export", {"curated_export": {"config": {"destination": f"s3://{out_bucket}/x/"}}}),
    ):
        if not instance.has_dynamic_partition("selections", "weekly"):
            instance.add_dynamic_partitions("selections", ["weekly"])
        done = defs.resolve_job_def(job).execute_in_process(
            partition_key="weekly", instance=instance, run_config={"ops": config}
        )
        assert done.success
    exported = [o["Key"] for o in client.list_objects_v2(Bucket=out_bucket)["Contents"]]
    assert "x/weekly/_SUCCESS" in exported and len([k for k in exported if "/images/" in k]) == 4
    versions_after = client.list_object_versions(Bucket=bucket)
    assert [(v["Key"], v["VersionId"]) for v in versions_after.get("Versions", [])] == [
        (v["Key"], v["VersionId"]) for v in versions_before.get("Versions", [])
    ]
    assert not versions_after.get("DeleteMarkers")


def test_a_hundred_drops_arriving_at_once_are_each_added_and_run_once(tmp_path, database_url, instance):
    root = tmp_path / "drops"
    for i in range(100):
        d = root / f"rig-{i:03d}"
        d.mkdir(parents=True)
        (d / "a.jpg").write_bytes(b"x")
        if i % 10 != 9:  # every tenth is still uploading
            (d / "_SUCCESS").write_bytes(b"")
    settings = WatchSettings(roots=(str(root),), completion="marker", max_checks_per_tick=200)
    res = _resources(database_url)
    first = _tick(instance, settings, res)
    assert len(first.run_requests) == 90 and len({r.run_key for r in first.run_requests}) == 90
    for i in range(9, 100, 10):
        (root / f"rig-{i:03d}" / "_SUCCESS").write_bytes(b"")
    second = _tick(instance, settings, res, cursor=first.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == [f"rig-{i:03d}" for i in range(9, 100, 10)]
    assert _tick(instance, settings, res, cursor=second.cursor).run_requests == []
    assert len(instance.get_dynamic_partitions("capture_drops")) == 100
    # a small per-tick budget still reaches every drop, in turns (round robin)
    other = tmp_path / "other"
    for i in range(30):
        (other / f"late-{i:02d}").mkdir(parents=True)
        (other / f"late-{i:02d}" / "a.jpg").write_bytes(b"x")
        (other / f"late-{i:02d}" / "_SUCCESS").write_bytes(b"")
    small = WatchSettings(roots=(str(other),), completion="marker", max_checks_per_tick=8)
    cursor, added = None, []
    for _ in range(4):
        result = _tick(instance, small, res, cursor=cursor)
        cursor = result.cursor
        added += [r.partition_key for r in result.run_requests]
    assert sorted(added) == [f"late-{i:02d}" for i in range(30)]
