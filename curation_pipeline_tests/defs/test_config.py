"""Run-config schemas that derive from a registry stay in step with it."""

import dataclasses

import dagster as dg

from curation_pipeline.defs.curation import SelectionConfig, StrategyConfig
from curation_pipeline.steps.strategies import STRATEGIES, StrategySpec, option_docs


def test_strategy_config_offers_every_strategy_option_with_its_documentation():
    fields = StrategyConfig.model_fields
    assert list(fields) == [f.name for f in dataclasses.fields(StrategySpec)]
    docs = option_docs()
    assert all(fields[name].description == docs[name] for name in fields if name != "name")
    assert all(name in fields["name"].description for name in STRATEGIES)
    # run config as the UI or YAML gives it reaches the selection spec unchanged
    config = SelectionConfig(
        budget=5, strategies=[{"name": "novelty", "reference": "batch-1"}, {"name": "query_similarity", "queries": ["a.jpg"]}]
    )
    spec = config.spec()
    assert [(s.name, s.reference, s.queries) for s in spec.strategies] == [
        ("novelty", "batch-1", ()),
        ("query_similarity", None, ("a.jpg",)),
    ]
    assert isinstance(config, dg.Config)
