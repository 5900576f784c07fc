"""Pipeline metrics in Prometheus text format (a node-exporter textfile) and the same figures as JSON.

Files, both replaced atomically by `PipelineMetrics.write`:
`<state dir>/metrics/servicedesk_etl.prom` and `<state dir>/metrics/servicedesk_etl.json`.
The JSON file is also the memory between runs: `PipelineMetrics.load` starts from it, so counters
keep counting and the last cutover stays visible after a run that did not reach it.

| metric | type | labels | meaning |
|---|---|---|---|
| `servicedesk_etl_rows_processed_total` | counter | table, gate | rows a gate processed, per table |
| `servicedesk_etl_gate_duration_seconds` | gauge | gate | duration of the gate's last run |
| `servicedesk_etl_gate_rows_per_second` | gauge | gate | throughput of the gate's last run |
| `servicedesk_etl_quality_score` | gauge | dimension | last quality score (0-100) per dimension, `overall` included |
| `servicedesk_etl_quarantined_cells` | gauge | table | cells the last cleaning put in quarantine |
| `servicedesk_etl_rejected_runs_total` | counter | gate | runs stopped by each gate |
| `servicedesk_etl_last_successful_cutover_timestamp_seconds` | gauge | | Unix time of the last successful cutover |
| `servicedesk_etl_live_version_info` | info | version | the schema version dashboards read now (value 1) |
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, write_to_textfile

PREFIX = "servicedesk_etl_"
METRICS_DIR = Path("metrics")
PROM_FILE = "servicedesk_etl.prom"
JSON_FILE = "servicedesk_etl.json"


@dataclass(frozen=True)
class MetricsFiles:
    prom: Path
    json: Path


def metrics_files(state_dir: Path) -> MetricsFiles:
    directory = Path(state_dir) / METRICS_DIR
    return MetricsFiles(directory / PROM_FILE, directory / JSON_FILE)


@dataclass
class GateTimer:
    """What `PipelineMetrics.time_gate` yields: set `rows` so rows per second can be computed."""

    gate: str
    rows: int | None = None


class PipelineMetrics:
    """The pipeline's figures, in a registry of its own (never the process-wide default one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rows_processed = Counter(f"{PREFIX}rows_processed", "Rows a gate processed, per table.",
                                      ["table", "gate"], registry=r)
        self.gate_duration = Gauge(f"{PREFIX}gate_duration_seconds", "Duration of the gate's last run.",
                                   ["gate"], registry=r)
        self.gate_rate = Gauge(f"{PREFIX}gate_rows_per_second", "Rows per second in the gate's last run.",
                               ["gate"], registry=r)
        self.quality_score = Gauge(f"{PREFIX}quality_score", "Last quality score (0-100) per dimension.",
                                   ["dimension"], registry=r)
        self.quarantined = Gauge(f"{PREFIX}quarantined_cells", "Cells the last cleaning quarantined, per table.",
                                 ["table"], registry=r)
        self.rejected_runs = Counter(f"{PREFIX}rejected_runs", "Runs stopped by each gate.", ["gate"], registry=r)
        self.last_cutover = Gauge(f"{PREFIX}last_successful_cutover_timestamp_seconds",
                                  "Unix time of the last successful cutover.", registry=r)
        self.live_version = Info(f"{PREFIX}live_version", "The schema version dashboards read now.", registry=r)

    def record_rows(self, gate: str, table: str, rows: int) -> None:
        self.rows_processed.labels(table=table, gate=gate).inc(rows)

    def record_gate(self, gate: str, seconds: float, rows: int | None = None) -> None:
        self.gate_duration.labels(gate=gate).set(seconds)
        if rows is not None:
            self.gate_rate.labels(gate=gate).set(rows / seconds if seconds > 0 else 0.0)

    @contextmanager
    def time_gate(self, gate: str, *, clock: Callable[[], float] = time.perf_counter) -> Iterator[GateTimer]:
        """Time a block as `gate`; the duration is recorded even when the block raises."""
        timer, started = GateTimer(gate), clock()
        try:
            yield timer
        finally:
            self.record_gate(gate, clock() - started, timer.rows)

    def set_quality_score(self, dimension: str, score: float) -> None:
        self.quality_score.labels(dimension=dimension).set(score)

    def set_quarantined_cells(self, table: str, cells: int) -> None:
        self.quarantined.labels(table=table).set(cells)

    def record_rejected_run(self, gate: str) -> None:
        self.rejected_runs.labels(gate=gate).inc()

    def record_cutover(self, version: str, at: datetime | None = None) -> None:
        self.last_cutover.set(at.timestamp() if at else time.time())
        self.live_version.info({"version": str(version)})

    def to_dict(self) -> dict[str, list[dict[str, object]]]:
        """Every sample as `{metric name: [{"labels": {...}, "value": v}, ...]}` (no `_created` series)."""
        figures: dict[str, list[dict[str, object]]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                figures.setdefault(sample.name, []).append({"labels": dict(sample.labels), "value": sample.value})
        return figures

    def prometheus_text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")

    def write(self, state_dir: Path) -> MetricsFiles:
        """Replace both files atomically (a scraper never reads half a file)."""
        files = metrics_files(state_dir)
        files.prom.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(files.prom), self.registry)
        _write_atomically(files.json, json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return files

    @classmethod
    def load(cls, state_dir: Path) -> PipelineMetrics:
        """Metrics starting from the figures the last `write` left (empty when there are none)."""
        metrics = cls()
        path = metrics_files(state_dir).json
        try:
            figures = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return metrics
        metrics._restore(figures)
        return metrics

    def _restore(self, figures: dict[str, list[dict[str, object]]]) -> None:
        counters = {f"{PREFIX}rows_processed_total": self.rows_processed,
                    f"{PREFIX}rejected_runs_total": self.rejected_runs}
        gauges = {f"{PREFIX}gate_duration_seconds": self.gate_duration, f"{PREFIX}gate_rows_per_second": self.gate_rate,
                  f"{PREFIX}quality_score": self.quality_score, f"{PREFIX}quarantined_cells": self.quarantined}
        for name, samples in figures.items():
            for sample in samples:
                labels, value = dict(sample["labels"]), float(sample["value"])
                if name in counters:
                    counters[name].labels(**labels).inc(value)
                elif name in gauges:
                    gauges[name].labels(**labels).set(value)
                elif name == f"{PREFIX}last_successful_cutover_timestamp_seconds":
                    self.last_cutover.set(value)
                elif name == f"{PREFIX}live_version_info":
                    self.live_version.info(labels)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
