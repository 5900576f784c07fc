"""`deploy/dagster.yaml`, used as is: Dagster keeps the runs and every gate's evaluation in PostgreSQL.

The instance database and the migration target are two separate new databases of the test server,
as they would be in production (Dagster's bookkeeping is not the `servicedesk` target).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from servicedesk_etl.checks import GATES

from .conftest import REPO_ROOT, scratch_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DEPLOYED_INSTANCE = REPO_ROOT / "deploy" / "dagster.yaml"


def postgres_url(dsn: str) -> str:
    """A libpq DSN as the URL dagster-postgres wants; a socket directory goes in `?host=`."""
    params = {key: value for key, value in conninfo_to_dict(dsn).items() if value}
    user = quote(params.pop("user", "postgres"), safe="")
    password = quote(params.pop("password", ""), safe="")
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = quote(params.pop("dbname", "postgres"), safe="")
    if host.startswith("/"):
        query = urlencode({"host": host, **({"port": port} if port else {})})
        return f"postgresql+psycopg2://{user}:{password}@/{dbname}?{query}"
    return f"postgresql+psycopg2://{user}:{password}@{host}{':' + port if port else ''}/{dbname}"


@pytest.fixture
def target_database(pg_dsn: str) -> Iterator[str]:
    """The migration target: a second new database beside the instance's."""
    with scratch_database(pg_dsn, "test_target") as dsn:
        yield dsn


@pytest.fixture
def postgres_instance(state_home: Path, fresh_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DAGSTER_HOME holding a copy of deploy/dagster.yaml, with DAGSTER_PG_URL at a new database."""
    dagster_home = state_home / "dagster"
    shutil.copyfile(DEPLOYED_INSTANCE, dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url(fresh_database))
    return fresh_database


@pytest.fixture
def demo_snapshot(tmp_path: Path) -> Path:
    from servicedesk_etl.demo_data import generate_demo_snapshot

    path = tmp_path / "servicedesk_tickets.db"
    generate_demo_snapshot(path, scale=0.01, seed=42)
    return path


@pytest.mark.parametrize(
    ("dsn", "url"),
    [
        ("postgresql://postgres:@/db1?host=/tmp/pg", "postgresql+psycopg2://postgres:@/db1?host=%2Ftmp%2Fpg"),
        ("host=/tmp/pg port=5433 user=etl dbname=dagster", "postgresql+psycopg2://etl:@/dagster?host=%2Ftmp%2Fpg&port=5433"),
        ("host=db.internal port=5432 user=dagster password=p@ss dbname=dagster",
         "postgresql+psycopg2://dagster:p%40ss@db.internal:5432/dagster"),
    ],
)
def test_postgres_url_accepts_keyword_and_socket_dsns(dsn: str, url: str):
    assert postgres_url(dsn) == url


def test_the_deployed_instance_opens_on_a_unix_socket_url_and_queues_one_run_at_a_time(postgres_instance: str):
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1


def test_a_migration_run_and_its_gate_evaluations_are_stored_in_postgresql(
    postgres_instance: str, target_database: str, demo_snapshot: Path
):
    from servicedesk_etl.runner import run_migration

    summary = run_migration(demo_snapshot, dsn=target_database)

    assert summary.success, (summary.stopped_by, summary.reason)
    with psycopg.connect(postgres_instance) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_id = %s", (summary.run_id,)).fetchone()
        evaluations = conn.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_CHECK_EVALUATION'",
            (summary.run_id,),
        ).fetchone()[0]
        materialized = {
            row[0]
            for row in conn.execute(
                "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                (summary.run_id,),
            )
        }
        checks = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT check_name, execution_status FROM asset_check_executions WHERE run_id = %s",
                (summary.run_id,),
            )
        }
    assert status == ("SUCCESS",)
    assert evaluations == sum(len(gates) for gates in GATES.values())
    assert len(materialized) == len(GATES)
    assert checks == {gate: "SUCCEEDED" for gates in GATES.values() for gate in gates}
    assert_target_and_instance_are_apart(postgres_instance, target_database)


def assert_target_and_instance_are_apart(instance_dsn: str, target_dsn: str) -> None:
    """The migration wrote `servicedesk` into the target only; Dagster's tables are only in the instance."""
    with psycopg.connect(instance_dsn) as conn:
        in_instance = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'servicedesk%'").fetchone()[0]
    with psycopg.connect(target_dsn) as conn:
        live = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'servicedesk'").fetchone()[0]
        dagster_tables = conn.execute("SELECT to_regclass('public.event_logs') IS NOT NULL").fetchone()[0]
    assert in_instance == 0
    assert live > 0
    assert not dagster_tables
