"""Raw SQLite values with their storage class (`typeof`), never coerced by the declared type.

`read_table` pulls a table into polars in one pass: a `_rowid` column, then one Struct column per
source column with the fields `storage`, `i`, `r`, `s`, `b` (see `RAW_DTYPE`). Exactly one value
field is set per row, the one matching `storage`; all are null when `storage == 'null'`. Text that
is not valid UTF-8 keeps `storage == 'text'` and carries its raw bytes in `b` (with `s` null).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import polars as pl

from servicedesk_etl.sqlite_source import quote_ident, table_columns

log = logging.getLogger(__name__)

ROWID = "_rowid"
STORAGE_CLASSES = ("null", "integer", "real", "text", "blob")
VALUE_FIELDS = {"integer": "i", "real": "r", "text": "s", "blob": "b"}
FIELD_DTYPES = {"i": pl.Int64, "r": pl.Float64, "s": pl.String, "b": pl.Binary}
RAW_DTYPE = pl.Struct({"storage": pl.String, **FIELD_DTYPES})
_SERIES_STORAGE = {pl.Int64: "integer", pl.Float64: "real", pl.String: "text", pl.Binary: "blob"}
_ROWID_ALIASES = ("rowid", "_rowid_", "oid")
_HASH_PRIME = 1_000_000_007
_HASH_MULTIPLIER = 2_654_435_761
_SEED_MULTIPLIER = 1_540_483_477
FETCH_ROWS = 50_000


@dataclass(frozen=True)
class RowSample:
    """A seeded pseudo-random subset of rows: each rowid is kept when its hash falls below `fraction`.

    Deterministic for a given seed, spread over the whole table (never the first N rows).
    """

    fraction: float
    seed: int = 0

    def predicate(self, rowid_sql: str) -> tuple[str, tuple[int, int]]:
        threshold = int(self.fraction * _HASH_PRIME)
        expression = (
            f"((({rowid_sql} % {_HASH_PRIME}) * {_HASH_MULTIPLIER} + ?) % {_HASH_PRIME} + {_HASH_PRIME})"
            f" % {_HASH_PRIME} < ?"
        )
        return expression, ((self.seed + 1) * _SEED_MULTIPLIER % _HASH_PRIME, threshold)


def read_table(conn: sqlite3.Connection, table: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Every row: a `_rowid` Int64 column, then one Struct column per source column.

    Struct fields: storage (String: 'null'|'integer'|'real'|'text'|'blob'), i (Int64), r (Float64),
    s (String: text values that are valid UTF-8), b (Binary: blob values, and raw bytes of text
    that is not valid UTF-8). For a WITHOUT ROWID table `_rowid` is the 1-based row position in
    primary-key order.
    """
    return read_rows(conn, table, columns)


def read_rows(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str] | None = None,
    sample: RowSample | None = None,
) -> pl.DataFrame:
    """Like `read_table`, optionally restricted to a seeded sample of rows."""
    names = list(columns) if columns is not None else [column.name for column in table_columns(conn, table)]
    rowid_sql = _rowid_expression(conn, table, names)
    where, params = ("", ()) if sample is None or rowid_sql is None else _where(sample, rowid_sql)
    return _read_plain(conn, table, names, rowid_sql, where, params)


def raw_series(name: str, storage: str, values: pl.Series) -> pl.Series:
    """A raw Struct series from values that all have one storage class (nulls allowed)."""
    value_field = VALUE_FIELDS.get(storage)
    frame = pl.DataFrame({"v": values})
    fields = [
        pl.when(pl.col("v").is_null()).then(pl.lit("null")).otherwise(pl.lit(storage)).alias("storage"),
        *[
            (pl.col("v") if field == value_field else pl.lit(None)).cast(dtype).alias(field)
            for field, dtype in FIELD_DTYPES.items()
        ],
    ]
    return frame.select(pl.struct(fields).alias(name)).to_series()


def raw_from_python(name: str, values: Sequence[object]) -> pl.Series:
    """A raw Struct series from Python values as sqlite3 returns them (for tests and small inputs).

    `bytes` are blobs; a `bytearray` stands for text that is not valid UTF-8.
    """
    rows = []
    for value in values:
        if value is None:
            rows.append({"storage": "null"})
        elif isinstance(value, bool | int):
            rows.append({"storage": "integer", "i": int(value)})
        elif isinstance(value, float):
            rows.append({"storage": "real", "r": value})
        elif isinstance(value, str):
            rows.append({"storage": "text", "s": value})
        elif isinstance(value, bytearray):
            rows.append({"storage": "text", "b": bytes(value)})
        elif isinstance(value, bytes):
            rows.append({"storage": "blob", "b": value})
        else:
            raise TypeError(f"not a SQLite value: {value!r}")
    return pl.Series(name, rows, dtype=RAW_DTYPE)


def _where(sample: RowSample, rowid_sql: str) -> tuple[str, tuple[int, ...]]:
    predicate, params = sample.predicate(rowid_sql)
    return f" WHERE {predicate}", params


def _rowid_expression(conn: sqlite3.Connection, table: str, names: Sequence[str]) -> str | None:
    """The rowid alias not shadowed by a column, or None for a WITHOUT ROWID table."""
    taken = {column.name.lower() for column in table_columns(conn, table)} | {name.lower() for name in names}
    alias = next((candidate for candidate in _ROWID_ALIASES if candidate not in taken), None)
    if alias is None:
        return None
    try:
        conn.execute(f"SELECT {alias} FROM {quote_ident(table)} LIMIT 0")
    except sqlite3.OperationalError:
        return None
    return alias


def _select(
    table: str, expressions: Sequence[str], rowid_sql: str | None, where: str
) -> str:
    order = f" ORDER BY {rowid_sql}" if rowid_sql else ""
    head = rowid_sql if rowid_sql else "NULL"
    return f"SELECT {', '.join([head, *expressions])} FROM {quote_ident(table)}{where}{order}"


def _read_plain(
    conn: sqlite3.Connection,
    table: str,
    names: Sequence[str],
    rowid_sql: str | None,
    where: str,
    params: tuple[int, ...],
) -> pl.DataFrame:
    """One pass with text fetched as bytes (decoded by polars, not per value in Python).

    Text and blobs both arrive as bytes, and polars reads ints among floats as floats, so a cheap
    `typeof` probe tells which byte columns are blobs and which columns mix storage classes; only
    the mixed ones are re-read split by storage class.
    """
    query = _select(table, [quote_ident(name) for name in names], rowid_sql, where)
    rowid_parts: list[pl.Series] = []
    parts: dict[str, list[pl.Series | None]] = {name: [] for name in names}
    for columns in _fetch_columns(conn, query, params, text_as_bytes=True):
        rowid_parts.append(_rowids(columns[0], sum(map(len, rowid_parts))))
        for name, values in zip(names, columns[1:]):
            parts[name].append(_homogeneous(name, values))
    rowids = _concat(rowid_parts, pl.Series(ROWID, [], dtype=pl.Int64))
    series = {name: _joined(name, parts.pop(name)) for name in names}
    byte_columns = [name for name, values in series.items() if values is not None and values.dtype == pl.Binary]
    reals = [name for name, values in series.items() if values is not None and values.dtype == pl.Float64]
    blobs, mixed = _storage_probe(conn, table, byte_columns, reals, where, params)
    mixed |= {name for name, values in series.items() if values is None}
    raw = {}
    for name, values in series.items():
        if name in mixed or values is None:
            continue
        is_text = name in byte_columns and name not in blobs
        raw[name] = _text_from_bytes(table, name, values) if is_text else _as_raw(name, values)
    if mixed:
        split = _read_split(conn, table, [name for name in names if name in mixed], rowid_sql, where, params,
                            text_as_bytes=True)
        raw.update({name: split[name] for name in mixed})
    return pl.DataFrame([rowids, *[raw[name] for name in names]])


def _fetch_columns(
    conn: sqlite3.Connection, query: str, params: tuple[int, ...], text_as_bytes: bool
) -> Iterator[list[tuple[object, ...]]]:
    """The query's rows, FETCH_ROWS at a time, each batch as columns: memory stays flat in the table size."""
    previous_factory = conn.text_factory
    if text_as_bytes:
        conn.text_factory = bytes
    try:
        cursor = conn.execute(query, params)
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield list(zip(*rows))
    finally:
        conn.text_factory = previous_factory


def _joined(name: str, parts: list[pl.Series | None]) -> pl.Series | None:
    """The batches of one column as one series, or None when they do not share one storage type."""
    if any(part is None for part in parts):
        return None
    dtypes = {part.dtype for part in parts if part is not None and part.dtype != pl.Null}
    if len(dtypes) > 1:
        return None
    dtype = dtypes.pop() if dtypes else pl.Null
    return _concat([part.cast(dtype) for part in parts if part is not None], pl.Series(name, [], dtype=dtype))


def _concat(parts: list[pl.Series], empty: pl.Series) -> pl.Series:
    if not parts:
        return empty
    return parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=True)


def _storage_probe(
    conn: sqlite3.Connection,
    table: str,
    byte_columns: Sequence[str],
    reals: Sequence[str],
    where: str,
    params: tuple[int, ...],
) -> tuple[set[str], set[str]]:
    """(byte columns holding blobs only, columns mixing storage classes) among byte and float columns.

    A first scan asks only whether any blob or any integer among reals exists (usually not); only
    then does a second scan name the columns.
    """
    if not byte_columns and not reals:
        return set(), set()
    tests = [f"typeof({quote_ident(name)}) = 'blob'" for name in byte_columns]
    tests += [f"typeof({quote_ident(name)}) = 'integer'" for name in reals]
    condition = f"{where} AND ({' OR '.join(tests)})" if where else f" WHERE {' OR '.join(tests)}"
    (found,) = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {quote_ident(table)}{condition})", params).fetchone()
    if not found:
        return set(), set()
    probes = [
        f"max(typeof({quote_ident(name)}) = 'blob'), max(typeof({quote_ident(name)}) = 'text')"
        for name in byte_columns
    ]
    probes += [f"max(typeof({quote_ident(name)}) = 'integer')" for name in reals]
    flags = conn.execute(f"SELECT {', '.join(probes)} FROM {quote_ident(table)}{where}", params).fetchone()
    blobs, mixed = set(), set()
    for position, name in enumerate(byte_columns):
        has_blob, has_text = flags[2 * position], flags[2 * position + 1]
        if has_blob and has_text:
            mixed.add(name)
        elif has_blob:
            blobs.add(name)
    integer_flags = flags[2 * len(byte_columns) :]
    mixed.update(name for name, flag in zip(reals, integer_flags) if flag)
    return blobs, mixed


def _text_from_bytes(table: str, name: str, values: pl.Series) -> pl.Series:
    """A raw Struct series from text fetched as bytes: valid UTF-8 in `s`, any other bytes kept in `b`."""
    text, invalid = _decode_text(values)
    if invalid.null_count() < invalid.len():
        log.info("table %s column %s holds text that is not valid UTF-8; keeping its bytes", table, name)
    frame = pl.DataFrame({"s": text, "b": invalid})
    storage = pl.when(pl.col("s").is_null() & pl.col("b").is_null()).then(pl.lit("null")).otherwise(pl.lit("text"))
    return frame.select(
        pl.struct(
            storage.alias("storage"),
            pl.lit(None, pl.Int64).alias("i"),
            pl.lit(None, pl.Float64).alias("r"),
            pl.col("s"),
            pl.col("b"),
        ).alias(name)
    ).to_series()


def _rowids(values: Sequence[object], before: int) -> pl.Series:
    """A batch's rowids; for a WITHOUT ROWID table, row positions continuing after `before` rows."""
    if values and values[0] is None:
        return pl.Series(ROWID, range(before + 1, before + len(values) + 1), dtype=pl.Int64)
    return pl.Series(ROWID, values, dtype=pl.Int64)


def _homogeneous(name: str, values: Sequence[object]) -> pl.Series | None:
    try:
        return pl.Series(name, values, strict=True)
    except TypeError:
        return None


def _as_raw(name: str, values: pl.Series) -> pl.Series:
    if values.dtype == RAW_DTYPE:
        return values.alias(name)
    if values.dtype == pl.Null:
        return raw_series(name, "null", values)
    return raw_series(name, _SERIES_STORAGE[values.dtype], values)


def _read_split(
    conn: sqlite3.Connection,
    table: str,
    names: Sequence[str],
    rowid_sql: str | None,
    where: str,
    params: tuple[int, ...],
    text_as_bytes: bool,
) -> pl.DataFrame:
    """Read each column as four storage-specific columns (CASE on typeof), for mixed columns."""
    expressions = []
    for name in names:
        quoted = quote_ident(name)
        expressions += [
            f"CASE WHEN typeof({quoted}) = '{storage}' THEN {quoted} END" for storage in VALUE_FIELDS
        ]
    query = _select(table, expressions, rowid_sql, where)
    parts: dict[str, list[pl.Series]] = {name: [] for name in (ROWID, *names)}
    for columns in _fetch_columns(conn, query, params, text_as_bytes):
        parts[ROWID].append(_rowids(columns[0], sum(map(len, parts[ROWID]))))
        for position, name in enumerate(names):
            i, r, s, b = columns[1 + 4 * position : 5 + 4 * position]
            parts[name].append(_split_struct(name, i, r, s, b, text_as_bytes))
    if not parts[ROWID]:
        empty = [()] * 4
        return pl.DataFrame([pl.Series(ROWID, [], dtype=pl.Int64),
                             *[_split_struct(name, *empty, text_as_bytes) for name in names]])
    return pl.DataFrame([_concat(parts[name], pl.Series(name, [])) for name in (ROWID, *names)])


def _split_struct(
    name: str,
    i: Sequence[object],
    r: Sequence[object],
    s: Sequence[object],
    b: Sequence[object],
    text_as_bytes: bool,
) -> pl.Series:
    text, invalid_text = _decode_text(s) if text_as_bytes else (pl.Series(s, dtype=pl.String), None)
    frame = pl.DataFrame(
        {
            "i": pl.Series(i, dtype=pl.Int64),
            "r": pl.Series(r, dtype=pl.Float64),
            "s": text,
            "b": pl.Series(b, dtype=pl.Binary),
            "invalid": invalid_text if invalid_text is not None else pl.Series([None] * len(i), dtype=pl.Binary),
        }
    )
    storage = (
        pl.when(pl.col("i").is_not_null()).then(pl.lit("integer"))
        .when(pl.col("r").is_not_null()).then(pl.lit("real"))
        .when(pl.col("s").is_not_null() | pl.col("invalid").is_not_null()).then(pl.lit("text"))
        .when(pl.col("b").is_not_null()).then(pl.lit("blob"))
        .otherwise(pl.lit("null"))
    )
    return frame.select(
        pl.struct(
            storage.alias("storage"),
            pl.col("i"),
            pl.col("r"),
            pl.col("s"),
            pl.coalesce(pl.col("b"), pl.col("invalid")).alias("b"),
        ).alias(name)
    ).to_series()


def _decode_text(values: Sequence[object]) -> tuple[pl.Series, pl.Series]:
    """Text read as bytes: valid UTF-8 becomes String; the rest stays bytes (for the `b` field)."""
    raw = pl.Series(values, dtype=pl.Binary)
    try:
        return raw.cast(pl.String), pl.Series([None] * len(raw), dtype=pl.Binary)
    except pl.exceptions.PolarsError:
        pass
    # Only a column that really holds invalid UTF-8 gets here; polars has no lenient decoder.
    decoded = [_utf8_or_none(value) for value in values]
    text = pl.Series(decoded, dtype=pl.String)
    invalid = pl.Series(
        [value if value is not None and text_value is None else None for value, text_value in zip(values, decoded)],
        dtype=pl.Binary,
    )
    return text, invalid


def _utf8_or_none(value: object) -> str | None:
    if value is None:
        return None
    try:
        return bytes(value).decode("utf-8")  # type: ignore[arg-type]
    except UnicodeDecodeError:
        return None
