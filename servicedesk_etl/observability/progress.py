"""Progress of a long step: rows done, rows per second and ETA, shown as a rich bar or as periodic log lines.

```python
with ProgressTracker(total_rows, "loading tickets", LogProgressSink(log, every_seconds=10)) as progress:
    for batch in batches:
        ...
        progress.advance(len(batch))
```
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


@dataclass(frozen=True)
class ProgressSnapshot:
    label: str
    done: int
    total: int | None
    elapsed_seconds: float
    rows_per_second: float
    eta_seconds: float | None

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(self.done / self.total, 1.0)


class ProgressSink(Protocol):
    def update(self, tracker: ProgressTracker) -> None: ...

    def finish(self, tracker: ProgressTracker) -> None: ...


class ProgressTracker:
    """Counts rows done against an optional total; tells its sink after every `advance`."""

    def __init__(self, total: int | None, label: str, sink: ProgressSink | None = None, *,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None) -> None:
        self.total = total
        self.label = label
        self.sink = sink
        self.done = 0
        self._clock = clock
        self._started = clock() if started is None else started
        self._finished = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.sink is not None:
            self.sink.update(self)

    @property
    def elapsed_seconds(self) -> float:
        return self._clock() - self._started

    @property
    def rows_per_second(self) -> float:
        elapsed = self.elapsed_seconds
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average rate so far; None without a total or before any progress."""
        rate = self.rows_per_second
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(self.label, self.done, self.total, self.elapsed_seconds, self.rows_per_second,
                                self.eta_seconds)

    def close(self) -> None:
        if not self._finished and self.sink is not None:
            self.sink.finish(self)
        self._finished = True

    def __enter__(self) -> ProgressTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LogProgressSink:
    """Logs one `progress` line at most every `every_seconds` (and one when the step finishes)."""

    def __init__(self, logger: logging.Logger, every_seconds: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every_seconds = every_seconds
        self._clock = clock
        self._last = clock()

    def update(self, tracker: ProgressTracker) -> None:
        now = self._clock()
        if now - self._last >= self.every_seconds:
            self._last = now
            self._emit(tracker, "progress")

    def finish(self, tracker: ProgressTracker) -> None:
        self._emit(tracker, "finished")

    def _emit(self, tracker: ProgressTracker, event: str) -> None:
        snap = tracker.snapshot()
        eta = "unknown" if snap.eta_seconds is None else f"{snap.eta_seconds:.0f} s"
        self.logger.info(
            "%s %s: %d/%s rows, %.0f rows/s, ETA %s", snap.label, event, snap.done,
            snap.total if snap.total is not None else "?", snap.rows_per_second, eta,
            extra={"progress_label": snap.label, "rows_done": snap.done, "rows_total": snap.total,
                   "rows_per_second": round(snap.rows_per_second, 1), "eta_seconds": snap.eta_seconds},
        )


class RichProgressSink:
    """A rich progress bar with rows done, rows/s and time remaining (for the CLI)."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10} rows/s"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._task: TaskID | None = None

    def update(self, tracker: ProgressTracker) -> None:
        if self._task is None:
            self.progress.start()
            self._task = self.progress.add_task(tracker.label, total=tracker.total, rate="0")
        self.progress.update(self._task, completed=tracker.done, rate=f"{tracker.rows_per_second:,.0f}")

    def finish(self, tracker: ProgressTracker) -> None:
        self.update(tracker)
        self.progress.stop()


def default_progress_sink(logger: logging.Logger, console: Console | None = None,
                          every_seconds: float = 10.0) -> ProgressSink:
    """A rich bar when `console` is an interactive terminal, else periodic log lines."""
    if console is not None and console.is_terminal:
        return RichProgressSink(console)
    return LogProgressSink(logger, every_seconds)


class TableProgress:
    """Adapts a step's `(table, rows_done, rows_total)` callbacks to one ProgressTracker per table."""

    def __init__(self, step: str, sink_factory: Callable[[], ProgressSink], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.step = step
        self.sink_factory = sink_factory
        self._clock = clock
        self._started = clock()
        self._trackers: dict[str, ProgressTracker] = {}

    def __call__(self, table: str, done: int, total: int) -> None:
        tracker = self._trackers.get(table)
        if tracker is None:
            # A table first heard of with rows already done started at some unknown moment since the
            # step began: timing it from the step's start understates its rate rather than inventing one.
            started = None if done == 0 else self._started
            tracker = ProgressTracker(total, f"{self.step} {table}", self.sink_factory(), clock=self._clock,
                                      started=started)
            self._trackers[table] = tracker
        tracker.advance(done - tracker.done)
        if done >= total:
            tracker.close()
