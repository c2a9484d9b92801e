import dagster as dg

# One key per capture drop (never per image: the UI slows past tens of thousands of keys).
capture_drops = dg.DynamicPartitionsDefinition(name="capture_drops")
# One key per named selection config, and one per named retrieval query.
selections = dg.DynamicPartitionsDefinition(name="selections")
retrieval_queries = dg.DynamicPartitionsDefinition(name="retrieval_queries")
