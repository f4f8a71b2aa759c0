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
    if type(value) is dict and _flat_and_fine(value):
        return None
    walk = _Walk()
    found = walk.visit(value, "", 0)
    if found:
        return found
    if walk.size > MAX_VALUE_BYTES:  # the walk's estimate is cheap; measure only near the limit
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > MAX_VALUE_BYTES:
            return f"it is {size} bytes as JSON; stores keep at most {MAX_VALUE_BYTES}"
    return None


def _flat_and_fine(value: dict) -> bool:
    """The common payload, decided without the walk (~3x cheaper): an object
    of short strings, 64-bit integers, floats, booleans and nulls under keys
    without NUL. Anything else (nesting, a long string, a big integer) walks."""
    if len(value) > _FLAT_KEYS:
        return False
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str or "\x00" in key or len(key) > _FLAT_STRING_CHARS:
            return False
        if kind is str:
            if len(item) > _FLAT_STRING_CHARS:
                return False
        elif kind is int:
            if not INT_RANGE[0] <= item <= INT_RANGE[1]:
                return False
        elif not (item is None or kind is bool or kind is float):
            return False
    return True


# Within these a flat object is under 2 MB (keys and strings at 4 bytes a character),
# far below MAX_VALUE_BYTES: its size need not be estimated.
_FLAT_STRING_CHARS = 4096
_FLAT_KEYS = 64


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
