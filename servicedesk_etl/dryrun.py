"""The profile's dry run: the plan executed end to end on a small sample, in a throwaway schema.

The sample holds every row whose value is a counterexample or a recognised format's example, plus
rows spread evenly over each table. It goes through the real cleaner and the real loader, then every
dashboard query template runs on it, and the schema is dropped — so a plan that PostgreSQL would
reject fails here, before anything is written for real.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import tempfile
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import psycopg

from servicedesk_etl.profiling.plan import Plan, TablePlan
from servicedesk_etl.sqlite_source import open_readonly, quote_ident, readonly_uri

log = logging.getLogger(__name__)


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


def sample_rowids(conn: sqlite3.Connection, table: TablePlan, spread_rows: int) -> list[int]:
    """Rowids of the rows worth trying: every odd value the profile saw, plus an even spread of the table."""
    name = quote_ident(table.name)
    chosen: set[int] = set()
    for column in table.columns:
        odd = list(column.profile.counterexamples) + [evidence.example for evidence in column.profile.formats]
        if odd:
            marks = ", ".join("?" for _ in odd)
            query = f"SELECT rowid FROM {name} WHERE CAST({quote_ident(column.name)} AS TEXT) IN ({marks}) LIMIT 50"
            chosen.update(rowid for (rowid,) in conn.execute(query, odd))
    (count,) = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
    step = max(count // max(spread_rows, 1), 1)
    chosen.update(rowid for (rowid,) in conn.execute(f"SELECT rowid FROM {name} WHERE rowid % ? = 0 LIMIT ?",
                                                       (step, spread_rows)))
    return sorted(chosen)


def write_sample(source: Path, plan: Plan, target: Path, spread_rows: int) -> dict[str, int]:
    """Copy the chosen rows of every planned table into `target` with the source's own DDL, byte for byte."""
    counts: dict[str, int] = {}
    with closing(open_readonly(source)) as src:
        chosen = {table.name: sample_rowids(src, table, spread_rows) for table in plan.tables}
        ddl = dict(src.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    with closing(sqlite3.connect(target)) as dst:
        dst.execute("ATTACH DATABASE ? AS src", (readonly_uri(source),))
        for table in plan.tables:
            dst.execute(ddl[table.name])
            columns = ", ".join(quote_ident(column.name) for column in table.columns)
            name = quote_ident(table.name)
            dst.execute(
                f"INSERT INTO main.{name} ({columns}) SELECT {columns} FROM src.{name} "
                "WHERE rowid IN (SELECT value FROM json_each(?)) ORDER BY rowid",
                (json.dumps(chosen[table.name]),),
            )
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


def dry_run(source: Path, plan: Plan, dsn: str, *, spread_rows: int = 200) -> DryRunReport:
    """Clean, load and query a sample of `source` under `plan` in a throwaway schema, then drop it."""
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
        sample_rows = write_sample(source, plan, sample, spread_rows)
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
