"""PostgreSQL names for SQLite tables and columns: the original wherever PostgreSQL allows it.

PostgreSQL truncates identifiers to 63 bytes (NAMEDATALEN - 1), so two long names sharing their
first 63 bytes would collide. A longer name becomes a prefix cut at a character boundary plus `_`
and a short hash of the full name; the same input always gives the same output. Names are always
quoted downstream, so spaces, `#`, `/`, `-`, mixed case and reserved words are kept as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

PG_MAX_IDENTIFIER_BYTES = 63
HASH_CHARS = 8
# Column names PostgreSQL reserves for system columns in every table.
SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid", "oid"})


@dataclass(frozen=True)
class NameMapping:
    original: str
    pg_name: str
    note: str = ""

    @property
    def renamed(self) -> bool:
        return self.original != self.pg_name


def pg_names(names: Sequence[str], *, columns: bool = True) -> list[NameMapping]:
    """One PostgreSQL name per input name, distinct within the list, each at most 63 bytes UTF-8."""
    taken: set[str] = set()
    mappings = []
    kept = {name for name in names if _allowed_as_is(name, columns)}
    for name in names:
        if name in kept and name not in taken:
            mapping = NameMapping(name, name)
        else:
            mapping = _renamed(name, taken | kept, columns)
        taken.add(mapping.pg_name)
        mappings.append(mapping)
    return mappings


def _allowed_as_is(name: str, columns: bool) -> bool:
    if not name or len(name.encode("utf-8")) > PG_MAX_IDENTIFIER_BYTES:
        return False
    return not (columns and name in SYSTEM_COLUMNS)


def _renamed(name: str, taken: set[str], columns: bool) -> NameMapping:
    encoded = name.encode("utf-8")
    if columns and name in SYSTEM_COLUMNS:
        reason = f"{name!r} is a PostgreSQL system column name"
    elif not name:
        reason = "empty names are not allowed in PostgreSQL"
    elif len(encoded) > PG_MAX_IDENTIFIER_BYTES:
        reason = f"{len(encoded)} bytes exceeds PostgreSQL's {PG_MAX_IDENTIFIER_BYTES}-byte limit"
    else:
        reason = "collides with another name"
    for extra in range(0, 33):
        candidate = shortened(name, HASH_CHARS + extra)
        if candidate not in taken:
            return NameMapping(name, candidate, f"renamed to {candidate!r}: {reason}")
    raise ValueError(f"cannot find a distinct PostgreSQL name for {name!r}")


def shortened(name: str, hash_chars: int = HASH_CHARS) -> str:
    """`prefix_hash`: a prefix cut at a character boundary and a hash of the whole name, <= 63 bytes."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:hash_chars]
    budget = PG_MAX_IDENTIFIER_BYTES - len(digest) - 1
    prefix = name.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    return f"{prefix}_{digest}"
