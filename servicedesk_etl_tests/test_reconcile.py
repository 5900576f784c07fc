"""Reconciliation of a loaded schema with its cleaned SQLite file: it passes when equal, and names
the table, column and check when a single value differs."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.loading import load_schema
from servicedesk_etl.reconcile import reconcile_schema
from servicedesk_etl_tests.test_loading import column, servicedesk_cleaned, table_plan, write_cleaned

pytestmark = pytest.mark.postgres


def failing(report) -> set[tuple[str, str | None, str]]:
    return {(f.table, f.column, f.check) for f in report.failures}


def execute(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(statement)


@pytest.fixture
def loaded(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db")
    load_schema(cleaned, plan, fresh_database, "v1")
    return cleaned, plan, fresh_database


def test_a_faithful_load_reconciles(loaded):
    cleaned, plan, dsn = loaded
    report = reconcile_schema(cleaned, plan, dsn, "v1")
    assert report.ok, report.failure_samples()
    tickets = next(t for t in report.tables if t.table == "tickets")
    assert tickets.source_rows == tickets.target_rows == 120
    kinds = {(c.column, c.check) for c in tickets.checks}
    assert {("TKT-Title", "md5_sum"), ("TKT-Account Id", "sum"), ("TKT-Created Time", "max"),
            ("TKT-SLA Met", "true_count"), ("TKT-Closure Date", "min"), ("TKT-Status", "type"),
            (None, "rows")} <= kinds


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("DELETE FROM v1.comments WHERE comment_id = 17", ("comments", None, "rows")),
        ("UPDATE v1.tickets SET \"TKT-Title\" = 'Ticket 5 ' WHERE \"TKT-Ticket ID\" = 1005",
         ("tickets", "TKT-Title", "md5_sum")),
        ("UPDATE v1.tickets SET \"TKT-Team\" = NULL WHERE \"TKT-Ticket ID\" = 1005",
         ("tickets", "TKT-Team", "non_null")),
        ("UPDATE v1.timesheets SET \"TS-Hours\" = \"TS-Hours\" + 1e-9 WHERE ctid = (SELECT min(ctid) FROM v1.timesheets)",
         ("timesheets", "TS-Hours", "sum")),
        ("UPDATE v1.tickets SET \"TKT-Created Time\" = \"TKT-Created Time\" + interval '1 microsecond' "
         "WHERE \"TKT-Ticket ID\" = 1120", ("tickets", "TKT-Created Time", "max")),
        ("UPDATE v1.tickets SET \"TKT-SLA Met\" = NOT \"TKT-SLA Met\" WHERE \"TKT-Ticket ID\" = 1003",
         ("tickets", "TKT-SLA Met", "true_count")),
        ("UPDATE v1.tickets SET \"TKT-Actual SLA Achievement\" = 87.51 WHERE \"TKT-Actual SLA Achievement\" = 87.5 "
         "AND \"TKT-Ticket ID\" = 1008", ("tickets", "TKT-Actual SLA Achievement", "sum")),
        ("ALTER TABLE v1.tickets ALTER COLUMN \"TKT-Closure Date\" TYPE text",
         ("tickets", "TKT-Closure Date", "type")),
        ("DROP TABLE v1.timesheets", ("timesheets", None, "table")),
    ],
)
def test_a_single_difference_is_named(loaded, statement, expected):
    cleaned, plan, dsn = loaded
    execute(dsn, statement)
    report = reconcile_schema(cleaned, plan, dsn, "v1")
    assert not report.ok
    assert expected in failing(report)
    assert report.failure_samples()[0].startswith(expected[0])


def test_double_sums_are_exact_not_rounded_to_fifteen_digits(tmp_path, fresh_database):
    values = [0.1, 0.2, 33.333333333333336, 1e-300, 1e300, -1e300, 2.0000000000000004, None]
    table = table_plan("m", [column("x", "double precision"), column("n", "numeric")], len(values))
    cleaned, plan = write_cleaned(tmp_path / "c.db", [(table, [(v, v) for v in values])])
    load_schema(cleaned, plan, fresh_database, "v1")
    report = reconcile_schema(cleaned, plan, fresh_database, "v1")
    assert report.ok, report.failure_samples()
    sums = {(c.column, c.check): c for c in report.tables[0].checks}
    assert sums[("x", "sum")].source.startswith("35.6333333333333")
    execute(fresh_database, "UPDATE v1.m SET x = 2.0 WHERE x = 2.0000000000000004")
    assert failing(reconcile_schema(cleaned, plan, fresh_database, "v1")) == {("m", "x", "sum")}


def test_timestamptz_compares_instants(tmp_path, fresh_database):
    table = table_plan("e", [column("at", "timestamptz")], 3)
    cleaned, plan = write_cleaned(
        tmp_path / "c.db", [(table, [("2025-05-20 08:42:00+02:00",), ("2025-05-20 05:00:00-05:30",), (None,)])]
    )
    load_schema(cleaned, plan, fresh_database, "v1")
    with psycopg.connect(fresh_database) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'Asia/Tokyo'").format(sql.Identifier(conn.info.dbname)))
    assert reconcile_schema(cleaned, plan, fresh_database, "v1").ok
    execute(fresh_database, "UPDATE v1.e SET at = at + interval '1 second' WHERE at = '2025-05-20 10:30:00+00'")
    assert failing(reconcile_schema(cleaned, plan, fresh_database, "v1")) == {("e", "at", "max")}


def test_text_hash_ignores_row_order_but_not_content(tmp_path, fresh_database):
    table = table_plan("t", [column("s", "text"), column("b", "bytea")], 4)
    rows = [("b", b"\x00\x01"), ("a\nz", b"\xff"), ("Ärger", b""), ("a", None)]
    cleaned, plan = write_cleaned(tmp_path / "c.db", [(table, rows)])
    reverse, _ = write_cleaned(tmp_path / "r.db", [(table, rows[::-1])])
    load_schema(cleaned, plan, fresh_database, "v1")
    assert reconcile_schema(reverse, plan, fresh_database, "v1").ok
    execute(fresh_database, "UPDATE v1.t SET s = 'Arger' WHERE s = 'Ärger'")
    execute(fresh_database, "UPDATE v1.t SET b = '\\xfe' WHERE b = '\\xff'")
    assert failing(reconcile_schema(cleaned, plan, fresh_database, "v1")) == {("t", "s", "md5_sum"), ("t", "b", "md5_sum")}


def test_canary_reconciles_against_the_same_sample(tmp_path, fresh_database):
    cleaned, plan = servicedesk_cleaned(tmp_path / "clean.db", tickets=120, comments=2500, timesheets=4000)
    load = load_schema(cleaned, plan, fresh_database, "canary", sample_percent=10, seed=3)
    report = reconcile_schema(cleaned, plan, fresh_database, "canary", sample_percent=10, seed=3)
    assert report.ok, report.failure_samples()
    assert {t.table: t.target_rows for t in report.tables} == {t.table: t.rows for t in load.tables}
    other_seed = reconcile_schema(cleaned, plan, fresh_database, "canary", sample_percent=10, seed=4)
    assert ("comments", None, "rows") in failing(other_seed) or ("comments", "comment_text", "md5_sum") in failing(other_seed)
    full = reconcile_schema(cleaned, plan, fresh_database, "canary")
    assert ("timesheets", None, "rows") in failing(full)


def test_report_summarises_and_names_type_mismatches_for_the_gates(loaded):
    cleaned, plan, dsn = loaded
    assert "reconcile" in reconcile_schema(cleaned, plan, dsn, "v1").summary
    execute(dsn, 'ALTER TABLE v1.tickets ALTER COLUMN "TKT-Created Time" TYPE text')
    report = reconcile_schema(cleaned, plan, dsn, "v1")
    (mismatch,) = report.type_mismatches
    assert (mismatch.column, mismatch.source, mismatch.target) == ("TKT-Created Time", "timestamp without time zone", "text")
    metadata = report.to_metadata()
    assert metadata["ok"] is False and metadata["tables"]["tickets"]["failed_checks"] >= 1
    assert {"table": "tickets", "column": "TKT-Created Time", "check": "type"}.items() <= metadata["failures"][0].items()
    assert "tickets.TKT-Created Time type" in report.summary
