"""The code location: assets, their checks, jobs and resources."""

from __future__ import annotations

import dagster as dg

from servicedesk_etl.assets import ALL_ASSETS
from servicedesk_etl.jobs import migration_job, rollback_job
from servicedesk_etl.resources import GateSettings, PostgresTarget, SnapshotResource
from servicedesk_etl.sensors import DropDirectory, snapshot_sensor

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[migration_job, rollback_job],
    sensors=[snapshot_sensor],
    resources={
        "snapshot": SnapshotResource(),
        "target": PostgresTarget(),
        "gates": GateSettings(),
        "drop_directory": DropDirectory(),
        "io_manager": dg.FilesystemIOManager(),
    },
)
