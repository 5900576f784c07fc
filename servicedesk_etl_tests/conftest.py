"""Shared fixtures: a real PostgreSQL server for the whole run, fresh databases, corpus copies."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from servicedesk_etl.settings import ENV_TEST_PG_DSN

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = REPO_ROOT.parent / "shared" / "corpus"
CORPUS_FILES = sorted(p.name for p in CORPUS_DIR.glob("*") if p.suffix in {".db", ".sqlite"})


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of the test server: `SERVICEDESK_TEST_PG_DSN`, else an embedded server for this run.

    The embedded server's data lives outside pytest's temporary directories, which pytest prunes
    (other concurrent pytest runs would otherwise delete it under a running server).
    """
    given = os.environ.get(ENV_TEST_PG_DSN)
    if given:
        yield given
        return
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="servicedesk-test-pg-"))
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


def dsn_for_database(dsn: str, dbname: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["dbname"] = dbname
    return make_conninfo(**params)


@contextmanager
def scratch_database(pg_dsn: str, prefix: str = "test") -> Iterator[str]:
    """DSN of a new, empty database on the test server, dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield dsn_for_database(pg_dsn, name)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_database(pg_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database dropped after the test: isolation for tests that change schemas."""
    with scratch_database(pg_dsn) as dsn:
        yield dsn


@pytest.fixture
def corpus_copy(tmp_path: Path):
    """Copy a corpus file into the test's directory (the corpus itself is never opened)."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copyfile(CORPUS_DIR / name, target)
        return target

    return copy


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated SERVICEDESK_ETL_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SERVICEDESK_ETL_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir()
    return home
