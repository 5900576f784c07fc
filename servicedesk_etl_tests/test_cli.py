"""The command line as a user meets it: exit codes, one-line errors, and a real run to a live schema."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from servicedesk_etl.cli import main

CLI = [sys.executable, "-c", "import sys; from servicedesk_etl.cli import main; sys.exit(main())"]


def run_cli(args, home, dsn=None, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in {"SERVICEDESK_PG_DSN", "DAGSTER_HOME"}}
    env["SERVICEDESK_ETL_HOME"] = str(home)
    if dsn:
        env["SERVICEDESK_PG_DSN"] = dsn
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(completed, code, *needles):
    assert completed.returncode == code, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_lists_the_pipeline_commands():
    completed = subprocess.run(CLI + ["--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0
    for command in ("run", "demo", "demo-data", "profile", "clean", "migrate", "rollback", "status", "ui"):
        assert f" {command} " in completed.stdout, command


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("id,name\n1,a\n"), p)[1], "not a SQLite database"),
        (lambda p: (p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 2000), p)[1], "cannot be"),
    ],
    ids=["missing", "empty", "csv", "corrupt"],
)
def test_unusable_snapshots_get_one_clear_line_and_exit_2(tmp_path, make, needle):
    source = make(tmp_path / "snapshot.db")
    completed = run_cli(["run", "--source", str(source)], tmp_path / "home")
    assert_one_line_error(completed, 2, needle)


def test_an_unreachable_server_is_exit_2_and_never_shows_the_password(tmp_path):
    source = tmp_path / "s.db"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE t (a INTEGER)")
    conn.commit()
    conn.close()
    dsn = "postgresql://etl:s3cr3t-test-pw@127.0.0.1:1/servicedesk"
    completed = run_cli(["run", "--source", str(source), "--target-dsn", dsn], tmp_path / "home")
    assert_one_line_error(completed, 2, "unreachable")
    assert "s3cr3t-test-pw" not in completed.stdout + completed.stderr


def test_usage_errors_exit_2():
    assert main(["run"]) == 2
    assert main(["no-such-command"]) == 2


@pytest.mark.slow
def test_demo_snapshot_runs_to_a_live_typed_schema(tmp_path, fresh_database):
    home = tmp_path / "home"
    snapshot = tmp_path / "servicedesk_tickets.db"
    made = run_cli(["demo-data", "--out", str(snapshot), "--scale", "0.01", "--seed", "7"], home)
    assert made.returncode == 0, made.stderr
    truth = json.loads(Path(str(snapshot) + ".truth.json").read_text())

    completed = run_cli(["run", "--source", str(snapshot), "--json"], home, dsn=fresh_database)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    summary = json.loads(completed.stdout)
    assert summary["success"] and summary["live_schema"] == "servicedesk"
    assert [a["status"] for a in summary["assets"]] == ["materialized"] * 5
    assert all(check["passed"] for asset in summary["assets"] for check in asset["checks"] if check["blocking"])

    with psycopg.connect(fresh_database) as conn:
        tables = {name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'servicedesk'")}
        assert {"tickets", "comments", "timesheets"} <= tables
        types = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'servicedesk' AND table_name = 'tickets'").fetchall())
        assert types["TKT-Created Time"] == "timestamp without time zone"
        assert types["TKT-Actual Response Date"] == "timestamp without time zone"
        (tickets,) = conn.execute('SELECT count(*) FROM servicedesk."tickets"').fetchone()
    assert tickets == truth["row_counts"]["tickets"]


def test_clean_writes_the_new_file_and_its_plan_and_leaves_nothing_else_behind(tmp_path):
    from servicedesk_etl.demo_data import generate_demo_snapshot

    source = generate_demo_snapshot(tmp_path / "in" / "snapshot.db", scale=0.01).path
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    completed = run_cli(["clean", "--source", str(source), "--output", str(out_dir / "clean.db")], tmp_path / "home")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert sorted(path.name for path in out_dir.iterdir()) == ["clean.db", "clean.db.plan.json"]
    with sqlite3.connect(out_dir / "clean.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
