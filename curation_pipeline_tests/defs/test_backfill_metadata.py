"""A backfill runs up to 8 drops in one run (the model loads once): each drop's partition still
shows that drop's own figures, not the batch's."""

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from curation_pipeline.definitions import build_definitions
from curation_pipeline_tests.conftest import make_small_drop


def _latest(instance, asset: str, partition: str) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_each_drop_of_a_batch_run_carries_its_own_figures(tmp_path, database_url):
    root = tmp_path / "drops"
    small = make_small_drop(root / "d1", n_distinct=6)
    large = make_small_drop(root / "d2", n_distinct=10)
    defs = build_definitions(database_url=database_url, drop_root=str(root))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("capture_drops", ["d1", "d2"])
        result = defs.resolve_job_def("ingest_drop").execute_in_process(
            instance=instance, tags={ASSET_PARTITION_RANGE_START_TAG: "d1", ASSET_PARTITION_RANGE_END_TAG: "d2"}
        )
        assert result.success
        for key, info in (("d1", small), ("d2", large)):
            manifest = _latest(instance, "raw_image_manifest", key)
            assert manifest["objects_listed"] == info["files"], (key, manifest)
            assert "bytes_total" in manifest and "images_per_second" in manifest  # a drop's own keys, not dropped
            assert manifest["run_batch"] == "2 drops in this run: d1, d2"
            embeddings = _latest(instance, "image_embeddings", key)
            assert sum(embeddings["valid_images"].values()) == 2 * (info["files"] - 3)  # 2 models, 3 bad files
            dedup = _latest(instance, "dedup_clusters", key)
            assert dedup["mode"] in ("incremental", "bulk") and dedup["images"] == info["files"] - 3
            assert "largest_groups" in dedup and "data:image/jpeg;base64," in dedup["largest_groups"]
        assert (
            _latest(instance, "raw_image_manifest", "d1")["objects_listed"]
            != _latest(instance, "raw_image_manifest", "d2")["objects_listed"]
        )
