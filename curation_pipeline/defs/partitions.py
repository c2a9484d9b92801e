import dagster as dg

# One key per capture drop (never per image: the UI slows past tens of thousands of keys).
capture_drops = dg.DynamicPartitionsDefinition(name="capture_drops")
# One key per named selection config, and one per named retrieval query.
selections = dg.DynamicPartitionsDefinition(name="selections")
retrieval_queries = dg.DynamicPartitionsDefinition(name="retrieval_queries")

# Backfills of many drops: up to 8 drops per run, so a model is loaded once per 8 drops.
INGEST_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=8)


# Subsets and reports follow new dedup results, once every dependency's blocking checks passed
# and no drop is still being ingested (a half-ingested corpus is not selected from).
FOLLOW_DEDUP = (dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()).with_label(
    "eager after dedup, blocking checks passed"
)
