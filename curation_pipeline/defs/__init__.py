"""Dagster wiring, and the only package that imports Dagster: thin assets, checks and jobs over
`steps`, `core` and `resources`. One module per asset group: ingest (manifest, embeddings), dedup,
curation (curate), retrieval (retrieve), report (curation_report, retrieval_page), export
(curated_export, retrieval_export); plus partitions, jobs, sensors, the Dagster resources
(resources.py) and the pgvector IO manager (io_manager.py)."""

import warnings

import dagster as dg

# Multi-run backfill policies (a model loaded once per 8 drops) are marked beta in Dagster 1.13 and
# warn at every import of the assets, in every process: that one warning, nothing else.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning)
