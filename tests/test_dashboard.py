"""The dashboard: its page and assets over Flask's test client, then the real
thing in Debian's Chromium driven by Playwright against a real server on
127.0.0.1 (skipped with the reason outside CI when Chromium or Playwright is
missing; a failure in CI)."""
from __future__ import annotations

import os
import re
import threading
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from marshmallow import Schema, fields
from werkzeug.serving import make_server

from queue_service import Clock, JobQueue, JobStatus
from queue_service.core.jobs import new_lock_token

TOKEN = "dashboard-test-token"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE_SCRIPT = "<script>window.__pwned = 'payload script'</script>"
HOSTILE_IMG = "<img src=x onerror=\"window.__pwned = 'payload img'\">"
HOSTILE_ERROR = "<img src=y onerror=\"window.__pwned = 'error img'\"> went wrong"
WAIT_MS = 15_000


# -- the page over the test client -------------------------------------------
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse_tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def test_page_is_public_with_a_strict_csp_and_no_inline_code(make_app):
    app, _ = make_app(QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    response = app.test_client().get("/api/queue/dashboard")
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
                      "frame-ancestors 'none'", "base-uri 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    tags = parse_tags(html)
    scripts = [attrs for tag, attrs in tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert not re.search(r"<script[^>]*>\s*[^<\s]", html)  # no inline script body
    assert not any("style" in attrs for _, attrs in tags)  # no inline style attributes
    assert not any(name.startswith("on") for _, attrs in tags for name in attrs)  # no inline handlers
    urls = [attrs.get("src") or attrs.get("href") for tag, attrs in tags if tag in ("script", "link", "img")]
    assert all(url.startswith("/api/queue/dashboard/assets/") for url in urls), urls
    body = [attrs for tag, attrs in tags if tag == "body"][0]
    assert body["data-api"] == "/api/queue" and body["data-stuck-after"] == "600"
    assert TOKEN not in html


def test_assets_are_served_with_their_types_and_versions(make_app):
    app, _ = make_app()
    client = app.test_client()
    html = client.get("/api/queue/dashboard").get_data(as_text=True)
    for name, mimetype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"),
                           ("icon.svg", "image/svg+xml")):
        url = re.search(rf'"(/api/queue/dashboard/assets/{re.escape(name)}\?v=[0-9a-f]+)"', html).group(1)
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == mimetype
        assert response.cache_control.max_age == 3600
        assert client.get(url, headers={"If-None-Match": response.headers["ETag"]}).status_code == 304
        assert client.get(f"/api/queue/dashboard/assets/{name}").cache_control.max_age == 0
    missing = client.get("/api/queue/dashboard/assets/..%2fapi.py")
    assert missing.status_code == 404 and missing.is_json and "error" in missing.get_json()
    assert client.get("/api/queue/dashboard/assets/secrets.txt").status_code == 404


def test_script_never_parses_job_values_as_html():
    source = (Path(__file__).resolve().parent.parent / "queue_service" / "web" / "static" / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source.replace("never innerHTML", ""), sink


def test_page_follows_the_prefix_and_settings(make_app):
    app, _ = make_app(QUEUE_URL_PREFIX="/ops/jobs", QUEUE_STUCK_AFTER=90, QUEUE_HEARTBEAT_INTERVAL=10,
                      QUEUE_COMPLETED_TTL=43200)
    html = app.test_client().get("/ops/jobs/dashboard").get_data(as_text=True)
    body = [attrs for tag, attrs in parse_tags(html) if tag == "body"][0]
    assert body["data-api"] == "/ops/jobs" and body["data-stuck-after"] == "90"
    assert "/ops/jobs/dashboard/assets/dashboard.js?v=" in html
    assert "kept 12 hours" in html


# -- the real browser -----------------------------------------------------------
class NoteSchema(Schema):
    note = fields.String(required=True)
    failFirst = fields.Boolean(load_default=False)


class ShiftableClock(Clock):
    """The real clock, which a test can set back to stage a job from the past."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.shift


def make_live_queue() -> JobQueue:
    queue = JobQueue(builtins=False, clock=ShiftableClock())

    @queue.job_type("NOTE", schema=NoteSchema)
    def note(payload, job):
        # Fails on its first attempt only: a manual retry then completes.
        if payload["failFirst"] and job.attempt == 1:
            raise RuntimeError(HOSTILE_ERROR)
        return {"echo": payload["note"]}

    return queue


@pytest.fixture(scope="module")
def browser():
    in_ci = bool(os.environ.get("CI"))
    missing = None
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing = f"{CHROMIUM} is not installed (apt-get install chromium, or scripts/install-system-packages)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "Python Playwright is not installed (pip install -r requirements-dev.txt)"
    if missing:
        if in_ci:
            pytest.fail(f"CI is set but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Debian's Chromium, never a browser downloaded by a tool.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class LiveServer:
    def __init__(self, app: Flask):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="dashboard-test-http", daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def build_live_app(tmp_path, queue: JobQueue | None = None, **config) -> tuple[Flask, JobQueue]:
    app = Flask("dashboard_live")
    app.config.update(QUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'queue.db'}", QUEUE_AUTOSTART=False,
                      QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_POLL_INTERVAL=0.05)
    app.config.update(config)
    queue = queue or make_live_queue()
    queue.init_app(app)
    return app, queue


@pytest.fixture
def serve(tmp_path):
    """Serve a real app (a real SQLite file, a real clock) on 127.0.0.1."""
    started = []

    def start(app: Flask) -> LiveServer:
        server = LiveServer(app).__enter__()
        started.append((server, app))
        return server

    yield start
    for server, app in started:
        server.__exit__(None, None, None)
        state = app.extensions["queue_service"]
        state.runtime.shutdown(5)  # no-op unless the test started the threads
        state.runtime.store.close()


@pytest.fixture
def live(tmp_path, serve):
    app, queue = build_live_app(tmp_path)
    return serve(app), app, queue


def seed_every_state(app, queue) -> dict[str, str]:
    """One job per state (plus a stuck one) through the JobQueue API; the
    worker steps are run here, so no thread is involved."""
    state = app.extensions["queue_service"]
    worker = state.runtime.make_worker()
    ids = {}
    with app.app_context():
        ids["completed"] = queue.add_job("NOTE", {"note": HOSTILE_IMG})
        worker.run_once()
        ids["failed"] = queue.add_job("NOTE", {"note": "flaky", "failFirst": True}, max_retries=0)
        worker.run_once()
        ids["cancelled"] = queue.add_job("NOTE", {"note": "never mind"})
        queue.cancel(ids["cancelled"])
        # Queued and claimed an hour ago by a worker that sent no heartbeat since.
        state.runtime.clock.shift = -timedelta(hours=1)
        try:
            ids["stuck"] = queue.add_job("NOTE", {"note": "the worker died"})
            claimed = state.runtime.store.claim("gone-host:4242:dead01", new_lock_token(), state.runtime.clock.now())
        finally:
            state.runtime.clock.shift = timedelta(0)
        assert claimed.id == ids["stuck"]
        ids["hostile"] = queue.add_job("NOTE", {"note": HOSTILE_SCRIPT + HOSTILE_IMG}, delay=3600,
                                       idempotency_key="<b>key</b>")
        ids["pending"] = queue.add_job("NOTE", {"note": "cancel me"}, delay=3600)
    statuses = {name: queue.get_job(job_id).status for name, job_id in ids.items()}
    assert statuses == {"completed": JobStatus.COMPLETED, "failed": JobStatus.FAILED,
                        "cancelled": JobStatus.CANCELLED, "stuck": JobStatus.PROCESSING,
                        "hostile": JobStatus.PENDING, "pending": JobStatus.PENDING}
    return ids


def open_page(browser, server, viewport=(1280, 800), mobile=False):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                  is_mobile=mobile, has_touch=mobile, device_scale_factor=2 if mobile else 1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" and "401" not in msg.text else None)
    page.goto(f"{server.url}/api/queue/dashboard")
    return context, page, problems


def sign_in(page, token=TOKEN):
    page.fill("#token", token)
    page.click("#connect")


def row(page, job_id: str):
    return page.locator(f'#jobs-body tr[data-id="{job_id}"]')


def wait_count(page, selector: str, count: int) -> None:
    # Not page.wait_for_function: the page's CSP (rightly) refuses string eval.
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_count(count, timeout=WAIT_MS)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.mark.browser
def test_operator_session(browser, live):
    server, app, queue = live
    ids = seed_every_state(app, queue)
    context, page, problems = open_page(browser, server)
    try:
        # No token yet: the form, then a clear error for a wrong token.
        page.wait_for_selector("#auth:visible", timeout=WAIT_MS)
        sign_in(page, "wrong-token")
        error = page.wait_for_selector("#auth-error:visible", timeout=WAIT_MS)
        assert "refused" in error.text_content()
        assert page.evaluate("sessionStorage.length") == 0
        shot(page, "dashboard-wrong-token-1280x800")

        sign_in(page)
        for job_id in ids.values():
            row(page, job_id).wait_for(timeout=WAIT_MS)
        assert page.locator("#jobs-body tr").count() == len(ids)
        assert page.text_content("#stat-pending") == "2" and page.text_content("#stat-failed") == "1"
        assert row(page, ids["failed"]).get_attribute("data-status") == "failed"

        # The stuck job is marked, and the banner offers the cleanup.
        assert row(page, ids["stuck"]).locator(".badge-stuck").count() == 1
        assert page.is_visible("#stuck-banner")

        # Hostile values are text: nothing ran, no element was made from them.
        assert page.evaluate("window.__pwned") is None
        assert HOSTILE_ERROR in row(page, ids["failed"]).text_content()
        row(page, ids["hostile"]).click()
        payload = page.wait_for_selector("#detail-body pre.json", timeout=WAIT_MS)
        assert HOSTILE_SCRIPT in payload.text_content() and "onerror" in payload.text_content()
        assert page.text_content("#detail-body").count("<b>key</b>") == 1
        assert page.locator("#detail img, #jobs img, #detail script, #detail b").count() == 0
        shot(page, "dashboard-detail-1280x800")
        page.click("#detail-close")
        row(page, ids["completed"]).click()
        page.wait_for_selector("#detail-body >> text=echo", timeout=WAIT_MS)
        page.click("#detail-close")
        assert page.evaluate("window.__pwned") is None

        shot(page, "dashboard-1280x800")

        # Cancel a pending job: two clicks (the first arms the button).
        cancel = row(page, ids["pending"]).locator("button[data-action=cancel]")
        cancel.click()
        assert cancel.text_content() == "Confirm cancel"
        cancel.click()
        page.wait_for_selector(f'#jobs-body tr[data-id="{ids["pending"]}"][data-status=cancelled]', timeout=WAIT_MS)
        assert queue.get_job(ids["pending"], app=app).status == JobStatus.CANCELLED

        # The stuck-job cleanup requeues the stuck job.
        page.click("#stuck-cleanup")
        page.wait_for_selector("#toast >> text=recovered 1 stuck job", timeout=WAIT_MS)
        page.wait_for_selector(f'#jobs-body tr[data-id="{ids["stuck"]}"][data-status=pending]', timeout=WAIT_MS)
        assert queue.get_job(ids["stuck"], app=app).status == JobStatus.PENDING
        assert page.is_hidden("#stuck-banner")

        # Filters, and the empty state.
        page.select_option("#f-status", "failed")
        wait_count(page, "#jobs-body tr", 1)
        page.fill("#f-type", "NO_SUCH_TYPE")
        page.wait_for_selector("#empty:visible", timeout=WAIT_MS)
        assert "No failed NO_SUCH_TYPE jobs." in page.text_content("#empty")
        page.click("#clear-filters")
        wait_count(page, "#jobs-body tr", len(ids))
        assert page.evaluate("window.__pwned") is None
        assert problems == []
    finally:
        context.close()


@pytest.mark.browser
def test_phone_viewport(browser, live):
    server, app, queue = live
    ids = seed_every_state(app, queue)
    context, page, problems = open_page(browser, server, viewport=(390, 844), mobile=True)
    try:
        page.wait_for_selector("#auth:visible", timeout=WAIT_MS)
        shot(page, "dashboard-phone-token")
        sign_in(page)
        row(page, ids["failed"]).wait_for(timeout=WAIT_MS)
        # Nothing is wider than the phone's screen.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "dashboard-phone")
        row(page, ids["failed"]).click()
        page.wait_for_selector("#detail-body pre.error-block", timeout=WAIT_MS)
        assert page.locator("#detail-actions button[data-action=retry]").is_visible()
        shot(page, "dashboard-phone-detail")
        assert problems == []
        assert page.evaluate("window.__pwned") is None
    finally:
        context.close()


@pytest.mark.browser
def test_retry_a_failed_job_until_it_completes(browser, live):
    server, app, queue = live
    ids = seed_every_state(app, queue)
    state = app.extensions["queue_service"]
    state.runtime.start()  # the real worker thread runs the retried job; the fixture shuts it down
    context, page, problems = open_page(browser, server)
    try:
        sign_in(page)
        retry = row(page, ids["failed"]).locator("button[data-action=retry]")
        retry.wait_for(timeout=WAIT_MS)
        retry.click()
        # The worker finishes it; the page shows it on a refresh (at most 5 s).
        page.wait_for_selector(f'#jobs-body tr[data-id="{ids["failed"]}"][data-status=completed]', timeout=WAIT_MS)
        job = queue.get_job(ids["failed"], app=app)
        assert job.status == JobStatus.COMPLETED and [a["outcome"] for a in job.attempts] == ["failed", "completed"]
        row(page, ids["failed"]).click()
        page.wait_for_selector("#detail-body table.attempts tbody tr >> nth=1", timeout=WAIT_MS)
        assert page.locator("#detail-body table.attempts tbody tr").count() == 2
        assert problems == []
        assert page.evaluate("window.__pwned") is None
    finally:
        context.close()



@pytest.mark.browser
def test_admin_routes_closed_says_why(browser, serve, tmp_path):
    app, _ = build_live_app(tmp_path, QUEUE_ADMIN_TOKEN=None)
    context, page, problems = open_page(browser, serve(app))
    try:
        error = page.wait_for_selector("#auth-error:visible", timeout=WAIT_MS)
        assert "QUEUE_ADMIN_TOKEN is not configured" in error.text_content()
        sign_in(page, "anything")
        page.wait_for_selector("#auth-error >> text=Access denied", timeout=WAIT_MS)
        assert page.is_hidden("#jobs-section")
    finally:
        context.close()


@pytest.mark.browser
def test_host_login_hook_needs_no_token(browser, serve, tmp_path):
    """A host app that guards admin routes with its own login (here a cookie)
    gets a working dashboard from that login alone."""
    queue = make_live_queue()

    @queue.admin_check
    def logged_in_admin(request) -> bool:
        return request.cookies.get("operator") == "yes"

    app, _ = build_live_app(tmp_path, queue)
    with app.app_context():
        job_id = queue.add_job("NOTE", {"note": "hello"}, delay=60)
    server = serve(app)
    context, page, problems = open_page(browser, server)
    try:
        page.wait_for_selector("#auth:visible", timeout=WAIT_MS)  # not logged in yet
        context.add_cookies([{"name": "operator", "value": "yes", "url": server.url}])
        page.reload()
        row(page, job_id).wait_for(timeout=WAIT_MS)
        assert page.is_hidden("#auth") and page.evaluate("sessionStorage.length") == 0
        assert problems == []
    finally:
        context.close()


@pytest.mark.browser
def test_named_queues_are_listed_and_filter_the_jobs(browser, live):
    server, app, queue = live
    with app.app_context():
        images = [queue.add_job("NOTE", {"note": f"img {n}"}, queue="images", delay=3600) for n in range(2)]
        plain = queue.add_job("NOTE", {"note": "default one"}, delay=3600)
    context, page, problems = open_page(browser, server)
    try:
        sign_in(page)
        row(page, plain).wait_for(timeout=WAIT_MS)
        page.wait_for_selector("#queues:visible", timeout=WAIT_MS)
        line = page.text_content("#queues")
        assert "images: 2 pending" in line and "default: 1 pending" in line, line
        page.select_option("#f-queue", "images")
        wait_count(page, "#jobs-body tr", 2)
        assert {page.locator("#jobs-body tr").nth(i).get_attribute("data-id") for i in range(2)} == set(images)
        shot(page, "dashboard-queues-1280x800")
        page.click("#clear-filters")
        wait_count(page, "#jobs-body tr", 3)
        assert problems == []
    finally:
        context.close()


@pytest.mark.browser
def test_schedules_panel(browser, serve, tmp_path):
    """The schedules panel lists each schedule with its next run and last job;
    a click on the last job opens it. Hidden when the app has no schedule."""
    queue = make_live_queue()
    queue.periodic("NOTE", {"note": "<img src=x onerror=alert(1)>"}, every=3600, name="hourly <b>")
    queue.periodic("NOTE", {"note": "nightly"}, cron="0 3 * * *", tz="Europe/Berlin", name="nightly")
    app, _ = build_live_app(tmp_path, queue)
    server = serve(app)
    state = app.extensions["queue_service"]
    # What the scheduler does at the hour, done here for this hour's slot.
    now, hourly = state.runtime.clock.now(), queue.schedules.get("hourly <b>")
    slot = now.replace(minute=0, second=0, microsecond=0)
    assert state.runtime.store.enqueue_slot(hourly.name, slot, hourly.make_job(slot, now, 3, [1.0]), now)
    context, page, problems = open_page(browser, server)
    try:
        sign_in(page)
        wait_count(page, "#schedules-body tr", 2)
        rows = page.locator("#schedules-body tr")
        assert rows.nth(0).locator("td").nth(0).text_content() == "hourly <b>"  # text, not markup
        assert "every 1h" in rows.nth(0).text_content() and "pending" in rows.nth(0).text_content()
        assert "cron 0 3 * * * (Europe/Berlin)" in rows.nth(1).text_content()
        assert "not run yet" in rows.nth(1).text_content()
        rows.nth(0).locator("button").click()
        from playwright.sync_api import expect

        expect(page.locator("#detail")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#detail-body")).to_contain_text("Schedulehourly <b>", timeout=WAIT_MS)
        shot(page, "schedules-panel")
        assert not problems, problems
    finally:
        context.close()


# -- operator essentials (issue 17) --------------------------------------------------
def seed_failures(app, queue, count: int) -> list[str]:
    """``count`` NOTE jobs that failed their first (only allowed) attempt."""
    worker = app.extensions["queue_service"].runtime.make_worker()
    ids = []
    with app.app_context():
        for n in range(count):
            ids.append(queue.add_job("NOTE", {"note": f"broken {n}", "failFirst": True}, max_retries=0))
            worker.run_once()
    assert {queue.get_job(i).status for i in ids} == {JobStatus.FAILED}
    return ids


@pytest.mark.browser
@pytest.mark.parametrize("viewport, mobile", [((1280, 800), False), ((390, 844), True)])
def test_a_failed_jobs_traceback_expands(browser, live, viewport, mobile):
    server, app, queue = live
    job_id = seed_failures(app, queue, 1)[0]
    context, page, problems = open_page(browser, server, viewport=viewport, mobile=mobile)
    try:
        sign_in(page)
        row(page, job_id).wait_for(timeout=WAIT_MS)
        row(page, job_id).locator("td.cell-type").click()
        summary = page.locator("#detail-body details.traceback summary")
        summary.wait_for(timeout=WAIT_MS)
        trace = page.locator("#detail-body pre.traceback-text")
        assert not trace.is_visible()  # collapsed until asked for
        summary.click()
        trace.wait_for(state="visible", timeout=WAIT_MS)
        text = trace.text_content()
        assert text.startswith("Traceback (most recent call last):") and "RuntimeError" in text
        assert "in note" in text
        assert page.locator("#detail img, #detail script").count() == 0  # the hostile error stayed text
        shot(page, f"dashboard-traceback-{viewport[0]}x{viewport[1]}")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]
        assert problems == []
        assert page.evaluate("window.__pwned") is None
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.parametrize("viewport, mobile", [((1280, 800), False), ((390, 844), True)])
def test_select_all_failed_jobs_retry_them_and_see_them_complete(browser, live, viewport, mobile):
    server, app, queue = live
    ids = seed_failures(app, queue, 6)
    state = app.extensions["queue_service"]
    state.runtime.start()  # the real worker runs the retried jobs (and registers itself)
    context, page, problems = open_page(browser, server, viewport=viewport, mobile=mobile)
    try:
        sign_in(page)
        row(page, ids[0]).wait_for(timeout=WAIT_MS)
        page.select_option("#f-status", "failed")
        wait_count(page, "#jobs-body tr", 6)
        page.click("#select-matching")
        assert page.text_content("#bulk-count") == "All 6 failed jobs selected"
        assert page.locator("#jobs-body input.select-job:checked").count() == 6
        retry = page.locator("#bulk-retry")
        assert retry.text_content() == "Retry 6"
        retry.click()
        assert retry.text_content() == "Confirm: retry 6"  # the confirm step
        shot(page, f"dashboard-bulk-confirm-{viewport[0]}x{viewport[1]}")
        retry.click()
        page.wait_for_selector("#toast >> text=Retried 6 of 6", timeout=WAIT_MS)
        page.select_option("#f-status", "completed")
        wait_count(page, "#jobs-body tr", 6)  # the worker finished them (the page refreshes every 5 s)
        assert {queue.get_job(i, app=app).status for i in ids} == {JobStatus.COMPLETED}
        # The chart drew the failures and the completions; the worker is listed, alive.
        # The chart is read again at most every 10 s while jobs finish: a longer wait.
        page.locator("#history-chart svg rect.bar-completed").first.wait_for(timeout=3 * WAIT_MS)
        assert page.locator("#history-chart svg rect.bar-failed").count() >= 1
        page.locator("#workers-body tr.worker-row").first.wait_for(timeout=WAIT_MS)
        assert "alive" in page.text_content("#workers-body") and "web" in page.text_content("#workers-body")
        page.locator("#ops-section").scroll_into_view_if_needed()
        shot(page, f"dashboard-history-workers-{viewport[0]}x{viewport[1]}")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0]
        assert problems == []
    finally:
        context.close()
