"""MongoDB store: the production store, for many processes on many hosts.

Every state change is one ``find_one_and_update`` / ``update_one`` whose filter
carries the precondition (status, lock token), so the server arbitrates races.
Datetimes are read tz-aware. Media live in ``<collection>_media``, one document per file.
The database handle is obtained lazily through ``get_db`` so no client is used
before a fork.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import pymongo
from bson.binary import Binary
from bson.codec_options import CodecOptions
from pymongo import ReadPreference, ReturnDocument
from pymongo.write_concern import WriteConcern
from pymongo.errors import (AutoReconnect, BulkWriteError, ConnectionFailure, DuplicateKeyError,
                            PyMongoError, ServerSelectionTimeoutError)

from bson.errors import InvalidDocument

from . import mongo_indexes
from ..core.errors import StoreError, StoreUnavailable, UnstorableValue
from ..core.jobs import DEFAULT_QUEUE, Job, JobStatus
from ..core.store import ScheduleState, Store, StoredFile, TypeCounts
from .mongo_operator import OperatorViews

_MOCK_LOCK = threading.RLock()
MAX_MEDIA_BYTES = 15 * 1024 * 1024
PING_TIMEOUT_SECONDS = 2.0
# Whatever the host's client says (readPreference=secondaryPreferred, w=0): the
# queue reads its own writes and must see duplicate keys, so its collections
# read from the primary and write with majority acknowledgement.
_PINNED = {"codec_options": CodecOptions(tz_aware=True),  # UTC; mongomock refuses an explicit tzinfo
           "read_preference": ReadPreference.PRIMARY, "write_concern": WriteConcern("majority")}


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # a host client without tz_aware: BSON dates are UTC
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _doc_to_job(doc: dict[str, Any]) -> Job:
    attempts = []
    for a in doc.get("attempts", []):
        a = dict(a)
        for key in ("startedAt", "endedAt"):
            if a.get(key) is not None:
                a[key] = _aware(a[key])
        attempts.append(a)
    return Job(
        id=doc["_id"], type=doc["type"], payload=doc["payload"], status=JobStatus(doc["status"]),
        priority=doc["priority"], retry_count=doc["retryCount"], max_retries=doc["maxRetries"],
        retry_delays=list(doc["retryDelays"]), created_at=_aware(doc["createdAt"]),
        run_at=_aware(doc["runAt"]), processed_at=_aware(doc.get("processedAt")),
        completed_at=_aware(doc.get("completedAt")), heartbeat_at=_aware(doc.get("heartbeatAt")),
        worker_id=doc.get("workerId"), lock_token=doc.get("lockToken"), error=doc.get("error"),
        result=doc.get("result"), progress=doc.get("progress"), attempts=attempts,
        idempotency_key=doc.get("idempotencyKey"), queue=doc.get("queue") or DEFAULT_QUEUE,
        scheduled_by=doc.get("scheduledBy"), slot=_aware(doc.get("slot")),
        schema_fingerprint=doc.get("schemaFingerprint"),
    )


def _in_queues(queues: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """A filter on the queue field; a document stored before queues existed
    has none and is in the default queue."""
    names: list[Any] = list(queues)
    if DEFAULT_QUEUE in names:
        names.append(None)  # $in with null also matches a missing field
    return {"$in": names}


class MongoStore(OperatorViews, Store):
    kind = "mongodb"

    def __init__(self, get_db: Callable[[], Any], collection: str = "queue_jobs",
                 completed_ttl_seconds: float | None = None):
        self._get_db = get_db
        self.collection_name = collection
        self.completed_ttl_seconds = completed_ttl_seconds
        self._coll = None
        self._init_lock = threading.Lock()
        self._mock_lock: threading.RLock | None = None
        self.setup_report: list[str] = []

    def _detect_mock(self, db: Any) -> None:
        if type(db).__module__.startswith("mongomock") and self._mock_lock is None:
            self._mock_lock = _MOCK_LOCK

    @property
    def db(self):
        return self._get_db()

    @property
    def coll(self):
        if self._coll is None:
            with self._init_lock:
                if self._coll is None:
                    self._detect_mock(self.db)
                    self._coll = self.db.get_collection(self.collection_name, **_PINNED)
        return self._coll

    @property
    def media(self):
        return self.db.get_collection(f"{self.collection_name}_media", **_PINNED)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        with self._serial():
            try:
                yield
            except (ServerSelectionTimeoutError, ConnectionFailure, AutoReconnect) as exc:
                raise StoreUnavailable(f"MongoDB unreachable: {exc}") from exc
            except PyMongoError as exc:
                raise StoreError(f"MongoDB: {exc}") from exc
            except (InvalidDocument, OverflowError) as exc:  # bson's: not PyMongoErrors
                raise UnstorableValue(f"MongoDB cannot store this document: {exc}") from exc

    @contextmanager
    def _serial(self) -> Iterator[None]:
        """mongomock (the test double) is not thread-safe: serialise its calls.
        A real pymongo client is thread-safe and takes no lock."""
        if self._mock_lock is None:
            yield
        else:
            with self._mock_lock:
                yield

    # -- lifecycle ------------------------------------------------------------
    def setup(self) -> None:
        """Indexes as ``stores.mongo_indexes`` wants them (never collMod);
        ``setup_report`` keeps what it did."""
        c = self.coll
        with self._errors():
            self.setup_report = mongo_indexes.ensure(c, mongo_indexes.job_indexes(self.completed_ttl_seconds))
            self.setup_report += mongo_indexes.ensure(
                self.media, [mongo_indexes.IndexSpec("media_created", (("createdAt", 1),))])

    def close(self) -> None:
        self._coll = None
        close_client = getattr(self._get_db, "close", None)  # the queue's own client (MONGO_URI)
        if close_client is not None:
            close_client()

    def ping(self) -> None:
        with self._errors(), pymongo.timeout(PING_TIMEOUT_SECONDS):  # a health check answers in ~2 s
            self.coll.find_one({}, projection={"_id": 1})

    # -- jobs -----------------------------------------------------------------
    @staticmethod
    def _insert_doc(job: Job) -> dict[str, Any]:
        doc = {
            "_id": job.id, "type": job.type, "payload": job.payload, "status": str(job.status),
            "priority": job.priority, "retryCount": job.retry_count, "maxRetries": job.max_retries,
            "retryDelays": list(job.retry_delays), "createdAt": job.created_at, "runAt": job.run_at,
            "attempts": [], "queue": job.queue,
        }
        if job.scheduled_by is not None:
            doc["scheduledBy"], doc["slot"] = job.scheduled_by, job.slot
        if job.idempotency_key is not None:
            doc["idempotencyKey"] = doc["activeKey"] = job.idempotency_key
        if job.schema_fingerprint is not None:
            doc["schemaFingerprint"] = job.schema_fingerprint
        return doc

    def insert(self, job: Job) -> tuple[str, bool]:
        doc = self._insert_doc(job)
        for _ in range(5):
            try:
                with self._errors():
                    self.coll.insert_one(dict(doc))
                return job.id, True
            except StoreError as exc:
                if not isinstance(exc.__cause__, DuplicateKeyError) or job.idempotency_key is None:
                    raise
            existing = self._holder_of(job.idempotency_key)
            if existing is not None:
                return existing, False
            # The holder finished between our insert and our read: try again.
        raise StoreError(f"could not settle idempotency key {job.idempotency_key!r}")

    def _holder_of(self, key: str) -> str | None:
        with self._errors():
            existing = self.coll.find_one({"activeKey": key}, projection={"_id": 1})
        return None if existing is None else existing["_id"]

    def insert_many(self, jobs: list[Job]) -> list[tuple[str, bool]]:
        """One ``insert_many`` (unordered: every document is tried); the
        documents refused for a held idempotency key answer its holder."""
        refused: set[int] = set()
        try:
            with self._errors():
                self.coll.insert_many([self._insert_doc(job) for job in jobs], ordered=False)
        except StoreError as exc:
            cause = exc.__cause__
            if not isinstance(cause, BulkWriteError):
                raise
            errors = cause.details.get("writeErrors", [])
            if any(e.get("code") != 11000 or jobs[e["index"]].idempotency_key is None for e in errors):
                raise
            refused = {e["index"] for e in errors}
        out: list[tuple[str, bool]] = []
        for index, job in enumerate(jobs):
            if index not in refused:
                out.append((job.id, True))
                continue
            holder = self._holder_of(job.idempotency_key)
            out.append((holder, False) if holder is not None else self.insert(job))
        return out

    def get(self, job_id: str) -> Job | None:
        with self._errors():
            doc = self.coll.find_one({"_id": job_id})
        return _doc_to_job(doc) if doc else None

    def claim(self, worker_id: str, lock_token: str, now: datetime,
              queues: tuple[str, ...] | None = None) -> Job | None:
        query: dict[str, Any] = {"status": "pending", "runAt": {"$lte": now}}
        if queues is not None:
            query["queue"] = _in_queues(queues)
        with self._errors():
            doc = self.coll.find_one_and_update(
                query,
                {"$set": {"status": "processing", "lockToken": lock_token, "workerId": worker_id,
                          "processedAt": now, "heartbeatAt": now, "progress": None},
                 "$push": {"attempts": {"startedAt": now, "worker": worker_id}}},
                sort=[("priority", pymongo.DESCENDING), ("createdAt", pymongo.ASCENDING)],
                return_document=ReturnDocument.AFTER)
        return _doc_to_job(doc) if doc else None

    @staticmethod
    def _fence(job: Job) -> dict[str, Any]:
        return {"_id": job.id, "status": "processing", "lockToken": job.lock_token}

    @staticmethod
    def _end_attempt(job: Job, now: datetime, outcome: str, error: str | None = None,
                     next_delay: float | None = None, traceback: str | None = None) -> dict[str, Any]:
        prefix = f"attempts.{len(job.attempts) - 1}."
        fields: dict[str, Any] = {prefix + "endedAt": now, prefix + "outcome": outcome}
        if job.processed_at is not None and job.run_at is not None:  # the queue latency of this attempt
            fields[prefix + "waitSeconds"] = round((job.processed_at - job.run_at).total_seconds(), 3)
        if error is not None:
            fields[prefix + "error"] = error
        if next_delay is not None:
            fields[prefix + "nextDelaySeconds"] = next_delay
        if traceback is not None:
            fields[prefix + "traceback"] = traceback
        return fields

    def _update_claimed(self, job: Job, update: dict[str, Any]) -> bool:
        with self._errors():
            return self.coll.update_one(self._fence(job), update).matched_count == 1

    def heartbeat(self, job: Job, now: datetime, progress: dict[str, Any] | None = None) -> bool:
        fields: dict[str, Any] = {"heartbeatAt": now}
        if progress is not None:
            fields["progress"] = progress
        return self._update_claimed(job, {"$set": fields})

    def complete(self, job: Job, now: datetime, result: Any) -> bool:
        return self._update_claimed(job, {
            "$set": {"status": "completed", "completedAt": now, "result": result, "error": None,
                     **self._end_attempt(job, now, "completed")},
            "$unset": {"lockToken": "", "activeKey": ""}})

    def retry_later(self, job: Job, now: datetime, error: str, run_at: datetime,
                    traceback: str | None = None) -> bool:
        delay = round((run_at - now).total_seconds(), 3)
        return self._update_claimed(job, {
            "$set": {"status": "pending", "runAt": run_at, "error": error,
                     **self._end_attempt(job, now, "retry", error, delay, traceback)},
            "$inc": {"retryCount": 1}, "$unset": {"lockToken": ""}})

    def fail(self, job: Job, now: datetime, error: str, traceback: str | None = None) -> bool:
        return self._update_claimed(job, {
            "$set": {"status": "failed", "completedAt": now, "error": error,
                     **self._end_attempt(job, now, "failed", error, traceback=traceback)},
            "$unset": {"lockToken": "", "activeKey": ""}})

    def release(self, job: Job, now: datetime, reason: str) -> bool:
        return self._update_claimed(job, {
            "$set": {"status": "pending", "runAt": now,
                     **self._end_attempt(job, now, "released", reason)},
            "$unset": {"lockToken": ""}})

    def find_stuck(self, heartbeat_before: datetime, limit: int = 1000) -> list[Job]:
        with self._errors():
            docs = list(self.coll.find({"status": "processing", "heartbeatAt": {"$lt": heartbeat_before}},
                                       sort=[("heartbeatAt", 1)], limit=int(limit)))
        return [_doc_to_job(d) for d in docs]

    def recover_lost(self, job: Job, heartbeat_before: datetime, now: datetime, error: str,
                     retry: bool) -> bool:
        fence = {**self._fence(job), "heartbeatAt": {"$lt": heartbeat_before}}
        index = len(job.attempts) - 1
        ended = self._end_attempt(job, now, "lost", error) if index >= 0 else {}
        if retry:
            update = {"$set": {"status": "pending", "runAt": now, "error": error, **ended},
                      "$inc": {"retryCount": 1}, "$unset": {"lockToken": ""}}
        else:
            update = {"$set": {"status": "failed", "completedAt": now, "error": error, **ended},
                      "$unset": {"lockToken": "", "activeKey": ""}}
        with self._errors():
            return self.coll.update_one(fence, update).matched_count == 1

    def cancel(self, job_id: str, now: datetime) -> bool:
        with self._errors():
            return self.coll.update_one(
                {"_id": job_id, "status": "pending"},
                {"$set": {"status": "cancelled", "completedAt": now},
                 "$unset": {"activeKey": ""}}).matched_count == 1

    def requeue_failed(self, job_id: str, now: datetime) -> bool:
        with self._errors():
            doc = self.coll.find_one({"_id": job_id, "status": "failed"}, projection={"idempotencyKey": 1})
        if doc is None:
            return False
        fields: dict[str, Any] = {"status": "pending", "runAt": now, "retryCount": 0,
                                  "completedAt": None, "error": None}
        if doc.get("idempotencyKey") is not None:
            fields["activeKey"] = doc["idempotencyKey"]
        try:
            with self._errors():
                return self.coll.update_one({"_id": job_id, "status": "failed"},
                                            {"$set": fields}).matched_count == 1
        except StoreError as exc:
            if isinstance(exc.__cause__, DuplicateKeyError):
                return False
            raise

    def run_now(self, job_id: str, now: datetime) -> bool:
        with self._errors():
            return self.coll.update_one({"_id": job_id, "status": "pending", "runAt": {"$gt": now}},
                                        {"$set": {"runAt": now}}).modified_count == 1

    def counts(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {s.value: 0 for s in JobStatus}
        with self._errors():
            for row in self.coll.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}]):
                out[row["_id"]] = row["n"]
            pending = self.coll.find_one({"status": "pending", "runAt": {"$lte": now}},
                                         projection={"runAt": 1}, sort=[("runAt", 1)])
            processing = self.coll.find_one({"status": "processing"}, projection={"processedAt": 1},
                                            sort=[("processedAt", 1)])
            out["scheduled"] = self.coll.count_documents({"status": "pending", "runAt": {"$gt": now}})
        out["total"] = sum(out[s.value] for s in JobStatus)
        out["oldestPendingAt"] = _aware(pending["runAt"]) if pending else None
        out["oldestProcessingAt"] = _aware(processing["processedAt"]) if processing else None
        return out

    def counts_by_queue(self, now: datetime) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        queue = {"$ifNull": ["$queue", DEFAULT_QUEUE]}
        with self._errors():
            for row in self.coll.aggregate([{"$group": {"_id": {"queue": queue, "status": "$status"},
                                                        "n": {"$sum": 1}}}]):
                out.setdefault(row["_id"]["queue"], {"oldestPendingAt": None})[row["_id"]["status"]] = row["n"]
            for row in self.coll.aggregate([{"$match": {"status": "pending", "runAt": {"$lte": now}}},
                                            {"$group": {"_id": queue, "oldest": {"$min": "$runAt"}}}]):
                out.setdefault(row["_id"], {})["oldestPendingAt"] = _aware(row["oldest"])
        return out

    def counts_by_type(self) -> TypeCounts:
        with self._errors():
            jobs = self.coll.aggregate([
                {"$group": {"_id": {"type": "$type", "status": "$status"}, "n": {"$sum": 1}}}])
            by_job = {(r["_id"]["type"], r["_id"]["status"]): r["n"] for r in jobs}
            attempts = self.coll.aggregate([
                {"$project": {"type": 1, "attempts.outcome": 1}},
                {"$unwind": "$attempts"},
                {"$group": {"_id": {"type": "$type", "outcome": {"$ifNull": ["$attempts.outcome", "running"]}},
                            "n": {"$sum": 1}}}])
            by_attempt = {(r["_id"]["type"], r["_id"]["outcome"]): r["n"] for r in attempts}
        return TypeCounts(by_job, by_attempt)

    def list_jobs(self, status: str | None = None, job_type: str | None = None,
                  limit: int = 50, before: tuple[datetime, str] | None = None,
                  queue: str | None = None, due_by: datetime | None = None,
                  due_after: datetime | None = None) -> list[Job]:
        query: dict[str, Any] = {}
        if due_by is not None or due_after is not None:
            query["runAt"] = {**({"$lte": due_by} if due_by else {}), **({"$gt": due_after} if due_after else {})}
        if queue is not None:
            query["queue"] = _in_queues([queue])
        if status is not None:
            query["status"] = status
        if job_type is not None:
            query["type"] = job_type
        if before is not None:
            query["$or"] = [{"createdAt": {"$lt": before[0]}},
                            {"createdAt": before[0], "_id": {"$lt": before[1]}}]
        with self._errors():
            docs = list(self.coll.find(query, sort=[("createdAt", -1), ("_id", -1)], limit=int(limit)))
        return [_doc_to_job(d) for d in docs]

    def purge(self, completed_before: datetime, finished_before: datetime) -> int:
        with self._errors():
            return self.coll.delete_many({"$or": [
                {"status": "completed", "completedAt": {"$lt": completed_before}},
                {"status": {"$in": ["failed", "cancelled"]}, "completedAt": {"$lt": finished_before}},
            ]}).deleted_count

    # -- schedules --------------------------------------------------------------
    # No transactions (mongomock and standalone servers have none): the job's _id comes from
    # (name, slot), so the server refuses a slot's second insert; then the schedule document
    # advances by a conditional upsert (an equal or later stored slot: DuplicateKeyError),
    # and an older slot's just-inserted job is deleted while still pending. docs/periodic.md.
    @property
    def schedules(self):
        return self.db.get_collection(f"{self.collection_name}_schedules",
                                      codec_options=CodecOptions(tz_aware=True))

    def enqueue_slot(self, schedule_name: str, slot: datetime, job: Job, now: datetime) -> bool:
        try:
            with self._errors():
                self.coll.insert_one(self._insert_doc(job))
        except StoreError as exc:
            if isinstance(exc.__cause__, DuplicateKeyError):
                return False  # this slot's job exists: another process enqueued it
            raise
        try:
            with self._errors():
                self.schedules.update_one(
                    {"_id": schedule_name, "$or": [{"lastSlot": None}, {"lastSlot": {"$lt": slot}}]},
                    {"$set": {"lastSlot": slot, "lastJobId": job.id, "seenAt": now}, "$inc": {"runs": 1}},
                    upsert=True)
            return True
        except StoreError as exc:
            if not isinstance(exc.__cause__, DuplicateKeyError):
                raise
        with self._errors():  # a later slot is stored: take back the older one
            self.coll.delete_one({"_id": job.id, "status": "pending"})
        return False

    def schedule_states(self) -> dict[str, ScheduleState]:
        with self._errors():
            docs = list(self.schedules.find({}))
        return {d["_id"]: ScheduleState(d["_id"], _aware(d.get("lastSlot")), d.get("lastJobId"),
                                        _aware(d.get("seenAt")), d.get("runs", 0)) for d in docs}

    def touch_schedules(self, names: list[str], now: datetime) -> None:
        with self._errors():
            for name in names:
                self.schedules.update_one({"_id": name}, {"$set": {"seenAt": now}}, upsert=True)

    def purge_schedules(self, seen_before: datetime) -> int:
        with self._errors():
            return self.schedules.delete_many({"seenAt": {"$lt": seen_before}}).deleted_count

    # -- media ----------------------------------------------------------------
    # One document per file in ``<collection>_media``. The files are transcoded
    # images of a few hundred KB, far below BSON's 16 MB document limit, so
    # GridFS's chunking would only add round trips (and mongomock's GridFS
    # does not work with pymongo 4.20, so it could not be tested here).
    def put_file(self, name: str, data: bytes, content_type: str, now: datetime) -> None:
        if len(data) > MAX_MEDIA_BYTES:
            raise StoreError(f"file {name} is {len(data)} bytes; the MongoDB store keeps at most {MAX_MEDIA_BYTES}")
        with self._errors():
            self.media.replace_one({"_id": name}, {"_id": name, "data": Binary(data), "length": len(data),
                                                   "contentType": content_type, "createdAt": now},
                                   upsert=True)

    def get_file(self, name: str) -> StoredFile | None:
        with self._errors():
            doc = self.media.find_one({"_id": name})
        if doc is None:
            return None
        return StoredFile(name, bytes(doc["data"]), doc["contentType"], _aware(doc["createdAt"]))

    def purge_files(self, created_before: datetime) -> int:
        with self._errors():
            return self.media.delete_many({"createdAt": {"$lt": created_before}}).deleted_count
