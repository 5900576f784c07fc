"""Which snapshots in a drop directory are ready to migrate: stable, not mid-write, not seen before.

Plain logic for the Dagster sensor: a file is ready once its size and mtime stayed the same for
`stable_seconds` across two looks, it has no SQLite hot journal, no writer locks it, and its content
(SHA-256) has not been requested before — so a renamed or touched copy never migrates twice.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from servicedesk_etl.errors import InputError
from servicedesk_etl.sqlite_source import file_sha256, open_readonly

SNAPSHOT_SUFFIXES = (".db", ".sqlite", ".sqlite3")
REMEMBERED_HASHES = 1000


@dataclass(frozen=True)
class Sighting:
    size: int
    mtime_ns: int
    since: float


@dataclass
class WatchState:
    """The sensor's cursor: files seen and how they looked, and content already requested."""

    sightings: dict[str, Sighting] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)

    def to_cursor(self) -> str:
        return json.dumps({
            "sightings": {path: [s.size, s.mtime_ns, s.since] for path, s in self.sightings.items()},
            "requested": self.requested[-REMEMBERED_HASHES:],
        })

    @classmethod
    def from_cursor(cls, cursor: str | None) -> WatchState:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        sightings = {path: Sighting(int(size), int(mtime), float(since)) for path, (size, mtime, since) in data["sightings"].items()}
        return cls(sightings, list(data.get("requested", [])))


@dataclass(frozen=True)
class ReadySnapshot:
    path: Path
    sha256: str


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class Scan:
    ready: tuple[ReadySnapshot, ...]
    skipped: tuple[Skipped, ...]
    state: WatchState


def scan_drop_directory(directory: Path, state: WatchState, *, now: float, stable_seconds: float) -> Scan:
    ready: list[ReadySnapshot] = []
    skipped: list[Skipped] = []
    sightings: dict[str, Sighting] = {}
    requested = list(state.requested)
    candidates = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SNAPSHOT_SUFFIXES) if directory.is_dir() else []
    for path in candidates:
        key = str(path)
        stat = path.stat()
        previous = state.sightings.get(key)
        if previous is None or (previous.size, previous.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            sightings[key] = Sighting(stat.st_size, stat.st_mtime_ns, now)
            skipped.append(Skipped(path, "new or still changing; waiting until it is stable"))
            continue
        sightings[key] = previous
        if now - previous.since < stable_seconds:
            skipped.append(Skipped(path, f"unchanged for {now - previous.since:.0f}s of the {stable_seconds:.0f}s required"))
            continue
        problem = mid_write_problem(path)
        if problem:
            skipped.append(Skipped(path, problem))
            continue
        digest = file_sha256(path)
        if digest in requested:
            skipped.append(Skipped(path, f"content {digest[:12]} was already migrated"))
            continue
        requested.append(digest)
        ready.append(ReadySnapshot(path, digest))
    return Scan(tuple(ready), tuple(skipped), WatchState(sightings, requested[-REMEMBERED_HASHES:]))


def mid_write_problem(path: Path) -> str | None:
    """Why the file cannot be read safely now (hot journal, writer lock, not SQLite), or None."""
    for suffix in ("-journal", "-wal"):
        journal = path.with_name(path.name + suffix)
        if journal.exists() and journal.stat().st_size > 0:
            return f"a SQLite {suffix[1:]} file beside it is not empty: a writer is mid-transaction"
    try:
        conn = open_readonly(path)
    except InputError as error:
        return f"unreadable: {error}"
    try:
        conn.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.OperationalError as error:
        return f"locked by a writer ({error})"
    except sqlite3.DatabaseError as error:
        return f"unreadable: {error}"
    finally:
        conn.close()
    return None
