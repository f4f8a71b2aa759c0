"""The MongoDB store's reads that must scale (/health, /stats, /metrics, the
dashboard poll, list views, the stuck sweep). A mixin of ``MongoStore``: it
uses the store's ``coll`` and ``_errors``, and ``_doc_to_job``.

- Counts per status are ``count_documents({"status": s})``, each served by
  the ``status_heartbeat`` index (status first): index keys are counted, no
  document is read. Per queue, one aggregation that starts with a ``$sort`` on
  the ``queue_status`` index and needs only its keys (covered).
- The oldest runnable pending job comes from the partial ``pending_due``
  index (queue, runAt), the oldest processing job from ``processing_started``
  (processedAt): each a ``$sort``/``$first`` per queue or a one-key read.
- Per-type counts (``/metrics``) are one ``$group`` of every job that counts
  its attempts per outcome in place (no ``$unwind``; see ``_BY_TYPE_AND_STATUS``); the result
  is kept ``TYPE_COUNTS_CACHE_SECONDS`` (10 s) measured on the clock the
  caller passes as ``now`` (the queue's injected clock), so a scrape every
  few seconds by several scrapers costs one grouping per 10 s, not one per
  scrape. Without ``now`` nothing is cached.
- ``list_jobs(summary=True)`` leaves out payload, result and progress and keeps
  only each attempt's ``startedAt`` (the count says "attempt 3 of 4").
- ``find_stuck`` reads only the last attempt (``$slice: -1``); ``recover_lost``
  ends the open attempt through the positional operator (``attempts.$``, the
  element without ``endedAt``), so it needs no index into the array.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ..core.jobs import DEFAULT_QUEUE, Job, JobStatus
from ..core.store import ATTEMPT_OUTCOMES, RUNNING, TypeCounts
from .mongo_docs import _aware, _doc_to_job, _in_queues

TYPE_COUNTS_CACHE_SECONDS = 10.0
SUMMARY_PROJECTION = {name: 1 for name in (
    "type", "status", "priority", "retryCount", "maxRetries", "retryDelays", "createdAt", "runAt",
    "processedAt", "completedAt", "heartbeatAt", "workerId", "lockToken", "error", "idempotencyKey",
    "queue", "scheduledBy", "slot", "attempts.startedAt")}
_QUEUE = {"$ifNull": ["$queue", DEFAULT_QUEUE]}

# Per-type counts in one $group by (type, status), no $unwind: each document adds
# the $size of a $filter of its attempts per known outcome. The outcome is read
# through $ifNull (missing or null: "running", as before), also for the other
# outcomes: a real server's $eq takes a missing field as unequal, but mongomock's
# $eq raises on it inside $filter (and then calls the $filter's result "missing"),
# so this is the form both accept; it answers the same on both. "attempts" is
# every attempt: more than the known outcomes add up to means a document holds an
# outcome outside ATTEMPT_OUTCOMES (a newer release's), and only the documents
# that do are unwound, for those attempts only.
_ATTEMPTS = {"$ifNull": ["$attempts", []]}
_OUTCOME = {"$ifNull": ["$$a.outcome", RUNNING]}
_BY_TYPE_AND_STATUS = {
    "_id": {"type": "$type", "status": "$status"}, "n": {"$sum": 1},
    "attempts": {"$sum": {"$size": _ATTEMPTS}},
    **{"o_" + outcome: {"$sum": {"$size": {"$filter": {"input": _ATTEMPTS, "as": "a",
                                                        "cond": {"$eq": [_OUTCOME, outcome]}}}}}
       for outcome in ATTEMPT_OUTCOMES}}
_UNKNOWN = {"$nin": [*ATTEMPT_OUTCOMES, None]}  # None: missing or null, which counts as running
_OTHER_OUTCOMES = [
    {"$match": {"attempts": {"$elemMatch": {"outcome": _UNKNOWN}}}},
    {"$project": {"type": 1, "attempts.outcome": 1}},
    {"$unwind": "$attempts"},
    {"$match": {"attempts.outcome": _UNKNOWN}},
    {"$group": {"_id": {"type": "$type", "outcome": "$attempts.outcome"}, "n": {"$sum": 1}}}]


class ReadViews:
    _type_counts: tuple[datetime, TypeCounts] | None = None

    def _oldest_pending_by_queue(self, now: datetime) -> dict[str, datetime]:
        rows = self.coll.aggregate([
            {"$match": {"status": "pending", "runAt": {"$lte": now}}},
            {"$sort": {"queue": 1, "runAt": 1}},
            {"$group": {"_id": "$queue", "oldest": {"$first": "$runAt"}}}])
        out: dict[str, datetime] = {}
        for row in rows:
            name = row["_id"] or DEFAULT_QUEUE
            oldest = _aware(row["oldest"])
            out[name] = min(out.get(name, oldest), oldest)
        return out

    def counts(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._errors():
            for status in JobStatus:
                out[status.value] = self.coll.count_documents({"status": status.value})
            oldest = self._oldest_pending_by_queue(now)
            processing = self.coll.find_one({"status": "processing"}, projection={"processedAt": 1},
                                            sort=[("processedAt", 1)])
            out["scheduled"] = self.coll.count_documents({"status": "pending", "runAt": {"$gt": now}})
        out["total"] = sum(out[s.value] for s in JobStatus)
        out["oldestPendingAt"] = min(oldest.values()) if oldest else None
        out["oldestProcessingAt"] = _aware(processing["processedAt"]) if processing else None
        return out

    def counts_by_queue(self, now: datetime) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self._errors():
            rows = self.coll.aggregate([
                {"$sort": {"queue": 1, "status": 1}},
                {"$group": {"_id": {"queue": _QUEUE, "status": "$status"}, "n": {"$sum": 1}}}])
            for row in rows:
                counts = out.setdefault(row["_id"]["queue"], {"oldestPendingAt": None})
                counts[row["_id"]["status"]] = counts.get(row["_id"]["status"], 0) + row["n"]
            for name, oldest in self._oldest_pending_by_queue(now).items():
                out.setdefault(name, {})["oldestPendingAt"] = oldest
        return out

    def counts_by_type(self, now: datetime | None = None) -> TypeCounts:
        cached = self._type_counts
        if now is not None and cached is not None and \
                cached[0] <= now < cached[0] + timedelta(seconds=TYPE_COUNTS_CACHE_SECONDS):
            return cached[1]
        with self._errors():
            rows = list(self.coll.aggregate([{"$group": _BY_TYPE_AND_STATUS}]))
            by_job = {(r["_id"]["type"], r["_id"]["status"]): r["n"] for r in rows}
            by_attempt: dict[tuple[str, str], int] = {}
            for row in rows:
                for outcome in ATTEMPT_OUTCOMES:
                    if row["o_" + outcome]:
                        key = (row["_id"]["type"], outcome)
                        by_attempt[key] = by_attempt.get(key, 0) + row["o_" + outcome]
            if any(r["attempts"] > sum(r["o_" + o] for o in ATTEMPT_OUTCOMES) for r in rows):
                for r in self.coll.aggregate(_OTHER_OUTCOMES):  # only the documents that hold one
                    key = (r["_id"]["type"], r["_id"]["outcome"])
                    by_attempt[key] = by_attempt.get(key, 0) + r["n"]
        counts = TypeCounts(by_job, by_attempt)
        if now is not None:
            self._type_counts = (now, counts)
        return counts

    def list_jobs(self, status: str | None = None, job_type: str | None = None,
                  limit: int = 50, before: tuple[datetime, str] | None = None,
                  queue: str | None = None, summary: bool = False, due_by: datetime | None = None,
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
            docs = list(self.coll.find(query, projection=SUMMARY_PROJECTION if summary else None,
                                       sort=[("createdAt", -1), ("_id", -1)], limit=int(limit)))
        if summary:
            for doc in docs:
                doc["payload"] = None
        return [_doc_to_job(d) for d in docs]

    def find_stuck(self, heartbeat_before: datetime, limit: int = 1000) -> list[Job]:
        with self._errors():
            docs = list(self.coll.find({"status": "processing", "heartbeatAt": {"$lt": heartbeat_before}},
                                       projection={"payload": 0, "result": 0, "progress": 0,
                                                   "attempts": {"$slice": -1}},
                                       sort=[("heartbeatAt", 1)], limit=int(limit)))
        for doc in docs:
            doc["payload"] = None
        return [_doc_to_job(d) for d in docs]

    def recover_lost(self, job: Job, heartbeat_before: datetime, now: datetime, error: str,
                     retry: bool) -> bool:
        fence: dict[str, Any] = {"_id": job.id, "status": "processing", "lockToken": job.lock_token,
                                 "heartbeatAt": {"$lt": heartbeat_before}}
        ended: dict[str, Any] = {}
        if job.attempts and job.attempts[-1].get("endedAt") is None:
            fence["attempts"] = {"$elemMatch": {"endedAt": {"$exists": False}}}
            ended = {"attempts.$.endedAt": now, "attempts.$.outcome": "lost", "attempts.$.error": error}
            if job.processed_at is not None and job.run_at is not None:  # the attempt's queue latency
                ended["attempts.$.waitSeconds"] = round((job.processed_at - job.run_at).total_seconds(), 3)
        if retry:
            update = {"$set": {"status": "pending", "runAt": now, "error": error, **ended},
                      "$inc": {"retryCount": 1}, "$unset": {"lockToken": ""}}
        else:
            update = {"$set": {"status": "failed", "completedAt": now, "error": error, **ended},
                      "$unset": {"lockToken": "", "activeKey": ""}}
        with self._errors():
            return self.coll.update_one(fence, update).matched_count == 1

