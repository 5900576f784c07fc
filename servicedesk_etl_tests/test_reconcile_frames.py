"""Reconciliation reads the cleaned file's values as raw frames, from the cleaner's stored cache when
that cache is of this very file, else from the file: both give the same aggregates, with SQLite's
own semantics, and the pipeline keeps the cache from the clean step to the production step."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from servicedesk_etl.cleaning import CleanSettings, clean_snapshot
from servicedesk_etl.demo_data import generate_demo_snapshot
from servicedesk_etl.loading import load_schema
from servicedesk_etl.pipeline import PipelineSettings, canary_step, clean_step, production_step, profile_step
from servicedesk_etl.profiling.plan import ColumnPlan, Conversion, Plan
from servicedesk_etl.profiling.values import read_rows
from servicedesk_etl.raw_cache import open_raw_cache
from servicedesk_etl.reconcile import (
    cleaned_frames,
    column_aggregates,
    reconcile_schema,
    sampled_rows,
    sqlite_extremes,
    stored_cache_of,
    table_aggregates,
)
from servicedesk_etl.sqlite_source import file_sha256

SETTINGS = PipelineSettings(run_dry_run=False)
CORPUS = ["chinook.sqlite", "northwind.sqlite", "sakila.sqlite", "pgloader-sqlite.db", "pgloader-bad-utf8.db",
          "pgloader-collision.db", "pgloader-test_pk.db", "pgloader-type-mismatch.db"]


def cleaned_with_cache(snapshot: Path, work: Path) -> tuple[Path, Plan, Path]:
    """Profile and clean `snapshot`, keeping the stored cache whatever the gates say."""
    profiled = profile_step(snapshot, work / "profile", dsn=None, settings=SETTINGS)
    plan = Plan.read(profiled.artifact.plan_path)
    output = work / "cleaned.db"
    stored = stored_cache_of(output)
    result = clean_snapshot(snapshot, plan, output, settings=CleanSettings(), stored_cache_dir=stored)
    assert result.stored_cache is not None
    return output, plan, stored


def all_aggregates(cleaned: Path, plan: Plan, stored: Path | None, sample_percent: float | None) -> dict:
    frames = cleaned_frames(cleaned, stored)
    assert frames.origin.startswith("stored cache" if stored is not None else "file")
    found = {}
    for table in plan.tables:
        rows, rowids = sampled_rows(cleaned, table, sample_percent=sample_percent, seed=0, small_table_rows=100)
        found[table.name] = (rows, table_aggregates(frames, table, table.columns, rowids))
    return found


def same_values(left: dict, right: dict) -> bool:
    """Equal, and of the same Python types (an int sum is not a Decimal one, a str min not bytes)."""
    flatten = lambda found: {(name, key): value for name, (_, values) in found.items() for key, value in values.items()}  # noqa: E731
    a, b = flatten(left), flatten(right)
    return a == b and {key: type(value) for key, value in a.items()} == {key: type(value) for key, value in b.items()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_snapshot(tmp_path_factory.mktemp("demo") / "demo.db", scale=0.02).path


@pytest.mark.parametrize("sample_percent", [None, 10.0])
def test_the_stored_cache_and_the_file_give_the_same_aggregates_on_demo_data(demo, tmp_path, sample_percent):
    cleaned, plan, stored = cleaned_with_cache(demo, tmp_path)
    from_cache = all_aggregates(cleaned, plan, stored, sample_percent)
    from_file = all_aggregates(cleaned, plan, None, sample_percent)
    assert same_values(from_cache, from_file)
    assert {name: rows for name, (rows, _) in from_cache.items()} == {name: rows for name, (rows, _) in from_file.items()}
    if sample_percent is not None:
        full = all_aggregates(cleaned, plan, stored, None)
        assert all(from_cache[name][0] < full[name][0] for name in ("comments", "timesheets"))


@pytest.mark.slow
@pytest.mark.parametrize("name", CORPUS)
def test_the_stored_cache_and_the_file_give_the_same_aggregates_on_the_corpus(corpus_copy, tmp_path, name):
    cleaned, plan, stored = cleaned_with_cache(corpus_copy(name), tmp_path / "work")
    assert same_values(all_aggregates(cleaned, plan, stored, None), all_aggregates(cleaned, plan, None, None))
    assert same_values(all_aggregates(cleaned, plan, stored, 10.0), all_aggregates(cleaned, plan, None, 10.0))


MIXED_VALUES = [3, 2.5, 2**53 + 1, -7, -7.0, "10", "9.75", "é", None, b"\x00\xff", b"\x01", 0, 0.0]


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    """One untyped column (no affinity: every storage class as given), one BOOLEAN (numeric affinity)."""
    path = tmp_path / "mixed.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (anything, flag BOOLEAN)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(value, value) for value in MIXED_VALUES])
        conn.execute("INSERT INTO t VALUES (CAST(x'e996' AS TEXT), CAST(x'96' AS TEXT))")  # text that is not UTF-8
        conn.commit()
    return path


def raw_column(path: Path, name: str):
    with closing(sqlite3.connect(path)) as conn:
        return read_rows(conn, "t", [name])[name]


def test_extremes_follow_sqlite_across_storage_classes(mixed_file):
    for name in ("anything", "flag"):
        with closing(sqlite3.connect(mixed_file)) as conn:
            conn.text_factory = bytes
            expected = conn.execute(f"SELECT min({name}), max({name}) FROM t").fetchone()
        low, high = sqlite_extremes(raw_column(mixed_file, name))
        as_stored = lambda value: value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value  # noqa: E731
        assert (as_stored(low), as_stored(high)) == expected
        assert [type(value) for value in (low, high)] == [type(value) for value in expected]


def test_counts_and_true_counts_follow_sqlite(mixed_file):
    with closing(sqlite3.connect(mixed_file)) as conn:
        non_null, true_count = conn.execute("SELECT count(flag), count(*) FILTER (WHERE flag <> 0) FROM t").fetchone()
    flag = ColumnPlan("flag", "flag", "BOOLEAN", "boolean", Conversion(), 1.0)
    found = column_aggregates(raw_column(mixed_file, "flag"), flag)
    assert found == {("flag", "non_null"): non_null, ("flag", "true_count"): true_count}
    assert 0 < true_count < non_null


def test_a_cache_of_another_version_of_the_file_is_not_used(demo, tmp_path, fresh_database):
    cleaned, plan, stored = cleaned_with_cache(demo, tmp_path)
    with closing(sqlite3.connect(cleaned)) as conn:
        conn.execute('UPDATE tickets SET "TKT-Title" = "TKT-Title" || \'!\' WHERE rowid = (SELECT min(rowid) FROM tickets)')
        conn.commit()
    assert open_raw_cache(stored, file_sha256(cleaned)) is None
    assert cleaned_frames(cleaned, stored).origin.startswith("file")
    load_schema(cleaned, plan, fresh_database, "v1")
    report = reconcile_schema(cleaned, plan, fresh_database, "v1", stored_cache=stored)
    assert report.ok, report.failure_samples()
    # Had the stale cache been read, the title's hash would differ: the test above has teeth.
    title = plan.table("tickets").column("TKT-Title")
    with closing(sqlite3.connect(cleaned)) as conn:
        from_file = column_aggregates(read_rows(conn, "tickets", [title.name])[title.name], title)
    cached = open_raw_cache(stored, _manifest_sha(stored))
    from_stale = column_aggregates(cached.read("tickets", [title.name])[title.name], title)
    assert from_file[(title.name, "md5_sum")] != from_stale[(title.name, "md5_sum")]


def _manifest_sha(stored: Path) -> str:
    import json

    return json.loads((stored / "manifest.json").read_text())["source_sha256"]


@pytest.mark.slow
def test_the_stored_cache_lives_from_the_clean_step_to_the_end_of_the_production_step(demo, tmp_path, fresh_database):
    profiled = profile_step(demo, tmp_path / "run", dsn=None, settings=SETTINGS)
    cleaned = clean_step(demo, profiled.artifact.plan_path, tmp_path / "run" / "cleaned.db",
                         score_before=profiled.artifact.quality_score, settings=SETTINGS)
    stored = stored_cache_of(cleaned.artifact.path)
    assert open_raw_cache(stored, file_sha256(cleaned.artifact.path)) is not None

    canary = canary_step(cleaned.artifact, dsn=fresh_database, run_id="cache", settings=SETTINGS)
    assert all(gate.passed for gate in canary.gates), [gate.summary for gate in canary.gates]
    assert open_raw_cache(stored, file_sha256(cleaned.artifact.path)) is not None

    production = production_step(cleaned.artifact, dsn=fresh_database, settings=SETTINGS, backup_dir=tmp_path / "b")
    assert all(gate.passed for gate in production.gates), [gate.summary for gate in production.gates]
    assert production.artifact.live and not stored.exists()
