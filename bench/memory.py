"""(5a) An idle gunicorn worker with the queue running against the same app
without it: RSS and PSS (/proc/<pid>/smaps_rollup), and the CPU the idle
queue threads use over a fixed window (their own per-thread CPU times).
"""
from __future__ import annotations

import time
from typing import Any

from bench import subjects
from bench.common import fresh_dir, median, proc_kib
from bench.server import Server, gunicorn

WARM_REQUESTS = 50
SETTLE_SECONDS = 3.0


def _warm(server: Server, queue_on: bool) -> None:
    """Both variants serve the same echo requests; the queue variant also
    enqueues (and its threads run) the same number of jobs."""
    info = server.get_json("/bench/info")
    for i in range(WARM_REQUESTS):
        server.post_json("/bench/echo", {"n": i})
        if queue_on:
            server.post_json(info["enqueue_path"], {"type": subjects.NOOP_TYPE, "payload": subjects.payload(i)})


def _thread_cpu(pid: int) -> dict[int, float]:
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def _idle_worker(queue_on: bool, idle_seconds: float) -> dict[str, Any]:
    work = fresh_dir(f"memory-{'queue' if queue_on else 'plain'}")
    with gunicorn(work, queue_on=queue_on) as server:
        _warm(server, queue_on)
        time.sleep(SETTLE_SECONDS)
        pids = server.worker_pids()
        rollups = [proc_kib(pid, "smaps_rollup", ("Rss", "Pss")) for pid in pids]
        before = {pid: _thread_cpu(pid) for pid in pids}
        process_before = server.worker_cpu_seconds()  # in the order of pids
        time.sleep(idle_seconds)
        after = {pid: _thread_cpu(pid) for pid in pids}
        process_after = server.worker_cpu_seconds()
    # Every thread but the main one: the queue's two and gthread's request threads (those
    # wait on their work queue while idle, so what is counted is the queue's).
    queue_cpu = [sum(cpu - before[pid].get(tid, 0.0) for tid, cpu in after[pid].items() if tid != pid)
                 for pid in pids]
    return {
        "rss_mib": median([r["Rss"] / 1024 for r in rollups]),
        "pss_mib": median([r["Pss"] / 1024 for r in rollups]),
        "threads": median([len(after[pid]) for pid in pids]),
        "queue_threads_cpu_s": median(queue_cpu),
        "worker_cpu_s": median([after - then for after, then in zip(process_after, process_before)]),
        "idle_seconds": idle_seconds,
    }


def measure(idle_seconds: float) -> dict[str, Any]:
    with_queue = _idle_worker(True, idle_seconds)
    without = _idle_worker(False, idle_seconds)
    return {
        "with_queue": with_queue, "without": without,
        "rss_delta_mib": with_queue["rss_mib"] - without["rss_mib"],
        "pss_delta_mib": with_queue["pss_mib"] - without["pss_mib"],
        "queue_cpu_percent": 100 * with_queue["queue_threads_cpu_s"] / idle_seconds,
    }
