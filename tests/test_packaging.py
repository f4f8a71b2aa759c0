"""The installable distribution: metadata, the extras, and a wheel that runs
outside the checkout.

The fast tests simulate a missing optional package with ``sys.modules[name] =
None`` (what ``import`` and ``importlib.util.find_spec`` then treat as absent).
The slow one builds a wheel from a copy of the tracked files, installs it in a
fresh virtualenv (base, then ``[all]``) and runs a small host app there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from flask import Flask

import queue_service
from queue_service import ConfigurationError, JobQueue

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
IMAGE_ERROR = 'IMAGE_PROCESS needs pillow, which is not installed: pip install "queue-service[images]"'
IMAGE_PAYLOAD = {"itemId": "item-1", "imageUrls": ["https://images.example/a.jpg"]}


def requirement_lines(path: Path) -> dict[str, str]:
    lines = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()
            lines[name] = line.replace(" ", "")
    return lines


# -- metadata ------------------------------------------------------------------
def test_the_version_is_single_sourced():
    project = PYPROJECT["project"]
    assert "version" in project["dynamic"] and "version" not in project
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "queue_service.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", queue_service.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {queue_service.__version__}" in changelog


def test_pyproject_and_requirements_txt_pin_the_same_ranges():
    """requirements.txt (the demo app, the Procfile) = every extra + gunicorn."""
    project = PYPROJECT["project"]
    declared = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra != "all":
            declared += items
    pinned = requirement_lines(ROOT / "requirements.txt")
    by_name = {re.split(r"[<>=!~\[ ]", item, maxsplit=1)[0].lower(): item.replace(" ", "")
               for item in declared}
    assert set(pinned) - set(by_name) == {"gunicorn"}
    assert {name: pinned[name] for name in by_name} == by_name
    assert project["optional-dependencies"]["all"] == ["queue-service[mongo,images,metrics]"]
    assert project["requires-python"] == ">=3.11"


# -- the extras, missing ---------------------------------------------------------
@pytest.fixture
def app(tmp_path):
    app = Flask("packaging_app")
    app.config.update(QUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'queue.db'}", QUEUE_AUTOSTART=False,
                      QUEUE_ADMIN_TOKEN="t")
    return app


def test_image_process_without_pillow_is_refused_at_enqueue_in_one_line(app, monkeypatch):
    queue = JobQueue(app)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ConfigurationError) as caught:
        queue.add_job("IMAGE_PROCESS", IMAGE_PAYLOAD, app=app)
    message = str(caught.value)
    assert message == IMAGE_ERROR
    assert queue.get_queue_stats(app=app)["total"] == 0  # nothing was written


def test_post_jobs_for_image_process_without_pillow_answers_503_and_logs_the_line(app, monkeypatch, caplog):
    JobQueue(app)
    monkeypatch.setitem(sys.modules, "PIL", None)
    response = app.test_client().post("/api/queue/jobs", json={"type": "IMAGE_PROCESS", "payload": IMAGE_PAYLOAD},
                                      headers={"Authorization": "Bearer t"})
    assert response.status_code == 503 and response.is_json
    assert IMAGE_ERROR in caplog.text


def test_a_stored_image_job_without_pillow_is_retried_not_a_loop_error(app, monkeypatch):
    queue = JobQueue(app)
    job_id = queue.add_job("IMAGE_PROCESS", IMAGE_PAYLOAD, app=app)  # stored where Pillow is installed
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert queue.state(app).runtime.make_worker().run_once() is not None
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "pending" and job["retryCount"] == 1
    assert 'pip install "queue-service[images]"' in job["error"]


def test_mongo_uri_without_pymongo_fails_at_init_app(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymongo", None)
    app.config["MONGO_URI"] = "mongodb://db.example/app"
    with pytest.raises(ConfigurationError, match=r'pip install "queue-service\[mongo\]"'):
        JobQueue(app)
    assert "queue_service" not in app.extensions


def test_metrics_without_prometheus_client_answer_503_naming_the_extra(app, monkeypatch):
    from queue_service.web import metrics

    JobQueue(app)
    monkeypatch.setattr(metrics, "CollectorRegistry", None)
    response = app.test_client().get("/api/queue/metrics", headers={"Authorization": "Bearer t"})
    assert response.status_code == 503 and response.is_json
    assert 'pip install "queue-service[metrics]"' in response.get_json()["error"]


# -- the wheel -------------------------------------------------------------------
HOST_APP = r'''
"""A host app outside the checkout, run by the virtualenv's python."""
import json, re, sys
from pathlib import Path

import flask
import queue_service
from queue_service import ConfigurationError, JobQueue

mode = sys.argv[1]
here = Path.cwd()
out = {"version": queue_service.__version__, "file": queue_service.__file__}

queue = JobQueue()

@queue.job_type("GREET")
def greet(payload, job):
    return {"hello": payload["name"]}

app = flask.Flask("host_app")
app.config.update(QUEUE_DATABASE_URL=f"sqlite:///{here / 'queue.db'}", QUEUE_AUTOSTART=False,
                  QUEUE_ADMIN_TOKEN="t")
queue.init_app(app)
with app.app_context():
    job_id = queue.add_job("GREET", {"name": "wheel"})
    if hasattr(queue, "run_pending"):
        queue.run_pending()
    else:
        queue.state(app).runtime.make_worker().run_once()
    out["job"] = queue.get_job_status(job_id)
    out["email"] = bool(queue.add_job("EMAIL_SEND", {"to": "a@example.com", "subject": "s", "body": "b"}))
    out["cleanup"] = bool(queue.add_job("CLEANUP", {"task": "purge_jobs", "olderThan": "30d"}))
    try:
        queue.add_job("IMAGE_PROCESS", {"itemId": "i", "imageUrls": ["https://images.example/a.jpg"]})
        out["image"] = "enqueued"
    except ConfigurationError as exc:
        out["image"] = str(exc)

from queue_service.testing import make_test_app  # the base install has no pytest: must not need it

(here / "eager").mkdir(exist_ok=True)
eager_app = make_test_app(queue, here / "eager", QUEUE_EAGER=True)
out["eager"] = queue.get_job_status(queue.add_job("GREET", {"name": "eager"}, app=eager_app), app=eager_app)
out["pytest_imported"] = "pytest" in sys.modules

client = app.test_client()
page = client.get("/api/queue/dashboard")
html = page.get_data(as_text=True)
out["dashboard"] = page.status_code
assets = re.findall(r'(?:src|href)="([^"]*/dashboard/assets/[^"]+)"', html)
out["assets"] = {url.split("/")[-1].split("?")[0]: (r.status_code, len(r.data))
                 for url in assets for r in [client.get(url)]}
metrics = client.get("/api/queue/metrics", headers={"Authorization": "Bearer t"})
out["metrics"] = [metrics.status_code, metrics.get_json()["error"] if metrics.is_json else None]

mongo_app = flask.Flask("mongo_app")
mongo_app.config.update(MONGO_URI="mongodb://db.invalid/app", QUEUE_AUTOSTART=False)
try:
    JobQueue(mongo_app)
    out["mongo"] = "mounted"
except ConfigurationError as exc:
    out["mongo"] = str(exc)
print(json.dumps(out))
'''


def tracked_copy(dest: Path) -> None:
    """The checkout as a fresh clone would have it: tracked files only (their
    working-tree content), none of .venv, instance/ or build leftovers."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_wheel_installs_and_runs_a_host_app_outside_the_checkout(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    source, dist, venv, host = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "host"
    tracked_copy(source)
    host.mkdir()
    dropped = ("PYTHON", "QUEUE_", "MAIL_", "MONGO_URI", "PIP_REQUIRE", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    quiet = ["-q", "--disable-pip-version-check"]

    run([sys.executable, "-m", "pip", "wheel", *quiet, "--no-deps", "-w", dist, source], env=env)
    [wheel] = dist.glob("queue_service-*.whl")
    assert wheel.name == f"queue_service-{queue_service.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("queue_service/", "queue_service-")) for n in names), names
    for unwanted in ("bench/", "tests/", "scripts/", "instance/", "wsgi.py", "config.py", "gunicorn.conf.py"):
        assert not any(n == unwanted or n.startswith(unwanted) for n in names), unwanted
    for wanted in (r"queue_service/py\.typed", r"queue_service/(.+/)?static/dashboard\.js",
                   r"queue_service/(.+/)?static/dashboard\.css",
                   r"queue_service/(.+/)?templates/queue_dashboard\.html"):
        assert any(re.fullmatch(wanted, n) for n in names), wanted

    run([sys.executable, "-m", "venv", venv], env=env)
    python = venv / "bin" / "python"
    (host / "host_app.py").write_text(HOST_APP, encoding="utf-8")

    run([python, "-m", "pip", "install", *quiet, wheel], env=env, cwd=host)
    base = json.loads(run([python, "host_app.py", "base"], env=env, cwd=host).stdout)
    assert base["version"] == queue_service.__version__
    assert Path(base["file"]).is_relative_to(venv), base["file"]  # the installed copy, not the checkout
    assert base["job"]["status"] == "completed" and base["job"]["result"] == {"hello": "wheel"}
    assert base["email"] and base["cleanup"]
    assert base["eager"]["status"] == "completed" and base["pytest_imported"] is False
    assert base["image"] == IMAGE_ERROR
    assert base["mongo"] == ("MONGO_URI (the MongoDB store) needs pymongo and flask-pymongo, which is not "
                             'installed: pip install "queue-service[mongo]"')
    assert base["metrics"][0] == 503 and 'pip install "queue-service[metrics]"' in base["metrics"][1]
    assert base["dashboard"] == 200
    assert {"dashboard.js", "dashboard.css"} <= set(base["assets"]), base["assets"]
    assert all(status == 200 and size > 0 for status, size in base["assets"].values()), base["assets"]

    run([python, "-m", "pip", "install", *quiet, f"{wheel}[all]"], env=env, cwd=host)
    (host / "queue.db").unlink()
    full = json.loads(run([python, "host_app.py", "all"], env=env, cwd=host).stdout)
    assert full["job"]["status"] == "completed"
    assert full["image"] == "enqueued" and full["mongo"] == "mounted"
    assert full["metrics"] == [200, None]
