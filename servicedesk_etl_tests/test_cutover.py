"""Blue-green cutover, rollback, version listing and leftover cleanup against a real server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.cutover import (
    drop_leftovers,
    list_versions,
    mark_loading,
    promote,
    register_version,
    rollback,
)
from servicedesk_etl.errors import InputError, TargetUnreachable
from servicedesk_etl.loading import canary_schema_name, load_schema, version_schema_name
from servicedesk_etl_tests.test_loading import column, pg_rows, servicedesk_cleaned, table_plan, write_cleaned

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version_name(n: int) -> str:
    return version_schema_name(T0 + timedelta(seconds=n))


def make_version(dsn: str, n: int, rows: int) -> str:
    """A registered version schema whose `tickets` table holds `rows` rows, all with marker `n`."""
    name = version_name(n)
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE TABLE {}.tickets AS SELECT %s::int AS marker FROM generate_series(1, %s)").format(
            sql.Identifier(name)), (n, rows))
    register_version(dsn, name, source_sha256=f"sha-{n}", row_counts={"tickets": rows})
    return name


def live_marker(dsn: str) -> tuple[int, int]:
    (row,) = pg_rows(dsn, "SELECT min(marker), count(*) FROM servicedesk.tickets")
    return row


def schemas(dsn: str) -> set[str]:
    return {name for (name,) in pg_rows(dsn, "SELECT nspname FROM pg_namespace")}


def test_promote_makes_the_version_live_under_the_live_name(fresh_database):
    v1 = make_version(fresh_database, 1, 5)
    result = promote(fresh_database, v1)
    assert result.live_version == v1 and result.previous_version is None
    assert live_marker(fresh_database) == (1, 5)
    assert v1 not in schemas(fresh_database)


def test_second_promote_keeps_the_previous_version_under_its_name(fresh_database):
    v1, v2 = make_version(fresh_database, 1, 5), make_version(fresh_database, 2, 7)
    promote(fresh_database, v1)
    result = promote(fresh_database, v2)
    assert result.previous_version == v1
    assert live_marker(fresh_database) == (2, 7)
    assert pg_rows(fresh_database, sql.SQL("SELECT count(*) FROM {}.tickets").format(sql.Identifier(v1))) == [(5,)]
    versions = {v.schema: v for v in list_versions(fresh_database)}
    assert versions[v2].is_live and versions[v2].location == "servicedesk" and versions[v2].status == "live"
    assert not versions[v1].is_live and versions[v1].status == "retired" and versions[v1].exists
    assert versions[v1].row_counts == {"tickets": 5} and versions[v1].source_sha256 == "sha-1"
    assert versions[v2].rows == 7 and versions[v2].promoted_at is not None


def test_rollback_swaps_the_previous_version_back(fresh_database):
    v1, v2, v3 = (make_version(fresh_database, n, n) for n in (1, 2, 3))
    for version in (v1, v2, v3):
        promote(fresh_database, version)
    result = rollback(fresh_database)
    assert (result.live_version, result.previous_version) == (v2, v3)
    assert live_marker(fresh_database) == (2, 2)
    assert rollback(fresh_database).live_version == v1
    assert live_marker(fresh_database) == (1, 1)
    with pytest.raises(InputError, match="no earlier version"):
        rollback(fresh_database)
    assert live_marker(fresh_database) == (1, 1)
    statuses = {v.schema: v.status for v in list_versions(fresh_database)}
    assert statuses == {v1: "live", v2: "rolled_back", v3: "rolled_back"}


def test_versions_beyond_keep_are_dropped_but_never_the_live_one(fresh_database):
    names = [make_version(fresh_database, n, 1) for n in range(1, 6)]
    dropped: list[str] = []
    for name in names:
        dropped += promote(fresh_database, name, keep=2).dropped
    assert dropped == names[:3]
    assert {v.schema for v in list_versions(fresh_database)} == set(names[3:])
    assert not set(names[:3]) & schemas(fresh_database)
    rollback(fresh_database)
    assert live_marker(fresh_database) == (4, 1)
    after = promote(fresh_database, make_version(fresh_database, 9, 1), keep=1)
    assert names[4] in after.dropped and names[3] in after.dropped


def test_an_existing_hand_made_live_schema_is_kept_as_a_version(fresh_database):
    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE SCHEMA servicedesk; CREATE TABLE servicedesk.tickets AS SELECT 0 AS marker")
    v1 = make_version(fresh_database, 1, 3)
    result = promote(fresh_database, v1)
    assert result.previous_version is not None and result.previous_version.startswith("servicedesk_v")
    rollback(fresh_database)
    assert live_marker(fresh_database) == (0, 1)


def test_promote_refuses_unknown_loading_and_live_versions(fresh_database):
    with pytest.raises(InputError, match="not registered"):
        promote(fresh_database, version_name(1))
    name = version_name(2)
    with psycopg.connect(fresh_database) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    mark_loading(fresh_database, name)
    with pytest.raises(InputError, match="loading"):
        promote(fresh_database, name)
    v3 = make_version(fresh_database, 3, 1)
    promote(fresh_database, v3)
    with pytest.raises(InputError, match="already live"):
        promote(fresh_database, v3)
    with pytest.raises(InputError):
        register_version(fresh_database, "servicedesk", source_sha256="x", row_counts={})


def test_readers_never_see_a_missing_or_half_loaded_table_during_cutovers(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=300, comments=10, timesheets=10)
    first = version_name(0)
    load_schema(cleaned, plan, fresh_database, first)
    register_version(fresh_database, first, source_sha256="s", row_counts={"tickets": 300})
    promote(fresh_database, first)
    failures: list[str] = []
    counts: list[int] = []
    stop = threading.Event()

    def read() -> None:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    counts.append(conn.execute('SELECT count(*) FROM servicedesk."tickets"').fetchone()[0])
                except psycopg.Error as error:
                    failures.append(str(error))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 7):
            name = version_name(n)
            load_schema(cleaned, plan, fresh_database, name)
            register_version(fresh_database, name, source_sha256="s", row_counts={"tickets": 300})
            promote(fresh_database, name, keep=2)
            if n == 3:
                rollback(fresh_database)
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert len(counts) > 50
    assert set(counts) == {300}


def test_promote_retries_while_a_reader_holds_a_lock_then_gives_up_cleanly(fresh_database):
    v1, v2 = make_version(fresh_database, 1, 1), make_version(fresh_database, 2, 1)
    promote(fresh_database, v1)
    with psycopg.connect(fresh_database) as blocker:
        blocker.execute("LOCK TABLE servicedesk_etl_meta.versions IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(TargetUnreachable, match="nothing was changed"):
            promote(fresh_database, v2, lock_timeout_ms=50, retries=2)
        blocker.rollback()
    assert live_marker(fresh_database) == (1, 1)
    assert promote(fresh_database, v2).live_version == v2


def test_old_version_in_use_is_left_for_a_later_cutover(fresh_database):
    names = [make_version(fresh_database, n, 1) for n in (1, 2, 3)]
    promote(fresh_database, names[0])
    promote(fresh_database, names[1], keep=2)
    with psycopg.connect(fresh_database) as reader:
        reader.execute(sql.SQL("SELECT * FROM {}.tickets").format(sql.Identifier(names[0])))
        result = promote(fresh_database, names[2], keep=2, lock_timeout_ms=100)
        assert result.dropped == () and live_marker(fresh_database) == (3, 1)
    assert promote(fresh_database, make_version(fresh_database, 4, 1), keep=2).dropped == (names[0], names[1])


def test_drop_leftovers_removes_canaries_and_interrupted_loads_only(tmp_path, fresh_database):
    table = table_plan("t", [column("id", "bigint")], 1)
    cleaned, plan = write_cleaned(tmp_path / "c.db", [(table, [(1,)])])
    stale_ready, live, kept, ready = (make_version(fresh_database, n, 1) for n in (0, 1, 2, 3))
    promote(fresh_database, kept)
    promote(fresh_database, live)
    canary = canary_schema_name("run-abc")
    load_schema(cleaned, plan, fresh_database, canary)
    interrupted = version_name(4)
    mark_loading(fresh_database, interrupted)
    load_schema(cleaned, plan, fresh_database, interrupted)
    unrecorded = version_name(5)
    load_schema(cleaned, plan, fresh_database, unrecorded)
    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE SCHEMA reporting; CREATE SCHEMA servicedesk_dryrun_0a1b2c")

    dropped = drop_leftovers(fresh_database)

    assert dropped == sorted([canary, interrupted, unrecorded, stale_ready, "servicedesk_dryrun_0a1b2c"])
    remaining = schemas(fresh_database)
    assert {"servicedesk", kept, ready, "reporting"} <= remaining
    assert not {canary, interrupted, unrecorded, stale_ready} & remaining
    assert {v.schema for v in list_versions(fresh_database)} == {live, kept, ready}
    assert drop_leftovers(fresh_database) == []


def test_list_versions_is_empty_before_any_load(fresh_database):
    assert list_versions(fresh_database) == []


def test_unreachable_server_error_has_no_password():
    with pytest.raises(TargetUnreachable) as caught:
        promote("host=127.0.0.1 port=1 user=etl password=hunter2-secret dbname=x", version_name(1))
    assert "hunter2-secret" not in str(caught.value)
    with pytest.raises(TargetUnreachable) as caught:
        list_versions("postgresql://etl:hunter2-secret@127.0.0.1:1/x")
    assert "hunter2-secret" not in str(caught.value)
