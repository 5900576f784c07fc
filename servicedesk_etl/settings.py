"""Where the project keeps its state, and the environment variables it reads.

Everything is read when called, never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "SERVICEDESK_ETL_HOME"
ENV_PG_DSN = "SERVICEDESK_PG_DSN"
ENV_TEST_PG_DSN = "SERVICEDESK_TEST_PG_DSN"
ENV_DAGSTER_HOME = "DAGSTER_HOME"

DEFAULT_HOME = ".servicedesk_etl"
LIVE_SCHEMA = "servicedesk"


def state_dir() -> Path:
    """The state directory (`SERVICEDESK_ETL_HOME`, default `./.servicedesk_etl`), created if missing."""
    home = Path(os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def configured_dsn() -> str | None:
    """The target DSN from `SERVICEDESK_PG_DSN`, or None when the embedded server should be used."""
    return os.environ.get(ENV_PG_DSN) or None


def dagster_home() -> Path:
    """`DAGSTER_HOME` when set, else `<state dir>/dagster`, created if missing."""
    home = Path(os.environ.get(ENV_DAGSTER_HOME) or state_dir() / "dagster").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def runs_dir() -> Path:
    """Where per-run artefacts (backups, plans, cleaned files, reports) are written."""
    path = state_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pg_backups_dir() -> Path:
    """Where the live schema is dumped (pg_dump, custom format) before a cutover replaces it."""
    return state_dir() / "backups" / "postgres"
