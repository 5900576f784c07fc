"""Record a finished pipeline step in the metrics files: duration, rows, score, rejections, cutover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servicedesk_etl.gates import GateResult, first_blocking_failure
from servicedesk_etl.observability.metrics import MetricsFiles, PipelineMetrics


def record_step(state_dir: Path, step: str, seconds: float, metadata: dict[str, Any],
                gates: tuple[GateResult, ...]) -> MetricsFiles:
    """Add one step's figures to the metrics kept in `state_dir` and rewrite both files."""
    metrics = PipelineMetrics.load(state_dir)
    rows = metadata.get("rows")
    metrics.record_gate(step, seconds, rows if isinstance(rows, int) else None)
    for table, count in (metadata.get("rows_per_table") or {}).items():
        metrics.record_rows(step, table, int(count))
    for table, cells in (metadata.get("quarantined_per_table") or {}).items():
        metrics.set_quarantined_cells(table, int(cells))
    score = metadata.get("quality_score")
    if isinstance(score, (int, float)):
        metrics.set_quality_score("overall", float(score))
    for dimension, value in (metadata.get("dimensions") or {}).items():
        metrics.set_quality_score(dimension, float(value))
    blocked = first_blocking_failure(gates)
    if blocked is not None:
        metrics.record_rejected_run(blocked.name)
    if metadata.get("live") is True and metadata.get("schema"):
        metrics.record_cutover(str(metadata["schema"]))
    return metrics.write(state_dir)
