"""The MongoDB store's operator views: attempt history per bucket, and the
worker records in ``<collection>_workers``. A mixin of ``MongoStore``: it uses
the store's ``coll``, ``db``, ``collection_name`` and ``_errors``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bson.codec_options import CodecOptions

from ..core.store import nearest_rank, timing_row
from .mongo_docs import _doc_to_job


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class OperatorViews:
    @property
    def workers(self):
        return self.db.get_collection(f"{self.collection_name}_workers",
                                      codec_options=CodecOptions(tz_aware=True))

    def history(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        """Attempts ended in the window, per bucket and type. Only jobs still
        active or finished since ``since`` can hold one (status_heartbeat and
        status_finished indexes). The bucket comes from the epoch milliseconds
        (a date minus the epoch): the same arithmetic as the SQLite store's."""
        ms = int(bucket_seconds) * 1000
        epoch_ms = {"$subtract": ["$attempts.endedAt", datetime(1970, 1, 1, tzinfo=timezone.utc)]}
        failure = {"$in": ["$attempts.outcome", ["failed", "retry", "lost"]]}
        with self._errors():
            rows = list(self.coll.aggregate([
                {"$match": {"$or": [{"status": {"$in": ["pending", "processing"]}},
                                    {"completedAt": {"$gte": since}}]}},
                {"$project": {"type": 1, "attempts.endedAt": 1, "attempts.outcome": 1}},
                {"$unwind": "$attempts"},
                {"$match": {"attempts.endedAt": {"$gte": since, "$lt": until},
                            "attempts.outcome": {"$in": ["completed", "failed", "retry", "lost"]}}},
                {"$group": {"_id": {"bucket": {"$subtract": [epoch_ms, {"$mod": [epoch_ms, ms]}]},
                                    "type": "$type"},
                            "completed": {"$sum": {"$cond": [{"$eq": ["$attempts.outcome", "completed"]}, 1, 0]}},
                            "failed": {"$sum": {"$cond": [failure, 1, 0]}}}}]))
        out = [{"bucket": int(r["_id"]["bucket"]) // 1000, "type": r["_id"]["type"],
                "completed": r["completed"], "failed": r["failed"]} for r in rows]
        return sorted(out, key=lambda r: (r["bucket"], r["type"]))

    def history_timings(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        """The values are grouped in the store (one list of waits and run
        times, in milliseconds, per bucket and type), ranked here: only those
        numbers come back, never the jobs."""
        ms = int(bucket_seconds) * 1000
        epoch_ms = {"$subtract": ["$attempts.endedAt", datetime(1970, 1, 1, tzinfo=timezone.utc)]}
        with self._errors():
            rows = list(self.coll.aggregate([
                {"$match": {"$or": [{"status": {"$in": ["pending", "processing"]}},
                                    {"completedAt": {"$gte": since}}]}},
                {"$project": {"type": 1, "attempts.startedAt": 1, "attempts.endedAt": 1,
                              "attempts.outcome": 1, "attempts.waitSeconds": 1}},
                {"$unwind": "$attempts"},
                {"$match": {"attempts.endedAt": {"$gte": since, "$lt": until},
                            "attempts.outcome": {"$in": ["completed", "failed", "retry", "lost"]}}},
                {"$group": {"_id": {"bucket": {"$subtract": [epoch_ms, {"$mod": [epoch_ms, ms]}]},
                                    "type": "$type"},
                            "waits": {"$push": {"$ifNull": ["$attempts.waitSeconds", None]}},
                            "runs": {"$push": {"$subtract": ["$attempts.endedAt", "$attempts.startedAt"]}}}}]))
        groups: dict[tuple, tuple[list, list]] = {}
        for r in rows:
            bucket = int(r["_id"]["bucket"]) // 1000
            waits = [w for w in r["waits"] if w is not None]
            runs = [v / 1000 for v in r["runs"] if v is not None]
            for key in ((bucket, r["_id"]["type"]), (bucket, None)):
                group = groups.setdefault(key, ([], [], [0]))
                group[0].extend(waits)
                group[1].extend(runs)
                group[2][0] += len(r["runs"])
        out = [timing_row(bucket, job_type, n[0], (nearest_rank(w, 50), nearest_rank(w, 95),
                                                   nearest_rank(v, 50), nearest_rank(v, 95)))
               for (bucket, job_type), (w, v, n) in groups.items()]
        return sorted(out, key=lambda r: (r["bucket"], r["type"] or ""))

    def jobs_with_id_prefix(self, prefix: str, limit: int = 20) -> list[Any]:
        with self._errors():
            docs = list(self.coll.find({"_id": {"$gte": prefix, "$lt": prefix + "g"}}, sort=[("_id", 1)],
                                       limit=int(limit)))
        return [_doc_to_job(d) for d in docs]

    def register_worker(self, record: dict[str, Any]) -> None:
        doc = {k: v for k, v in record.items() if k != "id"}
        with self._errors():
            self.workers.replace_one({"_id": record["id"]}, doc, upsert=True)

    def list_workers(self) -> list[dict[str, Any]]:
        with self._errors():
            docs = list(self.workers.find({}, sort=[("lastSeenAt", -1), ("_id", 1)]))
        out = []
        for doc in docs:
            record = {"id": doc.pop("_id"), **doc}
            for key in ("startedAt", "lastSeenAt"):
                record[key] = _aware(record.get(key))
            out.append(record)
        return out

    def purge_workers(self, seen_before: datetime) -> int:
        with self._errors():
            return self.workers.delete_many({"lastSeenAt": {"$lt": seen_before}}).deleted_count
