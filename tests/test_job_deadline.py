"""Issue 13, item 3: a whole-job time budget. JobContext.deadline /
remaining_seconds() for any job type with a ``timeout``; IMAGE_PROCESS takes
QUEUE_IMAGE_JOB_TIMEOUT and gives each URL no more than what is left."""
from __future__ import annotations

from datetime import timedelta

from queue_service import JobQueue
from servers import http_server  # noqa: F401  (fixture)


def test_handler_sees_its_deadline_and_remaining_time(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    seen = {}

    @queue.job_type("TIMED", timeout=30)
    def timed(payload, job):
        seen["deadline"] = job.deadline
        seen["start"] = job.remaining_seconds()
        clock.advance(10)
        seen["later"] = job.remaining_seconds()
        clock.advance(25)
        seen["after"] = job.remaining_seconds()

    @queue.job_type("UNTIMED")
    def untimed(payload, job):
        seen["untimed"] = (job.deadline, job.remaining_seconds())

    app, queue = make_app(queue)
    started = clock.now()
    queue.add_job("TIMED", {}, app=app)
    queue.add_job("UNTIMED", {}, app=app)
    worker = app.extensions["queue_service"].runtime.make_worker()
    worker.run_once()
    worker.run_once()
    assert seen["deadline"] == started + timedelta(seconds=30)
    assert (seen["start"], seen["later"], seen["after"]) == (30.0, 20.0, 0.0)
    assert seen["untimed"] == (None, None)


def test_image_job_budget_stops_trickling_urls(make_app, http_server):
    # A real clock: the budget is real time spent on real sockets.
    app, queue = make_app(JobQueue(), QUEUE_ALLOW_PRIVATE_URLS=True, QUEUE_IMAGE_JOB_TIMEOUT="0.4")
    urls = [http_server.trickle(f"/slow-{i}.jpg", total_bytes=100_000, interval=0.05) for i in range(5)]
    job_id = queue.add_job("IMAGE_PROCESS", {"itemId": "x", "imageUrls": urls}, app=app)
    app.extensions["queue_service"].runtime.make_worker().run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["retryCount"] == 0
    images = job["result"]["images"]
    assert job["result"]["failed"] == 5
    assert "deadline" in images[0]["error"] or "timed out" in images[0]["error"]
    not_fetched = [image for image in images if image["error"].startswith("not fetched")]
    assert len(not_fetched) >= 3  # the budget ran out during the first fetch or two
    assert all(image["url"] == image["source"] for image in images)
    assert len(http_server.hits()) <= 2  # the rest were never requested
