"""Real processes for the tests: gunicorn with the project's gunicorn.conf.py
serving tests/gunicorn_app.py, and any other command, started from the repo
root on 127.0.0.1 and stopped by PID (SIGTERM, then SIGKILL after a bound).

They cannot be driven by a manual clock: ``wait_for`` polls with a deadline
(a bound for a hung run) and the tests assert states, never durations.

Each gunicorn runs with ``--no-control-socket``: gunicorn's control socket
defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), which parallel
test servers would share, and it is not part of the queue.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import free_port  # noqa: F401  (the one free_port; tests import it from here too)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "gunicorn-test-token"
BOOT_SECONDS = 30.0
WAIT_SECONDS = 60.0  # bound for any one condition; no test expects to get near it
GRACEFUL_TIMEOUT = 10

# Short leases so a killed worker's job is recovered in seconds.
FAST = {
    "QUEUE_HEARTBEAT_INTERVAL": "0.5",
    "QUEUE_STUCK_AFTER": "2",
    "QUEUE_CLEANUP_INTERVAL": "0.5",
    "QUEUE_POLL_INTERVAL": "0.1",
    "QUEUE_SHUTDOWN_TIMEOUT": "1",
}


def wait_for(what: str, check: Callable[[], Any], seconds: float = WAIT_SECONDS, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(every)  # another process is working; no clock of ours to advance


def children(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (the gunicorn workers of a master)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def os_threads(pid: int) -> set[int]:
    return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # No PYTHONPATH: each command finds the project the way the Procfile's do.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("QUEUE_", "GUNICORN_", "WEB_CONCURRENCY", "MONGO_URI", "PYTHONPATH"))}
    env.pop("PORT", None)
    env.update({"QUEUE_DATABASE_URL": f"sqlite:///{tmp_path / 'queue.db'}", "QUEUE_ADMIN_TOKEN": TOKEN,
                "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT), **FAST, **extra})
    return env


def http(port: int, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Process:
    """A process this test started; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT):
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.seen_children: set[int] = set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        pids = children(self.pid)
        self.seen_children |= pids
        return pids

    def stop(self, grace: float = GRACEFUL_TIMEOUT + 10) -> None:
        if self.proc.poll() is None:
            self.workers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in self.seen_children:  # a worker orphaned by a killed master
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


class Gunicorn(Process):
    """gunicorn with the project's gunicorn.conf.py serving ``app`` (default
    tests/gunicorn_app.py, whose /census answers ``wait_ready``; for another app
    pass ``ready_path``, a route that answers 200 once the app is up)."""

    def __init__(self, tmp_path: Path, workers: int = 2, preload: bool = False, cwd: Path = ROOT,
                 app: str = "tests.gunicorn_app:app", ready_path: str = "/census", **env: str):
        self.port = free_port()
        args = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "-w", str(workers),
                "-b", f"127.0.0.1:{self.port}", "--no-control-socket"]
        if preload:
            args.append("--preload")
        if cwd != ROOT:
            args += ["--chdir", str(ROOT)]
        super().__init__([*args, app], base_env(tmp_path, **env), tmp_path / f"gunicorn-{self.port}.log", cwd)
        self.expected_workers = workers
        self.ready_path = ready_path

    def wait_ready(self) -> None:
        """Until the port answers and every worker process exists."""
        def ready() -> bool:
            assert self.proc.poll() is None, f"gunicorn exited:\n{self.log()}"
            try:
                status, _ = http(self.port, "GET", self.ready_path, timeout=2)
            except OSError:
                return False
            return status == 200 and len(self.workers()) == self.expected_workers
        wait_for("gunicorn to boot", ready, BOOT_SECONDS)

    def census(self) -> dict[int, dict[str, Any]]:
        """The thread census of every worker process, by pid. Requests are sent
        in concurrent rounds that each hold a worker briefly, so every worker
        answers some of them."""
        pids = self.workers()
        answers: dict[int, dict[str, Any]] = {}

        def ask() -> None:
            try:
                status, body = http(self.port, "GET", "/census?hold=0.2")
            except OSError:
                return
            if status == 200:
                answers[body["pid"]] = body

        def all_answered() -> bool:
            batch = [threading.Thread(target=ask) for _ in range(2 * len(pids))]
            for thread in batch:
                thread.start()
            for thread in batch:
                thread.join(15)
            return pids <= set(answers)
        wait_for("every worker to answer the census", all_answered, every=0)
        return {pid: answers[pid] for pid in pids}
