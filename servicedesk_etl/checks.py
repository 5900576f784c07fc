"""The gates as Dagster asset checks: their specs, and GateResult -> AssetCheckResult.

Each gate is computed by its step in `pipeline.py`; the asset that runs the step yields the results,
so the evidence is computed once and the checks carry it as metadata.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from servicedesk_etl.gates import GateResult

GATES: dict[str, dict[str, str]] = {
    "sqlite_backup": {
        "preflight": "Disk, memory, PostgreSQL, pg_dump and the snapshot itself are fit for a run.",
        "backup_verified": "The backup's checksum, PRAGMA integrity_check and row counts match the snapshot.",
    },
    "profile_report": {
        "type_confidence": "Every column converts to its planned type for >= 95% of its non-null values.",
        "circuit_breaker": "Halt when any column is more than 20% unconvertible.",
        "dry_run": "The planned DDL and conversions load a sample into a throwaway schema.",
        "quality_score": "The snapshot's 0-100 quality score and its five dimensions (warning only).",
    },
    "cleaned_db": {
        "quality_gate": "The cleaned file scores >= 80.",
        "source_unchanged": "The source's checksum is identical before and after cleaning.",
        "quality_improved": "The score after cleaning is >= the score before.",
        "cells_reconciled": "Non-null source cells = non-null cleaned + quarantined + nulled by a rule, per column.",
    },
    "canary_schema": {
        "canary_types": "The planned PostgreSQL types are present (timestamp, not text).",
        "canary_reconciled": "Counts and per-column aggregates of the sample match the cleaned file.",
        "canary_queries": "Every dashboard query template runs on the sample.",
    },
    "production_schema": {
        "production_types": "The planned PostgreSQL types are present in the new version.",
        "production_reconciled": "Counts, non-null counts, min/max, sums and text hashes match the cleaned file.",
        "production_queries": "Every dashboard query template runs on the new version.",
        "production_quality": "The loaded data scores at least as well as the cleaned file.",
    },
}

NON_BLOCKING = {"quality_score"}

# Metadata entries that are files a person may open (shown as paths in the UI).
PATH_KEYS = {"plan", "report", "report_json", "path", "backup", "live_schema_backup"}


def check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset, description=description, blocking=name not in NON_BLOCKING)
        for name, description in GATES[asset].items()
    ]


def check_result(asset: str, gate: GateResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=gate.name,
        passed=gate.passed,
        severity=dg.AssetCheckSeverity.ERROR if gate.blocking else dg.AssetCheckSeverity.WARN,
        description=gate.summary,
        metadata={"summary": gate.summary, **dagster_metadata(gate.metadata)},
    )


def dagster_metadata(values: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON-able figures as Dagster metadata values (nested data as JSON)."""
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (dict, list, tuple)):
            converted[key] = dg.MetadataValue.json(value)
        elif isinstance(value, str) and key in PATH_KEYS:
            converted[key] = dg.MetadataValue.path(value)
        elif isinstance(value, (bool, int, float, str)):
            converted[key] = value
        else:
            converted[key] = str(value)
    return converted
