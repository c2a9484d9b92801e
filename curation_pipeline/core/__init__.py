"""Pure, Dagster-free and database-free algorithms: arrays and bytes in, arrays and records out."""
