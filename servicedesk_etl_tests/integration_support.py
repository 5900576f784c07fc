"""Helpers shared by the whole-pipeline tests: isolated targets, typed cell comparison, fingerprints."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from servicedesk_etl.runner import RunSummary, run_migration, temporary_environment

TIMESTAMP_TEXT = "%Y-%m-%d %H:%M:%S"


@contextmanager
def isolated_state(home: Path, dsn: str) -> Iterator[Path]:
    """SERVICEDESK_ETL_HOME, DAGSTER_HOME and SERVICEDESK_PG_DSN for the duration (like `state_home`)."""
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    with temporary_environment(SERVICEDESK_ETL_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
                               SERVICEDESK_PG_DSN=dsn):
        yield home


def migrate(source: Path, home: Path, dsn: str) -> RunSummary:
    """The whole Dagster job, run in-process against `dsn` with its own state directory."""
    with isolated_state(home, dsn):
        return run_migration(source)


def failed_blocking_checks(summary: RunSummary) -> list[str]:
    return [f"{asset.name}.{check.name}" for asset in summary.assets for check in asset.checks
            if check.blocking and not check.passed]


def schemas(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
        ).fetchall()
    return {name for (name,) in rows}


def schema_fingerprint(dsn: str, schema: str) -> dict[str, tuple[int, str, str]]:
    """Per table: row count, column list with types, and an md5 of all rows in a stable order."""
    with psycopg.connect(dsn) as conn:
        tables = [name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", (schema,))]
        result = {}
        for table in tables:
            columns = conn.execute(
                "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position)"
                " FROM information_schema.columns WHERE table_schema = %s AND table_name = %s", (schema, table),
            ).fetchone()[0]
            target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            count, digest = conn.execute(
                sql.SQL("SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), ''))"
                        " FROM {} AS r").format(target)
            ).fetchone()
            result[table] = (count, columns, digest)
    return result


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Mismatch:
    where: str
    expected: Any
    actual: Any


def same_value(expected: Any, actual: Any) -> bool:
    """Typed equality of a canonical value (truth.json / SQLite) and what PostgreSQL returned.

    Timestamps compare as `YYYY-MM-DD HH:MM:SS[.ffffff]` text, numbers as Decimal of their shortest
    text form, booleans only with booleans, bytes as bytes.
    """
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, dict) and "hex" in expected:
        return isinstance(actual, bytes) and actual.hex() == expected["hex"]
    if isinstance(actual, datetime):
        return isinstance(expected, str) and parse_timestamp(expected) == actual
    if isinstance(actual, date):
        return isinstance(expected, str) and date.fromisoformat(expected[:10]) == actual and len(expected) >= 10
    if isinstance(actual, (int, float, Decimal)):
        return isinstance(expected, (int, float, Decimal)) and as_decimal(expected) == as_decimal(actual)
    if isinstance(actual, (bytes, memoryview)):
        return isinstance(expected, bytes) and bytes(actual) == expected
    return isinstance(expected, str) and isinstance(actual, str) and expected == actual


def as_decimal(value: float | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(repr(value) if isinstance(value, float) else value)


def parse_timestamp(text: str) -> datetime:
    """SQLite's timestamp text (`T` or space, optional fraction) as a naive datetime."""
    return datetime.fromisoformat(text.replace("T", " ").rstrip("Z"))
