"""The profile step hands its frames to the scorer and the cleaner, so a run reads its snapshot once;
what they conclude is what they conclude reading the files themselves."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.pipeline import RAW_CACHE_DIR, PipelineSettings, clean_step, profile_step, rule_packs
from servicedesk_etl.profiling.plan import Plan
from servicedesk_etl.profiling.rules import evaluate_rules
from servicedesk_etl.profiling.score import score_quality, sqlite_source
from servicedesk_etl.raw_cache import open_raw_cache
from servicedesk_etl.sqlite_source import file_sha256

SETTINGS = PipelineSettings(run_dry_run=False)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_snapshot(tmp_path_factory.mktemp("demo") / "demo.db", scale=0.02).path


def table_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.text_factory = bytes
        tables = [name.decode() for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: conn.execute(f'SELECT rowid, * FROM "{table}" ORDER BY rowid').fetchall() for table in tables}


def test_profiling_leaves_a_raw_cache_of_every_table_and_scores_as_the_file_does(snapshot, tmp_path):
    outcome = profile_step(snapshot, tmp_path / "profile", dsn=None, settings=SETTINGS)
    plan = Plan.read(outcome.artifact.plan_path)
    cache = open_raw_cache(tmp_path / "profile" / RAW_CACHE_DIR, file_sha256(snapshot))
    assert cache is not None and set(cache.tables) == {table.name for table in plan.tables}
    by_file = score_quality(sqlite_source(snapshot), plan)
    assert (outcome.artifact.quality_score, outcome.artifact.dimensions) == (by_file.score, dict(by_file.dimensions))
    rules = evaluate_rules(sqlite_source(snapshot), plan, rule_packs(SETTINGS), None)
    assert outcome.metadata["rules_score"] == rules.score


def test_cleaning_consumes_the_cache_and_writes_what_it_writes_without_it(snapshot, tmp_path):
    profiled = profile_step(snapshot, tmp_path / "profile", dsn=None, settings=SETTINGS)
    plan_path = profiled.artifact.plan_path
    kept = tmp_path / "plan-only"
    kept.mkdir()
    shutil.copy(plan_path, kept / "plan.json")  # a plan with no cache beside it: the cleaner reads SQLite

    with_cache = clean_step(snapshot, plan_path, tmp_path / "a.db", score_before=0, settings=SETTINGS)
    without = clean_step(snapshot, kept / "plan.json", tmp_path / "b.db", score_before=0, settings=SETTINGS)

    assert not (tmp_path / "profile" / RAW_CACHE_DIR).exists()
    # each cleaned file's values as stored stay beside it for the canary and production reconciliation
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == [".a.db.stored", ".b.db.stored"]
    assert table_rows(with_cache.artifact.path) == table_rows(without.artifact.path)
    by_file = score_quality(sqlite_source(with_cache.artifact.path), Plan.read(plan_path))
    assert with_cache.artifact.quality_score == without.artifact.quality_score == by_file.score
    assert all(gate.passed for gate in with_cache.gates)
