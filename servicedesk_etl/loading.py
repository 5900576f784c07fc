"""Gate 3 load: a cleaned SQLite file into a new PostgreSQL schema, typed as the plan says.

DDL comes from the plan (`ColumnPlan.target_type`, `pg_name`); data goes through psycopg's binary
`COPY` in chunks, one connection per table, up to `max_workers` tables at a time. After the data:
primary keys, indexes on unique and date/time columns, `ANALYZE`. Any failure drops the schema.

The cleaned file's `_audit` and `_quarantine` tables are not loaded: only the plan's tables are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from operator import add, itemgetter
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from servicedesk_etl.dsn import scrub
from servicedesk_etl.errors import InputError
from servicedesk_etl.pg import connect, drop_schema
from servicedesk_etl.profiling.plan import TARGET_TYPES, ColumnPlan, Plan, TablePlan
from servicedesk_etl.sqlite_source import database_file, list_tables, open_readonly, quote_ident, row_batches

log = logging.getLogger(__name__)

CANARY_PREFIX = "servicedesk_canary_"
DRYRUN_PREFIX = "servicedesk_dryrun_"
VERSION_PREFIX = "servicedesk_v"
CANARY_FUNCTION = "servicedesk_canary_bucket"
CANARY_BUCKETS = 10_000
NOT_LOADED_TABLES = ("_audit", "_quarantine")
SAMPLE_CACHE_ENTRIES = 64
_SAMPLE_CACHE: dict[tuple[Any, ...], list[int]] = {}
_SAMPLE_LOCK = threading.Lock()

# psycopg type names for `Copy.set_types`, per plan target type.
COPY_TYPE = {
    "bigint": "int8",
    "numeric": "numeric",
    "double precision": "float8",
    "boolean": "bool",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "text": "text",
    "bytea": "bytea",
}
TEMPORAL_TYPES = frozenset({"date", "timestamp", "timestamptz"})
DATE_FORMAT = "%Y-%m-%d"
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S%.f"
TIMESTAMPTZ_FORMAT = "%Y-%m-%d %H:%M:%S%.f%:z"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TableLoad:
    table: str
    pg_table: str
    rows: int
    seconds: float


@dataclass(frozen=True)
class LoadResult:
    schema: str
    tables: tuple[TableLoad, ...]
    seconds: float

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)

    def row_counts(self) -> dict[str, int]:
        """Rows per PostgreSQL table name, as `cutover.register_version` records them."""
        return {table.pg_table: table.rows for table in self.tables}


class _LoadAborted(Exception):
    """Another table failed; this one stops at the next chunk."""


def canary_schema_name(run_id: str) -> str:
    """`servicedesk_canary_<first 12 alphanumerics of the run id, lower case>`."""
    short = re.sub(r"[^a-z0-9]+", "", run_id.lower())[:12]
    if not short:
        raise InputError(f"run id {run_id!r} has no letters or digits to name a canary schema")
    return CANARY_PREFIX + short


def version_schema_name(now: datetime | None = None) -> str:
    """`servicedesk_v<YYYYMMDDTHHMMSSffffffZ>` in UTC (naive datetimes are taken as UTC)."""
    moment = now or datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return VERSION_PREFIX + moment.strftime("%Y%m%dT%H%M%S%fZ")


def canary_bucket(seed: int, *key: Any) -> int:
    """The sample bucket (0..9999) of a row, from a seeded hash of its key: stable across runs.

    A key of one integer (the usual id, or the rowid) is hashed by modular arithmetic that SQLite
    computes as well (`_integer_bucket_sql`), so those rows are chosen in SQL, not one by one in Python;
    any other key by a seeded blake2b of its values."""
    if len(key) == 1 and type(key[0]) is int:
        return ((key[0] % _BUCKET_PRIME) * _BUCKET_MULTIPLIER + _bucket_seed(seed)) % _BUCKET_PRIME % CANARY_BUCKETS
    digest = hashlib.blake2b(repr((seed, key)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % CANARY_BUCKETS


# (x mod P) * M + seed stays below 2**63, so SQLite's integer arithmetic never overflows to REAL.
_BUCKET_PRIME = 1_000_000_007
_BUCKET_MULTIPLIER = 2_654_435_761


def _bucket_seed(seed: int) -> int:
    return (seed * 40_503 + 1) % _BUCKET_PRIME


def _integer_bucket_sql(key_sql: str) -> str:
    """`canary_bucket(seed, key)` for an integer key, in SQLite (one parameter: `_bucket_seed(seed)`);
    SQLite's `%` keeps the sign of a negative key, Python's does not, hence the extra `+ P) % P`."""
    prime = _BUCKET_PRIME
    return f"((((({key_sql} % {prime}) + {prime}) % {prime}) * {_BUCKET_MULTIPLIER} + ?) % {prime} % {CANARY_BUCKETS})"


def register_canary_function(conn: sqlite3.Connection) -> None:
    conn.create_function(CANARY_FUNCTION, -1, canary_bucket, deterministic=True)


def sample_filter(
    conn: sqlite3.Connection,
    table: TablePlan,
    *,
    sample_percent: float | None,
    seed: int,
    small_table_rows: int,
) -> tuple[str, tuple[Any, ...]]:
    """The SQLite WHERE clause (and its parameters) choosing the rows of `table` to load.

    Empty when the whole table is loaded: no sampling asked, or the table has fewer than
    `small_table_rows` rows. Otherwise rows whose key bucket is below `sample_percent`% are kept;
    the key is `table.key_columns`, or the rowid when the plan gives none.
    """
    if sample_percent is None:
        return "", ()
    if not 0 < sample_percent <= 100:
        raise InputError(f"sample_percent must be in (0, 100], not {sample_percent}")
    total = conn.execute(f"SELECT count(*) FROM {quote_ident(table.name)}").fetchone()[0]
    if total < small_table_rows:
        return "", ()
    identity = table.key_columns or _row_identity(conn, table)
    threshold = round(sample_percent * CANARY_BUCKETS / 100)
    rowid = rowid_alias(conn, table)
    if rowid is not None:
        rowids = sampled_rowids(conn, table, rowid, identity, seed, threshold)
        return f" WHERE {rowid} IN (SELECT value FROM json_each(?))", (json.dumps(rowids),)
    register_canary_function(conn)
    key = ", ".join(quote_ident(name) for name in identity)
    return f" WHERE {CANARY_FUNCTION}(?, {key}) < ?", (seed, threshold)


def sampled_rowids(
    conn: sqlite3.Connection, table: TablePlan, rowid: str, identity: Sequence[str], seed: int, threshold: int
) -> list[int]:
    """The rowids whose key bucket is below `threshold`, hashed once per file, table and sample.

    A canary load and its reconciliation filter the same rows several times (count, copy,
    aggregates, scans); computing the buckets once instead of in every query keeps the per-row
    hashing to one pass. The cache key includes the file's identity, so a new file is hashed anew.
    """
    file = _database_file(conn)
    cache_key = (*file, table.name, tuple(identity), seed, threshold) if file else None
    with _SAMPLE_LOCK:
        cached = _SAMPLE_CACHE.get(cache_key) if cache_key else None
    if cached is not None:
        return cached
    chosen = _chosen_rowids(conn, table.name, rowid, identity, seed, threshold)
    if cache_key:
        with _SAMPLE_LOCK:
            if len(_SAMPLE_CACHE) >= SAMPLE_CACHE_ENTRIES:
                _SAMPLE_CACHE.pop(next(iter(_SAMPLE_CACHE)))
            _SAMPLE_CACHE[cache_key] = chosen
    return chosen


def _chosen_rowids(
    conn: sqlite3.Connection, table: str, rowid: str, identity: Sequence[str], seed: int, threshold: int
) -> list[int]:
    """The rowids, in order, whose key bucket is below `threshold`, in one scan: for a key of one
    column, rows holding an integer are chosen in SQL and only the others hashed here; any other key,
    row by row."""
    key = ", ".join(quote_ident(name) for name in identity)
    source = quote_ident(table)
    if len(identity) != 1:
        rows = conn.execute(f"SELECT {rowid}, {key} FROM {source} ORDER BY {rowid}")
        return [row[0] for row in rows if canary_bucket(seed, *row[1:]) < threshold]
    integer = f"typeof({key}) = 'integer'"
    rows = conn.execute(
        f"SELECT {rowid}, {integer}, {key} FROM {source}"
        f" WHERE NOT {integer} OR {_integer_bucket_sql(key)} < ? ORDER BY {rowid}",
        (_bucket_seed(seed), threshold),
    )
    return [value for value, chosen, each in rows if chosen or canary_bucket(seed, each) < threshold]


def _database_file(conn: sqlite3.Connection) -> tuple[str, int, int, int, bytes] | None:
    """(path, inode, size, mtime, header change counter) of the main database file; None in memory or WAL mode."""
    path = database_file(conn)
    if not path or Path(f"{path}-wal").exists():
        return None
    try:
        stat = Path(path).stat()
        with open(path, "rb") as handle:
            header = handle.read(28)
    except OSError:
        return None
    return str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, header[24:28]


def rowid_alias(conn: sqlite3.Connection, table: TablePlan) -> str | None:
    """A name reaching the rowid that no column shadows, or None for a WITHOUT ROWID table."""
    taken = {name.lower() for (name,) in conn.execute("SELECT name FROM pragma_table_info(?)", (table.name,))}
    for alias in ("_rowid_", "rowid", "oid"):
        if alias in taken:
            continue
        try:
            conn.execute(f"SELECT {alias} FROM {quote_ident(table.name)} LIMIT 0")
        except sqlite3.OperationalError:
            return None
        return alias
    return None


def _row_identity(conn: sqlite3.Connection, table: TablePlan) -> tuple[str, ...]:
    """The rowid, or every column for a WITHOUT ROWID table (whose primary key the plan did not give)."""
    try:
        conn.execute(f"SELECT _rowid_ FROM {quote_ident(table.name)} LIMIT 0")
    except sqlite3.OperationalError:
        return tuple(column.name for column in table.columns)
    return ("_rowid_",)


def select_rows(table: TablePlan, where: str = "", order: Sequence[ColumnPlan] | None = None) -> str:
    columns = ", ".join(quote_ident(column.name) for column in (order or table.columns))
    return f"SELECT {columns} FROM {quote_ident(table.name)}{where}"


def create_table_sql(schema: str, table: TablePlan) -> sql.Composed:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column.pg_name), pg_type(column)) for column in table.columns
    )
    return sql.SQL("CREATE TABLE {}.{} ({})").format(sql.Identifier(schema), sql.Identifier(table.pg_name), columns)


def pg_type(column: ColumnPlan) -> sql.SQL:
    if column.target_type not in TARGET_TYPES:
        raise InputError(f"column {column.name!r}: unknown target type {column.target_type!r}")
    return sql.SQL(column.target_type)


def comment_statements(schema: str, table: TablePlan) -> list[sql.Composed]:
    """COMMENT ON TABLE/COLUMN recording the source name (when renamed) and declared type."""
    statements = []
    if table.pg_name != table.name:
        statements.append(
            sql.SQL("COMMENT ON TABLE {}.{} IS {}").format(
                sql.Identifier(schema), sql.Identifier(table.pg_name), sql.Literal(f"source table: {table.name}")
            )
        )
    for column in table.columns:
        text = f"source type: {column.declared_type or '(none)'}"
        if column.pg_name != column.name:
            text += f"; source column: {column.name}"
        statements.append(
            sql.SQL("COMMENT ON COLUMN {}.{}.{} IS {}").format(
                sql.Identifier(schema), sql.Identifier(table.pg_name), sql.Identifier(column.pg_name), sql.Literal(text)
            )
        )
    return statements


def index_statements(schema: str, table: TablePlan) -> list[sql.Composed]:
    """PRIMARY KEY on the key columns; an index on each unique non-text (non-key) and each date/time column."""
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table.pg_name))
    statements = []
    if table.key_columns:
        keys = [table.column(name).pg_name for name in table.key_columns]
        statements.append(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                target, sql.SQL(", ").join(map(sql.Identifier, keys))
            )
        )
    single_key = table.key_columns[0] if len(table.key_columns) == 1 else None
    for column in table.columns:
        if column.name == single_key:
            continue
        # Unique free text (comments, descriptions) is no lookup key, and B-tree entries cap at ~2.7 kB.
        if column.target_type in TEMPORAL_TYPES or (column.unique and column.target_type not in ("text", "bytea")):
            statements.append(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(index_name(table.pg_name, column.pg_name)), target, sql.Identifier(column.pg_name)
                )
            )
    return statements


def index_name(pg_table: str, pg_column: str) -> str:
    """A short, ASCII, deterministic index name (index names share the schema's namespace)."""
    return "ix_" + hashlib.blake2b(f"{pg_table}\x00{pg_column}".encode(), digest_size=10).hexdigest()


def _as_decimal(value: int | float | str | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def column_converter(column: ColumnPlan) -> Callable[[Sequence[Any]], Sequence[Any]] | None:
    """How one chunk of a column's storage values becomes what the binary COPY dumper takes."""
    match column.target_type:
        case "date":
            return lambda values: pl.Series(values, dtype=pl.String).str.to_date(DATE_FORMAT).to_list()
        case "timestamp":
            return lambda values: (
                pl.Series(values, dtype=pl.String).str.to_datetime(TIMESTAMP_FORMAT, time_unit="us").to_list()
            )
        case "timestamptz":
            return lambda values: (
                pl.Series(values, dtype=pl.String)
                .str.to_datetime(TIMESTAMPTZ_FORMAT, time_unit="us", time_zone="UTC")
                .to_list()
            )
        case "numeric":
            return lambda values: list(map(_as_decimal, values))
        case _:
            return None


def copy_order(table: TablePlan) -> tuple[ColumnPlan, ...]:
    """The table's columns as they are selected and copied: those needing conversion last."""
    plain = [column for column in table.columns if column_converter(column) is None]
    return (*plain, *(column for column in table.columns if column_converter(column) is not None))


def _fetched(source: sqlite3.Connection, query: str, params: tuple[Any, ...], rows: int) -> Iterator[list[Any]]:
    cursor = source.execute(query, params)
    while batch := cursor.fetchmany(rows):
        yield batch


def convert_chunk(table: TablePlan, order: Sequence[ColumnPlan], rows: list[tuple[Any, ...]]) -> Iterable[tuple]:
    """The chunk's rows with their trailing columns (see `copy_order`) converted column by column.

    Only the converted columns are transposed; rows are rebuilt as `row[:plain] + converted`.
    """
    plain = sum(1 for column in order if column_converter(column) is None)
    if plain == len(order):
        return rows
    converted = []
    for position in range(plain, len(order)):
        column = order[position]
        convert = column_converter(column)
        try:
            converted.append(convert(list(map(itemgetter(position), rows))))  # type: ignore[misc]
        except Exception as error:
            raise InputError(
                f"{table.name}.{column.name}: a value is not in the cleaned {column.target_type} form: {error}"
            ) from error
    return map(add, map(itemgetter(slice(0, plain)), rows), zip(*converted, strict=True))


def load_schema(
    cleaned: Path,
    plan: Plan,
    dsn: str,
    schema: str,
    *,
    sample_percent: float | None = None,
    seed: int = 0,
    small_table_rows: int = 1000,
    max_workers: int = 2,
    chunk_rows: int = 20_000,
    progress: Progress | None = None,
) -> LoadResult:
    """Create `schema` (it must not exist) and load every plan table of `cleaned` into it.

    With `sample_percent`, a deterministic sample of each table (see `sample_filter`).
    `progress(table, rows_done, rows_total)` is called from the worker threads after each chunk
    (for a sampled table `rows_total` is the expected sample size).
    On any failure the schema is dropped and the error re-raised.
    """
    started = time.perf_counter()
    _check_source_tables(cleaned, plan)
    _create_schema(dsn, schema)
    abort = threading.Event()
    try:
        tables = _load_tables(
            cleaned,
            plan,
            dsn,
            schema,
            abort,
            sample_percent=sample_percent,
            seed=seed,
            small_table_rows=small_table_rows,
            max_workers=max_workers,
            chunk_rows=chunk_rows,
            progress=progress,
        )
    except BaseException:
        abort.set()
        _drop_after_failure(dsn, schema)
        raise
    result = LoadResult(schema=schema, tables=tables, seconds=time.perf_counter() - started)
    log.info("loaded %d rows into schema %s in %.2f s", result.rows, schema, result.seconds)
    return result


def _drop_after_failure(dsn: str, schema: str) -> None:
    """Drop the half-built schema, logging instead of raising (it runs while another error propagates)."""
    try:
        drop_schema(dsn, schema)
        log.warning("dropped schema %s after a failed load", schema)
    except Exception as error:
        log.error("could not drop schema %s after a failed load: %s", schema, scrub(str(error), dsn))


def _check_source_tables(cleaned: Path, plan: Plan) -> None:
    conn = open_readonly(cleaned)
    try:
        present = set(list_tables(conn))
    finally:
        conn.close()
    missing = [table.name for table in plan.tables if table.name not in present]
    if missing:
        raise InputError(f"{cleaned}: the plan's tables {missing} are not in the cleaned file")


def _create_schema(dsn: str, schema: str) -> None:
    with connect(dsn) as conn:
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists:
            raise InputError(f"schema {schema!r} already exists; a load always goes into a new schema")
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def _load_tables(
    cleaned: Path,
    plan: Plan,
    dsn: str,
    schema: str,
    abort: threading.Event,
    **options: Any,
) -> tuple[TableLoad, ...]:
    tables = sorted((t for t in plan.tables if t.columns), key=lambda t: t.row_count, reverse=True)
    max_workers = max(1, options.pop("max_workers"))
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="load") as pool:
        futures: dict[Future[TableLoad], TablePlan] = {
            pool.submit(_load_table, cleaned, table, dsn, schema, abort, **options): table for table in tables
        }
        try:
            done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            abort.set()
            raise
        failed = [future for future in done if future.exception() is not None]
        if failed:
            abort.set()
            for future in futures:
                future.cancel()
            wait(futures)
            raise failed[0].exception()  # type: ignore[misc]
    loads = {futures[future].name: future.result() for future in futures}
    return tuple(loads[table.name] for table in plan.tables if table.name in loads)


def _load_table(
    cleaned: Path,
    table: TablePlan,
    dsn: str,
    schema: str,
    abort: threading.Event,
    *,
    sample_percent: float | None,
    seed: int,
    small_table_rows: int,
    chunk_rows: int,
    progress: Progress | None,
) -> TableLoad:
    started = time.perf_counter()
    source = open_readonly(cleaned)
    try:
        where, params = sample_filter(
            source, table, sample_percent=sample_percent, seed=seed, small_table_rows=small_table_rows
        )
        total = source.execute(f"SELECT count(*) FROM {quote_ident(table.name)}").fetchone()[0]
        if where:  # an estimate: counting the sample exactly would cost a second hashing pass
            total = round(total * (sample_percent or 100) / 100)
        with connect(dsn) as conn:
            conn.execute(create_table_sql(schema, table))
            for statement in comment_statements(schema, table):
                conn.execute(statement)
            order = copy_order(table)
            rows = copy_rows(
                source, conn, table, order, schema, select_rows(table, where, order), params, abort, chunk_rows,
                lambda done: progress(table.name, done, total) if progress else None,
            )
            for statement in index_statements(schema, table):
                conn.execute(statement)
            conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(table.pg_name)))
    finally:
        source.close()
    seconds = time.perf_counter() - started
    log.info("table %s: %d rows into %s.%s in %.2f s", table.name, rows, schema, table.pg_name, seconds)
    return TableLoad(table=table.name, pg_table=table.pg_name, rows=rows, seconds=seconds)


def copy_rows(
    source: sqlite3.Connection,
    conn: psycopg.Connection,
    table: TablePlan,
    order: Sequence[ColumnPlan],
    schema: str,
    query: str,
    params: tuple[Any, ...],
    abort: threading.Event,
    chunk_rows: int,
    report: Callable[[int], None],
) -> int:
    """Stream `query`'s rows (columns in `order`, see `copy_order`) into `schema.table` by binary COPY."""
    statement = sql.SQL("COPY {}.{} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema),
        sql.Identifier(table.pg_name),
        sql.SQL(", ").join(sql.Identifier(column.pg_name) for column in order),
    )
    file = database_file(source)
    batches = (
        row_batches(file, query, params, chunk_rows, functions={CANARY_FUNCTION: canary_bucket})
        if file is not None
        else _fetched(source, query, params, chunk_rows)
    )
    done = 0
    with closing(batches), conn.cursor() as pg_cursor, pg_cursor.copy(statement) as copy:
        copy.set_types([COPY_TYPE[column.target_type] for column in order])
        for rows in batches:
            if abort.is_set():
                raise _LoadAborted(table.name)
            for row in convert_chunk(table, order, rows):
                copy.write_row(row)
            done += len(rows)
            report(done)
    return done
