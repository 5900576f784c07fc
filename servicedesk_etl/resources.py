"""Dagster resources: the SQLite snapshot, the PostgreSQL target and the gates' thresholds.

Configuration is resolved when a run uses it, never at import time. A DSN given on the command
line reaches the run through the environment, so no password is stored in Dagster's run config.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from servicedesk_etl.embedded_pg import embedded_dsn
from servicedesk_etl.errors import InputError
from servicedesk_etl.pipeline import PipelineSettings
from servicedesk_etl.settings import configured_dsn, state_dir

ENV_SNAPSHOT = "SERVICEDESK_SNAPSHOT"
DEMO_SNAPSHOT_NAME = "servicedesk_tickets.db"


def demo_snapshot_path() -> Path:
    return state_dir() / "demo" / DEMO_SNAPSHOT_NAME


class SnapshotResource(dg.ConfigurableResource):
    """The SQLite snapshot to migrate (read-only): config `path`, else `SERVICEDESK_SNAPSHOT`, else the demo."""

    path: str = Field(default="", description="Path of the SQLite snapshot; empty means SERVICEDESK_SNAPSHOT or the demo snapshot.")

    def resolved_path(self) -> Path:
        chosen = self.path or os.environ.get(ENV_SNAPSHOT) or str(demo_snapshot_path())
        path = Path(chosen).expanduser().resolve()
        if not path.exists():
            raise InputError(f"{path}: no such snapshot (set the snapshot resource's path or {ENV_SNAPSHOT})")
        return path


class PostgresTarget(dg.ConfigurableResource):
    """The PostgreSQL server: `SERVICEDESK_PG_DSN` when set, else the embedded server in the state directory."""

    def dsn(self) -> str:
        return configured_dsn() or embedded_dsn(state_dir())


class GateSettings(dg.ConfigurableResource):
    """The thresholds every gate applies (defaults as in SPEC.md)."""

    min_type_confidence: float = 0.95
    max_unconvertible_share: float = 0.20
    min_typed_confidence: float = 0.80
    min_declared_confidence: float = 0.50
    min_quality_score: float = 80.0
    canary_percent: float = 10.0
    keep_versions: int = 3
    keep_runs: int = Field(default=30, description="Run directories kept (each holds its snapshot copy and cleaned file); 0 keeps all.")
    load_workers: int = 2
    day_first_default: bool = True
    duplicate_policy: str = "keep_first"
    check_every_rows: int = 10_000
    min_free_disk_ratio: float = 2.0
    min_free_disk_bytes: int = 256 * 2**20
    min_available_memory_bytes: int = 256 * 2**20
    rule_packs: list[str] = Field(default_factory=list, description="Extra rule pack files (TOML); one named like a shipped pack replaces it.")
    rule_mapping: str | None = Field(default=None, description="A column-name mapping file for renamed exports.")

    def settings(self) -> PipelineSettings:
        values = self.model_dump()
        values["rule_packs"] = tuple(values["rule_packs"])
        return dataclasses.replace(PipelineSettings(), **values)
