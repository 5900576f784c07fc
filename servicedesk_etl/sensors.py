"""The sensor that starts one migration run per new snapshot content in the drop directory."""

import os
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from servicedesk_etl.jobs import migration_job
from servicedesk_etl.settings import state_dir
from servicedesk_etl.snapshot_watch import WatchState, scan_drop_directory

ENV_DROP_DIR = "SERVICEDESK_DROP_DIR"


class DropDirectory(dg.ConfigurableResource):
    """Where new snapshots land: config `path`, else `SERVICEDESK_DROP_DIR`, else `<state dir>/incoming`."""

    path: str = Field(default="", description="Directory watched for new SQLite snapshots.")
    stable_seconds: float = Field(default=30.0, description="How long size and mtime must stay unchanged.")

    def directory(self) -> Path:
        chosen = self.path or os.environ.get(ENV_DROP_DIR) or str(state_dir() / "incoming")
        return Path(chosen).expanduser().resolve()


@dg.sensor(job=migration_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def snapshot_sensor(context: dg.SensorEvaluationContext, drop_directory: DropDirectory) -> dg.SensorResult:
    """One run per distinct snapshot content (run_key = SHA-256), once the file is stable."""
    directory = drop_directory.directory()
    scan = scan_drop_directory(
        directory,
        WatchState.from_cursor(context.cursor),
        now=time.time(),
        stable_seconds=drop_directory.stable_seconds,
    )
    for skipped in scan.skipped:
        context.log.info("skipped %s: %s", skipped.path.name, skipped.reason)
    requests = [
        dg.RunRequest(
            run_key=ready.sha256,
            run_config={"resources": {"snapshot": {"config": {"path": str(ready.path)}}}},
            tags={"servicedesk_etl/source": str(ready.path), "servicedesk_etl/sha256": ready.sha256,
                  "servicedesk_etl/started_by": "sensor"},
        )
        for ready in scan.ready
    ]
    for ready in scan.ready:
        context.log.info("requesting a run for %s (sha256 %s)", ready.path.name, ready.sha256[:12])
    return dg.SensorResult(run_requests=requests, cursor=scan.state.to_cursor())
