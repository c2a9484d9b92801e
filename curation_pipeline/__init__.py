"""curation_pipeline: image curation as Dagster software-defined assets."""

__version__ = "0.1.0"
