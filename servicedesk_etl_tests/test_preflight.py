"""Preflight: each check passes on a healthy setup and fails (or warns) for the reason it exists."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from servicedesk_etl.preflight import CheckStatus, find_pg_tool, run_preflight

UNREACHABLE_DSN = "postgresql://nobody@127.0.0.1:1/nowhere"


def status_of(report, name: str) -> CheckStatus:
    return report.check(name).status


def with_user(dsn: str, user: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    return make_conninfo(**{**params, "user": user})


@pytest.fixture
def snapshot(corpus_copy) -> Path:
    return corpus_copy("chinook.sqlite")


@pytest.fixture
def small_snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "servicedesk_tickets.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE tickets ("TKT-Ticket ID" INTEGER, "TKT-Created Time" TIMESTAMP)')
    conn.executemany("INSERT INTO tickets VALUES (?, ?)", [(i, "2025-05-20 08:42:00") for i in range(50)])
    conn.commit()
    conn.close()
    return path


@pytest.mark.postgres
def test_a_healthy_setup_passes_every_check(snapshot, pg_dsn, tmp_path):
    report = run_preflight(snapshot, pg_dsn, work_dirs=[tmp_path], min_memory_bytes=1)

    assert [c.name for c in report.checks if c.status is not CheckStatus.PASS] == []
    assert report.exit_code == 0
    assert report.check("postgres_version").measured.startswith("16")
    assert "pg_dump" in report.check("pg_dump").measured


def test_a_disk_with_less_than_the_ratio_free_fails(snapshot, tmp_path):
    report = run_preflight(snapshot, None, work_dirs=[tmp_path], min_free_ratio=1e12, min_memory_bytes=1)

    check = report.check("disk_free")
    assert check.status is CheckStatus.FAIL
    assert str(tmp_path) in check.measured and check.advice
    assert report.exit_code == 1


def test_a_work_directory_not_created_yet_is_measured_on_its_file_system(snapshot, tmp_path):
    report = run_preflight(snapshot, None, work_dirs=[tmp_path / "later" / "backups"], min_memory_bytes=1)

    assert status_of(report, "disk_free") is CheckStatus.PASS


def test_little_memory_is_a_warning_not_a_failure(small_snapshot, tmp_path):
    report = run_preflight(small_snapshot, None, work_dirs=[tmp_path], min_memory_bytes=2**60)

    assert status_of(report, "memory") is CheckStatus.WARN
    assert report.exit_code == 2


def test_no_target_skips_the_postgres_checks_with_a_warning(small_snapshot, tmp_path):
    report = run_preflight(small_snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1)

    for name in ("postgres_reachable", "postgres_version", "postgres_create_schema"):
        assert report.check(name).status is CheckStatus.WARN
        assert report.check(name).measured == "no target given"
    assert report.exit_code == 2


def test_an_unreachable_server_fails(small_snapshot, tmp_path):
    report = run_preflight(small_snapshot, UNREACHABLE_DSN, work_dirs=[tmp_path], min_memory_bytes=1)

    assert status_of(report, "postgres_reachable") is CheckStatus.FAIL
    assert "127.0.0.1" in report.check("postgres_reachable").measured
    assert report.check("postgres_version").measured.startswith("not evaluated")
    assert report.exit_code == 1


@pytest.mark.postgres
def test_a_role_without_create_on_the_database_fails(small_snapshot, fresh_database, tmp_path):
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        report = run_preflight(small_snapshot, with_user(fresh_database, role), work_dirs=[tmp_path],
                               min_memory_bytes=1)
    finally:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    check = report.check("postgres_create_schema")
    assert check.status is CheckStatus.FAIL
    assert "GRANT CREATE" in check.advice
    assert status_of(report, "postgres_reachable") is CheckStatus.PASS


def test_a_missing_pg_dump_fails(small_snapshot, tmp_path):
    report = run_preflight(small_snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1,
                           pg_dump=str(tmp_path / "no" / "pg_dump"))

    assert status_of(report, "pg_dump") is CheckStatus.FAIL
    assert report.exit_code == 1


@pytest.mark.postgres
def test_a_pg_dump_older_than_the_server_fails(small_snapshot, pg_dsn, tmp_path):
    old = tmp_path / "pg_dump"
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    old.chmod(0o755)

    report = run_preflight(small_snapshot, pg_dsn, work_dirs=[tmp_path], min_memory_bytes=1, pg_dump=str(old))

    check = report.check("pg_dump")
    assert check.status is CheckStatus.FAIL
    assert "9.6" in check.measured


@pytest.mark.postgres
def test_the_newest_pg_dump_at_least_the_server_version_is_chosen(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        server_major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000

    tool = find_pg_tool("pg_dump", server_major)

    assert tool is not None and tool.major >= server_major


def test_a_writer_holding_an_exclusive_lock_fails(small_snapshot, tmp_path):
    writer = sqlite3.connect(small_snapshot, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        report = run_preflight(small_snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1)
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    check = report.check("snapshot_not_being_written")
    assert check.status is CheckStatus.FAIL
    assert "lock" in check.measured
    assert report.exit_code == 1


def test_a_hot_rollback_journal_fails(small_snapshot, tmp_path):
    writer = sqlite3.connect(small_snapshot, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO tickets VALUES (999, '2025-01-01')")
    try:
        report = run_preflight(small_snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1)
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    check = report.check("snapshot_not_being_written")
    assert check.status is CheckStatus.FAIL
    assert "-journal" in check.measured


def test_a_wal_with_uncheckpointed_pages_fails(small_snapshot, tmp_path):
    writer = sqlite3.connect(small_snapshot, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("INSERT INTO tickets VALUES (999, '2025-01-01')")
    try:
        report = run_preflight(small_snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1)
    finally:
        writer.close()

    check = report.check("snapshot_not_being_written")
    assert check.status is CheckStatus.FAIL
    assert "-wal" in check.measured


def test_an_empty_rollback_journal_left_behind_is_harmless(small_snapshot, tmp_path):
    small_snapshot.with_name(small_snapshot.name + "-journal").write_bytes(b"")

    report = run_preflight(small_snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1)

    assert status_of(report, "snapshot_not_being_written") is CheckStatus.PASS


def test_a_corrupt_snapshot_fails_quick_check(snapshot, tmp_path):
    with snapshot.open("r+b") as handle:
        handle.seek(4096 * 50)
        handle.write(b"\xff" * 4096 * 3)

    report = run_preflight(snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1)

    check = report.check("snapshot_integrity")
    assert check.status is CheckStatus.FAIL
    assert "malformed" in check.measured
    assert report.exit_code == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "no such file"), (b"", "not a SQLite"), (b"ticket_id,title\n1,printer\n", "not a SQLite")],
)
def test_a_snapshot_that_is_not_sqlite_fails_to_open(tmp_path, content, expected):
    source = tmp_path / "export.db"
    if content is not None:
        source.write_bytes(content)

    report = run_preflight(source, None, work_dirs=[tmp_path], min_memory_bytes=1)

    assert status_of(report, "snapshot_opens") is CheckStatus.FAIL
    assert expected in report.check("snapshot_opens").measured
    assert report.check("snapshot_integrity").measured.startswith("not evaluated")


def test_the_source_is_never_modified(snapshot, tmp_path):
    before = snapshot.read_bytes()

    run_preflight(snapshot, None, work_dirs=[tmp_path], min_memory_bytes=1)

    assert snapshot.read_bytes() == before
    assert sorted(p.name for p in snapshot.parent.iterdir()) == [snapshot.name]


def test_every_check_reports_name_status_measured_threshold_and_advice(small_snapshot, tmp_path):
    report = run_preflight(small_snapshot, UNREACHABLE_DSN, work_dirs=[tmp_path], min_memory_bytes=1)

    document = report.to_dict()
    assert document["status"] == "fail" and document["exit_code"] == 1
    for check in document["checks"]:
        assert set(check) == {"name", "status", "measured", "threshold", "advice"}
        assert check["status"] in {"pass", "warn", "fail"}
        assert check["threshold"]
        if check["status"] != "pass":
            assert check["advice"] or check["measured"].startswith("not evaluated")
