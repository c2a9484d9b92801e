"""Dagster wiring: thin assets, checks and jobs over `steps`, `core` and `resources`."""
