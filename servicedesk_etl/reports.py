"""Human-readable reports (Markdown) of what a gate saw and decided."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servicedesk_etl.gates import GateResult
from servicedesk_etl.profiling.plan import ColumnPlan, Plan


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", "\\n").replace("\r", "\\r").replace("\x00", "\\0")


def _formats(column: ColumnPlan) -> str:
    seen = ", ".join(f"{f.format} x{f.count} (`{_cell(f.example)}`)" for f in column.profile.formats[:4])
    if column.conversion.day_first is not None:
        order = "day-first" if column.conversion.day_first else "month-first"
        seen += f"; {order}{' (ASSUMED: no value proves it)' if column.conversion.day_first_assumed else ''}"
    return seen


def _nulls(column: ColumnPlan) -> str:
    profile = column.profile
    parts = [f"NULL {profile.nulls}"]
    if profile.empty_strings:
        parts.append(f"'' {profile.empty_strings}")
    if profile.whitespace_only:
        parts.append(f"blank {profile.whitespace_only}")
    parts += [f"{marker!r} {count}" for marker, count in profile.null_markers.items() if count]
    return ", ".join(parts)


def render_profile_report(plan: Plan, gates: Sequence[GateResult], score: Any, rules: Any) -> str:
    lines = [
        "# Profile report",
        "",
        f"- source: `{plan.source_path}` (sha256 `{plan.source_sha256[:16]}...`)",
        f"- profiled at: {plan.created_at}",
        f"- quality score: **{score.score:.1f}/100 ({score.grade})** — "
        + ", ".join(f"{name} {value:.1f}" for name, value in score.dimensions.items()),
        "",
        "## Gates",
        "",
        "| gate | result | detail |",
        "|---|---|---|",
    ]
    for gate in gates:
        verdict = "pass" if gate.passed else ("FAIL" if gate.blocking else "warn")
        lines.append(f"| {gate.name} | {verdict} | {_cell(gate.summary)} |")
    lines += [
        "",
        f"## Rules (score {rules.score:.1f}/100)",
        "",
        "| rule | category | name | status | observed | threshold | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in rules.results:
        detail = result.message or (f"missing: {', '.join(result.missing)}" if result.missing else "")
        observed = "" if result.observed is None else f"{result.observed:.4g}"
        lines.append(
            f"| {result.rule_id} | {result.category} | {_cell(result.name)} | {result.status} | {observed} | "
            f"{_cell(result.threshold)} | {_cell(detail)} |"
        )
    for table in plan.tables:
        lines += [
            "",
            f"## `{table.name}` -> `{table.pg_name}`",
            "",
            f"{table.row_count:,} rows; key: {', '.join(table.key_columns) or 'none proven'}; "
            + ("inference on a seeded random sample, counts on the full table" if table.sampled else "full scan"),
            "",
            "| column | PostgreSQL name | declared | planned type | confidence | formats seen | nulls and markers | counterexamples | reason |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for column in table.columns:
            lines.append(
                f"| {_cell(column.name)} | {_cell(column.pg_name)} | {_cell(column.declared_type)} | "
                f"**{column.target_type}** | {column.confidence:.2%} | {_cell(_formats(column))} | "
                f"{_cell(_nulls(column))} | {_cell(', '.join(map(repr, column.profile.counterexamples)))} | "
                f"{_cell(column.reason)} |"
            )
    return "\n".join(lines) + "\n"


def write_profile_report(plan: Plan, gates: Sequence[GateResult], score: Any, rules: Any, path: Path) -> Path:
    path.write_text(render_profile_report(plan, gates, score, rules), encoding="utf-8")
    return path
