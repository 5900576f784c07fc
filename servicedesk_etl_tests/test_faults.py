"""Non-negotiable 4: a bad input or a failing environment gives one clear message and a non-zero exit;
the source is untouched, the live schema is untouched, and nothing half-written is left behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from servicedesk_etl.cutover import list_versions
from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.errors import ResourceExhausted
from servicedesk_etl.observability.health import HealthCheck
from servicedesk_etl.pipeline import (
    CleanedArtifact,
    PipelineSettings,
    canary_step,
    clean_step,
    production_step,
    profile_step,
)
from servicedesk_etl.preflight import run_preflight
from servicedesk_etl_tests.conftest import scratch_database
from servicedesk_etl_tests.integration_support import (
    file_digest,
    migrate,
    schema_fingerprint,
    schemas,
)

pytestmark = pytest.mark.postgres

LIVE = "servicedesk"
CLI = [sys.executable, "-c", "import sys; from servicedesk_etl.cli import main; sys.exit(main())"]
PASSWORD = "s3cr3t-fault-pw"


def write_small_snapshot(path: Path, rows: int = 40) -> Path:
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE orders ("Order ID" INTEGER, "Created Time" TIMESTAMP, "Hours" TEXT)')
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?)",
        [(i, f"2025-01-{1 + i % 28:02d} 08:{i % 60:02d}:00", f"{i % 7}.5") for i in range(1, rows + 1)],
    )
    conn.commit()
    conn.close()
    return path


@dataclass(frozen=True)
class LiveTarget:
    dsn: str
    fingerprint: dict[str, tuple[int, str, str]]
    schemas: set[str]


@pytest.fixture(scope="module")
def live_target(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTarget]:
    """A database whose `servicedesk` schema was made live by a good run, before any bad input arrives."""
    folder = tmp_path_factory.mktemp("live")
    with scratch_database(pg_dsn) as dsn:
        summary = migrate(write_small_snapshot(folder / "good.db"), folder / "home", dsn)
        assert summary.success, (summary.stopped_by, summary.reason)
        yield LiveTarget(dsn, schema_fingerprint(dsn, LIVE), schemas(dsn))


def assert_live_schema_untouched(target: LiveTarget) -> None:
    assert schemas(target.dsn) == target.schemas
    assert schema_fingerprint(target.dsn, LIVE) == target.fingerprint


def assert_nothing_half_written(home: Path) -> None:
    leftovers = [p for p in home.rglob("*") if p.name == "cleaned.db" or ".cleaning-tmp" in p.name]
    assert leftovers == []


def run_cli(args: list[str], home: Path, dsn: str | None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"SERVICEDESK_PG_DSN", "DAGSTER_HOME"}}
    env["SERVICEDESK_ETL_HOME"] = str(home)
    if dsn:
        env["SERVICEDESK_PG_DSN"] = dsn
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(completed: subprocess.CompletedProcess[str]) -> str:
    output = completed.stdout + completed.stderr
    assert "Traceback" not in output, output
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    return lines[0]


# --- unusable snapshots -----------------------------------------------------------------------------


def corrupt(path: Path) -> None:
    """A real snapshot whose pages after the header page are overwritten: the header still says SQLite."""
    write_small_snapshot(path, rows=2000)
    data = bytearray(path.read_bytes())
    data[4096:] = bytes((i * 37) % 251 for i in range(len(data) - 4096))
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def csv_file(path: Path) -> None:
    path.write_text("TKT-Ticket ID,TKT-Title\n1,printer on fire\n", encoding="utf-8")


def tableless(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 1")
    conn.close()


@pytest.mark.parametrize(
    "make, words",
    [(corrupt, ("quick_check", "cannot be")), (empty, ("empty",)), (csv_file, ("not a SQLite",)),
     (tableless, ("no tables",))],
    ids=["corrupt", "empty", "not-sqlite", "no-tables"],
)
def test_an_unusable_snapshot_stops_with_one_line_and_touches_nothing(
    tmp_path: Path, live_target: LiveTarget, make: Callable[[Path], None], words: tuple[str, ...]
) -> None:
    source = tmp_path / "snapshot.db"
    make(source)
    before = file_digest(source)
    completed = run_cli(["run", "--source", str(source)], tmp_path / "home", live_target.dsn)
    assert completed.returncode == 2
    line = one_error_line(completed)
    assert str(source) in line and any(word in line for word in words), line
    assert file_digest(source) == before
    assert_live_schema_untouched(live_target)
    assert_nothing_half_written(tmp_path / "home")


def test_a_snapshot_locked_by_a_writer_stops_with_one_line(tmp_path: Path, live_target: LiveTarget) -> None:
    source = write_small_snapshot(tmp_path / "snapshot.db")
    before = file_digest(source)
    writer = sqlite3.connect(source, isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        completed = run_cli(["run", "--source", str(source)], tmp_path / "home", live_target.dsn)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert completed.returncode == 2
    assert "locked" in one_error_line(completed)
    assert file_digest(source) == before
    assert_live_schema_untouched(live_target)
    assert_nothing_half_written(tmp_path / "home")


def test_an_unreachable_server_stops_with_one_line_without_the_password(tmp_path: Path,
                                                                       live_target: LiveTarget) -> None:
    source = write_small_snapshot(tmp_path / "snapshot.db")
    before = file_digest(source)
    dsn = f"postgresql://etl:{PASSWORD}@127.0.0.1:1/servicedesk"
    completed = run_cli(["run", "--source", str(source), "--target-dsn", dsn], tmp_path / "home", live_target.dsn)
    assert completed.returncode == 2
    assert "unreachable" in one_error_line(completed)
    assert PASSWORD not in completed.stdout + completed.stderr
    assert file_digest(source) == before
    assert_live_schema_untouched(live_target)
    assert_nothing_half_written(tmp_path / "home")


def test_a_snapshot_the_dashboards_cannot_query_stops_at_the_dry_run_before_anything_live(
    tmp_path: Path, live_target: LiveTarget
) -> None:
    """A `tickets` table that lost the columns the dashboards use: the run stops at a named gate, exit 1."""
    source = tmp_path / "drifted.db"
    conn = sqlite3.connect(source)
    conn.execute('CREATE TABLE tickets ("TKT-Ticket ID" INTEGER, "TKT-Created Time" TIMESTAMP)')
    rows = [(i, f"2025-02-{1 + i % 28:02d} 09:00:00") for i in range(50)]
    conn.executemany("INSERT INTO tickets VALUES (?, ?)", rows)
    conn.commit()
    conn.close()
    before = file_digest(source)

    completed = run_cli(["run", "--source", str(source), "--json"], tmp_path / "home", live_target.dsn)

    assert completed.returncode == 1, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["stopped_by"] == "profile_report.dry_run"
    assert '"TKT-Status" does not exist' in summary["reason"]
    assert [asset["status"] for asset in summary["assets"]][2:] == ["skipped"] * 3
    assert file_digest(source) == before
    assert_live_schema_untouched(live_target)
    assert_nothing_half_written(tmp_path / "home")


# --- a full disk ------------------------------------------------------------------------------------


def test_preflight_fails_when_the_disk_cannot_hold_twice_the_snapshot(tmp_path: Path, live_target: LiveTarget) -> None:
    source = write_small_snapshot(tmp_path / "snapshot.db")
    report = run_preflight(source, live_target.dsn, work_dirs=[tmp_path], min_free_ratio=10.0**15)
    disk = report.check("disk_free")
    assert disk.status == "fail" and report.exit_code == 1
    assert str(tmp_path) in disk.measured + disk.advice and "\n" not in disk.advice


def test_cleaning_onto_a_full_disk_stops_and_leaves_no_cleaned_file(tmp_path: Path) -> None:
    source = generate_demo_snapshot(tmp_path / "servicedesk_tickets.db", scale=0.01, seed=5).path
    before = file_digest(source)
    settings = PipelineSettings(run_dry_run=False, min_free_disk_bytes=2**62, check_every_rows=100)
    run_dir = tmp_path / "run"
    profile = profile_step(source, run_dir, dsn=None, settings=settings)
    health = HealthCheck([run_dir], settings.min_free_disk_bytes, settings.min_available_memory_bytes, every_rows=100)
    with pytest.raises(ResourceExhausted) as stopped:
        clean_step(source, profile.artifact.plan_path, run_dir / "cleaned.db",
                   score_before=profile.artifact.quality_score, settings=settings, health_check=health)
    message = str(stopped.value)
    assert "\n" not in message and "free" in message and stopped.value.exit_code == 1
    assert file_digest(source) == before
    assert_nothing_half_written(tmp_path)


# --- hostile identifiers ----------------------------------------------------------------------------

HOSTILE_COLUMNS = (
    '"; DROP TABLE x; --',
    "it's \"quoted\"",
    "select",
    "order",
    "user",
    "名前 (ticket)",
    "Café/№#",
    "_rowid",  # the name frames used for their row ids
    "rowid",
    "a" * 70,
    "a" * 69 + "b",
)


def test_hostile_column_names_arrive_quoted_and_nothing_else_is_touched(tmp_path: Path, fresh_database: str) -> None:
    source = tmp_path / "hostile.db"
    conn = sqlite3.connect(source)
    columns = ", ".join('"' + name.replace('"', '""') + '" TEXT' for name in HOSTILE_COLUMNS)
    conn.execute(f"CREATE TABLE hostile ({columns})")
    conn.executemany(f"INSERT INTO hostile VALUES ({', '.join('?' * len(HOSTILE_COLUMNS))})",
                     [tuple(f"{row}-{position}" for position in range(len(HOSTILE_COLUMNS))) for row in range(30)])
    conn.execute("CREATE TABLE x (id INTEGER)")
    conn.execute("INSERT INTO x VALUES (1)")
    conn.commit()
    conn.close()
    with psycopg.connect(fresh_database, autocommit=True) as pg:
        pg.execute("CREATE TABLE public.x (id integer)")
        pg.execute("INSERT INTO public.x VALUES (7)")
    before = file_digest(source)

    summary = migrate(source, tmp_path / "home", fresh_database)

    assert summary.success, (summary.stopped_by, summary.reason)
    assert file_digest(source) == before
    with psycopg.connect(fresh_database) as pg:
        assert pg.execute("SELECT id FROM public.x").fetchall() == [(7,)]
        assert pg.execute("SELECT id FROM servicedesk.x").fetchall() == [(1,)]
        names = [name for (name,) in pg.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'servicedesk' "
            "AND table_name = 'hostile' ORDER BY ordinal_position")]
        first_row = pg.execute("SELECT * FROM servicedesk.hostile WHERE \"select\" = '0-2'").fetchall()
    short = [name for name in HOSTILE_COLUMNS if len(name.encode()) <= 63]
    assert names[: len(short)] == short
    assert len(names) == len(HOSTILE_COLUMNS) == len(set(names))
    assert all(len(name.encode()) <= 63 for name in names)
    assert first_row == [tuple(f"0-{position}" for position in range(len(HOSTILE_COLUMNS)))]


# --- a production load killed midway ----------------------------------------------------------------

KILLABLE_LOAD = """
import sys
from pathlib import Path
from servicedesk_etl.pipeline import CleanedArtifact, PipelineSettings, production_step
from servicedesk_etl.profiling.plan import Plan
cleaned, plan, dsn, backups = sys.argv[1:5]
rows = {table.name: table.row_count for table in Plan.read(plan).tables}
artifact = CleanedArtifact(Path(cleaned), Path(plan), "0" * 64, rows, 0.0)
production_step(artifact, dsn=dsn, settings=PipelineSettings(load_workers=1), backup_dir=Path(backups))
"""


@pytest.fixture(scope="module")
def cleaned_demo(tmp_path_factory: pytest.TempPathFactory) -> CleanedArtifact:
    """A scale-0.3 demo (about 78,000 rows), profiled and cleaned once for the kill test."""
    folder = tmp_path_factory.mktemp("kill")
    source = generate_demo_snapshot(folder / "servicedesk_tickets.db", scale=0.3, seed=11).path
    settings = PipelineSettings(run_dry_run=False)
    profile = profile_step(source, folder / "run", dsn=None, settings=settings)
    cleaned = clean_step(source, profile.artifact.plan_path, folder / "run" / "cleaned.db",
                         score_before=profile.artifact.quality_score, settings=settings)
    assert not any(gate.stops_the_run for gate in cleaned.gates)
    return cleaned.artifact


def copying(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state = 'active' AND query ILIKE 'COPY %'"
        ).fetchone()[0])


@pytest.mark.slow
def test_a_production_load_killed_midway_leaves_the_live_schema_and_the_next_run_cleans_up(
    tmp_path: Path, fresh_database: str, cleaned_demo: CleanedArtifact
) -> None:
    settings = PipelineSettings(run_dry_run=False)
    first = production_step(cleaned_demo, dsn=fresh_database, settings=settings, backup_dir=tmp_path / "backups")
    assert first.artifact.live
    live_before = schema_fingerprint(fresh_database, LIVE)

    loader = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_LOAD, str(cleaned_demo.path), str(cleaned_demo.plan_path), fresh_database,
         str(tmp_path / "backups")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not copying(fresh_database):
            assert loader.poll() is None, "the load ended before it could be killed: " + loader.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        loader.send_signal(signal.SIGKILL)
    finally:
        loader.kill()
        loader.wait(timeout=30)
    assert loader.returncode == -signal.SIGKILL

    assert schema_fingerprint(fresh_database, LIVE) == live_before
    interrupted = [v for v in list_versions(fresh_database) if v.status == "loading"]
    assert len(interrupted) == 1 and interrupted[0].exists
    leftover = interrupted[0].schema

    canary = canary_step(cleaned_demo, dsn=fresh_database, run_id="after-kill", settings=settings)
    assert leftover in canary.metadata["leftovers_dropped"]
    production = production_step(cleaned_demo, dsn=fresh_database, settings=settings, backup_dir=tmp_path / "backups")
    assert production.artifact.live, [gate.summary for gate in production.gates if not gate.passed]
    assert leftover not in schemas(fresh_database)
    assert leftover not in {version.schema for version in list_versions(fresh_database)}
    assert {s for s in schemas(fresh_database) if s.startswith("servicedesk_canary_")} == set()
