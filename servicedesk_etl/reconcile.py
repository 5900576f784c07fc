"""Reconciliation: does a PostgreSQL schema hold exactly what the cleaned SQLite file holds?

Per table: the table exists and its row count matches (for a canary, the count of the same
deterministic sample, recomputed here). Per planned column: the planned type is in
`information_schema.columns`, the non-null counts match, and by type:

- bigint, numeric, double precision: min, max and an exact sum. PostgreSQL sums `x::numeric`
  (doubles as `x::text::numeric`, the shortest round-trip text, so no 15-digit rounding); SQLite's
  values are summed as `Decimal(str(value))` with unbounded precision. Equal means equal.
- date, timestamp, timestamptz: min and max, compared as values (timestamptz as instants).
- boolean: the number of true values.
- text, bytea: an order-independent hash, the sum of the first 64 bits (signed) of each non-null
  value's md5 over its UTF-8 bytes: `sum(('x' || left(md5(convert_to(x, 'UTF8')), 16))::bit(64)::bigint)`
  in PostgreSQL, the same with hashlib in Python. No sort, constant memory in both engines.

SQLite is read in two scans per table (aggregates, then the columns summed or hashed in Python)
while PostgreSQL computes its side concurrently on its own connection.
"""

from __future__ import annotations

import decimal
import hashlib
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from operator import is_not, itemgetter, methodcaller, mul
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from servicedesk_etl.loading import (
    DATE_FORMAT,
    TIMESTAMP_FORMAT,
    TIMESTAMPTZ_FORMAT,
    sample_filter,
)
from servicedesk_etl.pg import connect
from servicedesk_etl.profiling.plan import ColumnPlan, Plan, TablePlan
from servicedesk_etl.sqlite_source import open_readonly, quote_ident

log = logging.getLogger(__name__)

INFORMATION_SCHEMA_TYPE = {
    "bigint": "bigint",
    "numeric": "numeric",
    "double precision": "double precision",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "text": "text",
    "bytea": "bytea",
}
NUMBER_TYPES = frozenset({"bigint", "numeric", "double precision"})
TEMPORAL_FORMATS = {"date": DATE_FORMAT, "timestamp": TIMESTAMP_FORMAT, "timestamptz": TIMESTAMPTZ_FORMAT}
HASHED_TYPES = frozenset({"text", "bytea"})
EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
FETCH_ROWS = 50_000
SAMPLE_LIMIT = 20


@dataclass(frozen=True)
class Check:
    """One comparison; `column` is None for table-level checks (`table`, `rows`)."""

    table: str
    column: str | None
    check: str
    source: str
    target: str
    ok: bool

    def describe(self) -> str:
        where = self.table if self.column is None else f"{self.table}.{self.column}"
        return f"{where} {self.check}: source {self.source} != target {self.target}"


@dataclass(frozen=True)
class TableReconciliation:
    table: str
    pg_table: str
    source_rows: int
    target_rows: int | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


@dataclass(frozen=True)
class Reconciliation:
    schema: str
    tables: tuple[TableReconciliation, ...]
    ok: bool
    failures: tuple[Check, ...]

    @property
    def checks(self) -> int:
        return sum(len(table.checks) for table in self.tables)

    def failure_samples(self, limit: int = SAMPLE_LIMIT) -> list[str]:
        """One line per failing check, at most `limit`: evidence for a gate's metadata."""
        return [failure.describe() for failure in self.failures[:limit]]

    @property
    def type_mismatches(self) -> tuple[Check, ...]:
        """Planned columns that are missing or not of their planned PostgreSQL type."""
        return tuple(failure for failure in self.failures if failure.check == "type")

    @property
    def summary(self) -> str:
        rows = sum(table.target_rows or 0 for table in self.tables)
        if self.ok:
            return f"{len(self.tables)} tables, {rows:,} rows and {self.checks} checks reconcile with the cleaned file"
        return f"{len(self.failures)} of {self.checks} checks differ; first: {self.failures[0].describe()}"

    def to_metadata(self, limit: int = SAMPLE_LIMIT) -> dict[str, Any]:
        """JSON-able evidence: per-table row counts, failing-check counts and the first failures."""
        return {
            "schema": self.schema,
            "ok": self.ok,
            "checks": self.checks,
            "failed_checks": len(self.failures),
            "tables": {
                table.table: {
                    "pg_table": table.pg_table,
                    "source_rows": table.source_rows,
                    "target_rows": table.target_rows,
                    "failed_checks": sum(not check.ok for check in table.checks),
                }
                for table in self.tables
            },
            "failures": [
                {"table": f.table, "column": f.column, "check": f.check, "source": f.source, "target": f.target}
                for f in self.failures[:limit]
            ],
        }


def reconcile_schema(
    cleaned: Path,
    plan: Plan,
    dsn: str,
    schema: str,
    *,
    sample_percent: float | None = None,
    seed: int = 0,
    small_table_rows: int = 1000,
) -> Reconciliation:
    """Compare every plan table of `cleaned` with the same table in `schema` (see the module doc).

    For a canary pass the `sample_percent`, `seed` and `small_table_rows` the load used.
    """
    with connect(dsn) as target:
        pg_types = {table.name: _pg_column_types(target, schema, table.pg_name) for table in plan.tables}
    layouts = {
        table.name: (table, tuple(c for c in table.columns if c.pg_name in pg_types[table.name]))
        for table in plan.tables
        if pg_types[table.name]
    }
    source = open_readonly(cleaned)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile-pg") as pool:
            target_side = pool.submit(_all_target_aggregates, dsn, schema, layouts)
            source_side = {}
            for table in plan.tables:
                where, params = sample_filter(
                    source, table, sample_percent=sample_percent, seed=seed, small_table_rows=small_table_rows
                )
                rows = source.execute(f"SELECT count(*) FROM {quote_ident(table.name)}{where}", params).fetchone()[0]
                columns = layouts[table.name][1] if table.name in layouts else ()
                source_side[table.name] = (rows, _source_aggregates(source, table, columns, where, params))
            targets = target_side.result()
    finally:
        source.close()
    tables = tuple(
        _table_report(table, pg_types[table.name], *source_side[table.name], targets.get(table.name))
        for table in plan.tables
    )
    failures = tuple(check for table in tables for check in table.checks if not check.ok)
    result = Reconciliation(schema=schema, tables=tables, ok=not failures, failures=failures)
    if failures:
        log.warning("schema %s does not reconcile: %d failing checks, first: %s",
                    schema, len(failures), failures[0].describe())
    else:
        log.info("schema %s reconciles: %d checks over %d tables", schema, result.checks, len(tables))
    return result


def _table_report(
    table: TablePlan,
    pg_types: dict[str, str],
    source_rows: int,
    source_values: dict[tuple[str, str], Any],
    target_values: dict[tuple[str, str], Any] | None,
) -> TableReconciliation:
    if target_values is None:
        check = Check(table.name, None, "table", "present", "missing", False)
        return TableReconciliation(table.name, table.pg_name, source_rows, None, (check,))
    target_rows = target_values[("", "rows")]
    checks = [_compare(table, None, "rows", source_rows, target_rows)]
    checks += [
        _compare(table, c, "type", INFORMATION_SCHEMA_TYPE[c.target_type], pg_types.get(c.pg_name, "missing"))
        for c in table.columns
    ]
    for (name, kind), value in source_values.items():
        checks.append(_compare(table, table.column(name), kind, value, target_values[(name, kind)]))
    return TableReconciliation(table.name, table.pg_name, source_rows, target_rows, tuple(checks))


def _compare(table: TablePlan, column: ColumnPlan | None, kind: str, source: Any, target: Any) -> Check:
    return Check(
        table=table.name,
        column=None if column is None else column.name,
        check=kind,
        source=_show(source),
        target=_show(target),
        ok=_same(source, target),
    )


def _same(source: Any, target: Any) -> bool:
    if isinstance(source, Decimal) or isinstance(target, Decimal):
        return source is not None and target is not None and Decimal(str(source)) == Decimal(str(target))
    return source == target


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _pg_column_types(target: psycopg.Connection, schema: str, pg_table: str) -> dict[str, str]:
    rows = target.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, pg_table),
    ).fetchall()
    return dict(rows)


# ---- SQLite side ---------------------------------------------------------------------------


def _source_aggregates(
    source: sqlite3.Connection, table: TablePlan, columns: Sequence[ColumnPlan], where: str, params: tuple[Any, ...]
) -> dict[tuple[str, str], Any]:
    expressions: list[str] = []
    keys: list[tuple[str, str]] = []
    for column in columns:
        ident = quote_ident(column.name)
        expressions.append(f"count({ident})")
        keys.append((column.name, "non_null"))
        if column.target_type in NUMBER_TYPES or column.target_type in ("date", "timestamp"):
            expressions += [f"min({ident})", f"max({ident})"]
            keys += [(column.name, "min"), (column.name, "max")]
        if column.target_type == "boolean":
            expressions.append(f"count(*) FILTER (WHERE {ident} <> 0)")
            keys.append((column.name, "true_count"))
    values: dict[tuple[str, str], Any] = {}
    if expressions:
        query = f"SELECT {', '.join(expressions)} FROM {quote_ident(table.name)}{where}"
        row = source.execute(query, params).fetchone()
        values = dict(zip(keys, row, strict=True))
    for column in columns:
        if column.target_type in NUMBER_TYPES:
            for kind in ("min", "max"):
                values[(column.name, kind)] = _number(column.target_type, values[(column.name, kind)])
        elif column.target_type in ("date", "timestamp"):
            for kind in ("min", "max"):
                values[(column.name, kind)] = _parse_temporal(column.target_type, values[(column.name, kind)])
    values.update(_scanned_aggregates(source, table, columns, where, params))
    return values


def _number(kind: str, value: int | float | str | None) -> Any:
    if value is None or kind != "numeric":
        return value
    return Decimal(str(value))


def _parse_temporal(kind: str, text: str | None) -> Any:
    if text is None:
        return None
    series = pl.Series([text], dtype=pl.String)
    parsed = series.str.to_date(DATE_FORMAT, strict=False) if kind == "date" else series.str.to_datetime(
        TIMESTAMP_FORMAT, time_unit="us", strict=False
    )
    return parsed[0] if parsed[0] is not None else f"unparseable {text!r}"


_signed64 = partial(int.from_bytes, byteorder="big", signed=True)
_first8 = itemgetter(slice(0, 8))
_digest = methodcaller("digest")
_not_none = partial(is_not, None)


def md5_prefixes(encoded: Iterable[bytes]) -> Iterable[int]:
    """The first 64 bits of each value's md5 as a signed integer, as `('x' || left(md5(v), 16))::bit(64)::bigint`."""
    return map(_signed64, map(_first8, map(_digest, map(hashlib.md5, encoded))))


def md5_sum(values: Iterable[str | bytes]) -> int:
    """The order-independent hash of non-null text or bytes values (see the module doc)."""
    return sum(md5_prefixes(value.encode("utf-8") if isinstance(value, str) else value for value in values))


def _md5_sum_of_chunk(values: list[Any]) -> int:
    """`md5_sum` of one chunk of stored bytes (text is fetched undecoded), hashing each distinct value once."""
    try:
        counts = pl.Series(values, dtype=pl.Binary).value_counts()
    except (TypeError, pl.exceptions.PolarsError):
        return md5_sum(values)
    distinct, weights = counts[:, 0].to_list(), counts[:, 1].to_list()
    return sum(map(mul, md5_prefixes(distinct), weights))


def _text_series(values: list[Any]) -> pl.Series:
    """Text fetched as bytes as a String series (the scan fetches text undecoded for hashing)."""
    try:
        return pl.Series(values, dtype=pl.Binary).cast(pl.String)
    except (TypeError, pl.exceptions.PolarsError):
        return pl.Series(_decoded(values), dtype=pl.String)


def _decoded(values: list[Any]) -> list[Any]:
    return [value.decode("utf-8") if isinstance(value, bytes) else value for value in values]


def _exact_sum_of_chunk(kind: str, values: list[Any]) -> Decimal | int:
    """The exact sum of one chunk: ints as ints, doubles per distinct value, numerics as decimals."""
    if kind == "bigint":
        try:
            return sum(values)
        except TypeError:
            pass
    elif kind == "double precision":
        counts = pl.Series(values, dtype=pl.Float64, strict=False).value_counts()
        distinct, weights = counts[:, 0].to_list(), counts[:, 1].to_list()
        if None not in distinct:
            return sum(map(mul, map(Decimal, map(repr, distinct)), weights), Decimal(0))
    return sum(map(Decimal, map(str, _decoded(values))), Decimal(0))


def _scanned_aggregates(
    source: sqlite3.Connection, table: TablePlan, columns: Sequence[ColumnPlan], where: str, params: tuple[Any, ...]
) -> dict[tuple[str, str], Any]:
    """Exact sums, timestamptz extremes and text hashes, from one chunked scan of the needed columns."""
    scanned = [c for c in columns if c.target_type in NUMBER_TYPES | HASHED_TYPES or c.target_type == "timestamptz"]
    if not scanned:
        return {}
    select = ", ".join(quote_ident(c.name) for c in scanned)
    # Text as the stored UTF-8 bytes: what the hash needs, and no decoding per value in Python.
    previous_factory = source.text_factory
    source.text_factory = bytes
    try:
        cursor = source.execute(f"SELECT {select} FROM {quote_ident(table.name)}{where}", params)
        return _scan(cursor, scanned)
    finally:
        source.text_factory = previous_factory


def _scan(cursor: sqlite3.Cursor, scanned: Sequence[ColumnPlan]) -> dict[tuple[str, str], Any]:
    sums: dict[str, Any] = {c.name: 0 if c.target_type in HASHED_TYPES else Decimal(0) for c in scanned}
    extremes: dict[str, list[Any]] = {c.name: [] for c in scanned if c.target_type == "timestamptz"}
    seen: dict[str, bool] = {c.name: False for c in scanned}
    with decimal.localcontext(EXACT):
        while chunk := cursor.fetchmany(FETCH_ROWS):
            for position, column in enumerate(scanned):
                values = list(filter(_not_none, map(itemgetter(position), chunk)))
                if not values:
                    continue
                seen[column.name] = True
                if column.target_type in HASHED_TYPES:
                    sums[column.name] += _md5_sum_of_chunk(values)
                elif column.target_type == "timestamptz":
                    instants = _text_series(values).str.to_datetime(
                        TIMESTAMPTZ_FORMAT, time_unit="us", time_zone="UTC"
                    )
                    extremes[column.name] += [instants.min(), instants.max()]
                else:
                    sums[column.name] += _exact_sum_of_chunk(column.target_type, values)
    result: dict[tuple[str, str], Any] = {}
    for column in scanned:
        present = seen[column.name]
        if column.target_type == "timestamptz":
            found = extremes[column.name]
            result[(column.name, "min")] = min(found) if found else None
            result[(column.name, "max")] = max(found) if found else None
        elif column.target_type in HASHED_TYPES:
            result[(column.name, "md5_sum")] = sums[column.name] if present else None
        else:
            result[(column.name, "sum")] = sums[column.name] if present else None
    return result


# ---- PostgreSQL side -----------------------------------------------------------------------


def _target_aggregates(
    target: psycopg.Connection, schema: str, table: TablePlan, columns: Sequence[ColumnPlan]
) -> dict[tuple[str, str], Any]:
    expressions: list[sql.Composable] = [sql.SQL("count(*)")]
    keys: list[tuple[str, str]] = [("", "rows")]
    for column in columns:
        ident = sql.Identifier(column.pg_name)
        expressions.append(sql.SQL("count({})").format(ident))
        keys.append((column.name, "non_null"))
        kind = column.target_type
        if kind in NUMBER_TYPES or kind in TEMPORAL_FORMATS:
            expressions += [sql.SQL("min({})").format(ident), sql.SQL("max({})").format(ident)]
            keys += [(column.name, "min"), (column.name, "max")]
        if kind in NUMBER_TYPES:
            cast = sql.SQL("::text::numeric" if kind == "double precision" else "::numeric")
            expressions.append(sql.SQL("sum({}{})").format(ident, cast))
            keys.append((column.name, "sum"))
        elif kind == "boolean":
            expressions.append(sql.SQL("count(*) FILTER (WHERE {})").format(ident))
            keys.append((column.name, "true_count"))
        elif kind in HASHED_TYPES:
            value = ident if kind == "bytea" else sql.SQL("convert_to({}, 'UTF8')").format(ident)
            expressions.append(sql.SQL("sum(('x' || left(md5({}), 16))::bit(64)::bigint)").format(value))
            keys.append((column.name, "md5_sum"))
    query = sql.SQL("SELECT {} FROM {}.{}").format(
        sql.SQL(", ").join(expressions), sql.Identifier(schema), sql.Identifier(table.pg_name)
    )
    row = target.execute(query).fetchone()
    return dict(zip(keys, row, strict=True))


def _all_target_aggregates(
    dsn: str, schema: str, layouts: dict[str, tuple[TablePlan, tuple[ColumnPlan, ...]]]
) -> dict[str, dict[tuple[str, str], Any]]:
    with connect(dsn) as target:
        target.execute("SET extra_float_digits = 1")
        return {
            name: _target_aggregates(target, schema, table, columns) for name, (table, columns) in layouts.items()
        }
