import psycopg

from curation_pipeline.resources.database import apply_migrations, connect, migration_files


def test_migrations_apply_in_order_once_and_are_recorded(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        first = apply_migrations(conn)
        second = apply_migrations(conn)
        recorded = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert first == [name for _, name, _ in migration_files()]
    assert second == []
    assert [v for v, _ in recorded] == sorted(v for v, _, _ in migration_files())
    assert ext is not None and tuple(int(x) for x in ext[0].split(".")[:2]) >= (0, 8)


def test_connect_registers_vector_type(database_url):
    import numpy as np

    with connect(database_url) as conn:
        got = conn.execute("SELECT %s::vector", (np.array([1.0, 2.0, 3.0], dtype=np.float32),)).fetchone()[0]
    assert np.allclose(got.to_numpy(), [1, 2, 3])
