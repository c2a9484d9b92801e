-- Runs once, on the first start of the postgres container (empty data volume), as the superuser
-- (POSTGRES_USER) through psql. Two databases on one server:
--   dagster   Dagster's instance storage (runs, event log, schedules, sensor ticks, pool slots);
--             docker/dagster.yaml reads it through DAGSTER_PG_*.
--   curation  the project's data: manifests, vectors (pgvector), selections; DATABASE_URL.
-- The passwords match the defaults in docker/compose.yaml; change both for anything shared.
-- (To re-run this script, remove the volume: docker compose -f docker/compose.yaml down -v.)

CREATE ROLE dagster LOGIN PASSWORD 'dagster';
CREATE ROLE curation LOGIN PASSWORD 'curation';

CREATE DATABASE dagster OWNER dagster;
CREATE DATABASE curation OWNER curation;

-- pgvector is not a trusted extension, so the superuser creates it here; the project's first
-- migration then finds it (CREATE EXTENSION IF NOT EXISTS vector).
\connect curation
CREATE EXTENSION IF NOT EXISTS vector;
