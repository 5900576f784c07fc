"""The asset graph run through Dagster itself: check evaluations carry the gates' evidence, and a failing
blocking gate stops everything downstream of it."""

import dagster as dg
import psycopg
import pytest

from servicedesk_etl.assets import ALL_ASSETS
from servicedesk_etl.checks import GATES
from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.resources import GateSettings, PostgresTarget, SnapshotResource

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_snapshot(tmp_path):
    return generate_demo_snapshot(tmp_path / "servicedesk_tickets.db", scale=0.01, seed=3).path


@pytest.fixture
def target(fresh_database, state_home, monkeypatch):
    monkeypatch.setenv("SERVICEDESK_PG_DSN", fresh_database)
    return fresh_database


def materialize(snapshot, **gate_settings):
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            ALL_ASSETS,
            instance=instance,
            resources={
                "snapshot": SnapshotResource(path=str(snapshot)),
                "target": PostgresTarget(),
                "gates": GateSettings(**gate_settings),
            },
            raise_on_error=False,
        )
        evaluations = {
            (e.asset_key.to_user_string(), e.check_name): e
            for e in (event.event_specific_data for event in result.all_events
                      if event.event_type_value == "ASSET_CHECK_EVALUATION")
        }
        materialized = {
            event.event_specific_data.materialization.asset_key.to_user_string()
            for event in result.all_events if event.event_type_value == "ASSET_MATERIALIZATION"
        }
    return result, evaluations, materialized


def live_tables(dsn):
    with psycopg.connect(dsn) as conn:
        return {name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'servicedesk'")}


def test_the_whole_graph_materializes_and_every_gate_reports_evidence(demo_snapshot, target):
    result, evaluations, materialized = materialize(demo_snapshot)
    assert result.success
    assert materialized == {"sqlite_backup", "profile_report", "cleaned_db", "canary_schema", "production_schema"}
    expected = {(asset, gate) for asset, gates in GATES.items() for gate in gates}
    assert set(evaluations) == expected
    assert all(evaluation.passed for evaluation in evaluations.values())
    improved = evaluations[("cleaned_db", "quality_improved")].metadata
    assert improved["after"].value >= improved["before"].value
    assert evaluations[("profile_report", "quality_score")].metadata["dimensions"].value.keys() >= {
        "completeness", "validity", "consistency", "uniqueness", "integrity"}
    assert {"tickets", "comments", "timesheets"} <= live_tables(target)


def test_a_failing_blocking_gate_stops_the_run_before_anything_live_changes(demo_snapshot, target):
    result, evaluations, materialized = materialize(demo_snapshot, min_quality_score=99.99)
    assert not result.success
    assert not evaluations[("cleaned_db", "quality_gate")].passed
    assert evaluations[("cleaned_db", "quality_gate")].metadata["threshold"].value == 99.99
    assert "canary_schema" not in materialized and "production_schema" not in materialized
    assert live_tables(target) == set()
