import dagster as dg

# One key per capture drop (never per image: the UI slows past tens of thousands of keys).
capture_drops = dg.DynamicPartitionsDefinition(name="capture_drops")
# One key per named selection config, and one per named retrieval query.
selections = dg.DynamicPartitionsDefinition(name="selections")
retrieval_queries = dg.DynamicPartitionsDefinition(name="retrieval_queries")

# Backfills of many drops: up to 8 drops per run, so a model is loaded once per 8 drops.
INGEST_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=8)


# Subsets and reports follow new dedup results, once every dependency's blocking checks passed
# and no drop is still being ingested (a half-ingested corpus is not selected from). It is eager()
# with three changes:
# - a missing dedup partition does not hold them back: a drop that failed, is empty, or was added
#   without its images would otherwise stop every selection's automation for good (the selection
#   draws from the drops that have dedup results, and its metadata names the others);
# - a drop deduplicated while the selection's run is in progress is not forgotten: eager() counts
#   the run's own materialization as "handled", although the run started before that drop was
#   there, and the subset stayed stale (seen in the UI walk). Here only a new request handles an
#   update, so the selection runs again once the run in progress is done (at worst once too often,
#   when it did see the drop);
# - they catch up: on the condition's first evaluation (the automation switched on for the first
#   time, after drops landed) every existing selection is refreshed once. Later, a sensor switched
#   off and on again compares with its last evaluation, so drops that landed meanwhile count as updates.
_AC = dg.AutomationCondition
CATCH_UP = (_AC.initial_evaluation() & ~_AC.missing()).with_label("catch up: first evaluation, already materialized")
# any_deps_match(newly_updated) and newly_requested both carry timestamps (materialization time,
# request time), so SINCE keeps a dedup update that came after the last request even when both show
# on the same tick (eager()'s OR-ed operands lose those timestamps). Other deps (the report's
# curated_subset) count as in eager(): updated by a run that did not also target this asset.
_DEDUP = dg.AssetSelection.assets("dedup_clusters")
DEPS_UPDATED_SINCE_REQUESTED = (
    _AC.any_deps_match(_AC.newly_updated()).allow(_DEDUP).since(_AC.newly_requested())
    | (_AC.any_deps_match(_AC.newly_updated() & ~_AC.executed_with_root_target()).ignore(_DEDUP)).since_last_handled()
).with_label("deps updated since last requested")
FOLLOW_DEDUP = (
    (_AC.newly_missing().since_last_handled() | DEPS_UPDATED_SINCE_REQUESTED | CATCH_UP)
    & ~_AC.any_deps_in_progress()
    & ~_AC.in_progress()
    & _AC.all_deps_blocking_checks_passed()
).with_label("eager after dedup (failed or missing drops skipped, catches up), blocking checks passed")
