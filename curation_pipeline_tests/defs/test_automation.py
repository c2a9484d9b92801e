"""Drops that fail or were added by hand: they never stop the automation of the selections, they say
how to fix them, and the sensor picks them up once their images appear."""

import dagster as dg

from curation_pipeline import runs
from curation_pipeline.definitions import build_definitions, build_resources
from curation_pipeline.defs.sensors import WatchSettings, evaluate_drops
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline_tests.conftest import make_small_drop


def _ingest(defs, instance, key: str, **kwargs):
    if not instance.has_dynamic_partition("capture_drops", key):
        instance.add_dynamic_partitions("capture_drops", [key])
    return defs.resolve_job_def("ingest_drop").execute_in_process(instance=instance, partition_key=key, **kwargs)


def test_a_failed_drop_leaves_the_selections_automation_running_and_is_named_as_left_out(tmp_path, database_url):
    root = tmp_path / "drops"
    make_small_drop(root / "a")
    defs = build_definitions(database_url=database_url, drop_root=str(root))
    catalog = Catalog(database_url)
    with dg.instance_for_test() as instance:
        assert _ingest(defs, instance, "a").success
        instance.add_dynamic_partitions("selections", ["weekly"])
        select = defs.resolve_job_def("select_and_report")
        assert select.execute_in_process(
            instance=instance, partition_key="weekly", run_config={"ops": {"curated_subset": {"config": {"budget": 3}}}}
        ).success
        automation = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # switched on (catches up)
        automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation.cursor)  # quiet

        # a partition added by hand (the UI's "Add partition") whose folder does not exist: its run
        # fails at its first step and says how to record where the drop is
        failed = _ingest(defs, instance, "rig9-2026-12-03", raise_on_error=False)
        assert not failed.success
        line = runs.failure_line(failed.run_id, failed.all_events, "ingest_drop", "rig9-2026-12-03")
        assert "at raw_image_manifest: drop 'rig9-2026-12-03' has no recorded source" in line
        assert "curation drop add rig9-2026-12-03 SOURCE" in line and "curation drop remove rig9-2026-12-03" in line

        # another drop lands: the selection follows it although rig9's dedup partition is missing
        make_small_drop(root / "b", n_distinct=6)
        assert _ingest(defs, instance, "b").success
        automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation.cursor)
        assert automation.get_requested_partitions(dg.AssetKey("curated_subset")) == {"weekly"}
        rerun = select.execute_in_process(instance=instance, partition_key="weekly")
        assert rerun.success
        subset = rerun.asset_materializations_for_node("curated_subset")[0].metadata
        left_out = subset["drops_left_out"].value
        assert list(left_out) == ["rig9-2026-12-03"] and left_out["rig9-2026-12-03"].startswith("its last run failed")
        assert {it["drop_key"] for it in catalog.selection_items("weekly")} <= {"a", "b"}

        # its folder shows up under the watched root: the sensor records it there and ingests it
        make_small_drop(root / "rig9-2026-12-03", n_distinct=6)
        (root / "rig9-2026-12-03" / "_SUCCESS").write_bytes(b"")
        resources = build_resources(database_url=database_url, drop_root=str(root))
        context = dg.build_sensor_context(instance=instance)
        result = evaluate_drops(context, WatchSettings(roots=(str(root),)), resources["image_store"], resources["database"])
        assert [(r.partition_key, r.run_key) for r in result.run_requests] == [
            ("rig9-2026-12-03", "drop:rig9-2026-12-03:adopted")
        ]
        assert catalog.drop_source("rig9-2026-12-03") == str(root / "rig9-2026-12-03")
        assert _ingest(defs, instance, "rig9-2026-12-03").success
        # the drops known with their sources are never requested again
        again = evaluate_drops(
            dg.build_sensor_context(instance=instance, cursor=result.cursor),
            WatchSettings(roots=(str(root),)),
            resources["image_store"],
            resources["database"],
        )
        assert again.run_requests == []


def test_the_automation_catches_up_on_drops_that_landed_before_it_was_switched_on(tmp_path, database_url):
    root = tmp_path / "drops"
    make_small_drop(root / "a")
    defs = build_definitions(database_url=database_url, drop_root=str(root))
    with dg.instance_for_test() as instance:
        assert _ingest(defs, instance, "a").success
        instance.add_dynamic_partitions("selections", ["weekly", "never-made"])
        assert (
            defs.resolve_job_def("select_and_report")
            .execute_in_process(
                instance=instance, partition_key="weekly", run_config={"ops": {"curated_subset": {"config": {"budget": 3}}}}
            )
            .success
        )
        make_small_drop(root / "b", n_distinct=6)
        assert _ingest(defs, instance, "b").success  # landed while the automation was off

        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # switched on
        # the stale selection is refreshed (with its stored settings); a partition never
        # materialized (no settings to select with) is not
        assert first.get_requested_partitions(dg.AssetKey("curated_subset")) == {"weekly"}
        # once: the next tick asks for nothing new
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_requested_partitions(dg.AssetKey("curated_subset")) == set()


def test_a_drop_deduplicated_while_the_selection_runs_triggers_it_again(tmp_path, database_url):
    """The selection's run starts, a drop lands and is deduplicated, the run ends: its own
    materialization must not count as having seen that drop (plain eager() forgets it)."""
    root = tmp_path / "drops"
    make_small_drop(root / "a")
    defs = build_definitions(database_url=database_url, drop_root=str(root))
    select = defs.resolve_job_def("select_and_report")
    with dg.instance_for_test() as instance:
        assert _ingest(defs, instance, "a").success
        instance.add_dynamic_partitions("selections", ["weekly"])
        config = {"ops": {"curated_subset": {"config": {"budget": 3}}}}
        assert select.execute_in_process(instance=instance, partition_key="weekly", run_config=config).success
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # switched on: catches up
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        make_small_drop(root / "b", n_distinct=6)
        assert _ingest(defs, instance, "b").success
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.get_requested_partitions(dg.AssetKey("curated_subset")) == {"weekly"}
        # between two ticks: drop c is deduplicated, and the requested selection run (which had
        # started before c was there) finishes
        make_small_drop(root / "c", n_distinct=6)
        assert _ingest(defs, instance, "c").success
        assert select.execute_in_process(instance=instance, partition_key="weekly").success
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.get_requested_partitions(dg.AssetKey("curated_subset")) == {"weekly"}
        # and once it ran after c, nothing more
        assert select.execute_in_process(instance=instance, partition_key="weekly").success
        for _ in range(2):  # and the report, which that run made too, is not asked for again either
            tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
            assert tick.get_requested_partitions(dg.AssetKey("curated_subset")) == set()
            assert tick.get_requested_partitions(dg.AssetKey("curation_report")) == set()
