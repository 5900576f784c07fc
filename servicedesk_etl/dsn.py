"""DSN handling that never lets a password reach a log, a report or an error message."""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)", re.I)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def password_of(dsn: str) -> str | None:
    """The password a DSN carries, or None."""
    try:
        return conninfo_to_dict(dsn).get("password") or None
    except Exception:
        match = _URI_PASSWORD.search(dsn) or _KEYWORD_PASSWORD.search(dsn)
        return match.group("password") if match else None


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by `***`, safe to print."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return scrub(dsn, dsn)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def scrub(text: str, *dsns: str | None) -> str:
    """`text` with every password of `dsns` (and any URI or keyword password) replaced by `***`."""
    for dsn in dsns:
        if dsn:
            secret = password_of(dsn)
            if secret:
                text = text.replace(secret, "***")
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}" if m["password"] else m[0], text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}***", text)
