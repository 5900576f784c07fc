"""Typed binary COPY load of a cleaned SQLite file into a new PostgreSQL schema."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from servicedesk_etl.errors import InputError, TargetUnreachable
from servicedesk_etl.loading import (
    canary_bucket,
    canary_schema_name,
    load_schema,
    version_schema_name,
)
from servicedesk_etl.profiling.plan import SQLITE_DECLARED_TYPE, ColumnPlan, Conversion, Plan, TablePlan
from servicedesk_etl.sqlite_source import quote_ident

pytestmark = pytest.mark.postgres


# ---- helpers shared by the gate-3 tests: hand-built cleaned files and plans -------------------


def column(name: str, target: str, *, pg_name: str | None = None, declared: str = "TEXT", unique: bool = False) -> ColumnPlan:
    return ColumnPlan(
        name=name,
        pg_name=pg_name or name,
        declared_type=declared,
        target_type=target,
        conversion=Conversion(),
        confidence=1.0,
        unique=unique,
    )


def table_plan(
    name: str, columns: list[ColumnPlan], rows: int, *, key: tuple[str, ...] = (), pg_name: str | None = None
) -> TablePlan:
    return TablePlan(name=name, pg_name=pg_name or name, row_count=rows, columns=tuple(columns), key_columns=key)


def write_cleaned(path: Path, tables: list[tuple[TablePlan, list[tuple[Any, ...]]]]) -> tuple[Path, Plan]:
    """A cleaned SQLite file (canonical storage values, plus `_audit`/`_quarantine`) and its plan."""
    conn = sqlite3.connect(path)
    with conn:
        for table, rows in tables:
            columns = ", ".join(f"{quote_ident(c.name)} {SQLITE_DECLARED_TYPE[c.target_type]}" for c in table.columns)
            conn.execute(f"CREATE TABLE {quote_ident(table.name)} ({columns})")
            marks = ", ".join("?" for _ in table.columns)
            conn.executemany(f"INSERT INTO {quote_ident(table.name)} VALUES ({marks})", rows)
        conn.execute("CREATE TABLE _audit (table_name TEXT, column_name TEXT, change TEXT, count INTEGER)")
        conn.execute("CREATE TABLE _quarantine (table_name TEXT, column_name TEXT, value TEXT, reason TEXT)")
        conn.execute("INSERT INTO _quarantine VALUES ('tickets', 'x', 'bad', 'unparseable')")
    conn.close()
    plan = Plan(
        source_path=str(path),
        source_sha256="0" * 64,
        created_at="2026-01-01T00:00:00Z",
        tables=tuple(table for table, _rows in tables),
    )
    return path, plan


TICKET_COLUMNS = [
    column("TKT-Ticket ID", "bigint", declared="INTEGER"),
    column("TKT-Title", "text"),
    column("TKT-Status", "text"),
    column("TKT-Severity", "text"),
    column("TKT-Team", "text"),
    column("TKT-Assigned To User", "text"),
    column("TKT-Created Time", "timestamp", declared="TIMESTAMP"),
    column("TKT-Modified Time", "timestamp", declared="TIMESTAMP"),
    column("TKT-Actual Resolution Date", "timestamp"),
    column("TKT-Closure Date", "date"),
    column("TKT-SLA Met", "boolean"),
    column("TKT-Account Id", "double precision", declared="REAL"),
    column("TKT-Actual SLA Achievement", "numeric"),
]
COMMENT_COLUMNS = [
    column("comment_id", "bigint", unique=True),
    column("ticket_id", "bigint"),
    column("comment_text", "text"),
    column("user_name", "text"),
    column("created_time", "timestamp", declared="TIMESTAMP"),
    column("visible_to_customer", "boolean"),
]
TIMESHEET_COLUMNS = [
    column("TS-User Full Name", "text"),
    column("TS-Date", "timestamp", declared="TIMESTAMP"),
    column("TS-Hours", "double precision", declared="REAL"),
    column("TS-Crm ID", "bigint", declared="INTEGER"),
    column("TS-Account Name", "text"),
]
STATUSES = ("Open", "In Progress", "Closed", "Resolved", "Pending")
SEVERITIES = ("1 - Critical", "2 - High", "3 - Medium", "4 - Low")
TEAMS = ("Cloud", "Network", "Service Desk", "Database")
AGENTS = ("Ana Silva", "Bongani Dlamini", "Chen Wei", "Dara Ó Briain")


def ticket_rows(count: int) -> list[tuple[Any, ...]]:
    start = datetime(2025, 1, 1, 8, 0, 0)
    rows = []
    for i in range(1, count + 1):
        created = start + timedelta(hours=7 * i, microseconds=i * 37 if i % 3 else 0)
        closed = STATUSES[i % 5] in ("Closed", "Resolved")
        resolved = created + timedelta(hours=i % 50 + 1, minutes=i % 60) if closed else None
        rows.append(
            (
                1000 + i,
                f"Ticket {i}: naïve café ünïcode" if i % 7 == 0 else f"Ticket {i}",
                STATUSES[i % 5],
                SEVERITIES[i % 4],
                TEAMS[i % 4] if i % 11 else None,
                AGENTS[i % 4],
                created.isoformat(sep=" "),
                (created + timedelta(hours=1)).isoformat(sep=" "),
                resolved.isoformat(sep=" ") if resolved else None,
                resolved.date().isoformat() if resolved else None,
                (i % 3 != 0) if closed else None,
                float(i % 9) + 0.1 if i % 13 else None,
                [87.5, 100, 0.1, 33.333333333333336][i % 4] if i % 6 else None,
            )
        )
    return rows


def comment_rows(count: int, tickets: int) -> list[tuple[Any, ...]]:
    start = datetime(2025, 1, 1, 9, 0, 0)
    return [
        (
            i,
            1000 + (i % tickets) + 1,
            f"comment {i}\nsecond line" if i % 5 else "",
            AGENTS[i % 4],
            (start + timedelta(minutes=53 * i)).isoformat(sep=" "),
            i % 2,
        )
        for i in range(1, count + 1)
    ]


def timesheet_rows(count: int, tickets: int) -> list[tuple[Any, ...]]:
    start = datetime(2025, 1, 1)
    return [
        (
            AGENTS[i % 4],
            (start + timedelta(days=i % 90)).isoformat(sep=" "),
            [0.25, 1.5, 0.1, 7.7, 2.0][i % 5],
            0 if i % 5 == 0 else 1000 + (i % tickets) + 1,
            ("Acme", "Globex", "Initech")[i % 3],
        )
        for i in range(1, count + 1)
    ]


def servicedesk_cleaned(path: Path, *, tickets: int = 120, comments: int = 300, timesheets: int = 1500) -> tuple[Path, Plan]:
    """A small cleaned ServiceDesk snapshot with the real column names."""
    return write_cleaned(
        path,
        [
            (table_plan("tickets", TICKET_COLUMNS, tickets, key=("TKT-Ticket ID",)), ticket_rows(tickets)),
            (table_plan("comments", COMMENT_COLUMNS, comments), comment_rows(comments, tickets)),
            (table_plan("timesheets", TIMESHEET_COLUMNS, timesheets), timesheet_rows(timesheets, tickets)),
        ],
    )


def pg_rows(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


# ---- tests -----------------------------------------------------------------------------------


def test_load_creates_planned_types_not_declared_ones(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db")
    load_schema(cleaned, plan, fresh_database, "v1")
    types = dict(
        pg_rows(
            fresh_database,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'v1' AND table_name = 'tickets'",
        )
    )
    assert types["TKT-Created Time"] == "timestamp without time zone"
    assert types["TKT-Actual Resolution Date"] == "timestamp without time zone"
    assert types["TKT-Closure Date"] == "date"
    assert types["TKT-SLA Met"] == "boolean"
    assert types["TKT-Ticket ID"] == "bigint"
    assert types["TKT-Account Id"] == "double precision"
    assert types["TKT-Actual SLA Achievement"] == "numeric"


def test_load_copies_every_row_and_value_exactly(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db")
    result = load_schema(cleaned, plan, fresh_database, "v1", chunk_rows=7)
    assert {t.table: t.rows for t in result.tables} == {"tickets": 120, "comments": 300, "timesheets": 1500}
    assert result.rows == 1920
    loaded = pg_rows(fresh_database, 'SELECT * FROM v1.tickets ORDER BY "TKT-Ticket ID"')
    expected = ticket_rows(120)
    assert len(loaded) == 120
    for got, raw in zip(loaded, expected, strict=True):
        assert got[0] == raw[0] and got[1] == raw[1]
        assert got[6] == datetime.fromisoformat(raw[6])
        assert got[8] == (datetime.fromisoformat(raw[8]) if raw[8] else None)
        assert got[9] == (date.fromisoformat(raw[9]) if raw[9] else None)
        assert got[10] == (None if raw[10] is None else bool(raw[10]))
        assert got[11] == raw[11]
        assert got[12] == (None if raw[12] is None else Decimal(str(raw[12])))


def test_timestamptz_values_keep_their_instant(tmp_path, fresh_database):
    plan_table = table_plan("events", [column("at", "timestamptz"), column("id", "bigint")], 2)
    cleaned, plan = write_cleaned(
        tmp_path / "c.db", [(plan_table, [("2025-05-20 08:42:00+02:00", 1), ("2025-05-20 08:42:00.5-05:30", 2)])]
    )
    load_schema(cleaned, plan, fresh_database, "v1")
    got = [at for (at,) in pg_rows(fresh_database, "SELECT at FROM v1.events ORDER BY id")]
    assert got == [datetime(2025, 5, 20, 6, 42, tzinfo=UTC), datetime(2025, 5, 20, 14, 12, 0, 500000, tzinfo=UTC)]


def test_pg_names_are_used_and_comments_record_the_source(tmp_path, fresh_database):
    long_name = "a column name that is far too long for postgresql identifiers " + "x" * 10
    columns = [
        column("Order Date", "date", declared="VARCHAR(8000)"),
        column(long_name, "text", pg_name="a column name that is far too long for postgresql ide~1"),
        column("select", "bigint", declared="INTEGER"),
    ]
    cleaned, plan = write_cleaned(
        tmp_path / "c.db", [(table_plan("Order", columns, 1, pg_name="Order"), [("1996-07-04", "x", 7)])]
    )
    load_schema(cleaned, plan, fresh_database, "weird schema")
    (row,) = pg_rows(fresh_database, 'SELECT "Order Date", "a column name that is far too long for postgresql ide~1", "select" FROM "weird schema"."Order"')
    assert row == (date(1996, 7, 4), "x", 7)
    comments = dict(
        pg_rows(
            fresh_database,
            "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
            "WHERE a.attrelid = '\"weird schema\".\"Order\"'::regclass AND a.attnum > 0",
        )
    )
    assert comments["Order Date"] == "source type: VARCHAR(8000)"
    assert comments["a column name that is far too long for postgresql ide~1"] == f"source type: TEXT; source column: {long_name}"


def test_audit_and_quarantine_tables_are_not_loaded(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=5, comments=5, timesheets=5)
    load_schema(cleaned, plan, fresh_database, "v1")
    tables = {name for (name,) in pg_rows(fresh_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'v1'")}
    assert tables == {"tickets", "comments", "timesheets"}


def test_primary_key_indexes_and_statistics_exist_after_load(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db")
    load_schema(cleaned, plan, fresh_database, "v1")
    indexes = pg_rows(
        fresh_database,
        "SELECT t.relname, a.attname, i.indisprimary FROM pg_index i "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey) WHERE n.nspname = 'v1'",
    )
    assert ("tickets", "TKT-Ticket ID", True) in indexes
    assert ("tickets", "TKT-Created Time", False) in indexes
    assert ("tickets", "TKT-Closure Date", False) in indexes
    assert ("comments", "comment_id", False) in indexes
    assert ("timesheets", "TS-Date", False) in indexes
    assert ("timesheets", "TS-Hours", False) not in indexes
    analyzed = pg_rows(
        fresh_database, "SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'v1' AND last_analyze IS NOT NULL"
    )
    assert {name for (name,) in analyzed} == {"tickets", "comments", "timesheets"}


def test_existing_schema_is_refused_and_left_alone(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=5, comments=5, timesheets=5)
    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE SCHEMA v1; CREATE TABLE v1.keep (x int)")
    with pytest.raises(InputError, match="already exists"):
        load_schema(cleaned, plan, fresh_database, "v1")
    assert pg_rows(fresh_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'v1'") == [("keep",)]


def test_a_failing_table_drops_the_whole_schema(tmp_path, fresh_database):
    good = table_plan("good", [column("n", "bigint")], 3000)
    bad = table_plan("bad", [column("d", "date")], 2)
    cleaned, plan = write_cleaned(
        tmp_path / "c.db", [(good, [(i,) for i in range(3000)]), (bad, [("2025-01-01",), ("20/05/2025",)])]
    )
    with pytest.raises(InputError, match=r"bad\.d"):
        load_schema(cleaned, plan, fresh_database, "v1", chunk_rows=100)
    assert pg_rows(fresh_database, "SELECT nspname FROM pg_namespace WHERE nspname = 'v1'") == []


def test_duplicate_keys_fail_the_primary_key_and_drop_the_schema(tmp_path, fresh_database):
    table = table_plan("t", [column("id", "bigint")], 2, key=("id",))
    cleaned, plan = write_cleaned(tmp_path / "c.db", [(table, [(1,), (1,)])])
    with pytest.raises(psycopg.errors.UniqueViolation):
        load_schema(cleaned, plan, fresh_database, "v1")
    assert pg_rows(fresh_database, "SELECT nspname FROM pg_namespace WHERE nspname = 'v1'") == []


def test_canary_sample_is_about_ten_percent_and_deterministic(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=120, comments=3000, timesheets=5000)
    first = load_schema(cleaned, plan, fresh_database, "c1", sample_percent=10, seed=7)
    again = load_schema(cleaned, plan, fresh_database, "c2", sample_percent=10, seed=7)
    other = load_schema(cleaned, plan, fresh_database, "c3", sample_percent=10, seed=8)
    assert again.row_counts() == first.row_counts()
    assert other.row_counts()["tickets"] == 120
    counts = {t.table: t.rows for t in first.tables}
    assert counts["tickets"] == 120  # under small_table_rows: copied whole
    assert 200 <= counts["comments"] <= 400
    assert 350 <= counts["timesheets"] <= 650
    assert pg_rows(fresh_database, "SELECT comment_id FROM c1.comments ORDER BY 1") == pg_rows(
        fresh_database, "SELECT comment_id FROM c2.comments ORDER BY 1"
    )
    assert pg_rows(fresh_database, "SELECT comment_id FROM c1.comments ORDER BY 1") != pg_rows(
        fresh_database, "SELECT comment_id FROM c3.comments ORDER BY 1"
    )


def test_canary_sample_follows_the_key_not_the_row_position(tmp_path, fresh_database):
    table = table_plan("t", [column("id", "bigint"), column("v", "text")], 2000, key=("id",))
    rows = [(i, f"v{i}") for i in range(2000)]
    forward, plan = write_cleaned(tmp_path / "a.db", [(table, rows)])
    backward, _ = write_cleaned(tmp_path / "b.db", [(table, rows[::-1])])
    load_schema(forward, plan, fresh_database, "a", sample_percent=10)
    load_schema(backward, plan, fresh_database, "b", sample_percent=10)
    ids = pg_rows(fresh_database, "SELECT id FROM a.t ORDER BY id")
    assert ids == pg_rows(fresh_database, "SELECT id FROM b.t ORDER BY id")
    assert [(i,) for i in range(2000) if canary_bucket(0, i) < 1000] == ids


def test_progress_reports_rows_per_table(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=10, comments=50, timesheets=100)
    seen: list[tuple[str, int, int]] = []
    load_schema(cleaned, plan, fresh_database, "v1", chunk_rows=40, progress=lambda *a: seen.append(a))
    assert ("timesheets", 40, 100) in seen and ("timesheets", 100, 100) in seen
    assert ("comments", 50, 50) in seen


def test_unreachable_target_names_the_server_but_never_the_password(tmp_path):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=1, comments=1, timesheets=1)
    dsn = "postgresql://loader:s3cret-pass@127.0.0.1:1/servicedesk"
    with pytest.raises(TargetUnreachable) as caught:
        load_schema(cleaned, plan, dsn, "v1")
    assert "s3cret-pass" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_schema_names_are_safe_and_sortable():
    assert canary_schema_name("3F2a-91c0-77de-4b3e-aaaa") == "servicedesk_canary_3f2a91c077de"
    assert version_schema_name(datetime(2026, 11, 26, 22, 5, 1, 123, tzinfo=UTC)) == "servicedesk_v20261126T220501000123Z"
    assert version_schema_name(datetime(2026, 1, 1)) < version_schema_name(datetime(2026, 1, 2))
    with pytest.raises(InputError):
        canary_schema_name("---")


def test_a_malformed_dsn_is_an_input_error_without_the_password(tmp_path):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=1, comments=1, timesheets=1)
    with pytest.raises(InputError) as caught:
        load_schema(cleaned, plan, "host=x password=topsecret-1 port", "v1")
    assert "topsecret-1" not in str(caught.value)


def test_canary_of_a_keyless_without_rowid_table_samples_by_its_values(tmp_path, fresh_database):
    path = tmp_path / "c.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE pairs (a INTEGER, b TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID")
        conn.executemany("INSERT INTO pairs VALUES (?, ?)", [(i, f"b{i}") for i in range(3000)])
    conn.close()
    plan = Plan(source_path=str(path), source_sha256="0", created_at="x",
                tables=(table_plan("pairs", [column("a", "bigint"), column("b", "text")], 3000),))
    result = load_schema(path, plan, fresh_database, "c", sample_percent=10)
    expected = sum(1 for i in range(3000) if canary_bucket(0, i, f"b{i}") < 1000)
    assert result.tables[0].rows == expected and 200 < expected < 400
