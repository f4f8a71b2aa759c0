"""(6b) MongoDB operations per job, counted: what the queue costs on Atlas M0
(about 100 operations/s) without a server to time against.

No MongoDB server runs on these machines, so this counts instead of timing:
the MongoStore runs on mongomock through a Database wrapper that counts every
collection method that would be one round trip to a real server (a command:
find, insert, update, aggregate, ...). mongomock emits no pymongo command
monitoring events, so the wrapper stands in for them; the count is per call
of the collection API, which is what pymongo sends as one command each.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from bench import subjects

#: Collection methods that send one command each to a real server.
ROUND_TRIPS = frozenset({
    "find_one", "find", "find_one_and_update", "update_one", "update_many", "insert_one", "insert_many",
    "replace_one", "delete_one", "delete_many", "aggregate", "count_documents", "create_index",
    "index_information", "bulk_write", "estimated_document_count",
})


class _CountingCollection:
    def __init__(self, collection: Any, counts: Counter):
        self._collection, self._counts = collection, counts

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._collection, name)
        if name in ROUND_TRIPS:
            def counted(*args: Any, **kwargs: Any) -> Any:
                self._counts[name] += 1
                return value(*args, **kwargs)
            return counted
        return value


class _CountingDatabase:
    """A mongomock Database whose collections count their round trips."""

    def __init__(self, database: Any, counts: Counter):
        self._database, self._counts = database, counts

    def get_collection(self, name: str, **kwargs: Any) -> _CountingCollection:
        return _CountingCollection(self._database.get_collection(name, **kwargs), self._counts)

    def __getitem__(self, name: str) -> _CountingCollection:
        return self.get_collection(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)


def measure(count: int = 200) -> dict[str, Any]:
    import mongomock
    from flask import Flask

    from queue_service import JobQueue
    from queue_service.core.jobs import new_lock_token
    from queue_service.stores.mongo import MongoStore

    counts: Counter = Counter()
    database = _CountingDatabase(mongomock.MongoClient(tz_aware=True)["bench_ops"], counts)
    store = MongoStore(lambda: database, "queue_jobs", completed_ttl_seconds=604800)
    app = Flask("bench_ops")
    app.config.update(QUEUE_AUTOSTART=False)
    queue = JobQueue(builtins=False)
    queue.job_type(subjects.NOOP_TYPE, schema=subjects.NoopSchema)(lambda payload, job: None)
    queue.init_app(app, store=store)
    out: dict[str, Any] = {"count": count}
    with app.app_context():
        runtime = queue.state().runtime
        runtime.store  # setup(): its index commands are not per job
        counts.clear()

        def phase(name: str, action: Any, times: int) -> None:
            counts.clear()
            for i in range(times):
                action(i)
            out[name] = sum(counts.values()) / times
            out[f"{name}_commands"] = dict(counts)

        phase("enqueue", lambda i: queue.add_job(subjects.NOOP_TYPE, subjects.payload(i)), count)
        worker = runtime.make_worker()
        claimed: list[Any] = []
        phase("claim", lambda i: claimed.append(store.claim(worker.worker_id, new_lock_token(), queue.clock.now())),
              count)
        phase("heartbeat", lambda i: store.heartbeat(claimed[i], queue.clock.now()), count)
        phase("complete", lambda i: store.complete(claimed[i], queue.clock.now(), None), count)
        phase("idle_poll", lambda i: worker.run_once(), count)  # nothing left: one claim that finds nothing
        for i in range(count):
            queue.add_job(subjects.NOOP_TYPE, subjects.payload(i))
        phase("worker_loop_step", lambda i: worker.run_once(claim_next=True), count)
        service = queue.state().service  # what /stats and /health cost (counts from indexes)
        phase("stats", lambda i: service.stats(), 10)
        phase("health", lambda i: service.health(), 10)
    out["end_to_end"] = out["enqueue"] + out["worker_loop_step"]
    return out
