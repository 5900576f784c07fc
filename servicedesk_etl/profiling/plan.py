"""The plan: one serialisable document that decides, per column, the target type and conversion.

The profiler writes it; the cleaner, the loader and the checks execute it. Nobody downstream
re-guesses a type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PLAN_VERSION = 1

TARGET_TYPES = (
    "bigint",
    "numeric",
    "double precision",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "text",
    "bytea",
)

# Declared types the cleaned SQLite file gets, so it is a correct database for other readers too.
SQLITE_DECLARED_TYPE = {
    "bigint": "INTEGER",
    "numeric": "NUMERIC",
    "double precision": "REAL",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
    "text": "TEXT",
    "bytea": "BLOB",
}


@dataclass(frozen=True)
class FormatEvidence:
    """One recognised input format in a column: its parser id, how many rows use it, an example."""

    format: str
    count: int
    example: str


@dataclass(frozen=True)
class Conversion:
    """What the cleaner does with each raw value of a column; executed exactly as written.

    `formats` are ids from the parser registry (`profiling.convert.FORMATS`) that convert to the
    target type; a value in no listed format is quarantined. `null_markers` are text values
    (compared after stripping whitespace, case-insensitively) that mean NULL; `''` stands for
    empty and whitespace-only strings.
    """

    formats: tuple[str, ...] = ()
    day_first: bool | None = None
    day_first_assumed: bool = False
    null_markers: tuple[str, ...] = ()
    strip_nul: bool = False
    normalize_newlines: bool = False
    invalid_utf8: str = "cp1252"


@dataclass(frozen=True)
class ColumnProfile:
    """The evidence behind a column's plan (counts over the whole table unless `sampled`)."""

    rows: int = 0
    nulls: int = 0
    empty_strings: int = 0
    whitespace_only: int = 0
    null_markers: dict[str, int] = field(default_factory=dict)
    storage_classes: dict[str, int] = field(default_factory=dict)
    distinct_values: int = 0
    formats: tuple[FormatEvidence, ...] = ()
    convertible: int = 0
    unconvertible: int = 0
    counterexamples: tuple[str, ...] = ()
    max_length: int = 0
    nul_bytes: int = 0
    crlf: int = 0
    invalid_utf8: int = 0


@dataclass(frozen=True)
class ColumnPlan:
    name: str
    pg_name: str
    declared_type: str
    target_type: str
    conversion: Conversion
    confidence: float
    reason: str = ""
    unique: bool = False
    profile: ColumnProfile = field(default_factory=ColumnProfile)

    @property
    def sqlite_type(self) -> str:
        return SQLITE_DECLARED_TYPE[self.target_type]


@dataclass(frozen=True)
class TablePlan:
    name: str
    pg_name: str
    row_count: int
    columns: tuple[ColumnPlan, ...]
    key_columns: tuple[str, ...] = ()
    sampled: bool = False

    def column(self, name: str) -> ColumnPlan:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"table {self.name!r} has no column {name!r}")


@dataclass(frozen=True)
class Plan:
    source_path: str
    source_sha256: str
    created_at: str
    tables: tuple[TablePlan, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def table(self, name: str) -> TablePlan:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"the plan has no table {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def write(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('version')!r} is not {PLAN_VERSION}")
        return _build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    @classmethod
    def read(cls, path: Path | str) -> Plan:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


T = TypeVar("T")


def _build(kind: type[T], data: dict[str, Any]) -> T:
    hints = typing.get_type_hints(kind)
    values = {}
    for spec in dataclasses.fields(kind):  # type: ignore[arg-type]
        if spec.name in data:
            values[spec.name] = _coerce(hints[spec.name], data[spec.name])
    return kind(**values)


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(hint, value)  # type: ignore[arg-type]
    if origin is tuple:
        (item, *_rest) = typing.get_args(hint)
        return tuple(_coerce(item, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return _build(option, value)
    return value
