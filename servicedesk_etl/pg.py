"""Connections to the PostgreSQL target, and the schema operations every step shares.

Every connection goes through `connect`, so an unreachable server is always the same one-line
`TargetUnreachable` with the DSN redacted and no password in it.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from servicedesk_etl.dsn import redact_dsn, scrub
from servicedesk_etl.errors import InputError, TargetUnreachable


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A connection to the target, or TargetUnreachable / InputError (bad DSN) with the DSN redacted."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as error:
        reason = " ".join(scrub(str(error).strip() or repr(error), dsn).split())
        raise TargetUnreachable(f"PostgreSQL is unreachable at {redact_dsn(dsn)}: {reason}") from None
    except psycopg.ProgrammingError as error:
        raise InputError(" ".join(scrub(f"the PostgreSQL DSN is not valid: {error}", dsn).split())) from None


def schema_exists(dsn: str, schema: str) -> bool:
    with connect(dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def drop_schema(dsn: str, schema: str) -> None:
    """DROP SCHEMA ... CASCADE (nothing when it does not exist)."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
