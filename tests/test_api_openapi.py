"""Property-based run of the served OpenAPI document against the app (schemathesis).

Requests are generated from ``GET {prefix}/openapi.json`` (valid ones and
deliberately invalid ones), sent through the WSGI app, and every answer is
checked by schemathesis's default checks: no 5xx, a documented status code,
content type and body, invalid data refused, auth enforced, 405 for
undocumented methods. Examples are bounded so CI stays fast; the seed is
fixed so a failure reproduces.

Job types without a payload schema are left out on purpose: their payload is
"any JSON object", and the server's limits on it (64-bit integers, 32 levels
of nesting) are stated in prose, not in JSON Schema.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

import marshmallow
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from marshmallow import fields, validate

from queue_service import JobQueue

TOKEN = "openapi-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "/api/queue"
# Per operation and mode. CI keeps it small; raise it for a deeper local run.
MAX_EXAMPLES = int(os.environ.get("QUEUE_API_FUZZ_EXAMPLES", "15"))


class ResizePayload(marshmallow.Schema):
    itemId = fields.String(required=True, validate=validate.Length(1, 64))
    width = fields.Integer(strict=True, required=True, validate=validate.Range(1, 4000))
    tags = fields.List(fields.String(validate=validate.Length(max=20)), validate=validate.Length(max=5))


def make_queue(clock, builtins: bool) -> JobQueue:
    queue = JobQueue(clock=clock, builtins=builtins)

    @queue.job_type("RESIZE", schema=ResizePayload)
    def resize(payload, job):
        return {"ok": True}

    return queue


def checks_config(builtins: bool) -> schemathesis.Config:
    checks: dict = {
        # A body over QUEUE_MAX_BODY_BYTES is refused with 413: a rejection too.
        "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 409, 413]},
    }
    if builtins:
        # Built-in payload schemas hold rules JSON Schema cannot state (CR/LF in a
        # header, "30d" durations): valid-looking payloads may get a 400 naming
        # the field. Every other check still runs on them.
        checks["positive_data_acceptance"] = {"enabled": False}
    return schemathesis.Config.from_dict({"checks": checks})


def _within_run_at_bound(value: str) -> str:
    """runAt is at most 366 days after now (the manual clock's 2030-01-01): a
    bound relative to now, which the document cannot state, so a generated
    valid runAt beyond it is moved inside it."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is None or when <= datetime(2030, 12, 31, tzinfo=timezone.utc):
        return value
    return "2030-06-01T00:00:00Z"


@pytest.fixture(params=[False, True], ids=["own-types", "with-builtins"])
def api_schema(request, make_app, clock):
    app, _ = make_app(make_queue(clock, request.param), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    return schemathesis.openapi.from_wsgi(f"{PREFIX}/openapi.json", app, headers=ADMIN,
                                          config=checks_config(request.param))


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_app_conforms_to_its_openapi_document(api_schema, mode):
    # One bounded run per operation, so each route gets its share of examples.
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode.is_negative and not operation.body and not len(operation.path_parameters) \
                and not len(operation.query):
            continue  # nothing to make invalid: /stats, /cleanup, /health

        @given(case=operation.as_strategy(generation_mode=mode, headers=ADMIN))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            if mode.is_positive and isinstance(case.body, dict):
                items = case.body["jobs"] if isinstance(case.body.get("jobs"), list) else [case.body]
                for item in items:  # a single job, or each job of a bulk request
                    if isinstance(item, dict) and isinstance(item.get("runAt"), str):
                        item["runAt"] = _within_run_at_bound(item["runAt"])
            response = case.call_and_validate(headers=ADMIN)
            assert response.status_code < 500, (operation.label, response.text)

        run()


def test_document_is_served_and_valid(api_schema):
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    # schemathesis leaves out the document's own route.
    assert {"POST /jobs", "GET /jobs", "GET /job/{id}", "POST /job/{id}/cancel", "POST /job/{id}/retry",
            "GET /stats", "POST /cleanup", "GET /health", "GET /media/{name}"} <= labels
