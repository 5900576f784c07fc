"""A table source over raw polars frames (`values.read_rows` layout) that answers exactly as `SqliteSource`.

The scorer and the rule engine ask a source for counts over whole tables. `SqliteSource` scans every
row of the file for each question; the profiler and the cleaner already hold every table as frames,
so this source answers from those instead. Most measures are a function of one cell's value (or of a
pair of cells), so each column is reduced once, in polars, to its distinct raw values with their
counts, and those are loaded into a private in-memory SQLite table `d(v, n)` whose column has the
source column's affinity. The very SQL fragments `SqliteSource` uses then run there, each value
weighted by `n`: the same date functions, GLOBs, affinity and comparison rules, on a fraction of
the rows. Duplicate rows are found in polars with SQLite's `DISTINCT` equality (1 = 1.0): a hash per
row, folded column by column as columns are reduced, and an exact comparison of the rows whose hash
repeats.

Distinct tables are built lazily, once per column (or column pair), and shared by every thread: one
source may serve the scorer and the rule engine at once. They may also be built ahead: a
`FramePreparer` builds every column's from each table's frame as the profiler hands it on, on a
thread of its own while the profiler decides, so once the plan exists only the counting is left.
Only distinct values and one hash per row are kept; frames are asked for a column or two at a time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import polars as pl

from servicedesk_etl.profiling import sources as m
from servicedesk_etl.profiling.sources import (
    _NON_ASCII_GLOB,
    _SUM_BITS,
    DEFAULT_NULL_MARKERS,
    Link,
    Measure,
    OrphanCount,
    _is_utf8,
    _markers,
    _ordered_unique,
    _SharedCounts,
    _sqlite_utf8_candidates,
    _SqliteExpr,
    _unpack,
    sqlite_distinct_keys,
    sqlite_orphan_queries,
    sqlite_row_condition,
)
from servicedesk_etl.sqlite_source import (
    SourceColumn,
    list_tables,
    open_readonly,
    quote_ident,
    readonly_uri,
    sqlite_affinity,
    table_columns,
)

log = logging.getLogger(__name__)

FrameLoader = Callable[[str, Sequence[str]], pl.DataFrame]
"""`(table, columns) -> frame`: every row of the table, with (at least) the raw Struct columns asked
for, as the file stores them (`values.read_rows`: not a sample, not values before affinity)."""

_ROWS_PER_INSERT = 500  # rows bound per INSERT statement
_ROWS_PER_CHUNK = 50_000  # rows turned into Python values at once (memory stays flat)
_CELLS_PER_LOAD = 2_000_000  # rows x columns asked of the frames at once: memory stays flat
_COLUMNS_PER_LOAD = 8  # columns one worker reduces per load, so workers share a table
_WORKERS = 2  # units built and counted at once (SQLite and polars release the GIL)
_ON_FILE_MIN_ROWS = 20_000  # a shorter column is always copied: its table is cheap
_ON_FILE_SHARE = 0.5  # distinct values, as a share of rows, from which a column is counted on the file
_VALUE = "v"
_OTHER = "w"
_WEIGHT = "n"
_INT64_LOW = -(2.0**63)
_INT64_HIGH = 2.0**63
_FIELD_OF_CLASS = {"integer": "i", "real": "r", "text": "s", "badtext": "b", "blob": "b"}
_HOLES = {"integer": "?", "real": "?", "text": "?", "blob": "?", "badtext": "CAST(? AS TEXT)", "null": "NULL"}
_ONLY_FIELD_CLASS = {"i": "integer", "r": "real", "s": "text"}
DEFAULT_PREPARE_BUDGET = 32 * 2**20  # distinct tables built while the profiler still holds its frames
DEFAULT_PREPARE_ROWS = 500_000  # rows of the largest frame prepared while the profiler works


class UnsupportedSchema(ValueError):
    """A table whose values SQLite compares in a way the distinct tables cannot reproduce (a column
    collation other than BINARY): ask `sources.sqlite_source` instead."""


def sqlite_schema(path: Path | str) -> dict[str, tuple[SourceColumn, ...]]:
    """Every user table of a SQLite file (name order) with its columns in source order, read read-only.

    A column of a STRICT table declared ANY is given as declared "" (it has no affinity). Raises
    UnsupportedSchema for a column with a collation other than BINARY."""
    conn = open_readonly(path)
    try:
        strict = _strict_tables(conn)
        schema = {}
        for table in list_tables(conn):
            columns = tuple(table_columns(conn, table))
            for column in columns:
                collation = _collation(conn, table, column.name)
                if collation != "BINARY":
                    raise UnsupportedSchema(f"{table}.{column.name} compares text with COLLATE {collation}")
            if table in strict:
                columns = tuple(
                    replace(column, declared_type="") if column.declared_type.upper() == "ANY" else column
                    for column in columns
                )
            schema[table] = columns
        return schema
    finally:
        conn.close()


def _strict_tables(conn: sqlite3.Connection) -> set[str]:
    try:
        rows = conn.execute("SELECT name FROM pragma_table_list WHERE strict").fetchall()
    except sqlite3.OperationalError:  # SQLite before 3.37 has neither the pragma nor STRICT tables
        return set()
    return {name for (name,) in rows}


def _collation(conn: sqlite3.Connection, table: str, column: str) -> str:
    """The collation SQLite uses to compare the column's text, read from the compiled comparison
    (EXPLAIN names it in the comparison's P4, as `BINARY-8`)."""
    program = conn.execute(f"EXPLAIN SELECT {quote_ident(column)} < '' FROM {quote_ident(table)}").fetchall()
    for row in program:
        if row[1] in ("Lt", "Le", "Gt", "Ge") and isinstance(row[5], str):
            return row[5].rsplit("-", 1)[0].upper()
    return "BINARY"


def frame_source(
    path: Path | str, frames: Mapping[str, pl.DataFrame] | FrameLoader, label: str | None = None
) -> FrameSource:
    """A source over the frames read from the SQLite file at `path` (its schema is read from the file;
    its label is `SqliteSource`'s, so reports read the same)."""
    return FrameSource(sqlite_schema(path), frames, label=label or f"sqlite:{path}", file=path)


@dataclass
class _Distinct:
    """One column's (or column pair's) distinct raw values and their counts, in a private SQLite table `d`."""

    conn: sqlite3.Connection
    rows: int
    values: int = 0  # rows of `d`
    bytes: int = 0  # size of the in-memory database
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_file: bool = False  # `d` is a view of the column in the file itself (see `_file_view`)


@dataclass(frozen=True)
class _RowHash:
    """A table's row hashes over the columns folded in so far (XOR of per-column hashes)."""

    hashes: pl.Series
    columns: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Part:
    """Distinct rows sharing one storage class per column (`classes`): `values` holds one column per
    source column (named `v0`, `v1`; a NULL class has none) and the rows' counts (`n`)."""

    classes: tuple[str, ...]
    values: pl.DataFrame


class FrameSource:
    """A `TableSource` over raw polars frames, answering every measure as `SqliteSource` does for
    the file the frames were read from.

    `schema`: table -> its columns in source order (name and declared type, which sets SQLite
    affinity). `frames`: each table's raw frame, or a loader `(table, columns) -> frame` called for a
    few columns at a time (at most one table's columns are held at once; only distinct values are
    kept). Thread-safe: one instance may serve the scorer and the rule engine at once.
    """

    engine = "sqlite"
    uses_pg_names = False

    def __init__(
        self,
        schema: Mapping[str, Sequence[SourceColumn]],
        frames: Mapping[str, pl.DataFrame] | FrameLoader | None,
        *,
        label: str = "frames",
        file: Path | str | None = None,
    ) -> None:
        self.label = label
        self._file = file
        self._schema = {table: tuple(columns) for table, columns in schema.items()}
        self._load: FrameLoader = _unserved
        if frames is not None:
            self.serve(frames)
        self._guard = threading.Lock()
        self._distinct: dict[tuple[str, ...], _Distinct] = {}
        self._building: dict[tuple[str, ...], threading.Event] = {}
        self._counts = _SharedCounts()
        self._rows: dict[str, int] = {}
        self._row_hashes: dict[str, _RowHash] = {}

    def serve(self, frames: Mapping[str, pl.DataFrame] | FrameLoader) -> None:
        """Answer from `frames` (a mapping or a loader) from now on: what `prepare` built stays."""
        self._load = frames if callable(frames) else _mapping_loader(frames)

    def prepare(self, table: str, frame: pl.DataFrame) -> int:
        """Build the one-column distinct tables of the columns `frame` holds (every row of `table`), and
        fold their row hashes, as the profiler hands the frame on, before any plan exists: measures
        asked later only count. Returns the bytes of the distinct tables built."""
        held = set(frame.columns)
        units = [("column", table, column.name) for column in self._schema.get(table, ()) if column.name in held]
        with self._guard:
            self._rows.setdefault(table, frame.height)
        return self._build_from(table, frame, units)

    def count_prepared(
        self,
        table: str,
        measures: Iterable[Measure],
        null_markers: Sequence[str] = DEFAULT_NULL_MARKERS,
        frame: pl.DataFrame | None = None,
        links: Iterable[Link] = (),
    ) -> int:
        """Count now the measures whose distinct tables are built (by `prepare`), so that `measure`
        later finds them counted; the others are left until asked. Given the table's whole `frame`,
        the column pairs asked are built from it first. Of `links`, those whose two columns have
        distinct tables of their own are counted too (`orphans`). Returns how many measures were counted."""
        wanted = [measure for measure in measures if measure.kind != m.ROWS]
        if frame is not None:
            held = set(frame.columns)
            pairs = {_unit(table, measure) for measure in wanted if measure.kind in _PAIR_KINDS}
            self._build_from(table, frame, [unit for unit in pairs if held.issuperset(unit[2:])])
        with self._guard:
            built = {unit: distinct.on_file for unit, distinct in self._distinct.items()}
        ready = [measure for measure in wanted if _unit(table, measure) in built]
        if ready:
            self.measure(table, ready, null_markers)
        for link in links:
            ends = [("column", link.child_table, link.child_column), ("column", link.parent_table, link.parent_column)]
            if all(built.get(unit) is False for unit in ends):  # a view on the file would need the frames
                self.orphans(link, null_markers)
        return len(ready)

    def count_duplicates(self, table: str, frame: pl.DataFrame) -> int:
        """`duplicate_rows(table)` counted from the table's whole `frame` (its row hashes folded by `prepare`)."""
        return self._duplicates(table, _mapping_loader({table: frame}))

    def _build_from(self, table: str, frame: pl.DataFrame, units: Iterable[tuple[str, ...]]) -> int:
        """Build, from `frame`, the units nobody has built or is building. Returns the bytes built."""
        with self._guard:
            claimed = [unit for unit in units if unit not in self._distinct and unit not in self._building]
            for unit in claimed:
                self._building[unit] = threading.Event()
        built = 0
        try:
            for unit in claimed:
                distinct = self._build_unit(table, frame, list(unit[2:]))
                built += distinct.bytes
                with self._guard:
                    self._distinct[unit] = distinct
                    self._building.pop(unit).set()
        finally:
            with self._guard:
                for unit in claimed:
                    if unit in self._building:
                        self._building.pop(unit).set()
        return built

    @contextmanager
    def connected(self) -> Iterator[FrameSource]:
        """Nothing to open: distinct tables live as long as the source (or until `close`)."""
        yield self

    def close(self) -> None:
        """Free the distinct tables (they are rebuilt if asked again)."""
        with self._guard:
            built, self._distinct = self._distinct, {}
            self._counts = _SharedCounts()
            self._row_hashes.clear()
        for distinct in built.values():
            with distinct.lock:
                distinct.conn.close()

    def tables(self) -> tuple[str, ...]:
        return tuple(self._schema)

    def columns(self, table: str) -> tuple[str, ...]:
        return tuple(column.name for column in self._schema.get(table, ()))

    # --- measures ---------------------------------------------------------------------------

    def measure(
        self, table: str, measures: Iterable[Measure], null_markers: Sequence[str] = DEFAULT_NULL_MARKERS
    ) -> dict[Measure, int]:
        """Each measure counted over the distinct values of its column (or column pair), weighted by
        their counts. Like `SqliteSource`, a column's first CONFORMING asked together with its
        MISSING is judged by the cell class (`_SqliteExpr.cell_class`)."""
        wanted = _ordered_unique(measures)
        if not wanted:
            return {}
        markers = _markers(null_markers)
        classed = _class_paired(wanted)
        by_unit: dict[tuple[str, ...], list[Measure]] = {}
        for measure in wanted:
            if measure.kind != m.ROWS:
                by_unit.setdefault(_unit(table, measure), []).append(measure)
        counts: dict[Measure, int] = {}
        if any(measure.kind == m.ROWS for measure in wanted):
            counts[Measure(m.ROWS)] = self._row_count(table)
        units = sorted(by_unit, key=self._size, reverse=True)  # the longest first: workers end together
        with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="frame-source") as pool:
            found = [
                pool.submit(self._unit_counts, table, unit, by_unit[unit], markers, classed, units) for unit in units
            ]
            for future in found:
                counts.update(future.result())
        return {measure: counts[measure] for measure in wanted}

    def _unit_counts(
        self,
        table: str,
        unit: tuple[str, ...],
        measures: list[Measure],
        markers: tuple[str, ...],
        classed: set[Measure],
        siblings: Sequence[tuple[str, ...]] = (),
    ) -> dict[Measure, int]:
        keys = {measure: (measure, measure in classed) for measure in measures}
        distinct = self._built(table, unit, siblings)
        with distinct.lock:  # one counter per unit at a time, so its counts are read and extended alone
            known = self._counts.known(("measure", unit, markers))
            todo = [measure for measure in measures if keys[measure] not in known]
            if todo:
                found = _count_distinct(distinct.conn, todo, markers, classed, distinct.rows)
                known.update({keys[measure]: value for measure, value in found.items()})
            return {measure: known[keys[measure]] for measure in measures}

    def _size(self, unit: tuple[str, ...]) -> int:
        """Rows of the unit's distinct table, 0 while it is not built."""
        with self._guard:
            built = self._distinct.get(unit)
        return built.values if built is not None else 0

    def _row_count(self, table: str) -> int:
        with self._guard:
            if table in self._rows:
                return self._rows[table]
        names = [column.name for column in self._schema[table]][:1]
        rows = self._load(table, names).height
        with self._guard:
            self._rows[table] = rows
        return rows

    def _built(self, table: str, unit: tuple[str, ...], siblings: Sequence[tuple[str, ...]] = ()) -> _Distinct:
        """The unit's distinct table: built here if nobody has, else awaited from its builder. A
        builder also claims a few unbuilt `siblings` (one column each) to load with it in one call."""
        while True:
            with self._guard:
                if unit in self._distinct:
                    return self._distinct[unit]
                building = self._building.get(unit)
                if building is None:
                    claimed = [unit, *self._claimable(table, unit, siblings)]
                    for each in claimed:
                        self._building[each] = threading.Event()
            if building is not None:
                building.wait()  # if that builder failed, the next round builds here (and raises)
                continue
            try:
                self._build(table, claimed)
            finally:
                with self._guard:
                    for each in claimed:
                        self._building.pop(each).set()

    def _claimable(
        self, table: str, unit: tuple[str, ...], siblings: Sequence[tuple[str, ...]]
    ) -> list[tuple[str, ...]]:
        """Unbuilt one-column siblings to build with `unit` (call holding the guard): as many as keep a
        load within `_CELLS_PER_LOAD` once the table's row count is known, and at most
        `_COLUMNS_PER_LOAD`, so other workers still find units to build."""
        if unit[0] != "column" or table not in self._rows:
            return []
        room = min(_COLUMNS_PER_LOAD, _CELLS_PER_LOAD // max(self._rows[table], 1)) - 1
        free = [
            sibling
            for sibling in siblings
            if sibling != unit and sibling[0] == "column" and sibling not in self._distinct
            and sibling not in self._building
        ]  # fmt: skip
        return free[: max(room, 0)]

    def _build(self, table: str, units: list[tuple[str, ...]]) -> None:
        frame = self._load(table, list(dict.fromkeys(name for unit in units for name in unit[2:])))
        with self._guard:
            self._rows.setdefault(table, frame.height)
        for unit in units:
            distinct = self._build_unit(table, frame, list(unit[2:]))
            with self._guard:
                self._distinct[unit] = distinct

    def _build_unit(self, table: str, frame: pl.DataFrame, columns: list[str], on_file: bool = True) -> _Distinct:
        affinities = [self._affinity(table, name) for name in columns]
        if len(columns) == 1:
            fields = _fields(frame.get_column(columns[0]))
            self._fold(table, {columns[0]: fields}, frame.height)
            if on_file and self._file is not None and _nearly_unique(fields):
                return _file_view(self._file, table, columns[0], frame.height)
            parts = _single_field_parts(fields)
            if parts is not None:
                return _load_distinct(parts, affinities, frame.height)
        values = frame.select([pl.col(name).alias(f"u{index}") for index, name in enumerate(columns)])
        return _load_distinct(_grouped_parts(values), affinities, frame.height)

    def _affinity(self, table: str, column: str) -> str:
        declared = next((c.declared_type for c in self._schema[table] if c.name == column), "")
        return sqlite_affinity(declared)

    # --- duplicate rows and orphans -----------------------------------------------------------

    def duplicate_rows(self, table: str) -> int:
        """Rows equal to an earlier row in every column, as `SELECT DISTINCT *` sees them."""
        return self._duplicates(table, self._load)

    def _duplicates(self, table: str, load: FrameLoader) -> int:
        return self._counts.answer(("duplicates", table), lambda: self._duplicate_rows_uncached(table, load))

    def _duplicate_rows_uncached(self, table: str, load: FrameLoader) -> int:
        """Each row's hash is folded together column by column as columns are reduced for measures
        (the rest are loaded here); only rows whose hash repeats are then compared
        exactly. No table is ever held whole: columns are loaded `_CELLS_PER_LOAD` cells at a time."""
        names = [column.name for column in self._schema[table]]
        with self._guard:
            folded = set(self._row_hashes[table].columns) if table in self._row_hashes else set()
        remaining = [name for name in names if name not in folded]
        per_load = self._columns_per_load(table)
        for start in range(0, len(remaining), per_load):
            group = remaining[start : start + per_load]
            frame = load(table, group)
            self._fold(table, {name: _fields(frame.get_column(name)) for name in group}, frame.height)
        with self._guard:
            hashes = self._row_hashes[table].hashes if table in self._row_hashes else None
        if hashes is None or hashes.n_unique() == hashes.len():
            return 0
        suspect = hashes.is_duplicated()
        suspects = int(suspect.sum())
        parts: list[pl.DataFrame] = []
        for start in range(0, len(names), per_load):
            group = names[start : start + per_load]
            frame = load(table, group).select(group).filter(suspect)
            parts += [_keys(_fields(frame.get_column(name)), start + offset) for offset, name in enumerate(group)]
        parts = [part for part in parts if part.width]
        if not parts:  # every column NULL in every suspect row: they are one row
            return suspects - 1
        return suspects - pl.concat(parts, how="horizontal").n_unique()

    def _columns_per_load(self, table: str) -> int:
        return max(1, _CELLS_PER_LOAD // max(self._row_count(table), 1))

    def _fold(self, table: str, columns: Mapping[str, pl.DataFrame], rows: int) -> None:
        """Fold columns (each as its unnested fields) not folded yet into the table's row hashes."""
        positions = {column.name: position for position, column in enumerate(self._schema[table])}
        with self._guard:
            done = self._row_hashes[table].columns if table in self._row_hashes else frozenset()
        hashed = {name: _column_hash(fields, positions[name]) for name, fields in columns.items() if name not in done}
        if not hashed:
            return
        with self._guard:
            current = self._row_hashes.get(table) or _RowHash(pl.zeros(rows, dtype=pl.UInt64, eager=True))
            new = [name for name in hashed if name not in current.columns]  # another thread may have folded some
            hashes = current.hashes
            for name in new:
                column = hashed[name]
                hashes = hashes if column is None else hashes ^ column
            self._row_hashes[table] = _RowHash(hashes, current.columns | set(new))

    def orphans(self, link: Link, null_markers: Sequence[str] = DEFAULT_NULL_MARKERS) -> OrphanCount:
        markers = _markers(null_markers)
        return self._counts.answer(("orphans", link, markers), lambda: self._orphans_uncached(link, markers))

    def _orphans_uncached(self, link: Link, markers: tuple[str, ...]) -> OrphanCount:
        child_unit = ("column", link.child_table, link.child_column)
        parent_unit = ("column", link.parent_table, link.parent_column)
        self._built(link.child_table, child_unit)
        self._built(link.parent_table, parent_unit)
        conn = sqlite3.connect(":memory:")
        try:
            conn.deserialize(self._serialized(child_unit))
            conn.execute("ATTACH ':memory:' AS parent_values")
            conn.deserialize(self._serialized(parent_unit), name="parent_values")
            counting, listing, params = sqlite_orphan_queries(
                "main.d", _SqliteExpr(_VALUE, markers), "parent_values.d", _SqliteExpr(_VALUE, markers),
                link.ignore_values, weight=_WEIGHT,
            )  # fmt: skip
            checked, orphans = conn.execute(counting, params).fetchone()
            examples = conn.execute(listing, params).fetchall()
        finally:
            conn.close()
        return OrphanCount(int(checked or 0), int(orphans or 0), tuple(str(k) for (k,) in examples))

    def _serialized(self, unit: tuple[str, ...]) -> bytes:
        """The unit's distinct table as a database image. A view on the file has no table to image: one
        is built from the frames for the image alone (the view keeps answering measures)."""
        distinct = self._distinct[unit]
        if distinct.on_file:
            table, column = unit[1], unit[2]
            distinct = self._build_unit(table, self._load(table, [column]), [column], on_file=False)
            try:
                return distinct.conn.serialize()
            finally:
                distinct.conn.close()
        with distinct.lock:
            return distinct.conn.serialize()


class FramePreparer:
    """Prepares a `FrameSource` from each table's frame on a background thread while the profiler
    decides that table and reads the next (`add` is a profiler `on_table` hook). Once a table's plan
    is decided, `count_ahead` counts on that same thread what the plan's gates will ask of it, while
    the profiler reads on. A table prepared from its whole frame has its duplicate rows counted as it
    is prepared, and the column pairs the gates compare built from that frame when it is counted
    ahead. `finish` waits and hands the source over; only what was not prepared or counted ahead is
    then left.

    Memory stays bounded: one frame at a time is prepared (`add` first waits for the previous one);
    a whole frame prepared is kept only until its table is counted ahead (called as soon as the
    profiler has decided it). A frame of more than `max_rows` rows is not prepared (its work would
    add to the profiler's peak), nor is any once the distinct tables built reach `budget_bytes`.
    Columns not prepared are built when first measured, as before."""

    def __init__(
        self, source: FrameSource, budget_bytes: int = DEFAULT_PREPARE_BUDGET, max_rows: int = DEFAULT_PREPARE_ROWS
    ) -> None:
        self._source = source
        self._budget = budget_bytes
        self._max_rows = max_rows
        self._built = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-prepare")
        self._pending: Future[int] | None = None
        self._counting: list[Future[int]] = []
        self._whole: dict[str, pl.DataFrame] = {}  # frames prepared whole, until their table is counted
        self._lock = threading.Lock()

    def add(self, table: str, frame: pl.DataFrame) -> None:
        self._wait()
        if self._built < self._budget and frame.height <= self._max_rows:
            whole = set(frame.columns).issuperset(self._source.columns(table))  # not a group of columns
            if whole:
                with self._lock:
                    self._whole[table] = frame
            self._pending = self._pool.submit(self._prepare, table, frame, whole)

    def _prepare(self, table: str, frame: pl.DataFrame, whole: bool) -> int:
        """Build the frame's distinct tables; a whole table has its duplicate rows counted too."""
        built = self._source.prepare(table, frame)
        if whole:
            self._source.count_duplicates(table, frame)
        return built

    @property
    def source(self) -> FrameSource:
        """The source being prepared (to read its schema; count through `count_ahead`)."""
        return self._source

    def count_ahead(
        self,
        table: str,
        questions: Callable[[], tuple[Iterable[Measure], Iterable[Link]]],
        null_markers: Sequence[str] = DEFAULT_NULL_MARKERS,
    ) -> None:
        """Count what `questions()` gives, the measures of `table` and the links whose orphans will be
        asked (`FrameSource.count_prepared`, given its whole frame if it was prepared from one), after
        what was added before, on the preparing thread: call it once the table was added, from any thread."""

        def count() -> int:
            with self._lock:
                frame = self._whole.pop(table, None)
            measures, links = questions()
            return self._source.count_prepared(table, measures, null_markers, frame, links)

        self._counting.append(self._pool.submit(count))

    def finish(self, frames: Mapping[str, pl.DataFrame] | FrameLoader) -> FrameSource:
        """The prepared source, answering from `frames` for anything not prepared."""
        try:
            self._wait()
            for counting in self._counting:
                counting.result()
        finally:
            self._pool.shutdown(wait=True)
            self._whole.clear()
        self._source.serve(frames)
        return self._source

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._built += pending.result()

    def discard(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._whole.clear()
        self._source.close()


def frame_preparer(
    path: Path | str,
    label: str | None = None,
    budget_bytes: int = DEFAULT_PREPARE_BUDGET,
    max_rows: int = DEFAULT_PREPARE_ROWS,
) -> FramePreparer | None:
    """A preparer of a source over the frames of the SQLite file at `path`, or None when the file
    compares text in a way only SQLite itself reproduces (`UnsupportedSchema`)."""
    try:
        schema = sqlite_schema(path)
    except UnsupportedSchema as reason:
        log.info("no frame source for %s: %s", path, reason)
        return None
    return FramePreparer(FrameSource(schema, None, label=label or f"sqlite:{path}", file=path), budget_bytes, max_rows)


# --- helpers --------------------------------------------------------------------------------------


def _unserved(table: str, columns: Sequence[str]) -> pl.DataFrame:
    raise RuntimeError(f"FrameSource asked for {table} before it was given frames (call serve first)")


def _mapping_loader(frames: Mapping[str, pl.DataFrame]) -> FrameLoader:
    def load(table: str, columns: Sequence[str]) -> pl.DataFrame:
        frame = frames[table]
        return frame.select(list(columns)) if columns else frame.select(pl.first()) if frame.width else frame

    return load


_PAIR_KINDS = frozenset({m.COMPARABLE, m.ORDERED, m.MISSING_WHEN})


def _unit(table: str, measure: Measure) -> tuple[str, ...]:
    """The values a measure depends on: one column, or (COMPARABLE, ORDERED, MISSING_WHEN) two."""
    column = measure.column or ""
    if measure.kind in _PAIR_KINDS:
        return ("pair", table, column, str(measure.args[0]))
    return ("column", table, column)


def _class_paired(measures: list[Measure]) -> set[Measure]:
    """The CONFORMING measures `SqliteSource` counts through the cell class: a column's first
    CONFORMING when its MISSING is asked in the same call (`sources._packs`)."""
    classed: set[Measure] = set()
    columns_with_missing = {measure.column for measure in measures if measure.kind == m.MISSING}
    seen: set[str | None] = set()
    for measure in measures:
        if measure.kind == m.CONFORMING and measure.column in columns_with_missing and measure.column not in seen:
            classed.add(measure)
            seen.add(measure.column)
    return classed


def _local(measure: Measure) -> Measure:
    """The measure over a distinct table: its column is `v`, a second column `w`."""
    if measure.kind in (m.COMPARABLE, m.ORDERED, m.MISSING_WHEN):
        return Measure(measure.kind, _VALUE, (_OTHER, *measure.args[1:]))
    return Measure(measure.kind, _VALUE, measure.args)


def _count_distinct(
    conn: sqlite3.Connection, measures: list[Measure], markers: tuple[str, ...], classed: set[Measure], rows: int
) -> dict[Measure, int]:
    """All `measures` of one distinct table in one query, each value weighted by its count. A column's
    MISSING and cell-class CONFORMING share one CASE per value, packed in one sum as `SqliteSource` does."""
    column = _SqliteExpr(_VALUE, markers)
    width = max(rows.bit_length(), 1)
    fragments: list[str] = []
    params: list[Any] = []
    asked: list[tuple[Measure, ...]] = []
    counts: dict[Measure, int] = {}
    missing = next((measure for measure in measures if measure.kind == m.MISSING), None)
    for measure in measures:
        if measure.kind == m.INVALID_UTF8:
            counts[measure] = _invalid_utf8(conn, column)
            continue
        if measure in classed and missing is not None and 2 * width <= _SUM_BITS:
            cell_class, fragment_params = column.cell_class(measure.args[0], 1, 1 << width)
            fragment, pack = f"sum({_WEIGHT} * {cell_class})", (missing, measure)
        elif measure is missing and any(other in classed for other in measures) and 2 * width <= _SUM_BITS:
            continue  # counted with its CONFORMING
        elif measure.kind == m.DISTINCT_KEYS:
            (fragment, fragment_params), pack = sqlite_distinct_keys(column), (measure,)
        else:
            if measure in classed:
                condition, fragment_params = column.cell_class(measure.args[0], 1, 2)
                condition = f"{condition} = 2"
            else:
                condition, fragment_params = sqlite_row_condition(_local(measure), column, markers)
            fragment, pack = f"sum(CASE WHEN {condition} THEN {_WEIGHT} ELSE 0 END)", (measure,)
        fragments.append(fragment)
        params.extend(fragment_params)
        asked.append(pack)
    if asked:
        row = conn.execute(f"SELECT {', '.join(fragments)} FROM d", params).fetchone()
        for pack, value in zip(asked, row, strict=True):
            counts.update(_unpack(pack, int(value or 0), width))
    return counts


def _invalid_utf8(conn: sqlite3.Connection, column: _SqliteExpr) -> int:
    """Rows whose text or blob is not valid UTF-8: the non-ASCII candidates (found in SQL) decoded."""
    candidates = conn.execute(
        f"SELECT CAST({column.q} AS BLOB), {_WEIGHT} FROM d WHERE {_sqlite_utf8_candidates(column.q)}",
        [_NON_ASCII_GLOB],
    ).fetchall()
    return sum(count for raw, count in candidates if not _is_utf8(raw))


def _load_distinct(parts: list[_Part], affinities: list[str], rows: int) -> _Distinct:
    """Distinct rows and their counts in a new in-memory SQLite table `d(v[, w], n)`."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    names = [_VALUE, _OTHER][: len(affinities)]
    declared = ", ".join(f"{name} {affinity}" for name, affinity in zip(names, affinities, strict=True))
    conn.execute(f"CREATE TABLE d ({declared}, {_WEIGHT} INTEGER)")
    for part in parts:
        holes = ", ".join(_HOLES[cls] for cls in part.classes)
        for start in range(0, part.values.height, _ROWS_PER_CHUNK):
            chunk = part.values.slice(start, _ROWS_PER_CHUNK)
            values = zip(*(chunk.get_column(name).to_list() for name in chunk.columns), strict=True)
            _insert_rows(conn, f"({holes}, ?)", len(chunk.columns), list(chain.from_iterable(values)))
    conn.commit()
    (pages,), (page_size,) = conn.execute("PRAGMA page_count").fetchone(), conn.execute("PRAGMA page_size").fetchone()
    return _Distinct(conn, rows, sum(part.values.height for part in parts), pages * page_size)


def _nearly_unique(fields: pl.DataFrame) -> bool:
    """A long column of one value field whose values nearly all differ (ids, timestamps, free text):
    its distinct table would be about as long as the table, so it is counted on the file instead."""
    used = _used(fields)
    if fields.height < _ON_FILE_MIN_ROWS or len(used) != 1 or used == ["b"]:
        return False
    return fields.get_column(used[0]).approx_n_unique() >= _ON_FILE_SHARE * fields.height


def _file_view(file: Path | str, table: str, column: str, rows: int) -> _Distinct:
    """`d(v, n)` as a view of the column in the file itself, every row once: the measures' SQL then
    runs exactly as `SqliteSource` runs it, without copying the values into a table first."""
    conn = sqlite3.connect(readonly_uri(file), uri=True, check_same_thread=False)
    conn.execute(
        f"CREATE TEMP VIEW d AS SELECT {quote_ident(column)} AS {_VALUE}, 1 AS {_WEIGHT} FROM main.{quote_ident(table)}"
    )
    return _Distinct(conn, rows, rows, 0, on_file=True)


def _insert_rows(conn: sqlite3.Connection, row_holes: str, width: int, flat: list[Any]) -> None:
    """Insert rows given flat (the `width` values of row 1, then of row 2, ...), `_ROWS_PER_INSERT`
    rows per statement: far fewer statements than `executemany`, each binding many rows."""
    per_statement = _ROWS_PER_INSERT * width
    full = f"INSERT INTO d VALUES {', '.join([row_holes] * _ROWS_PER_INSERT)}"
    start = 0
    while len(flat) - start >= per_statement:
        conn.execute(full, flat[start : start + per_statement])
        start += per_statement
    if start < len(flat):
        rows = (len(flat) - start) // width
        conn.execute(f"INSERT INTO d VALUES {', '.join([row_holes] * rows)}", flat[start:])


def _fields(values: pl.Series) -> pl.DataFrame:
    """A raw Struct column as its fields (`storage`, `i`, `r`, `s`, `b`)."""
    return values.struct.unnest()


def _used(fields: pl.DataFrame) -> list[str]:
    """The value fields holding at least one value."""
    return [name for name in ("i", "r", "s", "b") if fields.get_column(name).null_count() < fields.height]


def _single_field_parts(fields: pl.DataFrame) -> list[_Part] | None:
    """A column using one value field (the usual case) counted on that field alone, much faster
    than on the struct; None when the column mixes storage classes or holds bytes."""
    used = _used(fields)
    if len(used) > 1 or used == ["b"]:
        return None
    present = fields.height - (fields.get_column(used[0]).null_count() if used else fields.height)
    nulls = fields.height - present
    parts = [_Part(("null",), pl.DataFrame({_WEIGHT: [nulls]}))] if nulls else []
    if used:
        name = used[0]
        counted = fields.get_column(name).drop_nulls().value_counts(name=_WEIGHT)
        parts.append(_Part((_ONLY_FIELD_CLASS[name],), counted.rename({name: "v0"})))
    return parts


def _grouped_parts(frame: pl.DataFrame) -> list[_Part]:
    """Distinct rows over every field of every column, split by the columns' storage classes."""
    exprs: list[pl.Expr] = []
    for position, name in enumerate(frame.columns):
        column = pl.col(name)
        storage = column.struct.field("storage")
        text_bytes = (storage == "text") & column.struct.field("s").is_null()
        exprs.append(pl.when(text_bytes).then(pl.lit("badtext")).otherwise(storage).alias(f"c{position}"))
        exprs += [column.struct.field(f).alias(f"{f}{position}") for f in ("i", "r", "s", "b")]
    grouped = frame.select(exprs).group_by(pl.all()).len(name=_WEIGHT)
    class_columns = [f"c{position}" for position in range(frame.width)]
    parts = []
    for part in grouped.partition_by(class_columns):
        classes = tuple(str(part[c][0]) for c in class_columns)
        values = [
            part.get_column(f"{_FIELD_OF_CLASS[cls]}{position}").alias(f"v{position}")
            for position, cls in enumerate(classes)
            if cls != "null"
        ]
        parts.append(_Part(classes, pl.DataFrame([*values, part.get_column(_WEIGHT)])))
    return parts


def _column_hash(fields: pl.DataFrame, position: int) -> pl.Series | None:
    """One hash per value, equal for values SQLite's DISTINCT finds equal; seeded by the column's
    position so equal columns do not cancel out. None for a column that is NULL in every row."""
    keys = _keys(fields, position)
    return keys.hash_rows(seed=position) if keys.width else None


def _keys(fields: pl.DataFrame, position: int) -> pl.DataFrame:
    """A column (as its fields) keyed as SQLite compares it for DISTINCT, in the value fields it uses:
    numbers by value (1 = 1.0, -0.0 = 0), text by its bytes, blobs apart from undecodable text, NULLs
    together. Exactly one field is set per value, so the storage class is needed only for bytes."""
    used = _used(fields)
    keys: list[pl.Expr] = []
    if "r" in used:
        real = pl.col("r")
        integral = (real == real.floor()) & (real >= _INT64_LOW) & (real < _INT64_HIGH)
        as_integer = pl.when(integral).then(real.cast(pl.Int64, strict=False))
        if "i" in used:
            as_integer = pl.when(pl.col("i").is_not_null()).then(pl.col("i")).otherwise(as_integer)
        keys += [as_integer.alias(f"i{position}"), pl.when(~integral).then(real).alias(f"r{position}")]
    elif "i" in used:
        keys.append(pl.col("i").alias(f"i{position}"))
    if "s" in used:
        keys.append(pl.col("s").alias(f"s{position}"))
    if "b" in used:
        keys += [pl.col("b").alias(f"b{position}"), (pl.col("storage") == "blob").alias(f"blob{position}")]
    return fields.select(keys)


__all__ = [
    "FrameLoader",
    "FramePreparer",
    "FrameSource",
    "UnsupportedSchema",
    "frame_preparer",
    "frame_source",
    "sqlite_schema",
]
