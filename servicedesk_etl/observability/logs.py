"""Structured logs: one JSON object per line in `<state dir>/logs/servicedesk_etl.jsonl`, readable text on a terminal.

Every line carries `timestamp`, `level`, `logger`, `run_id`, `asset`, `gate`, `event` (the message)
and `fields` (whatever was passed as `extra=`). Set the asset or gate of a block with
`log_context(asset="cleaned_db")`. A `ScrubFilter` on every handler replaces DSN passwords (those
registered with `register_secret_dsn` and any `user:password@` or `password=` form) before a record
is written anywhere.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from servicedesk_etl.dsn import scrub
from servicedesk_etl.jsonable import jsonable
from servicedesk_etl.settings import configured_dsn

LOG_FILE = Path("logs") / "servicedesk_etl.jsonl"
_HANDLER_TAG = "_servicedesk_etl_handler"
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName",
                                                                                  "run_id", "asset", "gate"}

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("servicedesk_etl_run_id", default=None)
_asset: contextvars.ContextVar[str | None] = contextvars.ContextVar("servicedesk_etl_asset", default=None)
_gate: contextvars.ContextVar[str | None] = contextvars.ContextVar("servicedesk_etl_gate", default=None)
_secret_dsns: set[str] = set()


def register_secret_dsn(dsn: str | None) -> None:
    """Remember a DSN whose password must be scrubbed from every log record from now on."""
    if dsn:
        _secret_dsns.add(dsn)


def set_run_id(run_id: str | None) -> None:
    _run_id.set(run_id)


@contextmanager
def log_context(*, asset: str | None = None, gate: str | None = None, run_id: str | None = None) -> Iterator[None]:
    """Tag every record logged inside the block with this asset, gate or run id."""
    tokens = [(var, var.set(value)) for var, value in ((_asset, asset), (_gate, gate), (_run_id, run_id)) if value]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current run id, asset and gate onto the record (explicit `extra=` values win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("run_id", _run_id), ("asset", _asset), ("gate", _gate)):
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class ScrubFilter(logging.Filter):
    """Replaces DSN passwords in the message, the exception text and string fields of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        dsns = tuple(_secret_dsns)
        message = record.getMessage()
        record.msg, record.args = scrub(message, *dsns), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, *dsns)
            record.exc_info = None
        for key, value in record.__dict__.items():
            if key not in _RESERVED and isinstance(value, str):
                record.__dict__[key] = scrub(value, *dsns)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        # Inside a Dagster run, its managed loggers prefix the message and attach `dagster_meta`.
        dagster_meta = getattr(record, "dagster_meta", None) or {}
        document = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "run_id": getattr(record, "run_id", None) or dagster_meta.get("run_id"),
            "asset": getattr(record, "asset", None) or dagster_meta.get("step_key"),
            "gate": getattr(record, "gate", None),
            "event": dagster_meta.get("orig_message") or record.getMessage(),
            "fields": {
                k: jsonable(v) for k, v in record.__dict__.items() if k not in _RESERVED and k != "dagster_meta"
            },
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL [run asset/gate] message key=value ...` for people."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        where = "/".join(filter(None, (getattr(record, "asset", None), getattr(record, "gate", None))))
        fields = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED)
        line = " ".join(filter(None, (time, f"{record.levelname:<7}", f"[{where}]" if where else "",
                                      record.getMessage(), fields)))
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def log_path(state_dir: Path) -> Path:
    return Path(state_dir) / LOG_FILE


def configure_logging(
    state_dir: Path, run_id: str | None = None, console: bool = True, *, level: int = logging.INFO
) -> Path:
    """Send the package's logs to the JSON-lines file (and stderr when `console`); returns the file's path.

    Calling it again replaces the handlers it installed before, so it is safe to call once per run.
    """
    path = log_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    set_run_id(run_id)
    register_secret_dsn(configured_dsn())
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_TAG, False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8")]
    handlers[0].setFormatter(JsonFormatter())
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(ConsoleFormatter())
        handlers.append(stream)
    for handler in handlers:
        handler.addFilter(ContextFilter())
        handler.addFilter(ScrubFilter())
        handler.setLevel(level)
        setattr(handler, _HANDLER_TAG, True)
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    return path
