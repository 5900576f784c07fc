"""The 0-100 quality score: five weighted dimensions, measured in the engine through a table source.

The same code scores the raw snapshot, the cleaned SQLite file and the loaded PostgreSQL schema,
each as its values are stored there, so the score rises as the data is cleaned:

- completeness (40): cells holding a value; NULL, '' , whitespace and null markers are missing.
- validity (30): present values stored as the plan's target type in that engine.
- consistency (20): id columns hold numbers; created <= modified <= closed where those exist.
- uniqueness (5): key-like columns hold no repeats; no duplicate rows.
- integrity (5): references between key-like columns resolve; text has no NUL bytes or invalid UTF-8.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from servicedesk_etl.profiling import sources as m
from servicedesk_etl.profiling.plan import Plan
from servicedesk_etl.profiling.rules import (
    NUMBER_TYPES,
    Catalog,
    ColumnRef,
    RulePackError,
    date_order_pairs,
    detect_links,
    is_id_like,
    key_column,
    may_hold_invalid_utf8,
    reference,
    validate_weights,
)
from servicedesk_etl.profiling.sources import (
    DEFAULT_NULL_MARKERS,
    Link,
    Measure,
    TableSource,
    postgres_source,
    sqlite_source,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "DimensionEvidence",
    "QualityScore",
    "TableSource",
    "grade_for",
    "postgres_source",
    "score_quality",
    "sqlite_source",
]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS: dict[str, float] = {
    "completeness": 40.0,
    "validity": 30.0,
    "consistency": 20.0,
    "uniqueness": 5.0,
    "integrity": 5.0,
}
GRADES = ((90.0, "excellent"), (80.0, "good"), (70.0, "acceptable"), (60.0, "poor"))
MAX_FAILING_LISTED = 10


def grade_for(score: float) -> str:
    """>= 90 excellent, >= 80 good, >= 70 acceptable, >= 60 poor, else failed."""
    for floor, grade in GRADES:
        if score >= floor:
            return grade
    return "failed"


@dataclass(frozen=True)
class DimensionEvidence:
    """What a dimension counted: `good` of `checked`, and the worst targets (label, ratio, bad count)."""

    good: int
    checked: int
    failing: tuple[dict[str, Any], ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QualityScore:
    score: float
    grade: str
    dimensions: dict[str, float]
    evidence: dict[str, DimensionEvidence] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    source: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "grade": self.grade,
            "dimensions": dict(self.dimensions),
            "weights": dict(self.weights),
            "source": self.source,
            "evidence": {
                name: {"good": e.good, "checked": e.checked, "failing": list(e.failing), **e.details}
                for name, e in self.evidence.items()
            },
        }


def validate_score_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The five dimensions, each weighted, summing to 100 (RulePackError otherwise)."""
    if set(weights) != set(DEFAULT_WEIGHTS):
        raise RulePackError(
            f"quality score weights must name exactly {', '.join(DEFAULT_WEIGHTS)} (got {', '.join(weights)})"
        )
    return validate_weights(weights, "quality score")


@dataclass
class _Tally:
    """Good-of-checked counts per target label, summed into one dimension."""

    targets: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, label: str, good: int, checked: int) -> None:
        self.targets[label] = (good, checked)

    @property
    def good(self) -> int:
        return sum(good for good, _ in self.targets.values())

    @property
    def checked(self) -> int:
        return sum(checked for _, checked in self.targets.values())

    def percent(self) -> float:
        return 100.0 * self.good / self.checked if self.checked else 100.0

    def evidence(self, **details: Any) -> DimensionEvidence:
        failing = sorted(
            ((label, good, checked) for label, (good, checked) in self.targets.items() if checked and good < checked),
            key=lambda item: (item[1] / item[2], item[0]),
        )
        listed = tuple(
            {"target": label, "ratio": round(good / checked, 6), "bad": checked - good}
            for label, good, checked in failing[:MAX_FAILING_LISTED]
        )
        return DimensionEvidence(self.good, self.checked, listed, details)


def score_quality(source: TableSource, plan: Plan, weights: Mapping[str, float] | None = None) -> QualityScore:
    """Score the plan's tables as `source` holds them: one aggregate scan per table, plus a
    duplicate-row query per table without a unique key and one query per detected reference.
    `weights` (default 40/30/20/5/5) must name the five dimensions and sum to 100."""
    chosen = validate_score_weights(weights if weights is not None else DEFAULT_WEIGHTS)
    start = time.perf_counter()
    markers = tuple(plan.settings.get("null_markers", DEFAULT_NULL_MARKERS))
    with source.connected():
        catalog = Catalog(source, plan)
        counts = _measure_tables(catalog, markers)
        tallies = _tallies(catalog, counts, markers)
    dimensions = {name: round(tallies[name].percent(), 2) for name in DEFAULT_WEIGHTS}
    dimensions["integrity"] = round(_integrity(tallies), 2)
    score = round(sum(chosen[name] * dimensions[name] for name in chosen) / 100.0, 2)
    missing_tables = {"missing_tables": list(catalog.missing_tables)} if catalog.missing_tables else {}
    evidence = {
        "completeness": tallies["completeness"].evidence(**missing_tables),
        **{name: tallies[name].evidence() for name in ("validity", "consistency", "uniqueness")},
        "integrity": _integrity_evidence(tallies),
    }
    seconds = time.perf_counter() - start
    log.info("quality of %s: %.2f (%s) in %.2fs", source.label, score, grade_for(score), seconds)
    return QualityScore(score, grade_for(score), dimensions, evidence, chosen, source.label, seconds)


def _wanted(catalog: Catalog, table_name: str) -> list[Measure]:
    table = catalog.tables[table_name]
    refs = catalog.refs(table)
    wanted = [Measure(m.ROWS)]
    for ref in refs:
        column = ref.physical_column
        wanted += [Measure(m.MISSING, column), Measure(m.CONFORMING, column, (ref.column.target_type,))]
        if _is_numeric_id(ref):
            wanted.append(Measure(m.NUMERIC, column))
        if ref.column.target_type == "text":
            wanted += [Measure(m.TEXT_VALUES, column), Measure(m.NUL_BYTES, column)]
            if may_hold_invalid_utf8(ref.column):
                wanted.append(Measure(m.INVALID_UTF8, column))
    key = _key_ref(catalog, table_name)
    if key is not None:
        wanted.append(Measure(m.DISTINCT_KEYS, key.physical_column))
    for early, late in _pairs(catalog, table_name):
        wanted += [Measure(kind, early.physical_column, (late.physical_column,)) for kind in (m.COMPARABLE, m.ORDERED)]
    return wanted


def _measure_tables(catalog: Catalog, markers: tuple[str, ...]) -> dict[str, dict[Measure, int]]:
    return {
        name: catalog.source.measure(catalog.physical[name], _wanted(catalog, name), markers) for name in catalog.tables
    }


def score_questions(source: TableSource, plan: Plan) -> tuple[dict[str, list[Measure]], list[Link]]:
    """What `score_quality(source, plan)` asks `source`, without counting anything: the measures of
    each table, and the references whose orphans it counts."""
    catalog = Catalog(source, plan)
    measures = {catalog.physical[name]: _wanted(catalog, name) for name in catalog.tables}
    return measures, [reference(child, parent) for child, parent in detect_links(catalog)]


def _is_numeric_id(ref: ColumnRef) -> bool:
    return is_id_like(ref.column.name) and ref.column.target_type in NUMBER_TYPES


def _key_ref(catalog: Catalog, table_name: str) -> ColumnRef | None:
    table = catalog.tables[table_name]
    key = key_column(table)
    return catalog.ref(table, key) if key is not None else None


def _pairs(catalog: Catalog, table_name: str) -> list[tuple[ColumnRef, ColumnRef]]:
    table = catalog.tables[table_name]
    pairs = []
    for early, late in date_order_pairs(table):
        a, b = catalog.ref(table, early), catalog.ref(table, late)
        if a is not None and b is not None:
            pairs.append((a, b))
    return pairs


def _tallies(
    catalog: Catalog, counts: Mapping[str, Mapping[Measure, int]], markers: tuple[str, ...]
) -> dict[str, _Tally]:
    tallies = {name: _Tally() for name in (*DEFAULT_WEIGHTS, "referential", "text")}
    for name, table in catalog.tables.items():
        measured = counts[name]
        rows = measured[Measure(m.ROWS)]
        for ref in catalog.refs(table):
            column = ref.physical_column
            present = rows - measured[Measure(m.MISSING, column)]
            tallies["completeness"].add(ref.label, present, rows)
            conforming = measured[Measure(m.CONFORMING, column, (ref.column.target_type,))]
            tallies["validity"].add(ref.label, conforming, present)
            if _is_numeric_id(ref):
                tallies["consistency"].add(ref.label, measured[Measure(m.NUMERIC, column)], present)
            if ref.column.target_type == "text":
                corrupt = measured[Measure(m.NUL_BYTES, column)] + measured.get(Measure(m.INVALID_UTF8, column), 0)
                texts = measured[Measure(m.TEXT_VALUES, column)]
                tallies["text"].add(ref.label, texts - min(corrupt, texts), texts)
        for early, late in _pairs(catalog, name):
            ordered = measured[Measure(m.ORDERED, early.physical_column, (late.physical_column,))]
            comparable = measured[Measure(m.COMPARABLE, early.physical_column, (late.physical_column,))]
            tallies["consistency"].add(f"{early.label} <= {late.column.name}", ordered, comparable)
        key = _key_ref(catalog, name)
        key_unique = False
        if key is not None:
            present = rows - measured[Measure(m.MISSING, key.physical_column)]
            distinct = measured[Measure(m.DISTINCT_KEYS, key.physical_column)]
            tallies["uniqueness"].add(f"{key.label} (key)", distinct, present)
            key_unique = distinct == present == rows
        # identical rows share their key, so a complete unique key proves there are none
        duplicates = 0 if key_unique else catalog.source.duplicate_rows(catalog.physical[name])
        tallies["uniqueness"].add(f"{name} (rows)", rows - duplicates, rows)
    for child, parent in detect_links(catalog):
        found = catalog.source.orphans(reference(child, parent), markers)
        tallies["referential"].add(f"{child.label} -> {parent.label}", found.checked - found.orphans, found.checked)
    return tallies


def _integrity(tallies: Mapping[str, _Tally]) -> float:
    """The mean of referential and text integrity, over those that had anything to check."""
    parts = [tallies[name].percent() for name in ("referential", "text") if tallies[name].checked]
    return sum(parts) / len(parts) if parts else 100.0


def _integrity_evidence(tallies: Mapping[str, _Tally]) -> DimensionEvidence:
    referential, text = tallies["referential"], tallies["text"]
    combined = _Tally({**referential.targets, **text.targets})
    return combined.evidence(
        referential={"good": referential.good, "checked": referential.checked},
        text={"good": text.good, "checked": text.checked},
    )
