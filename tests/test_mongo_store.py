"""What only the MongoDB store has: its indexes and its datetime handling.
(Behaviour shared by both stores lives in test_store_contract.py.)"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from queue_service.stores.mongo import MongoStore
from tests.conftest import make_mongo_database


@pytest.fixture
def mongo_db():
    db, cleanup = make_mongo_database()
    yield db
    cleanup()


def test_indexes_include_partial_claim_ttl_and_unique_active_key(mongo_db):
    store = MongoStore(lambda: mongo_db, "queue_jobs", completed_ttl_seconds=604800)
    store.setup()
    indexes = mongo_db["queue_jobs"].index_information()
    assert indexes["claim_pending_v2"]["partialFilterExpression"] == {"status": "pending"}
    ttl = indexes["completed_ttl_604800s"]  # the retention is in the name
    assert ttl["expireAfterSeconds"] == 604800
    assert ttl["partialFilterExpression"] == {"status": "completed"}
    assert indexes["active_idempotency_key"]["unique"] is True
    assert store.setup_report and all(line.startswith("created index") for line in store.setup_report)
    store.setup()  # idempotent
    assert store.setup_report == []


def test_a_changed_ttl_replaces_the_previous_ttl_index_without_collmod(mongo_db):
    """The collection of an older release: its TTL index under the old name,
    with another retention. readWrite has no collMod: drop and create."""
    coll = mongo_db["queue_jobs"]
    coll.create_index([("completedAt", 1)], name="completed_ttl", expireAfterSeconds=3600,
                      partialFilterExpression={"status": "completed"})
    store = MongoStore(lambda: mongo_db, "queue_jobs", completed_ttl_seconds=604800)
    store.setup()
    indexes = coll.index_information()
    assert "completed_ttl" not in indexes and indexes["completed_ttl_604800s"]["expireAfterSeconds"] == 604800
    assert any("dropped TTL index 'completed_ttl'" in line for line in store.setup_report)
    MongoStore(lambda: mongo_db, "queue_jobs", completed_ttl_seconds=86400).setup()  # changed again
    assert [name for name in coll.index_information() if name.startswith("completed_ttl")] == ["completed_ttl_86400s"]


def test_an_index_of_the_same_keys_under_another_name_is_kept(mongo_db):
    coll = mongo_db["queue_jobs"]
    coll.create_index([("status", 1), ("heartbeatAt", 1)], name="made_by_hand")
    store = MongoStore(lambda: mongo_db, "queue_jobs")
    store.setup()
    indexes = coll.index_information()
    assert "made_by_hand" in indexes and "status_heartbeat" not in indexes
    assert "kept index 'made_by_hand' (the same as 'status_heartbeat')" in store.setup_report


def test_a_conflict_by_code_is_a_warning_not_a_failed_start(mongo_db, caplog):
    """An index by hand under the queue's name with other keys: 86 on a real
    server. mongomock does not raise these codes, so the collection here is a
    stand-in that answers as the server documents it (not run against a
    real server yet)."""
    from pymongo.errors import OperationFailure

    from queue_service.stores import mongo_indexes

    class Conflicting:
        name = "queue_jobs"

        def index_information(self):
            return {"_id_": {"key": [("_id", 1)]}, "newest": {"key": [("createdAt", 1)]}}

        def create_index(self, keys, name, **options):
            if name == "newest":
                raise OperationFailure("Index with name: newest already exists with different options", 86)
    done = mongo_indexes.ensure(Conflicting(), mongo_indexes.job_indexes(None))
    [line] = [line for line in done if line.startswith("could not")]
    assert "code 86" in line and 'dropIndex("newest")' in line

    class Other(Conflicting):
        def create_index(self, keys, name, **options):
            raise OperationFailure("not authorized", 13)
    with pytest.raises(OperationFailure):
        mongo_indexes.ensure(Other(), mongo_indexes.job_indexes(None))


def test_naive_datetimes_from_a_host_client_are_read_as_utc(mongo_db):
    """A host app's PyMongo without tz_aware returns naive datetimes."""
    mongo_db["queue_jobs"].insert_one({
        "_id": "j1", "type": "T", "payload": {}, "status": "pending", "priority": 0, "retryCount": 0,
        "maxRetries": 3, "retryDelays": [1], "createdAt": datetime(2030, 1, 1, 12, 0),
        "runAt": datetime(2030, 1, 1, 12, 0), "attempts": [{"startedAt": datetime(2030, 1, 1), "worker": "w"}]})
    job = MongoStore(lambda: mongo_db).get("j1")
    assert job.created_at == datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert job.attempts[0]["startedAt"].tzinfo is not None


def test_no_client_is_touched_until_first_use():
    calls = []
    store = MongoStore(lambda: calls.append(1) or None)
    assert calls == []  # constructing (e.g. in a gunicorn master) connects nothing
    del store


def test_the_queue_collections_pin_primary_and_majority():
    """A host client with w=0 and secondaryPreferred (real pymongo, connect=False: no server needed)."""
    import pymongo

    client = pymongo.MongoClient("mongodb://127.0.0.1:1/app?w=0&readPreference=secondaryPreferred",
                                 connect=False)
    try:
        store = MongoStore(lambda: client.get_default_database(), "queue_jobs")
        for coll in (store.coll, store.media):
            assert coll.read_preference == pymongo.ReadPreference.PRIMARY
            assert coll.write_concern.document == {"w": "majority"}
    finally:
        client.close()


def test_documents_stored_before_queues_existed_are_in_the_default_queue(mongo_db):
    from queue_service.core.jobs import new_lock_token

    mongo_db["queue_jobs"].insert_one({
        "_id": "old", "type": "T", "payload": {}, "status": "pending", "priority": 0, "retryCount": 0,
        "maxRetries": 3, "retryDelays": [1], "createdAt": datetime(2030, 1, 1, tzinfo=timezone.utc),
        "runAt": datetime(2030, 1, 1, tzinfo=timezone.utc), "attempts": []})
    store = MongoStore(lambda: mongo_db)
    store.setup()
    now = datetime(2030, 1, 2, tzinfo=timezone.utc)
    assert store.get("old").queue == "default"
    assert [j.id for j in store.list_jobs(queue="default")] == ["old"]
    assert store.counts_by_queue(now)["default"]["pending"] == 1
    assert store.claim("w", new_lock_token(), now, ("images",)) is None
    assert store.claim("w", new_lock_token(), now, ("default",)).id == "old"


def test_the_claim_index_covers_run_at_and_the_previous_claim_indexes_go(mongo_db):
    coll = mongo_db["queue_jobs"]
    coll.create_index([("priority", -1), ("createdAt", 1)], name="claim_pending",
                      partialFilterExpression={"status": "pending"})
    store = MongoStore(lambda: mongo_db, "queue_jobs")
    store.setup()
    indexes = coll.index_information()
    assert "claim_pending" not in indexes and "dropped retired index 'claim_pending'" in store.setup_report
    assert [k for k, _ in indexes["claim_pending_v2"]["key"]] == ["priority", "createdAt", "runAt"]
    assert [k for k, _ in indexes["claim_pending_by_queue_v2"]["key"]][-1] == "runAt"
    for name in ("pending_due", "processing_started", "queue_status"):
        assert name in indexes


def test_per_type_counts_are_cached_ten_seconds_on_the_given_clock(mongo_db):
    from queue_service.core.clock import ManualClock
    from tests.test_store_contract import add

    clock = ManualClock()
    store = MongoStore(lambda: mongo_db, "queue_jobs")
    store.setup()
    add(store, clock, job_type="A")
    assert store.counts_by_type(clock.now()).jobs[("A", "pending")] == 1
    add(store, clock, job_type="A")
    clock.advance(9.999)
    assert store.counts_by_type(clock.now()).jobs[("A", "pending")] == 1  # the cached answer
    clock.advance(0.001)
    assert store.counts_by_type(clock.now()).jobs[("A", "pending")] == 2


def test_media_expire_with_the_completed_jobs_retention(mongo_db):
    media = mongo_db["queue_jobs_media"]
    media.create_index([("createdAt", 1)], name="media_created")  # what an older release made
    store = MongoStore(lambda: mongo_db, "queue_jobs", completed_ttl_seconds=86400)
    store.setup()
    indexes = media.index_information()
    assert indexes["media_ttl_86400s"]["expireAfterSeconds"] == 86400 and "media_created" not in indexes
    other, cleanup = make_mongo_database()
    try:
        untimed = MongoStore(lambda: other, "queue_jobs")
        untimed.setup()
        assert "media_created" in untimed.media.index_information()
    finally:
        cleanup()


class _LikeACompatibleServer:
    """A collection that answers index builds as a MongoDB-compatible server
    without some features does (Cosmos DB RU, FerretDB 1.x, DocumentDB elastic):
    a stand-in, since none installs here. ``refuse``: the option it rejects
    with an error; ``drop``: the option it accepts and silently leaves out."""

    name = "queue_jobs"

    def __init__(self, refuse=None, drop=None):
        self.refuse, self.drop, self.indexes = refuse, drop, {"_id_": {"key": [("_id", 1)]}}

    def index_information(self):
        return {name: dict(info) for name, info in self.indexes.items()}

    def create_index(self, keys, name, **options):
        from pymongo.errors import OperationFailure

        if self.refuse in options:
            raise OperationFailure(f"{self.refuse} is not supported", 115)
        options.pop(self.drop, None)
        self.indexes[name] = {"key": list(keys), **options}

    def drop_index(self, name):
        self.indexes.pop(name, None)


@pytest.mark.parametrize("refuse, drop, missing", [
    ("partialFilterExpression", None, "partial indexes"),
    ("expireAfterSeconds", None, "TTL indexes"),
    (None, "partialFilterExpression", "partial indexes"),
    (None, "expireAfterSeconds", "TTL indexes"),
])
def test_a_server_without_partial_or_ttl_indexes_is_a_named_configuration_error(refuse, drop, missing):
    from queue_service.core.errors import ConfigurationError
    from queue_service.stores import mongo_indexes

    with pytest.raises(ConfigurationError) as caught:
        mongo_indexes.ensure(_LikeACompatibleServer(refuse, drop), mongo_indexes.job_indexes(604800))
    message = str(caught.value)
    assert f"has no {missing}" in message and "docs/mongodb.md" in message and "\n" not in message


def test_a_setup_refused_for_a_missing_feature_leaves_the_app_up(make_app, clock):
    """The lazy store turns the ConfigurationError into a 503 with generic words."""
    from queue_service.core.lazy_store import MISCONFIGURED, LazyStore, StoreNotReady

    db, cleanup = make_mongo_database()
    try:
        store = MongoStore(lambda: db, "queue_jobs", completed_ttl_seconds=604800)
        store._coll = _LikeACompatibleServer(refuse="partialFilterExpression")
        lazy = LazyStore(lambda: store, clock)
        with pytest.raises(StoreNotReady):
            lazy.get()
        assert lazy.reason == MISCONFIGURED
    finally:
        cleanup()


def _keys(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def test_odd_keys_are_stored_escaped_and_survive_what_a_server_makes_of_them(mongo_db):
    """mongomock keeps ``{"$ref", "$id"}`` as a dict; a real server's reply,
    decoded by bson, makes it a DBRef. So: nothing stored in payload, progress
    or result has a key a server reinterprets, and the stored documents, put
    through bson as a reply would be, read back as written."""
    import bson
    from bson.codec_options import CodecOptions

    from queue_service.core.clock import ManualClock
    from queue_service.core.jobs import new_lock_token
    from queue_service.stores.mongo_docs import _doc_to_job
    from tests.test_store_contract import ODD_KEYS, add, claim, make_job

    clock = ManualClock()
    store = MongoStore(lambda: mongo_db, "queue_jobs")
    store.setup()
    job = add(store, clock, payload=ODD_KEYS)
    bulk = make_job(clock, payload={"$ref": "bulk", "$id": 1})
    store.insert_many([bulk])
    claimed = claim(store, clock)
    assert store.heartbeat(claimed, clock.now(), {"$ref": "p", "$id": 2})
    assert store.complete_and_claim(claimed, clock.now(), {"$ref": "r", "$id": 3}, "w", new_lock_token())[0]
    raw = {doc["_id"]: doc for doc in mongo_db["queue_jobs"].find({})}
    for doc in raw.values():
        for field in ("payload", "progress", "result"):
            odd = [k for k in _keys(doc.get(field)) if k.startswith("$") or "." in k]
            assert not odd, (field, odd)
    assert raw[job.id]["payload"]["\uff04ref"] == "things"  # what other readers of the collection see
    reply = {i: bson.decode(bson.encode(doc), codec_options=CodecOptions(tz_aware=True)) for i, doc in raw.items()}
    done = _doc_to_job(reply[job.id])
    assert done.payload == ODD_KEYS and done.result == {"$ref": "r", "$id": 3}
    assert done.progress == {"$ref": "p", "$id": 2}
    assert _doc_to_job(reply[bulk.id]).payload == {"$ref": "bulk", "$id": 1}


# What counts_by_type ran before it stopped unwinding every attempt: its answers must not change.
_UNWOUND_ATTEMPTS = [
    {"$match": {"attempts.0": {"$exists": True}}},
    {"$project": {"type": 1, "attempts.outcome": 1}},
    {"$unwind": "$attempts"},
    {"$group": {"_id": {"type": "$type", "outcome": {"$ifNull": ["$attempts.outcome", "running"]}},
                "n": {"$sum": 1}}}]


class _CountedAggregations:
    def __init__(self, coll):
        self._coll, self.aggregations = coll, 0

    def __getattr__(self, name):
        return getattr(self._coll, name)

    def aggregate(self, *args, **kwargs):
        self.aggregations += 1
        return self._coll.aggregate(*args, **kwargs)


def test_per_type_attempt_counts_equal_the_unwound_ones_also_for_outcomes_not_known(mongo_db):
    """One aggregation when every outcome is one of ATTEMPT_OUTCOMES; a
    document with another outcome (a newer release's) is still counted, by a
    second aggregation that unwinds only such documents. Missing or null
    outcomes count as running, a document without attempts counts none."""
    from queue_service.core.clock import ManualClock
    from tests.test_store_contract import add, claim

    clock = ManualClock()
    store = MongoStore(lambda: mongo_db, "queue_jobs")
    store.setup()
    add(store, clock, job_type="A")
    job = claim(store, clock)
    assert store.retry_later(job, clock.now(), "451", clock.now())
    assert store.complete(claim(store, clock), clock.now(), None)
    add(store, clock, job_type="B")
    claim(store, clock)
    counted = store._coll = _CountedAggregations(store.coll)
    reference = {(r["_id"]["type"], r["_id"]["outcome"]): r["n"] for r in mongo_db["queue_jobs"].aggregate(_UNWOUND_ATTEMPTS)}
    assert store.counts_by_type().attempts == reference == {("A", "retry"): 1, ("A", "completed"): 1, ("B", "running"): 1}
    assert counted.aggregations == 1

    mongo_db["queue_jobs"].insert_many([
        {"_id": "n1", "type": "A", "status": "failed",
         "attempts": [{"outcome": "exploded"}, {"outcome": "completed"}, {"outcome": "exploded"}]},
        {"_id": "n2", "type": "B", "status": "processing",
         "attempts": [{"outcome": None}, {"worker": "w"}, {"outcome": "paused"}, {"outcome": "lost"}]},
        {"_id": "n3", "type": "C", "status": "pending"},                   # no attempts field at all
        {"_id": "n4", "type": "C", "status": "pending", "attempts": []}])
    counted.aggregations = 0
    counts = store.counts_by_type()
    reference = {(r["_id"]["type"], r["_id"]["outcome"]): r["n"] for r in mongo_db["queue_jobs"].aggregate(_UNWOUND_ATTEMPTS)}
    assert counts.attempts == reference == {
        ("A", "retry"): 1, ("A", "completed"): 2, ("A", "exploded"): 2,
        ("B", "running"): 3, ("B", "paused"): 1, ("B", "lost"): 1}
    assert counts.jobs == {("A", "completed"): 1, ("A", "failed"): 1, ("B", "processing"): 2, ("C", "pending"): 2}
    assert counted.aggregations == 2
