"""Structured logs, metrics files, progress and health checks, and what each costs."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from servicedesk_etl.errors import ResourceExhausted, TargetUnreachable
from servicedesk_etl.observability import (
    HealthCheck,
    LogProgressSink,
    PipelineMetrics,
    ProgressTracker,
    RichProgressSink,
    TableProgress,
    configure_logging,
    default_progress_sink,
    log_context,
    metrics_files,
)

log = logging.getLogger("servicedesk_etl.test_observability")
SECRET = "s3cr3t-test-pw"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- logs


def test_each_log_record_is_one_json_object_per_line(tmp_path, restore_root_logging):
    path = configure_logging(tmp_path, run_id="run-42", console=False)

    with log_context(asset="cleaned_db", gate="cells_reconcile"):
        log.info("converted %d cells", 12, extra={"table": "tickets", "column": "TKT-Created Time"})
    log.warning("outside any asset")

    assert path == tmp_path / "logs" / "servicedesk_etl.jsonl"
    first, second = json_lines(path)
    assert first["event"] == "converted 12 cells"
    assert (first["level"], first["run_id"], first["asset"], first["gate"]) == ("INFO", "run-42", "cleaned_db",
                                                                               "cells_reconcile")
    assert first["fields"] == {"table": "tickets", "column": "TKT-Created Time"}
    assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    assert (second["asset"], second["gate"], second["level"]) == (None, None, "WARNING")


def test_exceptions_are_logged_with_their_traceback(tmp_path, restore_root_logging):
    path = configure_logging(tmp_path, console=False)

    try:
        raise ValueError("bad date '20/05/2025 8:42'")
    except ValueError:
        log.exception("conversion failed")

    (record,) = json_lines(path)
    assert "ValueError: bad date" in record["exception"]


def test_the_console_shows_readable_lines_not_json(tmp_path, restore_root_logging, capsys):
    configure_logging(tmp_path, run_id="r1", console=True)

    with log_context(asset="profile_report"):
        log.info("profiled %s", "tickets", extra={"rows": 10939})

    line = capsys.readouterr().err.strip()
    assert not line.startswith("{")
    assert "INFO" in line and "[profile_report]" in line and "profiled tickets" in line and "rows=10939" in line


def test_configuring_twice_does_not_duplicate_lines(tmp_path, restore_root_logging):
    configure_logging(tmp_path, console=False)
    path = configure_logging(tmp_path, console=False)

    log.info("once")

    assert [r["event"] for r in json_lines(path)] == ["once"]


def test_passwords_are_scrubbed_from_messages_fields_and_tracebacks(tmp_path, restore_root_logging, capsys):
    path = configure_logging(tmp_path, console=True)
    dsn = f"postgresql://etl:{SECRET}@db.example:5432/servicedesk"

    log.info("connecting to %s", dsn, extra={"dsn": dsn})
    log.info("keyword form host=db password=%s user=etl", SECRET)
    try:
        raise RuntimeError(f"could not connect with {dsn}")
    except RuntimeError:
        log.exception("target unreachable")

    text = path.read_text()
    assert SECRET not in text
    assert SECRET not in capsys.readouterr().err
    assert "db.example" in text and "***" in text


# ---------------------------------------------------------------- metrics


def record_a_run(metrics: PipelineMetrics) -> None:
    metrics.record_rows("cleaned_db", "tickets", 10_939)
    metrics.record_rows("cleaned_db", "comments", 108_129)
    metrics.record_gate("cleaned_db", 4.0, rows=119_068)
    metrics.set_quality_score("completeness", 97.5)
    metrics.set_quality_score("overall", 91.25)
    metrics.set_quarantined_cells("tickets", 9)
    metrics.record_rejected_run("profile_report")
    metrics.record_cutover("v20261126_210509", at=datetime(2026, 11, 26, 21, 5, 9, tzinfo=UTC))


def samples(prom_text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(prom_text)
        for sample in family.samples
    }


def test_metrics_textfile_parses_as_prometheus_and_holds_every_figure(tmp_path):
    metrics = PipelineMetrics()
    record_a_run(metrics)

    files = metrics.write(tmp_path)

    assert files.prom == tmp_path / "metrics" / "servicedesk_etl.prom"
    found = samples(files.prom.read_text())
    assert found[("servicedesk_etl_rows_processed_total", (("gate", "cleaned_db"), ("table", "comments")))] == 108_129
    assert found[("servicedesk_etl_gate_duration_seconds", (("gate", "cleaned_db"),))] == 4.0
    assert found[("servicedesk_etl_gate_rows_per_second", (("gate", "cleaned_db"),))] == pytest.approx(29_767)
    assert found[("servicedesk_etl_quality_score", (("dimension", "overall"),))] == 91.25
    assert found[("servicedesk_etl_quarantined_cells", (("table", "tickets"),))] == 9
    assert found[("servicedesk_etl_rejected_runs_total", (("gate", "profile_report"),))] == 1
    cutover = datetime(2026, 11, 26, 21, 5, 9, tzinfo=UTC).timestamp()
    assert found[("servicedesk_etl_last_successful_cutover_timestamp_seconds", ())] == cutover
    assert found[("servicedesk_etl_live_version_info", (("version", "v20261126_210509"),))] == 1
    names = {name for name, _ in found}
    assert all(name.startswith("servicedesk_etl_") for name in names)


def test_metrics_json_holds_the_same_figures_as_the_textfile(tmp_path):
    metrics = PipelineMetrics()
    record_a_run(metrics)

    files = metrics.write(tmp_path)

    from_json = {
        (name, tuple(sorted(s["labels"].items()))): s["value"]
        for name, entries in json.loads(files.json.read_text()).items()
        for s in entries
    }
    from_prom = {key: v for key, v in samples(files.prom.read_text()).items() if not key[0].endswith("_created")}
    assert from_json == from_prom


def test_metrics_live_in_their_own_registry(tmp_path):
    PipelineMetrics().record_rejected_run("canary_schema")

    assert not any(m.name.startswith("servicedesk_etl_") for m in REGISTRY.collect())


def test_a_later_run_continues_from_the_written_figures(tmp_path):
    first = PipelineMetrics()
    record_a_run(first)
    first.write(tmp_path)

    second = PipelineMetrics.load(tmp_path)
    second.record_rejected_run("profile_report")
    second.set_quality_score("overall", 88.0)
    second.write(tmp_path)

    found = samples(metrics_files(tmp_path).prom.read_text())
    assert found[("servicedesk_etl_rejected_runs_total", (("gate", "profile_report"),))] == 2
    assert found[("servicedesk_etl_quality_score", (("dimension", "overall"),))] == 88.0
    assert found[("servicedesk_etl_live_version_info", (("version", "v20261126_210509"),))] == 1
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["servicedesk_etl.json", "servicedesk_etl.prom"]


def test_a_new_cutover_replaces_the_live_version(tmp_path):
    metrics = PipelineMetrics()
    metrics.record_cutover("v1")
    metrics.record_cutover("v2")

    versions = [k for k in samples(metrics.prometheus_text()) if k[0] == "servicedesk_etl_live_version_info"]
    assert versions == [("servicedesk_etl_live_version_info", (("version", "v2"),))]


def test_timing_a_gate_records_its_duration_even_when_it_fails():
    metrics = PipelineMetrics()
    clock = FakeClock()

    with pytest.raises(RuntimeError):
        with metrics.time_gate("production_schema", clock=clock) as timer:
            clock.now += 2.5
            timer.rows = 5000
            raise RuntimeError("cutover failed")

    found = samples(metrics.prometheus_text())
    assert found[("servicedesk_etl_gate_duration_seconds", (("gate", "production_schema"),))] == 2.5
    assert found[("servicedesk_etl_gate_rows_per_second", (("gate", "production_schema"),))] == 2000


# ---------------------------------------------------------------- progress


def test_progress_reports_rows_done_rate_and_eta():
    clock = FakeClock()
    progress = ProgressTracker(1000, "loading tickets", clock=clock)

    clock.now += 2
    progress.advance(250)

    snapshot = progress.snapshot()
    assert (snapshot.done, snapshot.rows_per_second, snapshot.eta_seconds) == (250, 125.0, 6.0)
    assert snapshot.fraction == 0.25


class RecordingSink:
    def __init__(self) -> None:
        self.rates: list[float] = []

    def update(self, tracker: ProgressTracker) -> None:
        self.rates.append(tracker.rows_per_second)

    def finish(self, tracker: ProgressTracker) -> None:
        self.rates.append(tracker.rows_per_second)


def test_a_table_first_reported_finished_is_timed_from_the_step_start_not_given_an_absurd_rate():
    clock = FakeClock()
    sink = RecordingSink()
    progress = TableProgress("production load", lambda: sink, clock=clock)
    clock.now += 2
    progress("tickets", 10_000, 10_000)  # one chunk: its first report is its last

    assert sink.rates and all(rate == 5_000 for rate in sink.rates)


def test_a_table_reported_from_zero_is_timed_from_its_own_start():
    clock = FakeClock()
    sink = RecordingSink()
    progress = TableProgress("clean", lambda: sink, clock=clock)
    clock.now += 10
    progress("comments", 0, 1_000)
    clock.now += 1
    progress("comments", 1_000, 1_000)

    assert sink.rates[-1] == 1_000


def test_progress_without_a_total_has_no_eta():
    clock = FakeClock()
    progress = ProgressTracker(None, "streaming", clock=clock)
    clock.now += 1
    progress.advance(10)

    assert progress.eta_seconds is None
    assert progress.rows_per_second == 10


def test_log_sink_writes_a_line_every_interval_and_one_at_the_end(caplog):
    clock = FakeClock()
    sink = LogProgressSink(log, every_seconds=10, clock=clock)
    caplog.set_level(logging.INFO, logger=log.name)

    with ProgressTracker(100, "loading comments", sink, clock=clock) as progress:
        for _ in range(10):
            clock.now += 3
            progress.advance(10)

    lines = [r for r in caplog.records if r.name == log.name]
    assert [r.rows_done for r in lines] == [40, 80, 100]
    assert "finished" in lines[-1].getMessage()
    assert lines[0].eta_seconds == pytest.approx(18.0)


def test_the_default_sink_is_a_bar_on_a_terminal_and_log_lines_elsewhere():
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)

    assert isinstance(default_progress_sink(log, terminal), RichProgressSink)
    assert isinstance(default_progress_sink(log, pipe), LogProgressSink)
    assert isinstance(default_progress_sink(log, None), LogProgressSink)


def test_rich_sink_draws_a_bar_with_rows_and_rate():
    output = io.StringIO()
    console = Console(file=output, width=100, force_terminal=False)

    with ProgressTracker(400, "loading timesheets", RichProgressSink(console)) as progress:
        progress.advance(400)

    text = output.getvalue()
    assert "loading timesheets" in text and "400/400" in text and "rows/s" in text


# ---------------------------------------------------------------- health


@pytest.mark.postgres
def test_health_check_passes_with_room_to_spare(tmp_path, pg_dsn):
    health = HealthCheck([tmp_path], min_free_disk_bytes=1, min_available_memory_bytes=1, dsn=pg_dsn)

    health.check()
    health()


def test_health_check_stops_when_the_disk_is_short(tmp_path):
    health = HealthCheck([tmp_path / "not-yet-created"], min_free_disk_bytes=2**62, min_available_memory_bytes=1)

    with pytest.raises(ResourceExhausted, match="free on"):
        health.check()


def test_health_check_stops_when_memory_is_short(tmp_path):
    health = HealthCheck([tmp_path], min_free_disk_bytes=1, min_available_memory_bytes=2**62)

    with pytest.raises(ResourceExhausted, match="memory"):
        health.check()


def test_health_check_stops_when_the_target_is_gone(tmp_path):
    health = HealthCheck([tmp_path], 1, 1, dsn=f"postgresql://etl:{SECRET}@127.0.0.1:1/servicedesk", connect_timeout=2)

    with pytest.raises(TargetUnreachable) as raised:
        health.check()
    assert SECRET not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


def test_health_check_called_with_rows_checks_only_every_n_rows(tmp_path):
    health = HealthCheck([tmp_path], min_free_disk_bytes=1, min_available_memory_bytes=1, every_rows=1000)
    health(0)
    health.min_free_disk_bytes = 2**62

    health(999)
    with pytest.raises(ResourceExhausted):
        health(1000)
