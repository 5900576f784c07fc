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
  in PostgreSQL, the same with hashlib in Python (once per distinct value). No sort in either engine.

The cleaned file's side is computed in polars from its values in the raw layout
(`profiling.values`): read from the cleaner's stored cache when that cache describes this very file
(same sha256), else from the file itself; the same functions aggregate either, a few columns at a
time, with SQLite's semantics (`count`, `min`/`max` across storage classes). PostgreSQL computes its
side concurrently on its own connection: one scan per table, plus a grouping-sets scan (per 31
columns) that sums the hashes and doubles of repetitive columns once per distinct value
(`x * count`), the same figure as summing every row.
"""

from __future__ import annotations

import decimal
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from operator import itemgetter, methodcaller, mul
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from servicedesk_etl.errors import InputError
from servicedesk_etl.loading import (
    DATE_FORMAT,
    TIMESTAMP_FORMAT,
    TIMESTAMPTZ_FORMAT,
    rowid_alias,
    sample_filter,
)
from servicedesk_etl.pg import connect
from servicedesk_etl.profiling.plan import ColumnPlan, Plan, TablePlan
from servicedesk_etl.profiling.values import ROWID, read_rows
from servicedesk_etl.raw_cache import MANIFEST_NAME, RawCache, open_raw_cache
from servicedesk_etl.sqlite_source import file_sha256, open_readonly, quote_ident

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
# Raw cells aggregated at once (about 40 bytes each in memory): bounds memory on large tables.
CACHE_BATCH_CELLS = 4_000_000
FILE_BATCH_CELLS = 8_000_000
SAMPLE_LIMIT = 20
GROUPING_SET_COLUMNS = 31  # GROUPING() takes at most 31 arguments
GROUPED_MIN_ROWS = 10_000  # below this, hashing every row costs less than a second scan
GROUPED_MIN_REPEATS = 20  # a column is summed per distinct value when each repeats this often on average


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
    stored_cache: Path | None = None,
) -> Reconciliation:
    """Compare every plan table of `cleaned` with the same table in `schema` (see the module doc).

    For a canary pass the `sample_percent`, `seed` and `small_table_rows` the load used.
    `stored_cache`: the cleaner's stored cache of `cleaned`, used only when it describes this very file.
    """
    with connect(dsn) as target:
        pg_types = {table.name: _pg_column_types(target, schema, table.pg_name) for table in plan.tables}
    layouts = {
        table.name: (table, tuple(c for c in table.columns if c.pg_name in pg_types[table.name]))
        for table in plan.tables
        if pg_types[table.name]
    }
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile-pg") as pool:
        target_side = pool.submit(_all_target_aggregates, dsn, schema, layouts)
        frames = cleaned_frames(cleaned, stored_cache)
        log.debug("reconciling %s from the %s", schema, frames.origin)
        source_side = {}
        for table in plan.tables:
            rows, rowids = sampled_rows(
                cleaned, table, sample_percent=sample_percent, seed=seed, small_table_rows=small_table_rows
            )
            columns = layouts[table.name][1] if table.name in layouts else ()
            source_side[table.name] = (rows, table_aggregates(frames, table, columns, rowids))
        targets = target_side.result()
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


# ---- cleaned-file side: raw frames (stored cache or file), aggregated in polars ------------


TableFrames = Callable[[str, Sequence[str]], pl.DataFrame]


def stored_cache_of(cleaned: Path) -> Path:
    """Where the cleaner's stored cache of `cleaned` is kept, beside it, until the production step."""
    return cleaned.parent / f".{cleaned.name}.stored"


@dataclass(frozen=True)
class CleanedFrames:
    """How the cleaned file's raw frames are read: `read(table, columns)`, `batch_cells` at a time."""

    read: TableFrames
    origin: str
    batch_cells: int


def cleaned_frames(cleaned: Path, stored_cache: Path | None) -> CleanedFrames:
    """Where the cleaned file's values are read: its stored cache when that describes this very file
    (same sha256 and size), else the file (also for any table the cache lacks)."""
    if stored_cache is not None and (stored_cache / MANIFEST_NAME).is_file():
        cache = open_raw_cache(stored_cache, file_sha256(cleaned), cleaned.stat().st_size)
        if cache is not None:
            return CleanedFrames(partial(_read_cache_or_file, cache, cleaned), f"stored cache {stored_cache}",
                                 CACHE_BATCH_CELLS)
    # Every read of the file scans whole rows, so fewer, wider batches.
    return CleanedFrames(partial(_read_file, cleaned), f"file {cleaned}", FILE_BATCH_CELLS)


def _read_cache_or_file(cache: RawCache, cleaned: Path, table: str, columns: Sequence[str]) -> pl.DataFrame:
    if cache.has_table(table, columns):
        return cache.read(table, columns)
    return _read_file(cleaned, table, columns)


def _read_file(cleaned: Path, table: str, columns: Sequence[str]) -> pl.DataFrame:
    with closing(open_readonly(cleaned)) as conn:
        return read_rows(conn, table, columns)


def sampled_rows(
    cleaned: Path, table: TablePlan, *, sample_percent: float | None, seed: int, small_table_rows: int
) -> tuple[int, pl.Series | None]:
    """The row count of `table`'s sample and its rowids (None: every row), as the canary load chose them."""
    with closing(open_readonly(cleaned)) as conn:
        where, params = sample_filter(
            conn, table, sample_percent=sample_percent, seed=seed, small_table_rows=small_table_rows
        )
        if not where:
            return conn.execute(f"SELECT count(*) FROM {quote_ident(table.name)}").fetchone()[0], None
        rowid = rowid_alias(conn, table)
        if rowid is None:
            raise InputError(f"{cleaned}: table {table.name!r} has no rowid to sample by")
        query = f"SELECT {rowid} FROM {quote_ident(table.name)}{where}"
        rowids = pl.Series(ROWID, [value for (value,) in conn.execute(query, params)], dtype=pl.Int64)
    return rowids.len(), rowids


def table_aggregates(
    frames: CleanedFrames, table: TablePlan, columns: Sequence[ColumnPlan], rowids: pl.Series | None
) -> dict[tuple[str, str], Any]:
    """Every per-column aggregate of `columns`, from their raw frames, a few columns at a time."""
    values: dict[tuple[str, str], Any] = {}
    for batch in _column_batches(table, columns, frames.batch_cells):
        frame = frames.read(table.name, [column.name for column in batch])
        if rowids is not None:
            frame = frame.filter(pl.col(ROWID).is_in(rowids.implode()))
        for column in batch:
            values.update(column_aggregates(frame[column.name], column))
        del frame
    return values


def _column_batches(table: TablePlan, columns: Sequence[ColumnPlan], cells: int) -> list[Sequence[ColumnPlan]]:
    width = max(1, cells // max(1, table.row_count))
    return [columns[start:start + width] for start in range(0, len(columns), width)]


def column_aggregates(raw: pl.Series, column: ColumnPlan) -> dict[tuple[str, str], Any]:
    """What reconciliation compares of one column, from its raw Struct series (see `profiling.values`),
    with SQLite's semantics: `count`, `min`/`max` across storage classes, `x <> 0`, exact sums."""
    fields = raw.struct.unnest()
    storage = fields["storage"]
    kind = column.target_type
    result: dict[tuple[str, str], Any] = {(column.name, "non_null"): int((storage != "null").sum())}
    if kind in NUMBER_TYPES or kind in ("date", "timestamp"):
        low, high = sqlite_extremes(raw)
        if kind in NUMBER_TYPES:
            low, high = _number(kind, low), _number(kind, high)
        else:
            low, high = _parse_temporal(kind, low), _parse_temporal(kind, high)
        result[(column.name, "min")], result[(column.name, "max")] = low, high
    if kind in NUMBER_TYPES:
        result[(column.name, "sum")] = _exact_sum(fields)
    elif kind == "boolean":
        zero = storage.is_in(["integer", "real"]) & (fields["i"].cast(pl.Float64).fill_null(fields["r"]) == 0)
        result[(column.name, "true_count")] = int(((storage != "null") & ~zero.fill_null(False)).sum())
    elif kind in HASHED_TYPES:
        result[(column.name, "md5_sum")] = _md5_of_stored(fields)
    elif kind == "timestamptz":
        result[(column.name, "min")], result[(column.name, "max")] = _instant_extremes(fields)
    return result


def _text_bytes(fields: pl.DataFrame, storage: str) -> pl.Series:
    """The bytes of the values of one storage class (text: UTF-8, or the raw bytes of invalid text)."""
    chosen = fields.filter(pl.col("storage") == storage)
    return chosen["s"].cast(pl.Binary).fill_null(chosen["b"])


def sqlite_extremes(raw: pl.Series) -> tuple[Any, Any]:
    """`min(x)` and `max(x)` of a raw Struct series as SQLite computes them: numbers < text < blobs,
    text by its bytes (text that is not UTF-8 comes back with surrogate escapes)."""
    fields = raw.struct.unnest()
    storage = fields["storage"]
    integers = fields["i"].filter(storage == "integer")
    reals = fields["r"].filter(storage == "real")
    numbers = [series for series in (integers, reals) if series.len()]
    texts = _text_bytes(fields, "text")
    blobs = fields["b"].filter(storage == "blob")
    low: Any = None
    if numbers:
        low = min(series.min() for series in numbers)
    elif texts.len():
        low = _decoded_text(texts.min())
    elif blobs.len():
        low = blobs.min()
    high: Any = None
    if blobs.len():
        high = blobs.max()
    elif texts.len():
        high = _decoded_text(texts.max())
    elif numbers:
        high = max(series.max() for series in numbers)
    return low, high


def _decoded_text(value: bytes) -> str:
    return value.decode("utf-8", errors="surrogateescape")


def _exact_sum(fields: pl.DataFrame) -> Decimal | None:
    """The exact sum of every non-null value, each taken as `Decimal(str(value))`."""
    storage = fields["storage"]
    if not (storage != "null").any():
        return None
    integers = fields["i"].filter(storage == "integer").cast(pl.Int128).sum()
    with decimal.localcontext(EXACT):
        total = Decimal(int(integers))
        total += _weighted_decimal_sum(fields["r"].filter(storage == "real"), repr)
        total += _weighted_decimal_sum(_text_bytes(fields, "text"), _decoded_text)
        total += _weighted_decimal_sum(fields["b"].filter(storage == "blob"), str)
    return total


def _weighted_decimal_sum(values: pl.Series, as_text: Callable[[Any], str]) -> Decimal:
    """The sum of `Decimal(as_text(value))` over `values`, converting each distinct value once."""
    if not values.len():
        return Decimal(0)
    counts = values.value_counts()
    distinct, weights = counts[:, 0].to_list(), counts[:, 1].to_list()
    return sum(map(mul, map(Decimal, map(as_text, distinct)), weights), Decimal(0))


def _md5_of_stored(fields: pl.DataFrame) -> int | None:
    """`md5_sum` of the stored bytes of every non-null value, hashing each distinct value once."""
    storage = fields["storage"]
    if not (storage != "null").any():
        return None
    numbers = pl.concat(
        [fields["i"].filter(storage == "integer").cast(pl.String), fields["r"].filter(storage == "real").cast(pl.String)]
    ).cast(pl.Binary)
    stored = pl.concat([_text_bytes(fields, "text"), fields["b"].filter(storage == "blob"), numbers])
    counts = stored.value_counts()
    distinct, weights = counts[:, 0].to_list(), counts[:, 1].to_list()
    return sum(map(mul, md5_prefixes(distinct), weights))


def _instant_extremes(fields: pl.DataFrame) -> tuple[Any, Any]:
    """The earliest and latest instant of a timestamptz column stored as `TIMESTAMPTZ_FORMAT` text."""
    storage = fields["storage"]
    texts = fields["s"].filter(storage != "null").unique()
    if not texts.len():
        return None, None
    instants = texts.str.to_datetime(TIMESTAMPTZ_FORMAT, time_unit="us", time_zone="UTC")
    return instants.min(), instants.max()


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


def md5_prefixes(encoded: Iterable[bytes]) -> Iterable[int]:
    """The first 64 bits of each value's md5 as a signed integer, as `('x' || left(md5(v), 16))::bit(64)::bigint`."""
    return map(_signed64, map(_first8, map(_digest, map(hashlib.md5, encoded))))


def md5_sum(values: Iterable[str | bytes]) -> int:
    """The order-independent hash of non-null text or bytes values (see the module doc)."""
    return sum(md5_prefixes(value.encode("utf-8") if isinstance(value, str) else value for value in values))


# ---- PostgreSQL side -----------------------------------------------------------------------


def _target_aggregates(
    target: psycopg.Connection, schema: str, table: TablePlan, columns: Sequence[ColumnPlan]
) -> dict[tuple[str, str], Any]:
    """One scan for the counts, extremes and row-wise sums and hashes; the hashes and double sums of
    repetitive columns from one grouping-sets scan per `GROUPING_SET_COLUMNS`, once per distinct value."""
    grouped = _repetitive_columns(target, schema, table, columns)
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
        if kind == "boolean":
            expressions.append(sql.SQL("count(*) FILTER (WHERE {})").format(ident))
            keys.append((column.name, "true_count"))
        elif column not in grouped and (kind in NUMBER_TYPES or kind in HASHED_TYPES):
            expressions.append(sql.SQL("sum({})").format(_summand(column)))
            keys.append(_summed_key(column))
    source = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table.pg_name))
    row = target.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(expressions), source)).fetchone()
    values = dict(zip(keys, row, strict=True))
    for start in range(0, len(grouped), GROUPING_SET_COLUMNS):
        values.update(_grouped_sums(target, source, grouped[start:start + GROUPING_SET_COLUMNS]))
    return values


def _summand(column: ColumnPlan, value: sql.Composable | None = None) -> sql.Composable:
    """What is summed per value: the number (doubles as their shortest text), or the hash of text or bytes."""
    ident = value if value is not None else sql.Identifier(column.pg_name)
    kind = column.target_type
    if kind in NUMBER_TYPES:
        return sql.SQL("{}{}").format(ident, sql.SQL("::text::numeric" if kind == "double precision" else "::numeric"))
    hashed = ident if kind == "bytea" else sql.SQL("convert_to({}, 'UTF8')").format(ident)
    return sql.SQL("('x' || left(md5({}), 16))::bit(64)::bigint").format(hashed)


def _summed_key(column: ColumnPlan) -> tuple[str, str]:
    return (column.name, "md5_sum" if column.target_type in HASHED_TYPES else "sum")


def _repetitive_columns(
    target: psycopg.Connection, schema: str, table: TablePlan, columns: Sequence[ColumnPlan]
) -> list[ColumnPlan]:
    """Hashed and double columns whose planner statistics (the load ANALYZEs) estimate few distinct values.

    Only the speed depends on the estimate: a grouped sum equals the row-wise one exactly."""
    candidates = [c for c in columns if c.target_type in HASHED_TYPES or c.target_type == "double precision"]
    if not candidates:
        return []
    estimates = dict(target.execute(
        "SELECT s.attname, CASE WHEN s.n_distinct >= 0 THEN s.n_distinct ELSE -s.n_distinct * c.reltuples END"
        " FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename"
        " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname"
        " WHERE s.schemaname = %s AND s.tablename = %s",
        (schema, table.pg_name),
    ).fetchall())
    rows = target.execute(
        "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, table.pg_name),
    ).fetchone()
    total = rows[0] if rows else 0
    if total < GROUPED_MIN_ROWS:
        return []
    return [c for c in candidates if c.pg_name in estimates and estimates[c.pg_name] * GROUPED_MIN_REPEATS <= total]


def _grouped_sums(target: psycopg.Connection, source: sql.Composable, columns: Sequence[ColumnPlan]) -> dict[tuple[str, str], Any]:
    """`sum(x)` of each column as `sum(x * n)` over its distinct values `x` and their counts `n`, all
    columns grouped in one scan (`GROUPING SETS`; `GROUPING()` tells whose set a group row is in)."""
    idents = [sql.Identifier(column.pg_name) for column in columns]
    listed = sql.SQL(", ").join(idents)
    inner = sql.SQL("SELECT {cols}, GROUPING({cols}) AS g, count(*) AS n FROM {src} GROUP BY GROUPING SETS ({sets})").format(
        cols=listed, src=source, sets=sql.SQL(", ").join(sql.SQL("({})").format(ident) for ident in idents)
    )
    every = (1 << len(columns)) - 1
    sums = [
        sql.SQL("sum({}::numeric * n) FILTER (WHERE g = {})").format(
            _summand(column), sql.Literal(every ^ (1 << (len(columns) - 1 - position)))
        )
        for position, column in enumerate(columns)
    ]
    row = target.execute(sql.SQL("SELECT {} FROM ({}) AS grouped").format(sql.SQL(", ").join(sums), inner)).fetchone()
    return {_summed_key(column): value for column, value in zip(columns, row, strict=True)}


def _all_target_aggregates(
    dsn: str, schema: str, layouts: dict[str, tuple[TablePlan, tuple[ColumnPlan, ...]]]
) -> dict[str, dict[tuple[str, str], Any]]:
    with connect(dsn) as target:
        target.execute("SET extra_float_digits = 1")
        return {
            name: _target_aggregates(target, schema, table, columns) for name, (table, columns) in layouts.items()
        }
