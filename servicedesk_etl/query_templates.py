"""The dashboard query templates (`sql/query_templates.sql`): parsed, and run against a schema.

Templates use unqualified table names; `run_query_templates` sets `search_path` to the schema
(through `sql.Identifier`) in a read-only transaction per template, so a canary or version
schema is checked with exactly the SQL the dashboards run. A template whose tables are absent
is reported as not applicable, so databases other than ServiceDesk pass.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from servicedesk_etl.dsn import scrub
from servicedesk_etl.pg import connect
from servicedesk_etl.settings import LIVE_SCHEMA

log = logging.getLogger(__name__)

TEMPLATES_RESOURCE = "sql/query_templates.sql"
_NAME = re.compile(r"^--\s*name:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$", re.M)
_HEADER = re.compile(r"^--\s*(?P<key>[a-z]+):\s*(?P<value>.*?)\s*$")

OK = "ok"
FAILED = "failed"
NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class QueryTemplate:
    name: str
    tables: tuple[str, ...]
    description: str
    sql: str


@dataclass(frozen=True)
class QueryRun:
    name: str
    ok: bool
    rows: int
    seconds: float
    error: str | None = None
    status: str = OK

    @property
    def applicable(self) -> bool:
        return self.status != NOT_APPLICABLE


def parse_templates(text: str) -> tuple[QueryTemplate, ...]:
    """Templates from SQL text: each starts at `-- name:`, has header comments, then one statement."""
    starts = [match.start() for match in _NAME.finditer(text)]
    templates = tuple(_parse_one(text[start:end]) for start, end in zip(starts, [*starts[1:], len(text)], strict=True))
    names = [template.name for template in templates]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"query templates named more than once: {duplicates}")
    return templates


def _parse_one(block: str) -> QueryTemplate:
    header: dict[str, str] = {}
    lines = block.splitlines()
    position = 0
    for position, line in enumerate(lines):  # noqa: B007 (the header ends at `position`)
        match = _HEADER.match(line)
        if not match:
            break
        header[match["key"]] = match["value"]
    body = "\n".join(lines[position:]).strip()
    statement = body[:-1].rstrip() if body.endswith(";") else body
    if not statement or ";" in statement.rstrip(";"):
        raise ValueError(f"query template {header.get('name')!r} must hold exactly one statement")
    tables = tuple(t.strip() for t in header.get("tables", "").split(",") if t.strip())
    return QueryTemplate(header["name"], tables, header.get("description", ""), statement)


def load_templates(path: Path | None = None) -> tuple[QueryTemplate, ...]:
    """The packaged templates, or those of `path`."""
    if path is not None:
        return parse_templates(Path(path).read_text(encoding="utf-8"))
    resource = resources.files("servicedesk_etl").joinpath(TEMPLATES_RESOURCE)
    return parse_templates(resource.read_text(encoding="utf-8"))


def run_query_templates(
    dsn: str,
    schema: str = LIVE_SCHEMA,
    *,
    templates: tuple[QueryTemplate, ...] | None = None,
    statement_timeout_ms: int = 60_000,
) -> tuple[QueryRun, ...]:
    """Run every template against `schema`; a failure is recorded (with PostgreSQL's message), not raised."""
    templates = load_templates() if templates is None else templates
    with connect(dsn) as conn:
        present = _tables_in(conn, schema)
        runs = tuple(_run_one(conn, schema, template, present, statement_timeout_ms, dsn) for template in templates)
    failed = [run.name for run in runs if not run.ok]
    log.info("query templates on %s: %d ok, %d failed, %d not applicable", schema,
             sum(run.status == OK for run in runs), len(failed), sum(not run.applicable for run in runs))
    return runs


def _tables_in(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        (schema,),
    ).fetchall()
    conn.rollback()
    return {name for (name,) in rows}


def _run_one(
    conn: psycopg.Connection,
    schema: str,
    template: QueryTemplate,
    present: set[str],
    statement_timeout_ms: int,
    dsn: str,
) -> QueryRun:
    missing = [table for table in template.tables if table not in present]
    if missing:
        return QueryRun(template.name, True, 0, 0.0, f"tables absent: {', '.join(missing)}", NOT_APPLICABLE)
    started = time.perf_counter()
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            timeout = sql.Literal(f"{int(statement_timeout_ms)}ms")
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(timeout))
            rows = len(conn.execute(template.sql).fetchall())
    except psycopg.Error as error:
        message = scrub(" ".join(str(error).split()), dsn)
        log.warning("query template %s failed on %s: %s", template.name, schema, message)
        return QueryRun(template.name, False, 0, time.perf_counter() - started, message, FAILED)
    return QueryRun(template.name, True, rows, time.perf_counter() - started)
