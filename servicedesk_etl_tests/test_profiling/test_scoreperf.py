"""The scorer and the rule engine share what they count over one unchanged SQLite file, and the
faster queries give exactly the results the slower ones gave."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.profiling import sources as m
from servicedesk_etl.profiling.plan import Plan
from servicedesk_etl.profiling.rules import evaluate_rules
from servicedesk_etl.profiling.score import score_quality
from servicedesk_etl.profiling.sources import Link, Measure, sqlite_source

# Plan, clock and results of the demo snapshot at scale 0.05, computed before the optimisation.
EXPECTED = Path(__file__).parent / "data" / "demo_scale005_expected.json"


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """A result as plain JSON, without what names the file or the installed packs' location."""
    plain = json.loads(json.dumps(document, sort_keys=True, default=str))
    plain.pop("source", None)
    for pack in plain.get("packs", []):
        pack.pop("path", None)
    return plain


@pytest.fixture(scope="module")
def frozen() -> dict[str, Any]:
    return json.loads(EXPECTED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.sqlite"
    generate_demo_snapshot(path, scale=0.05)
    return path


def test_score_and_rules_of_the_demo_snapshot_equal_the_frozen_results(demo: Path, frozen: dict[str, Any]) -> None:
    plan = Plan.from_dict(frozen["plan"])
    now = datetime.fromisoformat(frozen["now"])
    score = score_quality(sqlite_source(demo), plan)
    rules = evaluate_rules(sqlite_source(demo), plan, now=now)
    assert comparable(score.to_dict()) == comparable(frozen["score"])
    assert comparable(rules.to_dict()) == comparable(frozen["rules"])


def test_score_and_rules_run_concurrently_equal_the_frozen_results(tmp_path: Path, frozen: dict[str, Any]) -> None:
    path = tmp_path / "demo.sqlite"
    generate_demo_snapshot(path, scale=0.05)
    plan = Plan.from_dict(frozen["plan"])
    now = datetime.fromisoformat(frozen["now"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        score = pool.submit(score_quality, sqlite_source(path), plan)
        rules = pool.submit(lambda: evaluate_rules(sqlite_source(path), plan, now=now))
        assert comparable(score.result().to_dict()) == comparable(frozen["score"])
        assert comparable(rules.result().to_dict()) == comparable(frozen["rules"])


def build_tickets(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE tickets ("id" INTEGER, "hours" TEXT, "note" TEXT)')
    rows = [(1, "8", "ok"), (2, "7.5", "N/A"), (2, "7.5", "N/A"), (3, "x", None), (4, "25", "a\r\nb")]
    conn.executemany("INSERT INTO tickets VALUES (?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return path


MEASURES = [
    Measure(m.ROWS),
    Measure(m.MISSING, "note"),
    Measure(m.CONFORMING, "note", ("text",)),
    Measure(m.INTEGER_IN_RANGE, "hours", (0, 24)),
    Measure(m.VALUE_IN_RANGE, "hours", (0, 8, False, True)),
    Measure(m.VALUE_EQUALS, "hours", (7.5,)),
    Measure(m.CRLF, "note"),
]


def statements_run(source: m.SqliteSource, ask: Any) -> list[str]:
    """The SQL statements `ask(source)` runs on the source's own connection."""
    seen: list[str] = []
    with source.connected() as conn:
        conn.set_trace_callback(seen.append)
        ask(source)
        conn.set_trace_callback(None)
    return seen


def test_a_second_source_over_the_same_file_asks_nothing_already_counted(tmp_path: Path) -> None:
    path = build_tickets(tmp_path / "t.sqlite")
    link = Link("tickets", "id", "tickets", "id")
    first = sqlite_source(path)
    counted = first.measure("tickets", MEASURES)
    first_duplicates, first_orphans = first.duplicate_rows("tickets"), first.orphans(link)

    second = sqlite_source(path)
    answers: dict[str, Any] = {}

    def ask(source: m.SqliteSource) -> None:
        answers["counts"] = source.measure("tickets", reversed(MEASURES))
        answers["duplicates"] = source.duplicate_rows("tickets")
        answers["orphans"] = source.orphans(link)

    assert statements_run(second, ask) == []
    assert answers == {"counts": counted, "duplicates": first_duplicates, "orphans": first_orphans}
    assert counted[Measure(m.INTEGER_IN_RANGE, "hours", (0, 24))] == 1  # 8 (7.5 is not integral, 25 is out)
    assert counted[Measure(m.VALUE_IN_RANGE, "hours", (0, 8, False, True))] == 3  # 8, 7.5, 7.5
    assert counted[Measure(m.VALUE_EQUALS, "hours", (7.5,))] == 2
    assert first_duplicates == 1


def test_only_measures_not_yet_counted_are_scanned(tmp_path: Path) -> None:
    path = build_tickets(tmp_path / "t.sqlite")
    sqlite_source(path).measure("tickets", MEASURES[:3])
    extra = Measure(m.NUMERIC, "hours")
    scanned = statements_run(sqlite_source(path), lambda source: source.measure("tickets", [*MEASURES[:3], extra]))
    aggregates = [statement for statement in scanned if "sum(" in statement or "count(CASE" in statement]
    assert len(aggregates) == 1
    assert '"note"' not in aggregates[0]  # the note column was measured already


def test_a_changed_file_is_counted_again(tmp_path: Path) -> None:
    path = build_tickets(tmp_path / "t.sqlite")
    assert sqlite_source(path).measure("tickets", [Measure(m.ROWS)])[Measure(m.ROWS)] == 5
    assert sqlite_source(path).duplicate_rows("tickets") == 1
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM tickets WHERE id = 2")
    conn.commit()
    conn.close()
    assert sqlite_source(path).measure("tickets", [Measure(m.ROWS)])[Measure(m.ROWS)] == 3
    assert sqlite_source(path).duplicate_rows("tickets") == 0


def test_different_null_markers_are_counted_separately(tmp_path: Path) -> None:
    path = build_tickets(tmp_path / "t.sqlite")
    missing = Measure(m.MISSING, "note")
    assert sqlite_source(path).measure("tickets", [missing])[missing] == 3  # two N/A and a NULL
    assert sqlite_source(path).measure("tickets", [missing], null_markers=("none",))[missing] == 1


def test_rows_added_to_a_write_ahead_log_are_counted(tmp_path: Path) -> None:
    path = build_tickets(tmp_path / "t.sqlite")
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("INSERT INTO tickets VALUES (6, '1', 'new')")
        writer.commit()
        assert sqlite_source(path).measure("tickets", [Measure(m.ROWS)])[Measure(m.ROWS)] == 6
        writer.execute("INSERT INTO tickets VALUES (7, '1', 'newer')")
        writer.commit()
        assert sqlite_source(path).measure("tickets", [Measure(m.ROWS)])[Measure(m.ROWS)] == 7
    finally:
        writer.close()
