"""Dagster wiring, and the only package that imports Dagster: thin assets, checks and jobs over
`steps`, `core` and `resources`. One module per asset group: ingest (manifest, embeddings), dedup,
curation (curate), retrieval (retrieve), report (curation_report, retrieval_page), export
(curated_export, retrieval_export); plus partitions, jobs, sensors, the Dagster resources
(resources.py) and the pgvector IO manager (io_manager.py)."""
