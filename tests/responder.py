"""A real HTTP OCSP responder on 127.0.0.1 that can misbehave on purpose.

It answers GET (RFC 6960 A.1) and POST requests.  What it answers is a
:class:`Reply` chosen by ``responder.reply_for``; the ``FAULTS`` table names
the misbehaviours the tests need.  It counts requests (and concurrent ones)
so that tests can assert that a run made none.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from cryptography.x509 import ocsp
from pki import CA, DAY, HOUR, Issued, unsuccessful


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/ocsp-response"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    close: bool = False  # close the connection without answering
    trickle: float = 0.0  # seconds between single body bytes
    huge: int = 0  # stream this many bytes of junk as the body
    no_length: bool = False  # no Content-Length: the body ends when the connection closes


@dataclass
class Seen:
    method: str
    path: str
    serials: list[int]


class Responder:
    """Start with ``with Responder(ca, leaf) as r:``; ``r.url`` is its address."""

    def __init__(self, ca: CA, leaf: Issued | None = None) -> None:
        self.ca = ca
        self.leaf = leaf
        self.reply_for: Callable[[ocsp.OCSPRequest | None], Reply] = lambda req: Reply(self.good())
        self.seen: list[Seen] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- answers ---------------------------------------------------------
    def good(self, **kw) -> bytes:
        assert self.leaf is not None
        return self.ca.respond(self.leaf.cert, **kw)

    def serve(self, body_or_reply: bytes | Reply) -> None:
        """Answer every request with this response (or Reply)."""
        reply = body_or_reply if isinstance(body_or_reply, Reply) else Reply(body_or_reply)
        self.reply_for = lambda req: reply

    def fault(self, name: str) -> None:
        self.serve(FAULTS[name](self))

    @property
    def requests(self) -> int:
        return len(self.seen)

    # -- server ----------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> "Responder":
        responder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as real responders: with Nagle and delayed ACKs every
            # answer on a reused connection waited 40 ms.
            disable_nagle_algorithm = True

            def log_message(self, *a) -> None:  # keep pytest output clean
                pass

            def setup(self) -> None:
                super().setup()
                with responder._lock:
                    responder._conns.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with responder._lock:
                        responder._conns.discard(self.connection)

            def do_GET(self) -> None:
                # The request is the last path segment (RFC 6960 A.1), also
                # behind a path prefix or in a proxied absolute URL.
                raw = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
                try:
                    der = base64.b64decode(raw, validate=True)
                except ValueError:
                    der = b""
                responder._handle(self, "GET", der)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                responder._handle(self, "POST", self.rfile.read(n))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for the loop to notice.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        # A kept-alive connection that a client still holds would keep its
        # handler thread waiting for a next request after the test: ended here,
        # so that no thread outlives the responder.
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _handle(self, h: BaseHTTPRequestHandler, method: str, der: bytes) -> None:
        try:
            req = ocsp.load_der_ocsp_request(der)
            serials = [req.serial_number]
        except ValueError:
            req, serials = None, []
        with self._lock:
            self.seen.append(Seen(method, h.path, serials))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        # ``active`` counts a request from its arrival until its answer is about
        # to be sent: once the answer is out, the client may send its next one
        # before this thread is back from writing, and counting to the end of
        # the write would then see one more than the client ever had in flight.
        try:
            r = self.reply_for(req)
            if r.delay:
                time.sleep(r.delay)
        finally:
            with self._lock:
                self.active -= 1
        self._answer(h, r)

    def _answer(self, h: BaseHTTPRequestHandler, r: Reply) -> None:
        if r.close:
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        # A Reply's own Date (a responder whose clock is off) replaces the one
        # send_response() stamps, rather than adding a second Date header.
        own_date = r.headers.get("Date")
        if own_date is not None:
            h.date_time_string = lambda timestamp=None: own_date  # type: ignore[method-assign]
        else:
            h.__dict__.pop("date_time_string", None)
        h.send_response(r.status)
        h.send_header("Content-Type", r.content_type)
        for k, v in r.headers.items():
            if k != "Date":
                h.send_header(k, v)
        if r.no_length:
            h.send_header("Connection", "close")
            h.close_connection = True
        length = (lambda n: None) if r.no_length else (lambda n: h.send_header("Content-Length", str(n)))
        try:
            if r.huge:
                length(r.huge)
                h.end_headers()
                chunk = b"\x30" * 65536
                sent = 0
                while sent < r.huge:
                    h.wfile.write(chunk)
                    sent += len(chunk)
            elif r.trickle:
                length(len(r.body))
                h.end_headers()
                for b in r.body:
                    h.wfile.write(bytes([b]))
                    h.wfile.flush()
                    time.sleep(r.trickle)
            else:
                length(len(r.body))
                h.end_headers()
                h.wfile.write(r.body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _other_serial(r: Responder) -> bytes:
    other = r.ca.issue("other.example")
    return r.ca.respond(other.cert)


def _wrong_ca(r: Responder) -> bytes:
    # An unrelated CA with the very same subject name signs, naming itself.
    impostor = CA.root(r.ca.cert.subject.rfc4514_string().split("=", 1)[1])
    assert r.leaf is not None
    return impostor.respond(r.leaf.cert, issuer=r.ca.cert, signer=impostor)


def _no_eku_delegate(r: Responder) -> bytes:
    return r.good(signer=r.ca.delegate("No EKU Responder", eku=False))


# Each fault: responder -> the body (or Reply) to serve.
FAULTS: dict[str, Callable[[Responder], bytes | Reply]] = {
    "revoked": lambda r: r.good(status="revoked"),
    "unknown": lambda r: r.good(status="unknown"),
    "tryLater": lambda r: unsuccessful("tryLater"),
    "internalError": lambda r: unsuccessful("internalError"),
    "unauthorized": lambda r: unsuccessful("unauthorized"),
    "malformedRequest": lambda r: unsuccessful("malformedRequest"),
    "sigRequired": lambda r: unsuccessful("sigRequired"),
    "http500": lambda r: Reply(b"oops", status=500, content_type="text/plain"),
    "html200": lambda r: Reply(b"<html><body>Service Unavailable</body></html>", content_type="text/html"),
    "garbage": lambda r: Reply(b"\x30\x82\x01\x00" + b"\xde\xad\xbe\xef" * 64),
    "empty": lambda r: Reply(b""),
    "close": lambda r: Reply(close=True),
    "slow": lambda r: Reply(r.good(), delay=4.0),
    "trickle": lambda r: Reply(r.good(), trickle=0.2),
    "huge": lambda r: Reply(huge=200 * 1024 * 1024),
    "huge_unannounced": lambda r: Reply(huge=200 * 1024 * 1024, no_length=True),
    "expired": lambda r: r.good(this_update=_now() - 5 * DAY, next_update=_now() - HOUR),
    "future": lambda r: r.good(this_update=_now() + DAY, next_update=_now() + 5 * DAY),
    "other_serial": _other_serial,
    "wrong_ca": _wrong_ca,
    "no_eku_delegate": _no_eku_delegate,
    "redirect": lambda r: Reply(status=302, headers={"Location": r.url + "elsewhere"}),
}


class BlackHole:
    """A responder that accepts connections and never answers: the kernel
    completes each TCP handshake (the socket listens) but nothing ever reads
    or writes.  ``with BlackHole() as hole:``; ``hole.url``."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        assert self._sock is not None
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/"

    def __enter__(self) -> "BlackHole":
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        return self

    def __exit__(self, *exc) -> None:
        assert self._sock is not None
        self._sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
