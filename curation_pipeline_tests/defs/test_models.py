"""The right model for each job (issue 14): ingest embeds with every configured model, dedup keeps
the near-duplicate descriptor, selections and retrieval use the semantic model by default or the
one they name, and the domain model trains, versions, and goes stale when retrained. All at the
project's defaults (the real pretrained backbone), on a real Dagster instance and PostgreSQL."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from curation_pipeline.definitions import build_definitions
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import domain_backbone
from curation_pipeline_tests.conftest import make_small_drop
from curation_pipeline_tests.defs.test_graph import _ingest

OFFLINE = "offline:colour-layout-v2"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _models_by_drop(catalog: Catalog) -> dict[tuple[str, str], int]:
    with catalog.connection() as conn:
        rows = conn.execute("SELECT drop_key, model, count(*) FROM embeddings GROUP BY 1, 2").fetchall()
    return {(d, m): int(n) for d, m, n in rows}


def _run_asset(instance, database_url, asset_key: str, partition: str | None = None, config: dict | None = None):
    job = build_definitions(database_url=database_url).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(asset_key)],
        partition_key=partition,
        run_config={"ops": {asset_key: {"config": config}}} if config else None,
        raise_on_error=False,
    )
    return result


@pytest.fixture
def two_drops(tmp_path, database_url, curation_env, instance):
    make_small_drop(tmp_path / "d1")
    make_small_drop(tmp_path / "d2", n_distinct=5)
    _ingest(instance, database_url, "d1", tmp_path / "d1")
    _ingest(instance, database_url, "d2", tmp_path / "d2")
    return tmp_path


def test_ingest_embeds_with_every_configured_model_and_dedup_keeps_the_descriptor(two_drops, database_url, instance):
    catalog = Catalog(database_url)
    mat = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_embeddings")), limit=1)
    roles = mat.records[0].asset_materialization.metadata["models"].value
    assert roles["descriptor"] == OFFLINE
    assert roles["semantic"].startswith("pretrained:tf_efficientnet_lite0/")
    counts = _models_by_drop(catalog)
    for drop in ("d1", "d2"):
        valid = catalog.valid_image_count(drop)
        assert counts[(drop, OFFLINE)] == valid > 0
        assert counts[(drop, roles["semantic"])] == valid
    assert catalog.model_dim(roles["semantic"]) == 1280
    # near-duplicate candidates come from the descriptor, never from the semantic model
    assert catalog.dedup_models() == [OFFLINE]
    # a re-run computes nothing for either model: each content is cached once per model
    again = _ingest(instance, database_url, "d1", two_drops / "d1")
    computed = again.asset_materializations_for_node("image_embeddings")[0].metadata["computed"].value
    assert computed == {OFFLINE: 0, roles["semantic"]: 0}


def test_selection_uses_the_semantic_model_unless_it_names_another(two_drops, database_url, instance):
    catalog = Catalog(database_url)
    defs = build_definitions(database_url=database_url)
    job = defs.resolve_job_def("select_and_report")
    for name, config, expected in (
        ("default-model", {"budget": 4}, "pretrained:"),
        ("on-descriptor", {"budget": 4, "model": "descriptor"}, OFFLINE),
    ):
        instance.add_dynamic_partitions("selections", [name])
        result = job.execute_in_process(
            instance=instance,
            partition_key=name,
            run_config={"ops": {"curated_subset": {"config": config}}},
        )
        assert result.success
        info = catalog.selection_info(name)
        assert info.model.startswith(expected)
        assert info.config["model_choice"] == config.get("model", "semantic")
        report = result.asset_materializations_for_node("curation_report")[0].metadata["models"].value
        assert report["selection, embedding map, clusters, outliers"].startswith(expected)
        assert OFFLINE in report["duplicates, threshold explorer"]
    # an unknown role is refused with the roles listed, and nothing was changed
    instance.add_dynamic_partitions("selections", ["bad"])
    result = job.execute_in_process(
        instance=instance,
        partition_key="bad",
        run_config={"ops": {"curated_subset": {"config": {"budget": 4, "model": "clip"}}}},
        raise_on_error=False,
    )
    assert not result.success and catalog.selection_info("bad") is None
    messages = " ".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
    assert "semantic" in messages and "domain" in messages


def test_domain_model_is_refused_before_training(two_drops, database_url, instance):
    defs = build_definitions(database_url=database_url)
    instance.add_dynamic_partitions("selections", ["dom"])
    result = defs.resolve_job_def("select_and_report").execute_in_process(
        instance=instance,
        partition_key="dom",
        run_config={"ops": {"curated_subset": {"config": {"budget": 4, "model": "domain"}}}},
        raise_on_error=False,
    )
    assert not result.success
    messages = " ".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
    assert "no domain model has been trained" in messages and "train-domain" in messages


def _stale(instance, database_url, key: str) -> StaleStatus:
    graph = build_definitions(database_url=database_url).resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return resolver.get_status(dg.AssetKey("domain_embeddings"), key)


def test_domain_model_trains_embeds_and_goes_stale_when_retrained(two_drops, database_url, instance):
    catalog = Catalog(database_url)
    small = {"views": 1, "epochs": 3, "dim": 32}
    trained = _run_asset(instance, database_url, "domain_embedder", config=small)
    assert trained.success
    first = catalog.current_domain_model()
    assert first is not None and first.version == 1 and first.dim == 32
    assert domain_backbone(first.model_id).startswith("pretrained:") and first.sha256[:12] in first.model_id
    for drop in ("d1", "d2"):
        assert _run_asset(instance, database_url, "domain_embeddings", drop).success
    counts = _models_by_drop(catalog)
    emb = catalog.load_embeddings(["d1", "d2"], first.model_id)
    assert emb.dim == 32 and len(emb) == counts[("d1", first.model_id)] + counts[("d2", first.model_id)]
    assert counts[("d1", first.model_id)] == catalog.valid_image_count("d1")
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)
    assert _stale(instance, database_url, "d1") == StaleStatus.FRESH

    # the same training again reproduces the weights: same version, nothing goes stale
    assert _run_asset(instance, database_url, "domain_embedder", config=small).success
    assert catalog.current_domain_model().model_id == first.model_id
    assert _stale(instance, database_url, "d1") == StaleStatus.FRESH

    # retraining with other settings: a new version, and every drop's domain vectors are stale
    assert _run_asset(instance, database_url, "domain_embedder", config={**small, "seed": 1}).success
    second = catalog.current_domain_model()
    assert second.version == 2 and second.model_id != first.model_id
    assert _stale(instance, database_url, "d1") == StaleStatus.STALE
    assert _stale(instance, database_url, "d2") == StaleStatus.STALE
    # ... and each partition's page says so (an observation with the reason)
    seen = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("domain_embeddings")), limit=10)
    stale_notes = {r.partition_key: r.asset_observation.metadata["stale"].value for r in reversed(seen.records)}
    assert set(stale_notes) == {"d1", "d2"} and all(f"v{second.version}" in v for v in stale_notes.values())
    assert _run_asset(instance, database_url, "domain_embeddings", "d1").success
    assert _stale(instance, database_url, "d1") == StaleStatus.FRESH
    counts = _models_by_drop(catalog)
    assert (("d1", first.model_id) not in counts) and counts[("d1", second.model_id)] == catalog.valid_image_count("d1")

    # a new drop gets its domain vectors in its ingest run
    make_small_drop(two_drops / "d3", n_distinct=6)
    Catalog(database_url).register_drop("d3", str(two_drops / "d3"))
    instance.add_dynamic_partitions("capture_drops", ["d3"])
    ingest = build_definitions(database_url=database_url).resolve_job_def("ingest_drop")
    assert ingest.execute_in_process(instance=instance, partition_key="d3").success
    assert _models_by_drop(catalog)[("d3", second.model_id)] == catalog.valid_image_count("d3")

    # selections can run on it, while dedup keeps its descriptor
    defs = build_definitions(database_url=database_url)
    instance.add_dynamic_partitions("selections", ["on-domain"])
    result = defs.resolve_job_def("select_and_report").execute_in_process(
        instance=instance,
        partition_key="on-domain",
        run_config={"ops": {"curated_subset": {"config": {"budget": 3, "model": "domain", "drop_keys": ["d1"]}}}},
    )
    assert result.success
    assert catalog.selection_info("on-domain").model == second.model_id
    assert catalog.dedup_models() == [OFFLINE]


def test_domain_embeddings_skip_while_no_model_is_trained(two_drops, database_url, instance):
    result = _run_asset(instance, database_url, "domain_embeddings", "d1")
    assert result.success
    assert not result.asset_materializations_for_node("domain_embeddings")
    assert not [m for (_, m) in _models_by_drop(Catalog(database_url)) if m.startswith("domain:")]


def test_stored_domain_weights_are_checked_against_their_hash(database_url):
    """A domain model whose stored weights no longer match their recorded hash is refused by name,
    never used to embed; an id that names no stored version is refused too."""
    from curation_pipeline.resources.domain_model import DomainTrainingConfig, train_head
    from curation_pipeline.resources.embedders import LoadSpec, load_embedder
    from curation_pipeline.steps.embed import EmbedOptions
    from curation_pipeline.steps.models import ProjectModels

    offline = load_embedder("offline", LoadSpec())
    models = ProjectModels(lambda: offline, EmbedOptions(), lambda: offline, EmbedOptions())
    rng = np.random.default_rng(0)
    plain = rng.standard_normal((40, offline.dim)).astype(np.float32)
    views = plain[:, None, :] + 0.1 * rng.standard_normal((40, 2, offline.dim)).astype(np.float32)
    head = train_head(plain, views, DomainTrainingConfig(dim=32, views=2, epochs=2), backbone_model=OFFLINE)
    catalog = Catalog(database_url)
    record, is_new = catalog.save_domain_model(
        backbone_model=OFFLINE, dim=32, sha256=head.sha256, weights=head.to_bytes(), config={}, stats={}, images=40
    )
    assert is_new and models.resolve(catalog, "domain").embedder().embed_images([]).shape == (0, 32)
    tampered = DomainTrainingConfig(dim=32, views=2, epochs=2, seed=5)
    other = train_head(plain, views, tampered, backbone_model=OFFLINE).to_bytes()
    with catalog.connection() as conn:
        conn.execute("UPDATE domain_models SET weights = %s WHERE model_id = %s", (other, record.model_id))
    with pytest.raises(ValueError, match=f"domain model {record.model_id}: stored weights do not match"):
        models.resolve(catalog, "domain").embedder()
    with pytest.raises(LookupError, match="no domain model 'domain:x@v9-abc'"):
        models.resolve(catalog, "domain:x@v9-abc")


def test_the_report_shows_the_thresholds_the_drops_were_deduplicated_with(tmp_path, database_url, curation_env, instance):
    """A run that overrides the near-duplicate threshold: the report's threshold explorer marks the
    value used (not the descriptor's default 0.80) and lists what each drop was deduplicated with."""
    make_small_drop(tmp_path / "d1")
    Catalog(database_url).register_drop("d1", str(tmp_path / "d1"))
    instance.add_dynamic_partitions("capture_drops", ["d1"])
    defs = build_definitions(database_url=database_url)
    ingest = defs.resolve_job_def("ingest_drop").execute_in_process(
        instance=instance, partition_key="d1", run_config={"ops": {"dedup_clusters": {"config": {"min_cosine": 0.9}}}}
    )
    assert ingest.success
    settings = Catalog(database_url).dedup_settings()
    # the verified default: the proposal radius (12), the run's cosine
    assert [(s.drop_key, s.model, s.max_hamming, s.min_cosine) for s in settings] == [("d1", OFFLINE, 12, 0.9)]
    instance.add_dynamic_partitions("selections", ["s"])
    report = defs.resolve_job_def("select_and_report").execute_in_process(
        instance=instance, partition_key="s", run_config={"ops": {"curated_subset": {"config": {"budget": 3}}}}
    )
    path = report.asset_materializations_for_node("curation_report")[0].metadata["path"].value
    page = open(path, encoding="utf-8").read()
    explorer = page.split('id="threshold"')[1].split('id="leaks"')[0]
    assert "threshold 0.90" in explorer and "threshold 0.80" not in explorer
    assert f"pHash Hamming &lt;= 12, cosine &gt;= 0.9 on {OFFLINE}" in explorer
