"""The whole pipeline on a demo snapshot, judged against its truth file: every planted cell lands in
PostgreSQL as the value it should be, typed, and the dashboards' queries run on the live schema."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.checks import GATES
from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.profiling.plan import Plan, TablePlan
from servicedesk_etl.query_templates import OK, load_templates, run_query_templates
from servicedesk_etl.runner import ASSET_ORDER, RunSummary
from servicedesk_etl.sqlite_source import quote_ident
from servicedesk_etl_tests.conftest import scratch_database
from servicedesk_etl_tests.integration_support import (
    Mismatch,
    file_digest,
    migrate,
    same_value,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LIVE = "servicedesk"
PYTHON_TYPES = {"timestamp": datetime, "bigint": int, "boolean": bool, "numeric": Decimal, "double precision": float,
                "text": str}
PG_TYPE_NAMES = {"timestamp": "timestamp without time zone", "timestamptz": "timestamp with time zone"}


@dataclass(frozen=True)
class Migrated:
    dsn: str
    source: Path
    source_sha256_before: str
    truth: dict[str, Any]
    summary: RunSummary
    cleaned: Path
    plan: Plan


@pytest.fixture(scope="module")
def migrated(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    """One run of the whole job on a scale-0.01 demo (about 2,600 rows) into a database of its own."""
    folder = tmp_path_factory.mktemp("truth")
    demo = generate_demo_snapshot(folder / "servicedesk_tickets.db", scale=0.01, seed=42)
    before = file_digest(demo.path)
    with scratch_database(pg_dsn) as dsn:
        summary = migrate(demo.path, folder / "home", dsn)
        assert "cleaned_db" in summary.artefacts and "plan" in summary.artefacts, summary
        yield Migrated(dsn, demo.path, before, json.loads(demo.truth_path.read_text("utf-8")), summary,
                       Path(summary.artefacts["cleaned_db"]), Plan.read(Path(summary.artefacts["plan"])))


def test_the_demo_snapshot_goes_live_through_every_gate(migrated: Migrated) -> None:
    summary = migrated.summary
    assert summary.success, (summary.stopped_by, summary.reason)
    assert summary.live_schema == LIVE and summary.exit_code == 0
    assert [asset.status for asset in summary.assets] == ["materialized"] * len(ASSET_ORDER)
    evaluated = {(asset.name, check.name): check for asset in summary.assets for check in asset.checks}
    assert set(evaluated) == {(asset, gate) for asset, gates in GATES.items() for gate in gates}
    assert [name for name, check in evaluated.items() if check.blocking and not check.passed] == []


def test_the_source_snapshot_is_byte_for_byte_unchanged(migrated: Migrated) -> None:
    assert file_digest(migrated.source) == migrated.source_sha256_before


def test_live_tables_hold_every_row_the_cleaner_kept(migrated: Migrated) -> None:
    removed = {table: 0 for table in migrated.truth["row_counts"]}
    for group in migrated.truth["duplicate_rows"]:
        removed[group["table"]] += len(group["rowids"]) - 1
    with psycopg.connect(migrated.dsn) as conn:
        counts = {table: conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(LIVE), sql.Identifier(table))).fetchone()[0] for table in migrated.truth["row_counts"]}
    assert counts == {table: rows - removed[table] for table, rows in migrated.truth["row_counts"].items()}


@pytest.mark.parametrize(
    "table, column",
    [("tickets", "TKT-Created Time"), ("tickets", "TKT-Actual Response Date"), ("timesheets", "TS-Date"),
     ("comments", "created_time")],
)
def test_date_columns_are_timestamps_whatever_their_declared_label(migrated: Migrated, table: str, column: str) -> None:
    assert live_column_types(migrated.dsn)[(table, column)] == "timestamp without time zone"


def test_every_live_column_has_the_type_the_truth_file_gives(migrated: Migrated) -> None:
    actual = live_column_types(migrated.dsn)
    expected = {(table, column): PG_TYPE_NAMES.get(kind, kind)
                for table, columns in migrated.truth["column_types"].items() for column, kind in columns.items()}
    assert {key: actual.get(key) for key in expected if actual.get(key) != expected[key]} == {}
    assert set(actual) == set(expected)


def test_the_nine_day_first_response_dates_read_as_the_right_instants(migrated: Migrated) -> None:
    planted = [cell for cell in migrated.truth["cells"] if cell["defect"] == "dmy_datetime"]
    assert len(planted) == 9
    assert {cell["column"] for cell in planted} == {"TKT-Actual Response Date"}
    with psycopg.connect(migrated.dsn) as conn:
        for cell in planted:
            (value,) = conn.execute(
                'SELECT "TKT-Actual Response Date" FROM servicedesk.tickets WHERE "TKT-Ticket ID" = %s',
                (cell["key"],),
            ).fetchone()
            assert value == datetime.strptime(cell["expected"], "%Y-%m-%d %H:%M:%S"), cell


def test_every_planted_cell_has_its_expected_value_in_postgres(migrated: Migrated) -> None:
    cells = migrated.truth["cells"]
    assert {cell["table"] for cell in cells} == set(migrated.truth["row_counts"])
    mismatches = []
    with psycopg.connect(migrated.dsn) as conn, sqlite3.connect(migrated.cleaned) as cleaned:
        locator = RowLocator(conn, cleaned, migrated.plan, migrated.truth)
        for cell in cells:
            actual = locator.live_values(cell)
            where = f"{cell['table']} rowid {cell['rowid']} {cell['column']} ({cell['defect']}, raw {cell['raw']!r})"
            kind = PYTHON_TYPES[migrated.truth["column_types"][cell["table"]][cell["column"]]]
            if len(actual) != 1 or not same_value(cell["expected"], actual[0]) or not (
                    actual[0] is None or isinstance(actual[0], kind)):
                mismatches.append(Mismatch(where, cell["expected"], actual))
    assert mismatches == []


def test_removed_duplicate_rows_are_in_the_cleaned_files_quarantine(migrated: Migrated) -> None:
    groups = migrated.truth["duplicate_rows"]
    assert groups, "the demo plants duplicate rows"
    with sqlite3.connect(migrated.cleaned) as cleaned:
        for group in groups:
            first, *copies = group["rowids"]
            kept = cleaned.execute(f"SELECT count(*) FROM {quote_ident(group['table'])} WHERE rowid = ?", (first,))
            assert kept.fetchone()[0] == 1, group
            for rowid in copies:
                assert cleaned.execute(f"SELECT count(*) FROM {quote_ident(group['table'])} WHERE rowid = ?",
                                       (rowid,)).fetchone()[0] == 0, group
                reasons = cleaned.execute(
                    "SELECT reason, column_name, value FROM _quarantine WHERE table_name = ? AND row_id = ?",
                    (group["table"], rowid),
                ).fetchall()
                assert len(reasons) == 1 and reasons[0][0] == "duplicate_row" and reasons[0][1] is None, reasons
                assert json.loads(reasons[0][2]), "the whole row is kept in the quarantine"


def test_orphan_comments_are_loaded_not_dropped(migrated: Migrated) -> None:
    orphans = migrated.truth["orphans"]
    assert orphans
    with psycopg.connect(migrated.dsn) as conn:
        tickets = {ticket for (ticket,) in conn.execute('SELECT "TKT-Ticket ID" FROM servicedesk.tickets')}
        loaded = {ticket for (ticket,) in conn.execute("SELECT ticket_id FROM servicedesk.comments")}
    values = {int(orphan["value"]) for orphan in orphans}
    assert values <= loaded
    assert not values & tickets


def test_every_dashboard_query_template_runs_on_the_live_schema(migrated: Migrated) -> None:
    templates = load_templates()
    assert templates
    runs = run_query_templates(migrated.dsn, LIVE)
    assert [run.name for run in runs] == [template.name for template in templates]
    assert [(run.name, run.status, run.error) for run in runs if run.status != OK] == []
    assert [run.name for run in runs if run.rows == 0] == [], "on demo data every dashboard query returns rows"
    production = next(asset for asset in migrated.summary.assets if asset.name == "production_schema")
    queries = next(check for check in production.checks if check.name == "production_queries")
    assert queries.passed and queries.summary.startswith(f"{len(templates)} dashboard queries ran")


# --- locating a truth cell's row in PostgreSQL ----------------------------------------------------


class RowLocator:
    """Finds the live row of a truth cell (the truth file names rows by source rowid).

    The cleaner keeps every row under its source rowid, so the cleaned file maps rowid -> row. A
    table whose key is unique in the live table is searched by key. Otherwise the cleaned row is
    looked up by all its *other* columns, so the cell under test does not take part in finding
    its own row. A rowid the cleaner removed as a duplicate stands for the first copy, which stays.
    """

    def __init__(self, conn: psycopg.Connection, cleaned: sqlite3.Connection, plan: Plan, truth: dict[str, Any]):
        self.conn = conn
        self.cleaned = cleaned
        self.plan = plan
        self.keys = truth["key_columns"]
        self.first_copy = {(group["table"], rowid): group["rowids"][0]
                           for group in truth["duplicate_rows"] for rowid in group["rowids"][1:]}
        self._unique: dict[str, bool] = {}

    def live_values(self, cell: dict[str, Any]) -> list[Any]:
        table = self.plan.table(cell["table"])
        column = cell["column"]
        key = self.keys.get(table.name)
        if key is not None and self.key_is_unique(table, key):
            return self.select(table, column, {key: cell["key"]})
        rowid = self.first_copy.get((table.name, cell["rowid"]), cell["rowid"])
        identity = self.cleaned_row(table, rowid)
        identity.pop(column)
        return self.select(table, column, identity)

    def key_is_unique(self, table: TablePlan, key: str) -> bool:
        if table.name not in self._unique:
            distinct, total = self.conn.execute(sql.SQL("SELECT count(DISTINCT {}), count(*) FROM {}.{}").format(
                sql.Identifier(table.column(key).pg_name), sql.Identifier(LIVE), sql.Identifier(table.pg_name),
            )).fetchone()
            self._unique[table.name] = distinct == total
        return self._unique[table.name]

    def cleaned_row(self, table: TablePlan, rowid: int) -> dict[str, Any]:
        names = [column.name for column in table.columns]
        columns = ", ".join(quote_ident(name) for name in names)
        query = f"SELECT {columns} FROM {quote_ident(table.name)} WHERE rowid = ?"
        row = self.cleaned.execute(query, (rowid,)).fetchone()
        assert row is not None, f"rowid {rowid} of {table.name} is not in the cleaned file"
        return dict(zip(names, row, strict=True))

    def select(self, table: TablePlan, column: str, where: dict[str, Any]) -> list[Any]:
        """Values of `column` in live rows whose other columns equal `where` (NULL equals NULL)."""
        conditions = [
            sql.SQL("{} IS NOT DISTINCT FROM CAST(CAST(%s AS text) AS {})").format(
                sql.Identifier(table.column(name).pg_name), sql.SQL(table.column(name).target_type))
            for name in where
        ]
        query = sql.SQL("SELECT {} FROM {}.{} WHERE {}").format(
            sql.Identifier(table.column(column).pg_name), sql.Identifier(LIVE), sql.Identifier(table.pg_name),
            sql.SQL(" AND ").join(conditions),
        )
        params = [None if value is None else as_text(value) for value in where.values()]
        return [value for (value,) in self.conn.execute(query, params).fetchall()]


def as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def live_column_types(dsn: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = %s",
            (LIVE,),
        ).fetchall()
    return {(table, column): kind for table, column, kind in rows}
