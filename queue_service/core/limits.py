"""The ranges the queue accepts, in one place.

``core.service`` checks them for ``add_job`` and the REST route alike; the
web schemas and the OpenAPI document read them from here.
"""
from __future__ import annotations

import re
from typing import Any

PRIORITY_RANGE = (-1_000_000, 1_000_000)
MAX_DELAY_SECONDS = 366 * 24 * 3600          # how long a delay may be
MAX_RETRIES_LIMIT = 100
MAX_IDEMPOTENCY_KEY_CHARS = 200
MAX_TYPE_NAME_CHARS = 64
MAX_JSON_DEPTH = 32                          # request bodies: nesting levels
INT64_RANGE = (-(2**63), 2**63 - 1)          # what BSON can store; SQLite's INTEGER too
PAGE_LIMIT_RANGE = (1, 100)
DEFAULT_PAGE_LIMIT = 50
MAX_ERROR_CHARS = 2000                       # a handler's error text as stored
QUEUE_NAME = r"[a-z0-9_-]{1,40}"            # a named queue (QUEUE_WORKER_QUEUES, queue=)
MAX_BULK_JOBS = 1000                         # add_jobs / POST /jobs {"jobs": [...]}
MAX_BULK_IDS = 1000                          # POST /jobs/retry and /jobs/cancel {"ids": [...]}

_QUEUE_NAME = re.compile(QUEUE_NAME)


def is_queue_name(value: Any) -> bool:
    """The one check of a queue name, wherever one is given."""
    return isinstance(value, str) and _QUEUE_NAME.fullmatch(value) is not None


QUEUE_NAME_MESSAGE = f"Must match {QUEUE_NAME}."  # the field error of a refused queue name


def require_queue_name(value: Any) -> None:
    """For code that declares a queue (a job type, a schedule): a ValueError
    unless ``value`` is a queue name."""
    if not is_queue_name(value):
        raise ValueError(f"queue names match {QUEUE_NAME}, got {value!r}")
