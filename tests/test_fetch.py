"""The guarded fetcher against a real HTTP server on 127.0.0.1.

Tests that must reach the server set ``allow_private=True``. The SSRF tests
leave the check on and prove the server received no request. A "public" host
is simulated by a resolver stub that answers a global address and a connect
stub that routes that one address to the local server (nothing leaves the
machine): that lets a first hop pass the check so its redirect can be tested.
"""
from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler

import pytest
import urllib3.util.connection

from queue_service.handlers.fetch import (FetchConnectionError, FetchHTTPError, FetchRefused, Fetcher, FetchTimeout,
                                 FetchTooLarge, check_url)
from servers import http_server  # noqa: F401  (fixture)

PUBLIC_IP = "93.184.215.14"  # a global address; connections to it are stubbed below
PUBLIC_HOST = "images.example.com"


class FakeNetwork:
    """Resolver + connect stubs. ``answers[name]`` is the list of addresses
    successive lookups return (the last repeats); ``routes[ip]`` is where a
    connection to ``ip`` really goes (anything else is refused and recorded)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.answers: dict[str, list[str]] = {}
        self.routes: dict[str, str] = {}
        self.lookups: list[str] = []
        self.connects: list[tuple[str, int]] = []
        real_getaddrinfo = socket.getaddrinfo
        real_connect = urllib3.util.connection.create_connection

        def getaddrinfo(host, port, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else host
            if name in self.answers:
                self.lookups.append(name)
                queue = self.answers[name]
                address = queue.pop(0) if len(queue) > 1 else queue[0]
                return real_getaddrinfo(address, port, *args, **kwargs)
            return real_getaddrinfo(host, port, *args, **kwargs)

        def create_connection(address, *args, **kwargs):
            host, port = address
            self.connects.append((host, port))
            if host in self.routes:
                return real_connect((self.routes[host], port), *args, **kwargs)
            raise ConnectionRefusedError(f"stub network: no route to {host}")

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)


@pytest.fixture
def network(monkeypatch) -> FakeNetwork:
    net = FakeNetwork(monkeypatch)
    net.answers[PUBLIC_HOST] = [PUBLIC_IP]
    net.routes[PUBLIC_IP] = "127.0.0.1"
    return net


def test_get_returns_body_and_type(http_server):
    url = http_server.add("/a.jpg", b"jpegbytes", content_type="image/jpeg")
    result = Fetcher(allow_private=True).get(url)
    assert (result.status, result.content, result.content_type) == (200, b"jpegbytes", "image/jpeg")
    request = http_server.hits("/a.jpg")[0]
    assert request.headers["Accept-Encoding"] == "identity"
    assert request.headers["User-Agent"].startswith("queue_service/")


@pytest.mark.parametrize("status, transient", [(404, False), (403, False), (503, True), (429, True)])
def test_error_status(http_server, status, transient):
    url = http_server.add("/x", b"nope", status=status)
    with pytest.raises(FetchHTTPError) as info:
        Fetcher(allow_private=True).get(url)
    assert info.value.status == status and info.value.transient is transient


def test_unknown_path_is_404(http_server):
    with pytest.raises(FetchHTTPError, match="HTTP 404"):
        Fetcher(allow_private=True).get(http_server.url("/missing.jpg"))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1", "2130706433", "0x7f.1", "0177.0.0.1",
                                  "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "0"])
def test_loopback_spellings_are_refused(http_server, host):
    http_server.add("/secret", b"internal")
    with pytest.raises(FetchRefused, match="not public"):
        Fetcher().get(f"http://{host}:{http_server.port}/secret")
    assert http_server.hits() == []


@pytest.mark.parametrize("host", ["169.254.169.254", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
                                  "224.0.0.1", "240.0.0.1", "255.255.255.255", "[fd00::1]", "[fe80::1]",
                                  "[ff02::1]", "[::]"])
def test_private_and_reserved_addresses_are_refused(network, host):
    with pytest.raises(FetchRefused, match="not public"):
        Fetcher().get(f"http://{host}/latest/meta-data/")
    assert network.connects == []  # refused before any connection


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://example.com/",
                                 "javascript:alert(1)", "//example.com/a.jpg", "http:///a.jpg",
                                 "http://user:pw@example.com/a.jpg", "http://exa mple.com/",
                                 "http://a\n.com/",
                                 "http://example.com:99999/", "", 42, "x" * 3000])
def test_malformed_or_foreign_urls_are_refused(url):
    with pytest.raises(FetchRefused):
        check_url(url)
    with pytest.raises(FetchRefused):
        Fetcher(allow_private=True).get(url)


def test_public_host_passes_the_check(http_server, network):
    http_server.add("/ok.jpg", b"fine", content_type="image/jpeg")
    result = Fetcher().get(f"http://{PUBLIC_HOST}:{http_server.port}/ok.jpg")
    assert result.content == b"fine"
    assert network.connects == [(PUBLIC_IP, http_server.port)]  # the checked address, not the name
    assert http_server.hits("/ok.jpg")[0].headers["Host"] == f"{PUBLIC_HOST}:{http_server.port}"


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/secret", "http://localhost:{port}/secret",
                                    "http://[::1]:{port}/secret", "http://169.254.169.254/latest/meta-data/",
                                    "http://10.1.2.3/secret", "file:///etc/passwd"])
def test_redirect_into_private_address_is_refused(http_server, network, target):
    http_server.add("/secret", b"internal")
    http_server.redirect("/hop", target.format(port=http_server.port))
    with pytest.raises(FetchRefused):
        Fetcher().get(f"http://{PUBLIC_HOST}:{http_server.port}/hop")
    assert http_server.hits("/secret") == []
    assert [host for host, _ in network.connects] == [PUBLIC_IP]


def test_dns_rebinding_connects_to_the_checked_address(http_server, network):
    # First answer public, every later one loopback: a fetcher that resolved
    # twice (check, then connect) would reach the local server.
    network.answers["rebind.example.com"] = [PUBLIC_IP, "127.0.0.1"]
    network.routes.clear()  # the public address is unreachable in this test
    http_server.add("/secret", b"internal")
    with pytest.raises(FetchConnectionError):
        Fetcher().get(f"http://rebind.example.com:{http_server.port}/secret")
    assert network.lookups == ["rebind.example.com"]
    assert network.connects == [(PUBLIC_IP, http_server.port)]
    assert http_server.hits() == []


def test_rebinding_on_a_redirect_is_checked_again(http_server, network):
    network.answers["rebind.example.com"] = [PUBLIC_IP, "127.0.0.1"]
    http_server.add("/secret", b"internal")
    http_server.redirect("/hop", f"http://rebind.example.com:{http_server.port}/secret")
    with pytest.raises(FetchRefused, match="127.0.0.1"):
        Fetcher().get(f"http://rebind.example.com:{http_server.port}/hop")
    assert http_server.hits("/secret") == []


def test_allow_private_lifts_only_the_address_check(http_server):
    http_server.add("/big", b"x" * 2000)
    with pytest.raises(FetchTooLarge):
        Fetcher(allow_private=True, max_bytes=1000).get(http_server.url("/big"))
    with pytest.raises(FetchRefused):
        Fetcher(allow_private=True).get("file:///etc/passwd")


def test_redirects_are_followed_up_to_five(http_server):
    http_server.add("/final", b"done")
    for hop in range(5):
        http_server.redirect(f"/r{hop}", f"/r{hop + 1}" if hop < 4 else "/final", status=301 + hop % 2)
    assert Fetcher(allow_private=True).get(http_server.url("/r0")).content == b"done"
    http_server.redirect("/r-extra", "/r0")
    with pytest.raises(FetchRefused, match="more than 5 redirects"):
        Fetcher(allow_private=True).get(http_server.url("/r-extra"))
    assert len(http_server.hits("/final")) == 1  # the six-hop chain never got there


def test_declared_oversize_body_is_refused_unread(http_server):
    url = http_server.stream("/huge", 25 * 1024 * 1024, declare_length=True)
    with pytest.raises(FetchTooLarge, match="26214400 bytes"):
        Fetcher(allow_private=True).get(url)


def test_undeclared_oversize_body_is_cut_at_the_cap(http_server):
    url = http_server.stream("/huge", 25 * 1024 * 1024, declare_length=False)
    with pytest.raises(FetchTooLarge, match="cap"):
        Fetcher(allow_private=True).get(url)


def test_body_exactly_at_the_cap_is_accepted(http_server):
    url = http_server.stream("/cap", 100_000, declare_length=False)
    assert len(Fetcher(allow_private=True, max_bytes=100_000).get(url).content) == 100_000


def test_trickling_body_meets_the_overall_deadline(http_server):
    # Each byte arrives well within the read timeout; only the deadline stops it.
    url = http_server.trickle("/slow", total_bytes=10_000, interval=0.02)
    with pytest.raises(FetchTimeout, match="deadline") as info:
        Fetcher(allow_private=True, read_timeout=5, deadline=0.3).get(url)
    assert info.value.transient


def test_silent_server_hits_the_read_timeout(http_server):
    def silent(request: BaseHTTPRequestHandler) -> None:
        http_server.stopping.wait(3)
    http_server.add_handler("/silent", silent)
    with pytest.raises(FetchTimeout):
        Fetcher(allow_private=True, read_timeout=0.2).get(http_server.url("/silent"))


def test_truncated_body_is_a_transient_error(http_server):
    def short(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", "1000")
        request.end_headers()
        request.wfile.write(b"only ten b")
        request.close_connection = True
    http_server.add_handler("/short", short)
    with pytest.raises(FetchConnectionError) as info:
        Fetcher(allow_private=True).get(http_server.url("/short"))
    assert info.value.transient


def test_connection_refused_is_transient():
    from servers import free_port

    with pytest.raises(FetchConnectionError) as info:
        Fetcher(allow_private=True, connect_timeout=1).get(f"http://127.0.0.1:{free_port()}/x")
    assert info.value.transient


def test_post_sends_body_and_does_not_follow_redirects(http_server):
    url = http_server.add("/hook", b"ok")
    result = Fetcher(allow_private=True).post(url, b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert result.status == 200
    hit = http_server.hits("/hook")[0]
    assert (hit.method, hit.body, hit.headers["Content-Type"]) == ("POST", b'{"a": 1}', "application/json")
    http_server.redirect("/moved", "/hook", status=307)
    with pytest.raises(FetchHTTPError, match="307"):
        Fetcher(allow_private=True).post(http_server.url("/moved"), b"{}")
    assert len(http_server.hits("/hook")) == 1


def test_post_to_loopback_is_refused(http_server):
    http_server.add("/hook", b"ok")
    with pytest.raises(FetchRefused):
        Fetcher().post(http_server.url("/hook"), b"{}")
    assert http_server.hits() == []


def test_environment_proxy_is_ignored(http_server, monkeypatch):
    # A proxy would put the proxy's address under the check instead of the target's.
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("http_proxy", "http://10.9.9.9:3128")
    url = http_server.add("/a", b"direct")
    assert Fetcher(allow_private=True, connect_timeout=1).get(url).content == b"direct"
