"""What a TLS server actually staples: one handshake with status_request.

The handshake is ``openssl s_client -status -msg``, run with a deadline.
Every machine that runs nginx, HAProxy or httpd has the openssl program, so
this needs no new runtime dependency (pyOpenSSL's OCSP client callback would
give the DER too, but pins cryptography's version and is a second TLS stack
to keep up to date for one handshake).  Python's ssl module cannot ask for a
staple at all.  s_client prints the staple only as text, but ``-msg`` dumps
every handshake message it received, decrypted, in hex: the Certificate
message (and in TLS 1.2 the CertificateStatus message; in TLS 1.3 the staple
rides in the leaf's status_request extension, RFC 8446 4.4.2.1) holds the
exact DER the server sent, which is then judged by ocspstaple.validate like
any other response.

Nothing here judges: :func:`parse_messages` turns the dump into a
:class:`Served`, and the status module decides.  The handshake itself is a
:class:`Handshake` passed in, so the verdicts are testable without a network.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from ocspstaple.errors import InputError, ServedError
from ocspstaple.text import shown

log = logging.getLogger(__name__)

#: Seconds a handshake may take, connection included.
DEFAULT_TIMEOUT = 10.0

# RFC 8446 4 / RFC 5246 7.4: handshake message types; RFC 6066 8 (status_request = 5, ocsp = 1).
_CERTIFICATE, _CERTIFICATE_STATUS = 11, 22
_STATUS_REQUEST, _OCSP = 5, 1

_HEADER = re.compile(r"^<<< (TLS [0-9.]+|DTLS [0-9.]+|\?\?\?), Handshake \[length [0-9a-f]+\]")
_HEX_LINE = re.compile(r"^ {4}((?:[0-9a-f]{2} ?)+)$")
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))$")
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})$")


@dataclass(frozen=True, kw_only=True)
class Served:
    """What one handshake brought back."""

    #: the certificates the server presented, its own first
    chain: tuple[x509.Certificate, ...]
    #: the stapled OCSPResponse (DER), or None when the server stapled nothing
    staple: bytes | None
    #: "TLS 1.2", "TLS 1.3"
    protocol: str


class Handshake(Protocol):
    """Asks ``address`` (HOST:PORT) for its certificate and staple; ServedError when it cannot."""

    def __call__(self, *, address: str, servername: str | None, timeout: float) -> Served: ...


def check_address(value: str, what: str) -> str:
    """HOST:PORT (``[::1]:443`` for IPv6); InputError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST.match(host) or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{what}: {shown(value)} is not HOST:PORT (e.g. 127.0.0.1:443, [::1]:443)")
    return value


def check_servername(value: str, what: str) -> str:
    """A DNS name for SNI; InputError otherwise (it becomes an argument of openssl)."""
    if not _NAME.match(value):
        raise InputError(f"{what}: {shown(value)} is not a DNS name such as www.example.com")
    return value


def s_client(*, address: str, servername: str | None, timeout: float) -> Served:
    """The :class:`Handshake` of ocspstaple: ``openssl s_client -status -msg``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServedError("the openssl program is not installed (it asks the server for its staple)")
    argv = [openssl, "s_client", "-connect", check_address(address, "connect"), "-status", "-msg"]
    if servername:
        argv += ["-servername", check_servername(servername, "servername")]
    try:
        # stdin closed: s_client ends right after the handshake.
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                           env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise ServedError(f"no TLS handshake within {timeout:g}s") from None
    except OSError as e:
        raise ServedError(f"cannot run openssl: {e.strerror or e}") from None
    out = p.stdout.decode("ascii", "replace")
    try:
        return parse_messages(out)
    except ServedError as e:
        raise ServedError(_connect_failure(p.stderr.decode("utf-8", "replace")) or str(e)) from None


def _connect_failure(stderr: str) -> str | None:
    """Why s_client could not connect, in its own words, shortened."""
    m = re.search(r"connect:errno=(\d+)", stderr)
    if m:
        return f"cannot connect: {os.strerror(int(m.group(1))).lower()}"
    if "BIO_lookup" in stderr or "gethostbyname" in stderr:
        return "cannot resolve the host name"
    return None


def _messages(text: str) -> list[tuple[str, bytes]]:
    """The handshake messages received, as (protocol, bytes with the 4-byte header)."""
    found: list[tuple[str, bytes]] = []
    current: list[str] | None = None
    protocol = ""
    for line in text.splitlines():
        if current is not None:
            m = _HEX_LINE.match(line)
            if m:
                current.append(m.group(1))
                continue
            found.append((protocol, bytes.fromhex("".join(current))))
            current = None
        h = _HEADER.match(line)
        if h:
            protocol, current = h.group(1), []
    if current is not None:
        found.append((protocol, bytes.fromhex("".join(current))))
    return found


class _Reader:
    """Big-endian fields of a TLS structure; ServedError when it runs short."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ServedError("the server sent a truncated handshake message")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def num(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, n: int) -> bytes:
        return self.take(self.num(n))

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _ocsp_of(status: bytes) -> bytes | None:
    """The OCSPResponse of a CertificateStatus structure (RFC 6066 8)."""
    r = _Reader(status)
    return r.vector(3) if r.num(1) == _OCSP else None


def _certificate(body: bytes, tls13: bool) -> tuple[list[x509.Certificate], bytes | None]:
    r = _Reader(body)
    if tls13:
        r.vector(1)  # certificate_request_context
    entries = _Reader(r.vector(3))
    chain: list[x509.Certificate] = []
    staple = None
    while not entries.done():
        der = entries.vector(3)
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise ServedError("the server presented a certificate that cannot be parsed") from None
        if tls13:
            exts = _Reader(entries.vector(2))
            while not exts.done():
                kind, data = exts.num(2), exts.vector(2)
                if kind == _STATUS_REQUEST and len(chain) == 1:
                    staple = _ocsp_of(data)
    return chain, staple


def parse_messages(text: str) -> Served:
    """The certificates and the staple in the output of ``openssl s_client -msg``."""
    chain: list[x509.Certificate] | None = None
    staple = None
    protocol = ""
    for proto, msg in _messages(text):
        if len(msg) < 4:
            continue
        kind, body = msg[0], msg[4:]
        if kind == _CERTIFICATE and chain is None:
            protocol = proto
            chain, staple13 = _certificate(body, tls13=proto == "TLS 1.3")
            staple = staple13 if staple13 is not None else staple
        elif kind == _CERTIFICATE_STATUS:
            staple = _ocsp_of(body)
    if not chain:
        raise ServedError("no TLS handshake (the server presented no certificate)")
    return Served(chain=tuple(chain), staple=staple or None, protocol=protocol)
