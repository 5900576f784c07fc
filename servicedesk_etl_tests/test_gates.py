"""Gate 1's blocking checks fire on real snapshots: low confidence stops a run, and so does a column
that would be more than 20% unconvertible."""

import sqlite3

import pytest

from servicedesk_etl.pipeline import PipelineSettings, profile_step


def snapshot_with_created_times(path, good, bad):
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE tickets ("TKT-Ticket ID" INTEGER, "TKT-Created Time" TIMESTAMP)')
    rows = [(i, f"2025-03-{1 + i % 28:02d} 08:{i % 60:02d}:00") for i in range(good)]
    rows += [(good + i, f"garbage {i}") for i in range(bad)]
    conn.executemany("INSERT INTO tickets VALUES (?, ?)", rows)
    conn.commit()
    conn.close()
    return path


def gates_of(tmp_path, good, bad, **settings):
    source = snapshot_with_created_times(tmp_path / "s.db", good, bad)
    outcome = profile_step(source, tmp_path / "run", dsn=None, settings=PipelineSettings(run_dry_run=False, **settings))
    return {gate.name: gate for gate in outcome.gates}


def test_a_clean_column_passes_both_gates(tmp_path):
    gates = gates_of(tmp_path, good=100, bad=0)
    assert gates["type_confidence"].passed and gates["circuit_breaker"].passed


def test_a_column_under_95_percent_fails_type_confidence_with_its_counterexamples(tmp_path):
    gates = gates_of(tmp_path, good=90, bad=10)
    confidence = gates["type_confidence"]
    assert not confidence.passed and confidence.blocking
    (failing,) = confidence.metadata["failing_columns"]
    assert failing["column"] == "TKT-Created Time" and failing["target_type"] == "timestamp"
    assert failing["confidence"] == pytest.approx(0.9)
    assert any(value.startswith("garbage") for value in failing["counterexamples"])
    assert gates["circuit_breaker"].passed


def test_more_than_20_percent_unconvertible_trips_the_circuit_breaker(tmp_path):
    gates = gates_of(tmp_path, good=70, bad=30, min_typed_confidence=0.6)
    breaker = gates["circuit_breaker"]
    assert not breaker.passed and breaker.blocking
    (tripped,) = breaker.metadata["tripped_columns"]
    assert tripped["unconvertible_share"] == pytest.approx(0.3)
    assert "TKT-Created Time" in breaker.summary


def test_with_default_settings_a_declared_timestamp_column_30_percent_garbage_trips_the_breaker(tmp_path):
    gates = gates_of(tmp_path, good=70, bad=30)
    breaker = gates["circuit_breaker"]
    assert not breaker.passed
    assert "TKT-Created Time 30% unconvertible (e.g. 'garbage" in breaker.summary
    assert not gates["type_confidence"].passed


def test_a_declared_column_with_less_than_a_majority_convertible_stays_text_and_passes(tmp_path):
    gates = gates_of(tmp_path, good=40, bad=60)
    assert gates["type_confidence"].passed and gates["circuit_breaker"].passed


USER_PACK = """
[pack]
name = "house-rules"
description = "the team's own rule"

[categories]
completeness = 100

[[rules]]
id = "HOUSE-01"
name = "every ticket has a created time"
category = "completeness"
check = "completeness"
columns = ["tickets.TKT-Created Time"]
min = 1.0
"""


def test_a_user_rule_that_fails_shows_on_the_quality_score_check(tmp_path):
    pack = tmp_path / "house.toml"
    pack.write_text(USER_PACK)
    source = snapshot_with_created_times(tmp_path / "s.db", 90, 0)
    conn = sqlite3.connect(source)
    conn.execute("INSERT INTO tickets VALUES (999, NULL)")
    conn.commit()
    conn.close()
    outcome = profile_step(source, tmp_path / "run", dsn=None,
                           settings=PipelineSettings(run_dry_run=False, rule_packs=(str(pack),)))
    (quality,) = [gate for gate in outcome.gates if gate.name == "quality_score"]
    assert "HOUSE-01" in {rule["rule"] for rule in quality.metadata["failing_rules"]}


def test_an_unusable_user_rule_pack_stops_the_profile_before_any_table_is_read(tmp_path):
    from servicedesk_etl.profiling.rules import RulePackError

    pack = tmp_path / "house.toml"
    pack.write_text(USER_PACK.replace("completeness = 100", "completeness = 90"))
    source = snapshot_with_created_times(tmp_path / "s.db", 10, 0)
    with pytest.raises(RulePackError, match="sum to 90, not 100"):
        profile_step(source, tmp_path / "run", dsn=None,
                     settings=PipelineSettings(run_dry_run=False, rule_packs=(str(pack),)))
    assert not (tmp_path / "run" / "raw").exists() and not (tmp_path / "run" / "plan.json").exists()


def test_profiling_reports_progress_per_table(tmp_path):
    from servicedesk_etl.profiling.infer import profile_database

    source = snapshot_with_created_times(tmp_path / "s.db", 40, 2)
    seen = []
    profile_database(source, progress=lambda table, done, total: seen.append((table, done, total)))
    assert seen == [("tickets", 42, 42)]
