"""Gate 2 core: the plan executed into a new SQLite file, with audit, quarantine and reconciliation."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import polars as pl
import pytest

from servicedesk_etl import cleaning, raw_cache
from servicedesk_etl.cleaning import (
    CleanResult,
    CleanSettings,
    clean_snapshot,
    temp_path_for,
)
from servicedesk_etl.errors import InputError, ResourceExhausted
from servicedesk_etl.profiling.plan import ColumnPlan, Conversion, Plan, TablePlan
from servicedesk_etl.profiling.values import ROWID, read_rows
from servicedesk_etl.sqlite_source import file_sha256, list_tables, open_readonly

from .conftest import CORPUS_FILES, REPO_ROOT

MARKERS = ("", "NULL", "N/A", "NA", "?", "-", "nan")
ISO_DATETIME = ("iso_datetime", "dmy_hm")
WHOLE_NUMBERS = ("integer", "real", "int_text")


def column(name: str, target: str, *, declared: str = "TEXT", formats: Sequence[str] = ("text",),
           markers: Sequence[str] = (), **conversion: object) -> ColumnPlan:
    return ColumnPlan(
        name=name, pg_name=name, declared_type=declared, target_type=target,
        conversion=Conversion(
            formats=tuple(formats), null_markers=tuple(markers), **conversion  # type: ignore[arg-type]
        ),
        confidence=1.0,
    )


def table_plan(name: str, columns: Sequence[ColumnPlan], keys: Sequence[str] = ()) -> TablePlan:
    return TablePlan(name=name, pg_name=name, row_count=0, columns=tuple(columns), key_columns=tuple(keys))


def plan_for(path: Path, *tables: TablePlan) -> Plan:
    return Plan(source_path=str(path), source_sha256=file_sha256(path), created_at="2026-01-01T00:00:00+00:00",
                tables=tables)


def build_sqlite(path: Path, script: str) -> Path:
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(script)
        conn.commit()
    return path


def rows_of(path: Path, query: str, params: Sequence[object] = ()) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(query, params).fetchall()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "cleaning-tmp" in p.name)


TICKETS_SQL = """
CREATE TABLE "tickets" ("TKT-Ticket ID" INTEGER, "TKT-Created Time" TIMESTAMP, "TKT-Parent ID" REAL,
                        "TKT-Job#/Ref#" TEXT, "select" TEXT);
INSERT INTO "tickets" (rowid, "TKT-Ticket ID", "TKT-Created Time", "TKT-Parent ID", "TKT-Job#/Ref#", "select") VALUES
  (1, 101, '2025-05-20 08:42:00', 3000000.0, 'J-1', 'a'),
  (2, 102, '20/05/2025 8:42', '', 'J-2', 'b'),
  (3, 103, 'N/A', 'toto', '', 'c'),
  (4, 104, NULL, X'00FF10', 'J-4', NULL),
  (5, 105, '  ', 12.5, 'J-5', 'e'),
  (6, 106, 'not a date', '-', 'J-6', 'f'),
  (7, '107', '2025-01-02 03:04:05', 7, 'J-7', 'g');
"""


def tickets_plan(path: Path) -> Plan:
    return plan_for(path, table_plan("tickets", [
        column("TKT-Ticket ID", "bigint", declared="INTEGER", formats=WHOLE_NUMBERS, markers=MARKERS),
        column("TKT-Created Time", "timestamp", declared="TIMESTAMP", formats=ISO_DATETIME, markers=MARKERS,
               day_first=True),
        column("TKT-Parent ID", "bigint", declared="REAL", formats=WHOLE_NUMBERS, markers=MARKERS),
        column("TKT-Job#/Ref#", "text"),
        column("select", "text"),
    ], keys=("TKT-Ticket ID",)))


@pytest.fixture
def tickets(tmp_path: Path) -> tuple[Path, Plan]:
    source = build_sqlite(tmp_path / "snapshot.db", TICKETS_SQL)
    return source, tickets_plan(source)


@pytest.fixture
def cleaned_tickets(tickets: tuple[Path, Plan], tmp_path: Path) -> tuple[Path, CleanResult]:
    source, plan = tickets
    return source, clean_snapshot(source, plan, tmp_path / "cleaned.db")


def test_output_columns_carry_the_planned_declared_types_and_original_names(cleaned_tickets):
    _, result = cleaned_tickets
    declared = rows_of(result.output, "SELECT name, type FROM pragma_table_info('tickets') ORDER BY cid")
    assert declared == [("TKT-Ticket ID", "INTEGER"), ("TKT-Created Time", "TIMESTAMP"),
                        ("TKT-Parent ID", "INTEGER"), ("TKT-Job#/Ref#", "TEXT"), ("select", "TEXT")]


def test_planted_values_are_converted_and_stored_with_the_target_storage_class(cleaned_tickets):
    _, result = cleaned_tickets
    rows = rows_of(result.output, 'SELECT rowid, "TKT-Ticket ID", typeof("TKT-Ticket ID"), "TKT-Created Time",'
                                  ' "TKT-Parent ID", typeof("TKT-Parent ID") FROM tickets ORDER BY rowid')
    by_rowid = {row[0]: row[1:] for row in rows}
    assert by_rowid[1] == (101, "integer", "2025-05-20 08:42:00", 3000000, "integer")
    assert by_rowid[2][2] == "2025-05-20 08:42:00"
    assert by_rowid[7][:2] == (107, "integer")
    assert by_rowid[7][2] == "2025-01-02 03:04:05"
    assert by_rowid[7][3:] == (7, "integer")
    assert result.converted_cells >= 3


def test_empty_strings_and_null_markers_become_null_and_are_counted(cleaned_tickets):
    _, result = cleaned_tickets
    rows = dict(rows_of(result.output, 'SELECT rowid, "TKT-Parent ID" FROM tickets'))
    assert rows[2] is None and rows[6] is None
    created = dict(rows_of(result.output, 'SELECT rowid, "TKT-Created Time" FROM tickets'))
    assert created[3] is None and created[5] is None
    nulled = dict(rows_of(result.output, "SELECT column_name, sum(count) FROM _audit WHERE table_name = 'tickets'"
                                         " AND outcome = 'nulled' GROUP BY column_name"))
    assert nulled == {"TKT-Created Time": 2, "TKT-Parent ID": 2}
    assert result.nulled_cells == 4


def test_unconvertible_values_are_quarantined_with_original_bytes_storage_class_and_reason(cleaned_tickets):
    _, result = cleaned_tickets
    entries = rows_of(result.output, "SELECT row_id, key_column, key_value, column_name, value, typeof(value),"
                                     " storage_class, reason FROM _quarantine ORDER BY column_name, row_id")
    got = {(row_id, column_name): (key_column, key_value, value, kind, storage)
           for row_id, key_column, key_value, column_name, value, kind, storage, _ in entries}
    assert got == {
        (6, "TKT-Created Time"): ("TKT-Ticket ID", 106, "not a date", "text", "text"),
        (3, "TKT-Parent ID"): ("TKT-Ticket ID", 103, "toto", "text", "text"),
        (4, "TKT-Parent ID"): ("TKT-Ticket ID", 104, b"\x00\xff\x10", "blob", "blob"),
        (5, "TKT-Parent ID"): ("TKT-Ticket ID", 105, 12.5, "real", "real"),
    }
    assert all(reason for *_, reason in entries)
    cleaned = dict(rows_of(result.output, 'SELECT rowid, "TKT-Parent ID" FROM tickets WHERE rowid IN (3, 4, 5)'))
    assert cleaned == {3: None, 4: None, 5: None}
    assert result.quarantined_cells == 4


def test_audit_records_each_operation_with_count_and_before_after_examples(cleaned_tickets):
    _, result = cleaned_tickets
    audit = rows_of(result.output, "SELECT outcome, operation, count, examples FROM _audit"
                                   " WHERE table_name = 'tickets' AND column_name = 'TKT-Created Time'")
    counts: dict[str, int] = {}
    for outcome, _, count, _ in audit:
        counts[outcome] = counts.get(outcome, 0) + count
    assert counts == {"kept": 2, "converted": 1, "nulled": 2, "failed": 1}
    converted = [json.loads(examples) for outcome, _, _, examples in audit if outcome == "converted"]
    assert {"rowid": 2, "before": "20/05/2025 8:42", "after": "2025-05-20 08:42:00"} in sum(converted, [])
    assert all(len(json.loads(examples)) <= 3 for *_, examples in audit)


def test_every_column_reconciles_from_the_written_file(cleaned_tickets):
    source, result = cleaned_tickets
    parent = next(c for c in result.reconciliation if c.column == "TKT-Parent ID")
    assert (parent.source_non_null, parent.cleaned_non_null, parent.quarantined, parent.nulled_by_rule,
            parent.in_removed_duplicates) == (7, 2, 3, 2, 0)
    assert result.reconciled and all(c.balanced for c in result.reconciliation)
    assert result.rows_in == {"tickets": 7} and result.rows_out == {"tickets": 7}
    assert result.source_unchanged and result.source_sha256_before == file_sha256(source)


def test_source_file_is_byte_for_byte_unchanged(tickets, tmp_path):
    source, plan = tickets
    before = source.read_bytes()
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db")
    assert source.read_bytes() == before
    assert result.source_sha256_after == result.source_sha256_before == file_sha256(source)


DUPLICATES_SQL = """
CREATE TABLE comments (comment_id TEXT, body TEXT);
INSERT INTO comments (rowid, comment_id, body) VALUES
  (1, '1', 'a'), (2, '1', 'a'),
  (3, '2', 'b'), (4, 2, 'c'),
  (5, NULL, 'd'), (6, NULL, 'd'), (7, NULL, 'e'),
  (8, '3', 'x'), (9, 'oops', 'x'), (10, 'oops', 'x');
"""


@pytest.fixture
def comments(tmp_path: Path) -> tuple[Path, Plan]:
    source = build_sqlite(tmp_path / "comments.db", DUPLICATES_SQL)
    plan = plan_for(source, table_plan("comments", [
        column("comment_id", "bigint", formats=WHOLE_NUMBERS, markers=MARKERS),
        column("body", "text"),
    ], keys=("comment_id",)))
    return source, plan


def test_keep_first_removes_identical_rows_and_repeated_keys_into_the_quarantine(comments, tmp_path):
    source, plan = comments
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db")
    kept = rows_of(result.output, "SELECT rowid, comment_id, body FROM comments ORDER BY rowid")
    # 2 repeats row 1; 4 repeats key 2 once '2' is 2; 6 repeats 5 (NULLs equal); 10 repeats 9 after 'oops' failed.
    assert kept == [(1, 1, "a"), (3, 2, "b"), (5, None, "d"), (7, None, "e"), (8, 3, "x"), (9, None, "x")]
    removed = rows_of(result.output, "SELECT row_id, key_value, value, reason FROM _quarantine"
                                     " WHERE column_name IS NULL ORDER BY row_id")
    assert [(row_id, reason) for row_id, _, _, reason in removed] == [
        (2, "duplicate_row"), (4, "duplicate_key"), (6, "duplicate_row"), (10, "duplicate_row")]
    assert json.loads(removed[1][2]) == {"comment_id": 2, "body": "c"} and removed[1][1] == 2
    assert result.duplicates_removed == {"comments": 4}
    audit = dict(rows_of(result.output, "SELECT operation, count FROM _audit WHERE column_name IS NULL"
                                        " AND outcome = 'removed'"))
    assert audit == {"duplicate_row": 3, "duplicate_key": 1}
    column_id = next(c for c in result.reconciliation if c.column == "comment_id")
    assert (column_id.source_non_null, column_id.cleaned_non_null, column_id.quarantined,
            column_id.in_removed_duplicates) == (7, 3, 2, 2)
    assert result.reconciled


def test_keep_all_keeps_duplicates_but_audits_them(comments, tmp_path):
    source, plan = comments
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db",
                            settings=CleanSettings(duplicate_policy="keep_all"))
    assert rows_of(result.output, "SELECT count(*) FROM comments") == [(10,)]
    assert result.duplicates_removed == {"comments": 0}
    assert rows_of(result.output, "SELECT count(*) FROM _quarantine WHERE column_name IS NULL") == [(0,)]
    assert dict(rows_of(result.output, "SELECT operation, count FROM _audit WHERE column_name IS NULL")) == {
        "duplicate_row": 3, "duplicate_key": 1}
    assert result.reconciled


def test_unknown_duplicate_policy_is_refused():
    with pytest.raises(InputError, match="duplicate policy"):
        CleanSettings(duplicate_policy="keep_last")


def table_dump(path: Path) -> dict[str, list[tuple]]:
    tables = [name for (name,) in rows_of(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {name: rows_of(path, f'SELECT rowid, * FROM "{name}" ORDER BY rowid') for name in tables}


def quarantine_entries(path: Path) -> list[tuple]:
    """The quarantine without its insertion id, in a fixed order."""
    return rows_of(path, "SELECT table_name, row_id, key_column, key_value, column_name, value, storage_class, reason"
                         " FROM _quarantine ORDER BY table_name, row_id, column_name, reason")


def test_rerunning_gives_identical_rows_audit_and_quarantine(comments, tmp_path):
    source, plan = comments
    first = clean_snapshot(source, plan, tmp_path / "first.db")
    second = clean_snapshot(source, plan, tmp_path / "second.db")
    assert table_dump(first.output) == table_dump(second.output)
    assert first.reconciliation == second.reconciliation


def test_output_equal_to_source_is_refused_even_through_a_symlink(tickets, tmp_path):
    source, plan = tickets
    before = file_sha256(source)
    with pytest.raises(InputError, match="source"):
        clean_snapshot(source, plan, source, force=True)
    link = tmp_path / "link.db"
    link.symlink_to(source)
    with pytest.raises(InputError, match="source"):
        clean_snapshot(source, plan, link, force=True)
    assert file_sha256(source) == before


def test_existing_output_is_refused_without_force_and_replaced_with_it(tickets, tmp_path):
    source, plan = tickets
    output = tmp_path / "cleaned.db"
    output.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        clean_snapshot(source, plan, output)
    assert output.read_bytes() == b"precious"
    Path(f"{output}-journal").write_bytes(b"journal of the file being replaced")
    result = clean_snapshot(source, plan, output, force=True)
    assert rows_of(result.output, "SELECT count(*) FROM tickets") == [(7,)]
    assert not Path(f"{output}-journal").exists()


@contextmanager
def unwritable_directory(path: Path):
    """A directory nobody may write into: mode 0555, and for root (who ignores modes) the immutable flag."""
    path.mkdir(mode=0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield path
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def test_directory_without_write_permission_is_refused(tickets, tmp_path):
    source, plan = tickets
    with unwritable_directory(tmp_path / "locked") as locked:
        with pytest.raises(InputError, match="write permission"):
            clean_snapshot(source, plan, locked / "cleaned.db")
        assert list(locked.iterdir()) == []


def test_missing_output_directory_is_refused(tickets, tmp_path):
    source, plan = tickets
    with pytest.raises(InputError, match="no such directory"):
        clean_snapshot(source, plan, tmp_path / "absent" / "cleaned.db")


def test_plan_that_does_not_cover_the_source_is_refused(tickets, tmp_path):
    source, plan = tickets
    partial = plan_for(source, table_plan("tickets", plan.tables[0].columns[:2]))
    with pytest.raises(InputError, match="profile this file again"):
        clean_snapshot(source, partial, tmp_path / "cleaned.db")
    assert not (tmp_path / "cleaned.db").exists() and leftovers(tmp_path) == []


def big_source(path: Path, rows: int) -> tuple[Path, Plan]:
    build_sqlite(path, f"""
        CREATE TABLE events (id INTEGER, happened TIMESTAMP, amount TEXT, note TEXT);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
        INSERT INTO events SELECT i, printf('2025-%02d-%02d 10:00:00', i % 12 + 1, i % 28 + 1),
               CASE WHEN i % 97 = 0 THEN 'N/A' WHEN i % 89 = 0 THEN 'bad' ELSE CAST(i AS TEXT) END,
               'note ' || i FROM n;
    """)
    plan = plan_for(path, table_plan("events", [
        column("id", "bigint", declared="INTEGER", formats=WHOLE_NUMBERS, markers=MARKERS),
        column("happened", "timestamp", declared="TIMESTAMP", formats=ISO_DATETIME, markers=MARKERS),
        column("amount", "bigint", formats=WHOLE_NUMBERS, markers=MARKERS),
        column("note", "text"),
    ], keys=("id",)))
    return path, plan


def test_hooks_are_called_every_check_every_rows_rows(tmp_path):
    source, plan = big_source(tmp_path / "big.db", 2_500)
    calls: list[tuple[str, int, int]] = []
    checks: list[int] = []
    clean_snapshot(source, plan, tmp_path / "cleaned.db", settings=CleanSettings(check_every_rows=1_000),
                   progress=lambda table, done, total: calls.append((table, done, total)),
                   health_check=lambda: checks.append(1))
    assert calls == [("events", 1_000, 2_500), ("events", 2_000, 2_500), ("events", 2_500, 2_500)]
    assert len(checks) == 3


def test_health_check_raising_midway_leaves_no_output_and_an_unchanged_source(tmp_path):
    source, plan = big_source(tmp_path / "big.db", 5_000)
    before = file_sha256(source)
    output = tmp_path / "cleaned.db"
    calls = []

    def failing_health_check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise ResourceExhausted("disk below 2x the snapshot")

    with pytest.raises(ResourceExhausted):
        clean_snapshot(source, plan, output, settings=CleanSettings(check_every_rows=1_000),
                       health_check=failing_health_check)
    assert len(calls) == 3
    assert not output.exists() and leftovers(tmp_path) == []
    assert file_sha256(source) == before
    assert clean_snapshot(source, plan, output).reconciled


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from servicedesk_etl.cleaning import CleanSettings, clean_snapshot
    from servicedesk_etl.profiling.plan import Plan

    source, plan_path, output, marker = sys.argv[1:]
    calls = []

    def progress(table, done, total):
        calls.append(done)
        if len(calls) == 3:
            Path(marker).write_text(str(done))
        time.sleep(0.05)

    clean_snapshot(Path(source), Plan.read(plan_path), Path(output),
                   settings=CleanSettings(check_every_rows=500), progress=progress)
""")


@pytest.mark.slow
def test_process_killed_midway_leaves_no_output_and_the_step_can_be_rerun(tmp_path):
    source, plan = big_source(tmp_path / "big.db", 60_000)
    before = file_sha256(source)
    plan_path = plan.write(tmp_path / "plan.json")
    output, marker = tmp_path / "cleaned.db", tmp_path / "working"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(source), str(plan_path), str(output), str(marker)],
                             cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the child never started writing rows"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    assert not output.exists()
    assert leftovers(tmp_path), "the killed run should have left its hidden temporary file"
    assert file_sha256(source) == before
    result = clean_snapshot(source, plan, output)
    assert result.reconciled and result.rows_out == {"events": 60_000}
    assert leftovers(tmp_path) == []


def test_a_dead_runs_temp_file_is_removed_and_a_live_runs_is_left_alone(tickets, tmp_path):
    source, plan = tickets
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".cleaned.db.{finished.pid}.cleaning-tmp"
    live = tmp_path / f".cleaned.db.{os.getppid()}.cleaning-tmp"
    for leftover in (dead, Path(f"{dead}-journal"), live):
        leftover.write_bytes(b"partial")
    clean_snapshot(source, plan, tmp_path / "cleaned.db")
    assert leftovers(tmp_path) == [live.name]


def test_temp_file_of_a_live_process_is_hidden_beside_the_output(tmp_path):
    temp = temp_path_for(tmp_path / "cleaned.db")
    assert temp.parent == tmp_path and temp.name.startswith(".cleaned.db.") and str(os.getpid()) in temp.name


def test_reading_in_rowid_ranges_gives_the_same_file_as_one_read(tmp_path, monkeypatch):
    source = build_sqlite(tmp_path / "ranges.db", DUPLICATES_SQL + TICKETS_SQL)
    plan = plan_for(source, *tickets_plan(source).tables, table_plan("comments", [
        column("comment_id", "bigint", formats=WHOLE_NUMBERS, markers=MARKERS),
        column("body", "text"),
    ], keys=("comment_id",)))
    whole = clean_snapshot(source, plan, tmp_path / "whole.db")
    monkeypatch.setattr(cleaning, "READ_CHUNK_ROWS", 3)
    ranged = clean_snapshot(source, plan, tmp_path / "ranged.db")
    ranged_tables, whole_tables = table_dump(ranged.output), table_dump(whole.output)
    assert ranged_tables.pop("_quarantine") and whole_tables.pop("_quarantine")
    assert ranged_tables == whole_tables
    assert quarantine_entries(ranged.output) == quarantine_entries(whole.output)
    assert ranged.duplicates_removed == {"comments": 4, "tickets": 0}
    assert ranged.reconciled


def test_composite_keys_and_bytes_are_kept_readable_in_the_quarantine(tmp_path):
    source = build_sqlite(tmp_path / "pairs.db", """
        CREATE TABLE pairs (a INTEGER, b TEXT, payload BLOB, PRIMARY KEY (a, b)) WITHOUT ROWID;
        INSERT INTO pairs VALUES (1, 'x', X'01'), (2, 'x', X'02');
        CREATE TABLE links (a INTEGER, b TEXT, payload BLOB);
        INSERT INTO links VALUES (1, 'x', X'01'), (1, 'x', X'02'), (1, 'y', NULL);
    """)
    columns = [column("a", "bigint", declared="INTEGER", formats=("integer",)), column("b", "text"),
               column("payload", "bytea", declared="BLOB", formats=("blob",))]
    plan = plan_for(source, table_plan("pairs", columns, keys=("a", "b")),
                    table_plan("links", columns, keys=("a", "b")))
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db")
    assert rows_of(result.output, "SELECT rowid, a, b, payload FROM pairs ORDER BY rowid") == [
        (1, 1, "x", b"\x01"), (2, 2, "x", b"\x02")]
    removed = rows_of(result.output, "SELECT table_name, row_id, key_column, key_value, value, reason FROM _quarantine")
    assert len(removed) == 1
    table_name, row_id, key_column, key_value, value, reason = removed[0]
    assert (table_name, row_id, reason) == ("links", 2, "duplicate_key")
    assert json.loads(key_column) == ["a", "b"] and json.loads(key_value) == {"a": 1, "b": "x"}
    assert json.loads(value) == {"a": 1, "b": "x", "payload": {"hex": "02"}}
    assert result.reconciled


def profile_or_skip():
    infer = pytest.importorskip("servicedesk_etl.profiling.infer")
    return infer.profile_database


def integrity(path: Path) -> list[tuple]:
    return rows_of(path, "PRAGMA integrity_check")


@pytest.mark.slow
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_every_corpus_file_cleans_reconciled_with_the_source_unchanged(name, corpus_copy, tmp_path):
    profile_database = profile_or_skip()
    source = corpus_copy(name)
    before = file_sha256(source)
    plan = profile_database(source)
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db")
    assert result.reconciled, [c for c in result.reconciliation if not c.balanced]
    assert result.source_unchanged and file_sha256(source) == before
    assert result.rows_in == {table.name: table.row_count for table in plan.tables}
    assert integrity(result.output) == [("ok",)]
    for table in plan.tables:
        declared = rows_of(result.output, "SELECT name, type FROM pragma_table_info(?) ORDER BY cid", (table.name,))
        assert declared == [(c.name, c.sqlite_type) for c in table.columns]


def with_target(plan: Plan, table: str, name: str, target: str, formats: tuple[str, ...]) -> Plan:
    """The plan with one column forced to a type, as a user override would."""
    def retyped(column_plan: ColumnPlan) -> ColumnPlan:
        if column_plan.name != name:
            return column_plan
        conversion = dataclasses.replace(column_plan.conversion, formats=formats)
        return dataclasses.replace(column_plan, target_type=target, conversion=conversion)

    tables = tuple(
        dataclasses.replace(t, columns=tuple(retyped(c) for c in t.columns)) if t.name == table else t
        for t in plan.tables
    )
    return dataclasses.replace(plan, tables=tables)


@pytest.mark.parametrize(("name", "table", "column_name", "expected"), [
    ("pgloader-sqlite.db", "intege", "id", {("toto", "text"), (12.3, "real")}),
    ("pgloader-type-mismatch.db", "products", "qty", {("lots-of-it", "text")}),
])
def test_pgloader_odd_values_forced_to_bigint_land_in_the_quarantine_with_reasons(
        name, table, column_name, expected, corpus_copy, tmp_path):
    profile_database = profile_or_skip()
    source = corpus_copy(name)
    plan = with_target(profile_database(source), table, column_name, "bigint", ("integer", "int_text"))
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db")
    entries = rows_of(result.output, "SELECT value, storage_class, typeof(value), reason FROM _quarantine"
                                     " WHERE table_name = ? AND column_name = ?", (table, column_name))
    assert {(value, storage) for value, storage, _, _ in entries} == expected
    assert all(kind == storage and reason for _, storage, kind, reason in entries)
    assert result.reconciled


def test_a_word_in_a_declared_integer_column_goes_to_the_quarantine_under_the_profiled_plan(corpus_copy, tmp_path):
    profile_database = profile_or_skip()
    source = corpus_copy("pgloader-type-mismatch.db")
    result = clean_snapshot(source, profile_database(source), tmp_path / "cleaned.db")
    assert rows_of(result.output, "SELECT value, storage_class, reason <> '' FROM _quarantine"
                                  " WHERE table_name = 'products' AND column_name = 'qty'") == [("lots-of-it", "text", 1)]
    assert rows_of(result.output, "SELECT qty, typeof(qty) FROM products ORDER BY id") == [
        (10, "integer"), (None, "null"), (5, "integer")]
    assert result.reconciled and result.quarantined_cells == 1


def test_pgloader_bad_utf8_text_is_decoded_as_cp1252(corpus_copy, tmp_path):
    profile_database = profile_or_skip()
    source = corpus_copy("pgloader-bad-utf8.db")
    result = clean_snapshot(source, profile_database(source), tmp_path / "cleaned.db")
    operations = rows_of(result.output, "SELECT operation, count FROM _audit WHERE outcome = 'converted'")
    assert ("decode_cp1252", 1) in operations
    values = [value for row in rows_of(result.output, "SELECT * FROM files") for value in row]
    assert any(isinstance(value, str) and "\u2013" in value for value in values)


@pytest.mark.slow
def test_every_planted_demo_cell_has_its_expected_value_and_duplicates_are_quarantined(tmp_path):
    demo_data = pytest.importorskip("servicedesk_etl.demo_data")
    profile_database = profile_or_skip()
    summary = demo_data.generate_demo_snapshot(tmp_path / "demo.db", scale=0.01, seed=42)
    truth = json.loads(summary.truth_path.read_text(encoding="utf-8"))
    result = clean_snapshot(summary.path, profile_database(summary.path), tmp_path / "cleaned.db")
    assert result.reconciled and result.source_unchanged

    wrong = []
    for cell in truth["cells"]:
        found = rows_of(result.output, f'SELECT "{cell["column"]}" FROM "{cell["table"]}" WHERE rowid = ?',
                        (cell["rowid"],))
        expected = int(cell["expected"]) if isinstance(cell["expected"], bool) else cell["expected"]
        if found != [(pytest.approx(expected) if isinstance(expected, float) else expected,)]:
            wrong.append((cell, found))
    assert wrong == [] and len(truth["cells"]) > 100

    copies = {(d["table"], rowid) for d in truth["duplicate_rows"] for rowid in d["rowids"][1:]}
    removed = set(rows_of(result.output, "SELECT table_name, row_id FROM _quarantine WHERE reason = 'duplicate_row'"))
    assert copies and removed == copies
    assert result.duplicates_removed == {
        table: sum(1 for t, _ in copies if t == table) for table in truth["row_counts"]}


# --- the raw cache handed over by the profiler, and the stored cache of the cleaned file -------------


def raw_cache_of(
    source: Path, directory: Path, *, part_cells: int = raw_cache.PART_CELLS, group_width: int | None = None
) -> raw_cache.RawCache:
    """What the profiler hands over: every table of `source` as `read_rows` gives it, whole or (with
    `group_width`) that many columns at a time, as the profiler hands over a table too big for one read."""
    with closing(open_readonly(source)) as conn, raw_cache.RawCacheWriter(
        directory, file_sha256(source), source.stat().st_size, part_cells=part_cells
    ) as writer:
        for table in list_tables(conn):
            frame = read_rows(conn, table)
            width = group_width or max(1, frame.width - 1)
            for start in range(1, max(frame.width, 2), width):
                writer.add(table, frame.select(ROWID, *frame.columns[start : start + width]))
    cache = raw_cache.open_raw_cache(directory, file_sha256(source))
    assert cache is not None
    return cache


def stored_frames(path: Path) -> dict[str, pl.DataFrame]:
    """Every table of a SQLite file in the raw layout: values with their storage classes."""
    with closing(open_readonly(path)) as conn:
        return {table: read_rows(conn, table) for table in list_tables(conn)}


def assert_same_files(left: Path, right: Path) -> None:
    left_frames, right_frames = stored_frames(left), stored_frames(right)
    assert left_frames.keys() == right_frames.keys()
    for table, frame in left_frames.items():
        assert frame.equals(right_frames[table]), table


def assert_stored_cache_matches(result: CleanResult, plan: Plan) -> None:
    assert result.output_sha256 == file_sha256(result.output)
    cache = raw_cache.open_raw_cache(result.output.parent / "stored", file_sha256(result.output))
    assert cache is not None and set(cache.tables) == {table.name for table in plan.tables}
    written = stored_frames(result.output)
    for table in plan.tables:
        assert cache.read(table.name).equals(written[table.name].sort(ROWID)), table.name


@pytest.fixture
def tickets_and_comments(tmp_path: Path) -> tuple[Path, Plan]:
    source = build_sqlite(tmp_path / "both.db", DUPLICATES_SQL + TICKETS_SQL)
    plan = plan_for(source, *tickets_plan(source).tables, table_plan("comments", [
        column("comment_id", "bigint", formats=WHOLE_NUMBERS, markers=MARKERS),
        column("body", "text"),
    ], keys=("comment_id",)))
    return source, plan


@pytest.mark.parametrize("chunk_rows", [3, cleaning.READ_CHUNK_ROWS])
def test_cleaning_from_the_raw_cache_writes_the_same_file_as_reading_sqlite(
    tickets_and_comments, tmp_path, monkeypatch, chunk_rows
):
    source, plan = tickets_and_comments
    monkeypatch.setattr(cleaning, "READ_CHUNK_ROWS", chunk_rows)
    cache = raw_cache_of(source, tmp_path / "raw", part_cells=8)
    from_sqlite = clean_snapshot(source, plan, tmp_path / "from_sqlite.db")
    from_cache = clean_snapshot(source, plan, tmp_path / "from_cache.db", raw_cache=cache)
    assert_same_files(from_sqlite.output, from_cache.output)
    assert quarantine_entries(from_cache.output) == quarantine_entries(from_sqlite.output)
    assert from_cache.reconciliation == from_sqlite.reconciliation and from_cache.reconciled
    assert from_cache.duplicates_removed == {"comments": 4, "tickets": 0}


@pytest.mark.parametrize("chunk_rows", [3, cleaning.READ_CHUNK_ROWS])
def test_cleaning_from_a_cache_written_in_column_groups_writes_the_same_file_as_reading_sqlite(
    tickets_and_comments, tmp_path, monkeypatch, chunk_rows
):
    source, plan = tickets_and_comments
    monkeypatch.setattr(cleaning, "READ_CHUNK_ROWS", chunk_rows)
    cache = raw_cache_of(source, tmp_path / "raw", part_cells=8, group_width=2)
    assert len(cache.tables["tickets"].column_groups()) > 1
    from_sqlite = clean_snapshot(source, plan, tmp_path / "from_sqlite.db")
    from_cache = clean_snapshot(source, plan, tmp_path / "from_cache.db", raw_cache=cache, stored_cache_dir=tmp_path / "stored")
    assert_same_files(from_sqlite.output, from_cache.output)
    assert quarantine_entries(from_cache.output) == quarantine_entries(from_sqlite.output)
    assert from_cache.reconciliation == from_sqlite.reconciliation and from_cache.reconciled
    assert_stored_cache_matches(from_cache, plan)


def test_the_cleaner_takes_the_values_from_the_cache_it_is_given(tickets, tmp_path):
    source, plan = tickets
    with closing(open_readonly(source)) as conn:
        frame = read_rows(conn, "tickets")
    # A value only the cache holds, and one that must be converted (unchanged values are copied by SQLite).
    edited = frame.with_columns(
        pl.col("TKT-Created Time").struct.with_fields(storage=pl.lit("text"), s=pl.lit("21/05/2025 9:15")))
    with raw_cache.RawCacheWriter(tmp_path / "raw", file_sha256(source)) as writer:
        writer.add("tickets", edited)
    cache = raw_cache.open_raw_cache(tmp_path / "raw", file_sha256(source))
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db", raw_cache=cache)
    created = rows_of(result.output, 'SELECT DISTINCT "TKT-Created Time" FROM tickets')
    assert created == [("2025-05-21 09:15:00",)]


def test_a_cache_of_another_file_is_ignored_and_sqlite_is_read(tickets, comments, tmp_path, caplog):
    source, plan = tickets
    other_cache = raw_cache_of(comments[0], tmp_path / "raw")
    expected = clean_snapshot(source, plan, tmp_path / "expected.db")
    with caplog.at_level(logging.WARNING, logger="servicedesk_etl.cleaning"):
        result = clean_snapshot(source, plan, tmp_path / "cleaned.db", raw_cache=other_cache)
    assert "describes another file" in caplog.text
    assert_same_files(expected.output, result.output)


def test_a_table_missing_from_the_cache_is_read_from_sqlite(tickets_and_comments, tmp_path):
    source, plan = tickets_and_comments
    with closing(open_readonly(source)) as conn, raw_cache.RawCacheWriter(
        tmp_path / "raw", file_sha256(source)
    ) as writer:
        writer.add("comments", read_rows(conn, "comments"))
    cache = raw_cache.open_raw_cache(tmp_path / "raw", file_sha256(source))
    expected = clean_snapshot(source, plan, tmp_path / "expected.db")
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db", raw_cache=cache)
    assert_same_files(expected.output, result.output)


@pytest.mark.parametrize("chunk_rows", [3, cleaning.READ_CHUNK_ROWS])
def test_the_stored_cache_holds_what_the_cleaned_file_stores_without_removed_duplicates(
    tickets_and_comments, tmp_path, monkeypatch, chunk_rows
):
    source, plan = tickets_and_comments
    monkeypatch.setattr(cleaning, "READ_CHUNK_ROWS", chunk_rows)
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db", stored_cache_dir=tmp_path / "stored")
    assert result.duplicates_removed == {"comments": 4, "tickets": 0}
    assert_stored_cache_matches(result, plan)
    # 3000000.0 from a REAL column is stored as an integer under the planned INTEGER type.
    assert result.stored_cache is not None
    parent_ids = result.stored_cache.read("tickets", ["TKT-Parent ID"])["TKT-Parent ID"].struct.field("storage")
    assert "real" not in parent_ids.to_list()


def test_a_failed_clean_leaves_no_stored_cache(tmp_path, monkeypatch):
    source, plan = big_source(tmp_path / "big.db", 40)
    monkeypatch.setattr(cleaning, "READ_CHUNK_ROWS", 10)
    checks: list[int] = []

    def stop() -> None:
        checks.append(1)
        if len(checks) == 3:
            # The stored cache is written in the background: let its first part land before failing.
            deadline = time.monotonic() + 30
            while not any((tmp_path / "stored").glob("*.arrow")) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert any((tmp_path / "stored").glob("*.arrow")), "a part should be written by now"
            raise RuntimeError("health check failed")

    with pytest.raises(RuntimeError):
        clean_snapshot(source, plan, tmp_path / "cleaned.db", stored_cache_dir=tmp_path / "stored",
                       settings=CleanSettings(check_every_rows=10), health_check=stop)
    assert raw_cache.open_raw_cache(tmp_path / "stored", "any") is None
    assert list((tmp_path / "stored").iterdir()) == []


@pytest.mark.slow
def test_demo_snapshot_cleans_the_same_from_the_cache_and_its_stored_cache_matches_the_file(tmp_path):
    demo_data = pytest.importorskip("servicedesk_etl.demo_data")
    profile_database = profile_or_skip()
    summary = demo_data.generate_demo_snapshot(tmp_path / "demo.db", scale=0.05, seed=7)
    plan = profile_database(summary.path)
    cache = raw_cache_of(summary.path, tmp_path / "raw", part_cells=50_000)
    from_sqlite = clean_snapshot(summary.path, plan, tmp_path / "from_sqlite.db")
    (tmp_path / "cached").mkdir()
    from_cache = clean_snapshot(summary.path, plan, tmp_path / "cached" / "cleaned.db", raw_cache=cache,
                                stored_cache_dir=tmp_path / "cached" / "stored")
    assert sum(from_cache.duplicates_removed.values()) > 0
    assert_same_files(from_sqlite.output, from_cache.output)
    assert quarantine_entries(from_cache.output) == quarantine_entries(from_sqlite.output)
    assert from_cache.reconciliation == from_sqlite.reconciliation and from_cache.reconciled
    assert_stored_cache_matches(from_cache, plan)


@pytest.mark.slow
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_every_corpus_file_cleans_the_same_from_the_cache_and_its_stored_cache_matches(name, corpus_copy, tmp_path):
    profile_database = profile_or_skip()
    source = corpus_copy(name)
    plan = profile_database(source)
    cache = raw_cache_of(source, tmp_path / "raw")
    from_sqlite = clean_snapshot(source, plan, tmp_path / "from_sqlite.db")
    from_cache = clean_snapshot(source, plan, tmp_path / "cleaned.db", raw_cache=cache,
                                stored_cache_dir=tmp_path / "stored")
    assert_same_files(from_sqlite.output, from_cache.output)
    assert from_cache.reconciliation == from_sqlite.reconciliation
    assert_stored_cache_matches(from_cache, plan)


def bind_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain path: every cleaned value bound from Python, none copied from the attached source."""
    monkeypatch.setattr(cleaning, "_unchanged_columns", lambda raw, table, cleaned: [False] * len(table.columns))


@pytest.mark.parametrize("chunk_rows", [3, cleaning.READ_CHUNK_ROWS])
def test_copying_unchanged_columns_from_the_source_stores_what_binding_them_stores(
    tickets_and_comments, tmp_path, monkeypatch, chunk_rows
):
    source, plan = tickets_and_comments
    monkeypatch.setattr(cleaning, "READ_CHUNK_ROWS", chunk_rows)
    copied = clean_snapshot(source, plan, tmp_path / "copied.db")
    bind_every_value(monkeypatch)
    bound = clean_snapshot(source, plan, tmp_path / "bound.db")
    assert_same_files(copied.output, bound.output)
    assert quarantine_entries(copied.output) == quarantine_entries(bound.output)


AFFINITY_SQL = """
CREATE TABLE measures (id INTEGER PRIMARY KEY, amount REAL, big INTEGER, label TEXT, flag INTEGER, raw);
INSERT INTO measures VALUES
  (1, 3.0, 9007199254740993, 'x', 1, 1.5),
  (2, -0.0, 2, '42', 0, 'text'),
  (3, 2.5, 3, ' 7 ', 1, X'00'),
  (5, NULL, NULL, NULL, NULL, NULL);
"""


def test_copied_values_get_the_cleaned_columns_affinity_like_bound_ones(tmp_path, monkeypatch):
    source = build_sqlite(tmp_path / "affinity.db", AFFINITY_SQL)
    plan = plan_for(source, table_plan("measures", [
        column("id", "bigint", declared="INTEGER", formats=("integer",)),
        column("amount", "numeric", declared="REAL", formats=("real",)),
        column("big", "numeric", declared="INTEGER", formats=("integer",)),
        column("label", "text"),
        column("flag", "boolean", declared="INTEGER", formats=("one_zero",)),
        column("raw", "text", declared="", formats=("text", "real_as_text", "blob_as_text")),
    ]))
    copied = clean_snapshot(source, plan, tmp_path / "copied.db")
    assert rows_of(copied.output, "SELECT typeof(amount), amount FROM measures ORDER BY rowid") == [
        ("integer", 3), ("integer", 0), ("real", 2.5), ("null", None)]
    bind_every_value(monkeypatch)
    bound = clean_snapshot(source, plan, tmp_path / "bound.db")
    assert_same_files(copied.output, bound.output)
    assert copied.reconciled


@pytest.mark.slow
def test_demo_snapshot_copied_and_bound_cleanings_are_the_same(tmp_path, monkeypatch):
    demo_data = pytest.importorskip("servicedesk_etl.demo_data")
    profile_database = profile_or_skip()
    summary = demo_data.generate_demo_snapshot(tmp_path / "demo.db", scale=0.02, seed=11)
    plan = profile_database(summary.path)
    copied = clean_snapshot(summary.path, plan, tmp_path / "copied.db")
    bind_every_value(monkeypatch)
    bound = clean_snapshot(summary.path, plan, tmp_path / "bound.db")
    assert_same_files(copied.output, bound.output)
    assert quarantine_entries(copied.output) == quarantine_entries(bound.output)


def test_a_utf16_source_cleans_like_a_utf8_one(tmp_path):
    script = """
        CREATE TABLE notes (id INTEGER, body TEXT, stamp TEXT);
        INSERT INTO notes VALUES (1, 'héllo', '2025-01-02 03:04:05'), (2, 'wörld', '20/05/2025 8:42'), (3, NULL, '');
    """
    columns = [column("id", "bigint", declared="INTEGER", formats=("integer",)), column("body", "text"),
               column("stamp", "timestamp", declared="TIMESTAMP", formats=ISO_DATETIME, markers=MARKERS,
                      day_first=True)]
    utf8 = build_sqlite(tmp_path / "utf8.db", script)
    utf16 = build_sqlite(tmp_path / "utf16.db", 'PRAGMA encoding = "UTF-16le";' + script)
    expected = clean_snapshot(utf8, plan_for(utf8, table_plan("notes", columns)), tmp_path / "from_utf8.db")
    result = clean_snapshot(utf16, plan_for(utf16, table_plan("notes", columns)), tmp_path / "from_utf16.db")
    assert_same_files(expected.output, result.output)
    assert result.reconciled


def test_source_columns_named_like_internal_frame_columns_are_copied_correctly(tmp_path, monkeypatch):
    source = build_sqlite(tmp_path / "names.db", """
        CREATE TABLE t ("v0" TEXT, "raw0" TEXT, "id" INTEGER, "c" TEXT, "s" TEXT);
        INSERT INTO t VALUES ('a', '1', 5, 'x', 'y'), ('b', '2', 6, 'x', 'z');
    """)
    plan = plan_for(source, table_plan("t", [
        column("v0", "text"), column("raw0", "bigint", formats=("int_text",)),
        column("id", "bigint", declared="INTEGER", formats=("integer",)), column("c", "text"), column("s", "text"),
    ]))
    copied = clean_snapshot(source, plan, tmp_path / "copied.db")
    assert rows_of(copied.output, 'SELECT rowid, "v0", "raw0", "id", "c", "s" FROM t') == [
        (1, "a", 1, 5, "x", "y"), (2, "b", 2, 6, "x", "z")]
    bind_every_value(monkeypatch)
    assert_same_files(copied.output, clean_snapshot(source, plan, tmp_path / "bound.db").output)


def test_stored_cache_of_a_without_rowid_table_with_bytes_matches_the_file(tmp_path):
    source = build_sqlite(tmp_path / "pairs.db", """
        CREATE TABLE pairs (a INTEGER, b TEXT, payload BLOB, PRIMARY KEY (a, b)) WITHOUT ROWID;
        INSERT INTO pairs VALUES (2, 'x', X'02'), (1, 'x', X'01'), (1, 'y', NULL), (3, '7', X'');
    """)
    plan = plan_for(source, table_plan("pairs", [
        column("a", "bigint", declared="INTEGER", formats=("integer",)), column("b", "text"),
        column("payload", "bytea", declared="BLOB", formats=("blob",))], keys=("a", "b")))
    result = clean_snapshot(source, plan, tmp_path / "cleaned.db", stored_cache_dir=tmp_path / "stored")
    assert_stored_cache_matches(result, plan)


@pytest.mark.slow
def test_the_cleaned_files_score_from_its_stored_cache_equals_its_score_from_the_file(tmp_path):
    frame_source = pytest.importorskip("servicedesk_etl.profiling.frame_source")
    demo_data = pytest.importorskip("servicedesk_etl.demo_data")
    from servicedesk_etl.profiling.score import score_quality, sqlite_source

    summary = demo_data.generate_demo_snapshot(tmp_path / "demo.db", scale=0.02, seed=3)
    plan = profile_or_skip()(summary.path)
    result = clean_snapshot(summary.path, plan, tmp_path / "cleaned.db", stored_cache_dir=tmp_path / "stored")
    cache = result.stored_cache
    assert cache is not None
    schema = {table: columns for table, columns in frame_source.sqlite_schema(result.output).items()
              if table in cache.tables}
    from_frames = score_quality(frame_source.FrameSource(schema, cache.read, label=f"sqlite:{result.output}"), plan)
    from_file = score_quality(sqlite_source(result.output), plan)
    assert dataclasses.replace(from_frames, seconds=0) == dataclasses.replace(from_file, seconds=0)


def test_the_cleaner_reads_the_cache_chunk_by_chunk(tickets_and_comments, tmp_path, monkeypatch):
    source, plan = tickets_and_comments
    monkeypatch.setattr(cleaning, "READ_CHUNK_ROWS", 3)
    cache = raw_cache_of(source, tmp_path / "raw", part_cells=8)
    heights: list[int] = []
    read = raw_cache.RawCache.read

    def recording_read(self, table, columns=None, rowid_range=None):
        frame = read(self, table, columns, rowid_range)
        heights.append(frame.height)
        return frame

    monkeypatch.setattr(raw_cache.RawCache, "read", recording_read)
    clean_snapshot(source, plan, tmp_path / "cleaned.db", raw_cache=cache)
    assert sum(heights) == 17 and max(heights) == 3


def test_a_stored_cache_that_cannot_be_written_leaves_no_cache_and_a_whole_cleaned_file(tickets, tmp_path, monkeypatch,
                                                                                      caplog):
    source, plan = tickets
    expected = clean_snapshot(source, plan, tmp_path / "expected.db")

    def broken(values, declared_type):
        raise OSError("no space left on device")

    monkeypatch.setattr(cleaning, "as_stored", broken)
    with caplog.at_level(logging.WARNING, logger="servicedesk_etl.cleaning"):
        result = clean_snapshot(source, plan, tmp_path / "cleaned.db", stored_cache_dir=tmp_path / "stored")
    assert "could not write the stored cache" in caplog.text
    assert result.stored_cache is None and list((tmp_path / "stored").iterdir()) == []
    assert_same_files(expected.output, result.output)
