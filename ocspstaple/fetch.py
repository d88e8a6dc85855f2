"""The network edge: the only module that imports requests.

``fetch_response`` holds the RFC 5019 / RFC 6960 request policy (GET when the
URL stays short, POST otherwise or after an error answer) over a
:class:`Transport`, so that tests can pass their own transport object.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

from ocspstaple.errors import FetchError
from ocspstaple.urls import check_url

log = logging.getLogger(__name__)

# Real OCSP responses are under 4 KiB; 64 KiB is ample and bounds memory.
MAX_RESPONSE_BYTES = 64 * 1024
# RFC 5019 5: GET only while the whole URL stays within 255 bytes.
MAX_GET_URL = 255
DEFAULT_TIMEOUT = 10.0
_CHUNK = 8192


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Transport(Protocol):
    """Sends one HTTP request and returns the whole (bounded) answer."""

    def get(self, url: str) -> HttpReply: ...

    def post(self, url: str, body: bytes) -> HttpReply: ...


def get_url(url: str, request: bytes) -> str:
    """The RFC 6960 A.1 GET URL: the responder URL, exactly one slash, then the
    standard base64 of the request with ``+``, ``/`` and ``=`` percent-encoded."""
    b64 = base64.b64encode(request).decode("ascii")
    return url.rstrip("/") + "/" + urllib.parse.quote(b64, safe="")


def fetch_response(transport: Transport, url: str, request: bytes) -> bytes:
    """Ask the responder at ``url``; return the body of its 200 answer.

    GET when the URL fits in 255 bytes (cacheable, RFC 5019); POST otherwise,
    and after a 4xx, a 5xx or a malformedRequest answer to GET.
    """
    check_url(url)
    gurl = get_url(url, request)
    if len(gurl) <= MAX_GET_URL:
        reply = transport.get(gurl)
        if reply.status == 200 and not _is_malformed_request(reply.body):
            return reply.body
        if not (400 <= reply.status < 600 or reply.status == 200):
            raise FetchError(_http_problem(reply, url))
        log.debug("%s: GET answered HTTP %d; retrying with POST", url, reply.status)
    reply = transport.post(url, request)
    if reply.status != 200:
        raise FetchError(_http_problem(reply, url))
    return reply.body


def _http_problem(reply: HttpReply, url: str) -> str:
    if 300 <= reply.status < 400:
        where = reply.headers.get("location", "?")
        return f"responder {url} redirected (HTTP {reply.status} to {where}); redirects are not followed"
    return f"responder {url} answered HTTP {reply.status}"


def _is_malformed_request(body: bytes) -> bool:
    # OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED (1 = malformedRequest) }
    # with no responseBytes: exactly 30 03 0a 01 01.
    return body == b"\x30\x03\x0a\x01\x01"


class HttpTransport:
    """HTTP over requests with a total wall-clock deadline and a size cap.

    requests' own timeout bounds each socket read, so a server trickling one
    byte at a time would defeat it; every request therefore runs in a worker
    thread that the caller stops waiting for at the deadline, and the worker
    itself gives up at the deadline between reads.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        proxy: str | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        import requests  # imported here: start-up time of `ocspstaple --help`

        if proxy is not None:
            check_url(proxy, "proxy")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._session = requests.Session()
        # trust_env (the default) honours HTTP_PROXY/http_proxy and NO_PROXY.
        self._proxies = {"http": proxy, "https": proxy} if proxy else None

    def get(self, url: str) -> HttpReply:
        return self._bounded("GET", url, None)

    def post(self, url: str, body: bytes) -> HttpReply:
        return self._bounded("POST", url, body)

    def close(self) -> None:
        self._session.close()

    def _bounded(self, method: str, url: str, body: bytes | None) -> HttpReply:
        deadline = time.monotonic() + self.timeout
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["reply"] = self._send(method, url, body, deadline)
            except BaseException as e:  # handed to the caller below
                result["error"] = e

        worker = threading.Thread(target=run, name=f"ocspstaple-{method}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise FetchError(f"responder {_origin(url)} gave no complete answer within {self.timeout:g} s")
        if "error" in result:
            raise result["error"]
        return result["reply"]  # type: ignore[no-any-return]

    def _send(self, method: str, url: str, body: bytes | None, deadline: float) -> HttpReply:
        import requests

        headers = {"Accept": "application/ocsp-response", "Accept-Encoding": "identity"}
        if body is not None:
            headers["Content-Type"] = "application/ocsp-request"
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            r = self._session.request(
                method, url, data=body, headers=headers, stream=True,
                allow_redirects=False, timeout=(remaining, remaining), proxies=self._proxies,
            )
        except requests.exceptions.Timeout:
            raise FetchError(f"responder {_origin(url)} timed out") from None
        except requests.exceptions.ProxyError as e:
            raise FetchError(f"proxy failed for {_origin(url)}: {_reason(e)}") from None
        except requests.exceptions.RequestException as e:
            raise FetchError(f"cannot reach responder {_origin(url)}: {_reason(e)}") from None
        try:
            length = r.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise FetchError(f"responder {_origin(url)} sent {length} bytes; the cap is {self.max_bytes}")
            data = bytearray()
            while True:
                if time.monotonic() > deadline:
                    raise FetchError(f"responder {_origin(url)} gave no complete answer within {self.timeout:g} s")
                chunk = r.raw.read1(_CHUNK)
                if not chunk:
                    break
                data += chunk
                if len(data) > self.max_bytes:
                    raise FetchError(f"responder {_origin(url)} sent more than {self.max_bytes} bytes")
        except requests.exceptions.RequestException as e:
            raise FetchError(f"responder {_origin(url)} broke off: {_reason(e)}") from None
        except OSError as e:
            raise FetchError(f"responder {_origin(url)} broke off: {_reason(e)}") from None
        except Exception as e:  # urllib3's own errors (ProtocolError, ReadTimeoutError)
            if isinstance(e, FetchError):
                raise
            raise FetchError(f"responder {_origin(url)} broke off: {_reason(e)}") from None
        finally:
            r.close()
        return HttpReply(status=r.status_code, body=bytes(data), headers={k.lower(): v for k, v in r.headers.items()})


def _origin(url: str) -> str:
    # A GET URL carries the whole base64 request: name the server, not that.
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def _reason(e: BaseException) -> str:
    """The innermost, most specific words of a requests/urllib3 exception chain."""
    inner: BaseException = e
    seen = set()
    while True:
        nxt = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        if not isinstance(nxt, BaseException) or id(nxt) in seen:
            break
        seen.add(id(nxt))
        inner = nxt
    text = str(inner) or type(inner).__name__
    if ": " in text and text.startswith("<"):
        text = text.split(": ", 1)[1]
    return text.splitlines()[0][:160]
