"""Backups of SQLite snapshots and PostgreSQL schemas, on real files and the real server."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.backup import (
    backup_sqlite,
    client_connection,
    pg_dump_schema,
    prune_backups,
    prune_runs,
    restore_backup,
    restore_pg_dump,
    schema_fingerprint,
    sidecar_path,
    verify_backup,
)
from servicedesk_etl.embedded_pg import pg_bin_dir
from servicedesk_etl.errors import InputError
from servicedesk_etl.sqlite_source import file_sha256

NOW = datetime(2026, 11, 26, 21, 5, 9, tzinfo=UTC)


def counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def flip_byte(path: Path, offset: int) -> None:
    path.chmod(0o600)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def snapshot(corpus_copy) -> Path:
    return corpus_copy("chinook.sqlite")


# ---------------------------------------------------------------- backup


def test_backup_is_named_after_the_snapshot_and_the_utc_time(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path / "backups", now=NOW)

    assert made.path == tmp_path / "backups" / "chinook.sqlite.20261126_210509"
    assert made.sidecar == tmp_path / "backups" / "chinook.sqlite.20261126_210509.sha256.json"


def test_backup_and_sidecar_are_readable_by_their_owner_only(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path, now=NOW)

    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.sidecar.stat().st_mode) == 0o600


def test_sidecar_records_the_md5_and_sha256_of_the_backup_file(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path, now=NOW)

    recorded = json.loads(made.sidecar.read_text())
    content = made.path.read_bytes()
    assert recorded["md5"] == hashlib.md5(content).hexdigest() == made.md5
    assert recorded["sha256"] == hashlib.sha256(content).hexdigest() == made.sha256
    assert recorded["row_counts"] == counts(snapshot)


def test_backup_holds_every_row_and_leaves_the_source_unchanged(snapshot, tmp_path):
    before = file_sha256(snapshot)

    made = backup_sqlite(snapshot, tmp_path / "out", now=NOW)

    assert counts(made.path) == counts(snapshot)
    assert sum(made.row_counts.values()) == 15_607
    assert file_sha256(snapshot) == before == made.source_sha256
    assert sorted(p.name for p in snapshot.parent.iterdir()) == ["chinook.sqlite", "out"]


def test_backup_while_a_writer_holds_an_open_transaction_copies_the_committed_state(snapshot, tmp_path):
    committed = counts(snapshot)["Artist"]
    writer = sqlite3.connect(snapshot, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.executemany('INSERT INTO "Artist" ("Name") VALUES (?)', [(f"uncommitted {i}",) for i in range(500)])
    try:
        made = backup_sqlite(snapshot, tmp_path / "out", now=NOW)
    finally:
        writer.execute("COMMIT")
        writer.close()

    assert made.row_counts["Artist"] == committed
    assert verify_backup(None, made.path).ok
    assert counts(snapshot)["Artist"] == committed + 500


def test_backups_taken_while_batches_are_committed_hold_whole_batches_only(tmp_path):
    source = tmp_path / "servicedesk_tickets.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE timesheets (batch INTEGER, line INTEGER, hours REAL)")
    stop = threading.Event()

    def write_batches() -> None:
        writer = sqlite3.connect(source, timeout=30)
        for batch in range(100_000):
            if stop.is_set():
                break
            with writer:
                writer.executemany("INSERT INTO timesheets VALUES (?, ?, 7.5)", [(batch, i) for i in range(50)])
            time.sleep(0.002)  # an importer between chunks; a writer that never pauses starves every reader
        writer.close()

    thread = threading.Thread(target=write_batches)
    thread.start()
    try:
        made = []
        while len(made) < 3:
            time.sleep(0.05)
            made.append(backup_sqlite(source, tmp_path / "out", now=NOW))
    finally:
        stop.set()
        thread.join()

    for backup in made:
        assert verify_backup(None, backup.path).ok
        conn = sqlite3.connect(f"file:{backup.path}?mode=ro", uri=True)
        partial = conn.execute(
            "SELECT count(*) FROM (SELECT batch FROM timesheets GROUP BY batch HAVING count(*) != 50)").fetchone()[0]
        conn.close()
        assert partial == 0
        assert backup.row_counts["timesheets"] % 50 == 0
    assert made[-1].row_counts["timesheets"] > 0


def test_backup_of_a_wal_snapshot_is_a_self_contained_file(snapshot, tmp_path):
    writer = sqlite3.connect(snapshot, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute('INSERT INTO "Genre" ("Name") VALUES (?)', ("only in the WAL",))
    try:
        made = backup_sqlite(snapshot, tmp_path / "out", now=NOW)
    finally:
        writer.close()

    assert made.row_counts["Genre"] == 26
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [made.path.name, made.sidecar.name]


def test_two_backups_in_the_same_second_do_not_overwrite_each_other(snapshot, tmp_path):
    first = backup_sqlite(snapshot, tmp_path, now=NOW)
    second = backup_sqlite(snapshot, tmp_path, now=NOW)

    assert first.path != second.path
    assert first.path.exists() and second.path.exists()


def test_backup_of_a_file_that_is_not_sqlite_is_an_input_error(tmp_path):
    source = tmp_path / "tickets.db"
    source.write_text("TKT-Ticket ID,TKT-Title\n1,printer\n")

    with pytest.raises(InputError, match="not a SQLite database"):
        backup_sqlite(source, tmp_path / "out", now=NOW)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- verify


def test_verify_accepts_a_fresh_backup(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path, now=NOW)

    result = verify_backup(snapshot, made.path)

    assert result.ok, result.failures
    assert {c.name for c in result.checks} == {"md5", "sha256", "integrity_check", "row_counts_vs_sidecar",
                                               "row_counts_vs_source"}
    assert result.row_counts == counts(snapshot)


def test_verify_rejects_a_tampered_backup(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path, now=NOW)
    flip_byte(made.path, 200_000)

    result = verify_backup(snapshot, made.path)

    assert not result.ok
    assert {c.name for c in result.failures} >= {"md5", "sha256"}


def test_verify_rejects_a_backup_without_its_sidecar(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path, now=NOW)
    made.sidecar.unlink()

    result = verify_backup(None, made.path)

    assert not result.ok
    assert "sidecar" in result.failures[0].detail


def test_verify_reports_row_counts_that_differ_from_the_source(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path, now=NOW)
    with sqlite3.connect(snapshot) as conn:
        conn.execute('DELETE FROM "InvoiceLine" WHERE "InvoiceLineId" <= 10')
    result = verify_backup(snapshot, made.path)

    assert [c.name for c in result.failures] == ["row_counts_vs_source"]
    assert "InvoiceLine: expected 2230, backup has 2240" in result.failures[0].detail


def test_verify_rejects_a_backup_whose_sidecar_was_rewritten_to_match_a_corrupt_file(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path, now=NOW)
    with made.path.open("r+b") as handle:
        handle.seek(4096 * 50)
        handle.write(b"\xff" * 4096 * 3)
    document = json.loads(made.sidecar.read_text())
    document["md5"] = hashlib.md5(made.path.read_bytes()).hexdigest()
    document["sha256"] = hashlib.sha256(made.path.read_bytes()).hexdigest()
    made.sidecar.write_text(json.dumps(document))

    result = verify_backup(None, made.path)

    assert [c.name for c in result.failures] == ["integrity_check"]


# ---------------------------------------------------------------- restore


def test_restore_writes_the_backup_content_to_the_target(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path / "backups", now=NOW)
    target = tmp_path / "restored" / "servicedesk_tickets.db"

    restored = restore_backup(made.path, target)

    assert restored == target
    assert file_sha256(target) == made.sha256
    assert counts(target) == counts(snapshot)
    assert [p.name for p in target.parent.iterdir()] == ["servicedesk_tickets.db"]


def test_restore_refuses_to_overwrite_without_force(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path / "backups", now=NOW)
    target = tmp_path / "existing.db"
    target.write_bytes(b"keep me")

    with pytest.raises(InputError, match="--force"):
        restore_backup(made.path, target)
    assert target.read_bytes() == b"keep me"

    restore_backup(made.path, target, force=True)
    assert file_sha256(target) == made.sha256


def test_restore_refuses_a_tampered_backup_and_leaves_the_target_alone(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path / "backups", now=NOW)
    flip_byte(made.path, 300_000)
    target = tmp_path / "live.db"
    target.write_bytes(b"previous snapshot")

    with pytest.raises(InputError, match="verification failed"):
        restore_backup(made.path, target, force=True)
    assert target.read_bytes() == b"previous snapshot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "chinook.sqlite", "live.db"]


def test_restore_over_a_target_removes_its_stale_journal(snapshot, tmp_path):
    made = backup_sqlite(snapshot, tmp_path / "backups", now=NOW)
    target = tmp_path / "live.db"
    target.write_bytes(b"old")
    target.with_name("live.db-journal").write_bytes(b"\x00" * 512)

    restore_backup(made.path, target, force=True)

    assert not target.with_name("live.db-journal").exists()
    assert counts(target) == counts(snapshot)


# ---------------------------------------------------------------- prune


def make_backups(snapshot: Path, directory: Path, days_ago: list[int]) -> list[Path]:
    return [backup_sqlite(snapshot, directory, now=NOW - timedelta(days=d)).path for d in days_ago]


def test_prune_removes_expired_backups_and_their_sidecars(snapshot, tmp_path):
    old, middle, new = make_backups(snapshot, tmp_path, [40, 10, 1])

    removed = prune_backups(tmp_path, retention_days=30, now=NOW)

    assert removed == [old]
    assert not old.exists() and not sidecar_path(old).exists()
    assert middle.exists() and new.exists() and sidecar_path(middle).exists()


def test_prune_never_removes_the_newest_backup(snapshot, tmp_path):
    old, newest = make_backups(snapshot, tmp_path, [90, 60])

    removed = prune_backups(tmp_path, retention_days=7, now=NOW)

    assert removed == [old]
    assert newest.exists() and sidecar_path(newest).exists()


def test_prune_keeps_the_newest_backup_of_each_snapshot(snapshot, corpus_copy, tmp_path):
    chinook = make_backups(snapshot, tmp_path / "b", [90, 60])
    northwind = make_backups(corpus_copy("northwind.sqlite"), tmp_path / "b", [50])

    removed = prune_backups(tmp_path / "b", retention_days=7, now=NOW)

    assert removed == [chinook[0]]
    assert chinook[1].exists() and northwind[0].exists()


def test_prune_leaves_other_files_alone(snapshot, tmp_path):
    make_backups(snapshot, tmp_path, [90, 60])
    notes = tmp_path / "README.txt"
    notes.write_text("backups of the ServiceDesk snapshot")

    prune_backups(tmp_path, retention_days=0, now=NOW)

    assert notes.exists()


@pytest.mark.postgres
def test_prune_also_expires_schema_dumps_but_keeps_the_newest(fresh_database, tmp_path):
    create_live_schema(fresh_database)
    old = pg_dump_schema(fresh_database, LIVE, tmp_path, now=NOW - timedelta(days=40))
    new = pg_dump_schema(fresh_database, LIVE, tmp_path, now=NOW - timedelta(days=35))

    removed = prune_backups(tmp_path, retention_days=30, now=NOW)

    assert removed == [old.path]
    assert not old.sidecar.exists() and new.path.exists() and new.sidecar.exists()


def test_prune_rejects_a_negative_retention(tmp_path):
    with pytest.raises(InputError):
        prune_backups(tmp_path, retention_days=-1, now=NOW)


# ---------------------------------------------------------------- PostgreSQL


LIVE = "servicedesk*live"  # `*` is a pg_dump pattern wildcard: it must be taken literally
DECOY = "servicedesk_x_live"


def create_live_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in (LIVE, DECOY):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        tickets = sql.Identifier(LIVE, "tickets")
        conn.execute(sql.SQL(
            'CREATE TABLE {} ("TKT-Ticket ID" bigint, "TKT-Title" text, "TKT-Created Time" timestamp,'
            ' "TS-Hours" double precision, "TKT-SLA Met" boolean)').format(tickets))
        conn.execute(sql.SQL(
            "INSERT INTO {} SELECT i, 'printer \"' || i || E'\\'s queue',"
            " timestamp '2025-05-20 08:42' + i * interval '1 hour',"
            " CASE WHEN i % 7 = 0 THEN NULL ELSE i / 3.0 END, i % 2 = 0"
            " FROM generate_series(1, 500) AS i").format(tickets))
        conn.execute(sql.SQL("CREATE TABLE {} (comment_id int, ticket_id int, comment_text text)").format(
            sql.Identifier(LIVE, "comments")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT i, i % 500, repeat('x', i % 40) FROM generate_series(1, 1200) i")
                     .format(sql.Identifier(LIVE, "comments")))
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(DECOY, "decoy")))


def rows_of(dsn: str, schema: str, table: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(schema, table))).fetchall()


@pytest.mark.postgres
def test_pg_dump_writes_a_private_custom_format_dump_of_exactly_one_schema(fresh_database, tmp_path):
    create_live_schema(fresh_database)

    dump = pg_dump_schema(fresh_database, LIVE, tmp_path, now=NOW)

    assert dump.path.read_bytes()[:5] == b"PGDMP"
    assert stat.S_IMODE(dump.path.stat().st_mode) == 0o600
    assert json.loads(dump.sidecar.read_text())["sha256"] == hashlib.sha256(dump.path.read_bytes()).hexdigest()
    listing = subprocess.run([str(pg_bin_dir() / "pg_restore"), "--list", str(dump.path)],
                             capture_output=True, text=True, check=True).stdout
    assert "tickets" in listing and "comments" in listing
    assert "decoy" not in listing
    assert {t: f.rows for t, f in dump.fingerprint.items()} == {"comments": 1200, "tickets": 500}


@pytest.mark.postgres
def test_pg_dump_restored_under_another_name_has_identical_rows(fresh_database, tmp_path):
    create_live_schema(fresh_database)
    dump = pg_dump_schema(fresh_database, LIVE, tmp_path, now=NOW)

    restored = restore_pg_dump(dump.path, "servicedesk_restored", fresh_database)

    assert restored.matches_dump is True
    assert schema_fingerprint(fresh_database, "servicedesk_restored") == schema_fingerprint(fresh_database, LIVE)
    for table in ("tickets", "comments"):
        assert rows_of(fresh_database, "servicedesk_restored", table) == rows_of(fresh_database, LIVE, table)
    with psycopg.connect(fresh_database) as conn:
        column_type = conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = %s AND column_name = %s",
            ("servicedesk_restored", "TKT-Created Time")).fetchone()[0]
        databases = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'servicedesk_etl_restore_%'").fetchone()
    assert column_type == "timestamp without time zone"
    assert databases == (0,)


@pytest.mark.postgres
def test_pg_dump_restores_under_its_own_name_once_the_original_is_gone(fresh_database, tmp_path):
    create_live_schema(fresh_database)
    dump = pg_dump_schema(fresh_database, LIVE, tmp_path, now=NOW)
    expected = rows_of(fresh_database, LIVE, "tickets")
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(LIVE)))

    restored = restore_pg_dump(dump.path, LIVE, fresh_database)

    assert restored.matches_dump is True
    assert rows_of(fresh_database, LIVE, "tickets") == expected


@pytest.mark.postgres
def test_pg_restore_refuses_an_existing_schema_and_a_tampered_dump(fresh_database, tmp_path):
    create_live_schema(fresh_database)
    dump = pg_dump_schema(fresh_database, LIVE, tmp_path, now=NOW)

    with pytest.raises(InputError, match="already exists"):
        restore_pg_dump(dump.path, DECOY, fresh_database)
    flip_byte(dump.path, dump.size_bytes // 2)
    with pytest.raises(InputError, match="checksum"):
        restore_pg_dump(dump.path, "servicedesk_restored", fresh_database)


def test_a_password_travels_in_the_environment_never_on_the_command_line():
    conninfo, env = client_connection("postgresql://etl:s3cr3t-test-pw@db.example:5432/servicedesk")

    assert "s3cr3t-test-pw" not in conninfo
    assert "db.example" in conninfo and "servicedesk" in conninfo
    assert env["PGPASSWORD"] == "s3cr3t-test-pw"


@pytest.mark.postgres
def test_pg_dump_with_a_password_dsn_works_and_no_password_reaches_the_files(fresh_database, tmp_path):
    create_live_schema(fresh_database)
    with_password = fresh_database.replace("postgres:@", "postgres:s3cr3t-test-pw@", 1)
    if "s3cr3t-test-pw" not in with_password:
        with_password = f"{fresh_database} password=s3cr3t-test-pw"

    dump = pg_dump_schema(with_password, LIVE, tmp_path, now=NOW)

    assert b"s3cr3t-test-pw" not in dump.path.read_bytes()
    assert "s3cr3t-test-pw" not in dump.sidecar.read_text()


def _run_dirs(runs: Path, count: int) -> list[Path]:
    """`count` run directories named like Dagster run ids, oldest first."""
    made = []
    for k in range(count):
        path = runs / str(uuid.UUID(int=k + 1))
        (path / "backup").mkdir(parents=True)
        (path / "backup" / "copy.db").write_bytes(b"x")
        os.utime(path, (1_700_000_000 + k * 60, 1_700_000_000 + k * 60))
        made.append(path)
    return made


def test_old_run_directories_go_beyond_keep_runs_and_nothing_else_is_touched(tmp_path):
    runs = tmp_path / "runs"
    old = _run_dirs(runs, 5)
    current = runs / str(uuid.UUID(int=99))
    current.mkdir()
    os.utime(current, (1_600_000_000, 1_600_000_000))  # the oldest of all, and still kept
    (runs / "notes").mkdir()
    (runs / "readme.txt").write_text("kept")
    removed = prune_runs(current, keep=2)
    assert sorted(removed) == sorted(old[:3])
    assert sorted(p.name for p in runs.iterdir()) == sorted([old[3].name, old[4].name, current.name, "notes", "readme.txt"])


def test_keep_runs_zero_keeps_every_run_directory(tmp_path):
    old = _run_dirs(tmp_path / "runs", 3)
    assert prune_runs(tmp_path / "runs" / str(uuid.UUID(int=50)), keep=0) == []
    assert all(path.exists() for path in old)


def test_the_backup_step_prunes_old_runs_before_its_disk_check_and_says_which(snapshot, tmp_path):
    from servicedesk_etl.pipeline import PipelineSettings, backup_step

    runs = tmp_path / "runs"
    old = _run_dirs(runs, 3)
    outcome = backup_step(snapshot, runs / str(uuid.UUID(int=77)), dsn=None, settings=PipelineSettings(keep_runs=1))
    assert outcome.artifact is not None
    assert sorted(outcome.metadata["pruned_runs"]) == sorted(str(path) for path in old[:2])
    assert [path.exists() for path in old] == [False, False, True]
