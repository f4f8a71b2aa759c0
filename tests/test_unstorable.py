"""Values no store can keep (issue 12, item 6): a handler result or a payload
too large for BSON, with a NUL in a key, or with an integer beyond 64 bits.
The same outcome on every store (core.storable checks them before the write):
the job fails at once with a message that says why; the REST API answers 400.
"""
from __future__ import annotations

import pytest

from queue_service import JobQueue, ValidationError
from queue_service.core import storable

TOKEN = "t0ken"
UNSTORABLE = {
    "too large": {"blob": "x" * (storable.MAX_VALUE_BYTES + 1)},
    "too large key": {"k" * (storable.MAX_VALUE_BYTES + 1): 1},
    "NUL key": {"a\x00b": 1},
    "huge int": {"n": 2 ** 63},
    "huge negative int": {"deep": [{"n": -(2 ** 63) - 1}]},
}


@pytest.fixture(params=["sqlite", "mongo"])
def store_kind(request) -> str:
    return request.param


@pytest.mark.parametrize("what", sorted(UNSTORABLE))
def test_an_unstorable_result_fails_the_job_at_once(what, make_app, clock, store_kind):
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("BAD", max_retries=3)(lambda payload, job: UNSTORABLE[what])
    app, _ = make_app(queue)
    job_id = queue.add_job("BAD", {}, app=app)
    app.extensions["queue_service"].runtime.make_worker().run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and job["retryCount"] == 0
    assert job["error"].startswith("handler result cannot be stored: ")


def test_the_largest_integers_are_stored(make_app, clock, store_kind):
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("EDGE")(lambda payload, job: {"max": 2 ** 63 - 1, "min": -(2 ** 63)})
    app, _ = make_app(queue)
    job_id = queue.add_job("EDGE", {}, app=app)
    app.extensions["queue_service"].runtime.make_worker().run_once()
    assert queue.get_job(job_id, app=app).result == {"max": 2 ** 63 - 1, "min": -(2 ** 63)}


@pytest.mark.parametrize("what", ["NUL key", "huge int"])
def test_an_unstorable_payload_is_refused_before_the_write(what, make_app, clock, store_kind):
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("ANY")(lambda payload, job: None)
    app, _ = make_app(queue, QUEUE_ADMIN_TOKEN=TOKEN)
    with pytest.raises(ValidationError) as caught:
        queue.add_job("ANY", UNSTORABLE[what], app=app)
    assert "payload" in caught.value.messages
    answer = app.test_client().post("/api/queue/jobs", json={"type": "ANY", "payload": UNSTORABLE[what]},
                                    headers={"Authorization": f"Bearer {TOKEN}"})
    # The REST body reader refuses over-64-bit integers itself ("body"); the rest reach the payload check.
    assert answer.status_code == 400 and set(answer.get_json()["details"]) & {"payload", "body"}
    assert queue.get_queue_stats(app=app)["total"] == 0
