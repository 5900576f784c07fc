"""The whole pipeline on every public corpus database: each goes live, or stops at a named gate with its
reasons; row counts reconcile; Chinook, the clean baseline, arrives value for value."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.checks import GATES
from servicedesk_etl.profiling.plan import Plan, TablePlan
from servicedesk_etl.runner import RunSummary
from servicedesk_etl.sqlite_source import quote_ident
from servicedesk_etl_tests.conftest import CORPUS_FILES
from servicedesk_etl_tests.integration_support import (
    as_decimal,
    failed_blocking_checks,
    file_digest,
    migrate,
    parse_timestamp,
    schemas,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LIVE = "servicedesk"
FileCheck = Callable[[str, Plan], None]


@dataclass(frozen=True)
class Pinned:
    """What a careful engineer expects of a file: live (tables, extra checks) or stopped by `gate`."""

    live: bool
    tables: int | None = None
    gate: str | None = None
    exact_values: bool = False
    checks: tuple[FileCheck, ...] = field(default=())
    named: tuple[str, ...] = ()  # what the stop reason must name (columns, values)


def live_rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def order_is_a_table(dsn: str, plan: Plan) -> None:
    assert live_rows(dsn, 'SELECT count(*) FROM servicedesk."Order"') == [(830,)]
    kinds = dict(live_rows(dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_schema = 'servicedesk' AND table_name = 'Order'"))
    assert kinds["OrderDate"] == "date" and kinds["Freight"] == "numeric"


def long_names_stay_distinct(dsn: str, plan: Plan) -> None:
    names = [name for (name,) in live_rows(
        dsn, "SELECT column_name FROM information_schema.columns WHERE table_schema = 'servicedesk' "
             "AND table_name = 'products' AND column_name LIKE 'col\\_very\\_long%%'")]
    assert len(set(names)) == 2 and all(len(name.encode()) <= 63 for name in names)
    originals = {column.name for column in plan.table("products").columns if column.name.startswith("col_very")}
    assert len(originals) == 2 and all(len(name) == 64 for name in originals)




def a_cp1252_blob_becomes_its_text(dsn: str, plan: Plan) -> None:
    assert live_rows(dsn, "SELECT filename FROM servicedesk.files WHERE id = 2") == [("file\u2013name.txt",)]


def empty_keyed_tables_exist(dsn: str, plan: Plan) -> None:
    assert live_rows(dsn, "SELECT count(*) FROM servicedesk.division") == [(0,)]
    assert live_rows(dsn, "SELECT count(*) FROM servicedesk.division_kind") == [(0,)]


PINNED: dict[str, Pinned] = {
    "chinook.sqlite": Pinned(live=True, tables=11, exact_values=True),
    "northwind.sqlite": Pinned(live=True, tables=11, checks=(order_is_a_table,)),
    "sakila.sqlite": Pinned(live=True, tables=16),
    "pgloader-bad-utf8.db": Pinned(live=True, tables=1, checks=(a_cp1252_blob_becomes_its_text,)),
    "pgloader-collision.db": Pinned(live=True, tables=1, checks=(long_names_stay_distinct,)),
    "pgloader-test_pk.db": Pinned(live=True, tables=2, checks=(empty_keyed_tables_exist,)),
    # `qty INTEGER NOT NULL` holds 10, 'lots-of-it', 5: typed as declared, a third unconvertible, so the
    # run stops before anything is written, naming the column and the value.
    "pgloader-type-mismatch.db": Pinned(live=False, tables=1, gate="profile_report.type_confidence",
                                        named=("products.qty", "'lots-of-it'")),
    # pgloader loads this file; every value has a type the plan supports. Its blobs.data holds a
    # 28,984-byte value: once a unique bytea column was indexed, over PostgreSQL's B-tree row limit.
    "pgloader-sqlite.db": Pinned(live=True, tables=20),
}

def test_every_corpus_file_has_a_pinned_outcome() -> None:
    assert sorted(PINNED) == CORPUS_FILES


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_file_reaches_its_pinned_outcome(name: str, corpus_copy, fresh_database: str, state_home: Path) -> None:
    pinned = PINNED[name]
    source = corpus_copy(name)
    before = file_digest(source)
    summary = migrate(source, state_home, fresh_database)

    assert file_digest(source) == before
    assert_no_leftover_schemas(fresh_database, summary)
    if not summary.success:
        assert_stopped_at_a_named_gate(summary)
    assert (summary.success, summary.stopped_by) == (pinned.live, pinned.gate), summary.reason

    plan = Plan.read(Path(summary.artefacts["plan"]))
    assert len(plan.tables) == pinned.tables
    assert all(name in (summary.reason or "") for name in pinned.named), summary.reason
    if not summary.success:
        return
    assert_row_counts_reconcile(source, Path(summary.artefacts["cleaned_db"]), plan, fresh_database)
    for check in pinned.checks:
        check(fresh_database, plan)
    if pinned.exact_values:
        assert_every_value_equals_the_source(source, plan, fresh_database)


def assert_stopped_at_a_named_gate(summary: RunSummary) -> None:
    gates = {f"{asset}.{gate}" for asset, names in GATES.items() for gate in names}
    assert summary.stopped_by in gates, (summary.stopped_by, summary.reason)
    assert summary.reason and summary.exit_code == 1
    assert failed_blocking_checks(summary)[0] == summary.stopped_by


def assert_no_leftover_schemas(dsn: str, summary: RunSummary) -> None:
    """Only the live schema and the metadata (or nothing) remain: no dry-run, canary or version schema."""
    left = schemas(dsn) - {"public"}
    allowed = {LIVE, "servicedesk_etl_meta"} if summary.success else {"servicedesk_etl_meta"}
    assert left <= allowed, left
    assert (LIVE in left) == summary.success


def assert_row_counts_reconcile(source: Path, cleaned: Path, plan: Plan, dsn: str) -> None:
    """Source rows = live rows + whole rows the cleaner quarantined (duplicates), table by table."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    out = sqlite3.connect(f"file:{cleaned}?mode=ro", uri=True)
    try:
        removed = dict(out.execute(
            "SELECT table_name, count(*) FROM _quarantine WHERE column_name IS NULL GROUP BY table_name").fetchall())
        with psycopg.connect(dsn) as conn:
            for table in plan.tables:
                (source_rows,) = src.execute(f"SELECT count(*) FROM {quote_ident(table.name)}").fetchone()
                (loaded,) = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(LIVE), sql.Identifier(table.pg_name))).fetchone()
                assert source_rows == loaded + removed.get(table.name, 0), table.name
    finally:
        src.close()
        out.close()


# --- Chinook value for value ------------------------------------------------------------------------


def typed(value: Any, target_type: str) -> Any:
    """A SQLite value as PostgreSQL should return it for `target_type` (None stays None)."""
    if value is None:
        return None
    match target_type:
        case "timestamp":
            return parse_timestamp(value)
        case "numeric":
            return as_decimal(value)
        case "double precision":
            return float(value)
        case "bigint":
            return int(value)
        case "boolean":
            return bool(value)
        case "bytea":
            return bytes(value)
        case _:
            return value


def assert_every_value_equals_the_source(source: Path, plan: Plan, dsn: str) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        with psycopg.connect(dsn) as conn:
            for table in plan.tables:
                expected = Counter(source_rows(src, table))
                loaded = Counter(live_table_rows(conn, table))
                assert sum(expected.values()) == table.row_count
                missing, extra = expected - loaded, loaded - expected
                assert (list(missing)[:3], list(extra)[:3]) == ([], []), table.name
    finally:
        src.close()


def source_rows(src: sqlite3.Connection, table: TablePlan) -> list[tuple[Any, ...]]:
    names = ", ".join(quote_ident(column.name) for column in table.columns)
    kinds = [column.target_type for column in table.columns]
    return [tuple(typed(value, kind) for value, kind in zip(row, kinds, strict=True))
            for row in src.execute(f"SELECT {names} FROM {quote_ident(table.name)}")]


def live_table_rows(conn: psycopg.Connection, table: TablePlan) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {}.{}").format(
        sql.SQL(", ").join(sql.Identifier(column.pg_name) for column in table.columns),
        sql.Identifier(LIVE), sql.Identifier(table.pg_name))
    return conn.execute(query).fetchall()
