"""Gate 1 inference: the plan for every table and column, decided from the values.

Each table is pulled into Python once (`values.read_rows`), every column is reduced to its distinct
raw values with counts, and candidate plans are measured by running `convert.convert_column` (the
same code the cleaner executes) on those distinct values. A typed candidate wins when it converts
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
from collections.abc import Callable, Collection, Iterator, Sequence
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
    convert_column,
)
from servicedesk_etl.profiling.dates import (
    DATE_FORMATS,
    DAY_FIRST_COUNTERPART,
    MONTH_FIRST_COUNTERPART,
    NUMERIC_DATE_RANGES,
    ORDER_AMBIGUOUS_SHAPE,
    date_shape,
)
from servicedesk_etl.profiling.identifiers import pg_names
from servicedesk_etl.profiling.numbers import BOOLEAN_FORMATS, NUMBER_FORMATS, read_boolean, read_number
from servicedesk_etl.profiling.plan import ColumnPlan, ColumnProfile, Conversion, FormatEvidence, Plan, TablePlan
from servicedesk_etl.profiling.values import ROWID, RowSample, read_rows
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
# Cells read at once while profiling a table (about 60 bytes each as raw values): bounds memory.
CELLS_PER_READ = 6_000_000


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


def profile_database(path: Path, settings: ProfileSettings = ProfileSettings(),
                     progress: Callable[[str, int, int], None] | None = None) -> Plan:
    """The plan for the SQLite file at `path`, opened read-only.

    `progress(table, rows_done, rows_total)` is called as each table is finished.
    """
    conn = open_readonly(path)
    try:
        return profile_connection(conn, str(path), file_sha256(path), settings, progress)
    finally:
        conn.close()


def profile_connection(
    conn: sqlite3.Connection,
    source_path: str,
    source_sha256: str,
    settings: ProfileSettings = ProfileSettings(),
    progress: Callable[[str, int, int], None] | None = None,
) -> Plan:
    """The plan for every user table of an open (read-only) connection."""
    tables = list_tables(conn)
    table_names = pg_names(tables, columns=False)
    for mapping in table_names:
        if mapping.renamed:
            log.warning("table %s: %s", mapping.original, mapping.note)
    plans = []
    for mapping in table_names:
        plans.append(profile_table(conn, mapping.original, mapping.pg_name, settings))
        if progress is not None:
            progress(mapping.original, plans[-1].row_count, plans[-1].row_count)
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


def profile_table(conn: sqlite3.Connection, table: str, pg_name: str, settings: ProfileSettings) -> TablePlan:
    columns = table_columns(conn, table)
    total = row_count(conn, table)
    sampled = total > settings.sample_above_rows
    sample = RowSample(settings.sample_rows / total, settings.seed) if sampled else None
    full_counts = _full_table_counts(conn, table, columns, settings.null_markers) if sampled else {}
    if sampled:
        log.info("table %s: %d rows, profiling a seeded sample of about %d", table, total, settings.sample_rows)
    names = dict(zip(columns, pg_names([column.name for column in columns])))
    rows = min(total, settings.sample_rows) if sampled else total
    whole = None if sampled or rows * len(columns) > CELLS_PER_READ else read_rows(conn, table, [c.name for c in columns])
    raws = ((c, whole[c.name]) for c in columns) if whole is not None else _raw_columns(conn, table, columns, sample, rows)
    plans = []
    for column, raw in raws:
        mapping = names[column]
        plan = plan_column(column, raw, mapping.pg_name, settings)
        del raw
        if sampled:
            plan = _with_full_table_counts(plan, total, full_counts[column.name])
            plan = dataclasses.replace(plan, unique=plan.unique and _unique_in_table(conn, table, column.name))
        if mapping.note:
            log.warning("column %s.%s: %s", table, column.name, mapping.note)
            plan = dataclasses.replace(plan, reason=f"{plan.reason}; {mapping.note}")
        plans.append(plan)
    repeated_rows: RepeatedRows | None = None
    if whole is not None:
        repeated_rows = partial(_repeated_in_frame, whole)
    elif not sampled:
        few = {plan.name for plan in plans if (plan.profile.rows - plan.profile.distinct_values) * 2 <= plan.profile.rows}
        repeated_rows = partial(_repeated_in_table, conn, table, cache(partial(_repeated_rowids, conn, table)), few)
    key_columns, key_note = _key_columns(columns, plans, repeated_rows)
    if key_note:
        plans = [
            dataclasses.replace(plan, reason=f"{plan.reason}; {key_note}") if plan.name in key_columns else plan
            for plan in plans
        ]
    return TablePlan(
        name=table,
        pg_name=pg_name,
        row_count=total,
        columns=tuple(plans),
        key_columns=key_columns,
        sampled=sampled,
    )


def _raw_columns(
    conn: sqlite3.Connection, table: str, columns: Sequence[SourceColumn], sample: RowSample | None, rows: int
) -> Iterator[tuple[SourceColumn, pl.Series]]:
    """Each column's raw values, read a few columns at a time so memory stays flat for wide, long tables."""
    width = max(1, CELLS_PER_READ // max(rows, 1))
    for start in range(0, len(columns), width):
        group = columns[start : start + width]
        frame = read_rows(conn, table, [column.name for column in group], sample)
        for column in group:
            yield column, frame[column.name]
        del frame


RepeatedRows = Callable[[str, Sequence[str]], pl.DataFrame]


def _repeated_in_frame(frame: pl.DataFrame, key: str, others: Sequence[str]) -> pl.DataFrame:
    """Columns `key` and `others` of the rows whose `key` value repeats, from a table in memory."""
    return frame.filter(frame[key].is_duplicated()).select(key, *others)


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
    distinct = pl.DataFrame({"v": raw}).group_by("v", maintain_order=True).len().rename({"len": "n"})
    values = distinct["v"].struct.unnest().with_columns(
        n=distinct["n"].cast(pl.Int64), t=pl.col("s").str.strip_chars()
    )
    stub = ColumnPlan(source.name, pg_name, source.declared_type, "text", Conversion(), 1.0)
    candidate, reason = _choose(source, values, settings)
    plan = dataclasses.replace(stub, target_type=candidate.target, conversion=candidate.conversion, reason=reason)
    converted = candidate.result if candidate.result is not None else convert_column(distinct["v"], plan)
    profile = _profile(values, converted, settings)
    attempted = profile.convertible + profile.unconvertible
    confidence = profile.convertible / attempted if attempted else 1.0
    return dataclasses.replace(plan, confidence=confidence, profile=profile, unique=_unique(values, converted))


def _choose(source: SourceColumn, values: pl.DataFrame, settings: ProfileSettings) -> tuple[_Candidate, str]:
    """The target type and conversion, with the reason a person can check."""
    date_named = bool(DATE_NAME.search(source.name) or DATE_DECLARED.search(source.declared_type)) and not _id_like(
        source.name
    )
    flagged = _screened(values, settings, date_named)
    sums = flagged.select(
        [pl.col("n").filter(pl.col(flag)).sum().alias(flag) for flag in _SCREENS]
    ).row(0, named=True)
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
        dates = (
            _date_candidates(source, flagged.filter(pl.col("separated")), values, settings, date_named)
            if sums["separated"]
            else []
        )
        shaped = flagged.filter(pl.col("shaped"))
        codes = _has_leading_zeros(shaped) or bool(CODE_NAME.search(source.name))
        numbers = [] if codes else _number_candidates(source, shaped, values, settings)
        typed += dates + numbers if date_named else numbers + dates
    eligible = flagged.filter(pl.col("eligible"))
    storages = _storage_summary(eligible)
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
    text = _Candidate("text", _conversion("text", TEXT_FORMAT_IDS, settings, eligible), total, 0)
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


def _screened(values: pl.DataFrame, settings: ProfileSettings, date_named: bool) -> pl.DataFrame:
    """Flags for cheap screens: which values are worth probing as booleans, numbers or dates.

    Candidates are still measured on every value; the screens only decide what to probe for
    formats and skip probing when too few values could possibly convert.
    """
    not_text = pl.col("storage") != "text"
    eligible = (pl.col("storage") != "null") & ~_marker_expression(settings.null_markers)
    digits = pl.col("t").str.contains(NUMBER_OR_DATE_SHAPE) & pl.col("t").str.contains(r"\d")
    return values.with_columns(eligible=eligible).with_columns(
        blob=pl.col("eligible") & (pl.col("storage") == "blob"),
        worded=pl.col("eligible") & (not_text | pl.col("t").str.to_lowercase().is_in(_BOOLEAN_WORDS)).fill_null(False),
        shaped=pl.col("eligible") & (not_text | digits).fill_null(False),
    ).with_columns(
        separated=pl.col("shaped") & (pl.col("t").str.contains(r"[/:\-]") | (pl.lit(date_named) & not_text)).fill_null(False),
    )


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
    fields = values.filter(pl.col("storage") == "text").select(
        first=pl.col("t").str.extract(ORDER_AMBIGUOUS_SHAPE, 1).cast(pl.Int32, strict=False),
        second=pl.col("t").str.extract(ORDER_AMBIGUOUS_SHAPE, 2).cast(pl.Int32, strict=False),
        n=pl.col("n"),
    ).filter(pl.col("first").is_not_null())
    if fields.height == 0:
        return None, False, ""
    day_proof = int(fields.filter(pl.col("first") > 12)["n"].sum())
    month_proof = int(fields.filter(pl.col("second") > 12)["n"].sum())
    ambiguous = int(fields["n"].sum())
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
    """The formats (in registry order) whose shape at least one of the values has.

    Each format is tried only on the values no earlier format matched, so the common format pays
    for one pass and the rare ones run on what is left.
    """
    family = TARGET_FAMILY[target]
    remaining = values
    seen = []
    for format_id in formats:
        if remaining.height == 0:
            break
        shape = remaining.select(_SHAPE_READERS[family](format_id).fill_null(False)).to_series()
        if bool(shape.any()):
            seen.append(format_id)
            remaining = remaining.filter(~shape)
    return tuple(seen)


_SHAPE_READERS = {
    "date": date_shape,
    "number": lambda format_id: read_number(format_id)[0],
    "boolean": lambda format_id: read_boolean(format_id)[0],
}


def _measure(target: str, conversion: Conversion, values: pl.DataFrame, note: str = "") -> _Candidate:
    """Run the candidate plan on every distinct value; the result is reused if the candidate wins."""
    plan = ColumnPlan("probe", "probe", "", target, conversion, 1.0)
    result = convert_column(_raw(values), plan)
    succeeded = result.outcome.is_in(SUCCESS)
    failed = result.outcome == "failed"
    failing = values.filter(failed).sort("n", descending=True).head(5)
    return _Candidate(
        target,
        conversion,
        int(values["n"].filter(succeeded).sum()),
        int(values["n"].filter(failed).sum()),
        note,
        result,
        tuple(_display(_raw(failing))) if failing.height else (),
    )


def _conversion(
    target: str,
    formats: Sequence[str],
    settings: ProfileSettings,
    values: pl.DataFrame | None = None,
    **fields: object,
) -> Conversion:
    if target == "text":
        newlines = values is not None and int(
            values.filter(pl.col("s").str.contains("\r\n", literal=True))["n"].sum()
        ) > 0
        return Conversion(
            formats=tuple(formats),
            strip_nul=True,
            normalize_newlines=settings.normalize_newlines and newlines,
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


def _raw(values: pl.DataFrame) -> pl.Series:
    return values.select(pl.struct("storage", "i", "r", "s", "b").alias("v")).to_series()


def _storage_summary(values: pl.DataFrame) -> str:
    counts = values.group_by("storage").agg(pl.col("n").sum()).sort("n", descending=True)
    return ", ".join(f"{n} {storage}" for storage, n in counts.iter_rows())


# --- the evidence -------------------------------------------------------------------------------


def _profile(values: pl.DataFrame, converted: ConvertedColumn, settings: ProfileSettings) -> ColumnProfile:
    frame = values.with_columns(outcome=converted.outcome, operation=converted.operation)
    n, s, t = pl.col("n"), pl.col("s"), pl.col("t")
    text = (pl.col("storage") == "text") & s.is_not_null()
    succeeded = pl.col("outcome").is_in(SUCCESS)
    failed = pl.col("outcome") == "failed"
    named = [marker for marker in settings.null_markers if marker.strip()]
    counts = frame.select(
        n.sum().alias("rows"),
        n.filter(pl.col("storage") == "null").sum().alias("nulls"),
        n.filter(text & (s == "")).sum().alias("empty"),
        n.filter(text & (s != "") & (t == "")).sum().alias("whitespace"),
        (pl.col("storage") != "null").sum().alias("distinct"),
        n.filter(succeeded).sum().alias("convertible"),
        n.filter(failed).sum().alias("unconvertible"),
        s.filter(text).str.len_chars().max().alias("max_length"),
        n.filter(text & s.str.contains("\x00", literal=True)).sum().alias("nul"),
        n.filter(text & s.str.contains("\r\n", literal=True)).sum().alias("crlf"),
        n.filter((pl.col("storage") == "text") & s.is_null() & pl.col("b").is_not_null()).sum().alias("invalid"),
        *[
            n.filter(text & (t.str.to_lowercase() == marker.strip().lower())).sum().alias(f"marker{k}")
            for k, marker in enumerate(named)
        ],
    ).row(0, named=True)
    evidence = (
        frame.filter(succeeded)
        .group_by("operation", maintain_order=True)
        .agg(n.sum(), pl.struct("storage", "i", "r", "s", "b").first().alias("example"))
        .sort(["n", "operation"], descending=[True, False])
    )
    worst = frame.filter(failed).sort("n", descending=True).head(settings.max_counterexamples)
    storages = frame.group_by("storage").agg(n.sum())
    return ColumnProfile(
        rows=counts["rows"] or 0,
        nulls=counts["nulls"] or 0,
        empty_strings=counts["empty"] or 0,
        whitespace_only=counts["whitespace"] or 0,
        null_markers={marker: counts[f"marker{k}"] for k, marker in enumerate(named) if counts[f"marker{k}"]},
        storage_classes={storage: int(total) for storage, total in storages.iter_rows()},
        distinct_values=counts["distinct"] or 0,
        formats=tuple(
            FormatEvidence(operation, int(total), example)
            for (operation, total), example in zip(
                evidence.select("operation", "n").iter_rows(), _display(evidence["example"])
            )
        ),
        convertible=counts["convertible"] or 0,
        unconvertible=counts["unconvertible"] or 0,
        counterexamples=tuple(_display(_raw(worst))) if worst.height else (),
        max_length=counts["max_length"] or 0,
        nul_bytes=counts["nul"] or 0,
        crlf=counts["crlf"] or 0,
        invalid_utf8=counts["invalid"] or 0,
    )


def _display(raw: pl.Series) -> list[str]:
    """Raw values as short strings for reports: text as is, numbers as written, bytes as hex."""
    frame = raw.struct.unnest()
    shown = frame.select(
        pl.coalesce(
            pl.col("s"),
            pl.col("i").cast(pl.String),
            pl.col("r").cast(pl.String),
            pl.lit("\\x") + pl.col("b").bin.encode("hex"),
        ).str.slice(0, 200)
    ).to_series()
    return [value if value is not None else "NULL" for value in shown.to_list()]


def _unique(values: pl.DataFrame, converted: ConvertedColumn) -> bool:
    present = converted.values.is_not_null()
    if not bool(present.any()):
        return False
    return bool((values["n"].filter(present) == 1).all()) and converted.values.filter(present).n_unique() == int(
        present.sum()
    )


# --- keys ---------------------------------------------------------------------------------------


def _key_columns(
    columns: Sequence[SourceColumn],
    plans: Sequence[ColumnPlan],
    repeated_rows: RepeatedRows | None,
) -> tuple[tuple[str, ...], str]:
    """One column that identifies rows: the declared single primary key, else the first id-like one.

    A column repeated only by whole duplicate rows still qualifies (the duplicates are removed
    downstream); the note says so. `repeated_rows(name, others)` gives columns `name` and `others`
    of the rows whose `name` repeats; it is None for sampled tables, where only strict uniqueness
    counts.
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
        keys = repeated[name].n_unique()
        for position, other in enumerate(others):
            pair = repeated if position == 0 else repeated_rows(name, (other,))
            if pair.select(name, other).n_unique() != keys:
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
