"""The network edge: the only module that imports requests.

``fetch_response`` holds the RFC 5019 / RFC 6960 request policy (GET when the
URL stays short, POST otherwise or after an error answer) over a
:class:`Transport`, so that tests can pass their own transport object.
"""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import functools
import logging
import os
import queue
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ocspstaple.errors import FetchError, NotAskedError, UnreachableError
from ocspstaple.urls import check_url

log = logging.getLogger(__name__)

# Real OCSP responses are under 4 KiB; 64 KiB is ample and bounds memory.
MAX_RESPONSE_BYTES = 64 * 1024
# RFC 5019 5: GET only while the whole URL stays within 255 bytes.
MAX_GET_URL = 255
DEFAULT_TIMEOUT = 10.0
_CHUNK = 8192

#: At most this many requests to one responder (scheme, host, port) are in
#: flight at once, however many staples are refreshed in parallel (--jobs), so
#: that one CA is never flooded.  8 equals the default --jobs, so a fleet on a
#: single CA (the common case) gets the whole default parallelism; raising
#: --jobs helps only when the staples spread over several responders.  Eight
#: one-round-trip GETs of a few KiB at once is less than one browser page load
#: asks of a server (browsers open six connections per host, each pipelining
#: many requests); a request counts against the cap from just before it is
#: sent until its socket work has really ended, even when the caller has
#: already given up at the deadline.
MAX_PER_HOST = 8
#: A run stops asking a responder origin that has not answered it yet after
#: this many of its requests in a row failed at the network level (timed
#: out, refused, reset) with no answer in between (see Origins): a whole
#: window of requests in flight (MAX_PER_HOST), none answered.  Why not
#: fewer: requests run 8 at once, and a reset comes back at once while an
#: answer takes a round trip, so the failures of a responder that drops
#: some connections arrive together, ahead of its answers.  In the model of
#: tests/test_dead_responders.py (8 in flight, answers after 50 ms, resets
#: after 1 ms, 1,000 requests), a responder that resets one connection in
#: ten was cut off in 137 runs of 200 with 3 failures in a row, and in none
#: with 8 (16 after an answer, below).  Why not more: the 8 in flight to a
#: black hole all time out together, so 8 costs it one --timeout, as 3 did
#: (run one at a time, with --jobs 1, it costs 8).
DOWN_AFTER = MAX_PER_HOST
#: The same for an origin that has answered this run: it is known to be up,
#: and the failures between its answers are the streaks above.  In the same
#: model, at three resets in ten, 8 either way cut it off in 22 runs of 200,
#: 8 and then 16 in 9.  One that dies mid-run costs two --timeouts (two
#: windows) instead of one.
DOWN_AFTER_ANSWERED = 2 * MAX_PER_HOST
# Connections kept for reuse when all requests go through one proxy (every
# responder then shares the proxy's pool): the most staples a run refreshes
# at once (--jobs is at most 256).
_PROXY_POOL = 256


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


@dataclass(frozen=True)
class Fetched:
    """A responder's 200 answer: the body, how it was asked, and its headers."""

    body: bytes
    method: str  # "GET" or "POST"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def max_age(self) -> int | None:
        """Cache-Control max-age in seconds, if the responder gave one."""
        for part in self.headers.get("cache-control", "").split(","):
            name, _, value = part.strip().partition("=")
            value = value.strip().strip('"')
            # isascii: isdigit() is true for "²", which int() refuses
            if name.lower() == "max-age" and value.isascii() and value.isdigit():
                return int(value)
        return None

    @property
    def date(self) -> dt.datetime | None:
        """The HTTP Date header: the responder's clock."""
        return _http_date(self.headers.get("date", ""))


@functools.lru_cache(maxsize=64)
def _http_date(text: str) -> dt.datetime | None:
    # Cached: a run's answers carry the same few Date values (one a second),
    # and email.utils parses each in Python.
    try:
        d = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return d if d.tzinfo is not None else None


def fetch(transport: Transport, url: str, request: bytes, *, uncached: bool = False) -> Fetched:
    """Ask the responder at ``url``; return its 200 answer.

    GET when the URL fits in 255 bytes (cacheable, RFC 5019); POST otherwise,
    and after a 4xx, a 5xx or a malformedRequest answer to GET.  ``uncached``:
    POST at once (caches and CDNs pass POST through to the responder).
    """
    check_url(url)
    gurl = get_url(url, request)
    if not uncached and len(gurl) <= MAX_GET_URL:
        reply = transport.get(gurl)
        if reply.status == 200 and not _is_malformed_request(reply.body):
            return Fetched(reply.body, "GET", reply.headers)
        if not (400 <= reply.status < 600 or reply.status == 200):
            raise FetchError(_http_problem(reply, url))
        log.debug("%s: GET answered HTTP %d; retrying with POST", url, reply.status)
    reply = transport.post(url, request)
    if reply.status != 200:
        raise FetchError(_http_problem(reply, url))
    return Fetched(reply.body, "POST", reply.headers)


def fetch_response(transport: Transport, url: str, request: bytes) -> bytes:
    """The body of the responder's 200 answer (see fetch)."""
    return fetch(transport, url, request).body


def _http_problem(reply: HttpReply, url: str) -> str:
    if 300 <= reply.status < 400:
        where = reply.headers.get("location", "?")
        return f"responder {url} redirected (HTTP {reply.status} to {where}); redirects are not followed"
    return f"responder {url} answered HTTP {reply.status}"


def _is_malformed_request(body: bytes) -> bool:
    # OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED (1 = malformedRequest) }
    # with no responseBytes: exactly 30 03 0a 01 01.
    return body == b"\x30\x03\x0a\x01\x01"


class HostGates:
    """One counting semaphore per responder origin (scheme, host, port).

    Thread-safe.  ``acquire`` blocks until the origin has a free slot; the
    slot is held until ``release``.  Every HttpTransport of a process shares
    one HostGates (SHARED_GATES) unless given its own, so two transports
    (say, two timeouts in one config) never add up to more than the cap.
    """

    def __init__(self, limit: int = MAX_PER_HOST) -> None:
        if limit < 1:
            raise ValueError("a per-host limit must be at least 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._gates: dict[tuple[str, str, int | None], threading.BoundedSemaphore] = {}

    def acquire(self, url: str) -> threading.BoundedSemaphore:
        key = _origin_key(url)
        with self._lock:
            gate = self._gates.get(key)
            if gate is None:
                gate = self._gates[key] = threading.BoundedSemaphore(self.limit)
        gate.acquire()
        return gate


#: The gates shared by every HttpTransport that is not given its own.
SHARED_GATES = HostGates(MAX_PER_HOST)


class Origins:
    """Which responder origins (scheme://host:port) one run found down.

    Thread-safe; one per run, shared by all its transports.  Only failures at
    the network level count (HttpTransport reports them: a timeout, a refused
    or reset connection), and only ``after`` of them in a row
    (``after_answered`` once the origin has answered this run): any answer
    (even HTTP 500 or tryLater: the responder is alive) starts the count
    again.  An origin found down is not asked again this run: ``check``
    raises NotAskedError at once, so its remaining staples fail in
    milliseconds instead of a --timeout each.
    """

    def __init__(self, after: int = DOWN_AFTER, after_answered: int = DOWN_AFTER_ANSWERED) -> None:
        self.after = max(1, after)
        self.after_answered = max(self.after, after_answered)
        self._lock = threading.Lock()
        #: origin -> how the requests of the current streak of failures failed
        self._streaks: dict[str, list[str]] = {}
        #: origins that have answered this run
        self._answered: set[str] = set()

    def _needed(self, origin: str) -> int:
        return self.after_answered if origin in self._answered else self.after

    def check(self, url: str) -> None:
        """NotAskedError when ``url``'s origin is down."""
        origin = origin_of(url)
        with self._lock:
            streak = self._streaks.get(origin)
            needed = self._needed(origin)
            if streak is None or len(streak) < needed:
                return
            why = _how(streak[-needed:])
        raise NotAskedError(f"not asked: the last {needed} requests to {origin} {why} this run", origin)

    def failed(self, url: str, how: str) -> None:
        """A request to ``url`` got no answer: ``how`` ("timed out", "were refused", ...)."""
        with self._lock:
            self._streaks.setdefault(origin_of(url), []).append(how)

    def answered(self, url: str) -> None:
        origin = origin_of(url)
        with self._lock:
            self._streaks.pop(origin, None)
            self._answered.add(origin)

    def down(self) -> dict[str, str]:
        """The origins down now, each with words on how: "its last 8 requests timed out"."""
        with self._lock:
            needed = {o: self._needed(o) for o in self._streaks}
            return {o: f"its last {needed[o]} requests {_how(s[-needed[o]:])}"
                    for o, s in self._streaks.items() if len(s) >= needed[o]}


def _how(kinds: list[str]) -> str:
    distinct = list(dict.fromkeys(kinds))
    return distinct[0] if len(distinct) == 1 else f"failed ({', '.join(distinct)})"


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL, the port always given."""
    return _origin_text(_head(url))


@functools.lru_cache(maxsize=256)
def _origin_text(head: str) -> str:
    scheme, host, port = _origin_key_of(head)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


class _Workers:
    """Daemon threads that run requests, reused from one request to the next.

    Starting a thread per request costs more than the request on loopback
    once several staples run at once (the new thread has to win the GIL
    before start() returns).  A call runs on an idle worker, or on a new one
    when none is idle, so a request never waits for another to finish.
    Daemon threads: a request abandoned at its deadline never holds up the
    exit of the process.  Idle workers leave after IDLE seconds.
    """

    IDLE = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = 0
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def run(self, task: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # that worker is spoken for
        self._tasks.put(task)
        if spawn:
            threading.Thread(target=self._loop, name="ocspstaple-http", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0 and self._tasks.empty():
                        self._idle -= 1
                        return
                continue
            try:
                task()
            except BaseException:  # tasks catch their own errors; never lose a worker
                log.debug("request worker: unexpected error", exc_info=True)
            with self._lock:
                self._idle += 1


_WORKERS = _Workers()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: the idle workers and
    the per-host slots they held are not its own.  Start afresh."""
    global _WORKERS, SHARED_GATES
    _WORKERS = _Workers()
    SHARED_GATES = HostGates(MAX_PER_HOST)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _head(url: str) -> str:
    """``scheme://netloc`` of a URL, cut where urlsplit ends the netloc: the
    origin of every request to a responder is worked out once (a GET URL
    carries the whole request, so no two URLs are alike)."""
    start = url.find("//")
    if start < 0:
        return url
    end = len(url)
    for c in "/?#":
        i = url.find(c, start + 2)
        if 0 <= i < end:
            end = i
    return url[:end]


def _origin_key(url: str) -> tuple[str, str, int | None]:
    return _origin_key_of(_head(url))


@functools.lru_cache(maxsize=256)
def _origin_key_of(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class HttpTransport:
    """HTTP over requests with a total wall-clock deadline and a size cap.

    requests' own timeout bounds each socket read, so a server trickling one
    byte at a time would defeat it; every request therefore runs in a worker
    thread that the caller stops waiting for at the deadline, and the worker
    itself gives up at the deadline between reads.

    Thread-safe: many threads may call ``get``/``post`` at once.  Each call
    has its own worker thread and result; the requests.Session (a connection
    pool per origin, sized to the per-host cap) is shared, so connections are
    reused across staples.  At most ``gates.limit`` requests per origin are in
    flight (MAX_PER_HOST by default): a call waits for a slot before its
    deadline starts, and the worker holds the slot until its socket work has
    ended, so a request abandoned at the deadline still counts until it is
    really over.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        proxy: str | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
        gates: HostGates | None = None,
        origins: Origins | None = None,
    ) -> None:
        import requests  # imported here: start-up time of `ocspstaple --help`
        from requests.adapters import HTTPAdapter

        if proxy is not None:
            check_url(proxy, "proxy")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._gates = gates if gates is not None else SHARED_GATES
        #: the run's record of origins that are down (None: never cut off)
        self._origins = origins
        self._session = requests.Session()
        # Keep as many connections per origin as may be in flight, so that
        # none is opened only to be thrown away.  Through a proxy every
        # origin shares the proxy's pool.
        proxied = proxy is not None or bool(_env_proxies())
        pool = _PROXY_POOL if proxied else self._gates.limit
        for prefix in ("http://", "https://"):
            self._session.mount(prefix, HTTPAdapter(pool_connections=32, pool_maxsize=pool, max_retries=0))
        self._proxies = {"http": proxy, "https": proxy} if proxy else {}
        # requests reads the environment (HTTP_PROXY/http_proxy, NO_PROXY,
        # REQUESTS_CA_BUNDLE, ~/.netrc) again for every request when
        # trust_env is on: a third of a request's CPU.  The environment does
        # not change during a run, so it is read once per origin
        # (_environment) and handed to each request; the session itself
        # reads nothing.
        self._session.trust_env = False
        self._headers = {**self._session.headers, "Accept": "application/ocsp-response", "Accept-Encoding": "identity"}
        self._env_lock = threading.Lock()
        self._env: dict[str, dict[str, Any]] = {}

    def get(self, url: str) -> HttpReply:
        return self._bounded("GET", url, None)

    def post(self, url: str, body: bytes) -> HttpReply:
        return self._bounded("POST", url, body)

    def close(self) -> None:
        self._session.close()

    def _bounded(self, method: str, url: str, body: bytes | None) -> HttpReply:
        origins = self._origins
        if origins is not None:
            origins.check(url)  # before waiting for a slot behind requests that are failing
        # Wait for a slot first: time spent queueing behind other staples for
        # the same responder is not the responder's slowness.
        gate = self._gates.acquire(url)
        if origins is not None:
            try:
                origins.check(url)  # the requests ahead may have found it down meanwhile
            except NotAskedError:
                gate.release()
                raise
        deadline = time.monotonic() + self.timeout
        result: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                result["reply"] = self._send(method, url, body, deadline)
            except BaseException as e:  # handed to the caller below
                result["error"] = e
            finally:
                gate.release()
                done.set()

        try:
            _WORKERS.run(run)
        except BaseException:
            gate.release()
            raise
        if not done.wait(self.timeout):
            if origins is not None:
                origins.failed(url, "timed out")
            raise UnreachableError(f"responder {_origin(url)} gave no complete answer within {self.timeout:g} s",
                                   origin_of(url), "timed out")
        error = result.get("error")
        if origins is not None:
            if isinstance(error, UnreachableError):
                origins.failed(url, error.how)
            elif error is None or isinstance(error, FetchError):  # an answer, even a bad one
                origins.answered(url)
        if error is not None:
            raise error
        return result["reply"]  # type: ignore[no-any-return]

    def _send(self, method: str, url: str, body: bytes | None, deadline: float) -> HttpReply:
        import requests

        headers = self._headers if body is None else {**self._headers, "Content-Type": "application/ocsp-request"}
        settings = self._environment(url)
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            # Prepared here and sent by the session: what Session.request
            # would merge in (the session's headers, the environment) is
            # merged once, in __init__ and _environment; there are no cookies.
            prepared = requests.Request(method, url, data=body, headers=headers,
                                        auth=settings["auth"]).prepare()
            r = self._session.send(prepared, stream=True, allow_redirects=False, timeout=(remaining, remaining),
                                   proxies=settings["proxies"], verify=settings["verify"], cert=settings["cert"])
        except requests.exceptions.Timeout:
            raise UnreachableError(f"responder {_origin(url)} timed out", origin_of(url), "timed out") from None
        except requests.exceptions.ProxyError as e:
            raise UnreachableError(f"proxy failed for {_origin(url)}: {_reason(e)}", origin_of(url), _kind(e)) from None
        except requests.exceptions.RequestException as e:
            raise UnreachableError(f"cannot reach responder {_origin(url)}: {_reason(e)}", origin_of(url),
                                   _kind(e)) from None
        try:
            length = r.headers.get("Content-Length")
            if length is not None and length.isascii() and length.isdigit() and int(length) > self.max_bytes:
                raise FetchError(f"responder {_origin(url)} sent {length} bytes; the cap is {self.max_bytes}")
            data = bytearray()
            while True:
                if time.monotonic() > deadline:
                    raise UnreachableError(
                        f"responder {_origin(url)} gave no complete answer within {self.timeout:g} s",
                        origin_of(url), "timed out")
                chunk = r.raw.read1(_CHUNK)
                if not chunk:
                    break
                data += chunk
                if len(data) > self.max_bytes:
                    raise FetchError(f"responder {_origin(url)} sent more than {self.max_bytes} bytes")
        except FetchError:
            raise
        except Exception as e:  # requests', urllib3's (ProtocolError, ReadTimeoutError) and socket errors
            raise UnreachableError(f"responder {_origin(url)} broke off: {_reason(e)}", origin_of(url),
                                   _kind(e)) from None
        finally:
            r.close()
        return HttpReply(status=r.status_code, body=bytes(data), headers={k.lower(): v for k, v in r.headers.items()})


    def _environment(self, url: str) -> dict[str, Any]:
        """What requests would take from the environment for ``url`` (proxies
        with NO_PROXY applied, the CA bundle, netrc credentials), worked out
        once per origin with requests' own functions."""
        origin = origin_of(url)
        with self._env_lock:
            settings = self._env.get(origin)
        if settings is None:
            import requests.utils

            env = requests.Session()  # never sends: only its reading of the environment is used
            settings = env.merge_environment_settings(url, dict(self._proxies), None, None, None)
            del settings["stream"]
            settings["auth"] = requests.utils.get_netrc_auth(url)
            env.close()
            with self._env_lock:
                self._env[origin] = settings
        return settings


def _env_proxies() -> dict[str, str]:
    """HTTP(S) proxies named in the environment (requests honours them too)."""
    import urllib.request

    return {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https") and v}


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
    if isinstance(inner, OSError) and inner.strerror:
        text = inner.strerror  # "Connection refused", not "[Errno 111] Connection refused"
    else:
        text = str(inner) or type(inner).__name__
    if ": " in text and text.startswith("<"):
        text = text.split(": ", 1)[1]
    text = _ERRNO.sub("", text)
    return (text.splitlines() or [type(inner).__name__])[0][:160]


def _kind(e: BaseException) -> str:
    """How a request got no answer, for Origins: "timed out", "were refused",
    "were reset" or "failed" (a name that does not resolve, a TLS error...)."""
    import socket

    seen: set[int] = set()
    inner: BaseException | None = e
    while isinstance(inner, BaseException) and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, (TimeoutError, socket.timeout)) or "timed out" in str(inner).lower():
            return "timed out"
        if isinstance(inner, ConnectionRefusedError):
            return "were refused"
        if isinstance(inner, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return "were reset"
        if type(inner).__name__ in ("RemoteDisconnected", "IncompleteRead", "ProtocolError"):
            text = str(inner).lower()
            if "reset" in text or "aborted" in text or "closed" in text or "without response" in text:
                return "were reset"
        nxt = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        inner = nxt if isinstance(nxt, BaseException) else (
            inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None)
    return "failed"


#: The "[Errno 111] " that Python puts before an OSError's words
_ERRNO = re.compile(r"\[Errno -?\d+\] ")
