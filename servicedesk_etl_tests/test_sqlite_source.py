"""Bulk reads through `row_batches` give what the standard module gives, and fail the way it fails."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from servicedesk_etl import sqlite_source
from servicedesk_etl.sqlite_source import row_batches

ROWS = [(1, "text", 2.5, b"\x00blob"), (2, "日本語", None, 7), (3, None, -0.0, "x")]


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, a TEXT, b REAL, c)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", ROWS)
    conn.close()
    return path


def test_rows_come_in_batches_with_the_values_the_standard_module_returns(snapshot: Path) -> None:
    batches = list(row_batches(snapshot, "SELECT * FROM t ORDER BY k", rows=2))
    assert [len(batch) for batch in batches] == [2, 1]
    read = [row for batch in batches for row in batch]
    assert read == sqlite3.connect(snapshot).execute("SELECT * FROM t ORDER BY k").fetchall()
    assert [type(value) for value in read[0]] == [int, str, float, bytes]


def test_functions_can_be_given_to_the_query(snapshot: Path) -> None:
    (rows,) = row_batches(snapshot, "SELECT twice(k) FROM t WHERE k > ?", (1,), functions={"twice": lambda v: 2 * v})
    assert rows == [(4,), (6,)]


def test_a_bad_query_raises_the_standard_modules_error_with_sqlites_message(snapshot: Path) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="no such table: missing"):
        list(row_batches(snapshot, "SELECT * FROM missing"))


HOLD_EXCLUSIVE = """
import sqlite3, sys, time
writer = sqlite3.connect(sys.argv[1], isolation_level=None)
writer.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_file_another_process_holds_exclusively_is_busy_as_with_the_standard_module(snapshot: Path, monkeypatch) -> None:
    """(A writer in this same process would not be seen: APSW brings its own SQLite, and two copies of
    SQLite in one process do not see each other's locks. Bulk reads only read files no one writes.)"""
    monkeypatch.setattr(sqlite_source, "BUSY_TIMEOUT_MS", 50)
    writer = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(snapshot)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        with pytest.raises(sqlite3.OperationalError, match="locked|busy"):
            list(row_batches(snapshot, "SELECT * FROM t"))
    finally:
        writer.communicate("")


def test_the_file_is_opened_read_only(snapshot: Path) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="readonly"):
        list(row_batches(snapshot, "INSERT INTO t VALUES (9, 'no', 0, 0) RETURNING k"))
    assert sqlite3.connect(snapshot).execute("SELECT count(*) FROM t").fetchone() == (3,)
