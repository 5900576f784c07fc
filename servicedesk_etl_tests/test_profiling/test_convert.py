import datetime as dt
import sqlite3
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servicedesk_etl.profiling.convert import FORMATS, TARGET_FAMILY, convert_column
from servicedesk_etl.profiling.dates import DATE_FORMATS, DAY_FIRST_COUNTERPART
from servicedesk_etl.profiling.numbers import NUMBER_FORMATS
from servicedesk_etl.profiling.plan import ColumnPlan, Conversion
from servicedesk_etl.profiling.values import raw_from_python, read_table
from servicedesk_etl.sqlite_source import open_readonly

MARKERS = ("", "NULL", "N/A", "NA", "?", "-", "nan", "None")


def plan(target: str, formats: tuple[str, ...], **conversion) -> ColumnPlan:
    return ColumnPlan(
        name="c", pg_name="c", declared_type="", target_type=target,
        conversion=Conversion(formats=formats, **conversion), confidence=1.0,
    )


def convert_one(value, target: str, formats: tuple[str, ...], **conversion) -> tuple:
    result = convert_column(raw_from_python("c", [value]), plan(target, formats, **conversion))
    return result.values[0], result.outcome[0], result.operation[0], result.reason[0]


@pytest.mark.parametrize(
    "value, format_id, expected",
    [
        ("2025-05-20 08:42:00", "iso_datetime", "2025-05-20 08:42:00"),
        ("2025-05-20T08:42", "iso_datetime", "2025-05-20 08:42:00"),
        ("2025-05-20 08:42:00.5", "iso_datetime", "2025-05-20 08:42:00.500000"),
        ("2025-05-20 08:42:00,123456789", "iso_datetime", "2025-05-20 08:42:00.123456"),
        ("2025-05-20", "iso_date", "2025-05-20 00:00:00"),
        ("20/05/2025 8:42", "dmy_hm", "2025-05-20 08:42:00"),
        ("20/05/2025 08:42:17", "dmy_hm", "2025-05-20 08:42:17"),
        ("05/20/2025 08:42 PM", "mdy_hm_ampm", "2025-05-20 20:42:00"),
        ("05/20/2025 12:05 AM", "mdy_hm_ampm", "2025-05-20 00:05:00"),
        ("05/20/2025 12:05 pm", "mdy_hm_ampm", "2025-05-20 12:05:00"),
        ("20-05-2025", "dmy_dash", "2025-05-20 00:00:00"),
        ("2025/05/20", "ymd_slash", "2025-05-20 00:00:00"),
        ("2025/05/20 17:01", "ymd_slash_hm", "2025-05-20 17:01:00"),
        (45797, "excel_serial", "2025-05-20 00:00:00"),
        (45797.5, "excel_serial", "2025-05-20 12:00:00"),
        (1747730520, "epoch_s", "2025-05-20 08:42:00"),
        (1747730520123, "epoch_ms", "2025-05-20 08:42:00.123000"),
        (1747730520123456, "epoch_us", "2025-05-20 08:42:00.123456"),
        ("1747730520", "epoch_s", "2025-05-20 08:42:00"),
    ],
)
def test_timestamp_parsers(value, format_id, expected):
    converted, outcome, operation, reason = convert_one(value, "timestamp", (format_id,))
    assert (converted, operation, reason) == (expected, format_id, None)
    assert outcome == ("kept" if value == expected else "converted")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2025-05-20T08:42:00Z", "2025-05-20 08:42:00+00:00"),
        ("2025-05-20 08:42:00+02:00", "2025-05-20 06:42:00+00:00"),
        ("2025-05-20 08:42:00-0530", "2025-05-20 14:12:00+00:00"),
        ("2025-05-20 23:30:00.25 -03", "2025-05-21 02:30:00.250000+00:00"),
    ],
)
def test_offsets_are_normalised_to_utc(value, expected):
    assert convert_one(value, "timestamptz", ("iso_datetime_tz",))[0] == expected


@pytest.mark.parametrize(
    "value, format_id",
    [
        ("31/02/2025 8:42", "dmy_hm"),
        ("20/13/2025 8:42", "dmy_hm"),
        ("20/05/2025 24:10", "dmy_hm"),
        ("13/05/2025 08:42 PM", "mdy_hm_ampm"),
        ("05/20/2025 13:42 PM", "mdy_hm_ampm"),
        ("2025-02-29", "iso_date"),
    ],
)
def test_right_shape_but_impossible_date_fails_with_the_format_named(value, format_id):
    converted, outcome, operation, reason = convert_one(value, "timestamp", (format_id,))
    assert (converted, outcome, operation) == (None, "failed", format_id)
    assert reason.startswith(format_id)


def test_a_value_in_no_planned_format_fails_with_the_plan_in_the_reason():
    converted, outcome, operation, reason = convert_one("20/05/2025 8:42", "timestamp", ("iso_datetime",))
    assert (converted, outcome, operation) == (None, "failed", None)
    assert "iso_datetime" in reason


def test_date_target_refuses_to_drop_a_time_of_day():
    assert convert_one("2025-05-20", "date", ("iso_date",))[:2] == ("2025-05-20", "kept")
    assert convert_one(45797, "date", ("excel_serial",))[:2] == ("2025-05-20", "converted")
    converted, outcome, _, reason = convert_one(45797.25, "date", ("excel_serial",))
    assert (converted, outcome) == (None, "failed") and "time of day" in reason


@pytest.mark.parametrize(
    "value, operation",
    [("", "empty_string"), ("   ", "whitespace"), ("NULL", "null_marker"), (" n/a ", "null_marker"),
     ("?", "null_marker"), ("-", "null_marker"), ("NaN", "null_marker"), ("na", "null_marker")],
)
def test_empty_strings_and_null_markers_become_null_by_declared_rule(value, operation):
    assert convert_one(value, "double precision", ("real",), null_markers=MARKERS) == (None, "nulled", operation, None)


def test_real_nulls_are_not_counted_as_markers():
    assert convert_one(None, "bigint", ("integer",), null_markers=MARKERS) == (None, "null", None, None)


def test_markers_apply_only_when_the_plan_lists_them():
    assert convert_one("N/A", "text", ("text",)) == ("N/A", "kept", "text", None)
    assert convert_one("N/A", "bigint", ("int_text",))[1] == "failed"


@pytest.mark.parametrize(
    "value, format_id, expected",
    [
        (42, "integer", 42.0),
        (2.5, "real", 2.5),
        ("42", "int_text", 42.0),
        (" -17 ", "int_text", -17.0),
        ("12.5", "decimal_text", 12.5),
        ("1e3", "decimal_text", 1000.0),
        ("1,234,567.89", "thousands_comma", 1234567.89),
        ("1.234.567,89", "thousands_dot", 1234567.89),
        ("1.234.567", "thousands_dot", 1234567.0),
        ("12,5", "decimal_comma", 12.5),
        ("1234,56", "decimal_comma", 1234.56),
        ("87.50%", "percent", 87.5),
        ("-3 %", "percent", -3.0),
    ],
)
def test_number_parsers(value, format_id, expected):
    converted, outcome, operation, _ = convert_one(value, "numeric", (format_id,))
    assert (converted, operation) == (expected, format_id)
    assert outcome == ("kept" if format_id in ("integer", "real") else "converted")


@pytest.mark.parametrize(
    "value, format_id, expected, outcome",
    [
        (7, "integer", 7, "kept"),
        (3000000.0, "real", 3000000, "converted"),
        ("3000000.0", "decimal_text", 3000000, "converted"),
        ("9223372036854775807", "int_text", 9223372036854775807, "converted"),
        ("1,000", "thousands_comma", 1000, "converted"),
    ],
)
def test_whole_numbers_become_bigint_exactly(value, format_id, expected, outcome):
    assert convert_one(value, "bigint", (format_id,))[:3] == (expected, outcome, format_id)


@pytest.mark.parametrize("value, format_id", [(2.5, "real"), ("9223372036854775808", "int_text"), ("12,5", "decimal_comma")])
def test_fractions_and_overflow_are_not_bigint(value, format_id):
    converted, outcome, _, reason = convert_one(value, "bigint", (format_id,))
    assert (converted, outcome) == (None, "failed") and "whole number" in reason


@pytest.mark.parametrize(
    "value, format_id, expected",
    [("Yes", "yes_no", 1), ("no", "yes_no", 0), ("Y", "y_n", 1), ("n", "y_n", 0), ("TRUE", "true_false", 1),
     ("false", "true_false", 0), ("1", "one_zero", 1), (0, "one_zero", 0), (1.0, "one_zero", 1)],
)
def test_boolean_parsers(value, format_id, expected):
    assert convert_one(value, "boolean", (format_id,))[0] == expected


def test_boolean_vocabulary_is_strict():
    assert convert_one("maybe", "boolean", ("yes_no",))[1] == "failed"
    assert convert_one(2, "boolean", ("one_zero",))[1] == "failed"


@pytest.mark.parametrize(
    "value, flags, expected, operation",
    [
        ("plain", {}, "plain", "text"),
        ("a\x00b", {"strip_nul": True}, "ab", "strip_nul"),
        ("x\r\ny", {"normalize_newlines": True}, "x\ny", "crlf_to_lf"),
        ("x\x00\r\n", {"strip_nul": True, "normalize_newlines": True}, "x\n", "strip_nul+crlf_to_lf"),
        ("x\r\ny", {}, "x\r\ny", "text"),
        (12, {}, "12", "integer_as_text"),
        (12.3, {}, "12.3", "real_as_text"),
        (b"file\x96name.txt", {}, "file\u2013name.txt", "decode_cp1252"),
        (b"ok", {}, "ok", "blob_utf8"),
        (bytearray(b"caf\xe9"), {}, "caf\u00e9", "decode_cp1252"),
        (bytearray(b"caf\xe9"), {"invalid_utf8": "latin1"}, "caf\u00e9", "decode_latin1"),
    ],
)
def test_text_conversions(value, flags, expected, operation):
    formats = ("text", "integer_as_text", "real_as_text", "blob_as_text")
    converted, outcome, applied, reason = convert_one(value, "text", formats, **flags)
    assert (converted, applied, reason) == (expected, operation, None)
    assert outcome == ("kept" if value == expected else "converted")


def test_nul_bytes_fail_when_the_plan_does_not_strip_them():
    converted, outcome, _, reason = convert_one("a\x00b", "text", ("text",))
    assert (converted, outcome) == (None, "failed") and "NUL" in reason


def test_invalid_utf8_can_be_quarantined_by_plan():
    converted, outcome, _, reason = convert_one(bytearray(b"\xff"), "text", ("text",), invalid_utf8="quarantine")
    assert (converted, outcome) == (None, "failed") and "UTF-8" in reason


def test_bytea_keeps_blobs_and_encodes_text():
    assert convert_one(b"\x00\xff", "bytea", ("blob", "text_as_bytes"))[:2] == (b"\x00\xff", "kept")
    assert convert_one("abc", "bytea", ("blob", "text_as_bytes"))[:2] == (b"abc", "converted")


def test_unknown_or_mismatched_formats_are_plan_errors():
    with pytest.raises(ValueError, match="unknown format"):
        convert_one("x", "text", ("nope",))
    with pytest.raises(ValueError, match="cannot produce"):
        convert_one("x", "bigint", ("iso_date",))


def test_every_registered_format_belongs_to_a_target_family():
    assert {spec.family for spec in FORMATS.values()} == set(TARGET_FAMILY.values())


def test_a_mixed_column_read_from_sqlite_converts_row_by_row(tmp_path):
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE t ("TKT-Actual Response Date" TEXT)')
    conn.executemany("INSERT INTO t VALUES (?)", [("2025-05-19 10:00:00",), ("20/05/2025 8:42",), ("",), (None,), ("x",)])
    conn.commit()
    conn.close()
    raw = read_table(open_readonly(path), "t")["TKT-Actual Response Date"]
    result = convert_column(raw, plan("timestamp", ("iso_datetime", "dmy_hm"), null_markers=("",)))
    assert result.values.to_list() == ["2025-05-19 10:00:00", "2025-05-20 08:42:00", None, None, None]
    assert result.outcome.to_list() == ["kept", "converted", "nulled", "null", "failed"]
    assert result.outcome_counts() == {"kept": 1, "converted": 1, "nulled": 1, "null": 1, "failed": 1}


# --- properties -------------------------------------------------------------------------------

RENDER = {
    "iso_date": lambda t: t.strftime("%Y-%m-%d"),
    "iso_datetime": lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    "dmy": lambda t: t.strftime("%d/%m/%Y"),
    "dmy_hm": lambda t: f"{t.day:02d}/{t.month:02d}/{t.year} {t.hour}:{t.minute:02d}",
    "mdy": lambda t: t.strftime("%m/%d/%Y"),
    "mdy_hm": lambda t: t.strftime("%m/%d/%Y %H:%M"),
    "mdy_hm_ampm": lambda t: t.strftime("%m/%d/%Y %I:%M %p"),
    "dmy_hm_ampm": lambda t: t.strftime("%d/%m/%Y %I:%M %p"),
    "dmy_dash": lambda t: t.strftime("%d-%m-%Y"),
    "dmy_dash_hm": lambda t: t.strftime("%d-%m-%Y %H:%M"),
    "mdy_dash": lambda t: t.strftime("%m-%d-%Y"),
    "mdy_dash_hm": lambda t: t.strftime("%m-%d-%Y %H:%M"),
    "ymd_slash": lambda t: t.strftime("%Y/%m/%d"),
    "ymd_slash_hm": lambda t: t.strftime("%Y/%m/%d %H:%M"),
}
PRECISION = {name: ("date" if "hm" not in name and name != "iso_datetime" else "minute") for name in RENDER}
PRECISION["iso_datetime"] = "second"

instants = st.datetimes(min_value=dt.datetime(1901, 1, 1), max_value=dt.datetime(2199, 12, 31)).map(
    lambda t: t.replace(microsecond=0)
)


def truncated(t: dt.datetime, precision: str) -> dt.datetime:
    if precision == "date":
        return t.replace(hour=0, minute=0, second=0)
    if precision == "minute":
        return t.replace(second=0)
    return t


@settings(max_examples=60, deadline=None)
@given(instant=instants, format_id=st.sampled_from(sorted(RENDER)))
def test_every_rendered_date_round_trips_through_its_format(instant, format_id):
    text = RENDER[format_id](instant)
    expected = truncated(instant, PRECISION[format_id]).strftime("%Y-%m-%d %H:%M:%S")
    assert convert_one(text, "timestamp", (format_id,))[:3] == (expected, "kept" if text == expected else "converted", format_id)


def applying_formats(value, candidates) -> set[str]:
    raw = raw_from_python("c", [value])
    found = set()
    for format_id in candidates:
        family = FORMATS[format_id].family
        target = {"date": "timestamp", "number": "double precision"}[family]
        if convert_column(raw, plan(target, (format_id,))).operation[0] is not None:
            found.add(format_id)
    return found


@settings(max_examples=60, deadline=None)
@given(instant=instants, format_id=st.sampled_from(sorted(RENDER)))
def test_no_date_text_is_read_two_ways(instant, format_id):
    """Only a day-first format and its month-first twin can share a shape; a plan never lists both."""
    found = applying_formats(RENDER[format_id](instant), sorted(DATE_FORMATS))
    assert format_id in found
    twins = {frozenset(pair) for pair in DAY_FIRST_COUNTERPART.items()}
    assert len(found) == 1 or (len(found) == 2 and frozenset(found) in twins)


NUMBER_RENDER = {
    "int_text": lambda d: f"{int(d)}",
    "decimal_text": lambda d: f"{d:.2f}",
    "thousands_comma": lambda d: f"{d:,.2f}" if abs(d) >= 1000 else None,
    "thousands_dot": lambda d: f"{d:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".") if abs(d) >= 1000 else None,
    "decimal_comma": lambda d: f"{d:.2f}".replace(".", ","),
    "percent": lambda d: f"{d:.2f}%",
}
decimals = st.decimals(min_value=-10**9, max_value=10**9, places=2, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, deadline=None)
@given(number=decimals, format_id=st.sampled_from(sorted(NUMBER_RENDER)))
def test_every_rendered_number_round_trips_and_only_its_format_reads_it(number, format_id):
    text = NUMBER_RENDER[format_id](number)
    if text is None:
        return
    expected = float(int(number)) if format_id == "int_text" else float(number)
    converted, outcome, operation, _ = convert_one(text, "numeric", (format_id,))
    assert (converted, outcome, operation) == (pytest.approx(expected, abs=1e-9), "converted", format_id)
    text_formats = [f for f in NUMBER_FORMATS if f not in ("integer", "real")]
    assert applying_formats(text, text_formats) == {format_id}


@settings(max_examples=40, deadline=None)
@given(number=st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_every_int64_round_trips_as_bigint_from_text(number):
    assert convert_one(str(number), "bigint", ("int_text",))[0] == number
    assert convert_one(f"{number}.00", "bigint", ("decimal_text",))[0] == number


@settings(max_examples=40, deadline=None)
@given(number=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("999.99"), places=2))
def test_numbers_from_text_that_differ_only_by_separator_style_agree(number):
    plain = convert_one(f"{number}", "numeric", ("decimal_text",))[0]
    comma = convert_one(f"{number}".replace(".", ","), "numeric", ("decimal_comma",))[0]
    assert plain == comma


@pytest.mark.parametrize(
    "value, target, expected, outcome",
    [
        ("2025-05-20 08:42:00", "timestamp", "2025-05-20 08:42:00", "kept"),
        ("2025-05-20 08:42:00", "timestamptz", "2025-05-20 08:42:00+00:00", "converted"),
        ("2024-02-29 23:59:59", "timestamp", "2024-02-29 23:59:59", "kept"),
        ("2025-02-30 10:00:00", "timestamp", None, "failed"),
        ("2025-13-01 10:00:00", "timestamp", None, "failed"),
        ("2025-05-20 24:00:00", "timestamp", None, "failed"),
        ("2025-5-20 8:42", "timestamp", "2025-05-20 08:42:00", "converted"),
        ("2025-05-20", "date", "2025-05-20", "kept"),
        ("2023-02-29", "date", None, "failed"),
        ("2025-05-20", "timestamp", "2025-05-20 00:00:00", "converted"),
    ],
)
def test_iso_text_already_in_canonical_form_reads_like_any_other_iso_text(value, target, expected, outcome):
    formats = ("iso_datetime", "iso_date") if target != "date" else ("iso_date",)
    converted, got_outcome, _, _ = convert_one(value, target, formats)
    assert (converted, got_outcome) == (expected, outcome)
    # Canonical and non-canonical spellings of one instant (the general reader) agree.
    if outcome != "failed" and target != "date":
        spelled = value.replace(" ", "T") if " " in value else value + "T00:00"
        assert convert_one(spelled, target, formats)[0] == expected


raw_values = st.one_of(
    st.none(),
    st.sampled_from([0, 1, 2, 0.0, 1.0, -0.0, 45797, 45797.5, 1747730520, 3000000.0]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.sampled_from(["", " ", "N/A", "yes", "No", "1", "0", "2025-05-20 08:42:00", "20/05/2025 8:42", "1,234.5",
                     "87.50%", "45797", "a\r\nb", "nul\x00byte"]),
    st.text(max_size=8),
    st.binary(max_size=4),
)
any_plan = st.sampled_from(
    [
        plan("timestamp", ("iso_datetime", "dmy_hm", "excel_serial"), null_markers=MARKERS, day_first=True),
        plan("numeric", ("integer", "real", "int_text", "decimal_text", "thousands_comma", "percent"),
             null_markers=MARKERS),
        plan("bigint", ("integer", "real", "int_text"), null_markers=MARKERS),
        plan("boolean", ("yes_no", "one_zero"), null_markers=MARKERS),
        plan("text", ("text", "integer_as_text", "real_as_text", "blob_as_text"), strip_nul=True,
             normalize_newlines=True),
        plan("bytea", ("blob", "text_as_bytes")),
    ]
)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(raw_values, min_size=1, max_size=12), column=any_plan)
def test_a_value_converts_the_same_alone_as_among_values_of_other_storage_classes(values, column):
    # Formats that cannot apply to the storage classes present are left out of the query; that must
    # never change a value's result.
    together = convert_column(raw_from_python("c", values), column)
    for position, value in enumerate(values):
        alone = convert_column(raw_from_python("c", [value]), column)
        assert (
            together.values[position], together.outcome[position], together.operation[position],
            together.reason[position],
        ) == (alone.values[0], alone.outcome[0], alone.operation[0], alone.reason[0])
