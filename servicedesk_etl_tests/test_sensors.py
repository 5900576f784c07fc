"""The snapshot sensor: one run per distinct, stable, readable snapshot; everything else skipped with a reason."""

import shutil
import sqlite3

import dagster as dg
import pytest

from servicedesk_etl.sensors import DropDirectory, snapshot_sensor
from servicedesk_etl.snapshot_watch import WatchState, scan_drop_directory


def make_snapshot(path, rows=3):
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE tickets ("TKT-Ticket ID" INTEGER, "TKT-Title" TEXT)')
    conn.executemany("INSERT INTO tickets VALUES (?, ?)", [(i, f"ticket {i}") for i in range(rows)])
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def tick(tmp_path, instance):
    drop = tmp_path / "incoming"
    drop.mkdir()
    cursor = {"value": None}

    def evaluate():
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor["value"],
            resources={"drop_directory": DropDirectory(path=str(drop), stable_seconds=0)},
        )
        result = snapshot_sensor(context)
        cursor["value"] = result.cursor
        return result.run_requests or []

    evaluate.drop = drop
    return evaluate


def test_a_new_snapshot_gives_one_run_once_it_is_stable(tick):
    snapshot = make_snapshot(tick.drop / "servicedesk_tickets.db")
    assert tick() == []  # first look: not yet known to be stable
    (request,) = tick()
    assert request.run_key and len(request.run_key) == 64
    assert request.run_config["resources"]["snapshot"]["config"]["path"] == str(snapshot)
    assert tick() == []


def test_the_same_content_renamed_or_touched_never_runs_twice(tick):
    first = make_snapshot(tick.drop / "monday.db")
    tick()
    assert len(tick()) == 1
    shutil.copyfile(first, tick.drop / "monday-copy.db")
    first.touch()
    tick()
    assert tick() == []


def test_a_growing_file_waits_until_it_stops_changing(tick):
    snapshot = make_snapshot(tick.drop / "growing.db", rows=2)
    assert tick() == []
    conn = sqlite3.connect(snapshot)
    conn.executemany("INSERT INTO tickets VALUES (?, ?)", [(i, "x" * 5000) for i in range(50)])
    conn.commit()
    conn.close()
    assert tick() == []  # changed since the last look
    assert len(tick()) == 1


def test_an_unreadable_file_is_skipped_with_a_reason(tmp_path):
    drop = tmp_path / "incoming"
    drop.mkdir()
    (drop / "notes.db").write_text("this is not a database")
    state = scan_drop_directory(drop, WatchState(), now=0.0, stable_seconds=0).state
    scan = scan_drop_directory(drop, state, now=1.0, stable_seconds=0)
    assert scan.ready == ()
    (skipped,) = scan.skipped
    assert "unreadable" in skipped.reason and "not a SQLite database" in skipped.reason


def test_a_snapshot_with_a_hot_journal_or_a_writer_lock_is_skipped(tmp_path):
    drop = tmp_path / "incoming"
    drop.mkdir()
    journalled = make_snapshot(drop / "journalled.db")
    (drop / "journalled.db-journal").write_bytes(b"\x00" * 512)
    locked = make_snapshot(drop / "locked.db")
    writer = sqlite3.connect(locked, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        state = scan_drop_directory(drop, WatchState(), now=0.0, stable_seconds=0).state
        scan = scan_drop_directory(drop, state, now=1.0, stable_seconds=0)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    reasons = {skipped.path.name: skipped.reason for skipped in scan.skipped}
    assert scan.ready == ()
    assert "journal" in reasons["journalled.db"]
    assert "locked" in reasons["locked.db"]
    assert journalled.exists()


def test_stability_needs_the_configured_interval(tmp_path):
    drop = tmp_path / "incoming"
    drop.mkdir()
    make_snapshot(drop / "a.db")
    state = scan_drop_directory(drop, WatchState(), now=100.0, stable_seconds=30).state
    assert scan_drop_directory(drop, state, now=110.0, stable_seconds=30).ready == ()
    assert len(scan_drop_directory(drop, state, now=131.0, stable_seconds=30).ready) == 1


def test_the_cursor_round_trips():
    state = WatchState()
    assert WatchState.from_cursor(state.to_cursor()) == state
