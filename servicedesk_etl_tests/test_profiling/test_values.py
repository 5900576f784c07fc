import sqlite3
from pathlib import Path

import polars as pl
import pytest

from servicedesk_etl.profiling import values
from servicedesk_etl.profiling.values import RAW_DTYPE, ROWID, RowSample, read_rows, read_table
from servicedesk_etl.sqlite_source import open_readonly


def build(path: Path, ddl: str, rows: list[tuple], table: str = "t") -> Path:
    conn = sqlite3.connect(path)
    conn.execute(ddl)
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.commit()
    conn.close()
    return path


def unnested(frame: pl.DataFrame, column: str) -> list[dict]:
    return frame[column].to_list()


def test_values_keep_their_storage_class_not_the_declared_type_REAL_affinity_applies_only_to_numbers(tmp_path):
    path = build(tmp_path / "m.db", "CREATE TABLE t (x REAL)", [(1,), (2.5,), ("",), (None,), (b"\x01",)])
    frame = read_table(open_readonly(path), "t")
    assert frame.schema["x"] == RAW_DTYPE
    assert unnested(frame, "x") == [
        {"storage": "real", "i": None, "r": 1.0, "s": None, "b": None},
        {"storage": "real", "i": None, "r": 2.5, "s": None, "b": None},
        {"storage": "text", "i": None, "r": None, "s": "", "b": None},
        {"storage": "null", "i": None, "r": None, "s": None, "b": None},
        {"storage": "blob", "i": None, "r": None, "s": None, "b": b"\x01"},
    ]


def test_integers_among_reals_stay_integers(tmp_path):
    path = build(tmp_path / "m.db", "CREATE TABLE t (x)", [(2.5,), (7,), (None,)])
    storages = read_table(open_readonly(path), "t")["x"].struct.field("storage").to_list()
    assert storages == ["real", "integer", "null"]


def test_text_that_is_not_utf8_keeps_its_bytes_and_storage_text(tmp_path):
    path = tmp_path / "bad.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a TEXT, n INTEGER)")
    conn.execute("INSERT INTO t VALUES (CAST(x'66968a' AS TEXT), 1), ('fine', 2)")
    conn.commit()
    conn.close()
    frame = read_table(open_readonly(path), "t")
    assert frame["a"].to_list() == [
        {"storage": "text", "i": None, "r": None, "s": None, "b": b"f\x96\x8a"},
        {"storage": "text", "i": None, "r": None, "s": "fine", "b": None},
    ]
    assert frame["n"].struct.field("i").to_list() == [1, 2]


def test_rowid_and_column_selection(tmp_path):
    path = build(tmp_path / "m.db", "CREATE TABLE t (a INTEGER, b TEXT)", [(10, "x"), (20, "y")])
    frame = read_table(open_readonly(path), "t", ["b"])
    assert frame.columns == [ROWID, "b"]
    assert frame[ROWID].to_list() == [1, 2]


def test_without_rowid_tables_get_row_positions(tmp_path):
    path = build(tmp_path / "m.db", "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID", [("b", 2), ("a", 1)])
    frame = read_table(open_readonly(path), "t")
    assert frame[ROWID].to_list() == [1, 2]
    assert frame["k"].struct.field("s").to_list() == ["a", "b"]


def test_a_column_named_rowid_does_not_hide_the_real_rowid(tmp_path):
    path = build(tmp_path / "m.db", "CREATE TABLE t (rowid TEXT, v INTEGER)", [("x", 1), ("y", 2)])
    frame = read_table(open_readonly(path), "t")
    assert frame[ROWID].to_list() == [1, 2]
    assert frame["rowid"].struct.field("s").to_list() == ["x", "y"]


def test_empty_table_reads_as_empty_frame(tmp_path):
    path = build(tmp_path / "m.db", "CREATE TABLE t (a INTEGER, b TEXT)", [])
    frame = read_table(open_readonly(path), "t")
    assert frame.height == 0 and frame.columns == [ROWID, "a", "b"]


def test_sample_is_seeded_and_spread_over_the_table(tmp_path):
    path = build(tmp_path / "m.db", "CREATE TABLE t (a INTEGER)", [(n,) for n in range(20_000)])
    conn = open_readonly(path)
    first = read_rows(conn, "t", sample=RowSample(0.1, seed=1))[ROWID].to_list()
    again = read_rows(conn, "t", sample=RowSample(0.1, seed=1))[ROWID].to_list()
    other = read_rows(conn, "t", sample=RowSample(0.1, seed=2))[ROWID].to_list()
    assert first == again and first != other
    assert 1_500 < len(first) < 2_500
    assert first != list(range(1, len(first) + 1))
    assert max(first) > 19_000


@pytest.mark.parametrize(
    "table, column, expected",
    [
        ("intege", "id", ["integer", "text", "real"]),
        ("stamps", "StartTime", ["integer", "text", "null"]),
        ("def", "f1", ["text", "text"]),
    ],
)
def test_pgloader_edge_columns_report_storage_per_value(corpus_copy, table, column, expected):
    conn = open_readonly(corpus_copy("pgloader-sqlite.db"))
    assert read_table(conn, table)[column].struct.field("storage").to_list() == expected


def test_blob_in_a_text_column_is_read_as_blob(corpus_copy):
    frame = read_table(open_readonly(corpus_copy("pgloader-bad-utf8.db")), "files")
    assert frame["filename"].struct.field("storage").to_list() == ["text", "blob", "text"]
    assert frame["filename"].struct.field("b").to_list()[1] == b"file\x96name.txt"


def test_a_few_invalid_utf8_values_among_many_keep_their_bytes_and_the_rest_decodes(tmp_path):
    path = tmp_path / "bad.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [(f"näme {n}",) for n in range(3000)])
    conn.execute("UPDATE t SET a = CAST(x'66968a' AS TEXT) WHERE rowid IN (2, 2999)")
    conn.commit()
    conn.close()
    raw = read_rows(open_readonly(path), "t")["a"]
    invalid = {position + 1: value for position, value in enumerate(raw.struct.field("b").to_list()) if value}
    assert invalid == {2: b"f\x96\x8a", 2999: b"f\x96\x8a"}
    text = raw.struct.field("s").to_list()
    assert text[0] == "näme 0" and text[1] is None and text[2999] == "näme 2999"
    assert set(raw.struct.field("storage").to_list()) == {"text"}


def test_a_column_mixing_storage_classes_is_read_in_the_one_pass_that_reads_the_table(tmp_path, monkeypatch):
    rows = [(n + 0.5 if n % 3 else n, "text" if n % 5 == 0 else n / 4) for n in range(300)]
    path = build(tmp_path / "m.db", "CREATE TABLE t (x, y)", rows)
    conn = open_readonly(path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    batches = values.row_batches

    def traced(database, query, *args, **kwargs):  # the file's rows are read on a connection of their own
        statements.append(query)
        return batches(database, query, *args, **kwargs)

    monkeypatch.setattr(values, "row_batches", traced)
    frame = read_rows(conn, "t")
    reads = [statement for statement in statements
             if 'FROM "t"' in statement and "EXISTS" not in statement and "LIMIT 0" not in statement]
    assert len(reads) == 1, reads
    expected_x = ["integer" if n % 3 == 0 else "real" for n in range(300)]
    expected_y = ["text" if n % 5 == 0 else "real" for n in range(300)]
    assert frame["x"].struct.field("storage").to_list() == expected_x
    assert frame["y"].struct.field("storage").to_list() == expected_y
    assert frame["x"].struct.field("i").to_list()[:4] == [0, None, None, 3]
    assert frame["y"].struct.field("s").to_list()[:2] == ["text", None]


AWKWARD = [
    (1, "plain", 2.5, None),
    (2, "", -0.0, b"\x00\x01"),
    (3, "nul\x00byte", 1e308, "text among blobs"),
    (4, "line\r\nbreak", 7, b"blob"),
    (5, None, "7", 2**63 - 1),
    (6, "日本語 ✓", None, -(2**63)),
    (7, "   ", 0.1 + 0.2, ""),
]


def test_a_file_is_read_on_its_own_connection_exactly_as_the_same_rows_in_memory(tmp_path):
    """A file's rows come through a second, faster connection (`row_batches`); a connection without a
    file (here the same rows copied into memory) is read by the standard module: one frame either way."""
    path = build(tmp_path / "awkward.db", "CREATE TABLE t (k INTEGER, a TEXT, b REAL, c)", AWKWARD)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO t VALUES (8, CAST(x'66968a' AS TEXT), NULL, CAST(x'ff' AS TEXT))")
    conn.close()
    in_memory = sqlite3.connect(":memory:")
    sqlite3.connect(path).backup(in_memory)
    from_file = read_table(open_readonly(path), "t")
    assert from_file.equals(read_table(in_memory, "t"))
    assert from_file["a"].struct.field("b").to_list()[-1] == b"f\x96\x8a"
    assert from_file["c"].struct.field("storage").to_list() == [
        "null", "blob", "text", "blob", "integer", "integer", "text", "text"
    ]


def test_a_utf16_database_is_read_as_text_not_as_its_utf16_bytes(tmp_path):
    path = tmp_path / "utf16.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA encoding = 'UTF-16le'")
    conn.execute("CREATE TABLE t (a TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("ascii",), ("日本語",), (None,)])
    conn.commit()
    conn.close()
    assert read_table(open_readonly(path), "t")["a"].struct.field("s").to_list() == ["ascii", "日本語", None]
