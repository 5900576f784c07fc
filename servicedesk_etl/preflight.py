"""Gate 0, preflight: everything a run needs is checked before it writes anything.

Each check reports a name, a status (pass / warn / fail), the measured value, the threshold and a
piece of advice. The report's exit code is 0 when everything passed, 1 when anything failed and 2
when there are warnings only. Thresholds are parameters, so a test can simulate a full disk.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import psutil
import psycopg

from servicedesk_etl.dsn import redact_dsn, scrub
from servicedesk_etl.errors import InputError
from servicedesk_etl.sqlite_source import SQLITE_HEADER, open_readonly, readonly_uri

log = logging.getLogger(__name__)

MIN_SERVER_MAJOR = 12
REQUIRED_MODULES = ("dagster", "polars", "psycopg", "psutil", "typer", "rich", "prometheus_client", "pgserver")
CONNECT_TIMEOUT_SECONDS = 5
_TOOL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


class CheckStatus(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class PreflightCheck:
    name: str
    status: CheckStatus
    measured: str
    threshold: str
    advice: str

    def to_dict(self) -> dict[str, str]:
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True)
class PreflightReport:
    source: Path
    target: str | None
    checks: tuple[PreflightCheck, ...]

    @property
    def status(self) -> CheckStatus:
        statuses = {check.status for check in self.checks}
        if CheckStatus.FAIL in statuses:
            return CheckStatus.FAIL
        return CheckStatus.WARN if CheckStatus.WARN in statuses else CheckStatus.PASS

    @property
    def exit_code(self) -> int:
        return {CheckStatus.PASS: 0, CheckStatus.FAIL: 1, CheckStatus.WARN: 2}[self.status]

    def check(self, name: str) -> PreflightCheck:
        return next(check for check in self.checks if check.name == name)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": str(self.source),
            "target": self.target,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "checks": [check.to_dict() for check in self.checks],
        }


@dataclass(frozen=True)
class PgTool:
    """A PostgreSQL client program and its major version."""

    path: Path
    major: int
    version: str


def run_preflight(
    source: Path,
    dsn: str | None,
    *,
    work_dirs: Sequence[Path],
    min_free_ratio: float = 2.0,
    min_memory_bytes: int = 4 * 2**30,
    pg_dump: str | None = None,
) -> PreflightReport:
    """Run every check and return the report; never raises for a failing check."""
    source = Path(source)
    checks = [*snapshot_checks(source)]
    checks.append(disk_check(source, work_dirs, min_free_ratio))
    checks.append(memory_check(min_memory_bytes))
    server_major, postgres = postgres_checks(dsn)
    checks.extend(postgres)
    checks.append(pg_dump_check(server_major, pg_dump))
    checks.append(dependencies_check())
    report = PreflightReport(source, redact_dsn(dsn) if dsn else None, tuple(checks))
    for check in report.checks:
        log.info("preflight %s: %s (%s)", check.name, check.status.value, check.measured)
    return report


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _passed(name: str, measured: str, threshold: str) -> PreflightCheck:
    return PreflightCheck(name, CheckStatus.PASS, measured, threshold, "")


def snapshot_checks(source: Path) -> list[PreflightCheck]:
    """The snapshot opens as SQLite, is not being written, and passes `PRAGMA quick_check`."""
    opens = _snapshot_opens(source)
    if opens.status is CheckStatus.FAIL:
        skipped = "not evaluated: the snapshot does not open"
        return [
            opens,
            PreflightCheck("snapshot_not_being_written", CheckStatus.FAIL, skipped, "no writer", opens.advice),
            PreflightCheck("snapshot_integrity", CheckStatus.FAIL, skipped, "quick_check = ok", opens.advice),
        ]
    writer = _snapshot_not_being_written(source)
    if writer.status is CheckStatus.FAIL:
        skipped = "not evaluated: the snapshot is being written"
        integrity = PreflightCheck("snapshot_integrity", CheckStatus.FAIL, skipped, "quick_check = ok", writer.advice)
        return [opens, writer, integrity]
    return [opens, writer, _snapshot_integrity(source)]


def _snapshot_opens(source: Path) -> PreflightCheck:
    threshold = "a readable SQLite 3 file"
    if not source.is_file():
        return PreflightCheck("snapshot_opens", CheckStatus.FAIL, f"{source}: no such file", threshold,
                              "give the path of the SQLite snapshot with --source")
    try:
        with source.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        return PreflightCheck("snapshot_opens", CheckStatus.FAIL, f"cannot be read: {error.strerror}", threshold,
                              "check the file's permissions")
    if header != SQLITE_HEADER:
        return PreflightCheck("snapshot_opens", CheckStatus.FAIL, "not a SQLite database (unexpected file header)",
                              threshold, "export the snapshot again; this file is not SQLite")
    return _passed("snapshot_opens", f"SQLite 3, {human_bytes(source.stat().st_size)}", threshold)


def _snapshot_not_being_written(source: Path) -> PreflightCheck:
    name, threshold = "snapshot_not_being_written", "no hot journal, no lock held"
    advice = "wait until the importer has finished writing the snapshot, then run again"
    for suffix in ("-journal", "-wal"):
        journal = source.with_name(source.name + suffix)
        if _journal_has_content(journal):
            return PreflightCheck(name, CheckStatus.FAIL, f"{journal.name} holds uncommitted or un-checkpointed pages",
                                  threshold, advice)
    try:
        conn = sqlite3.connect(readonly_uri(source), uri=True, timeout=0, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return PreflightCheck(name, CheckStatus.FAIL, "another connection holds a write lock", threshold, advice)
        return PreflightCheck(name, CheckStatus.FAIL, f"cannot read: {error}", threshold, advice)
    except sqlite3.DatabaseError as error:
        return PreflightCheck(name, CheckStatus.FAIL, f"cannot read: {error}", threshold,
                              "the file is damaged; export the snapshot again")
    return _passed(name, "no journal, no lock", threshold)


def _journal_has_content(journal: Path) -> bool:
    """A non-empty journal: a writer is mid-transaction, or crashed (its header is only valid once synced)."""
    try:
        return journal.stat().st_size > 0
    except FileNotFoundError:
        return False


def _snapshot_integrity(source: Path) -> PreflightCheck:
    name, threshold = "snapshot_integrity", "quick_check = ok"
    try:
        conn = open_readonly(source)
        try:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
        finally:
            conn.close()
    except (InputError, sqlite3.DatabaseError) as error:
        return PreflightCheck(name, CheckStatus.FAIL, str(error), threshold,
                              "the file is damaged; export the snapshot again")
    if rows != ["ok"]:
        return PreflightCheck(name, CheckStatus.FAIL, "; ".join(rows), threshold,
                              "the file is damaged; export the snapshot again or restore a backup")
    return _passed(name, "ok", threshold)


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (a directory a run will create later)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_check(source: Path, work_dirs: Iterable[Path], min_free_ratio: float) -> PreflightCheck:
    """Free space on every file system holding a work directory >= `min_free_ratio` x the snapshot."""
    name = "disk_free"
    size = source.stat().st_size if source.is_file() else 0
    needed = int(size * min_free_ratio)
    threshold = f">= {min_free_ratio:g} x snapshot = {human_bytes(needed)}"
    dirs = [nearest_existing(d) for d in work_dirs]
    if not dirs:
        return PreflightCheck(name, CheckStatus.WARN, "no work directory given", threshold, "pass the work directories")
    free, tightest = min((psutil.disk_usage(str(d)).free, d) for d in dirs)
    measured = f"{human_bytes(free)} free on {tightest}"
    if free < needed:
        return PreflightCheck(name, CheckStatus.FAIL, measured, threshold,
                              f"free at least {human_bytes(needed - free)} on {tightest} "
                              "or point the state directory elsewhere")
    return _passed(name, measured, threshold)


def memory_check(min_memory_bytes: int) -> PreflightCheck:
    available = psutil.virtual_memory().available
    threshold = f">= {human_bytes(min_memory_bytes)} available"
    if available < min_memory_bytes:
        return PreflightCheck("memory", CheckStatus.WARN, f"{human_bytes(available)} available", threshold,
                              "close other programs; large snapshots may run slowly or be stopped by the health check")
    return _passed("memory", f"{human_bytes(available)} available", threshold)


def postgres_checks(dsn: str | None) -> tuple[int | None, list[PreflightCheck]]:
    """Reachable, recent enough, and allowed to create schemas. Returns the server major version too."""
    names = ("postgres_reachable", "postgres_version", "postgres_create_schema")
    if not dsn:
        return None, [PreflightCheck(n, CheckStatus.WARN, "no target given", "a PostgreSQL target",
                                     "pass --target-dsn or set SERVICEDESK_PG_DSN") for n in names]
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as conn:
            version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])
            version = conn.execute("SHOW server_version").fetchone()[0]
            database, user, can_create, superuser = conn.execute(
                "SELECT current_database(), current_user, has_database_privilege(current_database(), 'CREATE'),"
                " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            ).fetchone()
    except psycopg.Error as error:
        reason = scrub(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, dsn)
        skipped = "not evaluated: the server is unreachable"
        return None, [
            PreflightCheck(names[0], CheckStatus.FAIL, f"{redact_dsn(dsn)}: {reason}", "a connection within "
                           f"{CONNECT_TIMEOUT_SECONDS} s", "start the server or fix host, port, user and password"),
            PreflightCheck(names[1], CheckStatus.FAIL, skipped, f">= {MIN_SERVER_MAJOR}", ""),
            PreflightCheck(names[2], CheckStatus.FAIL, skipped, "CREATE on the database", ""),
        ]
    major = version_num // 10000
    within = f"a connection within {CONNECT_TIMEOUT_SECONDS} s"
    checks = [_passed(names[0], f"connected to {database} as {user}", within)]
    if major < MIN_SERVER_MAJOR:
        checks.append(PreflightCheck(names[1], CheckStatus.FAIL, version, f">= {MIN_SERVER_MAJOR}",
                                     f"upgrade PostgreSQL to {MIN_SERVER_MAJOR} or later"))
    else:
        checks.append(_passed(names[1], version, f">= {MIN_SERVER_MAJOR}"))
    if can_create or superuser:
        checks.append(_passed(names[2], f"{user} may create schemas in {database}", "CREATE on the database"))
    else:
        checks.append(PreflightCheck(names[2], CheckStatus.FAIL, f"{user} lacks CREATE on {database}",
                                     "CREATE on the database", f"GRANT CREATE ON DATABASE {database} TO {user}"))
    return major, checks


def pg_tool_candidates(program: str, explicit: str | None = None) -> list[Path]:
    """Where to look for a client program: the explicit path only, else PATH and the embedded server's bin."""
    if explicit:
        return [Path(explicit)]
    found = [Path(p) for p in (shutil.which(program),) if p]
    try:
        from servicedesk_etl.embedded_pg import pg_bin_dir

        embedded = pg_bin_dir() / program
        if embedded.exists():
            found.append(embedded)
    except ImportError:
        pass
    return found


def pg_tool_version(path: Path) -> PgTool | None:
    """Run `path --version`; None when it is missing or does not answer like a PostgreSQL tool."""
    if not path.is_file() or not os.access(path, os.X_OK):
        return None
    try:
        output = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _TOOL_VERSION.search(output)
    return PgTool(path, int(match.group(1)), output.strip()) if match else None


def find_pg_tool(program: str, server_major: int | None = None, explicit: str | None = None) -> PgTool | None:
    """The newest `program` found; with a server version, the newest one whose major is >= the server's."""
    tools = [tool for tool in map(pg_tool_version, pg_tool_candidates(program, explicit)) if tool]
    if server_major is not None:
        tools = [tool for tool in tools if tool.major >= server_major] or tools
    return max(tools, key=lambda tool: tool.major, default=None)


def pg_dump_check(server_major: int | None, explicit: str | None) -> PreflightCheck:
    name = "pg_dump"
    threshold = f"major >= server ({server_major})" if server_major else "present (server version unknown)"
    tool = find_pg_tool("pg_dump", server_major, explicit)
    if tool is None:
        where = explicit or "PATH and the embedded server's bin directory"
        return PreflightCheck(name, CheckStatus.FAIL, f"no working pg_dump in {where}", threshold,
                              "install the PostgreSQL client tools matching the server, or pass --pg-dump")
    measured = f"{tool.path} ({tool.version})"
    if server_major is not None and tool.major < server_major:
        return PreflightCheck(name, CheckStatus.FAIL, measured, threshold,
                              f"install pg_dump {server_major} or later; an older pg_dump refuses a newer server")
    return _passed(name, measured, threshold)


def dependencies_check(modules: Sequence[str] = REQUIRED_MODULES) -> PreflightCheck:
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # an ImportError, or a broken package failing on import
            missing.append(f"{module} ({type(error).__name__}: {error})")
    threshold = "all of " + ", ".join(modules)
    if missing:
        return PreflightCheck("python_dependencies", CheckStatus.FAIL, "cannot import " + "; ".join(missing), threshold,
                              "reinstall the package: pip install servicedesk-etl")
    return _passed("python_dependencies", f"{len(modules)} importable", threshold)
