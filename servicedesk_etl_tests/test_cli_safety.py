"""The Gate 0 commands: exit codes, output, and that no password ever reaches a screen or a log."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from servicedesk_etl.cli import main

SECRET = "s3cr3t-test-pw"
SECRET_DSN = f"postgresql://etl:{SECRET}@127.0.0.1:1/servicedesk"
CONSOLE_SCRIPT = Path(sys.executable).parent / "servicedesk-etl"


@pytest.fixture
def snapshot(corpus_copy) -> Path:
    return corpus_copy("chinook.sqlite")


def preflight_args(source: Path, *extra: str) -> list[str]:
    return ["preflight", "--source", str(source), "--min-memory-gb", "0", *extra]


def all_logs(state_home: Path) -> str:
    path = state_home / "logs" / "servicedesk_etl.jsonl"
    return path.read_text() if path.exists() else ""


# ---------------------------------------------------------------- preflight


@pytest.mark.postgres
def test_preflight_passes_with_exit_0_and_prints_json(snapshot, pg_dsn, state_home, capsys):
    code = main(preflight_args(snapshot, "--target-dsn", pg_dsn, "--json"))

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["status"] == "pass"
    assert {c["name"] for c in document["checks"]} >= {"disk_free", "memory", "postgres_reachable", "pg_dump",
                                                     "snapshot_integrity", "python_dependencies"}


def test_preflight_with_warnings_only_exits_2(snapshot, state_home, capsys, monkeypatch):
    monkeypatch.delenv("SERVICEDESK_PG_DSN", raising=False)

    code = main(preflight_args(snapshot))

    assert code == 2
    assert "no target given" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "failed_check"),
    [
        (["--min-free-ratio", "1e12"], "disk_free"),
        (["--target-dsn", "postgresql://nobody@127.0.0.1:1/x"], "postgres_reachable"),
        (["--pg-dump", "/nonexistent/bin/pg_dump"], "pg_dump"),
    ],
)
def test_preflight_failures_exit_1_and_name_the_check(snapshot, state_home, capsys, extra, failed_check):
    code = main(preflight_args(snapshot, *extra))

    assert code == 1
    assert f"preflight failed: {failed_check}" in capsys.readouterr().err.replace("\n", "")


def test_preflight_of_a_snapshot_being_written_exits_1(snapshot, state_home, capsys):
    writer = sqlite3.connect(snapshot, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        code = main(preflight_args(snapshot, "--json"))
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [c["name"] for c in document["checks"] if c["status"] == "fail"][:1] == ["snapshot_not_being_written"]


def test_preflight_of_a_corrupt_snapshot_exits_1(snapshot, state_home, capsys):
    with snapshot.open("r+b") as handle:
        handle.seek(4096 * 50)
        handle.write(b"\xff" * 4096 * 3)

    assert main(preflight_args(snapshot)) == 1
    assert "snapshot_integrity" in capsys.readouterr().err


def test_the_console_script_runs_preflight_and_never_shows_the_password(snapshot, state_home):
    env = {**os.environ, "SERVICEDESK_ETL_HOME": str(state_home), "SERVICEDESK_PG_DSN": SECRET_DSN}

    completed = subprocess.run([str(CONSOLE_SCRIPT), *preflight_args(snapshot, "--json")], env=env,
                               capture_output=True, text=True, timeout=120)

    assert completed.returncode == 1
    document = json.loads(completed.stdout)
    assert document["target"] is not None and "***" in document["target"]
    for text in (completed.stdout, completed.stderr, all_logs(state_home)):
        assert SECRET not in text
    assert "preflight" in all_logs(state_home)


def test_a_password_given_on_the_command_line_never_reaches_output_or_logs(snapshot, state_home, capsys):
    code = main(preflight_args(snapshot, "--target-dsn", f"host=127.0.0.1 port=1 user=etl password={SECRET}"))

    captured = capsys.readouterr()
    assert code == 1
    for text in (captured.out, captured.err, all_logs(state_home)):
        assert SECRET not in text


# ---------------------------------------------------------------- backups


def test_backup_verify_restore_and_prune_from_the_command_line(snapshot, state_home, tmp_path, capsys):
    backups = tmp_path / "backups"
    assert main(["backup", "--source", str(snapshot), "--output", str(backups), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    backup = Path(made["backup"])
    assert backup.exists() and Path(made["sidecar"]).exists()

    assert main(["verify", "--source", str(snapshot), "--backup", str(backup)]) == 0
    target = tmp_path / "restored.db"
    assert main(["restore", "--backup", str(backup), "--target", str(target)]) == 0
    assert target.read_bytes() == backup.read_bytes()

    assert main(["restore", "--backup", str(backup), "--target", str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["restore", "--backup", str(backup), "--target", str(target), "--force"]) == 0

    assert main(["prune", "--output", str(backups), "--retention-days", "0"]) == 0
    assert backup.exists(), "the newest backup is never pruned"


def test_verify_and_restore_reject_a_tampered_backup(snapshot, state_home, tmp_path, capsys):
    main(["backup", "--source", str(snapshot), "--output", str(tmp_path / "b"), "--json"])
    backup = Path(json.loads(capsys.readouterr().out)["backup"])
    with backup.open("r+b") as handle:
        handle.seek(100_000)
        handle.write(b"tampered")

    assert main(["verify", "--backup", str(backup), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] is False
    assert main(["restore", "--backup", str(backup), "--target", str(tmp_path / "r.db")]) == 2
    assert "verification failed" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()


def test_backup_of_a_missing_snapshot_exits_2(state_home, tmp_path, capsys):
    assert main(["backup", "--source", str(tmp_path / "missing.db"), "--output", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.postgres
def test_pg_dump_and_pg_restore_round_trip_from_the_command_line(fresh_database, state_home, tmp_path, capsys):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA servicedesk")
        conn.execute("CREATE TABLE servicedesk.tickets AS"
                     " SELECT i AS id, now() AS created FROM generate_series(1, 300) i")

    assert main(["pg-dump", "--schema", "servicedesk", "--output", str(tmp_path), "--target-dsn", fresh_database]) == 0
    (dump,) = tmp_path.glob("*.dump")
    assert main(["pg-restore", "--dump", str(dump), "--schema", "servicedesk_backup_1",
                 "--target-dsn", fresh_database]) == 0

    assert "300 rows" in capsys.readouterr().out
    with psycopg.connect(fresh_database) as conn:
        (count,) = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("servicedesk_backup_1", "tickets"))).fetchone()
    assert count == 300
    assert main(["pg-restore", "--dump", str(dump), "--schema", "servicedesk", "--target-dsn", fresh_database]) == 2
