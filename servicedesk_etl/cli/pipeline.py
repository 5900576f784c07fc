"""run, demo, demo-data, profile, clean, migrate, rollback, status and ui."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from servicedesk_etl.cli.app import TargetDsn, app, console, resolve_target, start_logging
from servicedesk_etl.dsn import redact_dsn
from servicedesk_etl.gates import GateResult
from servicedesk_etl.runner import RunSummary
from servicedesk_etl.settings import pg_backups_dir, state_dir

SourceOption = Annotated[Path, typer.Option("--source", help="The SQLite snapshot (opened read-only).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


def check_snapshot(path: Path) -> Path:
    """Fail early (exit 2) on a missing, non-SQLite, corrupt or empty snapshot."""
    from servicedesk_etl.errors import InputError
    from servicedesk_etl.sqlite_source import list_tables, open_readonly

    conn = open_readonly(path)
    try:
        (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise InputError(f"{path}: fails PRAGMA quick_check ({verdict})")
        if not list_tables(conn):
            raise InputError(f"{path}: holds no tables")
    except Exception as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: cannot be read as SQLite ({error})") from error
    finally:
        conn.close()
    return path.resolve()


@app.command()
def run(source: SourceOption, target_dsn: TargetDsn = None, as_json: JsonFlag = False) -> None:
    """Materialize the whole graph (backup -> profile -> clean -> canary -> production) through Dagster."""
    from servicedesk_etl.runner import run_migration

    snapshot = check_snapshot(source)
    dsn = resolve_target(target_dsn)
    summary = run_migration(snapshot, dsn=dsn if target_dsn else None)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        print_run_summary(summary, dsn)
    raise SystemExit(summary.exit_code)


def print_run_summary(summary: RunSummary, dsn: str) -> None:
    """One line per asset, one indented line per gate: readable on a terminal and in a CI log alike."""
    marks = {"materialized": "[green]materialized[/]", "failed": "[red]failed[/]", "skipped": "[yellow]skipped[/]"}
    console.print(f"run {summary.run_id}", highlight=False)
    for asset in summary.assets:
        figures = "  ".join(part for part in (
            f"{asset.rows:,} rows" if asset.rows is not None else "",
            f"{asset.seconds:.2f}s" if asset.seconds is not None else "",
        ) if part)
        console.print(f"[bold]{asset.name:<18}[/] {marks[asset.status]}  {figures}", highlight=False)
        if asset.error:
            console.print(f"    [red]{asset.error}[/]", highlight=False, soft_wrap=True)
        for check in asset.checks:
            status = "[green]pass[/]" if check.passed else ("[red]FAIL[/]" if check.blocking else "[yellow]warn[/]")
            console.print(f"    {status} {check.name}: {check.summary}", highlight=False, soft_wrap=True)
    if summary.success:
        console.print(f"[bold green]The production schema `{summary.live_schema}` is live[/] on {redact_dsn(dsn)}",
                      soft_wrap=True)
    else:
        console.print(f"[bold red]Stopped by {summary.stopped_by}:[/] {summary.reason}", soft_wrap=True)
        console.print("Nothing live was changed.")
    for label, path in summary.artefacts.items():
        console.print(f"  {label}: {path}", highlight=False, soft_wrap=True)
    console.print("Inspect runs and checks in the Dagster UI: [bold]servicedesk-etl ui[/] "
                  "(or DAGSTER_HOME=<state dir>/dagster dagster dev -w workspace.yaml)", soft_wrap=True)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option("--out", help="Where to write the snapshot (and PATH.truth.json).")],
    scale: Annotated[float, typer.Option("--scale", min=0.0001, help="1 = 260,130 rows.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same data.")] = 42,
) -> None:
    """Generate a realistic ServiceDesk snapshot with planted defects and its truth file."""
    from servicedesk_etl.demo_data import generate_demo_snapshot

    out.parent.mkdir(parents=True, exist_ok=True)
    summary = generate_demo_snapshot(out, scale=scale, seed=seed)
    rows = sum(summary.row_counts.values())
    console.print(f"wrote {summary.path} ({rows:,} rows in {summary.seconds:.1f}s) and {summary.truth_path}")


@app.command()
def demo(
    scale: Annotated[float, typer.Option("--scale", min=0.0001, help="1 = 260,130 rows.")] = 0.1,
    target_dsn: TargetDsn = None,
    as_json: JsonFlag = False,
) -> None:
    """Generate a demo snapshot in the state directory and run the whole pipeline on it."""
    from servicedesk_etl.demo_data import generate_demo_snapshot
    from servicedesk_etl.resources import demo_snapshot_path

    path = demo_snapshot_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    generated = generate_demo_snapshot(path, scale=scale)
    if not as_json:
        console.print(f"demo snapshot: {generated.path} ({sum(generated.row_counts.values()):,} rows)")
    run(source=path, target_dsn=target_dsn, as_json=as_json)


def print_gates(gates: tuple[GateResult, ...] | list[GateResult]) -> None:
    for gate in gates:
        status = "[green]pass[/]" if gate.passed else ("[red]FAIL[/]" if gate.blocking else "[yellow]warn[/]")
        console.print(f"  {status} {gate.name}: {gate.summary}", highlight=False)


def exit_for(gates: tuple[GateResult, ...] | list[GateResult]) -> None:
    raise SystemExit(1 if any(gate.stops_the_run for gate in gates) else 0)


@app.command()
def profile(
    source: SourceOption,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the plan and report as JSON here.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the human report (Markdown) here.")] = None,
    target_dsn: TargetDsn = None,
    rules: Annotated[list[Path] | None, typer.Option("--rules", help="A rule pack (TOML) to add; one named like a shipped pack replaces it. Repeatable.")] = None,
    mapping: Annotated[Path | None, typer.Option("--mapping", help="A column-name mapping file for renamed export columns.")] = None,
) -> None:
    """Profile a snapshot: inferred types, formats, rules, quality score, dry run. Exit 1 when a gate fails."""
    import shutil
    import tempfile

    from servicedesk_etl.observability import TableProgress, default_progress_sink
    from servicedesk_etl.pipeline import PipelineSettings, profile_step

    snapshot = check_snapshot(source)
    dsn = resolve_target(target_dsn)
    with tempfile.TemporaryDirectory(prefix="servicedesk-profile-") as scratch:
        settings = PipelineSettings(rule_packs=tuple(str(path) for path in rules or ()),
                                    rule_mapping=str(mapping) if mapping else None)
        progress = TableProgress("profiling", lambda: default_progress_sink(logging.getLogger("servicedesk_etl"), console))
        outcome = profile_step(snapshot, Path(scratch), dsn=dsn, settings=settings, progress=progress)
        if json_out:
            shutil.copyfile(outcome.metadata["report_json"], json_out)
        if report:
            shutil.copyfile(outcome.artifact.report_path, report)
    console.print(f"profile of {snapshot}: {outcome.metadata['tables']} tables, {outcome.metadata['columns']} columns, "
                  f"quality {outcome.artifact.quality_score:.1f}/100")
    print_gates(outcome.gates)
    exit_for(outcome.gates)


@app.command()
def clean(
    source: SourceOption,
    output: Annotated[Path, typer.Option("--output", help="The new cleaned SQLite file.")],
    plan: Annotated[Path | None, typer.Option("--plan", help="A plan from `profile --json`; profiled now if omitted.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
) -> None:
    """Execute the plan into a new SQLite file with _audit and _quarantine. Exit 1 when a gate fails."""
    import tempfile

    from servicedesk_etl.observability import HealthCheck, TableProgress, default_progress_sink
    from servicedesk_etl.pipeline import PipelineSettings, clean_step, profile_settings, read_plan
    from servicedesk_etl.profiling.infer import profile_database
    from servicedesk_etl.profiling.score import score_quality, sqlite_source

    snapshot = check_snapshot(source)
    start_logging()
    settings = PipelineSettings()
    with tempfile.TemporaryDirectory(prefix="servicedesk-clean-") as scratch:
        if plan is None:
            plan_doc = profile_database(snapshot, profile_settings(settings))
            plan = plan_doc.write(Path(scratch) / "plan.json")
        else:
            plan_doc = read_plan(plan)
        before = score_quality(sqlite_source(snapshot), plan_doc)
        health = HealthCheck([output.parent], settings.min_free_disk_bytes, settings.min_available_memory_bytes)
        progress = TableProgress("cleaning", lambda: default_progress_sink(logging.getLogger("servicedesk_etl"), console))
        outcome = clean_step(snapshot, plan, output, score_before=before.score, dimensions_before=dict(before.dimensions),
                             settings=settings, progress=progress, health_check=health, force=force,
                             keep_for_loading=False)
        write_plan_beside(output, plan_doc)
    console.print(f"cleaned {outcome.metadata['rows']:,} rows into {output} in {outcome.seconds:.2f}s "
                  f"({outcome.metadata['quarantined_cells']} cells quarantined)")
    print_gates(outcome.gates)
    exit_for(outcome.gates)


def write_plan_beside(cleaned: Path, plan) -> Path:  # type: ignore[no-untyped-def]
    return plan.write(plan_path_for(cleaned))


def plan_path_for(cleaned: Path) -> Path:
    return cleaned.with_name(cleaned.name + ".plan.json")


@app.command()
def migrate(
    source: Annotated[Path, typer.Option("--source", help="A cleaned SQLite file (from `clean`).")],
    plan: Annotated[Path | None, typer.Option("--plan", help="Its plan; default CLEAN.db.plan.json beside it.")] = None,
    target_dsn: TargetDsn = None,
    canary_only: Annotated[bool, typer.Option("--canary-only", help="Load and check the canary, then stop.")] = False,
) -> None:
    """Load a cleaned file: canary, then a new version schema and the atomic cutover. Exit 1 when a gate fails."""
    import uuid

    from servicedesk_etl.errors import InputError
    from servicedesk_etl.observability import HealthCheck
    from servicedesk_etl.pipeline import CleanedArtifact, PipelineSettings, canary_step, production_step, read_plan
    from servicedesk_etl.profiling.score import score_quality, sqlite_source
    from servicedesk_etl.sqlite_source import file_sha256

    cleaned_path = check_snapshot(source)
    plan_path = plan or plan_path_for(cleaned_path)
    if not plan_path.exists():
        raise InputError(f"{plan_path}: no plan beside the cleaned file (give --plan)")
    plan_doc = read_plan(plan_path)
    dsn = resolve_target(target_dsn)
    settings = PipelineSettings()
    score = score_quality(sqlite_source(cleaned_path), plan_doc).score
    rows = {table.name: table.row_count for table in plan_doc.tables}
    cleaned = CleanedArtifact(cleaned_path, plan_path, plan_doc.source_sha256 or file_sha256(cleaned_path), rows, score)
    health = HealthCheck([state_dir()], settings.min_free_disk_bytes, settings.min_available_memory_bytes, dsn=dsn)
    canary = canary_step(cleaned, dsn=dsn, run_id=uuid.uuid4().hex[:8], settings=settings, health_check=health)
    console.print(f"canary {canary.artifact.schema}: {canary.metadata['rows']:,} rows")
    print_gates(canary.gates)
    if canary_only or any(gate.stops_the_run for gate in canary.gates):
        exit_for(canary.gates)
    production = production_step(cleaned, dsn=dsn, settings=settings, backup_dir=pg_backups_dir(),
                                 health_check=health)
    console.print(f"version {production.artifact.schema}: {production.metadata['rows']:,} rows")
    print_gates(production.gates)
    if production.artifact.live:
        console.print(f"[bold green]`servicedesk` is live[/] (version {production.artifact.schema})")
    exit_for(production.gates)


@app.command()
def rollback(target_dsn: TargetDsn = None) -> None:
    """Swap the previous version back in as `servicedesk`, in one transaction."""
    from servicedesk_etl.cutover import rollback as rollback_live

    result = rollback_live(resolve_target(target_dsn))
    console.print(f"`servicedesk` is now {result.live_version} (was {result.previous_version})")


@app.command()
def status(target_dsn: TargetDsn = None, as_json: JsonFlag = False) -> None:
    """List the schema versions with row counts, load time, source checksum and which one is live."""
    import dataclasses

    from servicedesk_etl.cutover import list_versions

    versions = list_versions(resolve_target(target_dsn))
    if as_json:
        print(json.dumps([dataclasses.asdict(v) for v in versions], indent=2, default=str))
        return
    table = Table(title="servicedesk versions")
    for heading in ("version", "live", "status", "rows", "loaded at (UTC)", "source sha256"):
        table.add_column(heading, no_wrap=heading in {"version", "loaded at (UTC)"})
    for version in versions:
        table.add_row(version.schema, "yes" if version.is_live else "", version.status, f"{version.rows:,}",
                      version.loaded_at.strftime("%Y-%m-%d %H:%M:%S"), (version.source_sha256 or "")[:12])
    console.print(table)


@app.command()
def ui(port: Annotated[int, typer.Option("--port")] = 3000) -> None:
    """Start the Dagster UI on this project's instance (runs started from the CLI show there)."""
    from servicedesk_etl.runner import ensure_dagster_home

    home = ensure_dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-m", "servicedesk_etl.definitions", "-p", str(port)]
    console.print(f"DAGSTER_HOME={home} {' '.join(command[1:])}")
    os.execv(command[0], command)
