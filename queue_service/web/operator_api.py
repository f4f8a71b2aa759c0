"""The operator's routes (admin): bulk retry and cancel, run now, the workers
list, the throughput history and the search by id prefix. Registered on the REST blueprint by ``api``.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from .auth import admin_required
from .body import checked_job_id, read_json_object, read_query, refuse_body
from .schemas import (BulkResultSchema, HistoryQuerySchema, HistorySchema, JobPageSchema, JobSchema,
                      JobSearchQuerySchema, WorkersResponseSchema, json_response)
from .state import queue_state

_BULK_RESULT = BulkResultSchema()
_HISTORY_QUERY = HistoryQuerySchema()
_HISTORY = HistorySchema()
_JOB = JobSchema()
_JOB_PAGE = JobPageSchema()
_SEARCH_QUERY = JobSearchQuerySchema()
_WORKERS = WorkersResponseSchema()


def _bulk(result: Any) -> Response:
    return json_response(_BULK_RESULT.dump({"matched": result.matched, "changed": result.changed}))


@admin_required
def bulk_retry() -> Response:
    return _bulk(queue_state().service.bulk_retry(read_json_object()))


@admin_required
def bulk_cancel() -> Response:
    return _bulk(queue_state().service.bulk_cancel(read_json_object()))


@admin_required
def run_now(job_id: str) -> Response:
    job_id = checked_job_id(job_id)
    refuse_body()
    return json_response(_JOB.dump(queue_state().service.run_now(job_id).to_dict()))


@admin_required
def workers() -> Response:
    return json_response(_WORKERS.dump({"workers": queue_state().service.workers()}),
                         headers={"Cache-Control": "no-store"})


@admin_required
def stats_history() -> Response:
    query = read_query(_HISTORY_QUERY)
    return json_response(_HISTORY.dump(queue_state().service.history(query["hours"])))


@admin_required
def search_jobs() -> Response:
    """The jobs whose id starts with ``idPrefix``, by id (one page, no cursor)."""
    query = read_query(_SEARCH_QUERY)
    jobs = queue_state().service.find_by_id_prefix(query["idPrefix"], query["limit"])
    return json_response(_JOB_PAGE.dump({"jobs": [job.to_dict() for job in jobs], "nextBefore": None}))


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/jobs/search", "search_jobs", search_jobs, methods=["GET"])
    blueprint.add_url_rule("/jobs/retry", "bulk_retry", bulk_retry, methods=["POST"])
    blueprint.add_url_rule("/jobs/cancel", "bulk_cancel", bulk_cancel, methods=["POST"])
    blueprint.add_url_rule("/job/<job_id>/run-now", "run_now", run_now, methods=["POST"])
    blueprint.add_url_rule("/workers", "workers", workers, methods=["GET"])
    blueprint.add_url_rule("/stats/history", "stats_history", stats_history, methods=["GET"])
