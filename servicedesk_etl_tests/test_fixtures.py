import psycopg


def test_the_postgres_fixture_is_a_real_server(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        (version,) = conn.execute("SHOW server_version_num").fetchone()
    assert int(version) >= 120000


def test_fresh_database_is_empty_and_isolated(fresh_database):
    with psycopg.connect(fresh_database) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
    assert count == 0


def test_the_shared_corpus_is_beside_the_repository():
    from .conftest import CORPUS_DIR, CORPUS_FILES

    assert CORPUS_DIR.is_dir(), f"{CORPUS_DIR} is missing: corpus tests would silently test nothing"
    assert len(CORPUS_FILES) == 8, CORPUS_FILES
