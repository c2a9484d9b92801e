"""Plain-Python pipeline steps: each combines resources (catalog, image store, embedder) with the
pure algorithms in `core`. Dagster-free, so the assets stay thin and the steps can be called from
tests and benchmarks directly. Each returns a dict of figures that becomes asset metadata."""
