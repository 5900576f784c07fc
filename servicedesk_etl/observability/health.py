"""Health checks during long steps: free disk, available memory and the target connection.

```python
health = HealthCheck([state_dir], min_free_disk_bytes=2 * snapshot_size, min_available_memory_bytes=512 * 2**20,
                     dsn=target_dsn)
for rows_done in ...:
    health(rows_done)   # checks every `every_rows` rows; raises ResourceExhausted / TargetUnreachable
```
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import psutil
import psycopg

from servicedesk_etl.dsn import redact_dsn, scrub
from servicedesk_etl.errors import ResourceExhausted, TargetUnreachable
from servicedesk_etl.preflight import nearest_existing

log = logging.getLogger(__name__)


class HealthCheck:
    """Call `check()` for a full check, or the object itself with rows done to check every `every_rows` rows."""

    def __init__(self, paths: Sequence[Path], min_free_disk_bytes: int, min_available_memory_bytes: int,
                 dsn: str | None = None, *, every_rows: int = 100_000, connect_timeout: int = 5) -> None:
        self.paths = [Path(p) for p in paths]
        self.min_free_disk_bytes = min_free_disk_bytes
        self.min_available_memory_bytes = min_available_memory_bytes
        self.dsn = dsn
        self.every_rows = every_rows
        self.connect_timeout = connect_timeout
        self._next_check_at = 0

    def __call__(self, rows_done: int | None = None) -> None:
        """Check now without `rows_done`; with it, only once `every_rows` more rows are done since the last check."""
        if rows_done is None:
            self.check()
        elif rows_done >= self._next_check_at:
            self.check()
            self._next_check_at = rows_done + self.every_rows

    def check(self) -> None:
        log.debug("health check: disk %s, memory, connection %s", self.paths, "yes" if self.dsn else "no")
        self.check_disk()
        self.check_memory()
        self.check_connection()

    def check_disk(self) -> None:
        for path in self.paths:
            free = psutil.disk_usage(str(nearest_existing(path))).free
            if free < self.min_free_disk_bytes:
                raise ResourceExhausted(
                    f"only {free / 2**20:.0f} MiB free on {path} (need {self.min_free_disk_bytes / 2**20:.0f} MiB); "
                    "the step stopped before filling the disk: free space and run again"
                )

    def check_memory(self) -> None:
        available = psutil.virtual_memory().available
        if available < self.min_available_memory_bytes:
            raise ResourceExhausted(
                f"only {available / 2**20:.0f} MiB of memory available "
                f"(need {self.min_available_memory_bytes / 2**20:.0f} MiB); close other programs and run again"
            )

    def check_connection(self) -> None:
        if not self.dsn:
            return
        try:
            with psycopg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as error:
            reason = scrub(str(error).strip() or type(error).__name__, self.dsn)
            raise TargetUnreachable(f"lost the connection to {redact_dsn(self.dsn)}: {reason}") from error
