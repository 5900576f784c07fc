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
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import psutil

from servicedesk_etl.errors import GateFailed, InputError
from servicedesk_etl.profiling.convert import ConvertedColumn, convert_column
from servicedesk_etl.profiling.plan import ColumnPlan, Plan, TablePlan
from servicedesk_etl.profiling.values import read_table
from servicedesk_etl.sqlite_source import file_sha256, list_tables, open_readonly, quote_ident, table_columns

logger = logging.getLogger(__name__)

AUDIT_TABLE = "_audit"
QUARANTINE_TABLE = "_quarantine"
DUPLICATE_POLICIES = ("keep_first", "keep_all")
TEMP_SUFFIX = ".cleaning-tmp"
SQLITE_SIDECARS = ("", "-journal", "-wal", "-shm")
ROWID_ALIASES = ("rowid", "_rowid_", "oid")
EXAMPLES_PER_OPERATION = 3

REASON_DUPLICATE_ROW = "duplicate_row"
REASON_DUPLICATE_KEY = "duplicate_key"
WHOLE_ROW_STORAGE = "json"

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
_INSERT_AUDIT = (
    "INSERT INTO _audit (table_name, column_name, outcome, operation, count, examples) VALUES (?, ?, ?, ?, ?, ?)"
)
# coalesce(i, r, s, b): exactly one is non-null per value, so the original keeps its storage class.
_INSERT_FAILED_CELL = (
    "INSERT INTO _quarantine (table_name, row_id, key_column, key_value, column_name, value, storage_class, reason)"
    " VALUES (?, ?, ?, ?, ?, coalesce(?, ?, ?, ?), ?, ?)"
)
_INSERT_REMOVED_ROW = (
    "INSERT INTO _quarantine (table_name, row_id, key_column, key_value, column_name, value, storage_class, reason)"
    " VALUES (?, ?, ?, ?, NULL, ?, ?, ?)"
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
) -> CleanResult:
    """Write the cleaned copy of `source` to the new file `output`, executing `plan` exactly.

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
        logger.warning("the plan was profiled on %s (sha256 %s), not on this file", plan.source_path, plan.source_sha256)
    hooks = _Hooks(progress, health_check, settings.check_every_rows)
    temp = temp_path_for(output)
    try:
        with closing(open_readonly(source)) as src:
            _refuse_plan_not_matching(src, plan)
            outcomes = _write_cleaned_file(src, plan, temp, settings, hooks)
            reconciliation = _reconcile_with_file(src, temp, plan)
        _fsync_file(temp)
        os.replace(temp, output)
        _fsync_directory(output.parent)
    except BaseException:
        _remove_sqlite_file(temp)
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
    )
    _log_result(result)
    return result


def refuse_unusable_output(source: Path, output: Path, *, force: bool) -> None:
    """Raise InputError with a one-line reason when `output` must not be written."""
    if output.resolve() == source.resolve() or (output.exists() and source.exists() and os.path.samefile(output, source)):
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
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _write_cleaned_file(
    src: sqlite3.Connection, plan: Plan, temp: Path, settings: CleanSettings, hooks: _Hooks
) -> dict[str, _TableOutcome]:
    outcomes: dict[str, _TableOutcome] = {}
    with closing(sqlite3.connect(temp, isolation_level=None)) as dst:
        # Durability comes from the fsync before the rename; the transaction gives all-or-nothing.
        dst.execute("PRAGMA synchronous = OFF")
        dst.execute("PRAGMA cache_size = -65536")
        with _exclusive_transaction(dst):
            dst.execute(_AUDIT_DDL)
            dst.execute(_QUARANTINE_DDL)
            for table in plan.tables:
                outcomes[table.name] = _clean_table(src, dst, table, settings, hooks)
        _require_integrity(dst, temp)
    return outcomes


def _require_integrity(dst: sqlite3.Connection, path: Path) -> None:
    verdict = [row[0] for row in dst.execute("PRAGMA integrity_check").fetchall()]
    if verdict != ["ok"]:
        raise GateFailed("cleaned_db", f"integrity_check of {path} failed: {'; '.join(verdict[:3])}")


def _clean_table(
    src: sqlite3.Connection, dst: sqlite3.Connection, table: TablePlan, settings: CleanSettings, hooks: _Hooks
) -> _TableOutcome:
    raw = read_table(src, table.name, [column.name for column in table.columns]).sort("_rowid")
    conversions = [_convert(raw, column) for column in table.columns]
    cleaned = _cleaned_frame(raw["_rowid"], conversions)
    key = _key_of(table, cleaned)
    duplicate_row, duplicate_key = _find_duplicates(cleaned, _key_positions(table))
    removed = (
        duplicate_row | duplicate_key
        if settings.duplicate_policy == "keep_first"
        else pl.Series(values=[False] * cleaned.height, dtype=pl.Boolean)
    )

    _create_table(dst, table)
    quarantined = _quarantine_failed_cells(dst, table, raw, conversions, key)
    _quarantine_removed_rows(dst, table, cleaned, key, duplicate_row & removed, REASON_DUPLICATE_ROW)
    _quarantine_removed_rows(dst, table, cleaned, key, duplicate_key & removed, REASON_DUPLICATE_KEY)
    _audit_conversions(dst, table, raw, conversions)
    _audit_duplicates(dst, table, cleaned["_rowid"], duplicate_row, duplicate_key, settings.duplicate_policy)
    rows_out = _insert_rows(dst, table, cleaned.filter(~removed), hooks)

    outcome = _TableOutcome(
        rows_in=raw.height,
        rows_out=rows_out,
        duplicates_removed=int(removed.sum()),
        quarantined_cells=quarantined,
        nulled_cells=sum(int((c.outcome == "nulled").sum()) for c in conversions),
        converted_cells=sum(int((c.outcome == "converted").sum()) for c in conversions),
    )
    logger.info(
        "cleaned table %s: %d rows in, %d out, %d duplicates removed, %d cells quarantined",
        table.name, outcome.rows_in, outcome.rows_out, outcome.duplicates_removed, outcome.quarantined_cells,
    )
    return outcome


def _convert(raw: pl.DataFrame, column: ColumnPlan) -> ConvertedColumn:
    converted = convert_column(raw[column.name], column)
    if len(converted.values) != raw.height or len(converted.outcome) != raw.height:
        raise ValueError(f"convert_column returned the wrong number of rows for column {column.name!r}")
    return converted


def _value_column(position: int) -> str:
    """Positional names inside frames, so no source column name can collide with `_rowid`."""
    return f"v{position}"


def _cleaned_frame(rowids: pl.Series, conversions: Sequence[ConvertedColumn]) -> pl.DataFrame:
    values = [converted.values.alias(_value_column(i)) for i, converted in enumerate(conversions)]
    return pl.DataFrame([rowids.alias("_rowid"), *values])


def _key_positions(table: TablePlan) -> list[int]:
    names = [column.name for column in table.columns]
    return [names.index(name) for name in table.key_columns]


def _find_duplicates(cleaned: pl.DataFrame, key_positions: Sequence[int]) -> tuple[pl.Series, pl.Series]:
    """Rows equal to an earlier row in every column, and further rows repeating an earlier key.

    `cleaned` is in rowid order, so the first occurrence kept is the first by rowid. A row with a
    NULL in a key column repeats no key.
    """
    values = [name for name in cleaned.columns if name != "_rowid"]
    flags = cleaned.select(duplicate_row=~pl.struct(values).is_first_distinct())
    if key_positions:
        keys = [_value_column(position) for position in key_positions]
        candidate = ~flags["duplicate_row"] & cleaned.select(pl.all_horizontal(pl.col(keys).is_not_null()))[:, 0]
        repeated = cleaned.with_columns(candidate=candidate).select(
            pl.col("candidate") & ~pl.when(pl.col("candidate")).then(pl.struct(keys)).is_first_distinct()
        )[:, 0]
    else:
        repeated = pl.Series(values=[False] * cleaned.height, dtype=pl.Boolean)
    return flags["duplicate_row"], repeated.alias("duplicate_key")


def _key_of(table: TablePlan, cleaned: pl.DataFrame) -> _Key:
    positions = _key_positions(table)
    if not positions:
        return _Key(None, pl.Series("key", [None] * cleaned.height, dtype=pl.Null))
    if len(positions) == 1:
        return _Key(table.key_columns[0], cleaned[_value_column(positions[0])])
    fields = [_jsonable(_value_column(p), cleaned.schema[_value_column(p)]).alias(n) for p, n in zip(positions, table.key_columns)]
    return _Key(json.dumps(list(table.key_columns), ensure_ascii=False), cleaned.select(pl.struct(fields).struct.json_encode())[:, 0])


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
                "row_id": raw["_rowid"],
                "key_value": key.values,
                "i": original.field("i"),
                "r": original.field("r"),
                "s": original.field("s"),
                "b": original.field("b"),
                "storage": original.field("storage"),
                "reason": converted.reason.fill_null("unconvertible"),
            }
        ).filter(failed)
        dst.executemany(
            _INSERT_FAILED_CELL,
            ((table.name, row_id, key.label, key_value, column.name, i, r, s, b, storage, reason)
             for row_id, key_value, i, r, s, b, storage, reason in entries.iter_rows()),
        )
        total += count
    return total


def _quarantine_removed_rows(
    dst: sqlite3.Connection, table: TablePlan, cleaned: pl.DataFrame, key: _Key, mask: pl.Series, reason: str
) -> None:
    if not mask.any():
        return
    fields = [
        _jsonable(_value_column(i), cleaned.schema[_value_column(i)]).alias(column.name)
        for i, column in enumerate(table.columns)
    ]
    entries = cleaned.with_columns(key_value=key.values).filter(mask).select(
        "_rowid", "key_value", row=pl.struct(fields).struct.json_encode()
    )
    dst.executemany(
        _INSERT_REMOVED_ROW,
        ((table.name, row_id, key.label, key_value, row, WHOLE_ROW_STORAGE, reason)
         for row_id, key_value, row in entries.iter_rows()),
    )


def _audit_conversions(
    dst: sqlite3.Connection, table: TablePlan, raw: pl.DataFrame, conversions: Sequence[ConvertedColumn]
) -> None:
    for column, converted in zip(table.columns, conversions):
        operations = (
            pl.DataFrame({"outcome": converted.outcome, "operation": converted.operation})
            .with_row_index("index")
            .filter(pl.col("outcome") != "null")
            .with_columns(pl.col("operation").fill_null(pl.col("outcome")))
            .group_by("outcome", "operation", maintain_order=True)
            .agg(count=pl.len(), examples=pl.col("index").head(EXAMPLES_PER_OPERATION))
            .sort("outcome", "operation")
        )
        for outcome, operation, count, indices in operations.iter_rows():
            examples = [
                {
                    "rowid": raw["_rowid"][index],
                    "before": _display_raw(raw[column.name][index]),
                    "after": _display_value(converted.values[index]),
                }
                for index in indices
            ]
            dst.execute(
                _INSERT_AUDIT,
                (table.name, column.name, outcome, operation, count, json.dumps(examples, ensure_ascii=False)),
            )


def _display_raw(cell: dict[str, Any]) -> Any:
    if cell["storage"] == "text" and cell["s"] is not None:
        return cell["s"]
    for field in ("i", "r", "s"):
        if cell[field] is not None:
            return cell[field]
    return None if cell["b"] is None else f"x'{cell['b'].hex()}'"


def _display_value(value: Any) -> Any:
    return f"x'{value.hex()}'" if isinstance(value, bytes | bytearray) else value


def _audit_duplicates(
    dst: sqlite3.Connection,
    table: TablePlan,
    rowids: pl.Series,
    duplicate_row: pl.Series,
    duplicate_key: pl.Series,
    policy: str,
) -> None:
    fate = "removed" if policy == "keep_first" else "kept"
    for reason, mask in ((REASON_DUPLICATE_ROW, duplicate_row), (REASON_DUPLICATE_KEY, duplicate_key)):
        count = int(mask.sum())
        if not count:
            continue
        examples = [{"rowid": rowid} for rowid in rowids.filter(mask).head(EXAMPLES_PER_OPERATION).to_list()]
        dst.execute(_INSERT_AUDIT, (table.name, None, fate, reason, count, json.dumps(examples)))


def _rowid_alias(table: TablePlan) -> str | None:
    taken = {column.name.lower() for column in table.columns}
    return next((alias for alias in ROWID_ALIASES if alias not in taken), None)


def _insert_rows(dst: sqlite3.Connection, table: TablePlan, rows: pl.DataFrame, hooks: _Hooks) -> int:
    """Insert the kept rows under their source rowid, calling the hooks after every chunk."""
    alias = _rowid_alias(table)
    names = [quote_ident(column.name) for column in table.columns]
    if alias is None:
        logger.warning("table %s names columns rowid, _rowid_ and oid; source rowids are not kept", table.name)
        rows = rows.drop("_rowid")
    else:
        names.insert(0, alias)
    statement = (
        f"INSERT INTO {quote_ident(table.name)} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    )
    total = rows.height
    if total == 0:
        hooks.after_chunk(table.name, 0, 0)
    for offset in range(0, total, hooks.every_rows):
        chunk = rows.slice(offset, hooks.every_rows)
        dst.executemany(statement, chunk.iter_rows())
        hooks.after_chunk(table.name, offset + chunk.height, total)
    return total


def _reconcile_with_file(src: sqlite3.Connection, path: Path, plan: Plan) -> tuple[ColumnReconciliation, ...]:
    """Per column: non-null source cells against cleaned, quarantined, nulled and removed cells.

    Cleaned, quarantined and removed-duplicate cells are counted in the written file; source
    cells in the source; the nulled count is the audit's record of the declared null rules.
    """
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as written:
        results = []
        for table in plan.tables:
            names = [column.name for column in table.columns]
            source_counts = _non_null_counts(src, table.name, names)
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
