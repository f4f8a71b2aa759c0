"""The guarded fetcher: HTTP(S) requests to URLs that users supply.

Built on requests-hardened, whose adapter resolves the host once, refuses
loopback, private, link-local, CGNAT, multicast and reserved addresses, and
connects to the very address it checked (no second lookup, so DNS
rebinding cannot swap it). On top of that this module adds what a job needs:
http/https only, redirects followed by hand (each hop goes through the same
adapter, at most ``max_redirects``, and a redirect's body is never read), a
body streamed and cut at ``max_bytes`` whatever Content-Length says, connect
and read timeouts and one deadline for the whole exchange. Environment
proxies and .netrc are ignored (``trust_env = False``): a proxy would make the
address check look at the proxy instead of the target.

``allow_private=True`` (QUEUE_ALLOW_PRIVATE_URLS) lifts the address check
alone; every other limit stays.

requests (about 4 MB resident) is imported on first use, not at import
time: a web process that never fetches a URL does not pay for it.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urljoin, urlsplit

from ..core.errors import QueueError

if TYPE_CHECKING:
    import requests

MAX_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 5
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 15.0
DEADLINE_SECONDS = 45.0
MAX_URL_CHARS = 2048
CHUNK_BYTES = 64 * 1024
USER_AGENT = "queue_service/1.0 (+image fetcher)"
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class FetchError(QueueError):
    """A fetch did not produce a body. ``transient`` says whether the same
    request later may succeed (timeouts, connection errors, 5xx, 429)."""

    transient = False

    def __init__(self, message: str, *, url: str | None = None):
        super().__init__(message)
        self.url = url


class FetchRefused(FetchError):
    """The URL, or a redirect, points somewhere we do not go."""


class FetchTooLarge(FetchError):
    """The body is larger than the cap."""


class FetchTimeout(FetchError):
    transient = True


class FetchConnectionError(FetchError):
    transient = True


class FetchHTTPError(FetchError):
    """The server answered with a status that is not 2xx."""

    def __init__(self, status: int, *, url: str | None = None):
        super().__init__(f"HTTP {status}", url=url)
        self.status = status
        self.transient = status >= 500 or status in (408, 425, 429)


@dataclass
class FetchResult:
    url: str  # the final URL, after redirects
    status: int
    content: bytes
    content_type: str | None
    headers: Mapping[str, str] = field(default_factory=dict)


def check_url(url: Any) -> str:
    """Refuse what is not an absolute http(s) URL with a host. Returns the URL.
    (The address itself is checked at connection time, after resolution.)"""
    if not isinstance(url, str) or not url:
        raise FetchRefused("URL must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise FetchRefused(f"URL longer than {MAX_URL_CHARS} characters", url=url[:100])
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise FetchRefused("URL contains whitespace or control characters", url=url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise FetchRefused(f"malformed URL: {exc}", url=url) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchRefused(f"scheme {parts.scheme or '(none)'!r} refused: http and https only", url=url)
    if not parts.hostname:
        raise FetchRefused("URL has no host", url=url)
    if parts.username is not None or parts.password is not None:
        raise FetchRefused("credentials in URLs are refused", url=url)
    return url


class Fetcher:
    """One configuration of limits; ``get`` / ``post`` are thread-safe (each
    call uses its own session)."""

    def __init__(self, *, allow_private: bool = False, max_bytes: int = MAX_BYTES,
                 max_redirects: int = MAX_REDIRECTS, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                 read_timeout: float = READ_TIMEOUT_SECONDS, deadline: float | None = None,
                 user_agent: str = USER_AGENT):
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # Read at call time so a deployment (or a test) can shorten it module-wide.
        self.deadline = DEADLINE_SECONDS if deadline is None else deadline
        self.user_agent = user_agent

    def _session(self) -> "requests.Session":
        from requests_hardened import Config, HTTPSession

        config = Config(
            ip_filter_enable=not self.allow_private,
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,  # we follow redirects ourselves, one checked hop at a time
            default_timeout=(self.connect_timeout, self.read_timeout),
            user_agent_override=self.user_agent,
        )
        session = HTTPSession(config)
        session.trust_env = False
        return session

    def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> FetchResult:
        """GET ``url``, following up to ``max_redirects`` checked redirects."""
        return self._exchange("GET", url, headers=headers, data=None, follow=True)

    def post(self, url: str, data: bytes, *, headers: Mapping[str, str] | None = None) -> FetchResult:
        """POST ``data`` to ``url``. Redirects are not followed (a 3xx is an
        error): re-sending a signed body to wherever a server points is not
        something a callback should do."""
        return self._exchange("POST", url, headers=headers, data=data, follow=False)

    def _exchange(self, method: str, url: str, *, headers: Mapping[str, str] | None,
                  data: bytes | None, follow: bool) -> FetchResult:
        check_url(url)
        deadline = time.monotonic() + self.deadline
        request_headers = {"Accept-Encoding": "identity", **(headers or {})}
        with self._session() as session:
            for hop in range(self.max_redirects + 1):
                response = self._send(session, method, url, request_headers, data, deadline)
                try:
                    if response.status_code in REDIRECT_STATUSES and follow:
                        location = response.headers.get("Location")
                        if not location:
                            raise FetchHTTPError(response.status_code, url=url)
                        if hop == self.max_redirects:
                            raise FetchRefused(f"more than {self.max_redirects} redirects", url=url)
                        url = check_url(urljoin(url, location))
                        continue
                    if not 200 <= response.status_code < 300:
                        raise FetchHTTPError(response.status_code, url=url)
                    body = self._read_body(response, url, deadline)
                    return FetchResult(url, response.status_code, body,
                                       response.headers.get("Content-Type"), dict(response.headers))
                finally:
                    response.close()  # a redirect's or an error's body is never read
        raise FetchRefused(f"more than {self.max_redirects} redirects", url=url)  # pragma: no cover

    def _send(self, session: "requests.Session", method: str, url: str, headers: Mapping[str, str],
              data: bytes | None, deadline: float) -> "requests.Response":
        import requests
        from requests_hardened.ip_filter import InvalidIPAddress

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeout(f"deadline of {self.deadline:g}s passed", url=url)
        timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
        try:
            return session.request(method, url, headers=dict(headers), data=data, timeout=timeout,
                                   stream=True, allow_redirects=False)
        except InvalidIPAddress as exc:
            raise FetchRefused(f"address {exc} is not public (loopback, private, link-local, "
                               f"multicast or reserved)", url=url) from None
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema) as exc:
            raise FetchRefused(f"refused URL: {exc}", url=url) from None
        except requests.exceptions.Timeout as exc:
            raise FetchTimeout(f"timed out: {exc}", url=url) from None
        except requests.exceptions.ConnectionError as exc:
            raise FetchConnectionError(f"connection failed: {exc}", url=url) from None
        except requests.exceptions.RequestException as exc:
            raise FetchConnectionError(f"request failed: {exc}", url=url) from None

    def _read_body(self, response: "requests.Response", url: str, deadline: float) -> bytes:
        from urllib3.exceptions import HTTPError as Urllib3HTTPError
        from urllib3.exceptions import ReadTimeoutError

        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise FetchTooLarge(f"body of {int(declared)} bytes is over the {self.max_bytes}-byte cap",
                                url=url)
        body = io.BytesIO()  # getvalue() hands over its buffer without a copy
        size = 0
        raw = response.raw
        try:
            while True:
                # read1 returns after one socket read, so a body that trickles
                # in below the read timeout still meets the deadline check.
                chunk = raw.read1(CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchTooLarge(f"body is over the {self.max_bytes}-byte cap", url=url)
                body.write(chunk)
                if time.monotonic() > deadline:
                    raise FetchTimeout(f"deadline of {self.deadline:g}s passed while reading the body",
                                       url=url)
        except (ReadTimeoutError, TimeoutError) as exc:
            raise FetchTimeout(f"timed out reading the body: {exc}", url=url) from None
        except (Urllib3HTTPError, OSError) as exc:  # truncated body, reset connection, bad chunking
            raise FetchConnectionError(f"reading the body failed: {type(exc).__name__}: {exc}",
                                       url=url) from None
        return body.getvalue()
