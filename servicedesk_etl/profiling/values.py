"""Raw SQLite values with their storage class (`typeof`), never coerced by the declared type.

`read_table` pulls a table into polars in one pass: a rowid column (`ROWID`), then one Struct column per
source column with the fields `storage`, `i`, `r`, `s`, `b` (see `RAW_DTYPE`). Exactly one value
field is set per row, the one matching `storage`; all are null when `storage == 'null'`. Text that
is not valid UTF-8 keeps `storage == 'text'` and carries its raw bytes in `b` (with `s` null).
"""

from __future__ import annotations

import gc
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import polars as pl

from servicedesk_etl.sqlite_source import database_file, quote_ident, readonly_uri, row_batches, table_columns

log = logging.getLogger(__name__)

# NUL cannot appear in a SQLite identifier, so no source column can be called this (`_rowid` can).
ROWID = "\x00rowid"
STORAGE_CLASSES = ("null", "integer", "real", "text", "blob")
VALUE_FIELDS = {"integer": "i", "real": "r", "text": "s", "blob": "b"}
FIELD_DTYPES = {"i": pl.Int64, "r": pl.Float64, "s": pl.String, "b": pl.Binary}
RAW_DTYPE = pl.Struct({"storage": pl.String, **FIELD_DTYPES})
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
    """Every row: a `ROWID` Int64 column, then one Struct column per source column.

    Struct fields: storage (String: 'null'|'integer'|'real'|'text'|'blob'), i (Int64), r (Float64),
    s (String: text values that are valid UTF-8), b (Binary: blob values, and raw bytes of text
    that is not valid UTF-8). For a WITHOUT ROWID table `ROWID` is the 1-based row position in
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
    rowid_sql = rowid_expression(conn, table, names)
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


def rowid_span(conn: sqlite3.Connection, table: str, names: Sequence[str]) -> int | None:
    """How many rows the table's rowids leave room for (at least its row count, found without a scan),
    or None for a WITHOUT ROWID table."""
    rowid_sql = rowid_expression(conn, table, names)
    if rowid_sql is None:
        return None
    quoted = quote_ident(table)  # one aggregate per query: SQLite then reads one end of the rowid b-tree
    low, high = conn.execute(
        f"SELECT (SELECT min({rowid_sql}) FROM {quoted}), (SELECT max({rowid_sql}) FROM {quoted})"
    ).fetchone()
    return 0 if low is None else high - low + 1


def rowid_expression(conn: sqlite3.Connection, table: str, names: Sequence[str]) -> str | None:
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

    Each batch of a column becomes one typed series, or, when the batch mixes storage classes, the
    fields `i`, `r`, `x` (bytes) and `h` (hex text) split from the fetched values. From a file, the
    rows come on a connection of their own (`sqlite_source.row_batches`, much cheaper per value) with
    text cast to bytes and blobs to their hex (`_tagged`), so each value's type tells its class.
    Otherwise text and blobs both arrive as bytes: a cheap probe tells which byte columns hold blobs,
    and only a column mixing blobs with text is read again, split by storage class in SQL.
    """
    database = database_file(conn)
    if database is not None and not conn.in_transaction and _utf8_encoded(conn):
        query = _select(table, [_tagged(quote_ident(name)) for name in names], rowid_sql, where)
        batches: Iterator[list[tuple[object, ...]]] = (
            list(zip(*rows)) for rows in row_batches(database, query, params, FETCH_ROWS)
        )
        any_blob: Callable[[], bool] = lambda: False  # noqa: E731 - blobs arrive tagged, as hex
    else:
        any_blob = _blob_probe(conn, table, names, where, params)
        query = _select(table, [quote_ident(name) for name in names], rowid_sql, where)
        batches = _fetch_columns(conn, query, params, text_as_bytes=True)
    rowid_parts: list[pl.Series] = []
    parts: dict[str, list[_Batch]] = {name: [] for name in names}
    with _no_cycle_collection():
        for columns in batches:
            rowid_parts.append(_rowids(columns[0], sum(map(len, rowid_parts))))
            for name, values in zip(names, columns[1:]):
                parts[name].append((len(values), _fields(values)))
            del columns
    rowids = _concat(rowid_parts, pl.Series(ROWID, [], dtype=pl.Int64))
    fields = {name: _joined_fields(parts.pop(name)) for name in names}
    byte_columns = [name for name, found in fields.items() if "x" in found]
    blobs, mixed = _storage_probe(conn, table, byte_columns, where, params) if byte_columns and any_blob() else (set(), set())
    raw = {
        name: _raw_struct(table, name, found, rowids.len(), name in blobs)
        for name, found in fields.items()
        if name not in mixed
    }
    if mixed:
        split = _read_split(conn, table, [name for name in names if name in mixed], rowid_sql, where, params,
                            text_as_bytes=True)
        raw.update({name: split[name] for name in mixed})
    return pl.DataFrame([rowids, *[raw[name] for name in names]])


def _tagged(column: str) -> str:
    """The column with its class in its value's type: text as a blob (its bytes, valid UTF-8 or not),
    a blob as the text of its hex digits; numbers and NULL as they are. (Blobs sort after text.)"""
    return (
        f"(CASE WHEN {column} >= '' AND {column} < X'' THEN CAST({column} AS BLOB)"
        f" WHEN {column} >= X'' THEN hex({column}) ELSE {column} END)"
    )


def _utf8_encoded(conn: sqlite3.Connection) -> bool:
    """Whether the database stores text as UTF-8 (a text cast to a blob gives it in that encoding)."""
    return conn.execute("PRAGMA encoding").fetchone()[0] == "UTF-8"


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector paused: the millions of row tuples a read allocates trigger it
    again and again (a fifth of the read time), and they hold no reference cycles to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _fields(values: Sequence[object]) -> dict[str, pl.Series]:
    """A batch of one column as its non-empty value fields: `i` (Int64), `r` (Float64), `x` (bytes),
    `h` (text: the hex of blobs, as `_tagged` gives them).

    A batch of one storage class is one typed series built by polars; only a batch that mixes
    classes (or hides integers among reals, which polars would read as floats) is split per value.
    """
    series = _homogeneous(values)
    if series is not None and not (series.dtype == pl.Float64 and int in set(map(type, values))):
        field = _FIELD_OF_DTYPE.get(series.dtype)
        return {field: series} if field is not None else {}
    kinds = list(map(type, values))
    split = {
        "i": pl.Series([v if k is int else None for v, k in zip(values, kinds)], dtype=pl.Int64),
        "r": pl.Series([v if k is float else None for v, k in zip(values, kinds)], dtype=pl.Float64),
        "x": pl.Series([v if k is bytes else None for v, k in zip(values, kinds)], dtype=pl.Binary),
        "h": pl.Series([v if k is str else None for v, k in zip(values, kinds)], dtype=pl.String),
    }
    return {field: values for field, values in split.items() if values.null_count() < values.len()}


_FIELD_OF_DTYPE = {pl.Int64: "i", pl.Float64: "r", pl.Binary: "x", pl.String: "h"}
_FIELD_DTYPE = {"i": pl.Int64, "r": pl.Float64, "x": pl.Binary, "h": pl.String}


_Batch = tuple[int, dict[str, pl.Series]]


def _joined_fields(parts: list[_Batch]) -> dict[str, pl.Series]:
    """The batches of one column as whole-column fields (nulls where a batch lacks a field)."""
    present = [field for field in _FIELD_DTYPE if any(field in found for _, found in parts)]
    if len(parts) == 1:
        return parts[0][1]
    return {
        field: pl.concat(
            [found[field] if field in found else _nulls(rows, _FIELD_DTYPE[field]) for rows, found in parts],
            rechunk=True,
        )
        for field in present
    }


def _nulls(rows: int, dtype: pl.DataType) -> pl.Series:
    return pl.repeat(None, rows, dtype=dtype, eager=True)


def _raw_struct(table: str, name: str, fields: dict[str, pl.Series], rows: int, blobs: bool) -> pl.Series:
    """The raw Struct series of a column from its fields: bytes (`x`) are blobs when `blobs`, else text;
    hex text (`h`) is always blobs."""
    x = fields.get("x")
    text, invalid = (None, None) if x is None or blobs else _decode_text(x)
    if invalid is not None and invalid.null_count() < invalid.len():
        log.info("table %s column %s holds text that is not valid UTF-8; keeping its bytes", table, name)
    tagged = fields.get("h")
    blob = x if blobs else None if tagged is None else tagged.str.decode("hex")
    if invalid is not None and invalid.null_count() == invalid.len():
        invalid = None
    found = {"i": fields.get("i"), "r": fields.get("r"), "s": text, "blob": blob, "bad": invalid}
    present = {field: values.alias(field) for field, values in found.items() if values is not None}
    if not present:
        present = {"bad": _nulls(rows, pl.Binary).alias("bad")}
    frame = pl.DataFrame(list(present.values()))
    storage = pl.lit("null")
    for field, storage_class in (("bad", "text"), ("blob", "blob"), ("s", "text"), ("r", "real"), ("i", "integer")):
        if field in present:
            storage = pl.when(pl.col(field).is_not_null()).then(pl.lit(storage_class)).otherwise(storage)
    byte_fields = [pl.col(field) for field in ("blob", "bad") if field in present]
    b = pl.coalesce(byte_fields) if len(byte_fields) > 1 else byte_fields[0] if byte_fields else pl.lit(None, pl.Binary)
    values = {"i": pl.col("i"), "r": pl.col("r"), "s": pl.col("s"), "b": b}
    return frame.select(
        pl.struct(
            storage.alias("storage"),
            *[
                (values[field] if field in present or field == "b" else pl.lit(None, dtype)).alias(field)
                for field, dtype in FIELD_DTYPES.items()
            ],
        ).alias(name)
    ).to_series()


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


def _concat(parts: list[pl.Series], empty: pl.Series) -> pl.Series:
    if not parts:
        return empty
    return parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=True)


def _blob_probe(
    conn: sqlite3.Connection, table: str, names: Sequence[str], where: str, params: tuple[int, ...]
) -> Callable[[], bool]:
    """A call answering whether any of the columns holds a blob (usually not).

    SQLite orders every blob after every other value, so `x >= x''` is true exactly for blobs: a
    cheaper test than `typeof(x) = 'blob'`. The scan runs in SQLite without the GIL, so on a file
    it runs on its own connection in a thread while the caller reads the rows.
    """
    if not names:
        return lambda: False
    tests = " OR ".join(f"{quote_ident(name)} >= x''" for name in names)
    condition = f"{where} AND ({tests})" if where else f" WHERE {tests}"
    query = f"SELECT EXISTS (SELECT 1 FROM {quote_ident(table)}{condition})"
    database = database_file(conn)
    if database is None or conn.in_transaction:
        return lambda: bool(conn.execute(query, params).fetchone()[0])
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-probe")
    answer = pool.submit(_ask_file, database, query, params)
    pool.shutdown(wait=False)
    return lambda: bool(answer.result())


def _ask_file(database: str, query: str, params: tuple[int, ...]) -> object:
    conn = sqlite3.connect(readonly_uri(database), uri=True)
    try:
        return conn.execute(query, params).fetchone()[0]
    finally:
        conn.close()


def _storage_probe(
    conn: sqlite3.Connection,
    table: str,
    byte_columns: Sequence[str],
    where: str,
    params: tuple[int, ...],
) -> tuple[set[str], set[str]]:
    """(byte columns holding blobs only, byte columns mixing blobs with text), once a blob is known to exist."""
    probes = [
        f"max(typeof({quote_ident(name)}) = 'blob'), max(typeof({quote_ident(name)}) = 'text')"
        for name in byte_columns
    ]
    flags = conn.execute(f"SELECT {', '.join(probes)} FROM {quote_ident(table)}{where}", params).fetchone()
    blobs, mixed = set(), set()
    for position, name in enumerate(byte_columns):
        has_blob, has_text = flags[2 * position], flags[2 * position + 1]
        if has_blob and has_text:
            mixed.add(name)
        elif has_blob:
            blobs.add(name)
    return blobs, mixed


def _rowids(values: Sequence[object], before: int) -> pl.Series:
    """A batch's rowids; for a WITHOUT ROWID table, row positions continuing after `before` rows."""
    if values and values[0] is None:
        return pl.Series(ROWID, range(before + 1, before + len(values) + 1), dtype=pl.Int64)
    return pl.Series(ROWID, values, dtype=pl.Int64)


def _homogeneous(values: Sequence[object]) -> pl.Series | None:
    try:
        return pl.Series(values, strict=True)
    except TypeError:
        return None


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


def _decode_text(values: Sequence[object] | pl.Series) -> tuple[pl.Series, pl.Series]:
    """Text read as bytes: valid UTF-8 becomes String; the rest stays bytes (for the `b` field)."""
    raw = values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.Binary)
    parts = _decoded_parts(raw)
    if len(parts) == 1:
        return parts[0]
    return pl.concat([text for text, _ in parts]), pl.concat([invalid for _, invalid in parts])


_DECODE_PER_VALUE_ROWS = 64


def _decoded_parts(raw: pl.Series) -> list[tuple[pl.Series, pl.Series]]:
    """(text, invalid bytes) for consecutive slices of `raw`: polars decodes a slice at once unless it
    holds invalid UTF-8; then its halves are tried, down to a few values decoded one by one."""
    try:
        return [(raw.cast(pl.String), _nulls(raw.len(), pl.Binary))]
    except pl.exceptions.PolarsError:
        pass
    if raw.len() > _DECODE_PER_VALUE_ROWS:
        half = raw.len() // 2
        return _decoded_parts(raw.slice(0, half)) + _decoded_parts(raw.slice(half))
    # Polars has no lenient decoder: only these few values are decoded in Python.
    listed = raw.to_list()
    decoded = [_utf8_or_none(value) for value in listed]
    text = pl.Series(decoded, dtype=pl.String)
    invalid = pl.Series(
        [value if value is not None and text_value is None else None for value, text_value in zip(listed, decoded)],
        dtype=pl.Binary,
    )
    return [(text, invalid)]


def _utf8_or_none(value: object) -> str | None:
    if value is None:
        return None
    try:
        return bytes(value).decode("utf-8")  # type: ignore[arg-type]
    except UnicodeDecodeError:
        return None
