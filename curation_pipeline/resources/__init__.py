"""Storage and model resources: they know databases, object stores and models, not assets."""
