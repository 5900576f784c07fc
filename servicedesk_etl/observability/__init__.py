"""Observability: structured logs, Prometheus/JSON metrics, progress with rows/s and ETA, health checks."""

from servicedesk_etl.observability.health import HealthCheck
from servicedesk_etl.observability.logs import (
    JsonFormatter,
    ScrubFilter,
    configure_logging,
    log_context,
    log_path,
    register_secret_dsn,
)
from servicedesk_etl.observability.metrics import MetricsFiles, PipelineMetrics, metrics_files
from servicedesk_etl.observability.progress import (
    LogProgressSink,
    ProgressSnapshot,
    ProgressTracker,
    RichProgressSink,
    TableProgress,
    default_progress_sink,
)

__all__ = [
    "HealthCheck",
    "JsonFormatter",
    "LogProgressSink",
    "MetricsFiles",
    "PipelineMetrics",
    "ProgressSnapshot",
    "ProgressTracker",
    "RichProgressSink",
    "TableProgress",
    "ScrubFilter",
    "configure_logging",
    "default_progress_sink",
    "log_context",
    "log_path",
    "metrics_files",
    "register_secret_dsn",
]
