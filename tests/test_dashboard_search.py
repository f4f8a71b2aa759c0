"""Dashboard (issue 17b) in the real browser: the search box finds a job by id
prefix; a failed job's detail shows how far its last attempt got without a
full progress bar, and "attempt N of M"; the latency chart draws its p95.
Screenshots at 1280x800 and 390x844 in test-artifacts/."""
from __future__ import annotations

import pytest

from queue_service import JobQueue, JobStatus
from test_dashboard import (WAIT_MS, ShiftableClock, browser, build_live_app, open_page, row,  # noqa: F401
                            serve, shot, sign_in, wait_count)


def make_queue() -> JobQueue:
    queue = JobQueue(builtins=False, clock=ShiftableClock())

    @queue.job_type("STEPS", max_retries=1, retry_delays=[0])
    def steps(payload, job):
        job.progress(done=payload["upTo"], total=20)
        if payload["upTo"] == 20:
            raise RuntimeError("failed after the last step")
        return {"steps": payload["upTo"]}

    return queue


@pytest.fixture
def seeded(tmp_path, serve):  # noqa: F811
    app, queue = build_live_app(tmp_path, make_queue())
    worker = app.extensions["queue_service"].runtime.make_worker()
    with app.app_context():
        failed = queue.add_job("STEPS", {"upTo": 20})
        others = [queue.add_job("STEPS", {"upTo": n}) for n in range(3, 6)]
        while worker.run_once() is not None:
            pass
    job = queue.get_job(failed, app=app)
    assert job.status is JobStatus.FAILED and len(job.attempts) == 2 and job.progress["done"] == 20
    return serve(app), failed, others


@pytest.mark.browser
@pytest.mark.parametrize("viewport, mobile", [((1280, 800), False), ((390, 844), True)])
def test_search_finds_a_job_and_a_failed_detail_shows_no_full_bar(browser, seeded, viewport, mobile):  # noqa: F811
    from playwright.sync_api import expect

    server, failed, others = seeded
    context, page, problems = open_page(browser, server, viewport=viewport, mobile=mobile)
    try:
        sign_in(page)
        wait_count(page, "#jobs-body tr", 4)
        assert "2 of 2" in row(page, failed).locator("td.cell-tries").text_content()
        # A bad prefix is refused in the page, the list stays.
        page.fill("#job-search", "xyz")
        page.click("#search-go")
        expect(page.locator("#toast")).to_contain_text("first 4 or more characters", timeout=WAIT_MS)
        wait_count(page, "#jobs-body tr", 4)
        # A prefix with one hit: the list shows it alone and its detail opens.
        page.fill("#job-search", failed[:8].upper())
        page.click("#search-go")
        wait_count(page, "#jobs-body tr", 1)
        expect(row(page, failed)).to_have_count(1)
        expect(page.locator("#detail")).to_be_visible(timeout=WAIT_MS)
        detail = page.locator("#detail-body")
        expect(detail).to_contain_text("attempt 2 of 2", timeout=WAIT_MS)
        expect(detail).to_contain_text("The last attempt reached 20 of 20.")
        assert page.locator("#detail-body progress").count() == 0  # no full bar on a failed job
        assert "Heartbeat" not in detail.text_content()  # the finished attempt's, not shown as current
        assert '"done"' not in detail.text_content()  # no raw progress JSON
        shot(page, f"dashboard-search-failed-detail-{viewport[0]}x{viewport[1]}")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]
        # Retried by hand: a new count begins; the old attempt's heartbeat, worker and
        # progress are not shown as the job's current ones.
        page.click("#detail-actions button.action-retry")
        expect(detail).to_contain_text("next: attempt 1 of 2 (2 runs in all)", timeout=WAIT_MS)
        expect(row(page, failed).locator("td.cell-tries")).to_have_text("1 of 2")
        assert page.locator("#detail-body progress").count() == 0
        assert "Heartbeat" not in detail.text_content() and "Last worker" in detail.text_content()
        page.click("#detail-close")
        # Clearing the filters brings the whole list back; the latency chart has its p95 marks.
        page.click("#clear-filters")
        wait_count(page, "#jobs-body tr", 4)
        dot = page.locator("#latency-chart svg circle.dot-p95").first
        dot.wait_for(timeout=WAIT_MS)
        assert "p95 by type: STEPS" in dot.locator("title").text_content()
        page.locator("#ops-section").scroll_into_view_if_needed()
        shot(page, f"dashboard-latency-{viewport[0]}x{viewport[1]}")
        assert problems == []
    finally:
        context.close()


def make_image_queue() -> JobQueue:
    import io

    from PIL import Image

    queue = JobQueue(builtins=False, clock=ShiftableClock())

    @queue.job_type("PICTURES")
    def pictures(payload, job):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, "PNG")
        name = f"thumb-{job.id[:8]}.png"
        job.put_file(name, buffer.getvalue(), "image/png")
        return {"itemId": "item-1", "status": "completed", "images": [
            {"source": "https://example.test/a.jpg", "url": f"/api/queue/media/{name}", "bytesBefore": 20480,
             "bytesAfter": len(buffer.getvalue()), "width": 40, "height": 30, "error": None},
            {"source": "https://example.test/b.jpg", "url": "https://example.test/b.jpg", "bytesBefore": None,
             "bytesAfter": None, "width": None, "height": None, "error": "HTTP 404"}]}

    return queue


@pytest.mark.browser
def test_image_results_show_thumbnails_from_the_media_route(browser, tmp_path, serve):  # noqa: F811
    from playwright.sync_api import expect

    app, queue = build_live_app(tmp_path, make_image_queue())
    with app.app_context():
        job_id = queue.add_job("PICTURES", {})
        app.extensions["queue_service"].runtime.make_worker().run_once()
    server = serve(app)
    context, page, problems = open_page(browser, server)
    try:
        sign_in(page)
        row(page, job_id).wait_for(timeout=WAIT_MS)
        row(page, job_id).locator("td.cell-type").click()
        thumb = page.locator("#detail-body table.thumbs img.thumb")
        expect(thumb).to_have_count(1, timeout=WAIT_MS)  # only the stored image; the failed one has none
        expect(page.locator("#detail-body table.thumbs")).to_contain_text("HTTP 404")
        expect(page.locator("#detail-body table.thumbs")).to_contain_text("40×30")
        thumb.evaluate("img => img.decode()")  # loaded from the media route under the page's CSP
        assert thumb.evaluate("img => img.naturalWidth") == 40
        shot(page, "dashboard-image-thumbnails-1280x800")
        assert problems == []
    finally:
        context.close()
