"""Date and time formats: recognising a raw value's shape and reading it into a datetime.

Every reader is a polars expression over the columns of a raw frame (`storage`, `i`, `r`, `s`, `b`
and `t`, the stripped text) and returns `(applies, value)`: `applies` is true where the value has
the format's shape, `value` is a `Datetime('us')` (UTC for formats with a zone) that is null where
the shape matched but the value is not a real date or time (31/02/2025, 25:00).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

_ISO_DATE = r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
_ISO_TIME = r"(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
_ZONE = r"\s?(?P<tz>[Zz]|UTC|[+-]\d{2}(?::?\d{2})?)"
_HM = r"(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?"
_AMPM = r"\s?(?P<p>[AaPp]\.?[Mm]\.?)"
EXCEL_EPOCH_OFFSET_DAYS = 25569  # days from Excel's 1899-12-30 to 1970-01-01

# Magnitude bands keep the numeric formats disjoint: no number reads as two different instants.
NUMERIC_DATE_RANGES = {
    "excel_serial": (10_000.0, 1e5),
    "epoch_s": (1e8, 1e11),
    "epoch_ms": (1e11, 1e14),
    "epoch_us": (1e14, 1e17),
}
_MICROSECONDS_PER_UNIT = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}


@dataclass(frozen=True)
class DateFormat:
    id: str
    has_time: bool
    has_zone: bool
    day_first: bool | None
    description: str
    example: str
    pattern: str | None = None


def _slash(order: str, sep: str, time: str = "") -> str:
    day, month = r"(?P<d>\d{1,2})", r"(?P<m>\d{1,2})"
    first, second = (day, month) if order == "dmy" else (month, day)
    return rf"^{first}{sep}{second}{sep}(?P<y>\d{{4}}){time}$"


_TIME_24 = rf"[ T]{_HM}"
_TIME_12 = rf"[ T]{_HM}{_AMPM}"

DATE_FORMATS: dict[str, DateFormat] = {
    f.id: f
    for f in (
        DateFormat("iso_date", False, False, None, "ISO date", "2025-05-20", rf"^{_ISO_DATE}$"),
        DateFormat(
            "iso_datetime", True, False, None, "ISO date and time, space or T, optional seconds and fraction",
            "2025-05-20 08:42:00", rf"^{_ISO_DATE}[ T]{_ISO_TIME}$",
        ),
        DateFormat(
            "iso_datetime_tz", True, True, None, "ISO date and time with Z or a UTC offset",
            "2025-05-20T08:42:00+02:00", rf"^{_ISO_DATE}[ T]{_ISO_TIME}{_ZONE}$",
        ),
        DateFormat("dmy", False, False, True, "DD/MM/YYYY", "20/05/2025", _slash("dmy", "/")),
        DateFormat("dmy_hm", True, False, True, "DD/MM/YYYY H:MM[:SS]", "20/05/2025 8:42", _slash("dmy", "/", _TIME_24)),
        DateFormat(
            "dmy_hm_ampm", True, False, True, "DD/MM/YYYY h:MM[:SS] AM/PM", "20/05/2025 8:42 PM",
            _slash("dmy", "/", _TIME_12),
        ),
        DateFormat("mdy", False, False, False, "MM/DD/YYYY", "05/20/2025", _slash("mdy", "/")),
        DateFormat("mdy_hm", True, False, False, "MM/DD/YYYY H:MM[:SS]", "05/20/2025 8:42", _slash("mdy", "/", _TIME_24)),
        DateFormat(
            "mdy_hm_ampm", True, False, False, "MM/DD/YYYY hh:mm[:ss] AM/PM", "05/20/2025 08:42 PM",
            _slash("mdy", "/", _TIME_12),
        ),
        DateFormat("dmy_dash", False, False, True, "DD-MM-YYYY", "20-05-2025", _slash("dmy", "-")),
        DateFormat("dmy_dash_hm", True, False, True, "DD-MM-YYYY H:MM[:SS]", "20-05-2025 08:42", _slash("dmy", "-", _TIME_24)),
        DateFormat("mdy_dash", False, False, False, "MM-DD-YYYY", "05-20-2025", _slash("mdy", "-")),
        DateFormat("mdy_dash_hm", True, False, False, "MM-DD-YYYY H:MM[:SS]", "05-20-2025 08:42", _slash("mdy", "-", _TIME_24)),
        DateFormat("ymd_slash", False, False, None, "YYYY/MM/DD", "2025/05/20", r"^(?P<y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})$"),
        DateFormat(
            "ymd_slash_hm", True, False, None, "YYYY/MM/DD H:MM[:SS]", "2025/05/20 08:42",
            rf"^(?P<y>\d{{4}})/(?P<m>\d{{1,2}})/(?P<d>\d{{1,2}})[ T]{_HM}$",
        ),
        DateFormat("excel_serial", True, False, None, "Excel serial days since 1899-12-30", "45797"),
        DateFormat("epoch_s", True, False, None, "Unix epoch seconds", "1747730520"),
        DateFormat("epoch_ms", True, False, None, "Unix epoch milliseconds", "1747730520000"),
        DateFormat("epoch_us", True, False, None, "Unix epoch microseconds", "1747730520000000"),
    )
}

# Shapes that are read day-first or month-first; evidence decides which family a column uses.
ORDER_AMBIGUOUS_SHAPE = r"^(\d{1,2})[/-](\d{1,2})[/-]\d{4}(?:[ T].*)?$"
DAY_FIRST_COUNTERPART = {
    "mdy": "dmy",
    "mdy_hm": "dmy_hm",
    "mdy_hm_ampm": "dmy_hm_ampm",
    "mdy_dash": "dmy_dash",
    "mdy_dash_hm": "dmy_dash_hm",
}
MONTH_FIRST_COUNTERPART = {day: month for month, day in DAY_FIRST_COUNTERPART.items()}


# Text already written the way the general reader would rewrite it (`YYYY-MM-DD[ HH:MM:SS]`, time
# fields in range) is parsed as is; only the other values pay for extracting and padding fields.
_CANONICAL = {
    "iso_date": (r"^\d{4}-\d{2}-\d{2}$", "%Y-%m-%d"),
    "iso_datetime": (r"^\d{4}-\d{2}-\d{2} (?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d$", "%Y-%m-%d %H:%M:%S"),
}


def read_date(format_id: str) -> tuple[pl.Expr, pl.Expr]:
    """(applies, Datetime('us') value) for one format over a raw frame with a stripped-text column `t`."""
    spec = DATE_FORMATS[format_id]
    if spec.pattern is None:
        return _read_numeric_date(format_id)
    if format_id not in _CANONICAL:
        return _read_pattern(spec.pattern, pl.col("t"))
    shape, layout = _CANONICAL[format_id]
    canonical = pl.col("t").str.contains(shape).fill_null(False)
    applies = date_shape(format_id)
    _, general = _read_pattern(spec.pattern, pl.when(~canonical).then(pl.col("t")))
    # No parse cache: the values converted are mostly distinct already.
    direct = pl.col("t").str.to_datetime(layout, time_unit="us", strict=False, cache=False)
    return applies, pl.when(applies & canonical).then(direct).otherwise(general)


def canonical_shape(format_id: str) -> pl.Expr | None:
    """Whether the stripped text is already `YYYY-MM-DD[ HH:MM:SS]` (time fields in range), for the
    ISO formats; None for the others. A valid such value reads back to exactly its own text."""
    if format_id not in _CANONICAL:
        return None
    return (pl.col("storage") == "text") & pl.col("t").str.contains(_CANONICAL[format_id][0]).fill_null(False)


def date_shape(format_id: str) -> pl.Expr:
    """Whether a value has the format's shape (cheaper than `read_date`: no parsing)."""
    spec = DATE_FORMATS[format_id]
    if spec.pattern is None:
        return read_date(format_id)[0]
    return (pl.col("storage") == "text") & pl.col("t").str.contains(spec.pattern)


def _read_pattern(pattern: str, text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    groups = set(re.findall(r"\(\?P<(\w+)>", pattern))
    parts = text.str.extract_groups(pattern)

    def field(name: str) -> pl.Expr:
        return parts.struct.field(name)

    applies = pl.col("storage").eq("text") & text.str.contains(pattern)
    hour = field("H").cast(pl.Int32) if "H" in groups else pl.lit(0, pl.Int32)
    valid = pl.lit(True)
    if "p" in groups:
        valid = hour.is_between(1, 12)
        is_pm = field("p").str.to_lowercase().str.starts_with("p")
        hour = hour % 12 + pl.when(is_pm).then(12).otherwise(0)
    minute = field("M").cast(pl.Int32) if "M" in groups else pl.lit(0, pl.Int32)
    second = field("S").cast(pl.Int32).fill_null(0) if "S" in groups else pl.lit(0, pl.Int32)
    fraction = (
        field("f").fill_null("0").str.slice(0, 6).str.pad_end(6, "0") if "f" in groups else pl.lit("000000")
    )
    canonical = pl.format(
        "{}-{}-{} {}:{}:{}.{}",
        field("y"),
        field("m").str.zfill(2),
        field("d").str.zfill(2),
        hour.cast(pl.String).str.zfill(2),
        minute.cast(pl.String).str.zfill(2),
        second.cast(pl.String).str.zfill(2),
        fraction,
    )
    value = canonical.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False, cache=False)
    if "tz" in groups:
        value = value - pl.duration(minutes=_offset_minutes(field("tz")))
    return applies, pl.when(applies & valid).then(value)


def _offset_minutes(zone: pl.Expr) -> pl.Expr:
    """Minutes east of UTC from `Z`, `UTC`, `+HH`, `+HHMM` or `+HH:MM`."""
    digits = zone.str.replace_all(":", "", literal=True)
    sign = pl.when(digits.str.starts_with("-")).then(-1).otherwise(1)
    hours = digits.str.slice(1, 2).cast(pl.Int32, strict=False).fill_null(0)
    minutes = digits.str.slice(3, 2).cast(pl.Int32, strict=False).fill_null(0)
    return sign * (hours * 60 + minutes)


def numeric_source() -> pl.Expr:
    """A raw value as a Float64 when it is a number: integer, real, or text of plain digits."""
    plain_text = pl.col("t").str.contains(r"^\d+(\.\d+)?$")
    return (
        pl.when(pl.col("storage") == "integer").then(pl.col("i").cast(pl.Float64))
        .when(pl.col("storage") == "real").then(pl.col("r"))
        .when((pl.col("storage") == "text") & plain_text).then(pl.col("t").cast(pl.Float64, strict=False))
    )


def _read_numeric_date(format_id: str) -> tuple[pl.Expr, pl.Expr]:
    low, high = NUMERIC_DATE_RANGES[format_id]
    number = numeric_source()
    applies = number.is_not_null() & (number >= low) & (number < high)
    if format_id == "excel_serial":
        milliseconds = ((number - EXCEL_EPOCH_OFFSET_DAYS) * 86_400_000).round(0).cast(pl.Int64)
        microseconds = milliseconds * 1000
    else:
        exact_integer = (
            pl.when(pl.col("storage") == "integer").then(pl.col("i")).otherwise(number.round(0).cast(pl.Int64))
        )
        scale = _MICROSECONDS_PER_UNIT[format_id]
        microseconds = pl.when(number == number.round(0)).then(exact_integer * scale).otherwise(
            (number * scale).round(0).cast(pl.Int64)
        )
    value = pl.from_epoch(microseconds, time_unit="us")
    return applies, pl.when(applies).then(value)


def format_timestamp(value: pl.Expr, with_zone: bool) -> pl.Expr:
    """`YYYY-MM-DD HH:MM:SS[.ffffff]`, plus `+00:00` for UTC values."""
    # One strftime: a value without microseconds is exactly the fractional form minus `.000000`.
    text = value.dt.strftime("%Y-%m-%d %H:%M:%S%.6f").str.strip_suffix(".000000")
    return text + pl.lit("+00:00") if with_zone else text


def format_date(value: pl.Expr) -> pl.Expr:
    return value.dt.strftime("%Y-%m-%d")


def is_midnight(value: pl.Expr) -> pl.Expr:
    return value == value.dt.truncate("1d")
