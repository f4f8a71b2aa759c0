"""Periodic jobs across real processes: gunicorn with 3 workers on one SQLite
file, a schedule every 0.5 s. Every worker's scheduler races for every slot;
the store lets one through. Then the server stops for a while and starts
again: the missed slots give one catch-up run, not one each.

``pytest tests/test_periodic_gunicorn.py -s`` prints the figures (runs, slots,
enqueue lag, which workers ran them).
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from processes import Gunicorn, wait_for

pytestmark = pytest.mark.slow

EVERY = 0.5
NAME = "every-0.5"


def scheduled_rows(tmp_path) -> list[tuple[float, float, str, str | None]]:
    """(slot, created_at, status, result) of the schedule's jobs, by slot."""
    conn = sqlite3.connect(str(tmp_path / "queue.db"))
    try:
        return conn.execute("SELECT slot, created_at, status, result FROM queue_jobs"
                            " WHERE scheduled_by = ? ORDER BY slot", (NAME,)).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def run_server(tmp_path, runs: int) -> tuple[float, float]:
    """Serve until the schedule has ``runs`` more jobs; (launch time, stop time) in epoch seconds."""
    before = len(scheduled_rows(tmp_path))
    launched = time.time()
    server = Gunicorn(tmp_path, workers=3, TEST_APP_PERIODIC_EVERY=str(EVERY))
    try:
        server.wait_ready()
        wait_for(f"{runs} periodic runs", lambda: len(scheduled_rows(tmp_path)) >= before + runs, every=0.05)
        stopped = time.time()
    finally:
        server.stop()
    return launched, stopped


def test_three_workers_enqueue_each_slot_once_and_catch_up_once(tmp_path):
    launched1, stopped1 = run_server(tmp_path, runs=8)  # ~4 s of slots
    first_run = scheduled_rows(tmp_path)
    slots1 = [row[0] for row in first_run]
    assert len(set(slots1)) == len(slots1), "a slot enqueued twice"
    # Every slot from the first to the stop, +-1 (a slot may fall between the
    # last count and SIGTERM reaching the workers).
    elapsed = int((stopped1 - slots1[0]) // EVERY) + 1
    assert abs(len(slots1) - elapsed) <= 1, (len(slots1), elapsed)
    steps = {round((b - a) / EVERY) for a, b in zip(slots1, slots1[1:])}
    assert steps <= {1, 2}, steps  # consecutive slots (a gap of one only under heavy load)

    # Down for a while (several slots), then up again.
    gap_until = time.monotonic() + 4 * EVERY
    while time.monotonic() < gap_until:
        time.sleep(0.05)
    launched2, _ = run_server(tmp_path, runs=4)
    rows = scheduled_rows(tmp_path)
    slots = [row[0] for row in rows]
    assert len(set(slots)) == len(slots), "a slot enqueued twice"
    second = slots[len(slots1):]
    assert second[0] > slots1[-1]
    missed = round((second[0] - slots1[-1]) / EVERY) - 1
    assert missed >= 3  # the gap's slots: none of them enqueued ...
    assert [s for s in slots if slots1[-1] < s < second[0]] == []
    assert second[0] >= launched2 - EVERY  # ... and the first run after it is the latest slot (one catch-up)

    lags = [created - slot for slot, created, _, _ in rows]
    by_status = Counter(status for _, _, status, _ in rows)
    pids = Counter(result and json.loads(result)["pid"] for _, _, status, result in rows
                   if status == "completed")
    print(f"\nperiodic every {EVERY}s, gunicorn -w 3: run 1 {len(slots1)} jobs for {elapsed} elapsed slots;"
          f" gap of {missed} missed slots -> 1 catch-up; run 2 {len(second)} jobs;"
          f" enqueue lag median {sorted(lags)[len(lags) // 2] * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
          f" (max in run 1: {max(lags[:len(slots1)]) * 1000:.0f} ms);"
          f" statuses {dict(by_status)}; ran by {len(pids)} worker pids;"
          f" first slot {datetime.fromtimestamp(slots[0], timezone.utc):%H:%M:%S.%f}")
