"""Helpers shared by the measurements: work dirs, percentiles, ports, the
redis-server the bench starts itself, /proc readers, child processes.

Every measurement runs in a fresh child process (``run_child``), so one
system's imports, caches and garbage never weigh on another's figures.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
RESULT_MARK = "BENCH-RESULT "
CHILD_TIMEOUT_SECONDS = 600


def fresh_dir(name: str) -> Path:
    """An empty directory under bench/.work/ (gitignored)."""
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def latencies_us(call: Callable[[int], Any], count: int, warmup: int = 100) -> dict[str, float]:
    """Time ``call(i)`` ``count`` times (after ``warmup`` untimed calls);
    p50/p99 in microseconds."""
    for i in range(warmup):
        call(-1 - i)
    samples: list[float] = []
    clock = time.perf_counter_ns
    for i in range(count):
        started = clock()
        call(i)
        samples.append((clock() - started) / 1000)
    return {"p50_us": percentile(samples, 50), "p99_us": percentile(samples, 99),
            "mean_us": sum(samples) / len(samples), "count": count}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:g}s")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM our own child by PID, SIGKILL it if it does not exit."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    """A throw-away redis-server on 127.0.0.1 (no persistence); yields its port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (scripts/install-system-packages bench)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        stop_process(proc)


# -- /proc ---------------------------------------------------------------------
def proc_kib(pid: int | str, filename: str, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields like ``VmHWM:  1234 kB`` from /proc/<pid>/<filename>, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/{filename}") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in keys:
                out[name] = int(rest.split()[0])
    return out


def self_memory_mib() -> dict[str, float]:
    fields = proc_kib("self", "status", ("VmRSS", "VmHWM"))
    return {"rss_mib": fields["VmRSS"] / 1024, "hwm_mib": fields["VmHWM"] / 1024}


# -- child processes -------------------------------------------------------------
def emit(result: dict[str, Any]) -> None:
    """What a child prints as its last word to the parent."""
    print(RESULT_MARK + json.dumps(result), flush=True)


LOG_PREFIX = "[bench "


def log(message: str) -> None:
    """One line of the bench's progress on stderr; a child's lines reach the parent's (run_child)."""
    print(f"{LOG_PREFIX}{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_child(target: str, timeout: float = CHILD_TIMEOUT_SECONDS, env: dict[str, str] | None = None,
              **kwargs: Any) -> dict[str, Any]:
    """Run ``module:function(**kwargs)`` in a fresh interpreter; returns its dict."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.child", target, json.dumps(kwargs)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})})
    for line in (proc.stderr or "").splitlines():  # what the measurement said of itself (bench.http's retries)
        if line.startswith(LOG_PREFIX):
            print(line, file=sys.stderr, flush=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (proc.stderr or proc.stdout)[-2000:]
    raise RuntimeError(f"{target} exited {proc.returncode} without a result:\n{tail}")
