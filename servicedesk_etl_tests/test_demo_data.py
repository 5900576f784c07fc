"""The demo snapshot: shape of the real export, planted defects exactly where truth.json says."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from servicedesk_etl.demo_data import (
    FULL_SCALE_ROWS,
    SAMPLED_DEFECTS,
    generate_demo_snapshot,
    truth_path_for,
)
from servicedesk_etl.errors import InputError
from servicedesk_etl.profiling.plan import TARGET_TYPES
from servicedesk_etl.sqlite_source import open_readonly, quote_ident, table_columns

SCALE = 0.01
TABLES = ("tickets", "comments", "timesheets")
DMY = re.compile(r"^\d{2}/\d{2}/\d{4} \d{1,2}:\d{2}$")
MDY = re.compile(r"^(\d{2})/(\d{2})/\d{4} \d{2}:\d{2} [AP]M$")
ISO = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("demo") / "servicedesk_tickets.db"
    summary = generate_demo_snapshot(path, scale=SCALE, seed=42)
    return path, json.loads(summary.truth_path.read_text(encoding="utf-8"))


@pytest.fixture
def conn(demo: tuple[Path, dict[str, Any]]) -> sqlite3.Connection:
    connection = open_readonly(demo[0])
    yield connection
    connection.close()


def ident(name: str) -> str:
    return quote_ident(name)


def rows_planted(truth: dict[str, Any], table: str, columns: tuple[str, ...]) -> set[int]:
    return {c["rowid"] for c in truth["cells"]
            if c["table"] == table and c["column"] in columns and c["defect"] not in SAMPLED_DEFECTS}


def dump_digest(path: Path) -> str:
    """A digest of every table's rows: storage class and bytes of every cell, in rowid order."""
    digest = hashlib.sha256()
    connection = open_readonly(path)
    try:
        for table in TABLES:
            names = [c.name for c in table_columns(connection, table)]
            cells = ", ".join(f"typeof({ident(n)}), hex(CAST({ident(n)} AS BLOB))" for n in names)
            for row in connection.execute(f"SELECT rowid, {cells} FROM {ident(table)} ORDER BY rowid"):
                digest.update(repr(row).encode())
    finally:
        connection.close()
    return digest.hexdigest()


def test_row_counts_are_the_export_counts_scaled(demo, conn):
    path, truth = demo
    expected = {table: round(rows * SCALE) for table, rows in FULL_SCALE_ROWS.items()}
    assert expected == {"tickets": 109, "comments": 1081, "timesheets": 1411}
    actual = {table: conn.execute(f"SELECT count(*) FROM {ident(table)}").fetchone()[0] for table in TABLES}
    assert actual == expected == truth["row_counts"]


def test_tables_are_declared_the_way_pandas_to_sql_declares_them(conn, demo):
    truth = demo[1]
    declared = {table: {c.name: c.declared_type for c in table_columns(conn, table)} for table in TABLES}
    assert [len(declared[t]) for t in TABLES] == [60, 10, 21]
    assert {t for cols in declared.values() for t in cols.values()} == {"TEXT", "INTEGER", "REAL", "TIMESTAMP"}
    assert all(c.primary_key_position == 0 for t in TABLES for c in table_columns(conn, t))
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index'").fetchone()[0] == 0
    tickets = declared["tickets"]
    assert tickets["TKT-Ticket ID"] == "INTEGER"
    assert {tickets[c] for c in ("TKT-Parent ID", "TKT-Account Id", "TKT-Related CI Ref#")} == {"REAL"}
    assert {tickets[c] for c in ("TKT-Created Time", "TKT-Modified Time", "TKT-SLA Closure Date")} == {"TIMESTAMP"}
    assert {tickets[c] for c in ("TKT-Actual Response Date", "TKT-Closure Date", "Chg-Planned Start Date")} == {"TEXT"}
    assert declared["comments"]["comment_id"] == "TEXT" and declared["comments"]["created_time"] == "TIMESTAMP"
    timesheets = declared["timesheets"]
    assert (timesheets["TS-Hours"], timesheets["TS-Crm ID"], timesheets["TS-Date"]) == ("REAL", "INTEGER", "TIMESTAMP")
    create = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'tickets'").fetchone()[0]
    assert create.startswith('CREATE TABLE "tickets" (\n"TKT-Ticket ID" INTEGER,\n  "TKT-Parent ID" REAL,')
    assert {t: set(cols) for t, cols in truth["column_types"].items()} == {t: set(declared[t]) for t in TABLES}


def test_column_types_name_a_target_type_for_every_column(demo):
    types = demo[1]["column_types"]
    assert {t for table in types.values() for t in table.values()} <= set(TARGET_TYPES)
    tickets = types["tickets"]
    assert tickets["TKT-Actual Response Date"] == tickets["TKT-Created Time"] == "timestamp"
    assert tickets["TKT-Parent ID"] == types["comments"]["comment_id"] == "bigint"
    assert tickets["TKT-Actual SLA Achievement"] == "numeric"
    assert tickets["TKT-SLA Met"] == types["comments"]["visible_to_customer"] == "boolean"
    assert types["timesheets"]["TS-Hours"] == "double precision"
    assert demo[1]["key_columns"] == {"tickets": "TKT-Ticket ID", "comments": "comment_id", "timesheets": None}


def test_every_truth_cell_holds_its_raw_value_in_the_file(demo, conn):
    truth = demo[1]
    assert len(truth["cells"]) > 100
    for cell in truth["cells"]:
        table, column = ident(cell["table"]), ident(cell["column"])
        storage, stored, value = conn.execute(
            f"SELECT typeof({column}), CAST({column} AS BLOB), "
            f"CASE typeof({column}) WHEN 'real' THEN {column} END FROM {table} WHERE rowid = ?",
            (cell["rowid"],),
        ).fetchone()
        raw = cell["raw"]
        if isinstance(raw, dict):
            assert (storage, stored) == ("text", bytes.fromhex(raw["hex"])), cell
        elif isinstance(raw, float):
            assert (storage, value) == ("real", raw), cell
        else:
            assert (storage, stored) == ("text", raw.encode("utf-8")), cell
        key_column = truth["key_columns"][cell["table"]]
        if key_column:
            (key,) = conn.execute(f"SELECT {ident(key_column)} FROM {table} WHERE rowid = ?", (cell["rowid"],)).fetchone()
            assert int(key) == cell["key"], cell


def test_complete_defect_classes_list_every_such_cell_in_the_file(demo, conn):
    """Every '', null marker, NUL, CRLF and non-UTF-8 value in the file is a truth cell, and no more."""
    truth = demo[1]
    listed: dict[tuple[str, str], set[int]] = {}
    for c in truth["cells"]:
        if c["defect"] not in SAMPLED_DEFECTS and c["defect"] not in ("dmy_datetime", "mdy_datetime"):
            listed.setdefault((c["table"], c["column"]), set()).add(c["rowid"])
    found: dict[tuple[str, str], set[int]] = {}
    for table in TABLES:
        for column in (c.name for c in table_columns(conn, table)):
            col = ident(column)
            rows = conn.execute(
                f"SELECT rowid FROM {ident(table)} WHERE typeof({col}) = 'text' AND ("
                f"trim({col}) IN ('', 'N/A', 'NULL', '-', 'nan') OR instr(CAST({col} AS BLOB), x'00') > 0 "
                f"OR instr(CAST({col} AS BLOB), x'0d0a') > 0 OR instr(CAST({col} AS BLOB), x'96') > 0)"
            ).fetchall()
            if rows:
                found[(table, column)] = {r for (r,) in rows}
    assert found == listed
    assert found[("tickets", "TKT-Closure Date")] == {
        r for (r,) in conn.execute('SELECT rowid FROM tickets WHERE "TKT-Status" <> \'Closed\'')}


def test_counts_agree_with_the_cells_for_complete_classes(demo):
    truth = demo[1]
    listed = Counter(c["defect"] for c in truth["cells"])
    for defect, count in truth["counts"].items():
        if defect in SAMPLED_DEFECTS:
            assert count >= listed[defect] > 0
        elif defect == "duplicate_row":
            assert count == len(truth["duplicate_rows"])
        elif defect == "orphan":
            assert count == len(truth["orphans"])
        else:
            assert count == listed[defect], defect
    for defect in ("empty_string", "null_marker", "whitespace", "nul_byte", "crlf", "mdy_datetime"):
        assert truth["counts"][defect] > 0, defect
    assert truth["counts"]["invalid_utf8"] == 2


def test_exactly_nine_day_first_response_dates_and_the_rest_iso(demo, conn):
    values = [v for (v,) in conn.execute('SELECT "TKT-Actual Response Date" FROM tickets') if v is not None]
    day_first = [v for v in values if DMY.match(v)]
    assert len(day_first) == 9
    assert sum(int(v[:2]) > 12 for v in day_first) >= 5
    assert any(int(v[:2]) <= 12 for v in day_first)
    assert all(ISO.match(v) for v in values if not DMY.match(v))
    cells = [c for c in demo[1]["cells"] if c["defect"] == "dmy_datetime"]
    assert sorted(c["raw"] for c in cells) == sorted(day_first)
    for cell in cells:
        parsed = datetime.strptime(cell["raw"], "%d/%m/%Y %H:%M")
        assert cell["expected"] == parsed.strftime("%Y-%m-%d %H:%M:%S")


def test_change_planned_start_is_month_first_with_proof(demo, conn):
    values = [v for (v,) in conn.execute('SELECT "Chg-Planned Start Date" FROM tickets') if v is not None]
    assert values and all(MDY.match(v) for v in values)
    assert any(int(MDY.match(v).group(2)) > 12 for v in values)
    for cell in (c for c in demo[1]["cells"] if c["defect"] == "mdy_datetime"):
        parsed = datetime.strptime(cell["raw"], "%m/%d/%Y %I:%M %p")
        assert cell["expected"] == parsed.strftime("%Y-%m-%d %H:%M:%S")


def test_created_before_modified_before_closed_on_unplanted_rows(demo, conn):
    truth = demo[1]
    planted = rows_planted(truth, "tickets", ("TKT-Created Time", "TKT-Modified Time", "TKT-Closure Date",
                                              "TKT-Actual Response Date", "TKT-Actual Resolution Date"))
    rows = conn.execute(
        'SELECT rowid, "TKT-Created Time", "TKT-Modified Time", "TKT-Closure Date", "TKT-Actual Response Date", '
        '"TKT-Actual Resolution Date", "TKT-Status" FROM tickets'
    ).fetchall()
    checked = 0
    for rowid, created, modified, closed, response, resolution, status in rows:
        assert "2024-01-01" <= created <= modified < "2026-01-01"
        if rowid in planted:
            continue
        checked += 1
        assert (closed is not None) == (status == "Closed")
        assert (resolution is not None) == (status in ("Closed", "Resolved"))
        assert created <= (response or created) <= (resolution or "9999") <= (closed or "9999")
        if closed is not None:
            assert modified <= closed
    assert checked > 50


def test_comments_have_about_two_percent_orphans(demo, conn):
    truth = demo[1]
    orphans = {r for (r,) in conn.execute(
        "SELECT rowid FROM comments WHERE CAST(ticket_id AS INTEGER) NOT IN (SELECT \"TKT-Ticket ID\" FROM tickets)")}
    assert orphans == {o["rowid"] for o in truth["orphans"]}
    assert 0.015 <= len(orphans) / truth["row_counts"]["comments"] <= 0.025


def test_comment_counts_per_ticket_are_skewed(conn):
    counts = sorted((n for (n,) in conn.execute("SELECT count(*) FROM comments GROUP BY ticket_id")), reverse=True)
    top_tenth = counts[: max(1, len(counts) // 10)]
    assert sum(top_tenth) / sum(counts) > 0.25


def test_timesheets_are_about_one_fifth_admin_time_with_sane_hours(demo, conn):
    total, admin = conn.execute('SELECT count(*), sum("TS-Crm ID" = 0) FROM timesheets').fetchone()
    assert 0.17 <= admin / total <= 0.23
    bad_hours = conn.execute(
        'SELECT count(*) FROM timesheets WHERE typeof("TS-Hours") = \'real\' AND NOT ("TS-Hours" > 0 AND "TS-Hours" <= 24)'
    ).fetchone()[0]
    assert bad_hours == 0
    typical = conn.execute('SELECT avg("TS-Hours" BETWEEN 0.25 AND 8) FROM timesheets WHERE typeof("TS-Hours") = \'real\'')
    assert typical.fetchone()[0] > 0.95
    dangling = conn.execute(
        'SELECT count(*) FROM timesheets WHERE "TS-Crm ID" <> 0 AND "TS-Crm ID" NOT IN (SELECT "TKT-Ticket ID" FROM tickets)'
    ).fetchone()[0]
    assert dangling == 0


def test_listed_duplicate_rows_are_identical_and_the_only_ones(demo, conn):
    truth = demo[1]
    assert {d["table"] for d in truth["duplicate_rows"]} == {"comments", "timesheets"}
    for table in ("comments", "timesheets"):
        names = [c.name for c in table_columns(conn, table)]
        blobs = ", ".join(f"typeof({ident(n)}) || hex(CAST({ident(n)} AS BLOB))" for n in names)
        listed = [d["rowids"] for d in truth["duplicate_rows"] if d["table"] == table]
        for rowids in listed:
            rows = {conn.execute(f"SELECT {blobs} FROM {ident(table)} WHERE rowid = ?", (r,)).fetchone() for r in rowids}
            assert len(rows) == 1
        groups = conn.execute(
            f"SELECT count(*) FROM (SELECT {blobs} FROM {ident(table)} GROUP BY {', '.join(map(ident, names))} "
            "HAVING count(*) > 1)"
        ).fetchone()[0]
        assert groups == len(listed)


def test_representation_columns_hold_their_representation(conn):
    percentages = [v for (v,) in conn.execute('SELECT DISTINCT "TKT-Actual SLA Achievement" FROM tickets') if v]
    assert percentages and all(re.fullmatch(r"\d+\.\d{2}%", v) for v in percentages)
    yes_no = {v for (v,) in conn.execute('SELECT DISTINCT "TKT-SLA Met" FROM tickets UNION '
                                         'SELECT DISTINCT visible_to_customer FROM comments')}
    assert yes_no == {"Yes", "No", None}
    ids = conn.execute("SELECT count(*), sum(typeof(comment_id) = 'text' AND comment_id GLOB '[1-9]*' "
                       "AND CAST(comment_id AS INTEGER) > 0) FROM comments").fetchone()
    assert ids[0] == ids[1]
    parents = conn.execute('SELECT count(*), sum("TKT-Parent ID" = CAST("TKT-Parent ID" AS INTEGER)) FROM tickets '
                           "WHERE typeof(\"TKT-Parent ID\") = 'real'").fetchone()
    assert parents[0] > 0 and parents[0] == parents[1]


def test_same_seed_gives_the_same_file_and_truth(tmp_path, demo):
    again = generate_demo_snapshot(tmp_path / "again.db", scale=SCALE, seed=42)
    assert dump_digest(again.path) == dump_digest(demo[0])
    assert json.loads(again.truth_path.read_text(encoding="utf-8")) == demo[1]
    other = generate_demo_snapshot(tmp_path / "other.db", scale=SCALE, seed=7)
    assert dump_digest(other.path) != dump_digest(demo[0])


def test_overwrites_an_existing_demo_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "snap.db"
    path.write_bytes(b"not a database")
    (tmp_path / "snap.db-journal").write_bytes(b"stale journal")
    summary = generate_demo_snapshot(path, scale=0.001, seed=1)
    assert summary.path == path and summary.truth_path == truth_path_for(path) == tmp_path / "snap.db.truth.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db", "snap.db.truth.json"]
    connection = open_readonly(path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()
    assert sum(summary.row_counts.values()) == 11 + 108 + 141
    assert summary.planted["dmy_datetime"] == 9


def test_tiniest_scale_still_writes_every_table(tmp_path):
    summary = generate_demo_snapshot(tmp_path / "tiny.db", scale=0.0001)
    assert summary.row_counts == {"tickets": 1, "comments": 11, "timesheets": 14}


@pytest.mark.parametrize("scale", [0.0, -1.0, 0.00001])
def test_a_scale_that_empties_a_table_is_an_input_error(tmp_path, scale):
    with pytest.raises(InputError, match="scale"):
        generate_demo_snapshot(tmp_path / "x.db", scale=scale)
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
def test_full_scale_snapshot_has_260130_rows_within_budget(tmp_path):
    summary = generate_demo_snapshot(tmp_path / "full.db", scale=1.0)
    print(f"\nscale 1 demo snapshot: {sum(summary.row_counts.values()):,} rows in {summary.seconds:.2f} s")
    assert summary.row_counts == FULL_SCALE_ROWS
    assert sum(summary.row_counts.values()) == 260_130
    assert summary.planted["dmy_datetime"] == 9
    assert summary.seconds < 10
