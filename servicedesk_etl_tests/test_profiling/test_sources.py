"""Table sources answer the same aggregate questions from a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.errors import InputError
from servicedesk_etl.profiling import sources as m
from servicedesk_etl.profiling.sources import Link, Measure, postgres_source, sqlite_source
from servicedesk_etl.sqlite_source import file_sha256


def build_sqlite(path: Path, ddl: str, table: str, rows: list[tuple]) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(ddl)
    holes = ", ".join("?" for _ in rows[0])
    conn.executemany(f'INSERT INTO "{table}" VALUES ({holes})', rows)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def raw_values(tmp_path: Path) -> Path:
    """One column of every kind of value a snapshot holds, each kept in its own storage class."""
    rows = [
        ("2025-05-20 08:42:00",),  # canonical timestamp
        ("2025-05-20T08:42:00",),  # ISO with T: parseable, not canonical
        ("20/05/2025 8:42",),  # day-first: neither
        ("",),  # empty string
        ("   ",),  # whitespace
        ("N/A",),  # null marker
        ("null",),  # null marker, other case
        (" NULL ",),  # padded marker
        (None,),  # real NULL
        (42,),  # an integer
        (sqlite3.Binary(b"\x96 dash"),),  # bytes that are not UTF-8
        ("line\r\nbreak",),  # CRLF
        ("nul\x00byte",),  # NUL byte
        ("2025-02-30 10:00:00",),  # a date that does not exist
    ]
    return build_sqlite(tmp_path / "raw.db", 'CREATE TABLE "t" ("v")', "t", rows)  # no affinity: classes kept


def test_sqlite_missing_counts_null_empty_whitespace_and_markers(raw_values: Path) -> None:
    counts = sqlite_source(raw_values).measure("t", [Measure(m.ROWS), Measure(m.MISSING, "v"), Measure(m.BLANKS, "v")])
    assert counts[Measure(m.ROWS)] == 14
    assert counts[Measure(m.MISSING, "v")] == 6  # '', '   ', 'N/A', 'null', ' NULL ', NULL
    assert counts[Measure(m.BLANKS, "v")] == 5


def test_sqlite_conformity_is_judged_by_storage_class_not_label(raw_values: Path) -> None:
    source = sqlite_source(raw_values)
    counts = source.measure(
        "t",
        [Measure(m.CONFORMING, "v", ("timestamp",)), Measure(m.CONFORMING, "v", ("bigint",)),
         Measure(m.CONFORMING, "v", ("text",)), Measure(m.DATE_PARSEABLE, "v")],
    )  # fmt: skip
    assert counts[Measure(m.CONFORMING, "v", ("timestamp",))] == 1  # only the canonical value
    assert counts[Measure(m.CONFORMING, "v", ("bigint",))] == 1  # only the stored integer
    assert counts[Measure(m.CONFORMING, "v", ("text",))] == 6  # present text values (not 42, not the blob)
    assert counts[Measure(m.DATE_PARSEABLE, "v")] == 3  # canonical, with T, and the one SQLite rolls over


@pytest.mark.parametrize("target", ["boolean", "bigint", "numeric", "double precision", "timestamp", "text", "bytea"])
def test_sqlite_conformity_is_the_same_asked_alone_or_with_missing(tmp_path: Path, target: str) -> None:
    """Asked together, MISSING and CONFORMING share one CASE per cell; the answer must not depend on
    which of the two ways counted it (both are cached under the same measure)."""
    rows = [(0,), (1,), (0.0,), (1.0,), (2,), (2.5,), ("1",), ("yes",), ("2025-05-20 08:42:00",), ("",), (None,),
            (sqlite3.Binary(b"\x00\x01"),)]
    conforming, missing = Measure(m.CONFORMING, "v", (target,)), Measure(m.MISSING, "v")
    alone = sqlite_source(build_sqlite(tmp_path / "alone.db", 'CREATE TABLE "t" ("v")', "t", rows)).measure("t", [conforming])
    paired = sqlite_source(build_sqlite(tmp_path / "paired.db", 'CREATE TABLE "t" ("v")', "t", rows)).measure(
        "t", [missing, conforming]
    )
    assert paired[conforming] == alone[conforming]
    if target == "boolean":
        assert alone[conforming] == 2  # the integers 0 and 1; not the reals 0.0 and 1.0, nor text


def test_sqlite_text_integrity_counts_nul_crlf_and_invalid_utf8(raw_values: Path) -> None:
    kinds = (m.NUL_BYTES, m.CRLF, m.INVALID_UTF8, m.TEXT_VALUES)
    counts = sqlite_source(raw_values).measure("t", [Measure(kind, "v") for kind in kinds])
    assert counts[Measure(m.NUL_BYTES, "v")] == 1
    assert counts[Measure(m.CRLF, "v")] == 1
    assert counts[Measure(m.INVALID_UTF8, "v")] == 1
    assert counts[Measure(m.TEXT_VALUES, "v")] == 12


def test_sqlite_invalid_utf8_found_in_text_storage_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "t" ("v" TEXT)')
    conn.execute("INSERT INTO t VALUES (CAST(X'41964142' AS TEXT)), ('caf\u00e9'), ('plain')")
    conn.commit()
    conn.close()
    counts = sqlite_source(path).measure("t", [Measure(m.INVALID_UTF8, "v"), Measure(m.NUL_BYTES, "v")])
    assert counts[Measure(m.INVALID_UTF8, "v")] == 1  # 'café' is valid UTF-8
    assert counts[Measure(m.NUL_BYTES, "v")] == 0


def test_sqlite_numbers_ranges_and_shares(tmp_path: Path) -> None:
    rows = [(0,), (0.25,), (8,), ("7.5",), (24,), (25,), (-1,), ("abc",), ("",), ("1.2.3",)]
    path = build_sqlite(tmp_path / "n.db", 'CREATE TABLE "t" ("h" REAL)', "t", rows)
    counts = sqlite_source(path).measure(
        "t",
        [Measure(m.NUMERIC, "h"), Measure(m.VALUE_IN_RANGE, "h", (0, 24, False, True)),
         Measure(m.VALUE_EQUALS, "h", (0,)), Measure(m.INTEGER_IN_RANGE, "h", (1, None))],
    )  # fmt: skip
    assert counts[Measure(m.NUMERIC, "h")] == 7  # 'abc', '' and '1.2.3' are not numbers
    assert counts[Measure(m.VALUE_IN_RANGE, "h", (0, 24, False, True))] == 4  # 0.25, 8, 7.5, 24
    assert counts[Measure(m.VALUE_EQUALS, "h", (0,))] == 1
    assert counts[Measure(m.INTEGER_IN_RANGE, "h", (1, None))] == 3  # 8, 24, 25


def test_sqlite_date_order_and_range(tmp_path: Path) -> None:
    rows = [
        ("2024-01-01 10:00:00", "2024-01-02 10:00:00"),
        ("2024-01-05 10:00:00", "2024-01-02 10:00:00"),  # modified before created
        ("2019-06-01 10:00:00", "2019-06-02 10:00:00"),  # before the range
        ("03/04/2024 9:05", "2024-01-02 10:00:00"),  # not comparable
    ]
    path = build_sqlite(tmp_path / "d.db", 'CREATE TABLE "t" ("created" TIMESTAMP, "modified" TIMESTAMP)', "t", rows)
    counts = sqlite_source(path).measure(
        "t",
        [Measure(m.COMPARABLE, "created", ("modified",)), Measure(m.ORDERED, "created", ("modified",)),
         Measure(m.DATE_IN_RANGE, "created", ("2020-01-01 00:00:00", "2030-01-01 00:00:00"))],
    )  # fmt: skip
    assert counts[Measure(m.COMPARABLE, "created", ("modified",))] == 3
    assert counts[Measure(m.ORDERED, "created", ("modified",))] == 2
    assert counts[Measure(m.DATE_IN_RANGE, "created", ("2020-01-01 00:00:00", "2030-01-01 00:00:00"))] == 2


def test_sqlite_keys_compare_numbers_stored_as_text_with_integers(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "tickets" ("TKT-Ticket ID" INTEGER)')
    conn.execute('CREATE TABLE "comments" ("ticket_id" TEXT, "body" TEXT)')
    conn.executemany("INSERT INTO tickets VALUES (?)", [(1,), (2,), (3.0,)])
    conn.executemany(
        "INSERT INTO comments VALUES (?, ?)",
        [("1", "a"), ("2", "b"), ("3", "c"), ("99", "d"), ("0", "admin"), ("", "e"), ("1", "a")],
    )
    conn.commit()
    conn.close()
    source = sqlite_source(path)
    found = source.orphans(Link("comments", "ticket_id", "tickets", "TKT-Ticket ID", ignore_values=("0",)))
    assert (found.checked, found.orphans, found.examples) == (5, 1, ("99",))
    distinct = Measure(m.DISTINCT_KEYS, "ticket_id")
    assert source.measure("comments", [distinct])[distinct] == 5  # '1' twice, '' is missing
    assert source.duplicate_rows("comments") == 1
    assert source.duplicate_rows("tickets") == 0


def test_sqlite_source_never_changes_the_file(raw_values: Path) -> None:
    before = file_sha256(raw_values)
    source = sqlite_source(raw_values)
    with source.connected():
        source.measure("t", [Measure(m.MISSING, "v"), Measure(m.INVALID_UTF8, "v")])
        source.duplicate_rows("t")
    assert file_sha256(raw_values) == before
    assert source.tables() == ("t",) and source.columns("t") == ("v",)


def test_sqlite_source_on_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        sqlite_source(tmp_path / "nope.db").tables()


@pytest.mark.postgres
def test_postgres_measures_follow_the_column_types(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA v1")
        conn.execute(
            'CREATE TABLE v1."tickets" ("TKT-Ticket ID" bigint, "TKT-Created Time" timestamp,'
            ' "TKT-Modified Time" timestamp, "TKT-Title" text, "as_text" text)'
        )
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s)").format(sql.Identifier("v1", "tickets")),
            (1, "2024-01-01 10:00", "2024-01-02 10:00", "ok\r\nline", "2024-01-01 10:00:00"),
        )
        conn.execute(
            "INSERT INTO v1.tickets VALUES (2, '2024-01-05', '2024-01-02', 'N/A', 'x'), (2, NULL, NULL, '', NULL)"
        )
    source = postgres_source(fresh_database, "v1")
    wanted = [
        Measure(m.ROWS), Measure(m.MISSING, "TKT-Title"), Measure(m.MISSING, "TKT-Created Time"),
        Measure(m.CONFORMING, "TKT-Created Time", ("timestamp",)), Measure(m.CONFORMING, "as_text", ("timestamp",)),
        Measure(m.ORDERED, "TKT-Created Time", ("TKT-Modified Time",)),
        Measure(m.COMPARABLE, "TKT-Created Time", ("TKT-Modified Time",)), Measure(m.CRLF, "TKT-Title"),
        Measure(m.DISTINCT_KEYS, "TKT-Ticket ID"), Measure(m.DATE_PARSEABLE, "as_text"),
        Measure(m.DATE_IN_RANGE, "TKT-Created Time", ("2024-01-02 00:00:00", None)),
    ]  # fmt: skip
    counts = source.measure("tickets", wanted)
    assert counts[Measure(m.ROWS)] == 3
    assert counts[Measure(m.MISSING, "TKT-Title")] == 2  # 'N/A' and ''
    assert counts[Measure(m.MISSING, "TKT-Created Time")] == 1
    assert counts[Measure(m.CONFORMING, "TKT-Created Time", ("timestamp",))] == 2
    assert counts[Measure(m.CONFORMING, "as_text", ("timestamp",))] == 0  # a text column is not a timestamp
    assert counts[Measure(m.ORDERED, "TKT-Created Time", ("TKT-Modified Time",))] == 1
    assert counts[Measure(m.COMPARABLE, "TKT-Created Time", ("TKT-Modified Time",))] == 2
    assert counts[Measure(m.CRLF, "TKT-Title")] == 1
    assert counts[Measure(m.DISTINCT_KEYS, "TKT-Ticket ID")] == 2
    assert counts[Measure(m.DATE_PARSEABLE, "as_text")] == 1
    assert counts[Measure(m.DATE_IN_RANGE, "TKT-Created Time", ("2024-01-02 00:00:00", None))] == 1
    assert source.duplicate_rows("tickets") == 0
    assert source.tables() == ("tickets",)


@pytest.mark.postgres
def test_postgres_duplicate_rows_are_the_same_with_or_without_planner_statistics(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA d")
        conn.execute('CREATE TABLE d.t (id bigint, "a b" text, flag boolean)')
        conn.execute("INSERT INTO d.t SELECT i % 500, 'x' || (i % 5), i % 2 = 0 FROM generate_series(1, 3000) i")
        source = postgres_source(fresh_database, "d")
        expected = 3000 - 500  # every column is a function of i % 500
        before = source.duplicate_rows("t")
        conn.execute("ANALYZE d.t")
        after = postgres_source(fresh_database, "d").duplicate_rows("t")
    assert before == after == expected


@pytest.mark.postgres
def test_postgres_orphans_match_keys_across_types(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA v1")
        conn.execute('CREATE TABLE v1.tickets ("TKT-Ticket ID" double precision)')
        conn.execute('CREATE TABLE v1.comments ("ticket_id" text)')
        conn.execute("INSERT INTO v1.tickets VALUES (1), (2), (3000000)")
        conn.execute("INSERT INTO v1.comments VALUES ('1'), ('3000000'), ('7'), (NULL), ('0')")
    found = postgres_source(fresh_database, "v1").orphans(
        Link("comments", "ticket_id", "tickets", "TKT-Ticket ID", ignore_values=("0",))
    )
    assert (found.checked, found.orphans, found.examples) == (3, 1, ("7",))
