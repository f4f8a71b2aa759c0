"""Every SQL statement of the SQLite store, whole and by name.

Times are REAL epoch seconds (``:now``), so they sort and compare natively;
attempt timestamps inside the JSON ``attempts`` list are ISO 8601 text
(``:now_iso``). Each statement that ends an attempt is fenced: it applies only
while the job is processing under the lock token its worker holds.
"""
from __future__ import annotations

# setup(): TABLES, then ADDED_COLUMNS missing from a file made by an older
# version, then INDEXES (some index the added columns).
TABLES = """
CREATE TABLE IF NOT EXISTS queue_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL,
    retry_delays TEXT NOT NULL,
    created_at REAL NOT NULL,
    run_at REAL NOT NULL,
    processed_at REAL,
    completed_at REAL,
    heartbeat_at REAL,
    worker_id TEXT,
    lock_token TEXT,
    error TEXT,
    result TEXT,
    progress TEXT,
    attempts TEXT NOT NULL DEFAULT '[]',
    idempotency_key TEXT,
    queue TEXT NOT NULL DEFAULT 'default',
    scheduled_by TEXT,
    slot REAL,
    schema_fingerprint TEXT,
    attempts_dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS queue_workers (
    id TEXT PRIMARY KEY,
    last_seen_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_files (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    content_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    etag TEXT
);
CREATE TABLE IF NOT EXISTS queue_schedules (
    name TEXT PRIMARY KEY,
    last_slot REAL,
    last_job_id TEXT,
    seen_at REAL NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0
);
"""

TABLE_COLUMNS = "SELECT name FROM pragma_table_info(?)"

ADDED_COLUMNS = {
    "queue": "ALTER TABLE queue_jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default'",
    "scheduled_by": "ALTER TABLE queue_jobs ADD COLUMN scheduled_by TEXT",
    "slot": "ALTER TABLE queue_jobs ADD COLUMN slot REAL",
    "schema_fingerprint": "ALTER TABLE queue_jobs ADD COLUMN schema_fingerprint TEXT",
    "attempts_dropped": "ALTER TABLE queue_jobs ADD COLUMN attempts_dropped INTEGER NOT NULL DEFAULT 0",
}

# The media ETag, computed once at write time (a 304 reads no file); NULL for files
# stored before it existed (computed from the data then).
ADDED_FILE_COLUMNS = {
    "etag": "ALTER TABLE queue_files ADD COLUMN etag TEXT",
}

INDEXES = """
CREATE INDEX IF NOT EXISTS queue_jobs_pending
    ON queue_jobs (priority DESC, created_at, seq) WHERE status = 'pending';
-- A worker that consumes some queues claims along this one: no job of another
-- queue is read.
CREATE INDEX IF NOT EXISTS queue_jobs_pending_by_queue
    ON queue_jobs (queue, priority DESC, created_at, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS queue_jobs_processing
    ON queue_jobs (heartbeat_at) WHERE status = 'processing';
-- No index on completed_at: each completion would write one more page (drain
-- ~15% slower). PURGE bounds its scan by created_at instead (a job finishes
-- after it was created).
-- GET /jobs lists newest first: scanned backwards, no sort of the table. Ascending,
-- so each insert appends at its right edge (a DESC index inserts at the left edge,
-- where SQLite splits pages half-empty: enqueue p99 was ~2x).
CREATE INDEX IF NOT EXISTS queue_jobs_newest ON queue_jobs (created_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS queue_jobs_active_key
    ON queue_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'processing');
CREATE INDEX IF NOT EXISTS queue_files_created ON queue_files (created_at);
"""

# The columns of a job row, in the order the store decodes them (named, not
# ``*``, so a file whose table gained columns later still reads right).
COLUMNS = ("id, type, payload, status, priority, retry_count, max_retries, retry_delays,"
           " created_at, run_at, processed_at, completed_at, heartbeat_at, worker_id,"
           " lock_token, error, result, progress, attempts, idempotency_key, queue, scheduled_by, slot,"
           " schema_fingerprint, attempts_dropped")

# A claim that made the attempts list longer than MAX_ATTEMPTS_KEPT keeps the first and
# the latest (core.jobs.capped_attempts); fenced like every write after a claim.
CAP_ATTEMPTS = """
UPDATE queue_jobs SET attempts = :attempts, attempts_dropped = attempts_dropped + :dropped
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

PING = "SELECT 1 FROM queue_jobs LIMIT 1"

# -- enqueue ------------------------------------------------------------------
INSERT = """
INSERT INTO queue_jobs (id, type, payload, status, priority, retry_count, max_retries,
                        retry_delays, created_at, run_at, idempotency_key, queue, scheduled_by, slot,
                        schema_fingerprint)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

INSERT_UNLESS_KEY_HELD = INSERT + " ON CONFLICT DO NOTHING RETURNING id"

ACTIVE_JOB_WITH_KEY = """
SELECT id FROM queue_jobs
 WHERE idempotency_key = ? AND status IN ('pending', 'processing')
"""

GET = f"SELECT {COLUMNS} FROM queue_jobs WHERE id = ?"

# -- claim --------------------------------------------------------------------
# A plain read before an idle claim: with nothing runnable, no write lock.
ANY_RUNNABLE = "SELECT 1 FROM queue_jobs WHERE status = 'pending' AND run_at <= :now LIMIT 1"

ANY_RUNNABLE_IN_QUEUES = """
SELECT 1 FROM queue_jobs
 WHERE status = 'pending' AND queue IN (SELECT value FROM json_each(:queues)) AND run_at <= :now
 LIMIT 1
"""

CLAIM = f"""
UPDATE queue_jobs
   SET status = 'processing', lock_token = :token, worker_id = :worker,
       processed_at = :now, heartbeat_at = :now, progress = NULL,
       attempts = json_insert(attempts, '$[#]', json_object('startedAt', :now_iso, 'worker', :worker))
 WHERE seq = (SELECT seq FROM queue_jobs
               WHERE status = 'pending' AND run_at <= :now
               ORDER BY priority DESC, created_at, seq LIMIT 1)
RETURNING {COLUMNS}
"""

# The same, for a worker that consumes only the queues named in :queues (a JSON array).
CLAIM_FROM_QUEUES = f"""
UPDATE queue_jobs
   SET status = 'processing', lock_token = :token, worker_id = :worker,
       processed_at = :now, heartbeat_at = :now, progress = NULL,
       attempts = json_insert(attempts, '$[#]', json_object('startedAt', :now_iso, 'worker', :worker))
 WHERE seq = (SELECT seq FROM queue_jobs
               WHERE status = 'pending' AND queue IN (SELECT value FROM json_each(:queues))
                 AND run_at <= :now
               ORDER BY priority DESC, created_at, seq LIMIT 1)
RETURNING {COLUMNS}
"""

# -- the claimed attempt (fenced) -----------------------------------------------
HEARTBEAT = """
UPDATE queue_jobs SET heartbeat_at = :now
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

HEARTBEAT_WITH_PROGRESS = """
UPDATE queue_jobs SET heartbeat_at = :now, progress = :progress
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

COMPLETE = """
UPDATE queue_jobs
   SET status = 'completed', completed_at = :now, result = :result, lock_token = NULL, error = NULL,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'completed')
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

RETRY_LATER = """
UPDATE queue_jobs
   SET status = 'pending', retry_count = retry_count + 1, run_at = :run_at, lock_token = NULL,
       error = :error,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'retry',
                           '$[#-1].error', :error, '$[#-1].nextDelaySeconds', :next_delay)
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

FAIL = """
UPDATE queue_jobs
   SET status = 'failed', completed_at = :now, lock_token = NULL, error = :error,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'failed',
                           '$[#-1].error', :error)
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

# The same two, for an attempt that ended with an exception: its traceback too.
RETRY_LATER_WITH_TRACEBACK = """
UPDATE queue_jobs
   SET status = 'pending', retry_count = retry_count + 1, run_at = :run_at, lock_token = NULL,
       error = :error,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'retry',
                           '$[#-1].error', :error, '$[#-1].nextDelaySeconds', :next_delay,
                           '$[#-1].traceback', :traceback)
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

FAIL_WITH_TRACEBACK = """
UPDATE queue_jobs
   SET status = 'failed', completed_at = :now, lock_token = NULL, error = :error,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'failed',
                           '$[#-1].error', :error, '$[#-1].traceback', :traceback)
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

RELEASE = """
UPDATE queue_jobs
   SET status = 'pending', run_at = :now, lock_token = NULL,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'released',
                           '$[#-1].error', :error)
 WHERE id = :id AND status = 'processing' AND lock_token = :token
"""

# -- lost jobs (the stuck sweep) ----------------------------------------------------
FIND_STUCK = f"""
SELECT {COLUMNS} FROM queue_jobs
 WHERE status = 'processing' AND heartbeat_at < :before
 ORDER BY heartbeat_at LIMIT :limit
"""

RECOVER_FOR_RETRY = """
UPDATE queue_jobs
   SET status = 'pending', retry_count = retry_count + 1, run_at = :now, lock_token = NULL,
       error = :error,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'lost',
                           '$[#-1].error', :error)
 WHERE id = :id AND status = 'processing' AND lock_token = :token AND heartbeat_at < :before
"""

RECOVER_AS_FAILED = """
UPDATE queue_jobs
   SET status = 'failed', completed_at = :now, lock_token = NULL, error = :error,
       attempts = json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].waitSeconds', round(processed_at - run_at, 3),
                           '$[#-1].outcome', 'lost',
                           '$[#-1].error', :error)
 WHERE id = :id AND status = 'processing' AND lock_token = :token AND heartbeat_at < :before
"""

# -- operator transitions ---------------------------------------------------------
CANCEL = """
UPDATE queue_jobs SET status = 'cancelled', completed_at = :now
 WHERE id = :id AND status = 'pending'
"""

REQUEUE_FAILED = """
UPDATE queue_jobs
   SET status = 'pending', run_at = :now, retry_count = 0, completed_at = NULL, error = NULL,
       lock_token = NULL
 WHERE id = :id AND status = 'failed'
"""

# A delayed or retry-scheduled job made due at once; no retry counted.
RUN_NOW = """
UPDATE queue_jobs SET run_at = :now
 WHERE id = :id AND status = 'pending' AND run_at > :now
"""

# -- reads for stats, metrics and lists ---------------------------------------------
COUNT_BY_STATUS = "SELECT status, COUNT(*) FROM queue_jobs GROUP BY status"

OLDEST_RUNNABLE_PENDING = "SELECT MIN(run_at) FROM queue_jobs WHERE status = 'pending' AND run_at <= ?"

COUNT_SCHEDULED = "SELECT COUNT(*) FROM queue_jobs WHERE status = 'pending' AND run_at > ?"

OLDEST_PROCESSING = "SELECT MIN(processed_at) FROM queue_jobs WHERE status = 'processing'"

COUNT_BY_QUEUE_AND_STATUS = "SELECT queue, status, COUNT(*) FROM queue_jobs GROUP BY queue, status"

OLDEST_RUNNABLE_PENDING_BY_QUEUE = """
SELECT queue, MIN(run_at) FROM queue_jobs WHERE status = 'pending' AND run_at <= ? GROUP BY queue
"""

COUNT_BY_TYPE_AND_STATUS = "SELECT type, status, COUNT(*) FROM queue_jobs GROUP BY type, status"

# json_each parses every attempts list: ~120 ms for 100,000 jobs here.
COUNT_ATTEMPTS_BY_TYPE_AND_OUTCOME = """
SELECT q.type, COALESCE(json_extract(a.value, '$.outcome'), 'running'), COUNT(*)
  FROM queue_jobs AS q, json_each(q.attempts) AS a
 GROUP BY 1, 2
"""

# Newest first along queue_jobs_newest, strictly after the cursor (with no
# cursor the store passes one after every job). A NULL filter matches all.
LIST_JOBS = f"""
SELECT {COLUMNS} FROM queue_jobs
 WHERE (:status IS NULL OR status = :status)
   AND (:type IS NULL OR type = :type)
   AND (:queue IS NULL OR queue = :queue)
   AND (:due_by IS NULL OR run_at <= :due_by) AND (:due_after IS NULL OR run_at > :due_after)
   AND (created_at < :before_at OR (created_at = :before_at AND id < :before_id))
 ORDER BY created_at DESC, id DESC LIMIT :limit
"""

# The unique index on id: a range, prefix <= id < prefix + 'g' (ids are lowercase hex and dashes).
JOBS_WITH_ID_PREFIX = f"SELECT {COLUMNS} FROM queue_jobs WHERE id >= :low AND id < :high ORDER BY id LIMIT :limit"

# Only jobs created before the later cutoff can have finished before it: the
# scan walks queue_jobs_newest up to there, not the whole table.
PURGE = """
DELETE FROM queue_jobs
 WHERE created_at < :latest AND completed_at IS NOT NULL
   AND ((status = 'completed' AND completed_at < :completed)
        OR (status IN ('failed', 'cancelled') AND completed_at < :finished))
"""


# A write that changes nothing: fails with "attempt to write a readonly
# database" when the file cannot be written (BEGIN IMMEDIATE alone does not).
WRITE_PROBE = "DELETE FROM queue_files WHERE 0"
