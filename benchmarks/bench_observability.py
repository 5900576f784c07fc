"""The cost of one log event, one metric update and one progress update (the aim: well under 1 ms).

    python benchmarks/bench_observability.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from servicedesk_etl.observability import LogProgressSink, PipelineMetrics, ProgressTracker, configure_logging

log = logging.getLogger("servicedesk_etl.bench")


def cost_per_call(action: Callable[[int], object], repeat: int) -> float:
    started = time.perf_counter()
    for i in range(repeat):
        action(i)
    return (time.perf_counter() - started) / repeat


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="servicedesk-bench-obs-") as scratch:
        configure_logging(Path(scratch), run_id="bench", console=False)
        metrics = PipelineMetrics()
        progress = ProgressTracker(10**9, "bench", LogProgressSink(log, every_seconds=10))
        costs = {
            "log event": cost_per_call(lambda i: log.info("row batch %d", i, extra={"table": "tickets"}), 5000),
            "metric update": cost_per_call(lambda i: metrics.record_rows("cleaned_db", "tickets", 1), 50000),
            "progress update": cost_per_call(lambda i: progress.advance(1), 50000),
        }
    for name, seconds in costs.items():
        print(f"{name:<16} {seconds * 1e6:9.2f} us   {seconds / 1e-3:6.3f} of the 1 ms budget")
    return 0 if all(seconds < 1e-3 for seconds in costs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
