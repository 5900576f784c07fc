"""Number and boolean formats: shapes of raw values and how each reads into a number.

Readers are polars expressions over a raw frame (`storage`, `i`, `r`, `s`, `b`, and `t`, the
stripped text). The text patterns are disjoint, so no text is read as two different numbers:
`1,234` is always thousands (1234), `1,5` and `1234,5` are decimal commas, `1.234` is a decimal
point, `1.234,5` and `1.234.567` are dot thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

INT64_LIMIT = 2.0**63


@dataclass(frozen=True)
class NumberFormat:
    id: str
    description: str
    example: str
    pattern: str | None = None


NUMBER_FORMATS: dict[str, NumberFormat] = {
    f.id: f
    for f in (
        NumberFormat("integer", "integer storage", "42"),
        NumberFormat("real", "real storage (integral reals convert to whole numbers)", "3000000.0"),
        NumberFormat("int_text", "whole number as text", "42", r"^[+-]?\d+$"),
        NumberFormat(
            "decimal_text", "decimal point number as text, optional exponent", "12.5",
            r"^[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?\d+[eE][+-]?\d+$",
        ),
        NumberFormat("thousands_comma", "comma thousands separators", "1,234,567.89", r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$"),
        NumberFormat(
            "thousands_dot", "dot thousands separators with a decimal comma", "1.234.567,89",
            r"^[+-]?\d{1,3}(\.\d{3})+,\d+$|^[+-]?\d{1,3}(\.\d{3}){2,}$",
        ),
        NumberFormat("decimal_comma", "decimal comma", "12,5", r"^[+-]?\d*,\d+$"),
        NumberFormat("percent", "percentage, read as the number before %", "87.50%", r"^[+-]?(\d+(\.\d+)?|\.\d+)\s?%$"),
    )
}
_THOUSANDS_SHAPE = r"^[+-]?\d{1,3},\d{3}$"


@dataclass(frozen=True)
class BooleanFormat:
    id: str
    description: str
    example: str
    true_text: str
    false_text: str


BOOLEAN_FORMATS: dict[str, BooleanFormat] = {
    f.id: f
    for f in (
        BooleanFormat("yes_no", "Yes / No", "Yes", "yes", "no"),
        BooleanFormat("y_n", "Y / N", "Y", "y", "n"),
        BooleanFormat("true_false", "true / false", "true", "true", "false"),
        BooleanFormat("one_zero", "1 / 0 (text or number)", "1", "1", "0"),
    )
}


def read_number(format_id: str) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(applies, Int64 value or null when not whole, Float64 value) for one number format."""
    if format_id == "integer":
        applies = pl.col("storage") == "integer"
        return applies, pl.col("i"), pl.col("i").cast(pl.Float64)
    if format_id == "real":
        applies = pl.col("storage") == "real"
        real = pl.col("r")
        whole = (real == real.round(0)) & (real.abs() < INT64_LIMIT)
        return applies, pl.when(whole).then(real.cast(pl.Int64, strict=False)), real
    spec = NUMBER_FORMATS[format_id]
    text = pl.col("t")
    applies = (pl.col("storage") == "text") & text.str.contains(spec.pattern)
    if format_id == "decimal_comma":
        applies = applies & ~text.str.contains(_THOUSANDS_SHAPE)
    canonical = _canonical(format_id, text)
    # Text of the int_text shape is whole digits already: no need to look for a `.000` tail.
    whole = canonical.cast(pl.Int64, strict=False) if format_id == "int_text" else _whole_number(canonical)
    return applies, whole, canonical.cast(pl.Float64, strict=False)


def _canonical(format_id: str, text: pl.Expr) -> pl.Expr:
    """The text as a plain decimal-point number without separators or sign `+`."""
    if format_id == "thousands_comma":
        text = text.str.replace_all(",", "", literal=True)
    elif format_id == "thousands_dot":
        text = text.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True)
    elif format_id == "decimal_comma":
        text = text.str.replace(",", ".", literal=True)
    elif format_id == "percent":
        text = text.str.replace(r"\s?%$", "")
    return text.str.strip_prefix("+")


def _whole_number(canonical: pl.Expr) -> pl.Expr:
    digits = canonical.str.extract(r"^([+-]?\d+)(?:\.0*)?$", 1)
    return digits.cast(pl.Int64, strict=False)


def read_boolean(format_id: str) -> tuple[pl.Expr, pl.Expr]:
    """(applies, Int64 0/1) for one boolean vocabulary, compared case-insensitively."""
    spec = BOOLEAN_FORMATS[format_id]
    lowered = pl.col("t").str.to_lowercase()
    is_text = pl.col("storage") == "text"
    truthy = is_text & (lowered == spec.true_text)
    falsy = is_text & (lowered == spec.false_text)
    if format_id == "one_zero":
        number = pl.when(pl.col("storage") == "integer").then(pl.col("i").cast(pl.Float64)).when(
            pl.col("storage") == "real"
        ).then(pl.col("r"))
        truthy = truthy | (number == 1.0)
        falsy = falsy | (number == 0.0)
    applies = truthy | falsy
    return applies, pl.when(truthy).then(pl.lit(1, pl.Int64)).when(falsy).then(pl.lit(0, pl.Int64))
