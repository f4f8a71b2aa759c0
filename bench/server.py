"""gunicorn with the project's gunicorn.conf.py serving bench/app.py on
127.0.0.1, started and stopped by PID.

BENCH_EXTRA_PATH (optional) is put on the workers' PYTHONPATH: a way to try
a change (say a sitecustomize.py that patches the store) without editing
the tree, as the profiles in docs/benchmarks.md were made.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.common import ROOT, free_port, stop_process

ADMIN_TOKEN = "bench-admin-token"


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        import psutil

        return sorted(child.pid for child in psutil.Process(self.proc.pid).children())

    def worker_cpu_seconds(self) -> list[float]:
        """User + system CPU each worker process has used so far (in worker_pids order)."""
        import psutil

        return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in self.worker_pids()]

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=5) as response:
            return json.loads(response.read())

    def post_json(self, path: str, body: dict, token: str | None = ADMIN_TOKEN) -> int:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            return response.status


@contextmanager
def gunicorn(workdir: Path, queue_on: bool = True, workers: int = 2,
             extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    log_path = workdir / f"gunicorn-{'queue' if queue_on else 'plain'}.log"
    env = {
        "BENCH_QUEUE": "1" if queue_on else "0",
        "QUEUE_DATABASE_URL": f"sqlite:///{workdir / 'http.db'}",
        "QUEUE_ADMIN_TOKEN": ADMIN_TOKEN,
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "PYTHONPATH": str(ROOT) + ":" + os.environ.get("BENCH_EXTRA_PATH", ""),
        **(extra_env or {}),
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-w", str(workers),
             "-b", f"127.0.0.1:{port}", "bench.app:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(port, proc, log_path)
    try:
        _wait_ready(server, workers)
        yield server
    finally:
        stop_process(proc, timeout=40)


def _wait_ready(server: Server, workers: int, timeout: float = 30.0) -> None:
    """Until the app answers and every worker process is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {server.log_path.read_text()[-2000:]}")
        try:
            server.get_json("/bench/info")
            if len(server.worker_pids()) >= workers:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn not ready in {timeout:g}s: {server.log_path.read_text()[-2000:]}")
