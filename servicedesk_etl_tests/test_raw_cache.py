"""The raw cache: per-table Arrow IPC frames of a source file, trusted only when whole and of that file."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import polars as pl
import pytest

from servicedesk_etl import raw_cache
from servicedesk_etl.profiling.values import ROWID, read_rows
from servicedesk_etl.raw_cache import (
    MANIFEST_NAME,
    FrameHandoff,
    RawCacheWriter,
    as_stored,
    open_raw_cache,
)
from servicedesk_etl.sqlite_source import file_sha256, list_tables, open_readonly

MIXED_SQL = """
CREATE TABLE "odd table" (id INTEGER, "a b" TEXT, amount REAL, payload BLOB, loose);
INSERT INTO "odd table" (rowid, id, "a b", amount, payload, loose) VALUES
  (3, 1, 'plain', 1.5, X'00FF', 7),
  (5, 2, CAST(X'66FF6F' AS TEXT), '', NULL, 'seven'),
  (9, NULL, '', 3, X'', 7.25),
  (11, 4, 'é', NULL, 'text in blob', X'01'),
  (20, 5, NULL, -0.0, NULL, NULL);
CREATE TABLE empty (x INTEGER, y TEXT);
CREATE TABLE keyed (a INTEGER, b TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
INSERT INTO keyed VALUES (2, 'x'), (1, 'y');
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(MIXED_SQL)
    return path


def frames_of(path: Path) -> dict[str, pl.DataFrame]:
    with closing(open_readonly(path)) as conn:
        return {table: read_rows(conn, table) for table in list_tables(conn)}


def write_cache(path: Path, directory: Path, *, part_cells: int = raw_cache.PART_CELLS) -> dict[str, pl.DataFrame]:
    frames = frames_of(path)
    with RawCacheWriter(directory, file_sha256(path), path.stat().st_size, part_cells=part_cells) as writer:
        for table, frame in frames.items():
            writer.add(table, frame)
    return frames


def test_every_table_reads_back_equal_to_read_rows(source, tmp_path):
    frames = write_cache(source, tmp_path / "raw")
    cache = open_raw_cache(tmp_path / "raw", file_sha256(source), source.stat().st_size)
    assert cache is not None and set(cache.tables) == set(frames)
    for table, frame in frames.items():
        assert cache.read(table).equals(frame), table
        assert cache.row_count(table) == frame.height
        assert cache.columns(table) == tuple(frame.columns[1:])


def test_reading_a_rowid_range_and_some_columns_opens_only_what_is_asked(source, tmp_path):
    frames = write_cache(source, tmp_path / "raw", part_cells=4)
    cache = open_raw_cache(tmp_path / "raw", file_sha256(source))
    assert cache is not None
    assert len(cache.tables["odd table"].parts) == 5
    got = cache.read("odd table", ["loose", "a b"], rowid_range=(5, 11))
    want = frames["odd table"].select(ROWID, "loose", "a b").filter(pl.col(ROWID).is_between(5, 11))
    assert got.equals(want) and got[ROWID].to_list() == [5, 9, 11]
    assert cache.read("odd table", ["id"], rowid_range=(12, 19)).height == 0
    assert cache.read("odd table", ["id"], rowid_range=(12, 19)).schema == frames["odd table"].select(
        ROWID, "id").schema


def test_a_cache_of_another_file_is_refused_with_the_reason(source, tmp_path, caplog):
    write_cache(source, tmp_path / "raw")
    with caplog.at_level(logging.INFO, logger="servicedesk_etl.raw_cache"):
        assert open_raw_cache(tmp_path / "raw", "0" * 64) is None
    assert "describes another file" in caplog.text


def test_a_cache_of_a_file_of_another_size_is_refused(source, tmp_path):
    write_cache(source, tmp_path / "raw")
    assert open_raw_cache(tmp_path / "raw", file_sha256(source), source.stat().st_size + 1) is None


def test_a_directory_without_manifest_is_no_cache(source, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="servicedesk_etl.raw_cache"):
        assert open_raw_cache(tmp_path / "nothing", file_sha256(source)) is None
    assert "no manifest" in caplog.text


def test_a_writer_that_dies_before_commit_leaves_no_cache(source, tmp_path):
    frames = frames_of(source)
    with pytest.raises(RuntimeError), RawCacheWriter(tmp_path / "raw", file_sha256(source)) as writer:
        writer.add("odd table", frames["odd table"])
        raise RuntimeError("killed midway")
    assert open_raw_cache(tmp_path / "raw", file_sha256(source)) is None
    assert list((tmp_path / "raw").iterdir()) == []


def test_rewriting_a_cache_withdraws_the_old_manifest_first(source, tmp_path):
    write_cache(source, tmp_path / "raw")
    writer = RawCacheWriter(tmp_path / "raw", file_sha256(source))
    writer.add("empty", frames_of(source)["empty"])
    assert open_raw_cache(tmp_path / "raw", file_sha256(source)) is None


def test_a_missing_or_truncated_part_makes_the_cache_incomplete(source, tmp_path, caplog):
    write_cache(source, tmp_path / "raw", part_cells=4)
    part = next((tmp_path / "raw").glob("t*.arrow"))
    part.write_bytes(part.read_bytes()[:-10])
    with caplog.at_level(logging.INFO, logger="servicedesk_etl.raw_cache"):
        assert open_raw_cache(tmp_path / "raw", file_sha256(source)) is None
    assert "incomplete" in caplog.text
    part.unlink()
    assert open_raw_cache(tmp_path / "raw", file_sha256(source)) is None


def test_another_format_version_is_refused(source, tmp_path, caplog):
    write_cache(source, tmp_path / "raw")
    manifest = tmp_path / "raw" / MANIFEST_NAME
    document = json.loads(manifest.read_text())
    document["format_version"] = raw_cache.FORMAT_VERSION + 1
    manifest.write_text(json.dumps(document))
    with caplog.at_level(logging.INFO, logger="servicedesk_etl.raw_cache"):
        assert open_raw_cache(tmp_path / "raw", file_sha256(source)) is None
    assert "format version" in caplog.text


def test_dropping_rows_rewrites_only_the_parts_that_hold_them(source, tmp_path):
    frames = frames_of(source)
    writer = RawCacheWriter(tmp_path / "raw", file_sha256(source), part_cells=12)
    writer.add("odd table", frames["odd table"])
    before = sorted(path.name for path in (tmp_path / "raw").iterdir())
    writer.drop_rows("odd table", [9, 20])
    cache = writer.commit()
    assert cache.read("odd table")[ROWID].to_list() == [3, 5, 11]
    assert cache.row_count("odd table") == 3
    after = sorted(path.name for path in (tmp_path / "raw").iterdir() if path.name != MANIFEST_NAME)
    assert len(set(before) & set(after)) == 1  # the part of rows 3 and 5 was left alone


def test_chunks_added_one_by_one_read_back_as_one_table(source, tmp_path):
    frame = frames_of(source)["odd table"]
    writer = RawCacheWriter(tmp_path / "raw", file_sha256(source))
    for offset in range(0, frame.height, 2):
        writer.add("odd table", frame.slice(offset, 2))
    assert writer.commit().read("odd table").equals(frame)


def test_a_chunk_with_other_columns_is_refused(source, tmp_path):
    frame = frames_of(source)["odd table"]
    writer = RawCacheWriter(tmp_path / "raw", file_sha256(source))
    writer.add("odd table", frame)
    with pytest.raises(ValueError, match="columns"):
        writer.add("odd table", frame.drop("loose"))


STORED_CASES = {
    "floats": pl.Series("v", [3.0, -0.0, 0.0, 0.5, None, 2.0**51, 2.0**53, 1e20, -1e300, 12345678.125, 3.0]),
    "ints": pl.Series("v", [0, 1, -7, None, 2**62, 2**63 - 1]),
    "text": pl.Series("v", ["12", " 12 ", "1e3", ".5", "1.", "2025-01-02", "2025-01-02 03:04:05", "abc", "0x10",
                             "", None, "-0", "99999999999999999999", "1e", "12"]),
    "bytes": pl.Series("v", [b"", b"\x00\xff", None, b"12"]),
}


@pytest.mark.parametrize("declared", ["INTEGER", "NUMERIC", "REAL", "BOOLEAN", "DATE", "TIMESTAMP", "TEXT", "BLOB"])
@pytest.mark.parametrize("kind", sorted(STORED_CASES))
def test_as_stored_gives_exactly_what_sqlite_stores(declared, kind, tmp_path):
    values = STORED_CASES[kind]
    with closing(sqlite3.connect(tmp_path / "stored.db")) as conn:
        conn.execute(f"CREATE TABLE t (v {declared})")
        conn.executemany("INSERT INTO t (rowid, v) VALUES (?, ?)", enumerate(values.to_list(), start=1))
        conn.commit()
        expected = read_rows(conn, "t")["v"]
    assert as_stored(values, declared).equals(expected), pl.DataFrame(
        {"got": as_stored(values, declared), "want": expected})


def test_a_declared_type_that_is_not_a_type_is_refused():
    with pytest.raises(ValueError, match="declared"):
        as_stored(pl.Series("v", [1.0]), "INTEGER); DROP TABLE x; --")


def test_a_range_read_opens_only_the_part_files_that_overlap_it(source, tmp_path, monkeypatch):
    write_cache(source, tmp_path / "raw", part_cells=4)
    cache = open_raw_cache(tmp_path / "raw", file_sha256(source))
    assert cache is not None
    opened: list[list[str]] = []
    scan_ipc = pl.scan_ipc

    def recording_scan(paths, **options):
        opened.append([Path(path).name for path in paths])
        return scan_ipc(paths, **options)

    monkeypatch.setattr(pl, "scan_ipc", recording_scan)
    cache.read("odd table", ["id"], rowid_range=(4, 9))
    parts = {part.first_rowid: part.file for part in cache.tables["odd table"].parts}
    assert opened == [[parts[5], parts[9]]]


@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_the_handoff_serves_the_same_frames_from_memory_or_from_the_cache(source, tmp_path, keep_bytes):
    frames = frames_of(source)
    handoff = FrameHandoff(tmp_path / "raw", keep_bytes=keep_bytes)
    for table, frame in frames.items():
        handoff.add(table, frame)
    cache = handoff.commit(file_sha256(source), source.stat().st_size)
    assert open_raw_cache(tmp_path / "raw", file_sha256(source)) is not None
    load = handoff.loader(cache)
    for table, frame in frames.items():
        columns = frame.columns[1:][::-1]
        assert load(table, columns).equals(frame.select(ROWID, *columns)), table
    handoff.release()
    assert load("odd table", ["id"]).equals(frames["odd table"].select(ROWID, "id"))


def test_a_discarded_handoff_leaves_no_cache(source, tmp_path):
    handoff = FrameHandoff(tmp_path / "raw", keep_bytes=1 << 30)
    for table, frame in frames_of(source).items():
        handoff.add(table, frame)
    handoff.discard()
    assert open_raw_cache(tmp_path / "raw", file_sha256(source)) is None
    assert not [path for path in (tmp_path / "raw").iterdir() if path.suffix == ".arrow"]


# --- tables written a few columns at a time ------------------------------------------------------

WIDE_ROWIDS = [*range(1, 30), *range(40, 80, 3), 1000, 1001]


@pytest.fixture
def wide_source(tmp_path: Path) -> Path:
    """MIXED_SQL plus a table of every storage class in five columns, with gaps in its rowids."""
    path = tmp_path / "wide.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(MIXED_SQL)
        conn.execute("CREATE TABLE wide (a INTEGER, b TEXT, c REAL, d BLOB, e)")
        kinds = [lambda n: n, lambda n: f"t{n}", lambda n: n / 4, lambda n: bytes([n % 256]), lambda n: None]
        conn.executemany(
            "INSERT INTO wide (rowid, a, b, c, d, e) VALUES (?, ?, ?, ?, ?, ?)",
            [(rowid, *(kinds[(rowid + k) % 5](rowid) for k in range(5))) for rowid in WIDE_ROWIDS],
        )
        conn.commit()
    return path


def write_in_column_groups(path: Path, directory: Path, grouped: dict[str, int], part_cells: int) -> dict[str, pl.DataFrame]:
    """Tables named in `grouped` written that many columns at a time (every row each time); the others
    row chunk by row chunk, as the cleaner writes them."""
    frames = frames_of(path)
    with RawCacheWriter(directory, file_sha256(path), path.stat().st_size, part_cells=part_cells) as writer:
        for table, frame in frames.items():
            columns = frame.columns[1:]
            if table in grouped:
                for start in range(0, len(columns), grouped[table]):
                    writer.add(table, frame.select(ROWID, *columns[start : start + grouped[table]]))
            else:
                for offset in range(0, max(frame.height, 1), 2):
                    writer.add(table, frame.slice(offset, 2))
    return frames


RANGES = [None, (1, 1), (0, 4), (5, 28), (29, 45), (46, 999), (1001, 5000), (2000, 3000), (-5, 10_000)]


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("part_cells", [6, raw_cache.PART_CELLS])
def test_a_cache_written_in_column_groups_reads_back_equal_to_read_rows_for_any_columns_and_range(
    wide_source, tmp_path, width, part_cells
):
    frames = write_in_column_groups(wide_source, tmp_path / "raw", {"wide": width, "odd table": 2}, part_cells)
    cache = open_raw_cache(tmp_path / "raw", file_sha256(wide_source))
    assert cache is not None
    for table, frame in frames.items():
        columns = frame.columns[1:]
        assert cache.row_count(table) == frame.height and cache.columns(table) == tuple(columns)
        subsets = [list(combo) for size in range(len(columns) + 1) for combo in itertools.combinations(columns, size)]
        subsets.append(columns[::-1])
        for names, rows in itertools.product(subsets, RANGES):
            expected = frame.select(ROWID, *names)
            if rows is not None:
                expected = expected.filter(pl.col(ROWID).is_between(*rows))
            assert cache.read(table, names, rows).equals(expected), (table, names, rows)


def test_a_wide_table_is_stored_in_parts_of_one_column_group_each(wide_source, tmp_path):
    write_in_column_groups(wide_source, tmp_path / "raw", {"wide": 2}, part_cells=30)
    cache = open_raw_cache(tmp_path / "raw", file_sha256(wide_source))
    assert cache is not None
    table = cache.tables["wide"]
    assert table.column_groups() == [("a", "b"), ("c", "d"), ("e",)]
    assert [part.rows for part in table.parts_of(("a", "b"))] == [10, 10, 10, 10, 5]  # 30 cells of 3 columns
    assert [part.rows for part in table.parts_of(("e",))] == [15, 15, 15]


def test_column_groups_holding_different_rows_are_refused(wide_source, tmp_path):
    frame = frames_of(wide_source)["wide"]
    writer = RawCacheWriter(tmp_path / "raw", file_sha256(wide_source))
    writer.add("wide", frame.select(ROWID, "a", "b"))
    writer.add("wide", frame.select(ROWID, "c").head(10))
    with pytest.raises(ValueError, match="different rows"):
        writer.commit()


def test_a_group_repeating_a_column_of_an_earlier_group_is_refused(wide_source, tmp_path):
    frame = frames_of(wide_source)["wide"]
    writer = RawCacheWriter(tmp_path / "raw", file_sha256(wide_source))
    writer.add("wide", frame.select(ROWID, "a", "b"))
    writer.add("wide", frame.select(ROWID, "c"))
    with pytest.raises(ValueError, match="columns"):
        writer.add("wide", frame.select(ROWID, "b", "d"))


@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_the_handoff_serves_a_table_handed_in_column_groups_like_one_handed_whole(wide_source, tmp_path, keep_bytes):
    frame = frames_of(wide_source)["wide"]
    handoff = FrameHandoff(tmp_path / "raw", keep_bytes=keep_bytes)
    for group in (["a", "b"], ["c"], ["d", "e"]):
        handoff.add("wide", frame.select(ROWID, *group))
    cache = handoff.commit(file_sha256(wide_source), wide_source.stat().st_size)
    load = handoff.loader(cache)
    for names in (["e", "a"], ["c"], ["b", "d", "c"], []):
        assert load("wide", names).equals(frame.select(ROWID, *names)), names
    assert cache.read("wide").equals(frame)


def test_the_handoff_keeps_tables_that_arrive_whole_and_lets_go_of_tables_that_arrive_in_groups(wide_source, tmp_path):
    frames = frames_of(wide_source)
    handoff = FrameHandoff(tmp_path / "raw", keep_bytes=1 << 30)
    handoff.add("odd table", frames["odd table"])
    handoff.add("wide", frames["wide"].select(ROWID, "a", "b"))
    handoff.add("wide", frames["wide"].select(ROWID, "c", "d", "e"))
    cache = handoff.commit(file_sha256(wide_source), wide_source.stat().st_size)
    for part in (tmp_path / "raw").glob("*.arrow"):
        part.unlink()  # from now on only what is kept in memory can be served
    load = handoff.loader(cache)
    assert load("odd table", ["loose", "id"]).equals(frames["odd table"].select(ROWID, "loose", "id"))
    with pytest.raises(OSError):
        load("wide", ["a"])
