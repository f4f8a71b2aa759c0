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
    walk = _Walk()
    found = walk.visit(value, "", 0)
    if found:
        return found
    if walk.size > MAX_VALUE_BYTES:  # the walk's estimate is cheap; measure only near the limit
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > MAX_VALUE_BYTES:
            return f"it is {size} bytes as JSON; stores keep at most {MAX_VALUE_BYTES}"
    return None


class _Walk:
    """One pass: the first unstorable thing, and an upper-ish estimate of the
    JSON size (4 bytes per character covers any UTF-8 and most escapes)."""

    def __init__(self) -> None:
        self.size = 0

    def visit(self, value: Any, path: str, depth: int) -> str | None:
        if depth > MAX_DEPTH:
            return f"it nests deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            self.size += 4 * len(value) + 2
        elif isinstance(value, bool) or value is None or isinstance(value, float):
            self.size += 24
        elif isinstance(value, int):
            if not INT_RANGE[0] <= value <= INT_RANGE[1]:
                return f"{path or 'the value'} is an integer outside 64 bits"
            self.size += 20
        elif isinstance(value, dict):
            for key, item in value.items():
                key = str(key)
                if "\x00" in key:
                    return f"key {key!r} at {path or 'the top'} contains a NUL character"
                self.size += 4 * len(key) + 4
                found = self.visit(item, f"{path}.{key}" if path else key, depth + 1)
                if found:
                    return found
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.size += 1
                found = self.visit(item, f"{path}[{index}]", depth + 1)
                if found:
                    return found
        return None
