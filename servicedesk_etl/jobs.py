"""Jobs: the whole migration graph."""

from __future__ import annotations

import dagster as dg

MIGRATION_JOB = "servicedesk_migration"

migration_job = dg.define_asset_job(
    MIGRATION_JOB,
    selection=dg.AssetSelection.all(),
    description="Snapshot -> backup -> profile -> clean -> canary -> production, every gate blocking.",
)
