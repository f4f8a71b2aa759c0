"""The MongoDB store's indexes: what ``setup()`` wants, compared with what is there.

Atlas's least-privilege ``readWrite`` role may create and drop indexes but not
run ``collMod``, so nothing here needs it:

- an index of the same keys and options under another name already does the
  job: it is kept and nothing is created;
- the completed-jobs TTL index carries its retention in its name
  (``completed_ttl_604800s``): a changed QUEUE_COMPLETED_TTL drops the
  previous TTL index on the same key and creates the new one. Two processes
  doing it at once both succeed (a missing index on drop, an identical one
  on create, are not errors);
- a conflict that remains (IndexOptionsConflict 85, IndexKeySpecsConflict
  86: an index someone made by hand) is a warning with the one-line admin
  command that resolves it, never a failed start. Any other error is raised.

``ensure`` returns what it did, one line per action, and logs it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import OperationFailure

from ..core.errors import ConfigurationError

log = logging.getLogger("queue_service.mongo")

INDEX_OPTIONS_CONFLICT = 85
INDEX_KEY_SPECS_CONFLICT = 86
INDEX_NOT_FOUND = 27
OPTION_NAMES = ("unique", "expireAfterSeconds", "partialFilterExpression")


@dataclass(frozen=True)
class IndexSpec:
    name: str
    keys: tuple[tuple[str, int], ...]
    options: dict[str, Any] = field(default_factory=dict)

    def same_as(self, info: dict[str, Any]) -> bool:
        return _keys(info) == self.keys and _options(info) == _normal(self.options)

    @property
    def is_ttl(self) -> bool:
        return "expireAfterSeconds" in self.options


def _keys(info: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple((name, int(direction)) for name, direction in info.get("key", []))


def _normal(options: dict[str, Any]) -> dict[str, Any]:
    out = {name: options[name] for name in OPTION_NAMES if options.get(name) not in (None, False)}
    if "expireAfterSeconds" in out:
        out["expireAfterSeconds"] = int(out["expireAfterSeconds"])
    return out


def _options(info: dict[str, Any]) -> dict[str, Any]:
    return _normal(info)


def job_indexes(completed_ttl_seconds: float | None) -> list[IndexSpec]:
    pending = {"partialFilterExpression": {"status": "pending"}}
    specs = [
        # runAt last: a future-dated job is skipped on the index key, never fetched.
        IndexSpec("claim_pending_v2", (("priority", -1), ("createdAt", 1), ("runAt", 1)), pending),
        IndexSpec("claim_pending_by_queue_v2", (("queue", 1), ("priority", -1), ("createdAt", 1), ("runAt", 1)),
                  pending),
        IndexSpec("pending_due", (("queue", 1), ("runAt", 1)), pending),
        IndexSpec("processing_started", (("processedAt", 1),),
                  {"partialFilterExpression": {"status": "processing"}}),
        IndexSpec("queue_status", (("queue", 1), ("status", 1))),
        IndexSpec("status_heartbeat", (("status", 1), ("heartbeatAt", 1))),
        IndexSpec("newest", (("createdAt", -1), ("_id", -1))),
        IndexSpec("status_finished", (("status", 1), ("completedAt", 1))),
        IndexSpec("active_idempotency_key", (("activeKey", 1),),
                  {"unique": True, "partialFilterExpression": {"activeKey": {"$exists": True}}}),
    ]
    if completed_ttl_seconds:
        seconds = int(completed_ttl_seconds)
        specs.append(IndexSpec(f"completed_ttl_{seconds}s", (("completedAt", 1),),
                               {"expireAfterSeconds": seconds, "partialFilterExpression": {"status": "completed"}}))
    return specs


def media_indexes(completed_ttl_seconds: float | None) -> tuple[list[IndexSpec], tuple[str, ...]]:
    """(specs, retired) for ``<collection>_media``. With a completed-jobs TTL the
    media expire on the same retention, by the server's TTL monitor
    (``media_ttl_<seconds>s`` on createdAt; a file is written when its job
    completes), so the quota holds only what the retention keeps."""
    if not completed_ttl_seconds:
        return [IndexSpec("media_created", (("createdAt", 1),))], ()
    seconds = int(completed_ttl_seconds)
    return [IndexSpec(f"media_ttl_{seconds}s", (("createdAt", 1),), {"expireAfterSeconds": seconds})], \
        ("media_created",)


# Indexes earlier versions made and this one replaces (dropped at setup; dropIndex is in readWrite).
RETIRED = ("claim_pending", "claim_pending_by_queue")


def ensure(collection: Any, specs: list[IndexSpec], retired: tuple[str, ...] = ()) -> list[str]:
    """Make ``collection`` carry ``specs`` and drop the ``retired`` names; returns what was done."""
    done: list[str] = []
    existing = collection.index_information()
    for name in retired:
        if name in existing:
            _drop(collection, name)
            done.append(f"dropped retired index {name!r}")
    for spec in specs:
        info = existing.get(spec.name)
        if info is not None and spec.same_as(info):
            continue
        twin = next((name for name, other in existing.items() if spec.same_as(other)), None)
        if twin is not None:
            done.append(f"kept index {twin!r} (the same as {spec.name!r})")
            continue
        if spec.is_ttl:
            for name, other in list(existing.items()):
                if name != spec.name and _keys(other) == spec.keys and "expireAfterSeconds" in other:
                    _drop(collection, name)
                    done.append(f"dropped TTL index {name!r} (expireAfterSeconds="
                                f"{other['expireAfterSeconds']}) for {spec.name!r}")
        try:
            collection.create_index(list(spec.keys), name=spec.name, **spec.options)
            done.append(f"created index {spec.name!r}")
        except OperationFailure as exc:
            if exc.code not in (INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT):
                missing = _refused_feature(spec, exc)
                if missing is not None:
                    raise _incompatible(missing, spec) from exc
                raise
            command = (f'db.getCollection("{collection.name}").dropIndex("{_conflicting(existing, spec)}")')
            done.append(f"could not create index {spec.name!r} (code {exc.code}: an index of the same keys "
                        f"or name differs); the queue runs without it. To resolve, run once: {command}")
    _check_created(collection, specs, done)
    for line in done:
        (log.warning if line.startswith("could not") else log.info)("[Mongo] %s: %s", collection.name, line)
    return done


# What servers answer to an index option they do not have: BadValue, CannotCreateIndex,
# CommandNotSupported, NotImplemented (FerretDB), InvalidIndexSpecificationOption, and
# DocumentDB's "feature not supported".
UNSUPPORTED_CODES = frozenset({2, 67, 115, 238, 197, 303})
FEATURES = (("partialFilterExpression", "partial indexes"), ("expireAfterSeconds", "TTL indexes"),
            ("unique", "unique indexes"))


def _features(spec: IndexSpec) -> list[tuple[str, str]]:
    return [(option, words) for option, words in FEATURES if spec.options.get(option) not in (None, False)]


def _refused_feature(spec: IndexSpec, exc: OperationFailure) -> str | None:
    if exc.code not in UNSUPPORTED_CODES or not _features(spec):
        return None
    text = str(exc).lower()
    for option, words in _features(spec):
        if option.lower() in text or words.split()[0] in text:
            return words
    return _features(spec)[0][1]


def _incompatible(missing: str, spec: IndexSpec) -> ConfigurationError:
    return ConfigurationError(
        f"MONGO_URI: this MongoDB-compatible server has no {missing} (needed by index {spec.name!r}); "
        "the queue needs MongoDB 4.4+ (Atlas included): see docs/mongodb.md")


def _check_created(collection: Any, specs: list[IndexSpec], done: list[str]) -> None:
    """A server that accepts an option and drops it (its index_information lacks it)."""
    created = [spec for spec in specs if f"created index {spec.name!r}" in done and _features(spec)]
    if not created:
        return
    existing = collection.index_information()
    for spec in created:
        info = existing.get(spec.name)
        if info is None:  # dropped meanwhile by another process: nothing to judge
            continue
        for option, words in _features(spec):
            if info.get(option) in (None, False):
                raise _incompatible(words, spec)


def _conflicting(existing: dict[str, Any], spec: IndexSpec) -> str:
    if spec.name in existing:
        return spec.name
    return next((name for name, info in existing.items() if _keys(info) == spec.keys), spec.name)


def _drop(collection: Any, name: str) -> None:
    try:
        collection.drop_index(name)
    except OperationFailure as exc:
        if exc.code != INDEX_NOT_FOUND:  # another process dropped it first
            raise
