"""The five assets. Each one calls its step in `pipeline.py` and reports the step's gates as checks."""
# No `from __future__ import annotations` here: Dagster reads these annotations at definition time.


from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from servicedesk_etl.checks import check_result, check_specs, dagster_metadata
from servicedesk_etl.gates import first_blocking_failure
from servicedesk_etl.observability import (
    LogProgressSink,
    TableProgress,
    configure_logging,
    log_context,
    register_secret_dsn,
)
from servicedesk_etl.observability.health import HealthCheck
from servicedesk_etl.observability.steps import record_step
from servicedesk_etl.pipeline import (
    BackupArtifact,
    CleanedArtifact,
    PipelineSettings,
    ProfileArtifact,
    StepOutcome,
    backup_step,
    canary_step,
    clean_step,
    production_step,
    profile_step,
    read_plan,
)
from servicedesk_etl.resources import GateSettings, PostgresTarget, SnapshotResource
from servicedesk_etl.settings import pg_backups_dir, runs_dir, state_dir

GROUP = "servicedesk"


def run_dir(context: dg.AssetExecutionContext) -> Path:
    return runs_dir() / context.run.run_id


def progress_logger(context: dg.AssetExecutionContext, step: str) -> TableProgress:
    """Rows done, rows/s and ETA per table as Dagster log lines, at most every few seconds."""
    return TableProgress(step, lambda: LogProgressSink(context.log, every_seconds=2.0))


def load_health(settings: PipelineSettings, dsn: str | None) -> HealthCheck:
    """Disk and memory where the state lives, and the target connection, checked after every loaded chunk."""
    return HealthCheck([state_dir()], settings.min_free_disk_bytes, settings.min_available_memory_bytes, dsn=dsn)


@contextmanager
def observed(context: dg.AssetExecutionContext, asset: str, target: PostgresTarget | None = None) -> Iterator[str | None]:
    """The asset's step runs inside this: JSON log lines tagged with run and asset, DSN passwords scrubbed.

    Yields the target DSN when the asset uses PostgreSQL.
    """
    dsn = target.dsn() if target is not None else None
    register_secret_dsn(dsn)
    configure_logging(state_dir(), run_id=context.run.run_id, console=False)
    with log_context(asset=asset, run_id=context.run.run_id):
        yield dsn


def emit(context: dg.AssetExecutionContext, asset: str, outcome: StepOutcome[Any],
         extra_metadata: dict[str, Any] | None = None, *, fail_when_blocked: bool = False) -> Iterator[Any]:
    """Yield the step's output and its gates; raise instead of materializing when it must not count."""
    for gate in outcome.gates:
        (context.log.info if gate.passed else context.log.error)("gate %s: %s", gate.name, gate.summary)
    record_step(state_dir(), asset, outcome.seconds, outcome.metadata, outcome.gates)
    blocked = first_blocking_failure(outcome.gates)
    if outcome.artifact is None or (fail_when_blocked and blocked is not None):
        for gate in outcome.gates:
            yield check_result(asset, gate)
        reason = f"gate {blocked.name} failed: {blocked.summary}" if blocked else "the step produced nothing"
        raise dg.Failure(description=reason, metadata={"gate": blocked.name if blocked else "", "seconds": outcome.seconds})
    metadata = {**dagster_metadata(outcome.metadata), "seconds": outcome.seconds, **(extra_metadata or {})}
    yield dg.Output(outcome.artifact, metadata=metadata)
    for gate in outcome.gates:
        yield check_result(asset, gate)


def column_schema_of(plan_path: Path) -> dict[str, Any]:
    plan = read_plan(plan_path)
    return {
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(f"{table.name}.{column.name}", column.target_type,
                               description=f"declared {column.declared_type or 'untyped'}; confidence {column.confidence:.2%}")
                for table in plan.tables
                for column in table.columns
            ]
        ),
        "dagster/row_count": sum(table.row_count for table in plan.tables),
    }


@dg.asset(group_name=GROUP, kinds={"sqlite"}, check_specs=check_specs("sqlite_backup"))
def sqlite_backup(context: dg.AssetExecutionContext, snapshot: SnapshotResource, target: PostgresTarget,
                  gates: GateSettings) -> Iterator[Any]:
    """Preflight, then a timestamped copy of the snapshot made with SQLite's online backup API, with checksums."""
    with observed(context, "sqlite_backup", target) as dsn:
        outcome = backup_step(snapshot.resolved_path(), run_dir(context), dsn=dsn, settings=gates.settings())
    extra = {"dagster/row_count": outcome.metadata["rows"]} if outcome.artifact else None
    yield from emit(context, "sqlite_backup", outcome, extra)


@dg.asset(group_name=GROUP, kinds={"python", "polars"}, check_specs=check_specs("profile_report"))
def profile_report(context: dg.AssetExecutionContext, sqlite_backup: BackupArtifact, target: PostgresTarget,
                   gates: GateSettings) -> Iterator[Any]:
    """Per column: the type inferred from the values, formats, nulls and markers; rules, score, dry run; the plan."""
    with observed(context, "profile_report", target) as dsn:
        outcome = profile_step(sqlite_backup.path, run_dir(context), dsn=dsn, settings=gates.settings(),
                               progress=progress_logger(context, "profiling"))
    yield from emit(context, "profile_report", outcome, column_schema_of(outcome.artifact.plan_path))


@dg.asset(group_name=GROUP, kinds={"sqlite"}, check_specs=check_specs("cleaned_db"))
def cleaned_db(context: dg.AssetExecutionContext, sqlite_backup: BackupArtifact, profile_report: ProfileArtifact,
               gates: GateSettings) -> Iterator[Any]:
    """A new SQLite file with the plan executed, plus `_audit` and `_quarantine` tables."""
    settings = gates.settings()
    health = HealthCheck([run_dir(context)], settings.min_free_disk_bytes, settings.min_available_memory_bytes)
    with observed(context, "cleaned_db"):
        outcome = clean_step(
            sqlite_backup.path,
            profile_report.plan_path,
            run_dir(context) / "cleaned.db",
            score_before=profile_report.quality_score,
            dimensions_before=profile_report.dimensions,
            snapshot_sha256=sqlite_backup.source_sha256,
            settings=settings,
            progress=progress_logger(context, "cleaning"),
            health_check=health,
            force=True,
        )
    extra = {"dagster/row_count": outcome.metadata["rows"]}
    yield from emit(context, "cleaned_db", outcome, extra)


@dg.asset(group_name=GROUP, kinds={"postgres"}, check_specs=check_specs("canary_schema"))
def canary_schema(context: dg.AssetExecutionContext, cleaned_db: CleanedArtifact, target: PostgresTarget,
                  gates: GateSettings) -> Iterator[Any]:
    """A deterministic ~10% sample of every table loaded with the real DDL; dropped when its gates pass."""
    with observed(context, "canary_schema", target) as dsn:
        outcome = canary_step(cleaned_db, dsn=dsn, run_id=context.run.run_id, settings=gates.settings(),
                              progress=progress_logger(context, "canary load"),
                              health_check=load_health(gates.settings(), dsn))
    yield from emit(context, "canary_schema", outcome, {"dagster/row_count": outcome.metadata["rows"]})


@dg.asset(group_name=GROUP, kinds={"postgres"}, check_specs=check_specs("production_schema"))
def production_schema(context: dg.AssetExecutionContext, cleaned_db: CleanedArtifact, canary_schema: Any,
                      target: PostgresTarget, gates: GateSettings) -> Iterator[Any]:
    """The full load into a new version schema, then an atomic cutover to `servicedesk`."""
    with observed(context, "production_schema", target) as dsn:
        outcome = production_step(cleaned_db, dsn=dsn, settings=gates.settings(), backup_dir=pg_backups_dir(),
                                  progress=progress_logger(context, "production load"),
                                  health_check=load_health(gates.settings(), dsn))
    extra = {**column_schema_of(cleaned_db.plan_path), "dagster/row_count": outcome.metadata["rows"]}
    yield from emit(context, "production_schema", outcome, extra, fail_when_blocked=True)


ALL_ASSETS = [sqlite_backup, profile_report, cleaned_db, canary_schema, production_schema]
