"""The profile's dry run: the plan executed end to end on a small sample, in a throwaway schema.

The sample holds the first few rows of every value that is a counterexample or a recognised format's
example, plus rows spread evenly over each table. It goes through the real cleaner and the real loader, then every
dashboard query template runs on it, and the schema is dropped — so a plan that PostgreSQL would
reject fails here, before anything is written for real.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from servicedesk_etl.profiling.plan import Plan, TablePlan
from servicedesk_etl.profiling.values import rowid_expression
from servicedesk_etl.sqlite_source import open_readonly, quote_ident, readonly_uri, table_columns

log = logging.getLogger(__name__)

SPREAD_ROWS = 200  # rows spread evenly over each table, besides the rows of odd values
ROWS_PER_ODD_VALUE = 3


@dataclass(frozen=True)
class DryRunFailure:
    stage: str
    statement: str
    message: str


@dataclass(frozen=True)
class DryRunReport:
    ok: bool
    summary: str
    schema: str
    sample_rows: dict[str, int]
    queries_run: int
    queries_not_applicable: int
    failures: tuple[DryRunFailure, ...] = ()


RowKey = tuple[Any, ...]


@dataclass(frozen=True)
class RowKeySql:
    """The SQL that identifies a row: its rowid (under an alias no column shadows), or, for a WITHOUT
    ROWID table, its primary key columns."""

    parts: tuple[str, ...]
    rowid: bool

    @property
    def sql(self) -> str:
        return ", ".join(self.parts)


def row_key(conn: sqlite3.Connection, table: TablePlan) -> RowKeySql:
    columns = table_columns(conn, table.name)
    alias = rowid_expression(conn, table.name, [column.name for column in columns])
    if alias is not None:
        return RowKeySql((alias,), rowid=True)
    key = sorted((column for column in columns if column.primary_key_position), key=lambda c: c.primary_key_position)
    return RowKeySql(tuple(quote_ident(column.name) for column in key), rowid=False)


def sample_rowids(conn: sqlite3.Connection, table: TablePlan, spread_rows: int) -> list[RowKey]:
    """The keys (`row_key`) of the rows worth trying: the first few rows of every odd value the profile
    saw (each counterexample, each recognised format's example), plus an even spread of the table."""
    name = quote_ident(table.name)
    row = row_key(conn, table)
    key = row.sql
    chosen: set[RowKey] = set()
    for column in table.columns:
        odd = list(dict.fromkeys([*column.profile.counterexamples, *(f.example for f in column.profile.formats)]))
        if odd:
            # A few rows per value, so a common value's rows cannot crowd out a rare one's; each
            # scan stops at its last row needed.
            each = f"SELECT * FROM (SELECT {key} FROM {name} WHERE CAST({quote_ident(column.name)} AS TEXT) = ? LIMIT ?)"
            query = " UNION ALL ".join([each] * len(odd))
            params = [param for value in odd for param in (value, ROWS_PER_ODD_VALUE)]
            chosen.update(conn.execute(query, params).fetchall())
    (count,) = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
    step = max(count // max(spread_rows, 1), 1)
    if row.rowid:
        spread = f"SELECT {key} FROM {name} WHERE {key} % ? = 0 LIMIT ?"
    else:
        ranked = f"SELECT {key}, row_number() OVER (ORDER BY {key}) AS position FROM {name}"
        spread = f"SELECT {key} FROM ({ranked}) WHERE position % ? = 0 LIMIT ?"
    chosen.update(conn.execute(spread, (step, spread_rows)).fetchall())
    return sorted(chosen, key=_sortable)


def _sortable(key: RowKey) -> tuple[Any, ...]:
    """Keys in SQLite's order of storage classes (NULL, numbers, text, blobs), so any mix sorts."""
    rank = {type(None): 0, int: 1, float: 1, str: 2, bytes: 3}
    return tuple((rank.get(type(part), 4), part if part is not None else 0) for part in key)


class SampleChooser:
    """Chooses the dry run's sample rows (`sample_rowids`) of each table as soon as its plan is decided
    (`add`, a profiler `on_plan` hook), on a thread of its own while the profiler reads on; `chosen`
    gives every table's rows, choosing those of any table not added then. The scans release the GIL."""

    def __init__(self, source: Path, spread_rows: int = SPREAD_ROWS) -> None:
        self._source = source
        self._spread_rows = spread_rows
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dry-run-sample")
        self._chosen: dict[str, Future[list[RowKey]]] = {}

    def add(self, table: TablePlan) -> None:
        self._chosen[table.name] = self._pool.submit(self._choose, table)

    def chosen(self, plan: Plan) -> dict[str, list[RowKey]]:
        try:
            return {table.name: self._chosen[table.name].result() if table.name in self._chosen
                    else self._choose(table) for table in plan.tables}  # fmt: skip
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _choose(self, table: TablePlan) -> list[RowKey]:
        with closing(open_readonly(self._source)) as conn:
            return sample_rowids(conn, table, self._spread_rows)


def write_sample(
    source: Path, plan: Plan, target: Path, spread_rows: int, chosen: dict[str, list[RowKey]] | None = None
) -> dict[str, int]:
    """Copy the chosen rows of every planned table into `target` with the source's own DDL, byte for
    byte (`chosen`: the rows of each table, when a `SampleChooser` chose them already)."""
    counts: dict[str, int] = {}
    with closing(open_readonly(source)) as src:
        if chosen is None:
            chosen = {table.name: sample_rowids(src, table, spread_rows) for table in plan.tables}
        ddl = dict(src.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
        keys = {table.name: row_key(src, table) for table in plan.tables}
    with closing(sqlite3.connect(target)) as dst:
        dst.execute("ATTACH DATABASE ? AS src", (readonly_uri(source),))
        for table in plan.tables:
            dst.execute(ddl[table.name])
            columns = ", ".join(quote_ident(column.name) for column in table.columns)
            name, key = quote_ident(table.name), keys[table.name].sql
            width = len(keys[table.name].parts)
            holes = ", ".join("?" * width)
            dst.execute(f"CREATE TEMP TABLE chosen ({', '.join(f'k{n}' for n in range(width))})")
            dst.executemany(f"INSERT INTO temp.chosen VALUES ({holes})", chosen[table.name])
            dst.execute(
                f"INSERT INTO main.{name} ({columns}) SELECT {columns} FROM src.{name} "
                f"WHERE ({key}) IN (SELECT * FROM temp.chosen) ORDER BY {key}"
            )
            dst.execute("DROP TABLE temp.chosen")
            counts[table.name] = len(chosen[table.name])
        dst.commit()
        dst.execute("DETACH DATABASE src")
    return counts


def where_it_failed(error: psycopg.Error) -> str:
    """The table and column PostgreSQL names in its error, else the statement context it gives."""
    diag = error.diag
    place = ".".join(part for part in (diag.table_name, diag.column_name) if part)
    if place:
        return place
    return diag.context.splitlines()[0] if diag.context else "the load"


def dry_run(
    source: Path, plan: Plan, dsn: str, *, spread_rows: int = SPREAD_ROWS, chooser: SampleChooser | None = None
) -> DryRunReport:
    """Clean, load and query a sample of `source` under `plan` in a throwaway schema, then drop it
    (`chooser`: the sample rows, chosen while the tables were profiled)."""
    from servicedesk_etl.cleaning import clean_snapshot
    from servicedesk_etl.loading import load_schema
    from servicedesk_etl.pg import drop_schema
    from servicedesk_etl.query_templates import FAILED, NOT_APPLICABLE, OK, run_query_templates

    schema = f"servicedesk_dryrun_{uuid.uuid4().hex[:10]}"
    failures: list[DryRunFailure] = []
    sample_rows: dict[str, int] = {}
    queries = ()
    with tempfile.TemporaryDirectory(prefix="servicedesk-dryrun-") as scratch:
        sample = Path(scratch) / "sample.db"
        chosen = chooser.chosen(plan) if chooser is not None else None
        sample_rows = write_sample(source, plan, sample, spread_rows, chosen)
        sample_plan = dataclasses.replace(plan, source_path=str(sample), source_sha256="")
        try:
            cleaned = clean_snapshot(sample, sample_plan, Path(scratch) / "cleaned.db").output
            load_schema(cleaned, sample_plan, dsn, schema, max_workers=1)
            queries = run_query_templates(dsn, schema)
        except psycopg.Error as error:
            failures.append(DryRunFailure("load", where_it_failed(error), error.diag.message_primary or str(error).splitlines()[0]))
        finally:
            drop_schema(dsn, schema)
    failures += [DryRunFailure("query", run.name, run.error or "") for run in queries if run.status == FAILED]
    ran = sum(1 for run in queries if run.status == OK)
    not_applicable = sum(1 for run in queries if run.status == NOT_APPLICABLE)
    total = sum(sample_rows.values())
    summary = (
        f"{total} sample rows cleaned and loaded with the planned types; {ran} dashboard queries ran"
        if not failures
        else f"{len(failures)} failure(s): " + "; ".join(f"{f.stage} {f.statement}: {f.message}" for f in failures[:3])
    )
    return DryRunReport(not failures, summary, schema, sample_rows, ran, not_applicable, tuple(failures))
