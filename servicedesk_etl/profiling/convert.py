"""The one implementation of every conversion a plan can ask for.

The profiler runs it on distinct values to measure confidence; the cleaner runs it on every row to
execute the plan. `convert_column(raw, column_plan)` takes a raw Struct series (see
`profiling.values`) and returns storage-ready values with a per-row outcome, operation and reason.

Storage-ready values: bigint -> Int64; numeric and double precision -> Float64; boolean -> Int64
0/1; date -> `YYYY-MM-DD`; timestamp -> `YYYY-MM-DD HH:MM:SS[.ffffff]`; timestamptz -> the same
in UTC with `+00:00`; text -> String; bytea -> Binary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import polars as pl

from servicedesk_etl.profiling.dates import (
    DATE_FORMATS,
    canonical_shape,
    format_date,
    format_timestamp,
    is_midnight,
    read_date,
)
from servicedesk_etl.profiling.numbers import BOOLEAN_FORMATS, NUMBER_FORMATS, read_boolean, read_number
from servicedesk_etl.profiling.plan import ColumnPlan, Conversion
from servicedesk_etl.profiling.values import RAW_DTYPE

OUTCOMES = ("null", "kept", "converted", "nulled", "failed")
TARGET_FAMILY = {
    "bigint": "number",
    "numeric": "number",
    "double precision": "number",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "date",
    "timestamptz": "date",
    "text": "text",
    "bytea": "bytes",
}
VALUE_DTYPE = {
    "bigint": pl.Int64,
    "numeric": pl.Float64,
    "double precision": pl.Float64,
    "boolean": pl.Int64,
    "date": pl.String,
    "timestamp": pl.String,
    "timestamptz": pl.String,
    "text": pl.String,
    "bytea": pl.Binary,
}


@dataclass(frozen=True)
class Format:
    """A registered input format: the id a plan lists, the target family it feeds, a description."""

    id: str
    family: str
    description: str
    example: str


_TEXT_FORMATS = (
    Format("text", "text", "text storage (invalid UTF-8 decoded per the plan)", "Open"),
    Format("integer_as_text", "text", "integer storage written as text", "42"),
    Format("real_as_text", "text", "real storage written as text", "12.3"),
    Format("blob_as_text", "text", "blob decoded as UTF-8, else per the plan", "file\x96name.txt"),
)
_BYTES_FORMATS = (
    Format("blob", "bytes", "blob storage", "\\xffd8"),
    Format("text_as_bytes", "bytes", "text encoded as UTF-8 bytes", "abc"),
)

FORMATS: dict[str, Format] = {
    **{f.id: Format(f.id, "date", f.description, f.example) for f in DATE_FORMATS.values()},
    **{f.id: Format(f.id, "number", f.description, f.example) for f in NUMBER_FORMATS.values()},
    **{f.id: Format(f.id, "boolean", f.description, f.example) for f in BOOLEAN_FORMATS.values()},
    **{f.id: f for f in (*_TEXT_FORMATS, *_BYTES_FORMATS)},
}
TEXT_FORMAT_IDS = tuple(f.id for f in _TEXT_FORMATS)
BYTES_FORMAT_IDS = tuple(f.id for f in _BYTES_FORMATS)


@dataclass(frozen=True)
class ConvertedColumn:
    values: pl.Series
    outcome: pl.Series
    operation: pl.Series
    reason: pl.Series

    def outcome_counts(self) -> dict[str, int]:
        counts = self.outcome.value_counts()
        return {row[0]: row[1] for row in counts.iter_rows()}


@dataclass(frozen=True)
class _Attempt:
    format_id: str
    applies: pl.Expr
    value: pl.Expr
    kept: pl.Expr
    invalid_reason: pl.Expr
    operation: pl.Expr | None = None
    kept_when_text_unchanged: bool = False


def convert_column(raw: pl.Series, column: ColumnPlan) -> ConvertedColumn:
    """Convert raw values per the column's plan; every row gets an outcome, failures a reason."""
    fields = raw.cast(RAW_DTYPE).struct.unnest().with_columns(t=pl.col("s").str.strip_chars())
    return convert_fields(fields, column)


def convert_fields(fields: pl.DataFrame, column: ColumnPlan) -> ConvertedColumn:
    """`convert_column` on raw values already unnested: columns `storage`, `i`, `r`, `s`, `b` and the
    stripped text `t` (further columns are ignored)."""
    _check_plan(column)
    frame = fields
    if column.target_type == "text":
        frame = _with_decoded_bytes(frame, column.conversion.invalid_utf8)
    present = frozenset(frame["storage"].unique().to_list())
    first, kept, results = _expressions(column.target_type, column.conversion, present)
    # The in-memory engine: the default one costs milliseconds to start, more than most columns take.
    result = frame.lazy().with_columns(first).with_columns(kept).select(results).collect(engine="in-memory")
    dtype = VALUE_DTYPE[column.target_type]
    return ConvertedColumn(
        values=result["value"].cast(dtype).alias(column.name),
        outcome=result["outcome"].alias("outcome"),
        operation=result["operation"].alias("operation"),
        reason=result["reason"].alias("reason"),
    )


@lru_cache(maxsize=512)
def _expressions(
    target_type: str, conversion: Conversion, storages: frozenset[str]
) -> tuple[list[pl.Expr], list[pl.Expr], list[pl.Expr]]:
    """The expressions of a plan's conversion for values of the given storage classes, built once.

    A format that cannot apply to any of those storage classes is left out: it would never match.
    """
    column = ColumnPlan("column", "column", "", target_type, conversion, 1.0)
    attempts = [
        attempt
        for attempt in _ATTEMPTS[TARGET_FAMILY[target_type]](column)
        if _applicable_storages(attempt.format_id) & storages
    ]
    first, kept = _staged(attempts)
    return first, kept, _result_columns(column, len(attempts))


def _applicable_storages(format_id: str) -> frozenset[str]:
    """The storage classes a format's `applies` can be true for."""
    family = FORMATS[format_id].family
    if format_id in _SOURCE_STORAGE:
        return frozenset({_SOURCE_STORAGE[format_id]})
    if (family == "date" and DATE_FORMATS[format_id].pattern is None) or format_id == "one_zero":
        return frozenset({"integer", "real", "text"})
    return frozenset({"text"})


_SOURCE_STORAGE = {
    "integer": "integer",
    "real": "real",
    "integer_as_text": "integer",
    "real_as_text": "real",
    "blob_as_text": "blob",
    "blob": "blob",
}


def convert_distinct(raw: pl.Series, column: ColumnPlan) -> ConvertedColumn:
    """`convert_column` run once per distinct raw value, then gathered back to every row.

    The same result as `convert_column(raw, column)` (every conversion depends on the value alone),
    cheaper when values repeat, as dates and statuses do.
    """
    # The sign as a key too: -0.0 equals 0.0 as a value but converts to different text.
    keys = raw.cast(RAW_DTYPE).struct.unnest().with_columns(negative=(1.0 / pl.col("r")) < 0)
    groups = keys.with_row_index("row").group_by([*RAW_DTYPE.to_schema(), "negative"]).agg(pl.col("row"))
    converted = convert_column(raw.gather(groups["row"].list.first()), column)
    positions = groups.select("row").with_row_index("distinct").explode("row").sort("row")["distinct"]
    return ConvertedColumn(
        values=converted.values.gather(positions),
        outcome=converted.outcome.gather(positions),
        operation=converted.operation.gather(positions),
        reason=converted.reason.gather(positions),
    )


def _staged(attempts: list[_Attempt]) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Each attempt's applies / value / reason / operation as columns, so each is computed once; then
    whether the value is kept as is."""
    first = []
    for k, attempt in enumerate(attempts):
        operation = attempt.operation if attempt.operation is not None else pl.lit(attempt.format_id)
        first += [
            attempt.applies.fill_null(False).alias(f"__a{k}"),
            attempt.value.alias(f"__v{k}"),
            attempt.invalid_reason.cast(pl.String).alias(f"__r{k}"),
            operation.cast(pl.String).alias(f"__o{k}"),
        ]
    kept = [
        (
            (pl.col("storage") == "text") & (pl.col("s") == pl.col(f"__v{k}"))
            if attempt.kept_when_text_unchanged
            else attempt.kept
        ).fill_null(False).alias(f"__k{k}")
        for k, attempt in enumerate(attempts)
    ]
    return first, kept


def _check_plan(column: ColumnPlan) -> None:
    family = TARGET_FAMILY.get(column.target_type)
    if family is None:
        raise ValueError(f"column {column.name!r}: unknown target type {column.target_type!r}")
    for format_id in column.conversion.formats:
        spec = FORMATS.get(format_id)
        if spec is None:
            raise ValueError(f"column {column.name!r}: unknown format {format_id!r}")
        if spec.family != family:
            raise ValueError(f"column {column.name!r}: format {format_id!r} cannot produce {column.target_type}")


def _result_columns(column: ColumnPlan, attempts: int) -> list[pl.Expr]:
    marker = _null_marker_operation(column.conversion.null_markers)
    value, operation, kept, invalid = _first_match(attempts)
    is_null = pl.col("storage") == "null"
    nulled = marker.is_not_null()
    converted = value.is_not_null()
    listed = ", ".join(column.conversion.formats) or "none"
    no_match = pl.format("{} value matches none of the planned formats ({})", pl.col("storage"), pl.lit(listed))
    outcome = (
        pl.when(is_null).then(pl.lit("null"))
        .when(nulled).then(pl.lit("nulled"))
        .when(converted & kept).then(pl.lit("kept"))
        .when(converted).then(pl.lit("converted"))
        .otherwise(pl.lit("failed"))
    )
    return [
        pl.when(~is_null & ~nulled).then(value).alias("value"),
        outcome.alias("outcome"),
        pl.when(is_null).then(None).when(nulled).then(marker).otherwise(operation).cast(pl.String).alias("operation"),
        pl.when(is_null | nulled | converted).then(None)
        .when(operation.is_not_null()).then(invalid)
        .otherwise(no_match).cast(pl.String).alias("reason"),
    ]


def _null_marker_operation(markers: tuple[str, ...]) -> pl.Expr:
    """'empty_string' / 'whitespace' / 'null_marker' for text values the plan declares NULL."""
    text = pl.col("storage").eq("text") & pl.col("s").is_not_null()
    named = [marker.strip().lower() for marker in markers if marker.strip()]
    expression = pl.lit(None, pl.String)
    if "" in {marker.strip() for marker in markers}:
        expression = (
            pl.when(text & (pl.col("s") == "")).then(pl.lit("empty_string"))
            .when(text & (pl.col("t") == "")).then(pl.lit("whitespace"))
        )
    if named:
        expression = pl.coalesce(
            expression,
            pl.when(text & pl.col("t").str.to_lowercase().is_in(named)).then(pl.lit("null_marker")),
        )
    return expression


def _first_match(attempts: int) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """The first planned format whose shape applies decides a value; later ones are not tried."""
    if not attempts:
        return pl.lit(None), pl.lit(None, pl.String), pl.lit(False), pl.lit(None, pl.String)
    chains: dict[str, pl.Expr] = {}
    for k in range(attempts):
        applies = pl.col(f"__a{k}")
        for part in ("v", "o", "k", "r"):
            column = pl.col(f"__{part}{k}")
            chains[part] = pl.when(applies).then(column) if k == 0 else chains[part].when(applies).then(column)
    kept = chains["k"].otherwise(pl.lit(False)).fill_null(False)
    return chains["v"], chains["o"], kept, chains["r"]


def _number_attempts(column: ColumnPlan) -> list[_Attempt]:
    attempts = []
    for format_id in column.conversion.formats:
        applies, whole, real = read_number(format_id)
        if column.target_type == "bigint":
            value = whole
            reason = pl.lit(f"{format_id}: not a whole number within the bigint range")
            kept = pl.lit(format_id == "integer")
        else:
            value = pl.when(real.is_finite()).then(real)
            reason = pl.lit(f"{format_id}: not a finite number")
            kept = pl.lit(format_id in ("integer", "real"))
        attempts.append(_Attempt(format_id, applies, value, kept, reason))
    return attempts


def _boolean_attempts(column: ColumnPlan) -> list[_Attempt]:
    attempts = []
    for format_id in column.conversion.formats:
        applies, value = read_boolean(format_id)
        kept = (pl.col("storage") == "integer") & pl.col("i").is_in([0, 1])
        attempts.append(_Attempt(format_id, applies, value, kept, pl.lit(f"{format_id}: not a boolean")))
    return attempts


def _date_attempts(column: ColumnPlan) -> list[_Attempt]:
    attempts = []
    for format_id in column.conversion.formats:
        applies, instant = read_date(format_id)
        if column.target_type == "date":
            value = pl.when(is_midnight(instant)).then(format_date(instant))
            reason = (
                pl.when(instant.is_null()).then(pl.lit(f"{format_id}: not a valid date"))
                .otherwise(pl.lit(f"{format_id}: has a time of day but the column is planned as date"))
            )
        else:
            value = _formatted_timestamp(format_id, instant, with_zone=column.target_type == "timestamptz")
            reason = pl.lit(f"{format_id}: not a valid date and time")
        attempts.append(_Attempt(format_id, applies, value, pl.lit(False), reason, kept_when_text_unchanged=True))
    return attempts


def _formatted_timestamp(format_id: str, instant: pl.Expr, with_zone: bool) -> pl.Expr:
    """`format_timestamp(instant)`; a valid ISO text already written `YYYY-MM-DD[ HH:MM:SS]` is its
    own formatting (plus the missing time and zone), so only the other values are formatted."""
    canonical = canonical_shape(format_id)
    if canonical is None:
        return format_timestamp(instant, with_zone)
    suffix = (" 00:00:00" if format_id == "iso_date" else "") + ("+00:00" if with_zone else "")
    written = pl.col("t") + pl.lit(suffix) if suffix else pl.col("t")
    others = format_timestamp(pl.when(~canonical).then(instant), with_zone)
    return pl.when(canonical & instant.is_not_null()).then(written).otherwise(others)


def _text_attempts(column: ColumnPlan) -> list[_Attempt]:
    conversion = column.conversion
    sources: dict[str, tuple[pl.Expr, pl.Expr]] = {
        "text": (pl.col("storage") == "text", pl.coalesce(pl.col("s"), pl.col("bt"))),
        "integer_as_text": (pl.col("storage") == "integer", pl.col("i").cast(pl.String)),
        "real_as_text": (pl.col("storage") == "real", pl.col("r").cast(pl.String)),
        "blob_as_text": (pl.col("storage") == "blob", pl.col("bt")),
    }
    operation = _text_operation(column)
    attempts = []
    for format_id in conversion.formats:
        applies, base = sources[format_id]
        value, reason = _clean_text(base, conversion)
        attempts.append(_Attempt(format_id, applies, value, pl.lit(False), reason, operation, True))
    return attempts


def _clean_text(base: pl.Expr, conversion: Conversion) -> tuple[pl.Expr, pl.Expr]:
    """Apply the plan's NUL and newline rules; text still holding NUL cannot be stored in PostgreSQL."""
    text = base
    if conversion.strip_nul:
        text = text.str.replace_all("\x00", "", literal=True)
    if conversion.normalize_newlines:
        text = text.str.replace_all("\r\n", "\n", literal=True)
    undecodable = pl.lit("bytes are not valid UTF-8 and the plan quarantines them")
    reason = (
        pl.when(base.is_null()).then(undecodable)
        .otherwise(pl.lit("NUL byte in text and the plan does not strip NUL"))
    )
    return pl.when(~text.str.contains("\x00", literal=True)).then(text), reason


def _text_operation(column: ColumnPlan) -> pl.Expr:
    """The operations applied to a text value, e.g. 'text', 'strip_nul', 'decode_cp1252+crlf_to_lf'."""
    conversion = column.conversion
    base = (
        pl.when(pl.col("storage") == "text")
        .then(pl.when(pl.col("s").is_null()).then(pl.col("bop")).otherwise(pl.lit("text")))
        .when(pl.col("storage") == "integer").then(pl.lit("integer_as_text"))
        .when(pl.col("storage") == "real").then(pl.lit("real_as_text"))
        .when(pl.col("storage") == "blob").then(pl.col("bop"))
    )
    source = pl.coalesce(pl.col("s"), pl.col("bt"))
    steps = [
        pl.when(pl.lit(conversion.strip_nul) & source.str.contains("\x00", literal=True)).then(pl.lit("strip_nul")),
        pl.when(pl.lit(conversion.normalize_newlines) & source.str.contains("\r\n", literal=True)).then(
            pl.lit("crlf_to_lf")
        ),
    ]
    changed = pl.any_horizontal([step.is_not_null() for step in steps])
    first = pl.when((base == "text") & changed).then(None).otherwise(base)
    return pl.concat_str([first, *steps], separator="+", ignore_nulls=True)


def _bytes_attempts(column: ColumnPlan) -> list[_Attempt]:
    sources = {
        "blob": (pl.col("storage") == "blob", pl.col("b"), pl.lit(True)),
        "text_as_bytes": (
            pl.col("storage") == "text",
            pl.coalesce(pl.col("s").cast(pl.Binary), pl.col("b")),
            pl.lit(False),
        ),
    }
    attempts = []
    for format_id in column.conversion.formats:
        applies, value, kept = sources[format_id]
        attempts.append(_Attempt(format_id, applies, value, kept, pl.lit(f"{format_id}: no bytes")))
    return attempts


_ATTEMPTS: dict[str, Callable[[ColumnPlan], list[_Attempt]]] = {
    "number": _number_attempts,
    "boolean": _boolean_attempts,
    "date": _date_attempts,
    "text": _text_attempts,
    "bytes": _bytes_attempts,
}


def decode_bytes(value: bytes, policy: str) -> tuple[str | None, str]:
    """Bytes as text: UTF-8 when valid ('utf8'), else per the plan's policy ('cp1252', 'latin1', 'quarantine')."""
    try:
        return value.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        pass
    if policy == "quarantine":
        return None, "invalid_utf8"
    if policy == "cp1252":
        try:
            return value.decode("cp1252"), "decode_cp1252"
        except UnicodeDecodeError:
            return value.decode("latin-1"), "decode_latin1"
    return value.decode(policy, errors="strict"), f"decode_{policy.replace('-', '')}"


def _with_decoded_bytes(frame: pl.DataFrame, policy: str) -> pl.DataFrame:
    """Columns `bt` (bytes decoded to text) and `bop` (how), only where `b` holds bytes."""
    if frame["b"].null_count() == frame.height:
        return frame.with_columns(bt=pl.lit(None, pl.String), bop=pl.lit(None, pl.String))
    has_bytes = frame["b"].is_not_null()
    positions = has_bytes.arg_true()
    storages = frame["storage"].gather(positions).to_list()
    # Blobs and invalid UTF-8 in a text column are the rare exceptions; polars has no cp1252 codec.
    decoded = [decode_bytes(value, policy) for value in frame["b"].gather(positions).to_list()]
    text = pl.Series("bt", [None] * frame.height, dtype=pl.String).scatter(
        positions, [decoded_text for decoded_text, _ in decoded]
    )
    operation = pl.Series("bop", [None] * frame.height, dtype=pl.String).scatter(
        positions,
        [
            "blob_utf8" if how == "utf8" and storage == "blob" else how
            for (_, how), storage in zip(decoded, storages)
        ],
    )
    return frame.with_columns(text, operation)
