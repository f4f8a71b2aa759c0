"""The SQL of the SQLite store's side tables (``side_tables``): the
operator's history read from the attempts, worker records, schedules, media.
The jobs' own statements are in ``queries``.
"""
from __future__ import annotations


# -- operator views ---------------------------------------------------------------
# Attempts that ended in [since, until), per endedAt bucket and type: outcome
# "completed", or a failure ("failed", "retry", "lost"). A job with such an
# attempt is still active or finished after it ended, so only those rows are
# read (the pending and processing partial indexes, and completed_at). endedAt
# is ISO text: strftime('%s') gives its whole epoch seconds exactly.
HISTORY = """
SELECT CAST(e.ended / :bucket AS INTEGER) * :bucket AS bucket, e.type,
       SUM(e.outcome = 'completed'), SUM(e.outcome IN ('failed', 'retry', 'lost'))
  FROM (SELECT q.type AS type, json_extract(a.value, '$.outcome') AS outcome,
               CAST(strftime('%s', json_extract(a.value, '$.endedAt')) AS INTEGER) AS ended
          FROM queue_jobs AS q, json_each(q.attempts) AS a
         WHERE (q.status IN ('pending', 'processing') OR q.completed_at >= :since)
           AND json_extract(a.value, '$.endedAt') IS NOT NULL) AS e
 WHERE e.ended >= :since AND e.ended < :until AND e.outcome IN ('completed', 'failed', 'retry', 'lost')
 GROUP BY 1, 2 ORDER BY 1, 2
"""


REGISTER_WORKER = """
INSERT INTO queue_workers (id, last_seen_at, record) VALUES (:id, :seen, :record)
ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, record = excluded.record
"""


LIST_WORKERS = "SELECT record FROM queue_workers ORDER BY last_seen_at DESC, id"


PURGE_WORKERS = "DELETE FROM queue_workers WHERE last_seen_at < ?"


# -- schedules (core.periodic) ------------------------------------------------------
# Run inside one BEGIN IMMEDIATE with INSERT: advance the schedule's last slot
# only if the new slot is later; no row returned means refused (and the
# transaction inserts no job).
ADVANCE_SCHEDULE = """
INSERT INTO queue_schedules (name, last_slot, last_job_id, seen_at, runs)
VALUES (:name, :slot, :job_id, :now, 1)
ON CONFLICT (name) DO UPDATE SET last_slot = excluded.last_slot, last_job_id = excluded.last_job_id,
                                 seen_at = excluded.seen_at, runs = queue_schedules.runs + 1
 WHERE queue_schedules.last_slot IS NULL OR queue_schedules.last_slot < excluded.last_slot
RETURNING name
"""


SCHEDULE_STATES = "SELECT name, last_slot, last_job_id, seen_at, runs FROM queue_schedules"


TOUCH_SCHEDULE = """
INSERT INTO queue_schedules (name, seen_at) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at
"""


PURGE_SCHEDULES = "DELETE FROM queue_schedules WHERE seen_at < ?"


# -- media ------------------------------------------------------------------------------
PUT_FILE = """
INSERT OR REPLACE INTO queue_files (name, data, content_type, created_at, etag) VALUES (?, ?, ?, ?, ?)
"""


GET_FILE = "SELECT name, data, content_type, created_at, etag FROM queue_files WHERE name = ?"


FILE_ETAG = "SELECT etag FROM queue_files WHERE name = ?"


PURGE_FILES = "DELETE FROM queue_files WHERE created_at < ?"


# -- history percentiles (core.history) -------------------------------------------
# Per bucket and type (and per bucket over all types: type NULL), the nearest-rank
# median and p95 of the attempts' queue latency (waitSeconds: runAt -> startedAt)
# and run time (startedAt -> endedAt), ranked by window functions over the same
# rows as HISTORY.
_TIMED_ATTEMPTS = """
SELECT CAST(e.ended / :bucket AS INTEGER) * :bucket AS bucket, e.type, e.wait, e.run
  FROM (SELECT q.type AS type, json_extract(a.value, '$.waitSeconds') AS wait,
               (julianday(json_extract(a.value, '$.endedAt'))
                - julianday(json_extract(a.value, '$.startedAt'))) * 86400.0 AS run,
               CAST(strftime('%s', json_extract(a.value, '$.endedAt')) AS INTEGER) AS ended,
               json_extract(a.value, '$.outcome') AS outcome
          FROM queue_jobs AS q, json_each(q.attempts) AS a
         WHERE (q.status IN ('pending', 'processing') OR q.completed_at >= :since)
           AND json_extract(a.value, '$.endedAt') IS NOT NULL) AS e
 WHERE e.ended >= :since AND e.ended < :until AND e.outcome IN ('completed', 'failed', 'retry', 'lost')
"""


def _ranked(partition: str) -> str:
    return f"""
SELECT bucket, {'type' if 'type' in partition else 'NULL'} AS type, COUNT(*) AS n,
       MAX(CASE WHEN wr = (wn + 1) / 2 THEN wait END), MAX(CASE WHEN wr = (95 * wn + 99) / 100 THEN wait END),
       MAX(CASE WHEN rr = (n_all + 1) / 2 THEN run END), MAX(CASE WHEN rr = (95 * n_all + 99) / 100 THEN run END)
  FROM (SELECT bucket, type, wait, run,
               ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY wait IS NULL, wait) AS wr,
               COUNT(wait) OVER (PARTITION BY {partition}) AS wn,
               ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY run) AS rr,
               COUNT(*) OVER (PARTITION BY {partition}) AS n_all
          FROM timed)
 GROUP BY bucket{', type' if 'type' in partition else ''}"""


HISTORY_TIMINGS = (f"WITH timed AS ({_TIMED_ATTEMPTS})" + _ranked("bucket, type") + "\nUNION ALL"
                   + _ranked("bucket") + "\nORDER BY 1, 2")
