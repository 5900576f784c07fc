"""Plain JSON-able data from the frozen dataclasses, enums and paths the core returns."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """`value` as dicts, lists, strings, numbers, booleans and None (anything else as its `str`)."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return str(value)
