"""When the worker may skip loading a payload that was validated at enqueue.

A stored payload is ``schema.dump(schema.load(given))``. The worker loads it
again before the handler runs, so a payload stored under an older schema is
refused ("payload no longer validates") rather than handed over. That second
load is most of the worker's own cost per job; it can be skipped when both
hold (decided once per job type, at registration):

- the payload was stored under the same schema: the job carries the
  *fingerprint* of the type's schema at enqueue (``schema_fingerprint``), and
  the type's current fingerprint is equal. It hashes the schema class's
  qualified name, its Meta options (unknown, only, exclude, partial, many)
  and, per field, its name, class, data_key/attribute, required, allow_none,
  load/dump defaults, strict/as_string/allow_nan and the reprs of its
  validators and error messages. A validator whose repr holds a memory
  address (a function, a lambda) makes the fingerprint differ between
  processes: that only means "load again";
- loading is the identity on the schema's own dump output
  (``load_is_identity``): only plain fields (String, Integer, Float,
  Boolean, Raw, and Dict/List of those), exactly those classes (a subclass
  may deserialize differently), no data_key or attribute renames, no
  load_only/dump_only, no as_string, no hooks (pre/post load or dump,
  validates, validates_schema), and no Schema method overridden.
  Then validation of the stored payload already happened with the same
  fields and validators, and loading it again would return it unchanged.

Anything else (DateTime, Nested, a custom field, a hook) is loaded every time.
"""
from __future__ import annotations

import hashlib
from typing import Any

import marshmallow
from marshmallow import fields

PLAIN_FIELDS = (fields.String, fields.Integer, fields.Float, fields.Boolean, fields.Raw)
CONTAINER_FIELDS = (fields.List, fields.Dict)
_FIELD_ATTRS = ("data_key", "attribute", "required", "allow_none", "load_default", "dump_default",
                "load_only", "dump_only", "strict", "as_string", "allow_nan", "validators",
                "error_messages", "truthy", "falsy")
_MISSING = object()


def _plain(field: Any) -> bool:
    kind = type(field)
    if kind in PLAIN_FIELDS:
        pass
    elif kind is fields.List:
        if not _plain(field.inner):
            return False
    elif kind is fields.Dict:
        if any(f is not None and not _plain(f) for f in (field.key_field, field.value_field)):
            return False
    else:
        return False
    return (getattr(field, "data_key", None) is None and getattr(field, "attribute", None) is None
            and not getattr(field, "load_only", False) and not getattr(field, "dump_only", False)
            and not getattr(field, "as_string", False))


def load_is_identity(schema: marshmallow.Schema | None) -> bool:
    """True when ``schema.load(schema.dump(x))`` returns what it was given."""
    if schema is None or getattr(schema, "many", False):
        return False
    if any(getattr(schema, "_hooks", {}).values()):
        return False
    for klass in type(schema).__mro__:
        if klass is marshmallow.Schema:
            break
        if any(callable(value) and hasattr(marshmallow.Schema, name) and name not in ("Meta", "OPTIONS_CLASS")
               for name, value in vars(klass).items()):
            return False  # a Schema method overridden: it may load differently
    return all(_plain(field) for field in schema.fields.values())


def dump_is_identity(schema: marshmallow.Schema | None) -> bool:
    """True when ``schema.dump(schema.load(x)) == schema.load(x)``: enqueue may
    then store the loaded payload without dumping it. Loading must be the
    identity (above: plain fields, no renames, no hooks), no field may add a
    ``dump_default`` that loading left out, and unknown keys must not be
    INCLUDEd (a load keeps them; a dump drops them)."""
    if not load_is_identity(schema) or getattr(schema, "unknown", None) == marshmallow.INCLUDE:
        return False
    return all(_no_dump_default(field) for field in schema.fields.values())


def _no_dump_default(field: Any) -> bool:
    if getattr(field, "dump_default", marshmallow.missing) is not marshmallow.missing:
        return False
    inner = [getattr(field, "inner", None), getattr(field, "key_field", None), getattr(field, "value_field", None)]
    return all(f is None or _no_dump_default(f) for f in inner)


def _describe(value: Any) -> str:
    if isinstance(value, fields.Field):
        parts = [f"{type(value).__module__}.{type(value).__qualname__}"]
        for attr in _FIELD_ATTRS:
            got = getattr(value, attr, _MISSING)
            if got is not _MISSING:
                parts.append(f"{attr}={_describe(got)}")
        for attr in ("inner", "key_field", "value_field"):
            if getattr(value, attr, None) is not None:
                parts.append(f"{attr}={_describe(getattr(value, attr))}")
        return "(" + ",".join(parts) + ")"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_describe(v)}" for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(map(_describe, value)) if isinstance(value, (set, frozenset)) else map(_describe, value)
        return "[" + ",".join(items) + "]"
    return repr(value)


def schema_fingerprint(schema: marshmallow.Schema | None) -> str | None:
    """A hash of what decides how ``schema`` loads; None without a schema."""
    if schema is None:
        return None
    kind = type(schema)
    text = [f"{kind.__module__}.{kind.__qualname__}"]
    for option in ("unknown", "only", "exclude", "partial", "many"):
        text.append(f"{option}={_describe(getattr(schema, option, None))}")
    for name, field in sorted(schema.fields.items()):
        text.append(f"{name}:{_describe(field)}")
    return hashlib.blake2b("\n".join(text).encode(), digest_size=12).hexdigest()
