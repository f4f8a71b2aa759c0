"""A store that answers reads but refuses writes (issue 12, item 8): health
notices it when a write fails, says so in generic words, and stops saying so
once a write succeeds again."""
from __future__ import annotations

import pytest

from queue_service.core.errors import StoreRefusesWrites

PREFIX = "/api/queue"


def problems(client):
    return client.get(f"{PREFIX}/health").get_json()["problems"]


def test_a_read_only_sqlite_file_shows_in_health_until_a_write_succeeds(make_app, app_store):
    app, queue = make_app()
    queue.job_type("PING")(lambda payload, job: None)
    client = app.test_client()
    assert problems(client) == []
    pool = app_store._db
    pool.close()  # idle connections go; the next ones are opened read-only
    real_open = pool.open

    def read_only():
        conn = real_open()
        conn.execute("PRAGMA query_only = ON")  # SQLite's own SQLITE_READONLY on every write
        return conn

    pool.open = read_only
    with app.app_context():
        with pytest.raises(StoreRefusesWrites):
            queue.add_job("PING", {})
    posted = client.post(f"{PREFIX}/jobs", json={"type": "PING", "payload": {}})
    assert posted.status_code == 503 and posted.headers.get("Retry-After")
    health = client.get(f"{PREFIX}/health")
    assert health.status_code == 503 and health.get_json()["problems"] == ["store refuses writes"]
    assert "readonly" not in health.get_data(as_text=True)  # the driver's words go to the log only
    del pool.open
    pool.close()
    with app.app_context():
        queue.add_job("PING", {})
    assert problems(client) == []


class _OverQuota:
    """A mongomock collection that refuses inserts as Atlas does past 512 MB."""

    def __init__(self, collection):
        self._collection, self.full = collection, True

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def insert_one(self, *args, **kwargs):
        from pymongo.errors import WriteError

        if self.full:
            raise WriteError("you are over your space quota, using 513 MB of 512 MB", code=8000)
        return self._collection.insert_one(*args, **kwargs)


def test_atlas_over_quota_is_a_refused_write_on_mongodb(clock):
    from queue_service.stores.mongo import MongoStore
    from tests.conftest import make_mongo_database
    from tests.test_store_contract import make_job

    db, cleanup = make_mongo_database()
    try:
        store = MongoStore(lambda: db, "queue_jobs")
        store.setup()
        store._coll = quota = _OverQuota(store.coll)
        with pytest.raises(StoreRefusesWrites):
            store.insert(make_job(clock))
        assert store.refusing_writes
        store.ping()  # reads still answer
        quota.full = False
        store.insert(make_job(clock))
        assert not store.refusing_writes
    finally:
        cleanup()
