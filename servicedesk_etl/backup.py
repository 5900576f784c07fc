"""Backups: SQLite snapshots (online backup API) and PostgreSQL schemas (`pg_dump`), each with a checksum sidecar.

SQLite: `backup_sqlite` copies the snapshot with `sqlite3.Connection.backup` from a read-only
connection (consistent even while an importer writes it) to `<name>.YYYYMMDD_HHMMSS` (UTC), mode
0600, and writes `<backup>.sha256.json` with its MD5, SHA-256, size and row counts.
`verify_backup` checks content, `restore_backup` verifies, copies to a temporary file and renames
atomically, `prune_backups` removes expired backups but always keeps the newest of each snapshot.

PostgreSQL: `pg_dump_schema` writes a custom-format dump of one schema plus a sidecar holding its
checksums and a fingerprint (row count and MD5 per table). `restore_pg_dump` restores it under a
new name: the dump still carries the original schema name, so it is restored into a throwaway
database on the same server, renamed there with `ALTER SCHEMA ... RENAME`, dumped again and
restored into the target in a single transaction; the target never sees the original name, so a
live schema of that name is never touched. Needs CREATEDB (or superuser). Function bodies that
spell the old schema name in their text are not rewritten (tables, views, sequences and indexes
follow the rename). Passwords travel in `PGPASSWORD`, never on a command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from servicedesk_etl import pg
from servicedesk_etl.dsn import redact_dsn, scrub
from servicedesk_etl.errors import InputError, TargetUnreachable
from servicedesk_etl.preflight import PgTool, find_pg_tool
from servicedesk_etl.sqlite_source import file_sha256, list_tables, open_readonly, row_count

log = logging.getLogger(__name__)

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
SIDECAR_SUFFIX = ".sha256.json"
OWNER_ONLY = 0o600
FINGERPRINT_CONNECTIONS = 4  # tables of a schema hashed at once
_BACKUP_NAME = re.compile(r"^(?P<stem>.+)\.(?P<stamp>\d{8}_\d{6})(?:_(?P<seq>\d+))?(?P<ext>\.dump)?$")
_CHUNK = 1 << 22


@dataclass(frozen=True)
class FileDigests:
    md5: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class SqliteBackup:
    path: Path
    sidecar: Path
    source: Path
    source_sha256: str  # the snapshot file's SHA-256 just before the copy started
    created_at: datetime
    md5: str
    sha256: str
    size_bytes: int
    row_counts: Mapping[str, int] = field(hash=False)


@dataclass(frozen=True)
class VerificationCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class BackupVerification:
    backup: Path
    checks: tuple[VerificationCheck, ...]
    row_counts: Mapping[str, int] = field(hash=False)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[VerificationCheck]:
        return [check for check in self.checks if not check.ok]

    def to_dict(self) -> dict[str, object]:
        return {
            "backup": str(self.backup),
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "row_counts": dict(self.row_counts),
        }


@dataclass(frozen=True)
class TableFingerprint:
    rows: int
    md5: str


@dataclass(frozen=True)
class PgDump:
    path: Path
    sidecar: Path
    database: str
    schema: str
    created_at: datetime
    md5: str
    sha256: str
    size_bytes: int
    pg_dump_version: str
    fingerprint: Mapping[str, TableFingerprint] = field(hash=False)


@dataclass(frozen=True)
class PgRestore:
    dump: Path
    schema: str
    fingerprint: Mapping[str, TableFingerprint] = field(hash=False)
    matches_dump: bool | None


# ---------------------------------------------------------------- files


def file_digests(path: Path) -> FileDigests:
    """MD5 and SHA-256 of a file in one pass, the MD5 of each chunk on a thread while this one takes
    its SHA-256 (hashlib releases the GIL on large buffers)."""
    md5, sha256, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    with Path(path).open("rb") as handle, ThreadPoolExecutor(max_workers=1, thread_name_prefix="md5") as pool:
        pending = None
        while chunk := handle.read(_CHUNK):
            if pending is not None:
                pending.result()
            pending = pool.submit(md5.update, chunk)
            sha256.update(chunk)
            size += len(chunk)
        if pending is not None:
            pending.result()
    return FileDigests(md5.hexdigest(), sha256.hexdigest(), size)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _write_private_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, OWNER_ONLY)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_sidecar(path: Path) -> dict[str, object]:
    sidecar = sidecar_path(path)
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise InputError(f"{path}: its checksum sidecar {sidecar.name} is missing") from error
    except (OSError, ValueError) as error:
        raise InputError(f"{sidecar}: unreadable checksum sidecar ({error})") from error


def _timestamped(output_dir: Path, stem: str, now: datetime, suffix: str = "") -> Path:
    stamp = now.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    candidate = output_dir / f"{stem}.{stamp}{suffix}"
    sequence = 1
    while candidate.exists() or sidecar_path(candidate).exists():
        candidate = output_dir / f"{stem}.{stamp}_{sequence}{suffix}"
        sequence += 1
    return candidate


# ---------------------------------------------------------------- SQLite


def sqlite_row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {table: row_count(conn, table) for table in list_tables(conn)}


def backup_sqlite(source: Path, output_dir: Path, *, now: datetime | None = None) -> SqliteBackup:
    """Copy `source` with SQLite's online backup API into `output_dir/<name>.YYYYMMDD_HHMMSS`, plus its sidecar."""
    source, output_dir = Path(source), Path(output_dir)
    created_at = (now or datetime.now(UTC)).astimezone(UTC)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = _timestamped(output_dir, source.name, created_at)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=output_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, OWNER_ONLY)
        src = open_readonly(source)
        source_sha256 = file_sha256(source)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # one step: the copy is one consistent read transaction
                dst.execute("PRAGMA journal_mode = DELETE")
                row_counts = sqlite_row_counts(dst)
            finally:
                dst.close()
        finally:
            src.close()
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except sqlite3.Error as error:
        raise InputError(f"{source}: backup failed ({error})") from error
    finally:
        tmp.unlink(missing_ok=True)
    digests = file_digests(target)
    sidecar = sidecar_path(target)
    document = {
        "kind": "sqlite",
        "backup": target.name,
        "source": str(source.resolve()),
        "source_sha256": source_sha256,
        "created_at": created_at.isoformat(),
        "md5": digests.md5,
        "sha256": digests.sha256,
        "size_bytes": digests.size_bytes,
        "row_counts": row_counts,
    }
    _write_private_atomically(sidecar, json.dumps(document, indent=2, sort_keys=True))
    log.info("backed up %s to %s (%d bytes, %d tables)", source, target, digests.size_bytes, len(row_counts))
    return SqliteBackup(target, sidecar, source, source_sha256, created_at, digests.md5, digests.sha256,
                        digests.size_bytes, row_counts)


def verify_backup(source: Path | None, backup: Path) -> BackupVerification:
    """Checksums against the sidecar, `PRAGMA integrity_check`, and row counts equal to the sidecar and the source."""
    backup = Path(backup)
    if not backup.is_file():
        return BackupVerification(backup, (VerificationCheck("exists", False, f"{backup}: no such file"),), {})
    checks: list[VerificationCheck] = []
    try:
        recorded = _read_sidecar(backup)
    except InputError as error:
        recorded = {}
        checks.append(VerificationCheck("sidecar", False, str(error)))
    if recorded:
        digests = file_digests(backup)
        checks.append(_compare("md5", recorded.get("md5"), digests.md5))
        checks.append(_compare("sha256", recorded.get("sha256"), digests.sha256))
    integrity, counts = _integrity_and_counts(backup)
    checks.append(integrity)
    if integrity.ok:
        if recorded:
            checks.append(_compare_counts("row_counts_vs_sidecar", recorded.get("row_counts", {}), counts))
        if source is not None:
            checks.append(_row_counts_vs_source(Path(source), counts))
    result = BackupVerification(backup, tuple(checks), counts)
    log.info("verified %s: %s", backup, "ok" if result.ok else "; ".join(c.detail for c in result.failures))
    return result


def _compare(name: str, expected: object, actual: str) -> VerificationCheck:
    if expected == actual:
        return VerificationCheck(name, True, actual)
    return VerificationCheck(name, False, f"recorded {expected}, file has {actual}: the backup was modified or damaged")


def _integrity_and_counts(backup: Path) -> tuple[VerificationCheck, dict[str, int]]:
    try:
        conn = open_readonly(backup)
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check(5)").fetchall()]
            counts = sqlite_row_counts(conn) if result == ["ok"] else {}
        finally:
            conn.close()
    except (InputError, sqlite3.DatabaseError) as error:
        return VerificationCheck("integrity_check", False, str(error)), {}
    return VerificationCheck("integrity_check", result == ["ok"], "; ".join(result)), counts


def _compare_counts(name: str, expected: Mapping[str, int], actual: Mapping[str, int]) -> VerificationCheck:
    differences = [
        f"{table}: expected {expected.get(table)}, backup has {actual.get(table)}"
        for table in sorted(set(expected) | set(actual))
        if expected.get(table) != actual.get(table)
    ]
    if differences:
        return VerificationCheck(name, False, "; ".join(differences[:10]))
    return VerificationCheck(name, True, f"{len(actual)} tables, {sum(actual.values())} rows")


def _row_counts_vs_source(source: Path, counts: Mapping[str, int]) -> VerificationCheck:
    try:
        conn = open_readonly(source)
        try:
            source_counts = sqlite_row_counts(conn)
        finally:
            conn.close()
    except (InputError, sqlite3.DatabaseError) as error:
        return VerificationCheck("row_counts_vs_source", False, str(error))
    return _compare_counts("row_counts_vs_source", source_counts, counts)


def restore_backup(backup: Path, target: Path, *, force: bool = False) -> Path:
    """Verify `backup`, copy it to a temporary file beside `target` and rename it into place."""
    backup, target = Path(backup), Path(target)
    verification = verify_backup(None, backup)
    if not verification.ok:
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in verification.failures)
        raise InputError(f"{backup}: refusing to restore, verification failed ({reasons})")
    if target.exists() and not force:
        raise InputError(f"{target} exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".restoring", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, OWNER_ONLY)
        shutil.copyfile(backup, tmp)
        if file_digests(tmp).sha256 != _read_sidecar(backup)["sha256"]:
            raise InputError(f"{backup}: the copy does not match the recorded checksum; nothing was replaced")
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        for suffix in ("-journal", "-wal", "-shm"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)  # would be replayed into the restored file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("restored %s to %s", backup, target)
    return target


def list_backups(output_dir: Path) -> list[tuple[str, datetime, Path]]:
    """Backups and schema dumps in `output_dir` as (what was backed up, UTC time, path), oldest first."""
    found = []
    for path in Path(output_dir).iterdir():
        match = _BACKUP_NAME.match(path.name)
        if not match or not path.is_file():
            continue
        stamp = datetime.strptime(match["stamp"], TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        found.append((match["stem"] + (match["ext"] or ""), stamp, path))
    return sorted(found, key=lambda item: (item[1], item[2].name))


# A Dagster run id: only directories named like one are ever taken for run directories.
_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def prune_runs(current: Path, keep: int) -> list[Path]:
    """Remove the oldest run directories beside `current` (its siblings named like a run id, by
    modification time) so that at most `keep` remain besides `current`, which always stays; 0 keeps
    all. A directory that cannot be removed is logged and left. Returns those removed."""
    if keep <= 0:
        return []
    current = current.resolve()
    runs = [
        path for path in current.parent.iterdir()
        if path.is_dir() and not path.is_symlink() and _RUN_ID.match(path.name) and path.resolve() != current
    ]  # fmt: skip
    runs.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    removed = []
    for path in runs[keep:]:
        try:
            shutil.rmtree(path)
        except OSError as error:
            log.warning("could not remove the old run directory %s: %s", path, error)
            continue
        log.info("removed the old run directory %s (more than %d runs are kept)", path, keep)
        removed.append(path)
    return removed


def prune_backups(output_dir: Path, retention_days: int, *, now: datetime | None = None) -> list[Path]:
    """Remove backups and dumps (and sidecars) older than `retention_days`; the newest of each source always stays."""
    if retention_days < 0:
        raise InputError(f"--retention-days must be 0 or more, not {retention_days}")
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise InputError(f"{output_dir}: no such directory")
    cutoff = (now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=retention_days)
    backups = list_backups(output_dir)
    newest = {stem: path for stem, _, path in backups}
    removed = []
    for stem, stamp, path in backups:
        if stamp < cutoff and newest[stem] != path:
            path.unlink()
            sidecar_path(path).unlink(missing_ok=True)
            removed.append(path)
            log.info("pruned backup %s (from %s)", path, stamp.isoformat())
    return removed


# ---------------------------------------------------------------- PostgreSQL


def client_connection(dsn: str) -> tuple[str, dict[str, str]]:
    """A conninfo without the password for a command line, and the environment carrying it in PGPASSWORD."""
    try:
        params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.Error as error:
        raise InputError(f"not a valid PostgreSQL DSN: {scrub(str(error), dsn)}") from error
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = password
    return make_conninfo(**params), env


def _run_client(tool: PgTool, args: list[str], dsn: str) -> None:
    conninfo, env = client_connection(dsn)
    command = [str(tool.path), *args, "--dbname", conninfo]
    log.debug("running %s %s", tool.path.name, " ".join(args))
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    except OSError as error:
        raise TargetUnreachable(f"{tool.path} could not be started: {error.strerror}") from error
    if completed.returncode != 0:
        message = scrub(completed.stderr.strip() or completed.stdout.strip(), dsn)
        raise TargetUnreachable(f"{tool.path.name} against {redact_dsn(dsn)} failed: {message}")


def _server_major(dsn: str) -> int:
    with _connect(dsn) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


@contextmanager
def _connect(dsn: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection]:
    with pg.connect(dsn, autocommit=autocommit) as conn:
        yield conn


def _tool(program: str, dsn: str, explicit: str | None) -> PgTool:
    major = _server_major(dsn)
    tool = find_pg_tool(program, major, explicit)
    if tool is None or tool.major < major:
        raise InputError(f"no {program} of major version >= {major} found; install the PostgreSQL {major} client tools")
    return tool


def schema_pattern(schema: str) -> str:
    """A pg_dump `--schema` pattern matching exactly `schema` (double quotes make wildcards literal)."""
    return '"' + schema.replace('"', '""') + '"'


def schema_fingerprint(dsn: str, schema: str) -> dict[str, TableFingerprint]:
    """Per table of `schema`: its row count and an order-independent MD5 of its rows' text (tables
    hashed on a few connections at once: the server hashes each in its own process)."""
    with _connect(dsn) as conn:
        tables = [
            name for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
                (schema,),
            )
        ]
    if not tables:
        return {}
    with ThreadPoolExecutor(max_workers=min(FINGERPRINT_CONNECTIONS, len(tables)), thread_name_prefix="fingerprint") as pool:
        prints = list(pool.map(lambda table: _table_fingerprint(dsn, schema, table), tables))
    return dict(zip(tables, prints, strict=True))


def _table_fingerprint(dsn: str, schema: str, table: str) -> TableFingerprint:
    with _connect(dsn, autocommit=False) as conn:
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        conn.execute("SET LOCAL extra_float_digits = 3")
        query = sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(row_md5, '' ORDER BY row_md5)), md5(''))"
            " FROM (SELECT md5(t::text) AS row_md5 FROM {}.{} AS t) AS rows"
        ).format(sql.Identifier(schema), sql.Identifier(table))
        rows, digest = conn.execute(query).fetchone()
        return TableFingerprint(int(rows), digest)


def _dump_args(schema: str, output: Path) -> list[str]:
    # Compression level 1: about 2.5 times faster than the default 6 for a file about 1.4 times as big.
    return ["--format=custom", "--compress=1", "--strict-names", "--schema", schema_pattern(schema),
            "--file", str(output)]


def pg_dump_schema(
    dsn: str, schema: str, output_dir: Path, *, pg_dump: str | None = None, now: datetime | None = None
) -> PgDump:
    """A custom-format dump of `schema` in `output_dir`, mode 0600, with a checksum and fingerprint sidecar."""
    output_dir = Path(output_dir)
    if not pg.schema_exists(dsn, schema):
        raise InputError(f"schema {schema!r} does not exist in {redact_dsn(dsn)}")
    tool = _tool("pg_dump", dsn, pg_dump)
    created_at = (now or datetime.now(UTC)).astimezone(UTC)
    database = conninfo_to_dict(dsn).get("dbname") or "postgres"
    output_dir.mkdir(parents=True, exist_ok=True)
    target = _timestamped(output_dir, f"{database}.{schema}", created_at, ".dump")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=output_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    # The fingerprint is taken while pg_dump runs: both only read the schema, each in its own server process.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint") as pool:
        fingerprinted = pool.submit(schema_fingerprint, dsn, schema)
        try:
            os.chmod(tmp, OWNER_ONLY)
            _run_client(tool, _dump_args(schema, tmp), dsn)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fingerprint = fingerprinted.result()
    os.chmod(target, OWNER_ONLY)
    digests = file_digests(target)
    document = {
        "kind": "pg_dump",
        "dump": target.name,
        "database": database,
        "schema": schema,
        "created_at": created_at.isoformat(),
        "md5": digests.md5,
        "sha256": digests.sha256,
        "size_bytes": digests.size_bytes,
        "pg_dump_version": tool.version,
        "fingerprint": {table: {"rows": fp.rows, "md5": fp.md5} for table, fp in fingerprint.items()},
    }
    sidecar = sidecar_path(target)
    _write_private_atomically(sidecar, json.dumps(document, indent=2, sort_keys=True))
    log.info("dumped schema %s to %s (%d bytes, %d tables)", schema, target, digests.size_bytes, len(fingerprint))
    return PgDump(target, sidecar, database, schema, created_at, digests.md5, digests.sha256, digests.size_bytes,
                  tool.version, fingerprint)


def verify_pg_dump(dump: Path) -> dict[str, object]:
    """The dump's sidecar, after checking the file's checksums against it; InputError when they differ."""
    dump = Path(dump)
    if not dump.is_file():
        raise InputError(f"{dump}: no such file")
    recorded = _read_sidecar(dump)
    digests = file_digests(dump)
    if (recorded.get("md5"), recorded.get("sha256")) != (digests.md5, digests.sha256):
        raise InputError(f"{dump}: checksum differs from its sidecar; the dump was modified or damaged")
    return recorded


def restore_pg_dump(dump: Path, schema: str, dsn: str, *, pg_restore: str | None = None) -> PgRestore:
    """Restore a `pg_dump_schema` dump into a new schema named `schema` (see the module docstring)."""
    dump = Path(dump)
    recorded = verify_pg_dump(dump)
    original = str(recorded["schema"])
    if pg.schema_exists(dsn, schema):
        raise InputError(f"schema {schema!r} already exists; choose another name or drop it first")
    tool = _tool("pg_restore", dsn, pg_restore)
    restore_args = ["--no-owner", "--exit-on-error", "--single-transaction"]
    if schema == original:
        _run_client(tool, [*restore_args, str(dump)], dsn)
    else:
        with _scratch_database(dsn) as scratch_dsn, tempfile.TemporaryDirectory(prefix="sdetl-restore-") as work:
            _run_client(tool, [*restore_args, str(dump)], scratch_dsn)
            with _connect(scratch_dsn) as conn:
                rename = sql.SQL("ALTER SCHEMA {} RENAME TO {}")
                conn.execute(rename.format(sql.Identifier(original), sql.Identifier(schema)))
            renamed = Path(work) / "renamed.dump"
            dumper = _tool("pg_dump", scratch_dsn, str(tool.path.with_name("pg_dump")))
            _run_client(dumper, _dump_args(schema, renamed), scratch_dsn)
            _run_client(tool, [*restore_args, str(renamed)], dsn)
    fingerprint = schema_fingerprint(dsn, schema)
    expected = recorded.get("fingerprint")
    restored = {table: {"rows": fp.rows, "md5": fp.md5} for table, fp in fingerprint.items()}
    matches = None if expected is None else restored == expected
    log.info("restored %s into schema %s (%d tables, fingerprint %s)", dump, schema, len(fingerprint),
             "matches" if matches else "differs" if matches is False else "not recorded")
    return PgRestore(dump, schema, fingerprint, matches)


@contextmanager
def _scratch_database(dsn: str) -> Iterator[str]:
    name = f"servicedesk_etl_restore_{uuid.uuid4().hex[:12]}"
    with _connect(dsn) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as error:
            raise TargetUnreachable(f"cannot create the scratch database for a renamed restore "
                                    f"(needs CREATEDB): {scrub(str(error).strip(), dsn)}") from error
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    try:
        yield make_conninfo(**{**params, "dbname": name})
    finally:
        with _connect(dsn) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
