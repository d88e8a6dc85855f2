"""Push a validated staple into a running HAProxy over its stats socket.

``set ssl ocsp-response <base64>`` on the runtime API replaces the response
HAProxy staples at once, without a reload (HAProxy 2.6: only for a
certificate whose ``.ocsp`` file existed when HAProxy started).  The caller
passes only bytes that passed validation; this module never judges them.
"""
from __future__ import annotations

import base64
import re
import socket
import time

from ocspstaple.errors import DeployError, InputError

UPDATED = "OCSP Response updated!"
#: An answer longer than this is not one HAProxy gives to this command.
MAX_ANSWER = 64 << 10

_TCP = re.compile(r"(?:ipv4@)?(?P<host>[^/:\[\]]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,9})")


def parse_address(value: str, what: str = "HAProxy socket") -> tuple[int, str | tuple[str, int]]:
    """(family, address) of a stats socket: ``HOST:PORT``/``ipv4@HOST:PORT``
    for TCP, otherwise (or with ``unix@``) a unix socket path."""
    if value.startswith("unix@"):
        value = value[len("unix@"):]
    elif m := _TCP.fullmatch(value):
        port = int(m["port"])
        if not 0 < port < 65536:
            raise InputError(f"{what}: port {port} is out of range")
        host = m["host"].strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return family, (host, port)
    elif value.startswith(("ipv4@", "ipv6@")) or ("/" not in value and ":" in value):
        # Meant as HOST:PORT (HAProxy reads it so too), but the port is bad:
        # not a unix socket path to fail on at push time.  unix@ takes any path.
        raise InputError(f"{what}: {value!r} is not HOST:PORT with a port from 1 to 65535 "
                         "(write unix@PATH for a unix socket path with a colon)")
    if not value or "\0" in value:
        raise InputError(f"{what}: {value!r} is neither a unix socket path nor HOST:PORT")
    return socket.AF_UNIX, value


def push(address: str, der: bytes, *, timeout: float) -> None:
    """Send one response to HAProxy; raise DeployError unless it says it took it."""
    family, addr = parse_address(address)
    command = b"set ssl ocsp-response " + base64.b64encode(der) + b"\n"
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(addr)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))  # one deadline for the whole push
            sock.sendall(command)
            # Non-interactive mode: HAProxy answers, then closes.
            answer = _read_answer(sock, deadline)
    except socket.timeout:
        raise DeployError(f"HAProxy at {address} did not answer within {timeout:g} s") from None
    except OSError as e:
        raise DeployError(f"cannot talk to HAProxy at {address}: {e.strerror or e}") from None
    text = " ".join(answer.decode("utf-8", "replace").split())
    if not text.startswith(UPDATED):
        raise DeployError(f"HAProxy at {address} refused the staple: {text or '(no answer)'}")


def _read_answer(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:MAX_ANSWER]
