"""Hostile requests over a real gunicorn (gunicorn.conf.py, the Procfile's
settings) on 127.0.0.1, sent as raw bytes so nothing is cleaned up on the
way: each gets a 4xx, and the server keeps answering afterwards."""
from __future__ import annotations

import json
import socket

import pytest
from processes import TOKEN, Gunicorn

PREFIX = "/api/queue"


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; return (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # the server may close once it has answered
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def request(port: int, method: str, target: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Authorization: Bearer {TOKEN}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    return raw_request(port, data)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn")
    gunicorn = Gunicorn(tmp, workers=1, app="tests.api_gunicorn_app:app", ready_path=f"{PREFIX}/health",
                        QUEUE_SHUTDOWN_TIMEOUT="2")
    try:
        gunicorn.wait_ready()
        yield gunicorn.port, gunicorn.log_path
    finally:
        gunicorn.stop()  # SIGTERM to the master we started, by PID; closes its log


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, body[:300]
    assert headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["error"] and isinstance(answer["details"], dict)


def test_empty_body(server):
    port, _ = server
    assert_json_error(*request(port, "POST", f"{PREFIX}/jobs", b"", {"Content-Type": "application/json"}), 400)


def test_invalid_utf8_body(server):
    port, _ = server
    body = b'{"type": "CLEANUP", "payload": {"task": "\xff\xfe"}}'
    assert_json_error(*request(port, "POST", f"{PREFIX}/jobs", body, {"Content-Type": "application/json"}), 400)


def test_malformed_json_and_not_an_object(server):
    port, _ = server
    for body in (b"{", b"[1, 2]", b"\x00"):
        assert_json_error(*request(port, "POST", f"{PREFIX}/jobs", body, {"Content-Type": "application/json"}),
                          400)


def test_five_thousand_character_id(server):
    # gunicorn.conf.py raises limit_request_line to gunicorn's maximum, so the
    # app sees this request and answers its JSON 404.
    port, _ = server
    assert_json_error(*request(port, "GET", f"{PREFIX}/job/{'a' * 5000}"), 404)


def test_request_line_over_gunicorns_maximum_is_refused_by_gunicorn(server):
    # Over 8190 bytes gunicorn answers 414 itself (plain text) and the app never
    # runs; the server keeps answering afterwards.
    port, _ = server
    status, _, _ = request(port, "GET", f"{PREFIX}/job/{'a' * 9000}")
    assert status == 414
    assert request(port, "GET", f"{PREFIX}/health")[0] == 200


def test_nul_in_path(server):
    port, _ = server
    assert_json_error(*request(port, "GET", f"{PREFIX}/job/%00"), 404)
    assert_json_error(*request(port, "POST", f"{PREFIX}/job/abc%00def/cancel"), 404)
    status, _, _ = raw_request(port, f"GET {PREFIX}/job/\x00 HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
    assert 400 <= status < 500  # a raw NUL: gunicorn's parser refuses it


def test_body_over_cap(server):
    port, _ = server
    big = b'{"type": "CLEANUP", "payload": {"x": "' + b"a" * 70_000 + b'"}}'
    assert_json_error(*request(port, "POST", f"{PREFIX}/jobs", big, {"Content-Type": "application/json"}), 413)


def test_chunked_body_over_cap(server):
    port, _ = server
    chunk = b"a" * 8192
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(10)) + b"0\r\n\r\n"
    status, headers, answer = request(port, "POST", f"{PREFIX}/jobs", body,
                                      {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert_json_error(status, headers, answer, 413)


def test_wrong_method_and_unknown_route(server):
    port, _ = server
    status, headers, body = request(port, "DELETE", f"{PREFIX}/jobs")
    assert_json_error(status, headers, body, 405)
    assert "GET" in headers["allow"]
    assert_json_error(*request(port, "GET", f"{PREFIX}/%ff%fe"), 404)


def test_server_still_healthy_and_accepting_jobs(server):
    port, log = server
    body = json.dumps({"type": "CLEANUP", "payload": {"task": "purge_jobs", "olderThan": "30d"}}).encode()
    status, _, answer = request(port, "POST", f"{PREFIX}/jobs", body, {"Content-Type": "application/json"})
    assert status == 201, answer
    status, _, answer = request(port, "GET", f"{PREFIX}/health")
    assert status == 200 and json.loads(answer)["healthy"] is True
    assert "Traceback" not in log.read_text(errors="replace")
