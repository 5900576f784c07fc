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
    assert {(1235,), (1701,)} <= set(chosen)  # rowids
    assert len([key for key in chosen if key[0] > 1800]) >= 2  # rows spread to the end of the table
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


def test_tables_without_a_usable_rowid_are_sampled_by_their_key(tmp_path: Path, pg_dsn: str) -> None:
    path = tmp_path / "keys.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE keyed (k TEXT, part INTEGER, n INTEGER, PRIMARY KEY (k, part)) WITHOUT ROWID")
    conn.executemany("INSERT INTO keyed VALUES (?, ?, ?)", [(f"k{i % 40}", i, i) for i in range(400)] + [("odd", 1, "x")])
    conn.execute('CREATE TABLE shadowed ("rowid" TEXT, n INTEGER)')  # its rowid is a column: _rowid_ is the row
    conn.executemany("INSERT INTO shadowed VALUES (?, ?)", [("same", i) for i in range(300)] + [("same", "odd")])
    conn.commit()
    conn.close()
    plan = profile_database(path)
    with closing(open_readonly(path)) as conn:
        keyed = sample_rowids(conn, plan.table("keyed"), 20)
        shadowed = sample_rowids(conn, plan.table("shadowed"), 20)
    assert ("odd", 1) in keyed and all(len(key) == 2 for key in keyed)
    assert (301,) in shadowed  # the row holding "odd", by its real rowid
    report = dry_run(path, plan, pg_dsn, spread_rows=20)
    assert report.ok, report.failures
    assert report.sample_rows == {"keyed": len(keyed), "shadowed": len(shadowed)}
    with closing(sqlite3.connect(tmp_path / "sample-check.db")) as check:
        write_sample(path, plan, tmp_path / "sample-check.db", 20)
        assert check.execute("SELECT count(*) FROM keyed WHERE n = 'x'").fetchone() == (1,)
        assert check.execute("SELECT count(*) FROM shadowed WHERE n = 'odd'").fetchone() == (1,)
