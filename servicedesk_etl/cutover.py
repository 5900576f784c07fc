"""Blue-green cutover: a loaded version schema becomes `servicedesk` in one transaction.

Versions are recorded in `servicedesk_etl_meta.versions`, keyed by their version name
(`servicedesk_v...`). The live version's schema is named `servicedesk`; every other version's
schema carries its version name. A cutover renames the live schema back to its version name and
the new one to `servicedesk` inside one transaction, so a reader of `servicedesk.<table>` sees
either the old tables or the new ones, never neither.

Statuses: `loading` (being loaded), `ready` (loaded, registered, never live), `live`,
`retired` (was live, kept for rollback), `rolled_back` (was live, replaced by a rollback).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from servicedesk_etl.errors import InputError, TargetUnreachable
from servicedesk_etl.loading import CANARY_PREFIX, DRYRUN_PREFIX, version_schema_name
from servicedesk_etl.pg import connect
from servicedesk_etl.settings import LIVE_SCHEMA

log = logging.getLogger(__name__)

META_SCHEMA = "servicedesk_etl_meta"
VERSIONS_TABLE = "versions"
# pg_advisory_xact_lock key serialising every change to versions and to the live schema.
CUTOVER_LOCK_KEY = 0x5D_E7_1C_07
PROMOTABLE = ("ready", "retired", "rolled_back")
LEFTOVER_STATUSES = ("loading",)
VERSION_NAME_PATTERN = "^servicedesk_v[0-9]{8}T[0-9]{12}Z$"


@dataclass(frozen=True)
class CutoverResult:
    """`live_version` is now served as `live_schema`; `previous_version` (None on a first cutover) is kept."""

    live_schema: str
    live_version: str
    previous_version: str | None
    dropped: tuple[str, ...]
    attempts: int
    seconds: float


@dataclass(frozen=True)
class VersionInfo:
    """`schema` is the version's name; `location` is where it is now (`servicedesk` when live)."""

    schema: str
    location: str
    status: str
    is_live: bool
    exists: bool
    loaded_at: datetime
    promoted_at: datetime | None
    source_sha256: str | None
    row_counts: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.row_counts.values())


def _versions() -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(META_SCHEMA), sql.Identifier(VERSIONS_TABLE))


def ensure_meta(conn: psycopg.Connection) -> None:
    """Create the metadata schema and table if missing (inside the caller's transaction)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CUTOVER_LOCK_KEY,))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META_SCHEMA)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " schema_name text PRIMARY KEY,"
            " loaded_at timestamptz NOT NULL DEFAULT now(),"
            " source_sha256 text,"
            " row_counts jsonb NOT NULL DEFAULT '{{}}'::jsonb,"
            " status text NOT NULL,"
            " is_live boolean NOT NULL DEFAULT false,"
            " promoted_at timestamptz,"
            " changed_at timestamptz NOT NULL DEFAULT now())"
        ).format(_versions())
    )
    conn.execute(
        sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (is_live) WHERE is_live").format(
            sql.Identifier("versions_one_live"), _versions()
        )
    )


def _schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _status_of(conn: psycopg.Connection, version: str) -> tuple[str, bool] | None:
    row = conn.execute(
        sql.SQL("SELECT status, is_live FROM {} WHERE schema_name = %s").format(_versions()), (version,)
    ).fetchone()
    return (row[0], row[1]) if row else None


def _upsert(conn: psycopg.Connection, version: str, status: str, sha256: str | None, counts: dict[str, int]) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (schema_name, source_sha256, row_counts, status) VALUES (%s, %s, %s::jsonb, %s) "
            "ON CONFLICT (schema_name) DO UPDATE SET source_sha256 = EXCLUDED.source_sha256,"
            " row_counts = EXCLUDED.row_counts, status = EXCLUDED.status, loaded_at = now(), changed_at = now()"
        ).format(_versions()),
        (version, sha256, json.dumps(counts), status),
    )


def mark_loading(dsn: str, schema: str) -> None:
    """Record `schema` as being loaded, so an interrupted run's schema is found by `drop_leftovers`."""
    _check_version_name(schema)
    with connect(dsn) as conn:
        ensure_meta(conn)
        _upsert(conn, schema, "loading", None, {})


def register_version(dsn: str, schema: str, *, source_sha256: str, row_counts: dict[str, int]) -> None:
    """Record a loaded version schema as `ready` to promote, with its source checksum and row counts."""
    _check_version_name(schema)
    with connect(dsn) as conn:
        ensure_meta(conn)
        if not _schema_exists(conn, schema):
            raise InputError(f"schema {schema!r} does not exist; load it before registering it")
        current = _status_of(conn, schema)
        if current and current[0] not in ("loading", "ready"):
            raise InputError(f"version {schema!r} is already {current[0]}; register only new versions")
        _upsert(conn, schema, "ready", source_sha256, dict(row_counts))
    log.info("registered version %s (%d rows)", schema, sum(row_counts.values()))


def _check_version_name(schema: str) -> None:
    if schema == LIVE_SCHEMA or schema == META_SCHEMA or not schema:
        raise InputError(f"{schema!r} cannot be a version schema name")


def promote(dsn: str, schema: str, *, keep: int = 3, lock_timeout_ms: int = 2000, retries: int = 5) -> CutoverResult:
    """Make version `schema` live as `servicedesk`, then drop promoted versions beyond the newest `keep`.

    `keep` counts versions that have been live, the live one included; the live one is never
    dropped, and a version that cannot be locked for dropping is left for the next cutover.
    """
    if keep < 1:
        raise InputError(f"keep must be at least 1, not {keep}")
    started = time.perf_counter()

    def swap(conn: psycopg.Connection) -> tuple[str | None, str]:
        status = _status_of(conn, schema)
        if status is None:
            raise InputError(f"version {schema!r} is not registered; call register_version first")
        if status[1]:
            raise InputError(f"version {schema!r} is already live")
        if status[0] not in PROMOTABLE:
            raise InputError(f"version {schema!r} is {status[0]}, not ready to promote")
        if not _schema_exists(conn, schema):
            raise InputError(f"schema {schema!r} does not exist")
        previous = _retire_live(conn, "retired")
        _rename(conn, schema, LIVE_SCHEMA)
        conn.execute(
            sql.SQL(
                "UPDATE {} SET is_live = true, status = 'live', promoted_at = now(), changed_at = now() "
                "WHERE schema_name = %s"
            ).format(_versions()),
            (schema,),
        )
        return previous, schema

    (previous, _live), attempts = _in_cutover_transaction(dsn, swap, lock_timeout_ms=lock_timeout_ms, retries=retries)
    log.info("version %s is live as %s (previously %s)", schema, LIVE_SCHEMA, previous)
    dropped = _prune(dsn, keep=keep, lock_timeout_ms=lock_timeout_ms)
    return CutoverResult(LIVE_SCHEMA, schema, previous, dropped, attempts, time.perf_counter() - started)


def rollback(dsn: str, *, lock_timeout_ms: int = 2000, retries: int = 5) -> CutoverResult:
    """Swap the most recently retired version back in as `servicedesk`, in one transaction."""
    started = time.perf_counter()

    def swap(conn: psycopg.Connection) -> tuple[str | None, str]:
        target = conn.execute(
            sql.SQL(
                "SELECT schema_name FROM {} WHERE status = 'retired' AND NOT is_live AND promoted_at IS NOT NULL "
                "AND schema_name IN (SELECT nspname FROM pg_namespace) ORDER BY promoted_at DESC LIMIT 1"
            ).format(_versions())
        ).fetchone()
        if target is None:
            raise InputError("there is no earlier version to roll back to")
        previous = _retire_live(conn, "rolled_back")
        _rename(conn, target[0], LIVE_SCHEMA)
        conn.execute(
            sql.SQL("UPDATE {} SET is_live = true, status = 'live', changed_at = now() WHERE schema_name = %s").format(
                _versions()
            ),
            (target[0],),
        )
        return previous, target[0]

    (previous, now_live), attempts = _in_cutover_transaction(
        dsn, swap, lock_timeout_ms=lock_timeout_ms, retries=retries
    )
    log.warning("rolled back: %s is live again (replacing %s)", now_live, previous)
    return CutoverResult(LIVE_SCHEMA, now_live, previous, (), attempts, time.perf_counter() - started)


def _retire_live(conn: psycopg.Connection, status: str) -> str | None:
    """Rename the live schema to its version name and mark it `status`; its version name, or None."""
    live = conn.execute(sql.SQL("SELECT schema_name FROM {} WHERE is_live").format(_versions())).fetchone()
    if not _schema_exists(conn, LIVE_SCHEMA):
        if live:
            conn.execute(
                sql.SQL("UPDATE {} SET is_live = false, status = 'missing', changed_at = now() WHERE schema_name = %s")
                .format(_versions()),
                (live[0],),
            )
        return None
    if live is None:
        # A live schema made before this tool (or by hand): keep it as a version for rollback.
        name = version_schema_name()
        _upsert(conn, name, status, None, {})
        conn.execute(sql.SQL("UPDATE {} SET promoted_at = now() WHERE schema_name = %s").format(_versions()), (name,))
        live = (name,)
    _rename(conn, LIVE_SCHEMA, live[0])
    conn.execute(
        sql.SQL("UPDATE {} SET is_live = false, status = %s, changed_at = now() WHERE schema_name = %s").format(
            _versions()
        ),
        (status, live[0]),
    )
    return live[0]


def _rename(conn: psycopg.Connection, old: str, new: str) -> None:
    conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def _set_lock_timeout(conn: psycopg.Connection, lock_timeout_ms: int) -> None:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_ms)}ms")))


Swap = Callable[[psycopg.Connection], tuple[str | None, str]]


def _in_cutover_transaction(
    dsn: str, swap: Swap, *, lock_timeout_ms: int, retries: int
) -> tuple[tuple[str | None, str], int]:
    """Run `swap(conn)` in one transaction with a lock timeout, retrying when a lock is not granted."""
    for attempt in range(1, retries + 2):
        try:
            with connect(dsn) as conn, conn.transaction():
                _set_lock_timeout(conn, lock_timeout_ms)
                ensure_meta(conn)
                return swap(conn), attempt
        except psycopg.errors.LockNotAvailable:
            if attempt > retries:
                break
            delay = min(0.1 * 2**attempt, 2.0)
            log.warning("cutover lock not granted within %d ms (attempt %d); retrying in %.1f s",
                        lock_timeout_ms, attempt, delay)
            time.sleep(delay)
    raise TargetUnreachable(
        f"cutover could not lock schema {LIVE_SCHEMA!r} in {retries + 1} attempts of {lock_timeout_ms} ms; "
        "a long transaction holds it, nothing was changed: retry later"
    )


def _prune(dsn: str, *, keep: int, lock_timeout_ms: int) -> tuple[str, ...]:
    """Drop versions that were once live beyond the newest `keep`, oldest first (never the live one)."""
    with connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT schema_name, is_live FROM {} WHERE promoted_at IS NOT NULL ORDER BY promoted_at DESC"
            ).format(_versions())
        ).fetchall()
    surplus = [name for position, (name, is_live) in enumerate(rows) if position >= keep and not is_live][::-1]
    return tuple(name for name in surplus if _drop_version(dsn, name, lock_timeout_ms))


def _drop_version(dsn: str, version: str, lock_timeout_ms: int) -> bool:
    try:
        with connect(dsn) as conn, conn.transaction():
            _set_lock_timeout(conn, lock_timeout_ms)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CUTOVER_LOCK_KEY,))
            status = _status_of(conn, version)
            if status is None or status[1]:
                return False
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(version)))
            conn.execute(sql.SQL("DELETE FROM {} WHERE schema_name = %s").format(_versions()), (version,))
    except psycopg.errors.LockNotAvailable:
        log.warning("version %s is in use; it will be dropped by a later cutover", version)
        return False
    log.info("dropped old version %s", version)
    return True


def list_versions(dsn: str) -> list[VersionInfo]:
    """Every recorded version, newest load first, with row counts, checksum, live flag, existence."""
    with connect(dsn) as conn:
        if not _schema_exists(conn, META_SCHEMA):
            return []
        rows = conn.execute(
            sql.SQL(
                "SELECT v.schema_name, v.status, v.is_live, v.loaded_at, v.promoted_at, v.source_sha256, v.row_counts,"
                " EXISTS (SELECT 1 FROM pg_namespace n"
                "   WHERE n.nspname = CASE WHEN v.is_live THEN %s ELSE v.schema_name END)"
                " FROM {} v ORDER BY v.loaded_at DESC, v.schema_name DESC"
            ).format(_versions()),
            (LIVE_SCHEMA,),
        ).fetchall()
    return [
        VersionInfo(
            schema=name,
            location=LIVE_SCHEMA if is_live else name,
            status=status,
            is_live=is_live,
            exists=exists,
            loaded_at=loaded_at,
            promoted_at=promoted_at,
            source_sha256=sha256,
            row_counts={str(k): int(v) for k, v in (counts or {}).items()},
        )
        for name, status, is_live, loaded_at, promoted_at, sha256, counts, exists in rows
    ]


def drop_leftovers(dsn: str, *, keep_unpromoted: int = 1, lock_timeout_ms: int = 5000) -> list[str]:
    """Drop the schemas earlier runs left behind; the dropped names, sorted.

    That is: canary and dry-run schemas; version-named schemas with no metadata or still
    `loading` (an interrupted load); and registered (`ready`) versions never promoted, beyond the
    newest `keep_unpromoted` (a run whose gates failed leaves one, kept for inspection). Never the
    live schema or a version that has been live. Call it when no other run is loading: a canary
    or version in progress elsewhere would be dropped too.
    """
    with connect(dsn) as conn, conn.transaction():
        _set_lock_timeout(conn, lock_timeout_ms)
        ensure_meta(conn)
        candidates = conn.execute(
            sql.SQL(
                "SELECT n.nspname FROM pg_namespace n LEFT JOIN {} v ON v.schema_name = n.nspname"
                " WHERE n.nspname <> %s AND v.is_live IS NOT TRUE AND ("
                "  starts_with(n.nspname, %s) OR starts_with(n.nspname, %s)"
                "  OR (v.schema_name IS NULL AND n.nspname ~ %s)"
                "  OR v.status = ANY(%s)"
                "  OR v.schema_name IN (SELECT schema_name FROM {} WHERE status = 'ready' AND promoted_at IS NULL"
                "    ORDER BY loaded_at DESC, schema_name DESC OFFSET %s))"
                " ORDER BY 1"
            ).format(_versions(), _versions()),
            (LIVE_SCHEMA, CANARY_PREFIX, DRYRUN_PREFIX, VERSION_NAME_PATTERN, list(LEFTOVER_STATUSES),
             max(0, keep_unpromoted)),
        ).fetchall()
        dropped = [name for (name,) in candidates]
        for name in dropped:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE NOT is_live AND (status = ANY(%s) OR schema_name = ANY(%s))"
                " AND schema_name NOT IN (SELECT nspname FROM pg_namespace)"
            ).format(_versions()),
            (list(LEFTOVER_STATUSES), dropped),
        )
    for name in dropped:
        log.warning("dropped leftover schema %s", name)
    return dropped
