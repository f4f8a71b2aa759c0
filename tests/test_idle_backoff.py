"""The idle poll backs off (doubling up to QUEUE_POLL_MAX_INTERVAL); add_job
in this process still wakes its worker at once. The intervals are the ones
the worker asks the clock to wait (a ManualClock: nothing sleeps)."""
from __future__ import annotations

import threading

from queue_service import JobQueue
from queue_service.core.clock import ManualClock


class RecordingClock(ManualClock):
    def __init__(self):
        super().__init__()
        self.event: threading.Event | None = None
        self.waits: list[float] = []
        self.enough = threading.Event()
        self.want = 0

    def wait(self, event, seconds):
        if event is self.event:
            self.waits.append(seconds)
            if len(self.waits) >= self.want:
                self.enough.set()
                return event.wait(5)  # hold here until the test wakes the worker
        return super().wait(event, seconds)


def test_idle_polls_double_to_the_ceiling_and_add_job_wakes_at_once(make_app):
    clock = RecordingClock()
    queue = JobQueue(clock=clock, builtins=False)
    done = threading.Event()
    queue.job_type("PING")(lambda payload, job: done.set())
    app, _ = make_app(queue, QUEUE_POLL_INTERVAL=1, QUEUE_POLL_MAX_INTERVAL=10)
    runtime = app.extensions["queue_service"].runtime
    worker = runtime.make_worker()
    runtime.worker = worker  # the worker add_job wakes
    clock.event, clock.want = worker.wake, 7
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        assert clock.enough.wait(5)
        assert clock.waits == [1, 2, 4, 8, 10, 10, 10]
        clock.want = 9
        clock.enough.clear()
        queue.add_job("PING", {}, app=app)  # sets the event the worker waits on
        assert done.wait(5) and clock.enough.wait(5)
        assert clock.waits[7:] == [1, 2]  # a job ran: back to the first interval
    finally:
        worker.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_the_ceiling_is_configurable_and_never_below_the_poll_interval(make_app):
    app, _ = make_app(QUEUE_POLL_INTERVAL=3, QUEUE_POLL_MAX_INTERVAL=1)
    worker = app.extensions["queue_service"].runtime.make_worker()
    assert (worker.idle.first, worker.idle.ceiling) == (3, 3)
