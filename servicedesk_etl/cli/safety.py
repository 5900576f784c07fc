"""Preflight, backup, verify, restore, prune, pg-dump and pg-restore commands (Gate 0).

A DSN given with `--target-dsn` is visible to other users in `ps`; prefer `SERVICEDESK_PG_DSN`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from servicedesk_etl.backup import (
    backup_sqlite,
    pg_dump_schema,
    prune_backups,
    restore_backup,
    restore_pg_dump,
    verify_backup,
)
from servicedesk_etl.cli.app import TargetDsn, app, console, fail, resolve_target, start_logging
from servicedesk_etl.dsn import redact_dsn
from servicedesk_etl.preflight import CheckStatus, PreflightReport, run_preflight
from servicedesk_etl.settings import ENV_PG_DSN, state_dir

CheckedDsn = Annotated[
    str | None,
    typer.Option("--target-dsn", envvar=ENV_PG_DSN, show_envvar=True,
                 help="PostgreSQL DSN (prefer the environment variable: a command line is visible in ps); "
                 "without one the PostgreSQL checks warn (see --embedded)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of a table.")]
_STATUS_STYLE = {CheckStatus.PASS: "green", CheckStatus.WARN: "yellow", CheckStatus.FAIL: "bold red"}


def _echo_json(document: object) -> None:
    typer.echo(json.dumps(document, indent=2, default=str))


def _print_report(report: PreflightReport) -> None:
    table = Table(title=f"preflight: {report.source}", show_lines=False)
    for column in ("check", "status", "measured", "threshold", "advice"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        style = _STATUS_STYLE[check.status]
        table.add_row(check.name, f"[{style}]{check.status.value}[/]", check.measured, check.threshold, check.advice)
    console.print(table)


@app.command()
def preflight(
    source: Annotated[Path, typer.Option("--source", help="The SQLite snapshot.")],
    target_dsn: CheckedDsn = None,
    embedded: Annotated[bool, typer.Option(help="Check the embedded server when no DSN is given.")] = False,
    json_output: JsonFlag = False,
    work_dir: Annotated[list[Path] | None, typer.Option("--work-dir", help="Where backups and cleaned files go "
                                                        "(default: the state directory). Repeatable.")] = None,
    min_free_ratio: Annotated[float, typer.Option(help="Free disk needed, as a multiple of the snapshot size.")] = 2.0,
    min_memory_gb: Annotated[float, typer.Option(help="Available memory below this is a warning.")] = 4.0,
    pg_dump: Annotated[str | None, typer.Option("--pg-dump", help="The pg_dump to check (default: PATH and "
                                                "the embedded server's).")] = None,
) -> None:
    """Check disk, memory, the snapshot, PostgreSQL and pg_dump before a run. Exit 0 pass, 1 fail, 2 warnings."""
    start_logging(target_dsn)
    dsn = resolve_target(None, check=False) if embedded and not target_dsn else target_dsn
    report = run_preflight(source, dsn, work_dirs=work_dir or [state_dir()], min_free_ratio=min_free_ratio,
                           min_memory_bytes=int(min_memory_gb * 2**30), pg_dump=pg_dump)
    if json_output:
        _echo_json(report.to_dict())
    else:
        _print_report(report)
    if report.status is CheckStatus.FAIL:
        failed = ", ".join(c.name for c in report.checks if c.status is CheckStatus.FAIL)
        fail(f"preflight failed: {failed}", 1)
    if report.status is CheckStatus.WARN:
        raise SystemExit(2)


@app.command()
def backup(
    source: Annotated[Path, typer.Option("--source", help="The SQLite snapshot.")],
    output: Annotated[Path, typer.Option("--output", help="Directory for the backup and its sidecar.")],
    json_output: JsonFlag = False,
) -> None:
    """Copy the snapshot with SQLite's online backup API to NAME.YYYYMMDD_HHMMSS, with MD5/SHA-256 sidecar."""
    start_logging()
    made = backup_sqlite(source, output)
    if json_output:
        _echo_json({"backup": str(made.path), "sidecar": str(made.sidecar), "md5": made.md5, "sha256": made.sha256,
                    "size_bytes": made.size_bytes, "row_counts": dict(made.row_counts)})
    else:
        console.print(f"backup {made.path} ({made.size_bytes} bytes, sha256 {made.sha256})", highlight=False)


@app.command()
def verify(
    backup: Annotated[Path, typer.Option("--backup", help="The backup file.")],
    source: Annotated[Path | None, typer.Option("--source", help="Compare row counts with this snapshot too.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Check a backup: checksums against its sidecar, PRAGMA integrity_check, row counts. Exit 1 when it fails."""
    start_logging()
    result = verify_backup(source, backup)
    if json_output:
        _echo_json(result.to_dict())
    else:
        for check in result.checks:
            mark = "[green]ok[/]" if check.ok else "[bold red]FAILED[/]"
            console.print(f"{mark} {check.name}: {check.detail}", highlight=False)
    if not result.ok:
        fail(f"{backup}: verification failed: " + ", ".join(c.name for c in result.failures), 1)


@app.command()
def restore(
    backup: Annotated[Path, typer.Option("--backup", help="The backup file.")],
    target: Annotated[Path, typer.Option("--target", help="Where to write the restored database.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing target.")] = False,
) -> None:
    """Verify a backup, then restore it atomically (temporary file, then rename)."""
    start_logging()
    restored = restore_backup(backup, target, force=force)
    console.print(f"restored {backup} to {restored}", highlight=False)


@app.command()
def prune(
    output: Annotated[Path, typer.Option("--output", help="The backup directory.")],
    retention_days: Annotated[int, typer.Option("--retention-days", help="Keep backups younger than this.")],
) -> None:
    """Remove backups older than the retention (and their sidecars); the newest one always stays."""
    start_logging()
    removed = prune_backups(output, retention_days)
    for path in removed:
        console.print(f"removed {path}", highlight=False)
    console.print(f"{len(removed)} backup(s) removed", highlight=False)


@app.command("pg-dump")
def pg_dump(
    schema: Annotated[str, typer.Option("--schema", help="The schema to dump.")],
    output: Annotated[Path, typer.Option("--output", help="Directory for the dump and its sidecar.")],
    target_dsn: TargetDsn = None,
) -> None:
    """Dump one PostgreSQL schema (custom format) with a checksum and fingerprint sidecar."""
    dsn = resolve_target(target_dsn, check=False)
    dump = pg_dump_schema(dsn, schema, output)
    console.print(f"dumped {schema} from {redact_dsn(dsn)} to {dump.path} (sha256 {dump.sha256})", highlight=False)


@app.command("pg-restore")
def pg_restore(
    dump: Annotated[Path, typer.Option("--dump", help="A dump written by pg-dump.")],
    schema: Annotated[str, typer.Option("--schema", help="The new schema to restore into (must not exist).")],
    target_dsn: TargetDsn = None,
) -> None:
    """Restore a schema dump under a new name, then compare its fingerprint with the dump's. Exit 1 on mismatch."""
    dsn = resolve_target(target_dsn, check=False)
    restored = restore_pg_dump(dump, schema, dsn)
    rows = sum(fp.rows for fp in restored.fingerprint.values())
    console.print(f"restored {dump} into schema {schema}: {len(restored.fingerprint)} tables, {rows} rows",
                  highlight=False)
    if restored.matches_dump is False:
        fail(f"schema {schema} does not match the fingerprint recorded with {dump}", 1)
