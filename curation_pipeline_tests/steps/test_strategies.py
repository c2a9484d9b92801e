"""The strategy registry: one entry per strategy, and the parser, help, validation, report wording
and scoring that derive from it; the `novelty` entry end to end."""

from dataclasses import fields

import numpy as np
import pytest

from curation_pipeline.core.selection import max_similarity
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.steps import strategies as registry
from curation_pipeline.steps.select import SelectionSpec, select_subset
from curation_pipeline.steps.strategies import STRATEGIES, Strategy, StrategySpec, cli_help, describe_strategies
from curation_pipeline_tests.steps.test_select import MODEL, _seed_corpus


def test_every_entry_takes_only_real_options_and_the_parser_follows_the_registry():
    names = {f.name for f in fields(StrategySpec)}
    for entry in STRATEGIES.values():
        assert set(entry.options) <= names, entry.name
        assert entry.name in cli_help() and entry.summary in cli_help()
    assert StrategySpec.parse("typicality:0.5,k=10") == StrategySpec("typicality", weight=0.5, k=10)
    assert StrategySpec.parse("query_similarity,queries=a.jpg;b.jpg").queries == ("a.jpg", "b.jpg")
    assert StrategySpec.parse("score,column=u,higher_is_better=false").higher_is_better is False
    with pytest.raises(ValueError, match="diversity does not take 'k'"):
        StrategySpec.parse("diversity,k=5")
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        StrategySpec.parse("coverage,bogus=1")
    stored = [
        {"name": "coverage", "weight": 1.0, "clusters": 40, "k": 20, "allocation": "equal"},
        {"name": "novelty", "weight": 2.0, "reference": "batch-1", "k": 7},
    ]
    # each strategy shows only its own options, and only those that differ from the defaults
    assert describe_strategies(stored) == "coverage:1.0 clusters=40 allocation=equal, novelty:2.0 reference=batch-1"


def test_novelty_prefers_what_a_reference_selection_does_not_cover(database_url):
    catalog = Catalog(database_url)
    ids, vectors, _ = _seed_corpus(catalog)
    select_subset(catalog, "batch-1", SelectionSpec(budget=5, strategies=(StrategySpec("typicality"),)), model=MODEL)
    labelled = [it["image_id"] for it in catalog.selection_items("batch-1")]
    with pytest.raises(ValueError, match="needs reference"):
        select_subset(catalog, "n", SelectionSpec(budget=3, strategies=(StrategySpec("novelty"),)), model=MODEL)

    select_subset(
        catalog, "next", SelectionSpec(budget=5, strategies=(StrategySpec("novelty", reference="batch-1"),)), model=MODEL
    )
    picked = [it["image_id"] for it in catalog.selection_items("next")]
    assert not set(picked) & set(labelled)
    ref = vectors[np.isin(ids, labelled)]
    nearest_ref = dict(zip(ids.tolist(), max_similarity(vectors, ref).tolist()))
    # novelty alone ranks by distance to the reference: the first pick is the least covered image
    assert nearest_ref[picked[0]] == pytest.approx(min(nearest_ref.values()), abs=1e-5)
    assert np.mean([nearest_ref[i] for i in picked]) < np.mean(list(nearest_ref.values()))
    assert catalog.selection_items("next")[0]["reason"] == "novelty"


def test_a_new_strategy_is_one_registry_entry(database_url, monkeypatch):
    """What adding a strategy takes: one entry. Parsing, validation, scoring and wording follow."""
    catalog = Catalog(database_url)
    ids, _, _ = _seed_corpus(catalog)
    entry = Strategy(
        "low_id",
        "prefers small image ids (a test entry)",
        example="low_id",
        score=lambda pool, s: -pool.image_ids.astype(float),
    )
    monkeypatch.setitem(registry.STRATEGIES, "low_id", entry)
    spec = SelectionSpec(budget=3, strategies=(StrategySpec.parse("low_id:2"),))
    select_subset(catalog, "ids", spec, model=MODEL)
    assert [it["image_id"] for it in catalog.selection_items("ids")] == sorted(ids.tolist())[:3]
    assert "low_id" in cli_help()
