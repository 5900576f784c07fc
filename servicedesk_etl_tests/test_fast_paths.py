"""The faster paths give exactly the results of the plain ones they replace.

Converting distinct values and gathering them back equals converting every row; reading text as
bytes keeps every value's storage class; the canary sample is hashed once per file and hashed
anew when the file changes.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from servicedesk_etl import loading
from servicedesk_etl.loading import canary_bucket, sample_filter
from servicedesk_etl.profiling import infer, values
from servicedesk_etl.profiling.convert import convert_column, convert_distinct
from servicedesk_etl.profiling.infer import profile_database
from servicedesk_etl.profiling.plan import ColumnPlan, Conversion, Plan, TablePlan
from servicedesk_etl.profiling.values import ROWID, RowSample, raw_from_python, read_rows
from servicedesk_etl.sqlite_source import open_readonly, quote_ident

MARKERS = ("", "NULL", "N/A", "-")


def column_plan(target: str, formats: tuple[str, ...], **fields: object) -> ColumnPlan:
    conversion = Conversion(formats=formats, null_markers=MARKERS, **fields)  # type: ignore[arg-type]
    return ColumnPlan("c", "c", "TEXT", target, conversion, 1.0)


@pytest.mark.parametrize(
    "plan, values",
    [
        (
            column_plan("timestamp", ("iso_datetime", "dmy_hm"), day_first=True),
            ["2025-05-20 08:42:00", "20/05/2025 8:42", "31/02/2025 8:00", "", "N/A", None, "soon", 45797],
        ),
        (column_plan("date", ("iso_date", "excel_serial")), ["2025-05-20", "2025-05-20 10:00:00", 45797.5, 45797]),
        (
            column_plan("numeric", ("integer", "real", "thousands_comma", "percent", "decimal_comma")),
            [1, 2.5, -0.0, 0.0, "1,234.5", "87.50%", "12,5", "x", "", None, float("inf")],
        ),
        (column_plan("bigint", ("integer", "real", "int_text")), [3, 3000000.0, 2.5, "42", "4.0", "-", None]),
        (column_plan("boolean", ("yes_no", "one_zero")), ["Yes", "no", 1, 0, 2, "maybe", None, " "]),
        (
            ColumnPlan(
                "c", "c", "TEXT", "text",
                Conversion(formats=("text", "integer_as_text", "real_as_text", "blob_as_text"), strip_nul=True,
                           normalize_newlines=True, invalid_utf8="cp1252"),
                1.0,
            ),
            ["a\r\nb", "nul\x00byte", bytearray(b"f\x96\x8a"), b"blob", 7, 1.5, -0.0, 0.0, None, "plain"],
        ),
        (column_plan("bytea", ("blob", "text_as_bytes")), [b"\x00\x01", "abc", None]),
    ],
)
def test_converting_distinct_values_equals_converting_every_row(plan, values):
    raw = raw_from_python("c", values * 7)
    every_row = convert_column(raw, plan)
    distinct = convert_distinct(raw, plan)
    for name in ("values", "outcome", "operation", "reason"):
        expected, got = getattr(every_row, name), getattr(distinct, name)
        assert got.dtype == expected.dtype and got.name == expected.name
        assert list(map(repr, got.to_list())) == list(map(repr, expected.to_list())), name  # repr: -0.0 is not 0.0


def test_converting_distinct_values_of_an_empty_column_gives_empty_series():
    converted = convert_distinct(raw_from_python("c", []), column_plan("bigint", ("integer",)))
    assert converted.values.len() == converted.outcome.len() == 0


def storage_classes(path: Path, table: str, column: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        query = f"SELECT typeof({quote_ident(column)}) FROM {quote_ident(table)} ORDER BY rowid"
        return [storage for (storage,) in conn.execute(query)]
    finally:
        conn.close()


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (txt TEXT, bad TEXT, blobs BLOB, both_kinds TEXT, reals, ints INTEGER, empty TEXT)")
    rows = [
        ("a", "fine", b"\x00\xff", "text", 1.5, 1, None),
        ("", None, b"", b"\x01", 2.5, 2, None),
        (None, "ok", None, None, None, None, None),
    ]
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("INSERT INTO t VALUES ('b', CAST(x'66968a' AS TEXT), x'02', 'more', 7, 3, NULL)")
    conn.commit()
    conn.close()
    return path


def test_reading_text_as_bytes_keeps_every_storage_class(mixed_file):
    frame = read_rows(open_readonly(mixed_file), "t")
    for name in ("txt", "bad", "blobs", "both_kinds", "reals", "ints", "empty"):
        assert frame[name].struct.field("storage").to_list() == storage_classes(mixed_file, "t", name), name
    assert frame["bad"].struct.field("b").to_list() == [None, None, None, b"f\x96\x8a"]
    assert frame["bad"].struct.field("s").to_list() == ["fine", None, "ok", None]
    assert frame["blobs"].struct.field("b").to_list() == [b"\x00\xff", b"", None, b"\x02"]
    assert frame["both_kinds"].struct.field("s").to_list() == ["text", None, None, "more"]
    assert frame["both_kinds"].struct.field("b").to_list() == [None, b"\x01", None, None]
    assert frame["reals"].struct.field("i").to_list() == [None, None, None, 7]
    assert frame["txt"].struct.field("s").to_list() == ["a", "", None, "b"]


def test_a_sampled_read_keeps_integers_among_reals(tmp_path):
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(n if n % 7 == 0 else n + 0.5,) for n in range(5000)])
    conn.commit()
    conn.close()
    frame = read_rows(open_readonly(path), "t", sample=RowSample(0.3, seed=2))
    rowids = frame[ROWID].to_list()
    assert 1000 < len(rowids) < 2000
    expected = ["integer" if (rowid - 1) % 7 == 0 else "real" for rowid in rowids]
    assert frame["x"].struct.field("storage").to_list() == expected


def keyed_file(path: Path, keys: range) -> Path:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("CREATE TABLE t (id INTEGER, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(k, f"v{k}") for k in keys])
    conn.close()
    return path


TABLE = TablePlan(
    name="t",
    pg_name="t",
    row_count=3000,
    columns=(ColumnPlan("id", "id", "INTEGER", "bigint", Conversion(), 1.0), ColumnPlan("v", "v", "TEXT", "text", Conversion(), 1.0)),
    key_columns=("id",),
)


def sampled_ids(path: Path) -> list[int]:
    conn = open_readonly(path)
    try:
        where, params = sample_filter(conn, TABLE, sample_percent=10, seed=0, small_table_rows=1000)
        return [key for (key,) in conn.execute(f"SELECT id FROM t{where} ORDER BY id", params)]
    finally:
        conn.close()


def test_the_canary_sample_is_chosen_once_per_file_and_anew_when_the_file_changes(tmp_path, monkeypatch):
    calls = []
    choose = loading._chosen_rowids

    def counted(*args):
        calls.append(args)
        return choose(*args)

    monkeypatch.setattr(loading, "_chosen_rowids", counted)
    path = keyed_file(tmp_path / "k.db", range(3000))
    first = sampled_ids(path)
    assert first == [k for k in range(3000) if canary_bucket(0, k) < 1000]
    assert sampled_ids(path) == first and len(calls) == 1
    keyed_file(path, range(10_000, 13_000))
    assert sampled_ids(path) == [k for k in range(10_000, 13_000) if canary_bucket(0, k) < 1000]
    assert len(calls) == 2


def test_integer_keys_are_sampled_in_sql_exactly_as_canary_bucket_says(tmp_path):
    """Integer keys are bucketed by SQLite; keys of other types in the same column by Python: one rule."""
    keys = [*range(-50, 50), 2**62, -(2**63), 2**63 - 1, "a-7", "b", 3.5, 4.0]
    conn = sqlite3.connect(tmp_path / "mixed-keys.db")
    with conn:
        conn.execute("CREATE TABLE t (k)")
        conn.executemany("INSERT INTO t VALUES (?)", [(key,) for key in keys])
    for seed in (0, 3):
        chosen = loading._chosen_rowids(conn, "t", "rowid", ("k",), seed, 5000)
        assert chosen == [rowid for rowid, key in enumerate(keys, 1) if canary_bucket(seed, key) < 5000]
        assert 0 < len(chosen) < len(keys)
    conn.close()


def test_reading_in_batches_gives_the_frame_of_one_batch(mixed_file, tmp_path, monkeypatch):
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE w (k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    conn.executemany("INSERT INTO w VALUES (?, ?)", [("a", None), ("b", None), ("c", 1), ("d", 2.5), ("e", "x")])
    conn.commit()
    conn.close()
    whole = {name: read_rows(open_readonly(file), name) for file, name in ((mixed_file, "t"), (path, "w"))}
    monkeypatch.setattr(values, "FETCH_ROWS", 2)
    for file, name in ((mixed_file, "t"), (path, "w")):
        batched = read_rows(open_readonly(file), name)
        assert batched.to_dicts() == whole[name].to_dicts()
    assert whole["w"][ROWID].to_list() == [1, 2, 3, 4, 5]
    assert whole["w"]["v"].struct.field("storage").to_list() == ["null", "null", "integer", "real", "text"]


def comparable(plan: Plan) -> list[tuple]:
    """A plan's decisions and evidence, without the run time and the (arbitrary) format examples."""
    return [
        (table.name, table.key_columns, column.name, column.target_type, column.conversion, column.reason,
         column.unique, dataclasses.replace(column.profile, formats=()))
        for table in plan.tables
        for column in table.columns
    ]


def test_profiling_a_few_columns_at_a_time_gives_the_plan_of_the_whole_table(tmp_path, monkeypatch):
    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE t ("Row ID" INTEGER, "Crm ID" INTEGER, created TEXT, hours REAL, note TEXT)')
    rows = [(n, n % 7, f"2025-05-{n % 28 + 1:02d} 08:00:00", n / 4, f"note {n % 5}") for n in range(400)]
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows + rows[:3])  # three exact duplicate rows
    conn.execute("CREATE TABLE u (id INTEGER, v TEXT)")
    conn.executemany("INSERT INTO u VALUES (?, ?)", [(n % 50, f"v{n}") for n in range(300)])
    conn.commit()
    conn.close()
    whole = profile_database(path)
    monkeypatch.setattr(infer, "CELLS_PER_READ", 500)
    by_columns = profile_database(path)
    assert comparable(by_columns) == comparable(whole)
    assert whole.table("t").key_columns == ("Row ID",) and whole.table("u").key_columns == ()


def test_taking_format_shapes_one_at_a_time_gives_the_plan_of_taking_them_at_once(tmp_path, monkeypatch):
    path = tmp_path / "formats.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (created TEXT, amount TEXT, flag TEXT, serial, code TEXT)")
    rows = [
        (
            ["2025-05-20 08:42:00", "21/05/2025 9:15", "2025-05-24T10:00", "2025-05-23"][n % 4],
            ["1,234.5", "12,5", "87.50%", "42", "x"][n % 5],
            ["Yes", "no", "Y", "1", "maybe"][n % 5],
            [45797, 45797.5, "45798", 1747730520][n % 4],
            f"{n:04d}",
        )
        for n in range(200)
    ]
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    at_once = profile_database(path)
    monkeypatch.setattr(infer, "FEW_VALUES", 0)
    one_at_a_time = profile_database(path)
    assert comparable(one_at_a_time) == comparable(at_once)
    table = at_once.table("t")
    assert [column.target_type for column in table.columns] == ["timestamp", "numeric", "boolean", "double precision", "text"]
    assert table.column("created").conversion.formats == ("iso_date", "iso_datetime", "dmy_hm")
