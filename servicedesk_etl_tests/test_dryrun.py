"""The dry run's sample: every odd value the profile saw and an even spread, chosen while profiling or after."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from servicedesk_etl.dryrun import SampleChooser, dry_run, sample_rowids, write_sample
from servicedesk_etl.profiling.infer import profile_database
from servicedesk_etl.sqlite_source import open_readonly


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE jobs ("TKT-Ticket ID" INTEGER, "TKT-Created Time" TIMESTAMP, hours TEXT)')
    rows = [(n, f"2025-02-{1 + n % 28:02d} 09:00:00", f"{n % 8}.5") for n in range(1, 2001)]
    rows[1234] = (1235, "13/05/2025 8:42", "3,5")  # a day-first date and a decimal comma, once each
    rows[1700] = (1701, "not a date", "n/a")  # counterexamples
    conn.executemany("INSERT INTO jobs VALUES (?, ?, ?)", rows)
    conn.execute("CREATE TABLE notes (note TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?)", [(f"note {n}",) for n in range(300)])
    conn.commit()
    conn.close()
    return path


def test_the_sample_holds_every_odd_value_the_profile_saw_and_a_spread(snapshot: Path) -> None:
    plan = profile_database(snapshot)
    with closing(open_readonly(snapshot)) as conn:
        chosen = sample_rowids(conn, plan.table("jobs"), spread_rows=20)
    assert {1235, 1701} <= set(chosen)
    assert len([rowid for rowid in chosen if rowid % 100 == 0]) >= 10  # rows spread over the table
    assert chosen == sorted(set(chosen))


def test_rows_chosen_as_tables_are_decided_are_the_rows_chosen_afterwards(snapshot: Path, tmp_path: Path) -> None:
    chooser = SampleChooser(snapshot, spread_rows=20)
    plan = profile_database(snapshot, on_plan=lambda table: chooser.add(table) if table.name == "jobs" else None)
    chosen = chooser.chosen(plan)  # "notes" was never added: chosen now
    with closing(open_readonly(snapshot)) as conn:
        assert chosen == {table.name: sample_rowids(conn, table, 20) for table in plan.tables}
    ahead = write_sample(snapshot, plan, tmp_path / "ahead.db", 20, chosen)
    after = write_sample(snapshot, plan, tmp_path / "after.db", 20)
    assert ahead == after
    for name in ("ahead.db", "after.db"):
        with closing(sqlite3.connect(tmp_path / name)) as conn:
            assert conn.execute('SELECT count(*) FROM jobs WHERE "TKT-Ticket ID" IN (1235, 1701)').fetchone() == (2,)


def test_a_dry_run_with_rows_chosen_ahead_reports_what_it_reports_without(snapshot: Path, pg_dsn: str) -> None:
    plan = profile_database(snapshot)
    chooser = SampleChooser(snapshot)
    for table in plan.tables:
        chooser.add(table)
    ahead = dry_run(snapshot, plan, pg_dsn, chooser=chooser)
    after = dry_run(snapshot, plan, pg_dsn)
    assert ahead.ok and after.ok, (ahead.failures, after.failures)
    assert (ahead.sample_rows, ahead.queries_run) == (after.sample_rows, after.queries_run)
