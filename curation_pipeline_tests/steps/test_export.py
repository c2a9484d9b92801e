"""curated_export's step against S3 over real HTTP (moto's server) and a local folder."""

import io
import json
import urllib.request

import pyarrow.parquet as pq
import pytest

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import OfflineEmbedder
from curation_pipeline.resources.export_target import LocalExportTarget, S3ExportTarget, safe_relative
from curation_pipeline.resources.image_store import ImageStores, S3ImageStore
from curation_pipeline.steps.dedup import dedup_drop
from curation_pipeline.steps.embed import EmbedOptions, embed_drop
from curation_pipeline.steps.export import export_selection
from curation_pipeline.steps.manifest import build_manifest
from curation_pipeline.steps.select import SelectionSpec, select_subset
from curation_pipeline_tests.conftest import make_small_drop, new_bucket, upload_folder


def _ingest_from_s3(catalog, s3, location, key):
    catalog.register_drop(key, location)
    build_manifest(catalog, S3ImageStore(s3), location, key)
    stats = embed_drop(catalog, OfflineEmbedder(), key, EmbedOptions(batch_size=8, workers=2), stores=ImageStores(s3))
    catalog.publish_embeddings(key, stats["model"])
    dedup_drop(catalog, key, catalog.load_embeddings([key], stats["model"]), DedupThresholds())
    return stats["model"]


@pytest.fixture
def s3_selection(tmp_path, s3, database_url):
    """A drop in an input bucket (keys with spaces, unicode and `../`), ingested and selected."""
    bucket = new_bucket(s3, "input")
    folder = tmp_path / "drop"
    make_small_drop(folder)
    upload_folder(s3, folder, bucket, "drops/d1/")
    client = s3.client()
    client.put_object(Bucket=bucket, Key="drops/d1/../../escape me ü.jpg", Body=(folder / "img_06.jpg").read_bytes())
    catalog = Catalog(database_url)
    model = _ingest_from_s3(catalog, s3, f"s3://{bucket}/drops/d1/", "d1")
    select_subset(catalog, "batch-1", SelectionSpec(budget=6), model=model)
    return catalog, bucket


def test_export_to_s3_copies_server_side_writes_manifests_and_is_idempotent(s3, s3_selection):
    catalog, in_bucket = s3_selection
    client = s3.client()
    before = client.list_object_versions(Bucket=in_bucket)
    out_bucket = new_bucket(s3, "labeling")
    target = S3ExportTarget(f"s3://{out_bucket}/exports/", s3)
    first = export_selection(catalog, "batch-1", target, presign_seconds=600)
    assert first["images"] == 6 and first["copied"] == 6

    keys = [o["Key"] for o in client.list_objects_v2(Bucket=out_bucket)["Contents"]]
    assert all(k.startswith("exports/batch-1/") for k in keys)  # nothing escaped the prefix
    assert "exports/batch-1/_SUCCESS" in keys
    lines = [
        json.loads(x)
        for x in client.get_object(Bucket=out_bucket, Key="exports/batch-1/manifest.jsonl")["Body"].read().decode().splitlines()
    ]
    assert [e["rank"] for e in lines] == list(range(1, 7))
    selected = {it["source_uri"] for it in catalog.selection_items("batch-1")}
    assert {e["uri"] for e in lines} == selected
    table = pq.read_table(
        io.BytesIO(client.get_object(Bucket=out_bucket, Key="exports/batch-1/manifest.parquet")["Body"].read())
    )
    assert table.column("uri").to_pylist() == [e["uri"] for e in lines] and table.num_rows == 6
    for e in lines:  # the copy is the source's bytes, and the presigned URL serves them over HTTP
        src_bucket, src_key = e["uri"][5:].split("/", 1)
        original = client.get_object(Bucket=src_bucket, Key=src_key)["Body"].read()
        with urllib.request.urlopen(e["presigned_url"]) as resp:
            assert resp.read() == original
        assert e["sha256"] and e["cluster"] and "X-Amz-Expires=600" in e["presigned_url"]

    again = export_selection(catalog, "batch-1", target)
    assert again["copied"] == 0 and again["already_there"] == 6
    after = client.list_object_versions(Bucket=in_bucket)
    assert [v["VersionId"] for v in after.get("Versions", [])] == [v["VersionId"] for v in before.get("Versions", [])]


def test_a_key_with_dot_dot_cannot_escape_the_export_prefix(tmp_path, s3, s3_selection):
    catalog, _ = s3_selection
    with catalog.connection() as conn:  # make sure the escaping key is among the exported images
        conn.execute(
            "UPDATE selection_items SET image_id = (SELECT image_id FROM images WHERE object_key ="
            " '../../escape me ü.jpg') WHERE name = 'batch-1' AND rank = 6"
            " AND NOT EXISTS (SELECT 1 FROM selection_items s JOIN images i USING (image_id)"
            " WHERE s.name = 'batch-1' AND i.object_key LIKE '../%%')"
        )
    target = LocalExportTarget(str(tmp_path / "out"))
    export_selection(catalog, "batch-1", target, stores=ImageStores(s3))  # downloads from S3 through the stores
    files = [p for p in (tmp_path).rglob("*") if p.is_file() and "escape me" in p.name]
    assert files and all((tmp_path / "out" / "batch-1" / "images") in f.parents for f in files)
    assert safe_relative("../../a/./b/../c.jpg") == "a/b/c.jpg"
    with pytest.raises(ValueError):
        safe_relative("../..")


def test_an_unwritable_target_fails_clearly_and_presents_no_complete_export(s3, s3_selection):
    catalog, _ = s3_selection
    client = s3.client()
    out_bucket = new_bucket(s3, "locked")
    client.put_bucket_policy(
        Bucket=out_bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{out_bucket}/*"}
                ],
            }
        ),
    )
    with pytest.raises(Exception, match="Forbidden|AccessDenied"):
        export_selection(catalog, "batch-1", S3ExportTarget(f"s3://{out_bucket}/x/", s3))
    listed = client.list_objects_v2(Bucket=out_bucket).get("Contents", [])
    assert not [o for o in listed if o["Key"].endswith(("_SUCCESS", "manifest.jsonl", "manifest.parquet"))]
