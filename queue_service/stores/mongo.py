"""MongoDB store: the production store, for many processes on many hosts.

Every state change is one ``find_one_and_update`` / ``update_one`` whose filter
carries the precondition (status, lock token), so the server arbitrates races.
Datetimes are read tz-aware. Media live in ``<collection>_media``, one document per file.
Keys of payload, result and progress are escaped on every write (``mongo_keys``:
``$``-prefixed and dotted keys) and unescaped on every read (``mongo_docs``).
The database handle is obtained lazily through ``get_db`` so no client is used
before a fork.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime
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
from ..core.errors import StoreError, StoreRefusesWrites, StoreUnavailable, UnstorableValue
from ..core.jobs import Job, capped_attempts
from ..core.store import ScheduleState, Store, StoredFile, media_etag
from .mongo_docs import _aware, _doc_to_job, _in_queues
from .mongo_keys import escape
from .mongo_operator import OperatorViews
from .mongo_reads import ReadViews

_MOCK_LOCK = threading.RLock()
MAX_MEDIA_BYTES = 15 * 1024 * 1024
PING_TIMEOUT_SECONDS = 2.0
# Whatever the host's client says (readPreference=secondaryPreferred, w=0): the
# queue reads its own writes and must see duplicate keys, so its collections
# read from the primary and write with majority acknowledgement.
_PINNED = {"codec_options": CodecOptions(tz_aware=True),  # UTC; mongomock refuses an explicit tzinfo
           "read_preference": ReadPreference.PRIMARY, "write_concern": WriteConcern("majority")}


# Atlas's "you are over your space quota" (AtlasError 8000): reads still answer.
WRITES_REFUSED_CODES = frozenset({8000})


def _refuses_writes(exc: PyMongoError) -> bool:
    if isinstance(exc, BulkWriteError):
        return any(e.get("code") in WRITES_REFUSED_CODES for e in exc.details.get("writeErrors", []))
    return getattr(exc, "code", None) in WRITES_REFUSED_CODES


class MongoStore(ReadViews, OperatorViews, Store):
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
                if _refuses_writes(exc):
                    raise StoreRefusesWrites(f"MongoDB refuses writes: {exc}") from exc
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
            self.setup_report = mongo_indexes.ensure(c, mongo_indexes.job_indexes(self.completed_ttl_seconds),
                                                   mongo_indexes.RETIRED)
            self.setup_report += mongo_indexes.ensure(
                self.media, *mongo_indexes.media_indexes(self.completed_ttl_seconds))

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
            "_id": job.id, "type": job.type, "payload": escape(job.payload), "status": str(job.status),
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
        if doc is None:
            return None
        job = _doc_to_job(doc)
        capped = capped_attempts(doc["attempts"])  # the first and the latest: one more write, past 20 only
        if capped is not None:
            kept, dropped = capped
            job.attempts, job.attempts_dropped = job.attempts[:1] + job.attempts[dropped + 1:], job.attempts_dropped + dropped
            self._update_claimed(job, {"$set": {"attempts": kept}, "$inc": {"attemptsDropped": dropped}})
        return job

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
            fields["progress"] = escape(progress)
        return self._update_claimed(job, {"$set": fields})

    def complete(self, job: Job, now: datetime, result: Any) -> bool:
        return self._update_claimed(job, {
            "$set": {"status": "completed", "completedAt": now, "result": escape(result), "error": None,
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
                                                   "contentType": content_type, "createdAt": now,
                                                   "etag": media_etag(data)}, upsert=True)

    def get_file(self, name: str) -> StoredFile | None:
        with self._errors():
            doc = self.media.find_one({"_id": name})
        if doc is None:
            return None
        data = bytes(doc["data"])
        return StoredFile(name, data, doc["contentType"], _aware(doc["createdAt"]), doc.get("etag") or media_etag(data))

    def file_etag(self, name: str) -> str | None:
        with self._errors():
            doc = self.media.find_one({"_id": name}, projection={"etag": 1})
        if doc is None:
            return None
        return doc.get("etag") or super().file_etag(name)  # a file stored before etags were

    def purge_files(self, created_before: datetime) -> int:
        with self._errors():
            return self.media.delete_many({"createdAt": {"$lt": created_before}}).deleted_count
