"""A directory of raw-layout table frames (see `profiling.values`), so a run reads its snapshot once.

Each table is stored as one or more Arrow IPC part files (zstd), each covering a contiguous range of
the rowid column (`values.ROWID`) and one group of the table's columns, so a reader asking for a rowid
range and some columns opens only the parts that hold them. A table written whole has one column group;
a wide, long one may arrive a few columns at a time (every row each time), one group per call. A JSON
manifest names the source file (sha256 and size), each table's row count, columns and parts, and the format
version. Every file is written to a temporary name and renamed; the manifest comes last, so a cache
whose writer died is never taken for a whole one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from servicedesk_etl.profiling.values import ROWID, raw_series, read_rows
from servicedesk_etl.sqlite_source import sqlite_affinity

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
PART_SUFFIX = ".arrow"
TEMP_SUFFIX = ".partial"
COMPRESSION = "zstd"
# Cells per part file: bounds what one part costs to decompress, so a range read stays flat in memory.
PART_CELLS = 2_000_000
# Rows per part file at most, however few columns a group has: a reader's rowid range (a cleaner's chunk)
# then decompresses little more than it asks for.
PART_ROWS = 50_000


@dataclass(frozen=True)
class CachePart:
    """One IPC file of a table: its column group, its rows and the rowid range it covers (None for an empty part)."""

    file: str
    columns: tuple[str, ...]
    rows: int
    bytes: int
    first_rowid: int | None
    last_rowid: int | None

    def overlaps(self, first: int, last: int) -> bool:
        if self.first_rowid is None or self.last_rowid is None:
            return False
        return self.first_rowid <= last and first <= self.last_rowid


@dataclass(frozen=True)
class CachedTable:
    name: str
    rows: int
    columns: tuple[str, ...]
    parts: tuple[CachePart, ...]

    def column_groups(self) -> list[tuple[str, ...]]:
        """The table's column groups, in the order they were written."""
        return list(dict.fromkeys(part.columns for part in self.parts))

    def parts_of(self, group: tuple[str, ...]) -> list[CachePart]:
        return [part for part in self.parts if part.columns == group]


@dataclass(frozen=True)
class RawCache:
    """A complete cache of one source file, as its manifest describes it."""

    directory: Path
    source_sha256: str
    source_size: int | None
    tables: dict[str, CachedTable]

    def has_table(self, table: str, columns: Sequence[str] | None = None) -> bool:
        """Whether `table` is cached with (at least) `columns`."""
        cached = self.tables.get(table)
        return cached is not None and (columns is None or set(columns) <= set(cached.columns))

    def row_count(self, table: str) -> int:
        return self._table(table).rows

    def columns(self, table: str) -> tuple[str, ...]:
        return self._table(table).columns

    def read(
        self, table: str, columns: Sequence[str] | None = None, rowid_range: tuple[int, int] | None = None
    ) -> pl.DataFrame:
        """The rowid column (`ROWID`) and the raw Struct columns asked for (all by default), of rows with rowid in `rowid_range`.

        Rows come in rowid order, exactly as `values.read_rows` returns them. Only the part files that
        hold the columns asked for and overlap the range are opened, and only those columns are decoded;
        columns of several groups are put side by side once their rowids are found equal.
        """
        cached = self._table(table)
        names = list(cached.columns if columns is None else columns)
        if absent := [name for name in names if name not in cached.columns]:
            raise KeyError(f"raw cache of table {table!r} has no columns {absent}")
        groups = cached.column_groups()
        wanted = [(group, [name for name in group if name in names]) for group in groups]
        wanted = [(group, asked) for group, asked in wanted if asked] or [(groups[0], [])]
        scans = [self._scan(cached, group, asked, rowid_range) for group, asked in wanted]
        frames = scans[0].collect() if len(scans) == 1 else pl.collect_all(scans)
        if isinstance(frames, pl.DataFrame):
            return frames.select(ROWID, *names)
        return _side_by_side(table, frames).select(ROWID, *names)

    def _scan(
        self, cached: CachedTable, group: tuple[str, ...], names: Sequence[str], rowid_range: tuple[int, int] | None
    ) -> pl.LazyFrame:
        parts = cached.parts_of(group)
        if rowid_range is not None:
            first, last = rowid_range
            parts = [part for part in parts if part.overlaps(first, last)] or parts[:1]
        paths = [self.directory / part.file for part in parts]
        scan = pl.scan_ipc(paths, glob=False).select(ROWID, *names)
        if rowid_range is not None:
            scan = scan.filter(pl.col(ROWID).is_between(*rowid_range))
        return scan

    def _table(self, table: str) -> CachedTable:
        try:
            return self.tables[table]
        except KeyError:
            raise KeyError(f"raw cache in {self.directory} has no table {table!r}") from None


def _side_by_side(table: str, frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    first = frames[0]
    for frame in frames[1:]:
        if not frame[ROWID].equals(first[ROWID]):
            raise RuntimeError(f"raw cache of table {table!r}: its column groups hold different rows")
    return pl.concat([first, *(frame.drop(ROWID) for frame in frames[1:])], how="horizontal")


class RawCacheWriter:
    """Writes a cache table by table (or chunk by chunk, or column group by column group); `commit` writes
    the manifest that makes it whole.

    Used as a context manager, it commits on a normal exit and discards its files on an exception.
    `source_sha256` / `source_size` may be given at `commit` instead, when the file the cache
    describes is finished only after its frames were written (the cleaned file).
    """

    def __init__(
        self,
        directory: Path,
        source_sha256: str | None = None,
        source_size: int | None = None,
        *,
        part_cells: int = PART_CELLS,
    ) -> None:
        self.directory = Path(directory)
        self.source_sha256 = source_sha256
        self.source_size = source_size
        self._part_cells = max(1, part_cells)
        self._tables: dict[str, list[CachePart]] = {}
        self._groups: dict[str, list[tuple[str, ...]]] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        _remove_cache_files(self.directory)

    def add(self, table: str, frame: pl.DataFrame) -> None:
        """Append rows of `table` (the `ROWID` column, then raw Struct columns), sorted by rowid.

        A frame with the columns of the table's last group appends rows to that group; one with none
        of the table's columns starts a new column group, which must come to hold the same rows (checked
        at `commit`).
        """
        columns = tuple(name for name in frame.columns if name != ROWID)
        if frame.columns[:1] != [ROWID]:
            raise ValueError(f"a raw frame of table {table!r} must start with the {ROWID} column")
        groups = self._groups.setdefault(table, [])
        known = [name for group in groups for name in group]
        if not groups or (columns and set(columns).isdisjoint(known)):
            groups.append(columns)
        elif groups[-1] != columns:
            raise ValueError(
                f"table {table!r} was added with columns {known}, now with {list(columns)}: "
                "a frame must bring the columns of the last group or only new ones"
            )
        parts = self._tables.setdefault(table, [])
        rows_per_part = max(1, min(PART_ROWS, self._part_cells // max(1, len(columns) + 1)))
        if frame.height == 0:
            if not any(part.columns == columns for part in parts):
                parts.append(self._write_part(table, len(parts), frame))
            return
        for offset in range(0, frame.height, rows_per_part):
            parts.append(self._write_part(table, len(parts), frame.slice(offset, rows_per_part)))

    def drop_rows(self, table: str, rowids: Sequence[int] | pl.Series) -> None:
        """Remove rows of `table` by rowid, rewriting only the parts that hold some of them."""
        if len(rowids) == 0:
            return
        doomed = pl.Series(ROWID, rowids, dtype=pl.Int64)
        parts = self._tables[table]
        for position, part in enumerate(parts):
            if part.first_rowid is None or not doomed.is_between(part.first_rowid, part.last_rowid).any():
                continue
            path = self.directory / part.file
            frame = pl.read_ipc(path)
            kept = frame.filter(~pl.col(ROWID).is_in(doomed.implode()))
            if kept.height != frame.height:
                parts[position] = self._write_part(table, position, kept, replace=part.file)

    def commit(self, source_sha256: str | None = None, source_size: int | None = None) -> RawCache:
        """Write the manifest (atomically); from then on `open_raw_cache` accepts the directory."""
        sha = source_sha256 or self.source_sha256
        if not sha:
            raise ValueError("a raw cache needs the sha256 of the file it describes")
        size = source_size if source_size is not None else self.source_size
        tables = {name: _cached_table(name, self._groups[name], parts) for name, parts in self._tables.items()}
        document = {
            "format_version": FORMAT_VERSION,
            "source_sha256": sha,
            "source_size": size,
            "tables": [
                {
                    "name": table.name,
                    "rows": table.rows,
                    "columns": list(table.columns),
                    "parts": [dataclasses.asdict(part) for part in table.parts],
                }
                for table in tables.values()
            ],
        }
        _write_atomically(self.directory / MANIFEST_NAME, json.dumps(document, ensure_ascii=False).encode())
        logger.info("raw cache of %d tables written to %s", len(tables), self.directory)
        return RawCache(self.directory, sha, size, tables)

    def discard(self) -> None:
        _remove_cache_files(self.directory)

    def __enter__(self) -> RawCacheWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def _write_part(self, table: str, position: int, frame: pl.DataFrame, replace: str | None = None) -> CachePart:
        index = list(self._tables).index(table)
        generation = 0 if replace is None else int(replace.rsplit("-g", 1)[-1].removesuffix(PART_SUFFIX)) + 1
        name = f"t{index:04d}-p{position:05d}-g{generation}{PART_SUFFIX}"
        temp = self.directory / f"{name}{TEMP_SUFFIX}"
        frame.write_ipc(temp, compression=COMPRESSION)
        os.replace(temp, self.directory / name)
        if replace is not None:
            (self.directory / replace).unlink(missing_ok=True)
        rowids = frame[ROWID]
        return CachePart(
            file=name,
            columns=tuple(column for column in frame.columns if column != ROWID),
            rows=frame.height,
            bytes=(self.directory / name).stat().st_size,
            first_rowid=None if frame.is_empty() else int(rowids.min()),  # type: ignore[arg-type]
            last_rowid=None if frame.is_empty() else int(rowids.max()),  # type: ignore[arg-type]
        )


def _cached_table(name: str, groups: Sequence[tuple[str, ...]], parts: Sequence[CachePart]) -> CachedTable:
    """The table as the manifest describes it; refused when its column groups hold different rows."""
    shapes = set()
    for group in groups:
        held = [part for part in parts if part.columns == group and part.rows]
        shapes.add((
            sum(part.rows for part in held),
            min((part.first_rowid for part in held), default=None),
            max((part.last_rowid for part in held), default=None),
        ))
    if len(shapes) > 1:
        raise ValueError(f"table {name!r}: its column groups hold different rows ({sorted(shapes, key=str)})")
    rows = next(iter(shapes))[0] if shapes else 0
    columns = tuple(column for group in groups for column in group)
    return CachedTable(name, rows, columns, tuple(parts))


def open_raw_cache(directory: Path, source_sha256: str, source_size: int | None = None) -> RawCache | None:
    """The cache in `directory` if it is whole and describes the file with this sha256 (and size); else None.

    Every refusal is logged with its reason, so a run that reads SQLite instead says why.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        logger.info("no raw cache in %s (no manifest)", directory)
        return None
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
        if document.get("format_version") != FORMAT_VERSION:
            logger.info("raw cache in %s has format version %s, not %s; not used",
                        directory, document.get("format_version"), FORMAT_VERSION)
            return None
        cache = _cache_from_manifest(directory, document)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning("raw cache in %s is unreadable (%s); not used", directory, error)
        return None
    if cache.source_sha256 != source_sha256:
        logger.info("raw cache in %s describes another file (sha256 %s, not %s); not used",
                    directory, cache.source_sha256, source_sha256)
        return None
    if source_size is not None and cache.source_size is not None and cache.source_size != source_size:
        logger.info("raw cache in %s describes a file of %d bytes, not %d; not used",
                    directory, cache.source_size, source_size)
        return None
    if incomplete := _missing_parts(cache):
        logger.warning("raw cache in %s is incomplete (%s missing or truncated); not used", directory, incomplete[0])
        return None
    return cache


def _cache_from_manifest(directory: Path, document: dict[str, Any]) -> RawCache:
    tables = {}
    for entry in document["tables"]:
        parts = tuple(CachePart(**{**part, "columns": tuple(part["columns"])}) for part in entry["parts"])
        tables[entry["name"]] = CachedTable(entry["name"], int(entry["rows"]), tuple(entry["columns"]), parts)
    return RawCache(directory, str(document["source_sha256"]), document.get("source_size"), tables)


def _missing_parts(cache: RawCache) -> list[str]:
    missing = []
    for table in cache.tables.values():
        if not table.parts:
            missing.append(f"table {table.name!r} has no part files")
        for part in table.parts:
            path = cache.directory / part.file
            if not path.is_file() or path.stat().st_size != part.bytes:
                missing.append(part.file)
    return missing


def _write_atomically(path: Path, content: bytes) -> None:
    temp = path.with_name(f"{path.name}{TEMP_SUFFIX}")
    with temp.open("wb") as handle:
        handle.write(content)
    os.replace(temp, path)


def _remove_cache_files(directory: Path) -> None:
    """The manifest first (the cache stops being whole), then parts and temporaries of this format."""
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    for path in directory.iterdir():
        if path.name.endswith((PART_SUFFIX, TEMP_SUFFIX)) and path.name.startswith(("t", MANIFEST_NAME)):
            path.unlink(missing_ok=True)


_PLAIN_STORAGE = {pl.Int64: "integer", pl.Float64: "real", pl.String: "text", pl.Binary: "blob", pl.Null: "null"}
# A superset of the text SQLite's numeric affinities turn into numbers; SQLite itself decides those.
_DECLARED_TYPE = r"[A-Za-z][A-Za-z0-9 _]*(\([0-9, +-]*\))?"
_NUMERIC_LOOKING = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"


def as_stored(values: pl.Series, declared_type: str) -> pl.Series:
    """The raw Struct series of `values` as SQLite stores them when bound into a column of `declared_type`.

    Affinity applies: an integral float in a NUMERIC or INTEGER column becomes an integer, numeric
    text in such a column a number, an integer in a REAL column a real. The plain cases are computed
    here; the few values whose fate depends on SQLite's own rules (integral floats, numeric-looking
    text, numbers under TEXT affinity) are stored into an in-memory table of that declared type and
    read back, once per distinct value.
    """
    affinity = sqlite_affinity(declared_type)
    name = values.name
    if values.dtype == pl.Int64 and affinity == "REAL":
        plain = raw_series(name, "real", values.cast(pl.Float64))
    else:
        plain = raw_series(name, _PLAIN_STORAGE[values.dtype], values)
    asked = _decided_by_sqlite(values, affinity)
    if asked is None or not asked.any():
        return plain
    distinct = values.filter(asked).unique(maintain_order=True)
    mapping = pl.DataFrame({"key": distinct, "stored": _stored_by_sqlite(distinct, declared_type)})
    answers = pl.DataFrame({"key": values}).join(mapping, on="key", how="left", maintain_order="left")["stored"]
    frame = pl.DataFrame({"asked": asked, "answer": answers, "plain": plain})
    return frame.select(pl.when("asked").then("answer").otherwise("plain").alias(name)).to_series()


def _decided_by_sqlite(values: pl.Series, affinity: str) -> pl.Series | None:
    if values.dtype == pl.Float64 and affinity in ("INTEGER", "NUMERIC"):
        return (values == values.floor()).fill_null(False)
    if values.dtype == pl.String and affinity in ("INTEGER", "NUMERIC", "REAL"):
        return values.str.contains(_NUMERIC_LOOKING).fill_null(False)
    if values.dtype in (pl.Int64, pl.Float64) and affinity == "TEXT":
        return values.is_not_null()
    return None


def _stored_by_sqlite(distinct: pl.Series, declared_type: str) -> pl.Series:
    if not re.fullmatch(_DECLARED_TYPE, declared_type):
        raise ValueError(f"not a declared SQLite column type: {declared_type!r}")
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute(f"CREATE TABLE probe (v {declared_type})")
        conn.executemany("INSERT INTO probe (rowid, v) VALUES (?, ?)", enumerate(distinct.to_list(), start=1))
        stored = read_rows(conn, "probe", ["v"])
    if stored.height != distinct.len():
        raise RuntimeError("SQLite returned a different number of probe values than were stored")
    return stored["v"]


class FrameHandoff:
    """The profiler's frames on their way on: written to a raw cache (for the cleaner, in a background
    thread) and, while they fit in `keep_bytes`, also kept in memory (for the scorer and the rules).

    `add` is the profiler's `on_table` hook: a table arrives whole, or one column group at a time.
    Only tables that arrived whole are kept: one that comes in groups is too big to hold while the
    profiler goes on, so its first group is let go when the second arrives. At most one frame waits
    to be written while the next is read. `commit` waits for the writes and makes the cache whole;
    `loader(cache)` serves `(table, columns)` from memory when kept, else from the cache.
    """

    def __init__(self, directory: Path, keep_bytes: int) -> None:
        self._writer = RawCacheWriter(directory)
        self._keep_bytes = keep_bytes
        self._kept: dict[str, pl.DataFrame] = {}
        self._kept_bytes = 0
        self._seen: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-cache")
        self._writes: list[Future[None]] = []

    def add(self, table: str, frame: pl.DataFrame) -> None:
        if self._writes:
            self._writes[-1].result()
        self._writes.append(self._pool.submit(self._writer.add, table, frame))
        grouped = table in self._seen
        self._seen.add(table)
        if grouped and table in self._kept:
            self._kept_bytes -= self._kept.pop(table).estimated_size()
        size = frame.estimated_size()
        if not grouped and self._kept_bytes + size <= self._keep_bytes:
            self._kept[table] = frame
            self._kept_bytes += size

    def commit(self, source_sha256: str, source_size: int) -> RawCache:
        try:
            for write in self._writes:
                write.result()
        except BaseException:
            self.discard()
            raise
        finally:
            self._pool.shutdown(wait=True)
        return self._writer.commit(source_sha256, source_size)

    def discard(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.release()
        self._writer.discard()

    def release(self) -> None:
        """Forget the frames kept in memory (the cache stays)."""
        self._kept.clear()
        self._kept_bytes = 0

    def loader(self, cache: RawCache) -> Callable[[str, Sequence[str]], pl.DataFrame]:
        def load(table: str, columns: Sequence[str]) -> pl.DataFrame:
            kept = self._kept.get(table)
            if kept is not None:
                return kept.select(ROWID, *columns)
            return cache.read(table, columns)

        return load
