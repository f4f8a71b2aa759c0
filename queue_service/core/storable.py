"""What every store can keep: one check, so SQLite and MongoDB refuse the same values.

MongoDB refuses a document over 16 MB, an integer outside 64 bits and a NUL
in a key; SQLite would keep them, and a job would then behave differently
per store. ``problem`` names the first such thing in a JSON value (payload
or result), or returns None.
"""
from __future__ import annotations

import json
from typing import Any

MAX_VALUE_BYTES = 15 * 1024 * 1024  # under BSON's 16 MB with room for the job's other fields
INT_RANGE = (-(2 ** 63), 2 ** 63 - 1)
MAX_DEPTH = 90  # BSON nests at most 100 levels


def problem(value: Any) -> str | None:
    found = _walk(value, "", 0)
    if found:
        return found
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_VALUE_BYTES:
        return f"it is {size} bytes as JSON; stores keep at most {MAX_VALUE_BYTES}"
    return None


def _walk(value: Any, path: str, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return f"it nests deeper than {MAX_DEPTH} levels"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            return f"{path or 'the value'} is an integer outside 64 bits"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return f"key {str(key)!r} at {path or 'the top'} contains a NUL character"
            found = _walk(item, f"{path}.{key}" if path else str(key), depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _walk(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
    return None
