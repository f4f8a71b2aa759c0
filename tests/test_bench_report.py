"""The benchmark's table and argument handling, on made-up figures.

Benchmarks are not tests: nothing here runs a measurement or asserts a time.
This only checks that the ratios and target verdicts are computed the way
the table says, and that bad arguments are refused.
"""
from __future__ import annotations

import pytest

from bench import http, report
from bench.common import median, percentile
from bench.run import _median_of, parse_args

MIB = 1024 * 1024


def _results(qs_p50: float = 30.0, qs_drain: float = 9000.0) -> dict:
    lat = lambda p50: {"p50_us": p50, "p99_us": p50 * 3}  # noqa: E731
    rate = lambda r: {"jobs_per_s": r}  # noqa: E731
    http = lambda r: {"req_per_s": r, "p50_ms": 1.0, "p99_ms": 4.0, "client": "wrk"}  # noqa: E731
    return {
        "enqueue": {"queue_service": lat(qs_p50), "huey": lat(31.0), "rq": lat(450.0), "floor": lat(22.0),
                    "floor_validated": lat(26.0), "queue_service_bulk": {**lat(15.0), "batch": 100},
                    "rq_bulk": lat(40.0)},
        "drain": {"queue_service": rate(qs_drain), "huey": rate(8000.0), "rq": rate(300.0),
                  "floor": rate(16000.0), "store_only": rate(9500.0)},
        "mongo_ops": {"enqueue": 1.0, "claim": 1.0, "heartbeat": 1.0, "complete": 1.0, "idle_poll": 1.0,
                      "end_to_end": 3.0},
        "route": {"route_us": 300.0, "echo_us": 150.0, "add_job_us": 120.0, "overhead_us": 30.0, "count": 1000},
        "http": {"enqueue": http(4000.0), "ceiling": http(4800.0)},
        "image": {"pillow": {"ms_per_image": 280.0, "above_idle_mib": 37.0},
                  "transcode": {"ms_per_image": 300.0, "above_idle_mib": 40.0}},
        "memory": {"with_queue": {"rss_mib": 30.0, "pss_mib": 20.0, "queue_threads_cpu_s": 0.0,
                                  "idle_seconds": 10.0},
                   "without": {"rss_mib": 27.0, "pss_mib": 14.0},
                   "rss_delta_mib": 3.0, "pss_delta_mib": 6.0, "queue_cpu_percent": 0.0},
        "storage": {"sqlite": {"queued_bytes": 580.0, "completed_bytes": 920.0, "completed_content_bytes": 800.0},
                    "mongo": {"queued_bytes": 590.0, "completed_bytes": 1100.0}, "payload_json_bytes": 333},
    }


def _verdicts(results: dict) -> dict[str, bool | None]:
    return dict(report.build(results, {"jobs": 5000, "http_seconds": 10}).verdicts)


def test_verdicts_follow_the_ratios():
    verdicts = _verdicts(_results())
    assert verdicts["enqueue ≤ 1.25× floor + validation"] is True   # 30 ≤ 32.5
    assert verdicts["bulk enqueue ≤ 0.5× Huey's single enqueue"] is True  # 15 ≤ 15.5
    assert verdicts["drain ≥ 0.9× store-only bound"] is True   # 9000 ≥ 8550
    assert verdicts["drain ≥ 10× RQ SimpleWorker"] is True
    assert verdicts["POST /jobs ≤ echo + add_job + 40 µs"] is True
    assert verdicts["MongoDB ≤ 3 round trips per job"] is True
    assert verdicts["HTTP enqueue ≥ 0.8× ceiling"] is True     # 4000 ≥ 3840
    assert verdicts["image ≤ 1.1× Pillow"] is True             # 300 ≤ 308
    assert verdicts["image peak ≤ 50 MB above idle"] is True
    assert verdicts["MongoDB ≤ 1 KB per job"] is False         # 1100 B
    slow = _verdicts(_results(qs_p50=34.0, qs_drain=7000.0))
    assert slow["enqueue ≤ 1.25× floor + validation"] is False
    assert slow["drain ≥ 0.9× store-only bound"] is False
    assert "enqueue < Huey (same synchronous)" not in slow  # a bound of the design card, shown, not a target


def test_memory_targets_are_decimal_megabytes():
    results = _results()
    results["image"]["transcode"]["above_idle_mib"] = 48.0    # 50.3 MB: over 50 MB
    results["memory"]["rss_delta_mib"] = 4.9                   # 5.1 MB: over 5 MB
    verdicts = _verdicts(results)
    assert verdicts["image peak ≤ 50 MB above idle"] is False
    assert verdicts["idle threads ≤ 5 MB RSS"] is False


def test_missing_image_job_is_pending_not_passed():
    results = _results()
    del results["image"]["transcode"]
    results["image"]["missing"] = "not registered"
    verdicts = _verdicts(results)
    assert verdicts["image ≤ 1.1× Pillow"] is None
    table = report.build(results, {"jobs": 5000, "http_seconds": 10}).markdown()
    assert "not measured: not registered" in table and "pending" in table


def _latency(qs_p50: float) -> dict:
    row = lambda p50: {"p50_ms": p50, "p99_ms": p50 * 4, "completed": 3000, "offered": 3000,  # noqa: E731
                       "sent_per_s": 299.0}
    return {"queue_service": row(qs_p50), "huey": row(60.0), "rq": row(8.0), "rate": 300.0}


def test_latency_target_is_our_p50_below_both_peers():
    fast = _verdicts({"latency": _latency(5.0)})
    assert fast["latency p50 below Huey's consumer"] is True and fast["latency p50 below RQ's worker"] is True
    between = _verdicts({"latency": _latency(9.0)})
    assert between["latency p50 below Huey's consumer"] is True and between["latency p50 below RQ's worker"] is False
    table = report.build({"latency": _latency(5.0)}, {"jobs": 5000, "http_seconds": 10}).markdown()
    assert "300 req/s offered for 10 s" in table and "3,000/3,000 done" in table


def test_helpers():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0
    assert median([1.0, 4.0, 2.0, 3.0]) == 2.5
    merged = _median_of([{"a": 1.0, "b": {"c": 5}, "s": "x"}, {"a": 3.0, "b": {"c": 1}, "s": "y"},
                         {"a": 2.0, "b": {"c": 3}, "s": "z"}])
    assert merged["a"] == 2.0 and merged["b"]["c"] == 3 and merged["s"] == "z" and merged["runs"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--only", "enqueue,bogus"], "unknown section"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--http-seconds", "0.1"], "between 1 and 120"),
    (["--latency-rate", "5000"], "--latency-rate must be between"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_ratios_are_taken_within_each_round():
    # Round 2 ran while the machine was busy: both systems slowed down alike.
    a = {"p50_us": 60.0, "samples": [{"p50_us": 30.0}, {"p50_us": 90.0}, {"p50_us": 33.0}]}
    b = {"p50_us": 22.0, "samples": [{"p50_us": 20.0}, {"p50_us": 60.0}, {"p50_us": 22.0}]}
    assert report.ratio(a, b, "p50_us") == 1.5      # rounds: 1.5, 1.5, 1.5
    assert report.ratio({"p50_us": 60.0}, b, "p50_us") == 60.0 / 22.0  # no samples: ratio of medians


def test_route_target_reads_the_one_route_bound_when_measured():
    results = _results()
    # 60 µs above echo + add_job measured apart, 35 µs above the one-route bound.
    results["route"].update(overhead_us=60.0, echo_add_job_us=295.0, one_route_overhead_us=35.0,
                            add_job_in_request_us=140.0)
    assert _verdicts(results)["POST /jobs ≤ echo + add_job + 40 µs"] is True
    results["route"]["one_route_overhead_us"] = 45.0
    assert _verdicts(results)["POST /jobs ≤ echo + add_job + 40 µs"] is False
    table = report.build(results, {"jobs": 5000, "http_seconds": 10}).markdown()
    assert "add_job timed inside it 140 µs" in table


def test_http_threads_off_passes_and_per_round_ratios():
    from bench.http import _passes_combined

    first = {"req_per_s": 1000.0, "p50_ms": 2.0, "p99_ms": 10.0, "requests": 5000, "non_2xx": 0,
             "socket_errors": "", "client": "wrk"}
    second = {**first, "req_per_s": 1400.0, "p50_ms": 4.0, "requests": 7000, "non_2xx": 2, "socket_errors": "read 1"}
    both = _passes_combined([first, second])
    assert (both["req_per_s"], both["p50_ms"], both["p99_ms"]) == (1200.0, 3.0, 10.0)
    assert (both["requests"], both["non_2xx"], both["socket_errors"], both["passes"]) == (12000, 2, "read 1", 2)

    results = _results()

    def rounds(*rates: float) -> dict:  # a system's median and its rounds, as bench.run keeps them
        return {"req_per_s": sorted(rates)[1], "p50_ms": 1.0, "p99_ms": 4.0,
                "samples": [{"req_per_s": r} for r in rates]}
    # Medians of the whole run give 900/1000 = 0.9; within the rounds: 0.70, 0.69, 0.95, median 0.70.
    results["http"]["enqueue_threads_off"] = rounds(700.0, 900.0, 950.0)
    results["http"]["peers"] = {"durable_write": rounds(1000.0, 1300.0, 1000.0), "huey": rounds(600.0, 800.0, 900.0),
                                "our_schema": rounds(800.0, 950.0, 1000.0), "rq": rounds(400.0, 500.0, 600.0)}
    built = report.build(results, {"jobs": 5000, "http_seconds": 10})
    verdicts = dict(built.verdicts)
    assert verdicts["HTTP enqueue (threads off) ≥ 0.8× durable-write route"] is False
    assert verdicts["HTTP enqueue (threads off) ≥ Huey route"] is True    # 1.17, 1.12, 1.06
    table = built.markdown()
    assert "0.95× our-schema bound" in table     # 0.875, 0.947, 0.95
    assert "0.80× durable write" in table        # the bound: 0.80, 0.73, 1.00


class _Workers:
    """A stand-in for bench.server.Server: each wrk run adds the next pair of
    CPU figures to the workers' totals."""

    def __init__(self, per_run: list[tuple[float, float]]):
        self.per_run, self.total, self.runs = list(per_run), [0.0, 0.0], 0

    def worker_cpu_seconds(self) -> list[float]:
        return list(self.total)

    def wrk(self, server, path, seconds, workdir):
        if seconds != http.WARMUP_SECONDS:
            used = self.per_run.pop(0)
            self.total = [t + u for t, u in zip(self.total, used)]
        self.runs += 1
        return {"req_per_s": 1000.0 + self.runs, "p50_ms": 1.0, "p99_ms": 4.0}


@pytest.mark.parametrize("per_run, tries, pinned", [
    ([(0.70, 0.66)], 1, False),                              # both workers served
    ([(0.87, 0.66)], 1, False),                              # a 3/1 split of the connections
    ([(0.82, 0.01), (0.70, 0.70)], 2, False),                # pinned, then spread
    ([(0.82, 0.01), (0.80, 0.00), (0.84, 0.02)], 3, True),   # pinned every time: kept, and said
])
def test_a_load_one_worker_served_alone_is_made_again(per_run, tries, pinned, monkeypatch, tmp_path):
    workers = _Workers(per_run)
    monkeypatch.setattr(http.shutil, "which", lambda name: "/usr/bin/wrk")
    monkeypatch.setattr(http, "_wrk", workers.wrk)
    result = http.load(workers, "/bench/echo", 5.0, tmp_path)
    assert result["tries"] == tries
    assert bool(result.get("one_worker_served_all")) is pinned
    assert not workers.per_run  # every measured run was used
    line_marked = "one worker served every connection" in report._http_line(result)
    assert line_marked is pinned


def test_a_round_left_pinned_is_said_in_the_median_row():
    rounds = [{"req_per_s": 900.0, "p50_ms": 1.0, "p99_ms": 4.0, "one_worker_served_all": flag}
              for flag in (False, True, False)]
    merged = _median_of(rounds)
    assert "one worker served every connection in 1 of 3 round(s)" in report._http_line(merged)
    assert "one worker" not in report._http_line(_median_of([rounds[0], rounds[2]]))
