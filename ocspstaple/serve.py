"""``ocspstaple serve``: a local OCSP responder that answers from the staple files.

Stock httpd 2.4 cannot read a staple from a file, but mod_ssl sends its OCSP
requests wherever ``SSLStaplingForceURL`` says.  This server answers them with
the staple that ``refresh`` wrote and validated, re-read and re-validated
whenever the file changes.  It never contacts the CA, so a CA outage never
reaches httpd: the timer keeps the files fresh.

Answers: the staple for a known CertID; ``tryLater`` when there is no valid
staple for it right now; ``unauthorized`` for a certificate it does not
hold; ``malformedRequest`` for anything that is not one OCSP request.

It is also a cache origin (RFC 5019 section 6), for a fleet whose edges ask
one relay through an HTTP cache: a GET answered with a staple carries
Last-Modified (its producedAt), a strong ETag (SHA-256 of the DER), Expires
and ``Cache-Control: max-age=N, public, no-transform, must-revalidate``,
where N runs out at the staple's own refresh point (or 5 minutes before it
expires, if sooner), so a cache never holds it once a fresher one is due;
If-None-Match and If-Modified-Since get 304.  POST answers and every error
answer are ``no-cache``.  Nothing in an answer tells a client about the
server's files or its errors: OCSP answers are DER, HTTP errors a fixed
line of text, and the log alone names paths.

The server holds under hostile clients (any local user can connect to it):
one thread and a selector, no thread per connection; a request line and
headers of at most a few KiB and a body of at most MAX_REQUEST; every request
must arrive whole within REQUEST_TIMEOUT; at most MAX_CONNECTIONS at once,
the oldest dropped for a new one, so that slow or idle connections cannot
crowd out a real request.  Staple files are read without blocking (a FIFO
swapped in for a staple is refused at once, store.read_owned) and nothing
is locked: there is one thread.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import logging
import os
import selectors
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocspstaple.certs import Pair, issuer_hashes, load_pair
from ocspstaple.config import Staple
from ocspstaple.errors import InputError, ValidationError
from ocspstaple.store import Store
from ocspstaple.validate import MIN_REMAINING, VerifiedResponse, check_window, verify

log = logging.getLogger(__name__)

#: An OCSP request is a few hundred bytes; refuse to read more than this.
MAX_REQUEST = 16 << 10
#: Request line and headers together (mod_ssl sends about 150 bytes).
MAX_HEAD = 8 << 10
#: The request line alone (a GET carries the base64 request in it).
MAX_REQUEST_LINE = 4 << 10
#: Seconds a request may take to arrive whole (and an idle connection may stay).
REQUEST_TIMEOUT = 10.0
#: Connections held at once; beyond, the oldest is closed.
MAX_CONNECTIONS = 256
#: In a GET, the split points tried between the responder's path and the
#: base64 request (unencoded base64 has slashes of its own); a real request
#: has a handful.
MAX_GET_SPLITS = 64
#: CertID hash algorithms answered: SHA-1, the one of the staples refresh
#: asks for and of mod_ssl's requests.  A request with another hash gets
#: unauthorized: its client could not match the staple's SHA-1 CertID.
HASHES: tuple[hashes.HashAlgorithm, ...] = (hashes.SHA1(),)

Clock = Callable[[], dt.datetime]
CertIdKey = tuple[str, bytes, bytes, int]  # hash name, issuerNameHash, issuerKeyHash, serial


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


TRY_LATER = _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
UNAUTHORIZED = _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
MALFORMED = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)


@dataclass
class _Entry:
    """One certificate served, and what its staple file held when last read."""

    staple: Staple
    pair: Pair
    seen: tuple[int, int, int, int] | None = None  # (dev, ino, size, mtime_ns) of the file last read
    response: VerifiedResponse | None = None
    problem: str = "not read yet"


@dataclass(frozen=True)
class Answer:
    """What one OCSP request is answered with."""

    der: bytes
    #: for the log only (it may name files): never sent
    what: str
    #: the staple answered with; None for an error answer
    response: VerifiedResponse | None = None
    staple: Staple | None = None


def cache_headers(response: VerifiedResponse, staple: Staple, *, now: dt.datetime) -> tuple[tuple[str, str], ...]:
    """RFC 5019 section 6.2's headers for a GET answered with ``response``.

    max-age ends at the staple's refresh point (refresh_at of its window,
    at most max_refresh_interval after thisUpdate: when refresh fetches a
    fresher one), or 5 minutes before it expires if that is sooner (an edge
    refuses a response with less left, validate.MIN_REMAINING), and is 0
    once that has passed: a cache then asks again every time, cheaply with
    a conditional GET.  Expires says the same moment (not nextUpdate, as
    RFC 5019's example has it), for caches that read Expires alone.
    Last-Modified is producedAt (RFC 5019), never later than now (RFC 9110
    8.8.2.1).
    """
    until = min(response.refresh_due(staple.refresh_at, staple.max_refresh_interval),
                response.expires - MIN_REMAINING)
    max_age = max(0, int((until - now).total_seconds()))
    return (("Last-Modified", _http_date(last_modified(response, now=now))),
            ("ETag", etag(response.der)),
            ("Expires", _http_date(now + dt.timedelta(seconds=max_age))),
            ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"))


def etag(der: bytes) -> str:
    """A strong entity tag for one response (RFC 5019: a hash of the response)."""
    return '"' + hashlib.sha256(der).hexdigest() + '"'


def last_modified(response: VerifiedResponse, *, now: dt.datetime) -> dt.datetime:
    return min(response.produced_at, now).replace(microsecond=0)


def not_modified(headers: dict[str, str], response: VerifiedResponse, *, now: dt.datetime) -> bool:
    """Whether a conditional GET gets 304 (RFC 9110 13.2.2: If-None-Match
    first; If-Modified-Since only without it).

    If-Modified-Since must name exactly this staple's Last-Modified, not any
    later date: a validly signed revocation may replace a good staple with
    an older producedAt (it is written whatever its age), and a cache that
    asked "modified since the good one?" must get the revocation."""
    inm = headers.get("if-none-match")
    if inm is not None:
        tag = etag(response.der)
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or tag in tags
    ims = headers.get("if-modified-since")
    if ims is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError, OverflowError):  # a date that is no date: ignored (RFC 9110)
        return False
    if since.tzinfo is None:
        return False
    return since == last_modified(response, now=now)


def _http_date(t: dt.datetime) -> str:
    return email.utils.format_datetime(t.astimezone(dt.timezone.utc).replace(microsecond=0), usegmt=True)


class StapleIndex:
    """The staples served, found by CertID; files re-read when they change."""

    def __init__(self, staples: Sequence[Staple], *, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.entries: dict[CertIdKey, _Entry] = {}
        self.failed = 0
        for st in staples:
            try:
                pair = load_pair(st.cert, st.issuer)
            except InputError as e:
                log.error("%s: %s; not served", st.name, e)
                self.failed += 1
                continue
            entry = _Entry(staple=st, pair=pair)
            for algorithm in HASHES:
                name_hash, key_hash = issuer_hashes(pair.issuer, algorithm)
                self.entries.setdefault((algorithm.name, name_hash, key_hash, pair.cert.serial_number), entry)

    def lookup(self, request_der: bytes) -> Answer:
        """The answer to one request, with the staple behind it, if any."""
        try:
            req = ocsp.load_der_ocsp_request(request_der)
            key = (req.hash_algorithm.name, req.issuer_name_hash, req.issuer_key_hash, req.serial_number)
        except Exception:  # cryptography raises several types on hostile bytes
            return Answer(MALFORMED, "malformed request")
        entry = self.entries.get(key)
        if entry is None:
            return Answer(UNAUTHORIZED, f"unknown certificate (serial {req.serial_number:X})")
        response = self._current(entry)
        if response is None:
            return Answer(TRY_LATER, f"{entry.staple.name}: no valid staple ({entry.problem})")
        return Answer(response.der, f"{entry.staple.name}: {response.status.value} staple", response, entry.staple)

    def _current(self, entry: _Entry) -> VerifiedResponse | None:
        """The entry's staple if it is valid now; re-read the file if it changed."""
        path = entry.staple.output
        try:
            # Only to notice a change; the read itself is store.read's, which
            # trusts no FIFO, foreign link or foreign directory.
            st = os.stat(path)
            seen: tuple[int, int, int, int] | None = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            seen = None
        if seen is None or seen != entry.seen:
            entry.seen = seen
            self._reload(entry)
        response = entry.response
        if response is None:
            return None
        try:
            check_window(response, now=self.clock())
        except ValidationError as e:
            entry.problem = str(e)
            return None
        return response

    def _reload(self, entry: _Entry) -> None:
        st = entry.staple
        entry.response = None
        try:
            data = self.store.read(st.output)
        except Exception as e:  # StoreError, or the file vanished between stat and read
            entry.problem = str(e)
            log.warning("%s: cannot read %s: %s", st.name, st.output, e)
            return
        if data is None:
            entry.problem = f"{st.output} does not exist"
            log.warning("%s: no staple at %s yet", st.name, st.output)
            return
        try:
            entry.response = verify(data, pair=entry.pair, default_validity=st.default_validity)
        except ValidationError as e:
            entry.problem = f"{st.output} is unusable: {e}"
            log.warning("%s: %s is unusable, answering tryLater: %s", st.name, st.output, e)
            return
        entry.problem = ""
        log.info("%s: serving %s (thisUpdate %s)", st.name, st.output, entry.response.this_update.isoformat())


def _b64(text: str) -> bytes | None:
    padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _is_request(data: bytes) -> bool:
    try:
        ocsp.load_der_ocsp_request(data)
    except Exception:  # cryptography raises several types on hostile bytes
        return False
    return True


def get_request(target: str) -> bytes | None:
    """The DER request in a GET's request-target, or None.

    RFC 6960 A.1: the URL-encoded base64 request follows the responder's
    path; unencoded base64 has slashes of its own, so the last few split
    points are tried, from the longest tail to the shortest that fits."""
    path = urllib.parse.unquote(target.split("?", 1)[0]).lstrip("/")
    parts = path.split("/")
    first = max(0, len(parts) - MAX_GET_SPLITS)
    for i in range(first, len(parts)):
        request = _b64("/".join(parts[i:]))
        if request is not None and _is_request(request):
            return request
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    # isascii: isdigit() is true for "²", which int() refuses
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise InputError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8089")
    return host.strip("[]"), int(port)


class _HttpError(Exception):
    """A request answered with an HTTP error, and the connection closed."""

    def __init__(self, code: int, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.code, self.reason, self.extra = code, reason, extra


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""


class _Conn:
    """One client connection: what came in, what goes out, and until when."""

    __slots__ = ("sock", "peer", "inbuf", "outbuf", "deadline", "head", "close_after")

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = deadline
        self.head: _Request | None = None  # parsed, waiting for its body
        self.close_after = False


def _parse_head(raw: bytes) -> _Request:
    lines = raw.decode("latin-1").split("\n")
    line = lines[0].rstrip("\r")
    if len(line) > MAX_REQUEST_LINE:
        raise _HttpError(414, "request too large")
    words = line.split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/1."):
        raise _HttpError(400, "bad request line")
    method, target, version = words
    headers: dict[str, str] = {}
    for h in lines[1:]:
        h = h.rstrip("\r")
        if not h:
            continue
        name, sep, value = h.partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(400, "bad header")
        headers[name.lower()] = value.strip()
    return _Request(method, target, version, headers)


def _response(code: int, reason: str, body: bytes, content_type: str | None, *, close: bool,
              extra: tuple[tuple[str, str], ...] = (), date: dt.datetime | None = None) -> bytes:
    """One HTTP answer; ``content_type`` None: a 304, which has no body and
    says nothing of its length."""
    stamp = email.utils.formatdate(usegmt=True) if date is None else _http_date(date)
    head = [f"HTTP/1.1 {code} {reason}", "Server: ocspstaple", f"Date: {stamp}"]
    if content_type is not None:
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in extra]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_REASONS = {400: "Bad Request", 405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
            414: "URI Too Long", 417: "Expectation Failed", 431: "Request Header Fields Too Large"}


class OcspServer:
    """The responder: one thread, one selector, bounded everywhere (see the
    module's docstring).  serve_forever() runs it; shutdown() from another
    thread stops it; server_close() releases the socket."""

    def __init__(self, address: tuple[str, int], index: StapleIndex, *,
                 max_connections: int = MAX_CONNECTIONS, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.index = index
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        #: by socket; insertion order is age order, oldest first
        self._conns: dict[socket.socket, _Conn] = {}
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    # -- the loop --

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stop.clear()
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                soonest = min((c.deadline for c in self._conns.values()), default=now + poll_interval)
                timeout = max(0.0, min(poll_interval, soonest - now))
                for key, events in self._selector.select(timeout):
                    if key.data == "wake":
                        self._drain_wake()
                    elif key.data is None:
                        self._accept()
                    else:
                        self._event(key.data, events)
                self._expire(time.monotonic())
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait until it has."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait()

    def server_close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        for s in (self.socket, self._wake_r, self._wake_w):
            s.close()
        self._selector.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time; the rest at the next turn
            try:
                sock, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the clients wait in the backlog
                log.debug("accept failed: %s", e)
                return
            if len(self._conns) >= self.max_connections:
                oldest = next(iter(self._conns.values()))
                log.debug("%s: connection dropped: %d open, a newer one came", oldest.peer, len(self._conns))
                self._close(oldest)
            sock.setblocking(False)
            with _quiet():
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, str(peer[0]), time.monotonic() + self.request_timeout)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            log.debug("%s: closed: no whole request within %g s", conn.peer, self.request_timeout)
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        with _quiet():
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def _event(self, conn: _Conn, events: int) -> None:
        try:
            if events & selectors.EVENT_READ:
                self._read(conn)
            if conn.sock in self._conns and events & selectors.EVENT_WRITE:
                self._write(conn)
        except OSError as e:  # reset by the peer, and the like
            log.debug("%s: %s", conn.peer, e)
            self._close(conn)
        except Exception as e:  # a bug: one line (the traceback with -vv), that connection dropped, the rest served
            log.error("internal error answering %s: %s: %s; please report", conn.peer, type(e).__name__, e,
                      exc_info=True)
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        data = conn.sock.recv(16 << 10)
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        self._process(conn)

    def _process(self, conn: _Conn) -> None:
        """Answer every whole request in the input buffer."""
        while conn.sock in self._conns and not conn.close_after:
            try:
                request = self._next_request(conn)
            except _HttpError as e:
                log.debug("%s: %d %s", conn.peer, e.code, e.reason)
                self._send(conn, _response(e.code, _REASONS.get(e.code, "Error"), (e.reason + "\n").encode(),
                                           "text/plain", close=True, extra=e.extra), close=True)
                return
            if request is None:
                return
            close = (request.version == "HTTP/1.0" or request.headers.get("connection", "").lower() == "close")
            answer = self._answer(request)
            conn.deadline = time.monotonic() + self.request_timeout  # for the answer to go, and the next to come
            if not self._send(conn, self._reply(conn, request, answer, close=close), close=close):
                return  # the rest when the client has read this answer

    def _reply(self, conn: _Conn, request: _Request, answer: Answer, *, close: bool) -> bytes:
        """The HTTP answer: cacheable for a staple asked by GET (a cache
        keys on the URL; a POST has its request in the body), no-cache
        otherwise (an error now may be a staple a minute later)."""
        if request.method != "GET" or answer.response is None or answer.staple is None:
            log.debug("%s %s: %s", conn.peer, request.method, answer.what)
            return _response(200, "OK", answer.der, "application/ocsp-response", close=close,
                             extra=(("Cache-Control", "no-cache"),))
        now = self.index.clock()
        extra = cache_headers(answer.response, answer.staple, now=now)
        if not_modified(request.headers, answer.response, now=now):
            log.debug("%s %s: %s, not modified", conn.peer, request.method, answer.what)
            return _response(304, "Not Modified", b"", None, close=close, extra=extra, date=now)
        log.debug("%s %s: %s", conn.peer, request.method, answer.what)
        return _response(200, "OK", answer.der, "application/ocsp-response", close=close, extra=extra, date=now)

    def _next_request(self, conn: _Conn) -> _Request | None:
        """The next whole request from the buffer (None: not all of it yet)."""
        if conn.head is None:
            first = conn.inbuf.find(b"\n", 0, MAX_REQUEST_LINE + 2)
            if first < 0 and len(conn.inbuf) > MAX_REQUEST_LINE:
                raise _HttpError(414, "request too large")
            end = conn.inbuf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            size = 4
            if end < 0:
                end, size = conn.inbuf.find(b"\n\n", 0, MAX_HEAD + 2), 2
            if end < 0:
                if len(conn.inbuf) > MAX_HEAD:
                    raise _HttpError(431, "request head too large")
                return None
            if end > MAX_HEAD:
                raise _HttpError(431, "request head too large")
            head = _parse_head(bytes(conn.inbuf[:end]))
            del conn.inbuf[:end + size]
            if head.method not in ("GET", "POST"):
                raise _HttpError(405, "only GET and POST", (("Allow", "GET, POST"),))
            if head.method == "POST":
                length = head.headers.get("content-length")
                # isascii: isdigit() is true for "²", which int() refuses
                if (length is None or not (length.isascii() and length.isdigit())
                        or "transfer-encoding" in head.headers):
                    raise _HttpError(411, "Content-Length required")
                if int(length) > MAX_REQUEST:
                    raise _HttpError(413, "request too large")
                expect = head.headers.get("expect", "").lower()
                if expect == "100-continue":
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                elif expect:
                    raise _HttpError(417, "unknown expectation")
            conn.head = head
        head = conn.head
        want = int(head.headers["content-length"]) if head.method == "POST" else 0
        if len(conn.inbuf) < want:
            return None
        head.body = bytes(conn.inbuf[:want])
        del conn.inbuf[:want]
        conn.head = None
        return head

    def _answer(self, request: _Request) -> Answer:
        if request.method == "POST":
            return self.index.lookup(request.body)
        der = get_request(request.target)
        if der is None:
            return Answer(MALFORMED, "malformed GET request")
        return self.index.lookup(der)

    def _send(self, conn: _Conn, data: bytes, *, close: bool) -> bool:
        """Queue an answer and send what the socket takes; True when all of
        it went and the connection stays for the next request."""
        conn.outbuf += data
        conn.close_after = conn.close_after or close
        return self._flush(conn)

    def _write(self, conn: _Conn) -> None:
        if self._flush(conn) and conn.inbuf:
            self._process(conn)  # a pipelined request, read before this answer went

    def _flush(self, conn: _Conn) -> bool:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        del conn.outbuf[:sent]
        if conn.outbuf:
            # Nothing more is read from a client that does not read its answers.
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return False
        if conn.close_after:
            self._close(conn)
            return False
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        return True


class _quiet:
    """Ignore OSError (a socket option or an unregister that no longer matters)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, (OSError, KeyError, ValueError))


def make_server(listen: str, staples: Sequence[Staple], *, store: Store, clock: Clock) -> OcspServer:
    """Bind the server (not yet serving); OSError if the address cannot be had."""
    host, port = parse_listen(listen)
    index = StapleIndex(staples, store=store, clock=clock)
    return OcspServer((host, port), index)


def served_url(server: OcspServer) -> str:
    address, port = server.server_address[:2]
    host = address.decode() if isinstance(address, bytes) else address
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
