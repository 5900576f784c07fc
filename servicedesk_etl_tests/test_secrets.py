"""No password from a DSN appears in any output, log, metric, report, plan or Dagster record."""

import os
import subprocess
import sys

import pytest
from psycopg.conninfo import make_conninfo

from servicedesk_etl.demo_data import generate_demo_snapshot

SECRET = "s3cr3t-test-pw"
CLI = [sys.executable, "-c", "import sys; from servicedesk_etl.cli import main; sys.exit(main())"]


@pytest.mark.slow
def test_two_full_runs_with_a_password_in_the_dsn_leave_it_nowhere(tmp_path, fresh_database):
    # The embedded server trusts local connections, so the password is accepted and must then be hidden.
    dsn = make_conninfo(fresh_database, password=SECRET)
    home = tmp_path / "home"
    snapshot = generate_demo_snapshot(tmp_path / "servicedesk_tickets.db", scale=0.005, seed=11).path
    env = {k: v for k, v in os.environ.items() if k not in {"SERVICEDESK_PG_DSN", "DAGSTER_HOME"}}
    env["SERVICEDESK_ETL_HOME"] = str(home)

    outputs = []
    for args in (["run", "--source", str(snapshot), "--target-dsn", dsn],
                 ["run", "--source", str(snapshot), "--target-dsn", dsn, "--json"],
                 ["status", "--target-dsn", dsn],
                 ["preflight", "--source", str(snapshot), "--target-dsn", dsn, "--json"]):
        completed = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=600)
        outputs.append(completed.stdout + completed.stderr)
        assert completed.returncode in (0, 2), completed.stdout[-3000:] + completed.stderr[-3000:]

    for text in outputs:
        assert SECRET not in text
    assert any(p.suffix == ".dump" for p in home.rglob("*")), "the second run should have dumped the live schema"
    written = [path for path in home.rglob("*") if path.is_file() and "pgdata" not in path.parts]
    assert len(written) > 10
    leaking = [str(path) for path in written if SECRET.encode() in path.read_bytes()]
    assert leaking == []
