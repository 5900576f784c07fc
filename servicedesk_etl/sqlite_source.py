"""Read-only access to a SQLite snapshot: opening it safely, its tables, columns and checksum."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

import apsw

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


def database_file(conn: sqlite3.Connection) -> str | None:
    """The file of the connection's main database, or None when it has none (in memory, temporary)."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return file or None
    return None


def row_batches(
    path: Path | str,
    query: str,
    params: Sequence[Any] = (),
    rows: int = 50_000,
    functions: Mapping[str, Callable[..., Any]] | None = None,
) -> Iterator[list[tuple[Any, ...]]]:
    """The query's rows, `rows` at a time, read on a connection of their own (read-only, through APSW).

    The standard library's module releases the GIL around every column of every row it returns:
    millions of hand-offs that cost a good part of a read and stall every other thread. APSW releases
    it once per row (around the step) and builds the row holding it, so a bulk read is faster alone
    and much faster beside other threads
    (loading two tables at once, deciding one table while reading the next). Values come as the
    standard module gives them with its default text factory (int, float, str, bytes, None); its
    errors are raised as the standard module's (`sqlite3.OperationalError` for a busy or locked file,
    else `sqlite3.DatabaseError`), so callers handle one kind. `functions` are registered first.

    APSW brings its own copy of SQLite, and two copies in one process do not see each other's file
    locks (POSIX locks belong to the process; closing either copy's descriptor drops both copies'
    locks). Nothing here writes through either copy, so no file can be damaged; use it only for files
    no one writes while they are read: the run's private backup of the snapshot, the cleaned file.
    """
    try:
        conn = apsw.Connection(readonly_uri(path), flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error as error:
        raise _as_sqlite3_error(error) from error
    try:
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        for name, function in (functions or {}).items():
            conn.create_scalar_function(name, function, -1, deterministic=True)
        cursor = conn.execute(query, tuple(params))
        try:
            while batch := list(islice(cursor, rows)):
                yield batch
        finally:
            cursor.close()
    except apsw.Error as error:
        raise _as_sqlite3_error(error) from error
    finally:
        conn.close()


BUSY_TIMEOUT_MS = 5_000  # as the standard module's default timeout


def _as_sqlite3_error(error: apsw.Error) -> sqlite3.Error:
    if isinstance(error, apsw.BusyError | apsw.LockedError | apsw.CantOpenError):
        return sqlite3.OperationalError(str(error))
    return sqlite3.DatabaseError(str(error))


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
