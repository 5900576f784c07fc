"""PostgreSQL sums the hashes and doubles of repetitive columns once per distinct value (one
grouping-sets scan): the same figures as row by row, so a single changed value is still named."""

from __future__ import annotations

import psycopg
import pytest

from servicedesk_etl.loading import load_schema
from servicedesk_etl.pg import connect
from servicedesk_etl.reconcile import GROUPING_SET_COLUMNS, _repetitive_columns, reconcile_schema
from servicedesk_etl_tests.test_loading import column, table_plan, write_cleaned

pytestmark = pytest.mark.postgres

ROWS = 12_000
COLUMNS = [
    column("team", "text"), column("hours", "double precision"), column("blob", "bytea"),
    column("note", "text"), column("unique_text", "text"), column("unique_hours", "double precision"),
]


def row(i: int) -> tuple:
    return (f"team {i % 7}" if i % 11 else None, (i % 5) * 0.1 + 1e-9 * (i % 3), bytes([i % 4]),
            "é" * (i % 3), f"comment {i}", i * 0.001)


@pytest.fixture
def loaded(tmp_path, fresh_database):
    table = table_plan("t", COLUMNS, ROWS)
    cleaned, plan = write_cleaned(tmp_path / "c.db", [(table, [row(i) for i in range(ROWS)])])
    load_schema(cleaned, plan, fresh_database, "v1")
    return cleaned, plan, fresh_database


def test_repetitive_columns_are_grouped_and_unique_ones_are_not(loaded):
    _, plan, dsn = loaded
    with connect(dsn) as conn:
        grouped = _repetitive_columns(conn, "v1", plan.tables[0], plan.tables[0].columns)
    assert [c.name for c in grouped] == ["team", "hours", "blob", "note"]


def test_grouped_sums_reconcile_a_faithful_load(loaded):
    cleaned, plan, dsn = loaded
    report = reconcile_schema(cleaned, plan, dsn, "v1")
    assert report.ok, report.failure_samples()
    checked = {(c.column, c.check) for c in report.tables[0].checks}
    assert {("team", "md5_sum"), ("hours", "sum"), ("blob", "md5_sum"), ("note", "md5_sum")} <= checked


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE v1.t SET team = 'team 8' WHERE ctid = (SELECT min(ctid) FROM v1.t WHERE team = 'team 1')", "team"),
        ("UPDATE v1.t SET hours = hours + 1e-12 WHERE ctid = (SELECT min(ctid) FROM v1.t)", "hours"),
        ("UPDATE v1.t SET blob = '\\x07' WHERE ctid = (SELECT min(ctid) FROM v1.t)", "blob"),
        ("UPDATE v1.t SET note = NULL WHERE ctid = (SELECT min(ctid) FROM v1.t WHERE note = 'é')", "note"),
    ],
)
def test_a_single_changed_value_in_a_grouped_column_is_named(loaded, statement, expected):
    cleaned, plan, dsn = loaded
    with psycopg.connect(dsn) as conn:
        conn.execute(statement)
    failures = {(f.column, f.check) for f in reconcile_schema(cleaned, plan, dsn, "v1").failures}
    kind = "sum" if expected == "hours" else "md5_sum"
    assert (expected, kind) in failures
    assert {column for column, _ in failures} == {expected}


def test_more_repetitive_columns_than_one_grouping_can_name_are_split(tmp_path, fresh_database):
    names = [f"c{i}" for i in range(GROUPING_SET_COLUMNS + 3)]
    table = table_plan("w", [column(name, "text") for name in names], ROWS)
    rows = [tuple(f"{name}-{i % (position + 2)}" for position, name in enumerate(names)) for i in range(ROWS)]
    cleaned, plan = write_cleaned(tmp_path / "w.db", [(table, rows)])
    load_schema(cleaned, plan, fresh_database, "v1")
    assert reconcile_schema(cleaned, plan, fresh_database, "v1").ok
    with psycopg.connect(fresh_database) as conn:
        conn.execute('UPDATE v1.w SET "c33" = \'changed\' WHERE ctid = (SELECT min(ctid) FROM v1.w)')
    assert {(f.column, f.check) for f in reconcile_schema(cleaned, plan, fresh_database, "v1").failures} == {
        ("c33", "md5_sum")
    }
