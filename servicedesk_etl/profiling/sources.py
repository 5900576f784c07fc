"""Table sources: the same aggregate questions asked of a SQLite file or a PostgreSQL schema.

The scorer and the rule engine never pull rows into Python. They ask a source for *measures*
(counts of rows meeting a condition on one column), and the source answers them for a whole
table with one SQL aggregate query, in the engine, as the values are stored there: in SQLite by
storage class (`typeof`), in PostgreSQL by the column's real type.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import psycopg
from psycopg import sql

from servicedesk_etl.dsn import redact_dsn
from servicedesk_etl.errors import InputError, TargetUnreachable
from servicedesk_etl.sqlite_source import list_tables, open_readonly, quote_ident, table_columns

log = logging.getLogger(__name__)

DEFAULT_NULL_MARKERS = ("", "NULL", "N/A", "NA", "?", "-", "nan", "None")

# Measure kinds. Every count is over the rows of one table.
ROWS = "rows"  # all rows
MISSING = "missing"  # NULL, or text that is empty, whitespace or a null marker
BLANKS = "blanks"  # not NULL but text that is empty, whitespace or a null marker
CONFORMING = "conforming"  # present and stored as the planned type (args: target type)
NUMERIC = "numeric"  # present and a plain number (stored as one, or text that reads as one)
INTEGER_IN_RANGE = "integer_in_range"  # numeric, integral, within [low, high] (args: low, high; None = open)
VALUE_IN_RANGE = "value_in_range"  # numeric within the range (args: low, high, low_inclusive, high_inclusive)
VALUE_EQUALS = "value_equals"  # numeric and equal to args[0]
DATE_PARSEABLE = "date_parseable"  # present and readable as an ISO date or date-time
DATE_IN_RANGE = "date_in_range"  # parseable and within [low, high] (args: ISO strings)
COMPARABLE = "comparable"  # this column and args[0] are both parseable dates
ORDERED = "ordered"  # comparable and this column <= args[0]
TEXT_VALUES = "text_values"  # values stored as text (or bytes) in a text column
NUL_BYTES = "nul_bytes"  # text holding a NUL byte
CRLF = "crlf"  # text holding a CR LF pair
INVALID_UTF8 = "invalid_utf8"  # text or bytes that are not valid UTF-8
DISTINCT_KEYS = "distinct_keys"  # distinct present values, compared as normalised keys
CONDITION_ROWS = "condition_rows"  # rows whose value is one of args (text, case-insensitive)
MISSING_WHEN = "missing_when"  # rows where column args[0] is one of args[1:] and this column is missing

MEASURE_KINDS = frozenset(
    {
        ROWS, MISSING, BLANKS, CONFORMING, NUMERIC, INTEGER_IN_RANGE, VALUE_IN_RANGE, VALUE_EQUALS, DATE_PARSEABLE,
        DATE_IN_RANGE, COMPARABLE, ORDERED, TEXT_VALUES, NUL_BYTES, CRLF, INVALID_UTF8, DISTINCT_KEYS,
        CONDITION_ROWS, MISSING_WHEN,
    }
)  # fmt: skip


@dataclass(frozen=True)
class Measure:
    """One count a source computes for a table: `kind` on `column` with `args`."""

    kind: str
    column: str | None = None
    args: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in MEASURE_KINDS:
            raise ValueError(f"unknown measure kind {self.kind!r}")
        if self.kind != ROWS and self.column is None:
            raise ValueError(f"measure {self.kind!r} needs a column")


@dataclass(frozen=True)
class Link:
    """A logical reference: values of `child_table.child_column` should exist in `parent_table.parent_column`."""

    child_table: str
    child_column: str
    parent_table: str
    parent_column: str
    ignore_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrphanCount:
    checked: int
    orphans: int
    examples: tuple[str, ...] = ()

    @property
    def rate(self) -> float:
        return self.orphans / self.checked if self.checked else 0.0


@runtime_checkable
class TableSource(Protocol):
    """Tables, columns and in-engine aggregates of one database (a SQLite file or a PostgreSQL schema).

    `uses_pg_names` says whether tables and columns carry the plan's `pg_name`s (PostgreSQL) or the
    original names (SQLite snapshot and cleaned file).
    """

    engine: str
    label: str
    uses_pg_names: bool

    def connected(self) -> AbstractContextManager[Any]: ...

    def tables(self) -> tuple[str, ...]: ...

    def columns(self, table: str) -> tuple[str, ...]: ...

    def measure(
        self, table: str, measures: Iterable[Measure], null_markers: Sequence[str] = DEFAULT_NULL_MARKERS
    ) -> dict[Measure, int]: ...

    def duplicate_rows(self, table: str) -> int: ...

    def orphans(self, link: Link, null_markers: Sequence[str] = DEFAULT_NULL_MARKERS) -> OrphanCount: ...


def sqlite_source(path: Path | str) -> SqliteSource:
    """A source over a SQLite file, opened read-only (`sqlite_source.open_readonly`) while in use."""
    return SqliteSource(Path(path))


def postgres_source(dsn: str, schema: str) -> PostgresSource:
    """A source over one schema of a PostgreSQL database."""
    return PostgresSource(dsn, schema)


def _markers(null_markers: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({marker.strip().lower() for marker in null_markers} | {""}))


def _ordered_unique(measures: Iterable[Measure]) -> list[Measure]:
    return list(dict.fromkeys(measures))


# --- SQLite ------------------------------------------------------------------------------------

_SQLITE_WS = "char(32, 9, 10, 11, 12, 13)"
_ISO_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
_NON_ASCII_GLOB = "*[^" + chr(1) + "-" + chr(127) + "]*"
_TIMES_2_32 = 1 << 32  # PostgreSQL: missing + conforming * 2**32 in one bigint sum
_TEXT_STORED = frozenset({"date", "timestamp", "timestamptz"})
_MAX_CASE_VARIANTS = 64


def _case_variants(markers: Sequence[str]) -> list[str]:
    """Every upper/lower spelling of each marker (capped; long markers get lower, UPPER, Title)."""
    variants: dict[str, None] = {}
    for marker in markers:
        letters = sum(1 for ch in marker if ch.isalpha())
        if 2**letters > _MAX_CASE_VARIANTS:
            spellings = [marker.lower(), marker.upper(), marker.title()]
        else:
            spellings = [""]
            for ch in marker:
                spellings = [s + v for s in spellings for v in dict.fromkeys((ch.lower(), ch.upper()))]
        variants.update(dict.fromkeys(spellings))
    return list(variants)


class _SqliteExpr:
    """SQL fragments (with their `?` parameters) for one column of a SQLite table."""

    def __init__(self, column: str, markers: tuple[str, ...]) -> None:
        self.q = quote_ident(column)
        self.markers = markers

    @property
    def trimmed(self) -> str:
        return f"trim({self.q}, {_SQLITE_WS})"

    @property
    def is_text(self) -> str:
        # SQLite orders NULL < numbers < text < blobs, so two comparisons test the storage class
        # without a function call per cell (typeof() costs as much as the rest of the scan).
        return f"({self.q} >= '' AND {self.q} < X'')"

    def blank_text(self) -> tuple[str, list[Any]]:
        """For a text value: a null marker in any common spelling (`NULL`, `null`, `Null`), or
        text led by whitespace (or empty) that trims to a marker. The cheap tests run first: a
        length bound before an exact lookup among the markers' case variants, and one compare
        (`< '!'`) for text that starts with a space or control character."""
        variants = _case_variants(self.markers)
        holes = ", ".join("?" for _ in variants)
        markers = ", ".join("?" for _ in self.markers)
        longest = max(len(marker) for marker in self.markers)
        q = self.q
        return (
            f"((length({q}) <= {longest} AND {q} IN ({holes}))"
            f" OR ({q} < '!' AND lower({self.trimmed}) IN ({markers})))",
            [*variants, *self.markers],
        )

    def blank(self) -> tuple[str, list[Any]]:
        text, params = self.blank_text()
        return f"({self.is_text} AND {text})", params

    def missing(self) -> tuple[str, list[Any]]:
        blank, params = self.blank()
        return f"({self.q} IS NULL OR {blank})", params

    def cell_class(self, target_type: str, missing_weight: int, conforming_weight: int) -> tuple[str, list[Any]]:
        """One CASE per cell: `missing_weight` when missing, `conforming_weight` when present and
        stored as `target_type`, else 0 (so one sum counts both, each in its own bit field)."""
        blank, params = self.blank_text()
        text_ok = "1" if target_type == "text" else self.conforming(target_type) if target_type in _TEXT_STORED else "0"
        other_ok = {
            "bigint": f"typeof({self.q}) = 'integer'",
            "numeric": f"{self.q} < ''",
            "double precision": f"{self.q} < ''",
            "boolean": f"({self.q} IN (0, 1) AND typeof({self.q}) = 'integer')",  # as `conforming`: not 0.0, 1.0
            "bytea": f"{self.q} >= X''",
        }.get(target_type, "0")
        return (
            f"(CASE WHEN {self.q} IS NULL THEN {missing_weight} WHEN {self.is_text} THEN"
            f" (CASE WHEN {blank} THEN {missing_weight} WHEN {text_ok} THEN {conforming_weight} ELSE 0 END)"
            f" WHEN {other_ok} THEN {conforming_weight} ELSE 0 END)",
            params,
        )

    def present(self) -> tuple[str, list[Any]]:
        text, params = self.missing()
        return f"NOT {text}", params

    def numeric_text(self) -> str:
        """Text that reads as a plain number: digits (the common case, tested first), or a sign,
        digits and at most one decimal point. Padded or exponent forms are not counted."""
        q = self.q
        return (
            f"({self.is_text} AND {q} <> '' AND ({q} NOT GLOB '*[^0-9]*' OR ({q} GLOB '*[0-9]*'"
            f" AND {q} NOT GLOB '*[^0-9.+-]*' AND {q} NOT GLOB '*.*.*' AND {q} NOT GLOB '?*[+-]*')))"
        )

    def numeric(self) -> str:
        return f"({self.q} < '' OR {self.numeric_text()})"

    def number_test(self, test: Callable[[str], tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
        """`test` of the value as a number, the text tests run once per cell: stored numbers as
        they are, numeric text (`numeric_text`) cast to REAL; anything else fails."""
        stored, stored_params = test(self.q)
        text, text_params = test(f"CAST({self.q} AS REAL)")
        return (
            f"(CASE WHEN {self.q} < '' THEN ({stored}) WHEN {self.numeric_text()} THEN ({text}) ELSE 0 END)",
            stored_params + text_params,
        )

    def date_parseable(self) -> str:
        q = self.q
        return f"(typeof({q}) = 'text' AND {q} GLOB '{_ISO_DATE_GLOB}*' AND julianday({q}) IS NOT NULL)"

    def julian(self) -> str:
        return f"julianday({self.q})"

    def date_in_range(self, low: str | None, high: str | None) -> tuple[str, list[Any]]:
        """Parseable (`date_parseable`) and within [low, high]: the date is read once (BETWEEN reads
        its operand once; a NULL date fails every comparison, so no separate parse test is needed)."""
        q = self.q
        if low is not None and high is not None:
            bounds, params = f"{self.julian()} BETWEEN julianday(?) AND julianday(?)", [low, high]
        else:
            condition, params = _range_condition(self.julian(), low, high, True, True)
            bounds = f"{condition.replace('?', 'julianday(?)')} AND {self.julian()} IS NOT NULL"
        return f"(typeof({q}) = 'text' AND {q} GLOB '{_ISO_DATE_GLOB}*' AND {bounds})", params

    def conforming(self, target_type: str) -> str:
        """Stored as the target type: canonical ISO text for dates (calendar checked by SQLite's
        date functions), integers for bigint and booleans (0/1), numbers, text, blobs."""
        q = self.q
        fraction = f"(substr({q}, 20, 1) = '.' AND substr({q}, 21, 1) GLOB '[0-9]')"
        return {
            "bigint": f"typeof({q}) = 'integer'",
            "numeric": f"typeof({q}) IN ('integer', 'real')",
            "double precision": f"typeof({q}) IN ('integer', 'real')",
            "boolean": f"(typeof({q}) = 'integer' AND {q} IN (0, 1))",
            "date": f"(typeof({q}) = 'text' AND date({q}, '+0 days') = {q})",
            "timestamp": f"(typeof({q}) = 'text' AND datetime({q}, '+0 days') = substr({q}, 1, 19)"
            f" AND (length({q}) = 19 OR ({fraction} AND substr({q}, 21) NOT GLOB '*[^0-9]*')))",
            "timestamptz": f"(typeof({q}) = 'text' AND substr({q}, 11, 1) = ' '"
            f" AND substr({q}, -6) GLOB '[+-][0-9][0-9]:[0-9][0-9]' AND julianday({q}) IS NOT NULL"
            f" AND (length({q}) = 25 OR {fraction}))",
            "bytea": f"typeof({q}) = 'blob'",
        }.get(target_type, f"typeof({q}) = 'text'")

    def key(self) -> str:
        """The value as a comparable key: integral numbers and digit strings as integers."""
        q = self.q
        return (
            f"(CASE WHEN typeof({q}) = 'text' AND {q} GLOB '[0-9]*' AND {q} NOT GLOB '*[^0-9]*' AND length({q}) <= 18"
            f" THEN CAST({q} AS INTEGER) WHEN typeof({q}) = 'real' AND {q} = CAST({q} AS INTEGER)"
            f" THEN CAST({q} AS INTEGER) ELSE {q} END)"
        )

    def in_values(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        holes = ", ".join("?" for _ in values)
        lowered = [str(v).strip().lower() for v in values]
        return f"lower(trim(CAST({self.q} AS TEXT), {_SQLITE_WS})) IN ({holes})", lowered


def _range_condition(
    value: str, low: Any, high: Any, low_inclusive: bool, high_inclusive: bool
) -> tuple[str, list[Any]]:
    parts, params = [], []
    if low is not None:
        parts.append(f"{value} {'>=' if low_inclusive else '>'} ?")
        params.append(low)
    if high is not None:
        parts.append(f"{value} {'<=' if high_inclusive else '<'} ?")
        params.append(high)
    return " AND ".join(parts) or "1", params


def _integer_in_range(number: str, low: Any, high: Any) -> tuple[str, list[Any]]:
    condition, params = _range_condition(number, low, high, True, True)
    return f"{number} = CAST({number} AS INTEGER) AND {condition}", params


def sqlite_count(measure: Measure, markers: tuple[str, ...]) -> tuple[str, list[Any]]:
    """The aggregate that counts `measure` alone (`count(...)`, or `count(DISTINCT ...)` for keys)."""
    if measure.kind == ROWS:
        return "count(*)", []
    column = _SqliteExpr(measure.column or "", markers)
    if measure.kind == DISTINCT_KEYS:
        return sqlite_distinct_keys(column)
    condition, params = sqlite_row_condition(measure, column, markers)
    return f"count(CASE WHEN {condition} THEN 1 END)", params


def sqlite_distinct_keys(column: _SqliteExpr) -> tuple[str, list[Any]]:
    """Distinct present values of `column`, compared as normalised keys (`_SqliteExpr.key`)."""
    present, params = column.present()
    return f"count(DISTINCT CASE WHEN {present} THEN {column.key()} END)", params


def sqlite_row_condition(measure: Measure, column: _SqliteExpr, markers: tuple[str, ...]) -> tuple[str, list[Any]]:
    """The condition a row meets to be counted by `measure` (a second column is named by `measure.args[0]`)."""
    kind, args, q = measure.kind, measure.args, column.q
    if kind == MISSING:
        return column.missing()
    if kind == BLANKS:
        return column.blank()
    if kind == CONFORMING:
        present, params = column.present()
        return f"{present} AND {column.conforming(args[0])}", params
    if kind == NUMERIC:
        return column.numeric(), []
    if kind == INTEGER_IN_RANGE:
        return column.number_test(lambda number: _integer_in_range(number, args[0], args[1]))
    if kind == VALUE_IN_RANGE:
        return column.number_test(lambda number: _range_condition(number, *args))
    if kind == VALUE_EQUALS:
        return column.number_test(lambda number: (f"{number} = ?", [args[0]]))
    if kind == DATE_PARSEABLE:
        return column.date_parseable(), []
    if kind == DATE_IN_RANGE:
        return column.date_in_range(args[0], args[1])
    if kind in (COMPARABLE, ORDERED):
        later = _SqliteExpr(args[0], markers)
        condition = f"{column.date_parseable()} AND {later.date_parseable()}"
        if kind == ORDERED:
            condition += f" AND {column.julian()} <= {later.julian()}"
        return condition, []
    if kind == TEXT_VALUES:
        return f"{q} >= ''", []
    if kind == NUL_BYTES:
        return f"typeof({q}) = 'text' AND instr(CAST({q} AS BLOB), X'00') > 0", []
    if kind == CRLF:
        return f"typeof({q}) = 'text' AND instr(CAST({q} AS BLOB), X'0D0A') > 0", []
    if kind == INVALID_UTF8:
        return _sqlite_utf8_candidates(q), [_NON_ASCII_GLOB]
    if kind == CONDITION_ROWS:
        return column.in_values(args)
    if kind == MISSING_WHEN:
        when, when_params = _SqliteExpr(args[0], markers).in_values(args[1:])
        missing, missing_params = column.missing()
        return f"{when} AND {missing}", when_params + missing_params
    raise ValueError(f"measure {kind!r} is not supported by the SQLite source")


class SqliteSource:
    """A SQLite file asked set-based questions; values judged by their storage class."""

    engine = "sqlite"
    uses_pg_names = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = f"sqlite:{path}"
        self._conn: sqlite3.Connection | None = None
        self._shared: _SharedCounts | None = None

    @contextmanager
    def connected(self) -> Iterator[sqlite3.Connection]:
        """Hold one read-only connection for the duration of a block (nested blocks share it)."""
        if self._conn is not None:
            yield self._conn
            return
        self._conn = open_readonly(self.path)
        try:
            self._shared = _shared_counts(self.path)
            if self.path.stat().st_size <= _IN_MEMORY_SORT_MAX_BYTES:
                self._conn.execute("PRAGMA temp_store = MEMORY")
            yield self._conn
        finally:
            self._conn.close()
            self._conn = None
            self._shared = None

    def tables(self) -> tuple[str, ...]:
        with self.connected() as conn:
            return tuple(list_tables(conn))

    def columns(self, table: str) -> tuple[str, ...]:
        with self.connected() as conn:
            return tuple(column.name for column in table_columns(conn, table))

    def measure(
        self, table: str, measures: Iterable[Measure], null_markers: Sequence[str] = DEFAULT_NULL_MARKERS
    ) -> dict[Measure, int]:
        """All `measures` of `table` in one scan. Measures often asked together of one column
        (missing + conforming, NUL bytes + non-UTF-8 candidates) share one packed sum, so each
        cell's class is computed once. Counts are shared by every source over the same unchanged
        file (the scorer and the rule engine): a measure already counted is not scanned again."""
        wanted = _ordered_unique(measures)
        if not wanted:
            return {}
        markers = _markers(null_markers)
        with self.connected():
            shared = self._shared
            assert shared is not None
            with shared.lock(("measure", table, markers)):
                known = shared.known(("measure", table, markers))
                todo = [measure for measure in wanted if measure not in known]
                if todo:
                    known.update(self._measure_uncached(table, todo, markers))
                return {measure: known[measure] for measure in wanted}

    def _measure_uncached(self, table: str, wanted: list[Measure], markers: tuple[str, ...]) -> dict[Measure, int]:
        with self.connected() as conn:
            rows = conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]
            width = max(rows.bit_length(), 1)
            fragments, params, packs = [], [], []
            for pack in _packs(wanted, fields_per_sum=_SUM_BITS // width):
                fragment, fragment_params = self._packed_sum(pack, width, markers)
                fragments.append(fragment)
                params.extend(fragment_params)
                packs.append(pack)
            row = conn.execute(f"SELECT {', '.join(fragments)} FROM {quote_ident(table)}", params).fetchone()
            counts: dict[Measure, int] = {}
            for pack, value in zip(packs, row, strict=True):
                counts.update(_unpack(pack, int(value or 0), width))
            for measure in wanted:
                if measure.kind == INVALID_UTF8 and counts[measure]:
                    counts[measure] = self._invalid_utf8(conn, table, measure.column or "")
        return counts

    def _packed_sum(self, pack: tuple[Measure, ...], width: int, markers: tuple[str, ...]) -> tuple[str, list[Any]]:
        """`sum()` of one term per measure, measure i weighted 2**(width * i): counts below 2**width
        each keep their own bit field, so several conditions cost one aggregate."""
        if len(pack) == 1 and pack[0].kind in _UNPACKABLE:
            return sqlite_count(pack[0], markers)
        terms, params = [], []
        index = 0
        while index < len(pack):
            measure = pack[index]
            column = _SqliteExpr(measure.column or "", markers)
            weight = 1 << (width * index)
            if _is_class_pair(pack, index):
                term, term_params = column.cell_class(pack[index + 1].args[0], weight, weight << width)
                index += 2
            else:
                condition, term_params = sqlite_row_condition(measure, column, markers)
                term = f"(CASE WHEN {condition} THEN {weight} ELSE 0 END)"
                index += 1
            terms.append(term)
            params.extend(term_params)
        return f"sum({' + '.join(terms)})", params

    def _invalid_utf8(self, conn: sqlite3.Connection, table: str, column: str) -> int:
        """Check the distinct non-ASCII candidates (found in SQL) for UTF-8 validity."""
        q = quote_ident(column)
        rows = conn.execute(
            f"SELECT CAST({q} AS BLOB), count(*) FROM {quote_ident(table)}"
            f" WHERE {_sqlite_utf8_candidates(q)} GROUP BY 1",
            [_NON_ASCII_GLOB],
        ).fetchall()
        return sum(count for raw, count in rows if not _is_utf8(raw))

    def duplicate_rows(self, table: str) -> int:
        with self.connected():
            assert self._shared is not None
            return self._shared.answer(("duplicates", table), lambda: self._duplicate_rows_uncached(table))

    def _duplicate_rows_uncached(self, table: str) -> int:
        q = quote_ident(table)
        with self.connected() as conn:
            total, distinct = conn.execute(
                f"SELECT (SELECT count(*) FROM {q}), (SELECT count(*) FROM (SELECT DISTINCT * FROM {q}))"
            ).fetchone()
        return int(total) - int(distinct)

    def orphans(self, link: Link, null_markers: Sequence[str] = DEFAULT_NULL_MARKERS) -> OrphanCount:
        markers = _markers(null_markers)
        with self.connected():
            assert self._shared is not None
            return self._shared.answer(("orphans", link, markers), lambda: self._orphans_uncached(link, markers))

    def _orphans_uncached(self, link: Link, markers: tuple[str, ...]) -> OrphanCount:
        counting, listing, params = sqlite_orphan_queries(
            quote_ident(link.child_table), _SqliteExpr(link.child_column, markers),
            quote_ident(link.parent_table), _SqliteExpr(link.parent_column, markers),
            link.ignore_values,
        )  # fmt: skip
        with self.connected() as conn:
            checked, orphans = conn.execute(counting, params).fetchone()
            examples = conn.execute(listing, params).fetchall()
        return OrphanCount(int(checked or 0), int(orphans or 0), tuple(str(k) for (k,) in examples))


def sqlite_orphan_queries(
    child_table: str,
    child: _SqliteExpr,
    parent_table: str,
    parent: _SqliteExpr,
    ignore_values: Sequence[str],
    weight: str | None = None,
) -> tuple[str, str, list[Any]]:
    """(counting query, examples query, their parameters) of a reference's orphans, tables given
    quoted. Each child row counts once, or `weight` times (a column of the child table) when its
    rows stand for several."""
    present, params = child.present()
    ignored = f"k NOT IN ({', '.join('?' for _ in ignore_values)})" if ignore_values else "1"
    carried = f", {weight} AS w" if weight else ""
    keys = (
        f"WITH parent AS (SELECT DISTINCT {parent.key()} AS k FROM {parent_table} WHERE {parent.q} IS NOT NULL),"
        f" child AS (SELECT {child.key()} AS k{carried} FROM {child_table} WHERE {present}),"
        f" checked AS (SELECT * FROM child WHERE {ignored})"
    )
    if weight:
        totals = "sum(w), sum(CASE WHEN k NOT IN (SELECT k FROM parent) THEN w END)"
    else:
        totals = "count(*), count(CASE WHEN k NOT IN (SELECT k FROM parent) THEN 1 END)"
    counting = f"{keys} SELECT {totals} FROM checked"
    listing = f"{keys} SELECT DISTINCT k FROM checked WHERE k NOT IN (SELECT k FROM parent) ORDER BY k LIMIT 5"
    return counting, listing, params + [_sqlite_key_value(value) for value in ignore_values]


# --- counts shared between sources over one unchanged SQLite file -------------------------------

_SHARED_FILES_KEPT = 4
_HEADER_BYTES = 100
T = TypeVar("T")


@dataclass
class _SharedCounts:
    """Everything counted over one version of one SQLite file, by every source that reads it.
    A lock per question makes a second asker wait for the first answer instead of scanning too."""

    _answers: dict[Hashable, Any] = field(default_factory=dict)
    _locks: dict[Hashable, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def known(self, key: Hashable) -> dict[Measure, int]:
        """The measures counted so far under `key`; read and extend it only while holding `lock(key)`."""
        with self._guard:
            return self._answers.setdefault(key, {})

    def answer(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`'s value, computed once per key: a second asker waits for the first answer."""
        with self.lock(key):
            with self._guard:
                if key in self._answers:
                    return self._answers[key]
            value = compute()
            with self._guard:
                self._answers[key] = value
            return value


_shared_registry: OrderedDict[tuple[Any, ...], _SharedCounts] = OrderedDict()
_shared_registry_guard = threading.Lock()


def _file_version(path: Path) -> tuple[Any, ...]:
    """What identifies one version of a SQLite file: its own state and that of a write-ahead log beside it."""
    return (os.path.realpath(path), _file_state(path), _file_state(Path(f"{path}-wal")))


def _file_state(path: Path) -> tuple[Any, ...] | None:
    """Inode, size, modification time and header (SQLite's change counter and schema cookie; a
    log's salts) of a file, or None when there is none."""
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, header)


def _shared_counts(path: Path) -> _SharedCounts:
    """The counts of this version of the file, shared by the sources reading it (the last few kept)."""
    version = _file_version(path)
    with _shared_registry_guard:
        shared = _shared_registry.pop(version, None) or _SharedCounts()
        _shared_registry[version] = shared
        while len(_shared_registry) > _SHARED_FILES_KEPT:
            _shared_registry.popitem(last=False)
        return shared


def _sqlite_key_value(value: Any) -> Any:
    """A configured value in the form `_SqliteExpr.key()` gives it: digit strings as integers."""
    text = str(value).strip()
    return int(text) if text.isdigit() and len(text) <= 18 else value


_SUM_BITS = 62  # SQLite sums are signed 64-bit integers
# Sorts (DISTINCT, GROUP BY) of files up to this size run in memory: about twice as fast, and
# memory stays bounded by the file size; bigger files sort through temporary files.
_IN_MEMORY_SORT_MAX_BYTES = 256 * 2**20
_UNPACKABLE = frozenset({ROWS, DISTINCT_KEYS})


def _is_class_pair(pack: Sequence[Measure], index: int) -> bool:
    return (
        index + 1 < len(pack)
        and pack[index].kind == MISSING
        and pack[index + 1].kind == CONFORMING
        and pack[index].column == pack[index + 1].column
    )


def _packs(measures: Sequence[Measure], fields_per_sum: int) -> list[tuple[Measure, ...]]:
    """Measures grouped into sums of at most `fields_per_sum` fields; one column's MISSING and
    CONFORMING stay adjacent (they are one CASE per cell). ROWS and DISTINCT_KEYS stand alone."""
    alone = [(m,) for m in measures if m.kind in _UNPACKABLE]
    by_column: dict[str | None, list[Measure]] = {}
    for measure in measures:
        if measure.kind not in _UNPACKABLE:
            by_column.setdefault(measure.column, []).append(measure)
    units: list[tuple[Measure, ...]] = []
    for column_measures in by_column.values():
        missing = [m for m in column_measures if m.kind == MISSING]
        conforming = [m for m in column_measures if m.kind == CONFORMING]
        paired = missing[:1] + conforming[:1] if missing and conforming else []
        if paired:
            units.append(tuple(paired))
        units.extend((m,) for m in column_measures if m not in paired)
    packs: list[tuple[Measure, ...]] = []
    current: list[Measure] = []
    for unit in units:
        if current and len(current) + len(unit) > max(fields_per_sum, 2):
            packs.append(tuple(current))
            current = []
        current.extend(unit)
    if current:
        packs.append(tuple(current))
    return alone + packs


def _unpack(pack: tuple[Measure, ...], value: int, width: int) -> dict[Measure, int]:
    if len(pack) == 1 and pack[0].kind in _UNPACKABLE:
        return {pack[0]: value}
    mask = (1 << width) - 1
    return {measure: (value >> (width * i)) & mask for i, measure in enumerate(pack)}


def _sqlite_utf8_candidates(q: str) -> str:
    return f"(typeof({q}) = 'blob' OR (typeof({q}) = 'text' AND {q} GLOB ?))"


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- PostgreSQL --------------------------------------------------------------------------------

_PG_FAMILIES = {
    "bigint": "int", "integer": "int", "smallint": "int",
    "numeric": "numeric", "double precision": "float", "real": "float",
    "boolean": "bool", "date": "date",
    "timestamp without time zone": "timestamp", "timestamp with time zone": "timestamptz",
    "text": "text", "character varying": "text", "character": "text", "bytea": "bytea",
}  # fmt: skip

# Which stored families hold each planned target type as that type.
_CONFORMING_FAMILIES = {
    "bigint": {"int"},
    "numeric": {"numeric", "float", "int"},
    "double precision": {"float", "numeric", "int"},
    "boolean": {"bool"},
    "date": {"date"},
    "timestamp": {"timestamp", "timestamptz"},
    "timestamptz": {"timestamptz", "timestamp"},
    "text": {"text"},
    "bytea": {"bytea"},
}
_NUMBER_FAMILIES = {"int", "numeric", "float"}
_DATE_FAMILIES = {"date", "timestamp", "timestamptz"}
_PG_NUMBER_RE = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)\s*$"
_PG_ISO_RE = (
    r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?\s*$"
)
_PG_WS = " \t\r\n"

TRUE = sql.SQL("TRUE")
FALSE = sql.SQL("FALSE")


class _PgExpr:
    """psycopg.sql fragments for one column of a PostgreSQL table, aware of its stored type."""

    def __init__(self, column: str, family: str, markers: tuple[str, ...]) -> None:
        self.q = sql.Identifier(column)
        self.family = family
        self.markers = markers

    def _literals(self, values: Iterable[Any]) -> sql.Composable:
        return sql.SQL(", ").join(sql.Literal(value) for value in values)

    @property
    def trimmed(self) -> sql.Composable:
        return sql.SQL("btrim({}, {})").format(self.q, sql.Literal(_PG_WS))

    def missing(self) -> sql.Composable:
        if self.family != "text":
            return sql.SQL("{} IS NULL").format(self.q)
        return sql.SQL("({} IS NULL OR {})").format(self.q, self.blank())

    def blank(self) -> sql.Composable:
        """A marker (short text, compared lower-cased), or text led by whitespace or empty that
        trims to one; the cheap tests (byte length, a C-collation compare) run first."""
        if self.family != "text":
            return FALSE
        longest = max(len(marker.encode("utf-8")) for marker in self.markers)
        return sql.SQL(
            "((octet_length({q}) <= {n} AND lower({q}) IN ({m}))"
            " OR ({q} COLLATE \"C\" < '!' AND lower({t}) IN ({m})))"
        ).format(q=self.q, n=sql.Literal(longest), m=self._literals(self.markers), t=self.trimmed)

    def present(self) -> sql.Composable:
        return sql.SQL("NOT {}").format(self.missing())

    def numeric(self) -> sql.Composable:
        if self.family in _NUMBER_FAMILIES:
            return sql.SQL("{} IS NOT NULL").format(self.q)
        if self.family == "text":
            return sql.SQL("{} ~ {}").format(self.q, sql.Literal(_PG_NUMBER_RE))
        return FALSE

    def number(self) -> sql.Composable:
        if self.family in _NUMBER_FAMILIES:
            return sql.SQL("{}::double precision").format(self.q)
        if self.family == "text":
            return sql.SQL("(CASE WHEN {q} ~ {re} THEN {t}::double precision END)").format(
                q=self.q, re=sql.Literal(_PG_NUMBER_RE), t=self.trimmed
            )
        return sql.SQL("NULL::double precision")

    def date_parseable(self) -> sql.Composable:
        if self.family in _DATE_FAMILIES:
            return sql.SQL("{} IS NOT NULL").format(self.q)
        if self.family == "text":
            return sql.SQL("{} ~ {}").format(self.q, sql.Literal(_PG_ISO_RE))
        return FALSE

    def date_key(self) -> sql.Composable:
        """A value that orders like the date: the timestamp itself, or the ISO text with `T` as a space."""
        if self.family in _DATE_FAMILIES:
            return sql.SQL("{}::timestamp").format(self.q)
        return sql.SQL("replace({}, 'T', ' ')").format(self.trimmed)

    def date_text_key(self) -> sql.Composable:
        if self.family in _DATE_FAMILIES:
            return sql.SQL("to_char({}::timestamp, 'YYYY-MM-DD HH24:MI:SS.US')").format(self.q)
        return sql.SQL("replace({}, 'T', ' ')").format(self.trimmed)

    def stored_as(self, target_type: str) -> sql.Composable:
        """Whether the column's type holds `target_type` (a constant: PostgreSQL columns are typed)."""
        return TRUE if self.family in _CONFORMING_FAMILIES.get(target_type, {"text"}) else FALSE

    def conforming(self, target_type: str) -> sql.Composable:
        return sql.SQL("{} AND {}").format(self.stored_as(target_type), self.present())

    def key(self) -> sql.Composable:
        if self.family == "int":
            return sql.SQL("{}::text").format(self.q)
        if self.family in ("numeric", "float"):
            return sql.SQL(
                "(CASE WHEN {q}::numeric = trunc({q}::numeric) THEN trunc({q}::numeric)::text ELSE {q}::text END)"
            ).format(q=self.q)
        if self.family == "text":
            return sql.SQL("(CASE WHEN {t} ~ '^[0-9]{{1,18}}$' THEN {t}::bigint::text ELSE {q} END)").format(
                t=self.trimmed, q=self.q
            )
        return sql.SQL("{}::text").format(self.q)

    def in_values(self, values: Sequence[Any]) -> sql.Composable:
        return sql.SQL("lower(btrim({}::text, {})) IN ({})").format(
            self.q, sql.Literal(_PG_WS), self._literals(str(v).strip().lower() for v in values)
        )


def _one_row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("an aggregate query returned no row")
    return tuple(row)


def _pg_groups(measures: Sequence[Measure]) -> list[tuple[Measure, ...]]:
    """One column's MISSING and CONFORMING as one pair (one CASE per cell); the rest alone."""
    groups: list[tuple[Measure, ...]] = []
    for pack in _packs(measures, fields_per_sum=2):
        if len(pack) == 2 and _is_class_pair(pack, 0):
            groups.append(pack)
        else:
            groups.extend((measure,) for measure in pack)
    return groups


def _pg_range(
    value: sql.Composable, low: Any, high: Any, low_inclusive: bool, high_inclusive: bool, cast: str = ""
) -> sql.Composable:
    parts = []
    if low is not None:
        low_op = sql.SQL(">=" if low_inclusive else ">")
        parts.append(sql.SQL("{} {} {}{}").format(value, low_op, sql.Literal(low), sql.SQL(cast)))
    if high is not None:
        high_op = sql.SQL("<=" if high_inclusive else "<")
        parts.append(sql.SQL("{} {} {}{}").format(value, high_op, sql.Literal(high), sql.SQL(cast)))
    return sql.SQL(" AND ").join(parts) if parts else TRUE


_COLUMNS_MOST_DISTINCT_FIRST = """
SELECT a.attname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY coalesce(CASE WHEN s.n_distinct >= 0 THEN s.n_distinct ELSE -s.n_distinct * c.reltuples END, 0) DESC,
         a.attnum
"""


class PostgresSource:
    """One schema of a PostgreSQL database; values judged by each column's real type."""

    engine = "postgres"
    uses_pg_names = True

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.label = f"postgres:{redact_dsn(dsn)}#{schema}"
        self._conn: psycopg.Connection | None = None
        self._families: dict[str, dict[str, str]] = {}

    @contextmanager
    def connected(self) -> Iterator[psycopg.Connection]:
        """Hold one autocommit connection for the duration of a block (nested blocks share it)."""
        if self._conn is not None:
            yield self._conn
            return
        try:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        except psycopg.OperationalError as error:
            raise TargetUnreachable(f"cannot connect to {redact_dsn(self.dsn)}: {error}".splitlines()[0]) from error
        try:
            yield self._conn
        finally:
            self._conn.close()
            self._conn = None

    def tables(self) -> tuple[str, ...]:
        with self.connected() as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY table_name",
                (self.schema,),
            ).fetchall()
        return tuple(name for (name,) in rows)

    def column_families(self, table: str) -> dict[str, str]:
        """Column name -> stored type family (`int`, `numeric`, `float`, `bool`, `date`, `timestamp`, ...)."""
        if table not in self._families:
            with self.connected() as conn:
                rows = conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                    (self.schema, table),
                ).fetchall()
            self._families[table] = {name: _PG_FAMILIES.get(data_type, "other") for name, data_type in rows}
        return self._families[table]

    def columns(self, table: str) -> tuple[str, ...]:
        return tuple(self.column_families(table))

    def _table(self, table: str) -> sql.Composable:
        return sql.Identifier(self.schema, table)

    def _expr(self, table: str, column: str, markers: tuple[str, ...]) -> _PgExpr:
        families = self.column_families(table)
        if column not in families:
            raise InputError(f"{self.schema}.{table} has no column {column!r}")
        return _PgExpr(column, families[column], markers)

    def measure(
        self, table: str, measures: Iterable[Measure], null_markers: Sequence[str] = DEFAULT_NULL_MARKERS
    ) -> dict[Measure, int]:
        wanted = _ordered_unique(measures)
        if not wanted:
            return {}
        markers = _markers(null_markers)
        groups = _pg_groups(wanted)
        with self.connected() as conn:
            fragments = [self._aggregate(table, group, markers) for group in groups]
            query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(fragments), self._table(table))
            row = conn.execute(query).fetchone()
        counts: dict[Measure, int] = {}
        for group, value in zip(groups, row or (), strict=True):
            counts.update(_unpack(group, int(value or 0), 32))
        return counts

    def _aggregate(self, table: str, group: tuple[Measure, ...], markers: tuple[str, ...]) -> sql.Composable:
        measure = group[0]
        if measure.kind == ROWS:
            return sql.SQL("count(*)")
        column = self._expr(table, measure.column or "", markers)
        if len(group) == 2 and measure.kind == MISSING:
            return sql.SQL("sum(CASE WHEN {} THEN 1 WHEN {} THEN {} ELSE 0 END)").format(
                column.missing(), column.stored_as(group[1].args[0]), sql.Literal(_TIMES_2_32)
            )
        if measure.kind == DISTINCT_KEYS:
            return sql.SQL("count(DISTINCT CASE WHEN {} THEN {} END)").format(column.present(), column.key())
        return sql.SQL("count(*) FILTER (WHERE {})").format(self._row_condition(table, measure, column, markers))

    def _row_condition(self, table: str, measure: Measure, column: _PgExpr, markers: tuple[str, ...]) -> sql.Composable:
        kind, args = measure.kind, measure.args
        if kind == MISSING:
            return column.missing()
        if kind == BLANKS:
            return column.blank()
        if kind == CONFORMING:
            return column.conforming(args[0])
        if kind == NUMERIC:
            return column.numeric()
        if kind == INTEGER_IN_RANGE:
            number = column.number()
            return sql.SQL("{} AND {} = trunc({}) AND {}").format(
                column.numeric(), number, number, _pg_range(number, args[0], args[1], True, True)
            )
        if kind == VALUE_IN_RANGE:
            return sql.SQL("{} AND {}").format(column.numeric(), _pg_range(column.number(), *args))
        if kind == VALUE_EQUALS:
            return sql.SQL("{} AND {} = {}").format(column.numeric(), column.number(), sql.Literal(args[0]))
        if kind == DATE_PARSEABLE:
            return column.date_parseable()
        if kind == DATE_IN_RANGE:
            if column.family in _DATE_FAMILIES:
                bounds = _pg_range(column.date_key(), args[0], args[1], True, True, "::timestamp")
            else:
                bounds = _pg_range(column.date_text_key(), args[0], args[1], True, True)
            return sql.SQL("{} AND {}").format(column.date_parseable(), bounds)
        if kind in (COMPARABLE, ORDERED):
            later = self._expr(table, args[0], markers)
            condition = sql.SQL("{} AND {}").format(column.date_parseable(), later.date_parseable())
            if kind == COMPARABLE:
                return condition
            both_typed = column.family in _DATE_FAMILIES and later.family in _DATE_FAMILIES
            early_key, late_key = (
                (column.date_key(), later.date_key()) if both_typed else (column.date_text_key(), later.date_text_key())
            )
            return sql.SQL("{} AND {} <= {}").format(condition, early_key, late_key)
        if kind == TEXT_VALUES:
            return sql.SQL("{} IS NOT NULL").format(column.q) if column.family == "text" else FALSE
        if kind == NUL_BYTES or kind == INVALID_UTF8:
            return FALSE  # PostgreSQL text cannot hold NUL bytes or invalid UTF-8
        if kind == CRLF:
            return sql.SQL("strpos({}, chr(13) || chr(10)) > 0").format(column.q) if column.family == "text" else FALSE
        if kind == CONDITION_ROWS:
            return column.in_values(args)
        if kind == MISSING_WHEN:
            when = self._expr(table, args[0], markers)
            return sql.SQL("{} AND {}").format(when.in_values(args[1:]), column.missing())
        raise ValueError(f"measure {kind!r} is not supported by the PostgreSQL source")

    def duplicate_rows(self, table: str) -> int:
        """Rows minus distinct rows. The columns are listed most-distinct first (by the statistics the
        load's ANALYZE left): the same answer, but the sort's comparisons mostly stop at the first column."""
        name = self._table(table)
        with self.connected() as conn:
            columns = [column for (column,) in conn.execute(_COLUMNS_MOST_DISTINCT_FIRST, (self.schema, table))]
            total, distinct = _one_row(conn.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {t}), (SELECT count(*) FROM (SELECT DISTINCT {c} FROM {t}) AS d)"
                ).format(t=name, c=sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("*"))
            ))
        return int(total) - int(distinct)

    def orphans(self, link: Link, null_markers: Sequence[str] = DEFAULT_NULL_MARKERS) -> OrphanCount:
        markers = _markers(null_markers)
        child = self._expr(link.child_table, link.child_column, markers)
        parent = self._expr(link.parent_table, link.parent_column, markers)
        ignored = (
            sql.SQL("k NOT IN ({})").format(sql.SQL(", ").join(sql.Literal(str(v)) for v in link.ignore_values))
            if link.ignore_values
            else TRUE
        )
        keys = sql.SQL(
            "WITH parent AS (SELECT DISTINCT {pk} AS k FROM {pt} WHERE {pq} IS NOT NULL),"
            " child AS (SELECT {ck} AS k FROM {ct} WHERE {present}),"
            " checked AS (SELECT k FROM child WHERE {ignored})"
        ).format(
            pk=parent.key(), pt=self._table(link.parent_table), pq=parent.q,
            ck=child.key(), ct=self._table(link.child_table), present=child.present(),
            ignored=ignored,
        )  # fmt: skip
        with self.connected() as conn:
            counting = "{} SELECT count(*), count(*) FILTER (WHERE k NOT IN (SELECT k FROM parent)) FROM checked"
            checked, orphans = _one_row(conn.execute(sql.SQL(counting).format(keys)))
            listing = "{} SELECT DISTINCT k FROM checked WHERE k NOT IN (SELECT k FROM parent) ORDER BY k LIMIT 5"
            examples = conn.execute(sql.SQL(listing).format(keys)).fetchall()
        return OrphanCount(int(checked), int(orphans or 0), tuple(str(k) for (k,) in examples))
