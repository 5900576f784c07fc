"""Run the migration job in-process on the persistent Dagster instance and summarise what happened.

Runs started here are stored in `DAGSTER_HOME`, so they show in the Dagster UI beside runs launched
there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from servicedesk_etl.dsn import scrub
from servicedesk_etl.settings import ENV_DAGSTER_HOME, ENV_PG_DSN, dagster_home, runs_dir

ASSET_ORDER = ("sqlite_backup", "profile_report", "cleaned_db", "canary_schema", "production_schema")

DAGSTER_YAML = """\
# Written by servicedesk-etl: runs, events and schedules in SQLite files under this directory.
# See docs for keeping them in PostgreSQL (dagster-postgres) instead.
telemetry:
  enabled: false
# One run at a time: every migration ends by swapping the live `servicedesk` schema.
run_queue:
  max_concurrent_runs: 1
python_logs:
  managed_python_loggers:
    - servicedesk_etl
"""


@dataclass(frozen=True)
class CheckSummary:
    name: str
    passed: bool
    blocking: bool
    summary: str


@dataclass(frozen=True)
class AssetSummary:
    name: str
    status: str  # materialized | failed | skipped
    rows: int | None = None
    seconds: float | None = None
    checks: tuple[CheckSummary, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    success: bool
    live_schema: str | None
    assets: tuple[AssetSummary, ...]
    stopped_by: str | None = None
    reason: str | None = None
    error_class: str | None = None
    artefacts: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.success:
            return 0
        return 2 if self.error_class in {"InputError", "TargetUnreachable"} else 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data


def ensure_dagster_home() -> Path:
    home = dagster_home()
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML, encoding="utf-8")
    return home


@contextmanager
def temporary_environment(**values: str | None) -> Iterator[None]:
    """Set the given environment variables (None leaves one as it is) and restore them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_migration(source: Path, *, dsn: str | None = None, log_level: str = "INFO") -> RunSummary:
    """Materialize the whole graph for `source`; `dsn` overrides `SERVICEDESK_PG_DSN` for this run only."""
    import dagster as dg

    from servicedesk_etl.definitions import defs
    from servicedesk_etl.jobs import MIGRATION_JOB

    home = ensure_dagster_home()
    with temporary_environment(**{ENV_DAGSTER_HOME: str(home), ENV_PG_DSN: dsn}):
        instance = dg.DagsterInstance.get()
        job = defs.resolve_job_def(MIGRATION_JOB)
        result = job.execute_in_process(
            instance=instance,
            run_config={
                "resources": {"snapshot": {"config": {"path": str(source)}}},
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            raise_on_error=False,
            tags={"servicedesk_etl/source": str(source), "servicedesk_etl/started_by": "cli"},
        )
        summary = summarise(result.run_id, result.all_events, dsn)
    return summary


def summarise(run_id: str, events: list[Any], dsn: str | None) -> RunSummary:
    """Turn a run's event log into a per-asset, per-check summary (the CLI prints it)."""
    from servicedesk_etl.checks import NON_BLOCKING

    materialized: dict[str, dict[str, Any]] = {}
    checks: dict[str, list[CheckSummary]] = {name: [] for name in ASSET_ORDER}
    failures: dict[str, tuple[str, str]] = {}
    run_failure = None
    for event in events:
        kind = event.event_type_value
        data = event.event_specific_data
        if kind == "ASSET_MATERIALIZATION":
            materialization = data.materialization
            metadata = {key: value.value for key, value in materialization.metadata.items()}
            materialized[materialization.asset_key.to_user_string()] = metadata
        elif kind == "ASSET_CHECK_EVALUATION":
            summary_value = data.metadata.get("summary")
            text = summary_value.value if summary_value is not None else (data.description or "")
            checks.setdefault(data.asset_key.to_user_string(), []).append(
                CheckSummary(data.check_name, data.passed, data.check_name not in NON_BLOCKING, scrub(str(text), dsn))
            )
        elif kind == "STEP_FAILURE" and event.step_key:
            error_class, message = _root_error(data.error)
            failures[event.step_key] = (error_class, scrub(message, dsn))
        elif kind in {"PIPELINE_FAILURE", "RUN_FAILURE"}:
            run_failure = scrub(event.message or "the run failed", dsn)

    assets = []
    stopped_by = reason = error_class = None
    for name in ASSET_ORDER:
        if name in materialized:
            metadata = materialized[name]
            assets.append(AssetSummary(name, "materialized", _int(metadata.get("dagster/row_count")),
                                       _float(metadata.get("seconds")), tuple(checks[name])))
        elif name in failures:
            cls, message = failures[name]
            assets.append(AssetSummary(name, "failed", checks=tuple(checks[name]), error=message))
            error_class = error_class or cls
        else:
            assets.append(AssetSummary(name, "skipped", checks=tuple(checks[name])))
    for asset in assets:
        failed_gate = next((check for check in asset.checks if check.blocking and not check.passed), None)
        if failed_gate is not None:
            stopped_by, reason = f"{asset.name}.{failed_gate.name}", failed_gate.summary
            break
        if asset.status == "failed":
            stopped_by, reason = asset.name, asset.error
            break
    success = "production_schema" in materialized and stopped_by is None
    if not success and stopped_by is None:
        stopped_by, reason = "the run", run_failure or "the run ended before production_schema was materialized"
    live = "servicedesk" if success else None
    artefacts = _artefacts(run_id)
    return RunSummary(run_id, success, live, tuple(assets), stopped_by, reason, error_class, artefacts)


def _artefacts(run_id: str) -> dict[str, str]:
    folder = runs_dir() / run_id
    names = {"plan": "plan.json", "profile_report": "profile_report.md", "cleaned_db": "cleaned.db"}
    found = {label: str(folder / name) for label, name in names.items() if (folder / name).exists()}
    if folder.exists():
        found["run_directory"] = str(folder)
    return found


def _root_error(error: Any) -> tuple[str, str]:
    """The innermost user error of a step failure: (class name, first line of its message)."""
    chosen = error
    while chosen is not None and chosen.cls_name and chosen.cls_name.startswith("Dagster") and chosen.cause:
        chosen = chosen.cause
    if chosen is None:
        return "Unknown", "unknown error"
    cls = chosen.cls_name or "Unknown"
    lines = (chosen.message or "").strip().splitlines()
    first_line = lines[0] if lines else ""
    # Dagster records "module.ClassName: message"; keep the message.
    head, separator, rest = first_line.partition(": ")
    message = rest if separator and head.endswith(cls) else first_line
    return cls, message or cls


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
