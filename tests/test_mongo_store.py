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
    assert indexes["claim_pending"]["partialFilterExpression"] == {"status": "pending"}
    ttl = indexes["completed_ttl"]
    assert ttl["expireAfterSeconds"] == 604800
    assert ttl["partialFilterExpression"] == {"status": "completed"}
    assert indexes["active_idempotency_key"]["unique"] is True
    store.setup()  # idempotent


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
