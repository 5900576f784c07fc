"""The embedded PostgreSQL server (the `pgserver` wheel), kept under the state directory.

Started on demand and left running, so later runs (and the Dagster UI) reuse it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import ModuleType

from servicedesk_etl.errors import TargetUnreachable

log = logging.getLogger(__name__)


def _pgserver() -> ModuleType:
    """Import pgserver quietly (it warns that XDG_RUNTIME_DIR is unset, which is normal for root)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def embedded_dsn(home: Path, *, stop_on_exit: bool = False) -> str:
    """Start (or reuse) the server whose data lives in `home/pgdata` and return its DSN."""
    pgserver = _pgserver()
    pgdata = home / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(pgdata, cleanup_mode="stop" if stop_on_exit else None)
    except Exception as error:
        raise TargetUnreachable(f"the embedded PostgreSQL server in {pgdata} did not start: {error}") from error
    log.debug("embedded PostgreSQL ready in %s", pgdata)
    return server.get_uri()


def pg_bin_dir() -> Path:
    """The directory of the embedded server's client programs (pg_dump, pg_restore, psql)."""
    return Path(_pgserver().__file__).parent / "pginstall" / "bin"
