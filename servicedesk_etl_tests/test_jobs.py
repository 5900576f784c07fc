"""The rollback job swaps the previous version back in through Dagster, and records it on the asset."""

import dataclasses

import dagster as dg
import psycopg
import pytest

from servicedesk_etl.cutover import list_versions
from servicedesk_etl.definitions import defs
from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.jobs import ROLLBACK_JOB
from servicedesk_etl.pipeline import PipelineSettings, clean_step, production_step, profile_step

pytestmark = pytest.mark.slow


def cleaned_demo(tmp_path, seed):
    snapshot = generate_demo_snapshot(tmp_path / f"s{seed}.db", scale=0.005, seed=seed).path
    settings = PipelineSettings(run_dry_run=False)
    profile = profile_step(snapshot, tmp_path / f"p{seed}", dsn=None, settings=settings)
    return clean_step(snapshot, profile.artifact.plan_path, tmp_path / f"c{seed}.db",
                      score_before=profile.artifact.quality_score, settings=settings).artifact


def test_the_rollback_job_puts_the_previous_version_back(tmp_path, fresh_database, state_home, monkeypatch):
    monkeypatch.setenv("SERVICEDESK_PG_DSN", fresh_database)
    settings = PipelineSettings()
    first = production_step(cleaned_demo(tmp_path, 1), dsn=fresh_database, settings=settings,
                            backup_dir=tmp_path / "dumps")
    second = production_step(cleaned_demo(tmp_path, 2), dsn=fresh_database, settings=settings,
                             backup_dir=tmp_path / "dumps")
    assert first.artifact.live and second.artifact.live
    assert list((tmp_path / "dumps").glob("*.dump")), "the live schema was not dumped before the second cutover"

    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(ROLLBACK_JOB).execute_in_process(instance=instance)
        observations = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert result.success
    (observation,) = observations
    assert observation.event_specific_data.asset_observation.metadata["live_version"].value == first.artifact.schema

    live = {v.schema for v in list_versions(fresh_database) if v.is_live}
    assert live == {first.artifact.schema}
    with psycopg.connect(fresh_database) as conn:
        (tickets,) = conn.execute('SELECT count(*) FROM servicedesk."tickets"').fetchone()
    assert tickets == first.artifact.rows["tickets"]


def test_a_version_its_gates_stop_leaves_the_live_schema_and_no_dump_behind(tmp_path, fresh_database):
    settings = PipelineSettings(run_dry_run=False)
    first = production_step(cleaned_demo(tmp_path, 1), dsn=fresh_database, settings=settings,
                            backup_dir=tmp_path / "dumps")
    unreachable = dataclasses.replace(cleaned_demo(tmp_path, 2), quality_score=101.0)  # production_quality fails
    second = production_step(unreachable, dsn=fresh_database, settings=settings, backup_dir=tmp_path / "dumps")
    assert first.artifact.live and not second.artifact.live
    assert [g.name for g in second.gates if not g.passed] == ["production_quality"]
    assert [v.schema for v in list_versions(fresh_database) if v.is_live] == [first.artifact.schema]
    assert list((tmp_path / "dumps").glob("*")) == []  # the live schema's dump was for a cutover that did not happen


def test_a_failing_health_check_stops_the_load_and_the_live_schema_stays(tmp_path, fresh_database):
    from servicedesk_etl.errors import ResourceExhausted
    from servicedesk_etl.observability import HealthCheck
    from servicedesk_etl.pg import schema_exists

    settings = PipelineSettings()
    first = production_step(cleaned_demo(tmp_path, 1), dsn=fresh_database, settings=settings,
                            backup_dir=tmp_path / "dumps")
    starved = HealthCheck([tmp_path], min_free_disk_bytes=2**62, min_available_memory_bytes=1)
    with pytest.raises(ResourceExhausted):
        production_step(cleaned_demo(tmp_path, 2), dsn=fresh_database, settings=settings,
                        backup_dir=tmp_path / "dumps", health_check=starved)
    live = [v for v in list_versions(fresh_database) if v.is_live]
    assert [v.schema for v in live] == [first.artifact.schema]
    loading = [v.schema for v in list_versions(fresh_database) if v.status == "loading"]
    assert all(not schema_exists(fresh_database, name) for name in loading)
