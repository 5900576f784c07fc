"""Read-only access to a SQLite snapshot: opening it safely, its tables, columns and checksum."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote as url_quote

from servicedesk_etl.errors import InputError

SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class SourceColumn:
    name: str
    declared_type: str
    not_null: bool
    primary_key_position: int


def quote_ident(name: str) -> str:
    """A SQLite identifier, quoted so any name (spaces, quotes, reserved words) is safe."""
    return '"' + name.replace('"', '""') + '"'


def readonly_uri(path: Path | str) -> str:
    return f"file:{url_quote(str(Path(path).resolve()))}?mode=ro"


def open_readonly(path: Path | str) -> sqlite3.Connection:
    """Open `path` read-only (`mode=ro`), after checking it exists and is a SQLite database.

    Raises InputError with a one-line reason when the file is missing, not SQLite, corrupt or locked.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a SQLite file")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror})") from error
    if not header:
        raise InputError(f"{path}: the file is empty, not a SQLite database")
    if header != SQLITE_HEADER:
        raise InputError(f"{path}: not a SQLite database (unexpected file header)")
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as error:
        raise InputError(f"{path}: cannot be opened as SQLite ({error})") from error
    return conn


def list_tables(conn: sqlite3.Connection) -> list[str]:
    """User tables in name order (SQLite's internal `sqlite_*` tables excluded)."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [name for (name,) in rows]


def table_columns(conn: sqlite3.Connection, table: str) -> list[SourceColumn]:
    rows = conn.execute("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?)", (table,)).fetchall()
    return [SourceColumn(name, declared or "", bool(not_null), pk) for name, declared, not_null, pk in rows]


def row_count(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0]


def file_sha256(path: Path | str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sqlite_affinity(declared_type: str) -> str:
    """The column affinity SQLite gives a declared type, by its documented name rules in order:
    INTEGER, TEXT, BLOB (also for no type), REAL or NUMERIC."""
    declared = declared_type.upper()
    if "INT" in declared:
        return "INTEGER"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in declared or not declared.strip():
        return "BLOB"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"
