"""Gate 2 core: execute the plan into a new SQLite file, with an audit and a quarantine.

The source is opened read-only and checksummed before and after. The new file is written to a
hidden temporary file beside the destination inside one `BEGIN EXCLUSIVE` transaction, checked with
`PRAGMA integrity_check` and renamed into place, so the destination never holds half a result.
Every value the plan cannot convert goes to `_quarantine` with its reason; every operation is
counted in `_audit`; the per-column reconciliation is computed from the written file and the source.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import psutil

from servicedesk_etl.errors import GateFailed, InputError, ResourceExhausted
from servicedesk_etl.profiling.convert import ConvertedColumn, convert_column, convert_distinct
from servicedesk_etl.profiling.plan import ColumnPlan, Plan, TablePlan
from servicedesk_etl.profiling.values import ROWID, RowSample, read_rows
from servicedesk_etl.raw_cache import RawCache, RawCacheWriter, as_stored
from servicedesk_etl.sqlite_source import (
    file_sha256,
    list_tables,
    open_readonly,
    quote_ident,
    readonly_uri,
    row_count,
    table_columns,
)

logger = logging.getLogger(__name__)

AUDIT_TABLE = "_audit"
QUARANTINE_TABLE = "_quarantine"
DUPLICATE_POLICIES = ("keep_first", "keep_all")
TEMP_SUFFIX = ".cleaning-tmp"
SQLITE_SIDECARS = ("", "-journal", "-wal", "-shm")
ROWID_ALIASES = ("rowid", "_rowid_", "oid")
EXAMPLES_PER_OPERATION = 3
READ_CHUNK_ROWS = 150_000
# Cells converted at once (each with its value, outcome, operation and reason): bounds memory for wide tables.
# Two chunks are alive at a time (one written, the next converted): about 350 MB each at this size.
READ_CHUNK_CELLS = 1_500_000
MIN_ROWID = -(2**63)
MAX_ROWID = 2**63 - 1
DISTINCT_SHARE_DENOMINATOR = 2

REASON_DUPLICATE_ROW = "duplicate_row"
REASON_DUPLICATE_KEY = "duplicate_key"
WHOLE_ROW_STORAGE = "json"
# The source attached read-only to the output's connection, so unchanged values are copied by SQLite.
SNAPSHOT_SCHEMA = "snapshot"
_CONVERTED_TABLE = "_converted"

_T = TypeVar("_T")
ProgressHook = Callable[[str, int, int], None]
HealthCheck = Callable[[], None]

_AUDIT_DDL = """
CREATE TABLE _audit (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    column_name TEXT,
    outcome TEXT NOT NULL,
    operation TEXT NOT NULL,
    count INTEGER NOT NULL,
    examples TEXT NOT NULL
)
"""
_QUARANTINE_DDL = """
CREATE TABLE _quarantine (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    key_column TEXT,
    key_value BLOB,
    column_name TEXT,
    value BLOB,
    storage_class TEXT NOT NULL,
    reason TEXT NOT NULL
)
"""
_CANDIDATES_DDL = "CREATE TEMP TABLE _candidates (id INTEGER PRIMARY KEY)"
_INSERT_AUDIT = (
    "INSERT INTO _audit (table_name, column_name, outcome, operation, count, examples) VALUES (?, ?, ?, ?, ?, ?)"
)
# coalesce(i, r, s, b): exactly one is non-null per value, so the original keeps its storage class.
_INSERT_FAILED_CELL = (
    "INSERT INTO _quarantine (table_name, row_id, key_column, key_value, column_name, value, storage_class, reason)"
    " VALUES (?, ?, ?, ?, ?, coalesce(?, ?, ?, ?), ?, ?)"
)


@dataclass(frozen=True)
class CleanSettings:
    duplicate_policy: str = "keep_first"
    check_every_rows: int = 10_000

    def __post_init__(self) -> None:
        if self.duplicate_policy not in DUPLICATE_POLICIES:
            raise InputError(
                f"duplicate policy {self.duplicate_policy!r} is not one of {', '.join(DUPLICATE_POLICIES)}"
            )
        if self.check_every_rows < 1:
            raise InputError(f"check_every_rows must be at least 1, not {self.check_every_rows}")


@dataclass(frozen=True)
class ColumnReconciliation:
    """Where every non-null source cell of one column went, counted from the written file."""

    table: str
    column: str
    source_non_null: int
    cleaned_non_null: int
    quarantined: int
    nulled_by_rule: int
    in_removed_duplicates: int

    @property
    def balanced(self) -> bool:
        accounted = self.cleaned_non_null + self.quarantined + self.nulled_by_rule + self.in_removed_duplicates
        return self.source_non_null == accounted


@dataclass(frozen=True)
class CleanResult:
    output: Path
    source_sha256_before: str
    source_sha256_after: str
    rows_in: dict[str, int]
    rows_out: dict[str, int]
    duplicates_removed: dict[str, int]
    quarantined_cells: int
    nulled_cells: int
    converted_cells: int
    reconciliation: tuple[ColumnReconciliation, ...]
    seconds: float
    # Set when a stored cache was asked for: the cleaned file's checksum, and the cache (None if it failed).
    output_sha256: str | None = None
    stored_cache: RawCache | None = None

    @property
    def source_unchanged(self) -> bool:
        return self.source_sha256_before == self.source_sha256_after

    @property
    def reconciled(self) -> bool:
        rows_balance = all(
            self.rows_in[table] == self.rows_out.get(table, 0) + self.duplicates_removed.get(table, 0)
            for table in self.rows_in
        )
        return rows_balance and all(column.balanced for column in self.reconciliation)


@dataclass(frozen=True)
class _Hooks:
    progress: ProgressHook | None
    health_check: HealthCheck | None
    every_rows: int

    def after_chunk(self, table: str, rows_done: int, rows_total: int) -> None:
        if self.health_check is not None:
            self.health_check()
        if self.progress is not None:
            self.progress(table, rows_done, rows_total)


@dataclass(frozen=True)
class _TableOutcome:
    rows_in: int
    rows_out: int
    duplicates_removed: int
    quarantined_cells: int
    nulled_cells: int
    converted_cells: int
    # Non-null cells per column counted in the cached chunks (None when the table was read from SQLite).
    cached_non_null: dict[str, int] | None = None


@dataclass(frozen=True)
class _Key:
    """How quarantine entries of a table name their row: key column label and per-row key values."""

    label: str | None
    values: pl.Series


def clean_snapshot(
    source: Path,
    plan: Plan,
    output: Path,
    *,
    settings: CleanSettings = CleanSettings(),
    progress: ProgressHook | None = None,
    health_check: HealthCheck | None = None,
    force: bool = False,
    raw_cache: RawCache | None = None,
    stored_cache_dir: Path | None = None,
) -> CleanResult:
    """Write the cleaned copy of `source` to the new file `output`, executing `plan` exactly.

    `raw_cache`: the raw frames of this very source (same sha256), read instead of SQLite; a cache
    of another file, or one lacking a table, is ignored for it with a log line. The output is the
    same either way. `stored_cache_dir`: where to cache the cleaned tables' values as SQLite stores
    them (raw layout, duplicates removed), described by `CleanResult.output_sha256`.

    Raises InputError (nothing written) when `output` is the source, already exists without
    `force`, or cannot be written; any exception (including one raised by `health_check` or
    `progress`) removes the temporary file and leaves `output` untouched.
    """
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    refuse_unusable_output(source, output, force=force)
    remove_stale_temp_files(output)
    sha_before = file_sha256(source)
    if plan.source_sha256 and plan.source_sha256 != sha_before:
        logger.warning(
            "the plan was profiled on %s (sha256 %s), not on this file", plan.source_path, plan.source_sha256
        )
    hooks = _Hooks(progress, health_check, settings.check_every_rows)
    temp = temp_path_for(output)
    cache = _usable_cache(raw_cache, sha_before)
    stored = _StoredCache(stored_cache_dir) if stored_cache_dir is not None else None
    output_sha256 = stored_cache = None
    try:
        with closing(open_readonly(source)) as src:
            _refuse_plan_not_matching(src, plan)
            # One read transaction: every read and the reconciliation see the same snapshot.
            src.execute("BEGIN")
            reader = _ChunkReader(src, source, cache)
            outcomes = _write_cleaned_file(reader, plan, temp, settings, hooks, stored)
            cached_counts = {name: o.cached_non_null for name, o in outcomes.items() if o.cached_non_null is not None}
            reconciliation = _reconcile_with_file(src, temp, plan, cached_counts)
        _fsync_file(temp)
        if stored is not None:
            output_sha256 = file_sha256(temp)
            stored_cache = stored.finish(output_sha256, temp.stat().st_size)
        _remove_sqlite_file(output)
        os.replace(temp, output)
        _fsync_directory(output.parent)
    except BaseException:
        _remove_sqlite_file(temp)
        if stored is not None:
            stored.discard()
        raise
    sha_after = file_sha256(source)
    result = CleanResult(
        output=output,
        source_sha256_before=sha_before,
        source_sha256_after=sha_after,
        rows_in={name: o.rows_in for name, o in outcomes.items()},
        rows_out={name: o.rows_out for name, o in outcomes.items()},
        duplicates_removed={name: o.duplicates_removed for name, o in outcomes.items()},
        quarantined_cells=sum(o.quarantined_cells for o in outcomes.values()),
        nulled_cells=sum(o.nulled_cells for o in outcomes.values()),
        converted_cells=sum(o.converted_cells for o in outcomes.values()),
        reconciliation=reconciliation,
        seconds=time.perf_counter() - started,
        output_sha256=output_sha256,
        stored_cache=stored_cache,
    )
    _log_result(result)
    return result


def _usable_cache(cache: RawCache | None, source_sha256: str) -> RawCache | None:
    if cache is not None and cache.source_sha256 != source_sha256:
        logger.warning("the raw cache in %s describes another file (sha256 %s); reading the source instead",
                       cache.directory, cache.source_sha256)
        return None
    return cache


class _ChunkReader:
    """Raw rows of the source, from the raw cache when it holds the table whole, else from SQLite."""

    def __init__(self, src: sqlite3.Connection, source: Path, cache: RawCache | None) -> None:
        self.src = src
        self.source = source
        self._cache = cache

    def cache_for(self, table: str, names: Sequence[str], rows: int) -> RawCache | None:
        cache = self._cache
        if cache is None:
            return None
        if not cache.has_table(table, names) or cache.row_count(table) != rows:
            logger.info("the raw cache does not hold table %s whole; reading it from the source", table)
            return None
        return cache

    def read(
        self, cache: RawCache | None, table: str, names: Sequence[str], rows: _RowidRange | None
    ) -> pl.DataFrame:
        if cache is None:
            return read_rows(self.src, table, names, rows)
        return cache.read(table, names, None if rows is None else (rows.first, rows.last))


def refuse_unusable_output(source: Path, output: Path, *, force: bool) -> None:
    """Raise InputError with a one-line reason when `output` must not be written."""
    same_file = output.exists() and source.exists() and os.path.samefile(output, source)
    if same_file or output.resolve() == source.resolve():
        raise InputError(f"{output}: is the source snapshot itself; the cleaned file must be a new file")
    if output.is_dir():
        raise InputError(f"{output}: is a directory; give the path of the new SQLite file")
    if output.exists() and not force:
        raise InputError(f"{output}: already exists; pass --force to replace it")
    directory = output.parent
    if not directory.is_dir():
        raise InputError(f"{directory}: no such directory for the cleaned file")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"{directory}: no write permission for the cleaned file")


def temp_path_for(output: Path) -> Path:
    """The hidden temporary file beside `output` that this process builds before the rename."""
    return output.parent / f".{output.name}.{os.getpid()}{TEMP_SUFFIX}"


def remove_stale_temp_files(output: Path) -> list[Path]:
    """Remove temporary files (and their journals) left beside `output` by runs that died."""
    pattern = str(output.parent / f".{glob.escape(output.name)}.*{TEMP_SUFFIX}")
    removed = []
    for candidate in map(Path, glob.glob(pattern)):
        owner = _owner_pid(candidate, output)
        if owner is not None and owner != os.getpid() and psutil.pid_exists(owner):
            continue
        _remove_sqlite_file(candidate)
        removed.append(candidate)
        logger.info("removed %s left by an interrupted run", candidate)
    return removed


def _owner_pid(temp: Path, output: Path) -> int | None:
    middle = temp.name[len(output.name) + 2 : -len(TEMP_SUFFIX)]
    return int(middle) if middle.isdigit() else None


def _remove_sqlite_file(path: Path) -> None:
    """The file and its journals: a journal left beside a replaced file would be replayed into the new one."""
    for sidecar in SQLITE_SIDECARS:
        Path(f"{path}{sidecar}").unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _refuse_plan_not_matching(src: sqlite3.Connection, plan: Plan) -> None:
    """The plan must cover exactly the source's tables and columns: nothing is dropped silently."""
    source_tables = set(list_tables(src))
    planned_tables = {table.name for table in plan.tables}
    for reserved in (AUDIT_TABLE, QUARANTINE_TABLE):
        if reserved in source_tables:
            raise InputError(f"the source has a table named {reserved}, which the cleaned file reserves")
    if missing := sorted(planned_tables - source_tables):
        raise InputError(f"the plan names tables the source lacks: {', '.join(missing)}; profile this file again")
    if unplanned := sorted(source_tables - planned_tables):
        raise InputError(f"the plan does not cover tables {', '.join(unplanned)}; profile this file again")
    for table in plan.tables:
        source_columns = [column.name for column in table_columns(src, table.name)]
        planned_columns = [column.name for column in table.columns]
        if sorted(source_columns) != sorted(planned_columns):
            raise InputError(
                f"the plan's columns of table {table.name!r} differ from the source's; profile this file again"
            )
        if absent := [name for name in table.key_columns if name not in planned_columns]:
            raise InputError(f"key columns {absent} of table {table.name!r} are not among its columns")


@contextmanager
def _exclusive_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _write_cleaned_file(
    reader: _ChunkReader,
    plan: Plan,
    temp: Path,
    settings: CleanSettings,
    hooks: _Hooks,
    stored: _StoredCache | None,
) -> dict[str, _TableOutcome]:
    outcomes: dict[str, _TableOutcome] = {}
    with closing(sqlite3.connect(temp, isolation_level=None, uri=True)) as dst:
        # Durability comes from the fsync before the rename; the transaction gives all-or-nothing.
        dst.execute("PRAGMA synchronous = OFF")
        dst.execute("PRAGMA cache_size = -65536")
        dst.execute("PRAGMA temp_store = MEMORY")
        attached = _attach_source(dst, reader)
        try:
            with _exclusive_transaction(dst):
                dst.execute(_AUDIT_DDL)
                dst.execute(_QUARANTINE_DDL)
                dst.execute(_CANDIDATES_DDL)
                # Every source query the writing needs runs here; from now on only `_prepare_chunk` reads it.
                jobs = [_table_job(reader, table, source_attached=attached) for table in plan.tables]
                tasks = [partial(_prepare_chunk, reader, job, rows) for job in jobs for rows in job.ranges]
                with closing(_one_ahead(tasks)) as chunks:
                    for job in jobs:
                        table_chunks = islice(chunks, len(job.ranges))
                        outcomes[job.table.name] = _clean_table(dst, job, table_chunks, settings, hooks, stored)
                dst.execute("DROP TABLE temp._candidates")
        except sqlite3.OperationalError as error:
            if "full" in str(error).lower():
                raise ResourceExhausted(f"{temp.parent}: disk full while writing the cleaned file") from error
            raise
        if attached:
            dst.execute(f"DETACH DATABASE {SNAPSHOT_SCHEMA}")
        _require_integrity(dst, temp)
    return outcomes


def _attach_source(dst: sqlite3.Connection, reader: _ChunkReader) -> bool:
    """Attach the source read-only to the output's connection; False when SQLite cannot (another text encoding)."""
    (encoding,) = reader.src.execute("PRAGMA encoding").fetchone()
    if encoding != "UTF-8":
        logger.info("the source is %s-encoded; every cleaned value is written from Python", encoding)
        return False
    try:
        dst.execute(f"ATTACH DATABASE ? AS {SNAPSHOT_SCHEMA}", (readonly_uri(reader.source),))
    except sqlite3.OperationalError as error:
        logger.info("cannot attach the source to the cleaned file (%s); every value is written from Python", error)
        return False
    return True


def _require_integrity(dst: sqlite3.Connection, path: Path) -> None:
    verdict = [row[0] for row in dst.execute("PRAGMA integrity_check").fetchall()]
    if verdict != ["ok"]:
        raise GateFailed("cleaned_db", f"integrity_check of {path} failed: {'; '.join(verdict[:3])}")


@dataclass(frozen=True)
class _RowidRange(RowSample):
    """Rows with `first <= rowid <= last`, expressed as the row filter `read_rows` applies."""

    first: int = MIN_ROWID
    last: int = MAX_ROWID

    def predicate(self, rowid_sql: str) -> tuple[str, tuple[int, int]]:
        return f"{rowid_sql} BETWEEN ? AND ?", (self.first, self.last)


class _AuditTally:
    """Per column, outcome and operation of one table: the count and the first examples by rowid."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str, str], tuple[int, list[dict[str, Any]]]] = {}

    def add(self, table: TablePlan, raw: pl.DataFrame, conversions: Sequence[ConvertedColumn]) -> dict[str, int]:
        """Tally one chunk; returns its cell counts per outcome (cells whose value is NULL not counted)."""
        grouped = [
            pl.DataFrame({"outcome": converted.outcome, "operation": converted.operation})
            .with_row_index("index")
            .filter(pl.col("outcome") != "null")
            .with_columns(pl.col("operation").fill_null(pl.col("outcome")))
            .group_by("outcome", "operation", maintain_order=True)
            .agg(count=pl.len(), examples=pl.col("index").head(EXAMPLES_PER_OPERATION))
            for converted in conversions
        ]
        totals: dict[str, int] = {}
        for position, (column, converted, groups) in enumerate(zip(table.columns, conversions, grouped)):
            for outcome, operation, count, indices in groups.iter_rows():
                totals[outcome] = totals.get(outcome, 0) + count
                known, examples = self._entries.get((position, outcome, operation), (0, []))
                wanted = indices[: EXAMPLES_PER_OPERATION - len(examples)]
                examples = examples + [
                    {
                        "rowid": raw[ROWID][index],
                        "before": _display_raw(raw[column.name][index]),
                        "after": _display_value(converted.values[index]),
                    }
                    for index in wanted
                ]
                self._entries[(position, outcome, operation)] = (known + count, examples)
        return totals

    def write(self, dst: sqlite3.Connection, table: TablePlan) -> None:
        for (position, outcome, operation), (count, examples) in sorted(self._entries.items()):
            dst.execute(
                _INSERT_AUDIT,
                (table.name, table.columns[position].name, outcome, operation, count,
                 json.dumps(examples, ensure_ascii=False)),
            )


@dataclass(frozen=True)
class _TableJob:
    """What is known of a table before its rows are read: its size, rowid name, chunks and where rows come from."""

    table: TablePlan
    names: tuple[str, ...]
    rowid_sql: str
    rows_in: int
    cache: RawCache | None
    ranges: tuple[_RowidRange | None, ...]
    copy_from_source: bool


@dataclass(frozen=True)
class _Chunk:
    raw: pl.DataFrame
    conversions: tuple[ConvertedColumn, ...]


def _table_job(reader: _ChunkReader, table: TablePlan, *, source_attached: bool) -> _TableJob:
    src = reader.src
    names = tuple(column.name for column in table.columns)
    rowid_sql = _rowid_alias(names)
    rows_in = row_count(src, table.name)
    chunk_rows = max(1, min(READ_CHUNK_ROWS, READ_CHUNK_CELLS // max(1, len(names))))
    return _TableJob(
        table=table,
        names=names,
        rowid_sql=rowid_sql,
        rows_in=rows_in,
        cache=reader.cache_for(table.name, names, rows_in),
        ranges=tuple(_row_ranges(src, table.name, rowid_sql, rows_in, chunk_rows)),
        copy_from_source=source_attached and _has_rowid(src, table.name, rowid_sql),
    )


def _prepare_chunk(reader: _ChunkReader, job: _TableJob, rows: _RowidRange | None) -> _Chunk:
    """Read and convert one chunk, writing nothing: it runs in a background thread one chunk ahead of the
    writing, and is then the only user of the source connection (every query the writing needs ran before)."""
    raw = reader.read(job.cache, job.table.name, job.names, rows)
    _require_in_range(raw, rows, job.table.name)
    return _Chunk(raw, tuple(_convert(raw, column) for column in job.table.columns))


def _one_ahead(tasks: Sequence[Callable[[], _T]]) -> Iterator[_T]:
    """Each task's result in order, the next task running in a background thread meanwhile.

    At most one result waits beside the one being used. Closing the iterator cancels what has not
    started and waits for what has, so nothing reads the source after the cleaning stopped.
    """
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clean-ahead")
    try:
        submitted: deque[Future[_T]] = deque()
        for task in tasks:
            submitted.append(worker.submit(task))
            if len(submitted) == 2:
                yield submitted.popleft().result()
        while submitted:
            yield submitted.popleft().result()
    finally:
        worker.shutdown(wait=True, cancel_futures=True)


def _clean_table(
    dst: sqlite3.Connection,
    job: _TableJob,
    chunks: Iterator[_Chunk],
    settings: CleanSettings,
    hooks: _Hooks,
    stored: _StoredCache | None,
) -> _TableOutcome:
    """Convert and write the table chunk by chunk; then resolve duplicates in the written rows."""
    table, names, rows_in = job.table, job.names, job.rows_in
    _create_table(dst, table)
    writer = _RowWriter(dst, table, job.rowid_sql, copy_from_source=job.copy_from_source)
    tally = _AuditTally()
    fingerprints = []
    stored_chunks = _StoredChunks(stored, table)
    written = quarantined = nulled = converted_cells = 0
    cached_non_null = dict.fromkeys(names, 0) if job.cache is not None else None
    for chunk in chunks:
        raw, conversions = chunk.raw, chunk.conversions
        cleaned = _cleaned_frame(raw[ROWID], conversions)
        key = _key_of(table, cleaned)
        quarantined += _quarantine_failed_cells(dst, table, raw, conversions, key)
        outcomes = tally.add(table, raw, conversions)
        if cached_non_null is not None:
            for name, count in _non_null_in_chunk(raw, names).items():
                cached_non_null[name] += count
        fingerprints.append(_fingerprints(cleaned, _key_positions(table)))
        nulled += outcomes.get("nulled", 0)
        converted_cells += outcomes.get("converted", 0)
        written = writer.insert(raw, cleaned, hooks, written, rows_in)
        stored_chunks.add(cleaned)
        # Let go of this chunk before the next is taken: only it and the one being prepared are alive.
        del chunk, raw, conversions, cleaned, key
    if written == 0:
        hooks.after_chunk(table.name, 0, rows_in)
    tally.write(dst, table)
    removed_rowids = _resolve_duplicates(dst, table, pl.concat(fingerprints), settings.duplicate_policy)
    removed = len(removed_rowids)
    stored_chunks.finish(removed_rowids)

    outcome = _TableOutcome(
        rows_in=rows_in,
        rows_out=row_count(dst, table.name),
        duplicates_removed=removed,
        quarantined_cells=quarantined,
        nulled_cells=nulled,
        converted_cells=converted_cells,
        cached_non_null=cached_non_null,
    )
    logger.info(
        "cleaned table %s: %d rows in, %d out, %d duplicates removed, %d cells quarantined",
        table.name, outcome.rows_in, outcome.rows_out, outcome.duplicates_removed, outcome.quarantined_cells,
    )
    return outcome


def _non_null_in_chunk(raw: pl.DataFrame, names: Sequence[str]) -> dict[str, int]:
    if not names:
        return {}
    counts = raw.select([(pl.col(name).struct.field("storage") != "null").sum().alias(name) for name in names])
    return {name: int(count) for name, count in zip(names, counts.row(0))}


def _rowid_alias(names: Sequence[str]) -> str:
    """The name that reaches a table's rowid: `rowid` unless a column is called that."""
    taken = {name.lower() for name in names}
    alias = next((alias for alias in ROWID_ALIASES if alias not in taken), None)
    if alias is None:
        raise InputError("a table has columns named rowid, _rowid_ and oid; its rows cannot be addressed")
    return alias


def _has_rowid(src: sqlite3.Connection, table: str, rowid_sql: str) -> bool:
    try:
        src.execute(f"SELECT {rowid_sql} FROM {quote_ident(table)} LIMIT 0")
    except sqlite3.OperationalError:
        return False
    return True


def _row_ranges(
    src: sqlite3.Connection, table: str, rowid_sql: str, rows: int, chunk_rows: int
) -> list[_RowidRange | None]:
    """Consecutive rowid ranges of at most `chunk_rows` rows; one whole read for small or WITHOUT ROWID tables."""
    if rows <= chunk_rows or not _has_rowid(src, table, rowid_sql):
        return [None]
    starts = [
        start
        for (start,) in src.execute(
            f"SELECT r FROM (SELECT {rowid_sql} AS r, row_number() OVER (ORDER BY {rowid_sql}) AS n"
            f" FROM {quote_ident(table)}) WHERE (n - 1) % ? = 0 AND n > 1",
            (chunk_rows,),
        )
    ]
    firsts = [MIN_ROWID, *starts]
    lasts = [start - 1 for start in starts] + [MAX_ROWID]
    return [_RowidRange(1.0, first=first, last=last) for first, last in zip(firsts, lasts)]


def _require_in_range(raw: pl.DataFrame, rows: _RowidRange | None, table: str) -> None:
    if rows is not None and raw.height and not raw[ROWID].is_between(rows.first, rows.last).all():
        raise RuntimeError(f"reading table {table!r} by rowid range returned rows outside the range")


def _convert(raw: pl.DataFrame, column: ColumnPlan) -> ConvertedColumn:
    convert = convert_distinct if _repeats_often(column) else convert_column
    converted = convert(raw[column.name], column)
    if len(converted.values) != raw.height or len(converted.outcome) != raw.height:
        raise ValueError(f"convert_column returned the wrong number of rows for column {column.name!r}")
    return converted


def _repeats_often(column: ColumnPlan) -> bool:
    """Whether the profile saw each value at least twice on average: then converting distinct values pays."""
    return column.profile.distinct_values * DISTINCT_SHARE_DENOMINATOR <= column.profile.rows


def _value_column(position: int) -> str:
    """Positional names inside frames, so no source column name can collide with the rowid column."""
    return f"v{position}"


def _raw_column(position: int) -> str:
    return f"raw{position}"


def _cleaned_frame(rowids: pl.Series, conversions: Sequence[ConvertedColumn]) -> pl.DataFrame:
    values = [converted.values.alias(_value_column(i)) for i, converted in enumerate(conversions)]
    return pl.DataFrame([rowids.alias(ROWID), *values])


class _StoredCache:
    """The stored-cache writer, fed through one background thread so its writing overlaps the cleaning.

    Tasks run in the order they are submitted; `finish` waits for them all, `discard` for the one
    running, and removes whatever was written. The cache only saves a later pass over the cleaned
    file, so failing to write it is logged and leaves no cache rather than failing the cleaning.
    """

    def __init__(self, directory: Path) -> None:
        self._writer = RawCacheWriter(directory)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stored-cache")
        self._submitted: list[Future[None]] = []

    def add(self, table: TablePlan, cleaned: pl.DataFrame) -> None:
        self._submit(self._add, table, cleaned)

    def drop_rows(self, table: str, rowids: pl.Series) -> None:
        self._submit(self._writer.drop_rows, table, rowids)

    def _submit(self, task: Callable[..., None], *args: object) -> None:
        """Queue a task once the one before it is done, so cleaned frames never pile up behind the writer."""
        wait(self._submitted[-1:])
        self._submitted.append(self._worker.submit(task, *args))

    def finish(self, output_sha256: str, output_size: int) -> RawCache | None:
        try:
            for task in self._submitted:
                task.result()
            self._worker.shutdown()
            return self._writer.commit(output_sha256, output_size)
        except Exception:
            logger.warning("could not write the stored cache in %s; the cleaned file is read instead",
                           self._writer.directory, exc_info=True)
            self.discard()
            return None

    def discard(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._writer.discard()

    def _add(self, table: TablePlan, cleaned: pl.DataFrame) -> None:
        self._writer.add(table.name, _stored_frame(table, cleaned))


class _StoredChunks:
    """Cleaned chunks of one table on their way to the stored cache.

    The last chunk waits until the table's duplicates are resolved, so removed rows are usually
    dropped in memory; rows removed from earlier chunks are dropped from their written parts.
    """

    def __init__(self, stored: _StoredCache | None, table: TablePlan) -> None:
        self._writer = stored
        self._table = table
        self._pending: pl.DataFrame | None = None

    def add(self, cleaned: pl.DataFrame) -> None:
        if self._writer is None:
            return
        self._flush()
        self._pending = cleaned

    def finish(self, removed_rowids: Sequence[int]) -> None:
        if self._writer is None:
            return
        removed = pl.Series(ROWID, removed_rowids, dtype=pl.Int64)
        pending, first = self._pending, None
        if pending is not None and pending.height:
            first = pending[ROWID].min()
            self._pending = pending.filter(~pl.col(ROWID).is_in(removed.implode()))
        self._flush()
        earlier = removed if first is None else removed.filter(removed < first)
        self._writer.drop_rows(self._table.name, earlier)

    def _flush(self) -> None:
        if self._writer is not None and self._pending is not None:
            self._writer.add(self._table, self._pending)
            self._pending = None


def _stored_frame(table: TablePlan, cleaned: pl.DataFrame) -> pl.DataFrame:
    """The chunk's rows in the raw layout, as the cleaned file stores them (declared-type affinity applied)."""
    stored = [
        as_stored(cleaned[_value_column(position)].alias(column.name), column.sqlite_type)
        for position, column in enumerate(table.columns)
    ]
    return pl.DataFrame([cleaned[ROWID].alias(ROWID), *stored])


def _key_positions(table: TablePlan) -> list[int]:
    names = [column.name for column in table.columns]
    return [names.index(name) for name in table.key_columns]


def _key_of(table: TablePlan, cleaned: pl.DataFrame) -> _Key:
    positions = _key_positions(table)
    if not positions:
        return _Key(None, pl.repeat(None, cleaned.height, dtype=pl.Null, eager=True))
    if len(positions) == 1:
        return _Key(table.key_columns[0], cleaned[_value_column(positions[0])])
    fields = [
        _jsonable(_value_column(position), cleaned.schema[_value_column(position)]).alias(name)
        for position, name in zip(positions, table.key_columns)
    ]
    return _Key(_key_label(table), cleaned.select(pl.struct(fields).struct.json_encode())[:, 0])


def _jsonable(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as JSON can hold it: bytes become {"hex": ...}, and NULL stays null."""
    if dtype == pl.Binary:
        return pl.when(pl.col(name).is_not_null()).then(pl.struct(pl.col(name).bin.encode("hex").alias("hex")))
    return pl.col(name)


def _create_table(dst: sqlite3.Connection, table: TablePlan) -> None:
    columns = ", ".join(f"{quote_ident(column.name)} {column.sqlite_type}" for column in table.columns)
    dst.execute(f"CREATE TABLE {quote_ident(table.name)} ({columns})")


def _quarantine_failed_cells(
    dst: sqlite3.Connection, table: TablePlan, raw: pl.DataFrame, conversions: Sequence[ConvertedColumn], key: _Key
) -> int:
    total = 0
    for column, converted in zip(table.columns, conversions):
        failed = converted.outcome == "failed"
        count = int(failed.sum())
        if not count:
            continue
        original = raw[column.name].struct
        entries = pl.DataFrame(
            {
                "table_name": pl.repeat(table.name, raw.height, dtype=pl.String, eager=True),
                "row_id": raw[ROWID],
                "key_column": pl.repeat(key.label, raw.height, dtype=pl.String, eager=True),
                "key_value": key.values,
                "column_name": pl.repeat(column.name, raw.height, dtype=pl.String, eager=True),
                "i": original.field("i"),
                "r": original.field("r"),
                "s": original.field("s"),
                "b": original.field("b"),
                "storage": original.field("storage"),
                "reason": converted.reason.fill_null("unconvertible"),
            }
        ).filter(failed)
        dst.executemany(_INSERT_FAILED_CELL, entries.iter_rows())
        total += count
    return total


def _fingerprints(cleaned: pl.DataFrame, key_positions: Sequence[int]) -> pl.DataFrame:
    """Per row: a hash of all cleaned values and of the key (null when a key value is NULL).

    Hashes only nominate candidates; equality is then decided by SQLite on the written rows.
    """
    values = [name for name in cleaned.columns if name != ROWID]
    keys = [_value_column(position) for position in key_positions]
    key_hash = (
        pl.when(pl.all_horizontal(pl.col(keys).is_not_null())).then(pl.struct(keys).hash(seed=0))
        if keys
        else pl.lit(None, dtype=pl.UInt64)
    )
    row_hash = cleaned.select(values).hash_rows(seed=0).alias("row_hash")
    return cleaned.select(ROWID, key_hash=key_hash).with_columns(row_hash).select(ROWID, "row_hash", "key_hash")


def _resolve_duplicates(
    dst: sqlite3.Connection, table: TablePlan, fingerprints: pl.DataFrame, policy: str
) -> list[int]:
    """Find repeated rows, then repeated keys among the rest; under keep_first move them to the quarantine.

    Returns the rowids removed from the table.
    """
    names = [column.name for column in table.columns]
    candidates = fingerprints.filter(pl.col("row_hash").is_duplicated())[ROWID]
    repeated_rows = _repeats_among(dst, table.name, candidates, names)
    remaining = fingerprints.filter(pl.col("key_hash").is_not_null() & ~pl.col(ROWID).is_in(repeated_rows))
    candidates = remaining.filter(pl.col("key_hash").is_duplicated())[ROWID]
    repeated_keys = _repeats_among(dst, table.name, candidates, list(table.key_columns)) if table.key_columns else []
    fate = "removed" if policy == "keep_first" else "kept"
    removed: list[int] = []
    for reason, rowids in ((REASON_DUPLICATE_ROW, repeated_rows), (REASON_DUPLICATE_KEY, repeated_keys)):
        if not rowids:
            continue
        examples = [{"rowid": rowid} for rowid in rowids[:EXAMPLES_PER_OPERATION]]
        dst.execute(_INSERT_AUDIT, (table.name, None, fate, reason, len(rowids), json.dumps(examples)))
        if policy == "keep_first":
            _move_rows_to_quarantine(dst, table, rowids, reason)
            removed.extend(rowids)
    return removed


def _load_candidates(dst: sqlite3.Connection, rowids: Sequence[int]) -> None:
    dst.execute("DELETE FROM temp._candidates")
    dst.executemany("INSERT INTO temp._candidates (id) VALUES (?)", ((rowid,) for rowid in rowids))


def _repeats_among(dst: sqlite3.Connection, table: str, candidates: pl.Series, columns: Sequence[str]) -> list[int]:
    """Rowids among `candidates` whose `columns` equal those of an earlier row (NULL equals NULL)."""
    if candidates.is_empty():
        return []
    _load_candidates(dst, candidates.to_list())
    alias = _rowid_alias_of(dst, table)
    partition = ", ".join(quote_ident(name) for name in columns)
    query = (
        f"SELECT id FROM (SELECT {alias} AS id, row_number() OVER (PARTITION BY {partition} ORDER BY {alias}) AS n"
        f" FROM {quote_ident(table)} WHERE {alias} IN (SELECT id FROM temp._candidates)) WHERE n > 1 ORDER BY id"
    )
    return [rowid for (rowid,) in dst.execute(query)]


def _rowid_alias_of(dst: sqlite3.Connection, table: str) -> str:
    return _rowid_alias([name for (name,) in dst.execute("SELECT name FROM pragma_table_info(?)", (table,))])


def _move_rows_to_quarantine(dst: sqlite3.Connection, table: TablePlan, rowids: Sequence[int], reason: str) -> None:
    """Copy each whole row as JSON (bytes as {"hex": ...}) into the quarantine, then delete it."""
    _load_candidates(dst, rowids)
    alias = _rowid_alias_of(dst, table.name)
    labels = [column.name for column in table.columns]
    pairs = ", ".join(f"?, {_json_value_sql(column.name)}" for column in table.columns)
    key_sql, key_labels = _key_sql(table)
    quoted = quote_ident(table.name)
    dst.execute(
        "INSERT INTO _quarantine (table_name, row_id, key_column, key_value, column_name, value, storage_class, reason)"
        f" SELECT ?, {alias}, ?, {key_sql}, NULL, json_object({pairs}), ?, ? FROM {quoted}"
        f" WHERE {alias} IN (SELECT id FROM temp._candidates) ORDER BY {alias}",
        (table.name, _key_label(table), *key_labels, *labels, WHOLE_ROW_STORAGE, reason),
    )
    dst.execute(f"DELETE FROM {quoted} WHERE {alias} IN (SELECT id FROM temp._candidates)")


def _json_value_sql(column: str) -> str:
    quoted = quote_ident(column)
    return f"CASE WHEN typeof({quoted}) = 'blob' THEN json_object('hex', lower(hex({quoted}))) ELSE {quoted} END"


def _key_label(table: TablePlan) -> str | None:
    if not table.key_columns:
        return None
    if len(table.key_columns) == 1:
        return table.key_columns[0]
    return json.dumps(list(table.key_columns), ensure_ascii=False)


def _key_sql(table: TablePlan) -> tuple[str, tuple[str, ...]]:
    """The key value of a written row: the column itself, or a JSON object for a composite key."""
    if not table.key_columns:
        return "NULL", ()
    if len(table.key_columns) == 1:
        return quote_ident(table.key_columns[0]), ()
    pairs = ", ".join(f"?, {_json_value_sql(name)}" for name in table.key_columns)
    return f"json_object({pairs})", tuple(table.key_columns)


def _display_raw(cell: dict[str, Any]) -> Any:
    if cell["storage"] == "text" and cell["s"] is not None:
        return cell["s"]
    for field in ("i", "r", "s"):
        if cell[field] is not None:
            return cell[field]
    return None if cell["b"] is None else f"x'{cell['b'].hex()}'"


def _display_value(value: Any) -> Any:
    return f"x'{value.hex()}'" if isinstance(value, bytes | bytearray) else value


def _insert_statement(table: TablePlan, rowid_sql: str) -> str:
    names = [rowid_sql, *(quote_ident(column.name) for column in table.columns)]
    return f"INSERT INTO {quote_ident(table.name)} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


class _RowWriter:
    """Inserts cleaned rows under their source rowid, calling the hooks after every `check_every_rows` rows.

    Columns whose cleaned values equal the source's (same storage class, same value, in every row
    of the chunk) are copied by SQLite from the attached snapshot instead of being bound from
    Python; only the other columns travel through a temporary table joined on rowid. Affinity is
    applied on insert either way, so the stored values are the same as binding every column.
    """

    def __init__(self, dst: sqlite3.Connection, table: TablePlan, rowid_sql: str, *, copy_from_source: bool) -> None:
        self._dst = dst
        self._table = table
        self._rowid_sql = rowid_sql
        self._copy_from_source = copy_from_source
        self._bind_all = _insert_statement(table, rowid_sql)

    def insert(self, raw: pl.DataFrame, cleaned: pl.DataFrame, hooks: _Hooks, done: int, total: int) -> int:
        unchanged = _unchanged_columns(raw, self._table, cleaned) if self._copy_from_source else []
        if not any(unchanged):
            return self._bind(self._bind_all, cleaned, hooks, done, total)
        bound = [_value_column(i) for i, same in enumerate(unchanged) if not same]
        # Untyped columns: no affinity here, so each value reaches the table's own affinity as bound.
        columns = ", ".join(["id INTEGER PRIMARY KEY", *bound])
        self._dst.execute(f"CREATE TEMP TABLE {_CONVERTED_TABLE} ({columns})")
        try:
            fill = f"INSERT INTO temp.{_CONVERTED_TABLE} VALUES ({', '.join('?' * (len(bound) + 1))})"
            copy = self._copy_statement(unchanged)
            for offset in range(0, cleaned.height, hooks.every_rows):
                chunk = cleaned.slice(offset, hooks.every_rows).select(ROWID, *bound)
                self._dst.execute(f"DELETE FROM temp.{_CONVERTED_TABLE}")
                self._dst.executemany(fill, chunk.iter_rows())
                copied = self._dst.execute(copy).rowcount
                if copied != chunk.height:
                    raise RuntimeError(f"table {self._table.name!r}: {copied} source rows for {chunk.height} cleaned"
                                       " rows; the source changed while it was cleaned")
                done += chunk.height
                hooks.after_chunk(self._table.name, done, total)
        finally:
            self._dst.execute(f"DROP TABLE temp.{_CONVERTED_TABLE}")
        return done

    def _bind(self, statement: str, rows: pl.DataFrame, hooks: _Hooks, done: int, total: int) -> int:
        for offset in range(0, rows.height, hooks.every_rows):
            chunk = rows.slice(offset, hooks.every_rows)
            self._dst.executemany(statement, chunk.iter_rows())
            done += chunk.height
            hooks.after_chunk(self._table.name, done, total)
        return done

    def _copy_statement(self, unchanged: Sequence[bool]) -> str:
        names = [quote_ident(column.name) for column in self._table.columns]
        values = [
            f"s.{name}" if same else f"c.{_value_column(position)}"
            for position, (name, same) in enumerate(zip(names, unchanged))
        ]
        return (
            f"INSERT INTO main.{quote_ident(self._table.name)} ({self._rowid_sql}, {', '.join(names)})"
            f" SELECT c.id, {', '.join(values)} FROM temp.{_CONVERTED_TABLE} AS c"
            f" JOIN {SNAPSHOT_SCHEMA}.{quote_ident(self._table.name)} AS s ON s.{self._rowid_sql} = c.id ORDER BY c.id"
        )


_VALUE_FIELD_OF = {pl.Int64: ("integer", "i"), pl.Float64: ("real", "r"), pl.String: ("text", "s"),
                   pl.Binary: ("blob", "b")}


def _unchanged_columns(raw: pl.DataFrame, table: TablePlan, cleaned: pl.DataFrame) -> list[bool]:
    """Per column: whether every cleaned value is the source value itself, storage class included."""
    tests = []
    for position in range(len(table.columns)):
        value = pl.col(_value_column(position))
        storage_class, field = _VALUE_FIELD_OF.get(cleaned.schema[_value_column(position)], (None, None))
        original = pl.col(_raw_column(position)).struct
        both_null = (original.field("storage") == "null") & value.is_null()
        if storage_class is None:
            same = both_null
        else:
            same = (original.field("storage") == storage_class) & (original.field(field) == value)
            if field == "r":
                # -0.0 equals 0.0 but is another value; the sign must match too.
                same = same & ((1.0 / original.field("r") < 0) == (1.0 / value < 0))
            same = both_null | same.fill_null(False)
        tests.append(same.all().alias(str(position)))
    originals = raw.select(pl.col(column.name).alias(_raw_column(i)) for i, column in enumerate(table.columns))
    frame = pl.concat([originals, cleaned.select(pl.exclude(ROWID))], how="horizontal")
    return list(frame.select(tests).row(0)) if tests else []


def _reconcile_with_file(
    src: sqlite3.Connection, path: Path, plan: Plan, cached_counts: dict[str, dict[str, int]]
) -> tuple[ColumnReconciliation, ...]:
    """Per column: non-null source cells against cleaned, quarantined, nulled and removed cells.

    Cleaned, quarantined and removed-duplicate cells are counted in the written file; source
    cells in the source, or in the raw cache of that very source (same sha256) when the table was
    read from it; the nulled count is the audit's record of the declared null rules.
    """
    with closing(sqlite3.connect(readonly_uri(path), uri=True)) as written:
        results = []
        for table in plan.tables:
            names = [column.name for column in table.columns]
            source_counts = cached_counts.get(table.name) or _non_null_counts(src, table.name, names)
            cleaned_counts = _non_null_counts(written, table.name, names)
            quarantined = _grouped_counts(
                written,
                "SELECT column_name, count(*) FROM _quarantine"
                " WHERE table_name = ? AND column_name IS NOT NULL GROUP BY column_name",
                table.name,
            )
            nulled = _grouped_counts(
                written,
                "SELECT column_name, sum(count) FROM _audit"
                " WHERE table_name = ? AND outcome = 'nulled' GROUP BY column_name",
                table.name,
            )
            in_removed = _grouped_counts(
                written,
                "SELECT cell.key, count(*) FROM _quarantine, json_each(_quarantine.value) AS cell"
                " WHERE table_name = ? AND column_name IS NULL AND cell.type != 'null' GROUP BY cell.key",
                table.name,
            )
            results.extend(
                ColumnReconciliation(
                    table=table.name,
                    column=name,
                    source_non_null=source_counts[name],
                    cleaned_non_null=cleaned_counts[name],
                    quarantined=quarantined.get(name, 0),
                    nulled_by_rule=nulled.get(name, 0),
                    in_removed_duplicates=in_removed.get(name, 0),
                )
                for name in names
            )
    return tuple(results)


def _non_null_counts(conn: sqlite3.Connection, table: str, columns: Sequence[str]) -> dict[str, int]:
    counts = ", ".join(f"count({quote_ident(name)})" for name in columns)
    row = conn.execute(f"SELECT {counts} FROM {quote_ident(table)}").fetchone()
    return dict(zip(columns, row))


def _grouped_counts(conn: sqlite3.Connection, query: str, table: str) -> dict[str, int]:
    return {name: int(count) for name, count in conn.execute(query, (table,)).fetchall()}


def _log_result(result: CleanResult) -> None:
    unbalanced = [f"{c.table}.{c.column}" for c in result.reconciliation if not c.balanced]
    if unbalanced:
        logger.error("reconciliation does not balance for %s", ", ".join(unbalanced[:10]))
    if not result.source_unchanged:
        logger.error("the source changed while it was cleaned (sha256 %s -> %s)",
                     result.source_sha256_before, result.source_sha256_after)
    logger.info(
        "wrote %s in %.2f s: %d cells converted, %d nulled by rule, %d quarantined",
        result.output, result.seconds, result.converted_cells, result.nulled_cells, result.quarantined_cells,
    )
