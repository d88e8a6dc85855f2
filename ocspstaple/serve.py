"""``ocspstaple serve``: a local OCSP responder that answers from the staple files.

Stock httpd 2.4 cannot read a staple from a file, but mod_ssl sends its OCSP
requests wherever ``SSLStaplingForceURL`` says.  This server answers them with
the staple that ``refresh`` wrote and validated, re-read and re-validated
whenever the file changes.  It never contacts the CA, so a CA outage never
reaches httpd: the timer keeps the files fresh.

Answers: the staple for a known CertID; ``tryLater`` when there is no valid
staple for it right now; ``unauthorized`` for a certificate it does not
hold; ``malformedRequest`` for anything that is not one OCSP request.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import os
import socket
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocspstaple.certs import Pair, issuer_hashes, load_pair
from ocspstaple.config import Staple
from ocspstaple.errors import InputError, ValidationError
from ocspstaple.store import Store
from ocspstaple.validate import VerifiedResponse, check_window, verify

log = logging.getLogger(__name__)

#: An OCSP request is a few hundred bytes; refuse to read more than this.
MAX_REQUEST = 16 << 10
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
    lock: threading.Lock = field(default_factory=threading.Lock)


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

    def answer(self, request_der: bytes) -> tuple[bytes, str]:
        """The DER OCSPResponse for one request, and a word for the log."""
        try:
            req = ocsp.load_der_ocsp_request(request_der)
            key = (req.hash_algorithm.name, req.issuer_name_hash, req.issuer_key_hash, req.serial_number)
        except Exception:  # cryptography raises several types on hostile bytes
            return MALFORMED, "malformed request"
        entry = self.entries.get(key)
        if entry is None:
            return UNAUTHORIZED, f"unknown certificate (serial {req.serial_number:X})"
        response = self._current(entry)
        if response is None:
            return TRY_LATER, f"{entry.staple.name}: no valid staple ({entry.problem})"
        return response.der, f"{entry.staple.name}: {response.status.value} staple"

    def _current(self, entry: _Entry) -> VerifiedResponse | None:
        """The entry's staple if it is valid now; re-read the file if it changed."""
        path = entry.staple.output
        with entry.lock:
            try:
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


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    # isascii: isdigit() is true for "²", which int() refuses
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise InputError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8089")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: OcspServer
    protocol_version = "HTTP/1.1"
    server_version = "ocspstaple"
    sys_version = ""
    # Requests come from the local TLS server; a slow client must not pin a thread forever.
    timeout = 30

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self._plain(411, "Content-Length required")
            return
        if int(length) > MAX_REQUEST:
            self._plain(413, "request too large")
            self.close_connection = True
            return
        self._answer(self.rfile.read(int(length)))

    def do_GET(self) -> None:  # noqa: N802
        # RFC 6960 A.1: the URL-encoded base64 request follows the responder's
        # path; unencoded base64 has slashes of its own, so try each split.
        path = urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
        if len(path) > MAX_REQUEST:
            self._plain(414, "request too large")
            return
        parts = path.split("/")
        for i in range(len(parts)):
            request = _b64("/".join(parts[i:]))
            if request is not None and _is_request(request):
                self._answer(request)
                return
        self._answer_bytes(MALFORMED, "malformed GET request")

    def _answer(self, request: bytes) -> None:
        body, what = self.server.index.answer(request)
        self._answer_bytes(body, what)

    def _answer_bytes(self, body: bytes, what: str) -> None:
        log.debug("%s %s: %s", self.client_address[0], self.command, what)
        self.send_response(200)
        self.send_header("Content-Type", "application/ocsp-response")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def _plain(self, code: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.client_address[0], format % args)


class OcspServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver prints a traceback for an exception in a handler; one
        # line instead (the traceback with -vv), and the server goes on.
        e = sys.exc_info()[1]
        log.error("internal error answering %s: %s: %s; please report", client_address, type(e).__name__, e,
                  exc_info=True)

    def __init__(self, address: tuple[str, int], index: StapleIndex) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.index = index
        super().__init__(address, _Handler)


def make_server(listen: str, staples: Sequence[Staple], *, store: Store, clock: Clock) -> OcspServer:
    """Bind the server (not yet serving); OSError if the address cannot be had."""
    host, port = parse_listen(listen)
    index = StapleIndex(staples, store=store, clock=clock)
    return OcspServer((host, port), index)


def served_url(server: OcspServer) -> str:
    address, port = server.server_address[:2]
    host = address.decode() if isinstance(address, bytes) else address
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

