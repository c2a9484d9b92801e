"""Storage and model resources: they know databases, object stores and models, not assets. No
Dagster here (its resource classes over these are in defs/resources.py) and no steps."""
