"""Gate 1 inference: the plan for every table and column, decided from the values.

Each table is pulled into Python once (`values.read_rows`), every column is reduced to its distinct
raw values with counts, and candidate plans are measured by running the conversion the cleaner
executes (`convert.convert_fields`, behind `convert_column`) on those distinct values; what every
column needs (screens, text conversion, evidence) is measured over all columns of a table at once.
A typed candidate wins when it converts
at least `min_typed_confidence` of the non-null values, or more than `min_declared_confidence` (a majority)
when it is the type the column was declared with: the declared schema is the author's intent, and
the values it cannot hold are defects for the cleaner's quarantine and the gates. Otherwise the
column stays text and the reason says what was tried.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path

import polars as pl

from servicedesk_etl.profiling.convert import (
    BYTES_FORMAT_IDS,
    TARGET_FAMILY,
    TEXT_FORMAT_IDS,
    ConvertedColumn,
    convert_fields,
)
from servicedesk_etl.profiling.dates import (
    DATE_FORMATS,
    DAY_FIRST_COUNTERPART,
    MONTH_FIRST_COUNTERPART,
    NUMERIC_DATE_RANGES,
    ORDER_AMBIGUOUS_SHAPE,
    date_shape,
)
from servicedesk_etl.profiling.identifiers import NameMapping, pg_names
from servicedesk_etl.profiling.numbers import BOOLEAN_FORMATS, NUMBER_FORMATS, read_boolean, read_number
from servicedesk_etl.profiling.plan import ColumnPlan, ColumnProfile, Conversion, FormatEvidence, Plan, TablePlan
from servicedesk_etl.profiling.values import ROWID, STORAGE_CLASSES, RowSample, read_rows, rowid_span
from servicedesk_etl.sqlite_source import (
    SourceColumn,
    file_sha256,
    list_tables,
    open_readonly,
    quote_ident,
    row_count,
    table_columns,
)

log = logging.getLogger(__name__)

# `id`, `*_id`, `* ID`, `*Id`, `*ID`: case matters for the camel-case suffixes (`paid` is no id).
ID_NAME = re.compile(r"(?:^[iI][dD]$|_[iI][dD]$|[ \-][iI][dD]$|Id$|ID$)")
DATE_NAME = re.compile(r"(date|time|stamp|created|modified|updated|_at$|_on$)", re.IGNORECASE)
DATE_DECLARED = re.compile(r"(date|time)", re.IGNORECASE)
TIMESTAMP_DECLARED = re.compile(r"(datetime|timestamp|time)", re.IGNORECASE)
BOOLEAN_NAME = re.compile(r"(^is_|^has_|flag|bool|_yn$)", re.IGNORECASE)
# Digits that are codes, not quantities: a numeric type would drop their formatting and leading zeros.
CODE_NAME = re.compile(r"(phone|fax|mobile|tel$|zip|postal|postcode|extension)", re.IGNORECASE)
NUMERIC_DECLARED = re.compile(r"(numeric|decimal|money|currency)", re.IGNORECASE)
# A cheap screen: text that could be a number or a date at all (digits and separators only).
NUMBER_OR_DATE_SHAPE = r"^[0-9\s+\-.,%/:TZUCAPMtzapm]{1,40}$"
LEADING_ZERO = r"^[+-]?0\d+([.,]\d+)?$"
DATE_ONLY_FORMATS = frozenset(f.id for f in DATE_FORMATS.values() if not f.has_time)
NUMERIC_DATE_FORMATS = tuple(NUMERIC_DATE_RANGES)
TEXT_NUMBER_FORMATS = frozenset(NUMBER_FORMATS) - {"integer", "real"}
INTEGER_FORMATS = ("integer", "real", "int_text", "decimal_text", "thousands_comma")
SUCCESS = ("kept", "converted")
# Queries over one column's distinct values: the in-memory engine starts in a fraction of the time
# of the default one, which dominates on the small frames most columns have.
ENGINE = "in-memory"
# Distinct values few enough to take every format's shape at once rather than one format at a time.
FEW_VALUES = 2_000
# Cells read at once while profiling a table (about 60 bytes each as raw values): bounds memory.
CELLS_PER_READ = 6_000_000
# Bytes of whole-table frames read and not yet decided, beyond which reading waits for decisions.
FRAMES_AWAITING_DECISION = 128 * 2**20


@dataclass(frozen=True)
class ProfileSettings:
    sample_above_rows: int = 2_000_000
    sample_rows: int = 500_000
    seed: int = 0
    day_first_default: bool = True
    null_markers: tuple[str, ...] = ("", "NULL", "N/A", "NA", "?", "-", "nan", "None")
    min_typed_confidence: float = 0.8
    min_declared_confidence: float = 0.5
    max_counterexamples: int = 5
    normalize_newlines: bool = True
    invalid_utf8: str = "cp1252"


TableFrameHook = Callable[[str, pl.DataFrame], None]
TablePlanHook = Callable[[TablePlan], None]


def profile_database(
    path: Path,
    settings: ProfileSettings = ProfileSettings(),
    progress: Callable[[str, int, int], None] | None = None,
    on_table: TableFrameHook | None = None,
    on_plan: TablePlanHook | None = None,
) -> Plan:
    """The plan for the SQLite file at `path`, opened read-only.

    `progress(table, rows_done, rows_total)` is called as each table is finished. `on_table(table,
    raw)` is called for every table that is not sampled, right after its values are read (so callers
    need not read them again): once with the whole raw frame exactly as `values.read_rows(conn, table)`
    returns it, or, for a table of more than `CELLS_PER_READ` cells, once per group of a few columns,
    each time with every row (`read_rows(conn, table, group)`); each column comes exactly once.
    `on_plan(table_plan)` is called as soon as a table's plan is decided, on the thread that decided
    it, while the profiler goes on with the next table.
    """
    conn = open_readonly(path)
    # The checksum is computed on a thread while the tables are profiled (hashing releases the GIL).
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checksum")
    checksum = pool.submit(file_sha256, path)
    pool.shutdown(wait=False)
    try:
        plan = profile_connection(conn, str(path), "", settings, progress, on_table, on_plan)
    finally:
        conn.close()
    return dataclasses.replace(plan, source_sha256=checksum.result())


def profile_connection(
    conn: sqlite3.Connection,
    source_path: str,
    source_sha256: str,
    settings: ProfileSettings = ProfileSettings(),
    progress: Callable[[str, int, int], None] | None = None,
    on_table: TableFrameHook | None = None,
    on_plan: TablePlanHook | None = None,
) -> Plan:
    """The plan for every user table of an open (read-only) connection (hooks as in `profile_database`).

    A table read whole is decided on a worker thread while this one reads the next tables: reading is
    Python work, deciding mostly polars work that runs without the GIL. The last table read is always
    decided while the next is read; older ones may still wait to be decided as long as the frames not
    decided hold at most `FRAMES_AWAITING_DECISION` bytes, else reading waits for the oldest. Plans
    keep the tables' order.
    """
    tables = list_tables(conn)
    table_names = pg_names(tables, columns=False)
    for mapping in table_names:
        if mapping.renamed:
            log.warning("table %s: %s", mapping.original, mapping.note)
    plans: list[TablePlan] = []
    pending: deque[tuple[Future[TablePlan], int]] = deque()  # decisions in table order, with their frames' sizes

    def decided(plan: TablePlan) -> None:
        plans.append(plan)
        if progress is not None:
            progress(plan.name, plan.row_count, plan.row_count)

    def settle(awaiting_bytes: int | None) -> None:
        """Take the decided plans in order, waiting for the oldest while the frames not decided hold more
        than `awaiting_bytes`, though never for the newest (None: wait for every one)."""
        while pending and (
            pending[0][0].done()
            or awaiting_bytes is None
            or (len(pending) > 1 and sum(size for _, size in pending) > awaiting_bytes)
        ):
            future, _ = pending.popleft()
            decided(future.result())

    def announced(plan: TablePlan) -> TablePlan:
        if on_plan is not None:
            on_plan(plan)
        return plan

    def decide_whole(table: str, pg_name: str, layout: _Layout, whole: pl.DataFrame) -> TablePlan:
        return announced(_decide_whole(table, pg_name, layout, whole, settings))

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decide")
    try:
        for mapping in table_names:
            layout = _layout(conn, mapping.original, settings)
            if not layout.whole:
                settle(None)
                parts = _profile_in_parts(conn, mapping.original, mapping.pg_name, layout, settings, on_table)
                decided(announced(parts))
                continue
            whole = _read_whole(conn, mapping.original, on_table)
            size = whole.estimated_size()
            decision = pool.submit(decide_whole, mapping.original, mapping.pg_name, _counted(layout, whole), whole)
            pending.append((decision, size))
            del whole
            settle(FRAMES_AWAITING_DECISION)
        settle(None)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return Plan(
        source_path=source_path,
        source_sha256=source_sha256,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tables=tuple(plans),
        settings=_json_ready(dataclasses.asdict(settings)),
    )


def _json_ready(settings: dict[str, object]) -> dict[str, object]:
    """Tuples as lists, so the plan equals itself after a JSON round trip."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


@dataclass(frozen=True)
class _Layout:
    """How a table is profiled: `whole` (every row in one read, decided without the connection), or in
    groups of columns, or from a seeded `sample` of rows (more than `sample_above_rows`)."""

    columns: tuple[SourceColumn, ...]
    total: int
    rows: int
    sample: RowSample | None
    whole: bool


def _layout(conn: sqlite3.Connection, table: str, settings: ProfileSettings) -> _Layout:
    """How to profile the table. When its rowids span few enough rows to read it whole, the rows are
    not counted first (a scan of the table): the read counts them."""
    columns = tuple(table_columns(conn, table))

    def read_whole(rows: int) -> bool:
        return rows <= settings.sample_above_rows and rows * len(columns) <= CELLS_PER_READ

    span = rowid_span(conn, table, [column.name for column in columns])
    total = span if span is not None and read_whole(span) else row_count(conn, table)
    if total > settings.sample_above_rows:
        sample = RowSample(settings.sample_rows / total, settings.seed)
        return _Layout(columns, total, min(total, settings.sample_rows), sample, whole=False)
    return _Layout(columns, total, total, None, whole=read_whole(total))


def _read_whole(conn: sqlite3.Connection, table: str, on_table: TableFrameHook | None) -> pl.DataFrame:
    whole = read_rows(conn, table)
    if on_table is not None:
        on_table(table, whole)
    return whole


def _counted(layout: _Layout, whole: pl.DataFrame) -> _Layout:
    """The layout of a table read whole, with the rows the read found."""
    return dataclasses.replace(layout, total=whole.height, rows=whole.height)


def _decide_whole(
    table: str, pg_name: str, layout: _Layout, whole: pl.DataFrame, settings: ProfileSettings
) -> TablePlan:
    """The plan of a table from its raw frame (no connection needed: safe on any thread)."""
    names = dict(zip(layout.columns, pg_names([column.name for column in layout.columns])))
    decided = plan_columns(((c, whole[c.name], names[c].pg_name) for c in layout.columns), settings)
    plans = [_with_name_note(table, names[column], plan) for column, plan in zip(layout.columns, decided)]
    # In memory, one column at a time copies least.
    repeated_rows = partial(_repeated_in_frame, whole, cache(lambda key: whole[key].is_duplicated()))
    return _table_plan(table, pg_name, layout, plans, repeated_rows, columns_per_read=1)


def _profile_in_parts(
    conn: sqlite3.Connection,
    table: str,
    pg_name: str,
    layout: _Layout,
    settings: ProfileSettings,
    on_table: TableFrameHook | None,
) -> TablePlan:
    """The plan of a table read a few columns at a time, or from a sample of its rows."""
    columns, total, sampled = layout.columns, layout.total, layout.sample is not None
    full_counts = _full_table_counts(conn, table, columns, settings.null_markers) if sampled else {}
    if sampled:
        log.info("table %s: %d rows, profiling a seeded sample of about %d", table, total, settings.sample_rows)
    names = dict(zip(columns, pg_names([column.name for column in columns])))
    group_hook = None if sampled or on_table is None else partial(on_table, table)
    raws = _raw_columns(conn, table, columns, layout.sample, layout.rows, group_hook)
    plans = []
    for column, plan in zip(columns, plan_columns(((c, raw, names[c].pg_name) for c, raw in raws), settings)):
        if sampled:
            plan = _with_full_table_counts(plan, total, full_counts[column.name])
            plan = dataclasses.replace(plan, unique=plan.unique and _unique_in_table(conn, table, column.name))
        plans.append(_with_name_note(table, names[column], plan))
    repeated_rows: RepeatedRows | None = None
    if not sampled:
        few = {plan.name for plan in plans if (plan.profile.rows - plan.profile.distinct_values) * 2 <= plan.profile.rows}
        repeated_rows = partial(_repeated_in_table, conn, table, cache(partial(_repeated_rowids, conn, table)), few)
    # From SQLite, as many columns as one read may hold.
    columns_per_read = max(1, CELLS_PER_READ // max(total, 1) - 1)
    return _table_plan(table, pg_name, layout, plans, repeated_rows, columns_per_read)


def _with_name_note(table: str, mapping: NameMapping, plan: ColumnPlan) -> ColumnPlan:
    if not mapping.note:
        return plan
    log.warning("column %s.%s: %s", table, mapping.original, mapping.note)
    return dataclasses.replace(plan, reason=f"{plan.reason}; {mapping.note}")


def _table_plan(
    table: str,
    pg_name: str,
    layout: _Layout,
    plans: Sequence[ColumnPlan],
    repeated_rows: RepeatedRows | None,
    columns_per_read: int,
) -> TablePlan:
    key_columns, key_note = _key_columns(layout.columns, plans, repeated_rows, columns_per_read)
    if key_note:
        plans = [
            dataclasses.replace(plan, reason=f"{plan.reason}; {key_note}") if plan.name in key_columns else plan
            for plan in plans
        ]
    return TablePlan(
        name=table,
        pg_name=pg_name,
        row_count=layout.total,
        columns=tuple(plans),
        key_columns=key_columns,
        sampled=layout.sample is not None,
    )


def _raw_columns(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[SourceColumn],
    sample: RowSample | None,
    rows: int,
    on_group: Callable[[pl.DataFrame], None] | None = None,
) -> Iterator[tuple[SourceColumn, pl.Series]]:
    """Each column's raw values, read a few columns at a time so memory stays flat for wide, long tables
    (`on_group(frame)` gets each group's frame as it is read)."""
    width = max(1, CELLS_PER_READ // max(rows, 1))
    for start in range(0, len(columns), width):
        group = columns[start : start + width]
        frame = read_rows(conn, table, [column.name for column in group], sample)
        if on_group is not None:
            on_group(frame)
        for column in group:
            yield column, frame[column.name]
        del frame


RepeatedRows = Callable[[str, Sequence[str]], pl.DataFrame]


def _repeated_in_frame(
    frame: pl.DataFrame, repeats: Callable[[str], pl.Series], key: str, others: Sequence[str]
) -> pl.DataFrame:
    """Columns `key` and `others` of the rows whose `key` value repeats, from a table in memory
    (`repeats(key)` is the mask of those rows)."""
    return frame.select(key, *others).filter(repeats(key))


def _repeated_rowids(conn: sqlite3.Connection, table: str, key: str) -> pl.Series:
    keys = read_rows(conn, table, [key])
    return keys.filter(keys[key].is_duplicated())[ROWID]


def _repeated_in_table(
    conn: sqlite3.Connection,
    table: str,
    repeated_rowids: Callable[[str], pl.Series],
    few_repeats: Collection[str],
    key: str,
    others: Sequence[str],
) -> pl.DataFrame:
    """Columns `key` and `others` of the rows whose `key` value repeats, read from SQLite (rowid order).

    When the profile saw few repeats of `key`, SQLite looks those rows up by rowid; otherwise a
    plain scan of the columns is cheaper.
    """
    if key not in few_repeats:
        frame = read_rows(conn, table, [key, *others])
        return frame.filter(frame[key].is_duplicated()).drop(ROWID)
    rowids = repeated_rowids(key)
    frame = read_rows(conn, table, [key, *others], _RowidSet(1.0, rowids=json.dumps(rowids.to_list())))
    return frame.filter(pl.col(ROWID).is_in(rowids.implode())).drop(ROWID)


@dataclass(frozen=True)
class _RowidSet(RowSample):
    """The rows whose rowid is in a JSON list, expressed as the row filter `read_rows` applies."""

    rowids: str = "[]"

    def predicate(self, rowid_sql: str) -> tuple[str, tuple[str]]:  # type: ignore[override]
        return f"{rowid_sql} IN (SELECT value FROM json_each(?))", (self.rowids,)


# --- one column --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    target: str
    conversion: Conversion
    convertible: int
    unconvertible: int
    note: str = ""
    result: ConvertedColumn | None = None
    counterexamples: tuple[str, ...] = ()

    @property
    def confidence(self) -> float:
        attempted = self.convertible + self.unconvertible
        return self.convertible / attempted if attempted else 1.0


def plan_column(source: SourceColumn, raw: pl.Series, pg_name: str, settings: ProfileSettings) -> ColumnPlan:
    """The plan for one column from its raw values (every row, or a sample of rows)."""
    return plan_columns([(source, raw, pg_name)], settings)[0]


def plan_columns(
    columns: Iterable[tuple[SourceColumn, pl.Series, str]], settings: ProfileSettings
) -> list[ColumnPlan]:
    """The plans of a table's columns from (source column, raw values, PostgreSQL name).

    Each column is reduced to its distinct values as it comes (its raw values can be dropped then);
    the screens, the text conversions and the evidence every column needs are then measured once
    over the distinct values of all columns, stacked, instead of in many small queries per column.
    """
    sources: list[SourceColumn] = []
    pg_names_: list[str] = []
    distinct: list[pl.DataFrame] = []
    for source, raw, pg_name in columns:
        sources.append(source)
        pg_names_.append(pg_name)
        distinct.append(_distinct(raw))
        del raw
    if not sources:
        return []
    date_named = [_date_named(source) for source in sources]
    flagged, sums = _screened_columns(distinct, date_named, settings)
    offsets = _offsets(distinct)
    plans: list[ColumnPlan] = []
    results: list[ConvertedColumn | None] = []
    for k, source in enumerate(sources):
        flagged_k = flagged.slice(offsets[k], distinct[k].height)
        candidate, reason = _choose(source, distinct[k], flagged_k, sums[k], date_named[k], settings)
        stub = ColumnPlan(source.name, pg_names_[k], source.declared_type, "text", Conversion(), 1.0)
        plans.append(
            dataclasses.replace(stub, target_type=candidate.target, conversion=candidate.conversion, reason=reason)
        )
        results.append(candidate.result)
    converted = _converted(distinct, plans, results)
    profiled = _profiles(distinct, converted, settings)
    finished = []
    for plan, (profile, unique) in zip(plans, profiled):
        attempted = profile.convertible + profile.unconvertible
        confidence = profile.convertible / attempted if attempted else 1.0
        finished.append(dataclasses.replace(plan, confidence=confidence, profile=profile, unique=unique))
    return finished


def _date_named(source: SourceColumn) -> bool:
    named = bool(DATE_NAME.search(source.name) or DATE_DECLARED.search(source.declared_type))
    return named and not _id_like(source.name)


def _offsets(frames: Sequence[pl.DataFrame]) -> list[int]:
    offsets = [0]
    for frame in frames[:-1]:
        offsets.append(offsets[-1] + frame.height)
    return offsets


def _stacked(frames: Sequence[pl.DataFrame], **per_frame: Sequence[object]) -> pl.DataFrame:
    """The frames one under the other, with `col` (the frame's position) and one column per keyword."""
    return pl.concat(
        [
            frame.with_columns(
                pl.lit(k, pl.Int32).alias("col"),
                *[pl.lit(values[k]).alias(name) for name, values in per_frame.items()],
            )
            for k, frame in enumerate(frames)
        ],
        how="vertical",
    )


def _per_column(frame: pl.DataFrame, columns: int, empty: dict[str, object]) -> list[dict[str, object]]:
    """The rows of a per-`col` aggregate as one dict per column (`empty` for a column without values)."""
    rows = {row["col"]: row for row in frame.iter_rows(named=True)}
    return [rows.get(k, empty) for k in range(columns)]


def _converted(
    distinct: Sequence[pl.DataFrame], plans: Sequence[ColumnPlan], results: Sequence[ConvertedColumn | None]
) -> list[ConvertedColumn]:
    """Each column's values converted per its plan: the winning candidate's result where there is
    one, else one conversion run over all columns that share a plan's target and conversion."""
    converted = {k: result for k, result in enumerate(results) if result is not None}
    pending: dict[tuple[str, Conversion], list[int]] = {}
    for k, plan in enumerate(plans):
        if k not in converted:
            pending.setdefault((plan.target_type, plan.conversion), []).append(k)
    for positions in pending.values():
        frames = [distinct[k] for k in positions]
        together = convert_fields(pl.concat(frames, how="vertical"), plans[positions[0]])
        for k, offset in zip(positions, _offsets(frames)):
            height = distinct[k].height
            converted[k] = ConvertedColumn(
                values=together.values.slice(offset, height).alias(plans[k].name),
                outcome=together.outcome.slice(offset, height),
                operation=together.operation.slice(offset, height),
                reason=together.reason.slice(offset, height),
            )
    return [converted[k] for k in range(len(plans))]


def _distinct(raw: pl.Series) -> pl.DataFrame:
    """Each distinct raw value once (fields `storage`, `i`, `r`, `s`, `b`), in order of first appearance,
    with its count `n` and its stripped text `t`.

    Grouping by the value fields a column uses is much cheaper than by the whole Struct; `storage`
    joins the key only where those fields alone cannot tell two storage classes apart.
    """
    fields = raw.struct.unnest()
    key = [name for name in ("i", "r", "s", "b") if fields[name].null_count() < fields.height]
    if key not in (["i"], ["r"], ["s"]):
        key = ["storage", *key]
    return (
        fields.group_by(key, maintain_order=True)
        .agg(pl.all().first(), n=pl.len().cast(pl.Int64))
        .select("storage", "i", "r", "s", "b", "n", t=pl.col("s").str.strip_chars())
    )


def _choose(
    source: SourceColumn,
    values: pl.DataFrame,
    flagged: pl.DataFrame,
    sums: dict[str, object],
    date_named: bool,
    settings: ProfileSettings,
) -> tuple[_Candidate, str]:
    """The target type and conversion, with the reason a person can check.

    `flagged` is `values` with the screens of `_screened_columns`, `sums` their totals.
    """
    total = sums["eligible"] or 0
    declared = source.declared_type or "no declared type"
    if total == 0:
        target = _declared_target(source.declared_type)
        conversion = _conversion(target, _all_formats(target), settings)
        return _Candidate(target, conversion, 0, 0), (
            f"no values besides NULL, empty strings and null markers; type from the declared label ({declared})"
        )
    if sums["blob"] == total:
        conversion = _conversion("bytea", BYTES_FORMAT_IDS, settings)
        return _Candidate("bytea", conversion, total, 0), f"every value is a blob ({declared})"
    declared_target = _declared_target(source.declared_type)
    enough = min(settings.min_typed_confidence, settings.min_declared_confidence) * total
    typed: list[_Candidate] = []
    if sums["worded"] >= enough:
        typed += _boolean_candidates(source, flagged.filter(pl.col("worded")), values, settings)
    if sums["shaped"] >= enough:

        def dates() -> list[_Candidate]:
            if not sums["separated"]:
                return []
            return _date_candidates(source, flagged.filter(pl.col("separated")), values, settings, date_named)

        def numbers() -> list[_Candidate]:
            shaped = flagged.filter(pl.col("shaped"))
            codes = _has_leading_zeros(shaped) or bool(CODE_NAME.search(source.name))
            return [] if codes else _number_candidates(source, shaped, values, settings)

        for candidates in (dates, numbers) if date_named else (numbers, dates):
            # A candidate converting every value cannot be beaten: a later one could only tie, and
            # the earlier one wins ties.
            if not any(candidate.confidence == 1.0 for candidate in typed):
                typed += candidates()
    storages = _storage_summary(sums)
    best = max(typed, key=lambda c: c.confidence) if typed else None
    accepted = [c for c in typed if _clears_bar(c, declared_target, settings)]
    if accepted:
        chosen = max(accepted, key=lambda c: c.confidence)
        reason = f"{chosen.confidence:.2%} of {total} non-null values convert to {chosen.target} ({storages}; declared {declared})"
        if chosen.confidence < settings.min_typed_confidence:
            reason += (
                f"; typed as declared although below {settings.min_typed_confidence:.0%}: the values it cannot hold "
                f"({', '.join(repr(value) for value in chosen.counterexamples)}) go to the quarantine"
            )
        return chosen, f"{reason}; {chosen.note}" if chosen.note else reason
    text = _Candidate("text", _conversion("text", TEXT_FORMAT_IDS, settings, crlf=bool(sums["crlf"])), total, 0)
    if best is None:
        plausible = max(sums["worded"], sums["shaped"])
        return text, (
            f"text: at most {plausible / total:.2%} of {total} non-null values look like a number, boolean or date "
            f"(< {settings.min_typed_confidence:.0%}; {storages}; declared {declared})"
        )
    return text, (
        f"kept as text: the best typed reading, {best.target}, converts only {best.confidence:.2%} of {total} "
        f"non-null values ({_bar_missed(best.target, declared_target, settings)}; {storages}; declared {declared}); "
        f"values it cannot read: {', '.join(repr(value) for value in best.counterexamples)}"
    )


def _typed_bar(target: str, declared_target: str, settings: ProfileSettings) -> float:
    """The share of values a typed reading must convert: lower for the type the column was declared with."""
    if target == declared_target and declared_target != "text":
        return min(settings.min_declared_confidence, settings.min_typed_confidence)
    return settings.min_typed_confidence


def _bar_missed(target: str, declared_target: str, settings: ProfileSettings) -> str:
    bar = _typed_bar(target, declared_target, settings)
    return f"not more than {bar:.0%}" if bar < settings.min_typed_confidence else f"< {bar:.0%}"


def _clears_bar(candidate: _Candidate, declared_target: str, settings: ProfileSettings) -> bool:
    """A typed reading wins at `min_typed_confidence`; the declared type needs more than its (majority) bar."""
    bar = _typed_bar(candidate.target, declared_target, settings)
    if bar < settings.min_typed_confidence:
        return candidate.confidence > bar
    return candidate.confidence >= bar


_SCREENS = ("eligible", "blob", "worded", "shaped", "separated")
_BOOLEAN_WORDS = [word for spec in BOOLEAN_FORMATS.values() for word in (spec.true_text, spec.false_text)]


def _screened_columns(
    distinct: Sequence[pl.DataFrame], date_named: Sequence[bool], settings: ProfileSettings
) -> tuple[pl.DataFrame, list[dict[str, object]]]:
    """Flags for cheap screens over every column's distinct values (stacked, with `col`), and their
    totals per column: which values are worth probing as booleans, numbers or dates.

    Candidates are still measured on every value; the screens only decide what to probe for
    formats and skip probing when too few values could possibly convert.
    """
    not_text = pl.col("storage") != "text"
    eligible = (pl.col("storage") != "null") & ~_marker_expression(settings.null_markers)
    digits = pl.col("t").str.contains(NUMBER_OR_DATE_SHAPE) & pl.col("t").str.contains(r"\d")
    shaped = eligible & (not_text | digits).fill_null(False)
    separated = shaped & (pl.col("t").str.contains(r"[/:\-]") | (pl.col("date_named") & not_text)).fill_null(False)
    flagged = _stacked(distinct, date_named=date_named).lazy().with_columns(
        eligible=eligible,
        blob=eligible & (pl.col("storage") == "blob"),
        worded=eligible & (not_text | pl.col("t").str.to_lowercase().is_in(_BOOLEAN_WORDS)).fill_null(False),
        shaped=shaped,
        separated=separated,
    )
    screened, sums = pl.collect_all(
        [flagged, flagged.group_by("col").agg(_screen_sums())], engine=ENGINE
    )
    empty = {flag: 0 for flag in (*_SCREENS, "crlf", *[f"n_{storage}" for storage in STORAGE_CLASSES])}
    return screened, _per_column(sums, len(distinct), empty)


def _screen_sums() -> list[pl.Expr]:
    """Over the screened values: rows per screen, per storage class (with the position of its first
    distinct value) among eligible values, and eligible rows holding CRLF."""
    n, eligible = pl.col("n"), pl.col("eligible")
    per_storage = []
    for storage in STORAGE_CLASSES:
        mask = eligible & (pl.col("storage") == storage)
        per_storage += [n.filter(mask).sum().alias(f"n_{storage}"), mask.arg_max().alias(f"first_{storage}")]
    crlf = n.filter(eligible & pl.col("s").str.contains("\r\n", literal=True).fill_null(False)).sum()
    return [*[n.filter(pl.col(flag)).sum().alias(flag) for flag in _SCREENS], *per_storage, crlf.alias("crlf")]


def _boolean_candidates(
    source: SourceColumn, worded: pl.DataFrame, values: pl.DataFrame, settings: ProfileSettings
) -> list[_Candidate]:
    formats = _formats_seen("boolean", tuple(BOOLEAN_FORMATS), worded)
    hinted = bool(BOOLEAN_NAME.search(source.name) or "bool" in source.declared_type.lower())
    if not formats or (formats == ("one_zero",) and not hinted):
        return []
    return [_measure("boolean", _conversion("boolean", formats, settings), values)]


def _number_candidates(
    source: SourceColumn, shaped: pl.DataFrame, values: pl.DataFrame, settings: ProfileSettings
) -> list[_Candidate]:
    formats = _formats_seen("double precision", tuple(NUMBER_FORMATS), shaped)
    if not formats:
        return []
    decimal_target = (
        "numeric"
        if NUMERIC_DECLARED.search(source.declared_type) or set(formats) & TEXT_NUMBER_FORMATS - {"int_text"}
        else "double precision"
    )
    whole = tuple(f for f in formats if f in INTEGER_FORMATS)
    candidates = []
    if whole:
        candidates.append(_measure("bigint", _conversion("bigint", whole, settings), values))
        if candidates[0].confidence == 1.0:
            return candidates
    candidates.append(_measure(decimal_target, _conversion(decimal_target, formats, settings), values))
    return candidates


def _date_candidates(
    source: SourceColumn, separated: pl.DataFrame, values: pl.DataFrame, settings: ProfileSettings, date_named: bool
) -> list[_Candidate]:
    day_first, assumed, evidence = _day_first(separated, settings.day_first_default)
    excluded = set(DAY_FIRST_COUNTERPART) if day_first is not False else set(MONTH_FIRST_COUNTERPART)
    allowed = [f for f in DATE_FORMATS if f not in excluded and (date_named or f not in NUMERIC_DATE_FORMATS)]
    formats = _formats_seen("timestamptz", tuple(allowed), separated)
    if not formats:
        return []
    ordered = any(DATE_FORMATS[f].day_first is not None for f in formats)
    fields = {"day_first": day_first, "day_first_assumed": assumed} if ordered else {}
    note = evidence if ordered else ""
    if any(DATE_FORMATS[f].has_zone for f in formats):
        return [_measure("timestamptz", _conversion("timestamptz", formats, settings, **fields), values, note)]
    timestamp_conversion = _conversion("timestamp", formats, settings, **fields)
    date_capable = set(formats) <= DATE_ONLY_FORMATS | {"excel_serial"} and not TIMESTAMP_DECLARED.search(
        source.declared_type
    )
    if not date_capable:
        return [_measure("timestamp", timestamp_conversion, values, note)]
    date = _measure("date", _conversion("date", formats, settings, **fields), values, note)
    if "excel_serial" not in formats:
        return [date]
    timestamp = _measure("timestamp", timestamp_conversion, values, note)
    return [date] if date.confidence >= timestamp.confidence else [timestamp]


def _day_first(values: pl.DataFrame, default: bool) -> tuple[bool | None, bool, str]:
    """Day-first or month-first from evidence: a first field > 12 proves day-first, a second > 12 month-first."""
    parts = pl.col("t").str.extract_groups(ORDER_AMBIGUOUS_SHAPE)
    first = parts.struct.field("1").cast(pl.Int32, strict=False)
    second = parts.struct.field("2").cast(pl.Int32, strict=False)
    n, shaped = pl.col("n"), first.is_not_null()
    day_proof, month_proof, ambiguous = (
        values.lazy()
        .filter(pl.col("storage") == "text")
        .select(
            day=n.filter(shaped & (first > 12)).sum(),
            month=n.filter(shaped & (second > 12)).sum(),
            ambiguous=n.filter(shaped).sum(),
        )
        .collect(engine=ENGINE)
        .row(0)
    )
    if not ambiguous:
        return None, False, ""
    if day_proof and not month_proof:
        return True, False, f"day-first proven by {day_proof} value(s) with a first field above 12"
    if month_proof and not day_proof:
        return False, False, f"month-first proven by {month_proof} value(s) with a second field above 12"
    if day_proof and month_proof:
        day_first = day_proof >= month_proof
        return day_first, False, (
            f"conflicting evidence: {day_proof} value(s) prove day-first, {month_proof} month-first; "
            f"{'day' if day_first else 'month'}-first chosen, the others fail"
        )
    order = "day-first" if default else "month-first"
    log.warning("%d date value(s) are ambiguous between day-first and month-first; assuming %s", ambiguous, order)
    return default, True, (
        f"{order} ASSUMED (configured default): none of {ambiguous} slash/dash date value(s) has a field above 12"
    )


def _formats_seen(target: str, formats: tuple[str, ...], values: pl.DataFrame) -> tuple[str, ...]:
    """The formats (in registry order) whose shape at least one of the values has, among the values
    no earlier format matched.

    On many values each format is tried only on what earlier ones left, so the common format pays
    for one pass and the rare ones run on the rest; on few values every shape is taken in one query.
    """
    shape_of = partial(_shape, TARGET_FAMILY[target])
    if values.height <= FEW_VALUES:
        shapes = values.lazy().select(
            [shape_of(format_id).alias(str(k)) for k, format_id in enumerate(formats)]
        ).collect(engine=ENGINE)
        left = pl.repeat(True, values.height, eager=True)
        seen = []
        for k, format_id in enumerate(formats):
            matched = shapes[str(k)] & left
            if bool(matched.any()):
                seen.append(format_id)
                left = left & ~shapes[str(k)]
        return tuple(seen)
    remaining = values
    seen = []
    for format_id in formats:
        if remaining.height == 0:
            break
        shape = remaining.select(shape_of(format_id)).to_series()
        if bool(shape.any()):
            seen.append(format_id)
            remaining = remaining.filter(~shape)
    return tuple(seen)


@cache
def _shape(family: str, format_id: str) -> pl.Expr:
    """Whether a value has the format's shape (the expression is built once per format)."""
    return _SHAPE_READERS[family](format_id).fill_null(False)


_SHAPE_READERS = {
    "date": date_shape,
    "number": lambda format_id: read_number(format_id)[0],
    "boolean": lambda format_id: read_boolean(format_id)[0],
}


def _measure(target: str, conversion: Conversion, values: pl.DataFrame, note: str = "") -> _Candidate:
    """Run the candidate plan on every distinct value; the result is reused if the candidate wins."""
    plan = ColumnPlan("probe", "probe", "", target, conversion, 1.0)
    result = convert_fields(values, plan)
    frame = values.with_columns(outcome=result.outcome)
    n, failed = pl.col("n"), pl.col("outcome") == "failed"
    convertible, unconvertible = frame.select(
        convertible=n.filter(pl.col("outcome").is_in(SUCCESS)).sum(), unconvertible=n.filter(failed).sum()
    ).row(0)
    failing = frame.filter(failed).sort("n", descending=True).head(5).select(_shown()) if unconvertible else None
    return _Candidate(
        target,
        conversion,
        int(convertible),
        int(unconvertible),
        note,
        result,
        tuple(failing["shown"].to_list()) if failing is not None else (),
    )


def _conversion(
    target: str,
    formats: Sequence[str],
    settings: ProfileSettings,
    crlf: bool = False,
    **fields: object,
) -> Conversion:
    """The conversion for a target; for text, `crlf` tells whether any value holds CRLF."""
    if target == "text":
        return Conversion(
            formats=tuple(formats),
            strip_nul=True,
            normalize_newlines=settings.normalize_newlines and crlf,
            invalid_utf8=settings.invalid_utf8,
        )
    if target == "bytea":
        return Conversion(formats=tuple(formats))
    return Conversion(formats=tuple(formats), null_markers=settings.null_markers, **fields)  # type: ignore[arg-type]


def _all_formats(target: str) -> tuple[str, ...]:
    return {
        "bigint": INTEGER_FORMATS,
        "numeric": tuple(NUMBER_FORMATS),
        "double precision": tuple(NUMBER_FORMATS),
        "boolean": tuple(BOOLEAN_FORMATS),
        "date": ("iso_date",),
        "timestamp": ("iso_datetime", "iso_date"),
        "timestamptz": ("iso_datetime_tz", "iso_datetime", "iso_date"),
        "text": TEXT_FORMAT_IDS,
        "bytea": BYTES_FORMAT_IDS,
    }[target]


def _declared_target(declared: str) -> str:
    """The target a declared SQLite type suggests, used only when a column has no values at all."""
    label = declared.lower()
    if "bool" in label:
        return "boolean"
    if "int" in label:
        return "bigint"
    if any(word in label for word in ("real", "floa", "doub")):
        return "double precision"
    if NUMERIC_DECLARED.search(label):
        return "numeric"
    if "datetime" in label or "timestamp" in label:
        return "timestamp"
    if "date" in label:
        return "date"
    if "blob" in label:
        return "bytea"
    return "text"


def _has_leading_zeros(values: pl.DataFrame) -> bool:
    """Codes like `0123` are text: reading them as numbers would lose the zeros."""
    return values.height > 0 and bool(values["t"].str.contains(LEADING_ZERO).any())


def _id_like(name: str) -> bool:
    return bool(ID_NAME.search(name))


def _marker_expression(markers: Sequence[str]) -> pl.Expr:
    """Text values a typed column treats as NULL: `''` covers empty and whitespace-only strings."""
    named = [marker.strip().lower() for marker in markers if marker.strip()]
    is_text = (pl.col("storage") == "text") & pl.col("s").is_not_null()
    mask = is_text & pl.col("t").str.to_lowercase().is_in(named)
    if any(not marker.strip() for marker in markers):
        mask = mask | (is_text & (pl.col("t") == ""))
    return mask.fill_null(False)


def _storage_summary(sums: dict[str, object]) -> str:
    """Eligible rows per storage class, largest first; ties in order of first appearance."""
    present = [storage for storage in STORAGE_CLASSES if sums[f"n_{storage}"]]
    ordered = sorted(present, key=lambda storage: (-sums[f"n_{storage}"], sums[f"first_{storage}"]))
    return ", ".join(f"{sums[f'n_{storage}']} {storage}" for storage in ordered)


# --- the evidence -------------------------------------------------------------------------------


def _profiles(
    distinct: Sequence[pl.DataFrame], converted: Sequence[ConvertedColumn], settings: ProfileSettings
) -> list[tuple[ColumnProfile, bool]]:
    """The evidence behind each column's plan, and whether its converted values are unique."""
    n = pl.col("n")
    outcomes = [
        frame.with_columns(outcome=result.outcome, operation=result.operation)
        for frame, result in zip(distinct, converted)
    ]
    named = [marker for marker in settings.null_markers if marker.strip()]
    # Lowercase only text short enough to be a marker: lowercasing never shortens a string.
    longest = max((len(marker.strip().lower()) for marker in named), default=0)
    lowered = pl.when(pl.col("t").str.len_chars() <= longest).then(pl.col("t").str.to_lowercase())
    frame = _stacked(outcomes).lazy().with_columns(lowered=lowered)
    counts, evidence = pl.collect_all([
        frame.group_by("col").agg(_profile_counts(named)),
        frame.filter(pl.col("outcome").is_in(SUCCESS))
        .group_by("col", "operation", maintain_order=True)
        .agg(n.sum(), _shown().first())
        .sort(["col", "n", "operation"], descending=[False, True, False]),
    ], engine=ENGINE)
    formats: dict[int, list[FormatEvidence]] = {}
    for k, operation, total, example in evidence.iter_rows():
        formats.setdefault(k, []).append(FormatEvidence(operation, int(total), example))
    rows = _per_column(counts, len(distinct), {})
    return [
        _profile(row, tuple(formats.get(k, ())), outcomes[k], converted[k], named, settings)
        for k, row in enumerate(rows)
    ]


def _profile(
    row: dict[str, object],
    formats: tuple[FormatEvidence, ...],
    values: pl.DataFrame,
    converted: ConvertedColumn,
    named: Sequence[str],
    settings: ProfileSettings,
) -> tuple[ColumnProfile, bool]:
    """One column's profile from its aggregates; counterexamples and uniqueness only where they can exist."""
    storages = [storage for storage in STORAGE_CLASSES if row.get(f"n_{storage}")]
    unconvertible = row.get("unconvertible") or 0
    worst = (
        values.filter(pl.col("outcome") == "failed").sort("n", descending=True).head(settings.max_counterexamples)
        if unconvertible
        else values.clear()
    )
    could_be_unique = bool(row.get("present")) and bool(row.get("single"))
    profile = ColumnProfile(
        rows=row.get("rows") or 0,
        nulls=row.get("nulls") or 0,
        empty_strings=row.get("empty") or 0,
        whitespace_only=row.get("whitespace") or 0,
        null_markers={marker: row[f"marker{k}"] for k, marker in enumerate(named) if row.get(f"marker{k}")},
        storage_classes={
            storage: int(row[f"n_{storage}"]) for storage in sorted(storages, key=lambda c: row[f"first_{c}"])
        },
        distinct_values=row.get("distinct") or 0,
        formats=formats,
        convertible=row.get("convertible") or 0,
        unconvertible=unconvertible,
        counterexamples=tuple(worst.select(_shown())["shown"].to_list()),
        max_length=row.get("max_length") or 0,
        nul_bytes=row.get("nul") or 0,
        crlf=row.get("crlf") or 0,
        invalid_utf8=row.get("invalid") or 0,
    )
    return profile, could_be_unique and _unique(values, converted)


def _unique(values: pl.DataFrame, converted: ConvertedColumn) -> bool:
    present = converted.values.is_not_null()
    if not bool(present.any()):
        return False
    return bool((values["n"].filter(present) == 1).all()) and converted.values.filter(present).n_unique() == int(
        present.sum()
    )


def _profile_counts(named: Sequence[str]) -> list[pl.Expr]:
    n, s, t, storage = pl.col("n"), pl.col("s"), pl.col("t"), pl.col("storage")
    text = (storage == "text") & s.is_not_null()
    # A value is converted (not null) exactly when its outcome is a success.
    present = pl.col("outcome").is_in(SUCCESS)
    per_storage = []
    for kind in STORAGE_CLASSES:
        per_storage += [n.filter(storage == kind).sum().alias(f"n_{kind}"), (storage == kind).arg_max().alias(f"first_{kind}")]
    return [
        n.sum().alias("rows"),
        n.filter(storage == "null").sum().alias("nulls"),
        n.filter(text & (s == "")).sum().alias("empty"),
        n.filter(text & (s != "") & (t == "")).sum().alias("whitespace"),
        (storage != "null").sum().alias("distinct"),
        n.filter(pl.col("outcome").is_in(SUCCESS)).sum().alias("convertible"),
        n.filter(pl.col("outcome") == "failed").sum().alias("unconvertible"),
        s.filter(text).str.len_chars().max().alias("max_length"),
        n.filter(text & s.str.contains("\x00", literal=True)).sum().alias("nul"),
        n.filter(text & s.str.contains("\r\n", literal=True)).sum().alias("crlf"),
        n.filter((storage == "text") & s.is_null() & pl.col("b").is_not_null()).sum().alias("invalid"),
        *[
            n.filter(text & (pl.col("lowered") == marker.strip().lower())).sum().alias(f"marker{k}")
            for k, marker in enumerate(named)
        ],
        *per_storage,
        present.sum().alias("present"),
        (n.filter(present) == 1).all().alias("single"),
    ]


def _shown() -> pl.Expr:
    """A raw value as a short string for reports: text as is, numbers as written, bytes as hex."""
    return (
        pl.coalesce(
            pl.col("s"),
            pl.col("i").cast(pl.String),
            pl.col("r").cast(pl.String),
            pl.lit("\\x") + pl.col("b").bin.encode("hex"),
        )
        .str.slice(0, 200)
        .fill_null("NULL")
        .alias("shown")
    )


# --- keys ---------------------------------------------------------------------------------------


def _key_columns(
    columns: Sequence[SourceColumn],
    plans: Sequence[ColumnPlan],
    repeated_rows: RepeatedRows | None,
    columns_per_read: int = 1,
) -> tuple[tuple[str, ...], str]:
    """One column that identifies rows: the declared single primary key, else the first id-like one.

    A column repeated only by whole duplicate rows still qualifies (the duplicates are removed
    downstream); the note says so. `repeated_rows(name, others)` gives columns `name` and `others`
    of the rows whose `name` repeats (asked for `columns_per_read` others at a time); it is None for
    sampled tables, where only strict uniqueness counts.
    """
    rows = {plan.name: plan for plan in plans}

    def complete(plan: ColumnPlan) -> bool:
        profile = plan.profile
        absent = profile.nulls + profile.empty_strings + profile.whitespace_only + sum(profile.null_markers.values())
        return profile.unconvertible == 0 and absent == 0 and profile.convertible > 0

    def duplicate_rows_only(name: str) -> int | None:
        """How many rows repeat another row entirely, if those are the only repeats of `name`."""
        if repeated_rows is None:
            return None
        others = [column.name for column in columns if column.name != name]
        repeated = repeated_rows(name, others[:1])
        if others and _differs_within_first_repeat(repeated, name, others[0]):
            return None  # the usual answer, from the cheapest read and a few rows of it
        keys = repeated[name].n_unique()
        if others and repeated.select(name, others[0]).n_unique() != keys:
            return None
        width = max(1, columns_per_read)
        for start in range(1, len(others), width):
            batch = others[start : start + width]
            frame = repeated_rows(name, batch)
            if any(frame.select(name, other).n_unique() != keys for other in batch):
                return None
        return repeated.height - keys

    declared = [column.name for column in columns if column.primary_key_position > 0]
    candidates = declared if len(declared) == 1 else []
    candidates += [column.name for column in columns if ID_NAME.search(column.name) and column.name not in candidates]
    for name in candidates:
        plan = rows[name]
        if complete(plan) and plan.unique:
            return (name,), ""
    for name in candidates:
        duplicates = duplicate_rows_only(name) if complete(rows[name]) else None
        if duplicates is not None:
            return (name,), f"key column: unique once {duplicates} exact duplicate row(s) are removed"
    return (), ""


def _differs_within_first_repeat(repeated: pl.DataFrame, key: str, other: str) -> bool:
    """Whether the rows sharing the first repeated `key` value disagree on `other` (they usually do
    when `key` is no key): a test on a handful of rows before any on all of them."""
    if repeated.height == 0:
        return False
    first = repeated.select(pl.col(key).struct.unnest())[:1]
    same_key = [pl.col(key).struct.field(field).eq_missing(first[field][0]) for field in first.columns]
    return repeated.filter(pl.all_horizontal(same_key)).select(other).n_unique() > 1


# --- sampled tables -----------------------------------------------------------------------------


def _full_table_counts(
    conn: sqlite3.Connection, table: str, columns: Sequence[SourceColumn], markers: Sequence[str]
) -> dict[str, dict[str, object]]:
    """Nulls, empty strings, whitespace and markers over the whole table, in one scan."""
    named = [marker for marker in markers if marker.strip()]
    expressions: list[str] = []
    params: list[str] = []
    for column in columns:
        c = quote_ident(column.name)
        is_text = f"typeof({c}) = 'text'"
        expressions += [
            f"count(*) - count({c})",
            f"coalesce(sum({is_text} AND {c} = ''), 0)",
            f"coalesce(sum({is_text} AND {c} <> '' AND trim({c}, ' ' || char(9, 10, 13)) = ''), 0)",
        ]
        for marker in named:
            expressions.append(f"coalesce(sum({is_text} AND lower(trim({c})) = ?), 0)")
            params.append(marker.strip().lower())
    row = conn.execute(f"SELECT {', '.join(expressions)} FROM {quote_ident(table)}", params).fetchone()
    width = 3 + len(named)
    counts: dict[str, dict[str, object]] = {}
    for index, column in enumerate(columns):
        chunk = row[index * width : (index + 1) * width]
        counts[column.name] = {
            "nulls": chunk[0],
            "empty_strings": chunk[1],
            "whitespace_only": chunk[2],
            "null_markers": {marker: n for marker, n in zip(named, chunk[3:]) if n},
        }
    return counts


def _with_full_table_counts(plan: ColumnPlan, total: int, counts: dict[str, object]) -> ColumnPlan:
    profile = dataclasses.replace(
        plan.profile,
        rows=total,
        nulls=counts["nulls"],
        empty_strings=counts["empty_strings"],
        whitespace_only=counts["whitespace_only"],
        null_markers=counts["null_markers"],
    )
    return dataclasses.replace(plan, profile=profile)


def _unique_in_table(conn: sqlite3.Connection, table: str, column: str) -> bool:
    c = quote_ident(column)
    distinct, present = conn.execute(f"SELECT count(DISTINCT {c}), count({c}) FROM {quote_ident(table)}").fetchone()
    return distinct == present
