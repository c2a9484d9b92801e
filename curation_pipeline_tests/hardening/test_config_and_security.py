"""Configuration errors fail early and say what to change; user strings never become SQL."""

import dagster as dg
import numpy as np
import pytest

from curation_pipeline.core.dedup import DedupThresholds
from curation_pipeline.core.ids import validate_name
from curation_pipeline.definitions import ASSETS, build_resources
from curation_pipeline.defs.resources import EmbedderResource
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.filters import Predicate, compile_filters
from curation_pipeline.steps.select import SelectionSpec, StrategySpec, select_subset
from curation_pipeline_tests.steps.test_select import MODEL, _seed_corpus

INJECTIONS = [
    "x'; DROP TABLE images; --",
    'x"; DROP TABLE images; --',
    "a) OR (1=1",
    "$$; DROP TABLE images; $$",
    "images; --",
    "../../etc/passwd",
]


def _tables(catalog):
    with catalog.connection() as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_through_filters_names_and_columns_stays_data(database_url, value):
    catalog = Catalog(database_url)
    _seed_corpus(catalog)
    before = _tables(catalog)
    # a filter value and an annotation-column name are bound parameters: no match, no damage
    with pytest.raises(ValueError, match="no candidate images"):
        select_subset(catalog, "s", SelectionSpec(budget=2, where=(f"camera_model={value}",)), model=MODEL)
    # an unknown column name is refused before any SQL; one that names an existing annotation goes
    # into the query as a bound parameter and matches nothing
    with pytest.raises(ValueError, match="unknown column"):
        select_subset(catalog, "s", SelectionSpec(budget=2, where=(f"{value}=1",)), model=MODEL)
    with catalog.connection() as conn:
        some_image = conn.execute("SELECT image_id FROM images LIMIT 1").fetchone()[0]
    catalog.replace_annotations([(some_image, Predicate.parse(f"{value}=1").column, "x", None)], source="test")
    with pytest.raises(ValueError, match="no candidate images"):
        select_subset(catalog, "s", SelectionSpec(budget=2, where=(f"{value}=1",)), model=MODEL)
    with pytest.raises(ValueError):
        select_subset(
            catalog,
            "s",
            SelectionSpec(budget=2, strategies=(StrategySpec("balance", column=value),), where=(f"{value} is not null",)),
            model=MODEL,
        )
    # partition keys and selection names are validated before anything runs
    with pytest.raises(ValueError, match="invalid"):
        validate_name(value, "drop key")
    # lookups by user-supplied references are parameters too
    assert catalog.image_ids_for_refs([value]) == {}
    assert catalog.search(MODEL, np.ones(16, np.float32) / 4, 3, drop_keys=[value]) == [[]]
    assert _tables(catalog) == before
    with catalog.connection() as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 100


def test_filter_sql_has_no_user_text():
    """The compiled SQL text holds only identifiers from code; values arrive as parameters."""
    joins, where, jparams, params = compile_filters(
        [Predicate.parse("label in a');--,b"), Predicate.parse("brightness>=0.5")], ["dark"]
    )
    text = (joins.as_string(None) if hasattr(joins, "as_string") else str(joins)) + str(where)
    assert "--" not in text and "label" not in text
    assert jparams == ["label"] and ["a');--", "b"] in params and 0.5 in params


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DedupThresholds(min_cosine=1.5), r"min_cosine must be within \(0, 1\]"),
        (lambda: DedupThresholds(max_hamming=65), r"max_hamming must be within \[0, 64\]"),
        (lambda: EmbedderResource(backend="resnet"), "backend"),
        (lambda: SelectionSpec(budget=5, min_distance=3).validate("s"), r"min_distance is a cosine distance in \[0, 2\]"),
        (lambda: SelectionSpec(budget=5, candidate_pool_cap=2).validate("s"), "candidate_pool_cap"),
        (lambda: StrategySpec.parse("diversity:heavy"), "'heavy' is not a number"),
    ],
)
def test_config_errors_say_what_to_change(make, message):
    with pytest.raises(Exception, match=message):
        make()


def _messages(error):
    while error is not None:
        yield error.message
        error = error.cause


def test_a_threshold_outside_0_1_fails_clearly_and_writes_nothing(tmp_path, database_url, curation_env):
    from curation_pipeline_tests.conftest import make_small_drop

    make_small_drop(tmp_path / "d")
    Catalog(database_url).register_drop("d", str(tmp_path / "d"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("capture_drops", ["d"])
        result = dg.materialize(
            ASSETS[:3],
            partition_key="d",
            instance=instance,
            raise_on_error=False,
            resources=build_resources(database_url=database_url),
            run_config={"ops": {"dedup_clusters": {"config": {"min_cosine": 1.7}}}},
        )
    assert not result.success
    errors = [m for ev in result.all_events if ev.is_step_failure for m in _messages(ev.step_failure_data.error)]
    assert any("min_cosine must be within (0, 1], got 1.7" in e for e in errors), errors
    with Catalog(database_url).connection() as conn:  # nothing half-written for the failed step
        assert conn.execute("SELECT count(*) FROM dedup_members").fetchone()[0] == 0


def test_credentials_never_reach_logs_or_metadata(tmp_path, s3, database_url, curation_env):
    """A run reading S3 with explicit credentials: the secret appears in no event of the run."""
    from curation_pipeline.definitions import build_definitions
    from curation_pipeline.defs.resources import CurationS3Resource
    from curation_pipeline_tests.conftest import make_small_drop, new_bucket, upload_folder

    bucket = new_bucket(s3)
    make_small_drop(tmp_path / "d")
    upload_folder(s3, tmp_path / "d", bucket, "drops/d/")
    Catalog(database_url).register_drop("d", f"s3://{bucket}/drops/d/")
    secret = "testing"  # moto accepts any key; the point is that it must never be echoed
    s3r = CurationS3Resource(
        endpoint_url=s3.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="AKIATESTKEY",
        aws_secret_access_key=secret + "-SECRET-VALUE",
    )
    defs = build_definitions(database_url=database_url, s3=s3r)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("capture_drops", ["d"])
        result = defs.resolve_job_def("ingest_drop").execute_in_process(partition_key="d", instance=instance)
        assert result.success
        logs = " ".join(str(e) for e in instance.all_logs(result.run_id))
    assert "SECRET-VALUE" not in logs and "AKIATESTKEY" not in logs
