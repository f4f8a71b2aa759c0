"""A reversible escape for the keys of the queue's JSON (payload, result,
progress) that MongoDB refuses or reinterprets.

A real server and pymongo do not keep every JSON object as it was written: a
sub-document ``{"$ref": ..., "$id": ...}`` comes back from pymongo as a
``bson.dbref.DBRef``; a key that starts with ``$`` inside an update's value
reads as an operator; a ``.`` in a key is a path separator in updates. So the
MongoDB store escapes such keys on every write of those fields and
``mongo_docs._doc_to_job`` unescapes them on every read. The SQLite store
keeps JSON text and needs none of this.

The code, applied to every character of a key that needs escaping::

    "$"          -> "＄"   U+FF04 FULLWIDTH DOLLAR SIGN
    "."          -> "．"   U+FF0E FULLWIDTH FULL STOP
    "＄" "．" "＼" -> "＼" + itself   (U+FF3C FULLWIDTH REVERSE SOLIDUS, the escape)
    any other c  -> c

A key needs escaping when it starts with ``$`` or holds ``.``, ``＄``, ``．``
or ``＼``; every other key is stored as it is.

Why it is reversible: the images above form a prefix code (the one-character
images are distinct and none is ``＼``; every two-character image starts with
``＼``), so an escaped key splits into images in exactly one way and
``unescape_key`` reads it back character for character. A key stored as it is
holds none of ``＄．＼``, so ``unescape_key`` leaves it alone. Hence
``unescape_key(escape_key(k)) == k`` for every string ``k``, and ``escape_key``
is injective: two keys of one object never collide. An escaped key never
starts with ``$`` and holds no ``.``.

The common case (no such key anywhere) allocates nothing: ``escape`` and
``unescape`` return the very object they were given.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from bson.dbref import DBRef

ESCAPE = "\uff3c"
DOLLAR = "\uff04"
DOT = "\uff0e"

_ESCAPE_TABLE = str.maketrans({"$": DOLLAR, ".": DOT, DOLLAR: ESCAPE + DOLLAR, DOT: ESCAPE + DOT,
                               ESCAPE: ESCAPE + ESCAPE})
_ESCAPED = re.compile(f"{ESCAPE}([{DOLLAR}{DOT}{ESCAPE}])|[{DOLLAR}{DOT}]")
_PLAIN = {DOLLAR: "$", DOT: "."}
_LEAVES = frozenset({str, int, float, bool, type(None)})  # nothing inside to rewrite: no call


def escape_key(key: str) -> str | None:
    """The stored form of ``key``, or None when it is stored as it is."""
    if key.startswith("$") or "." in key or DOLLAR in key or DOT in key or ESCAPE in key:
        return key.translate(_ESCAPE_TABLE)
    return None


def unescape_key(key: str) -> str | None:
    """The key ``escape_key`` was given, or None when ``key`` was stored as it is."""
    if DOLLAR in key or DOT in key or ESCAPE in key:
        return _ESCAPED.sub(_unescape_match, key)
    return None


def _unescape_match(match: re.Match) -> str:
    return match.group(1) or _PLAIN[match.group(0)]


def escape(value: Any) -> Any:
    """``value`` with every key that needs it escaped, in objects at any
    depth (lists included). The same object when nothing needs escaping."""
    return _rewrite(value, escape_key)


def unescape(value: Any) -> Any:
    """The inverse of ``escape``. The same object when nothing was escaped.
    A ``DBRef`` (what pymongo makes of ``{"$ref", "$id"}`` written before this
    escape existed) becomes the object it was written as again."""
    return _rewrite(value, unescape_key)


def _rewrite(value: Any, fix: Callable[[str], str | None]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] | None = None
        for index, (key, item) in enumerate(value.items()):
            new_key = fix(key) if type(key) is str else None
            new_item = item if type(item) in _LEAVES else _rewrite(item, fix)
            if out is None:
                if new_key is None and new_item is item:
                    continue
                out = {k: v for k, v in list(value.items())[:index]}  # the unchanged ones so far
            out[key if new_key is None else new_key] = new_item
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items: list[Any] | None = None
        for index, item in enumerate(value):
            new_item = item if type(item) in _LEAVES else _rewrite(item, fix)
            if items is None:
                if new_item is item:
                    continue
                items = list(value[:index])
            items.append(new_item)
        if items is None:
            return value
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, DBRef):
        return _rewrite(dict(value.as_doc()), fix)
    return value
