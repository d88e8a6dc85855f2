"""Pushing a staple into HAProxy over its stats socket (``--haproxy-socket``).

HAProxy itself is the edge here: a fake stats socket (unix or TCP on
127.0.0.1, served by a thread) reads one command line, records it, answers a
scripted text and closes, as HAProxy's non-interactive mode does.  The CLI
runs as a real process against the real test responder.

Every refusal has a passing twin, so that a test cannot pass merely because
nothing works.
"""
from __future__ import annotations

import base64
import datetime as dt
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
from conftest import Run, Site, assert_silent_success, one_line, run_cli
from pki import CA, DAY, HOUR, write_pem
from responder import FAULTS, Reply, Responder

from ocspstaple.config import Staple
from ocspstaple.deploy import push_staples
from ocspstaple.errors import DeployError, InputError
from ocspstaple.haproxy import parse_address, push
from ocspstaple.refresh import Outcome, Result
from ocspstaple.validate import CertStatus, VerifiedResponse

UPDATED = b"OCSP Response updated!\n\n"
NO_MATCH = b"Certificate ID does not match any certificate or issuer.\n\n"


# -- the fake stats socket -----------------------------------------------------------

class FakeHAProxy:
    """A stats socket in non-interactive mode: one command line in, one answer out, close.

    ``answer=None``: read the command and then never answer (until the test ends).
    """

    def __init__(self, listener: socket.socket, address: str, answer: bytes | None) -> None:
        self.listener = listener
        self.address = address
        self.answer = answer
        self.commands: list[bytes] = []
        self._stop = threading.Event()
        listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                self.commands.append(data)
                if self.answer is None:
                    self._stop.wait(30)
                    continue
                try:
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        assert not self._thread.is_alive()


StartHAProxy = Callable[..., FakeHAProxy]


@pytest.fixture
def sock_dir():
    # AF_UNIX paths are limited to ~108 bytes: tmp_path can be longer than that.
    d = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def haproxy(sock_dir: Path):
    """Start fake stats sockets: ``haproxy(answer, tcp=False, prefix="")``; all closed at teardown."""
    started: list[FakeHAProxy] = []

    def start(answer: bytes | None = UPDATED, *, tcp: bool = False, prefix: str = "") -> FakeHAProxy:
        if tcp:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            address = f"{prefix}127.0.0.1:{listener.getsockname()[1]}"
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            path = sock_dir / f"admin{len(started)}.sock"
            listener.bind(str(path))
            address = f"{prefix}{path}"
        listener.listen(8)
        fake = FakeHAProxy(listener, address, answer)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


# -- helpers ---------------------------------------------------------------------------

def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def refresh(*args: str | Path) -> Run:
    return run_cli("refresh", *args, timeout=30)


def command_for(staple: bytes) -> bytes:
    return b"set ssl ocsp-response " + base64.b64encode(staple) + b"\n"






def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def due_staple(ca: CA, site: Site) -> bytes:
    """A valid staple on disk that is past its half-life: the next plain run fetches."""
    t = now() - 3 * DAY
    body = ca.respond(site.leaf.cert, this_update=t, next_update=now() + DAY)
    site.output.write_bytes(body)
    return body


# -- the push after a written staple ----------------------------------------------------

@pytest.mark.parametrize("kind", ["unix", "ipv4@"])
def test_new_staple_is_pushed(site: Site, responder: Responder, haproxy: StartHAProxy, kind: str):
    fake = haproxy(tcp=kind in ("tcp", "ipv4@"), prefix=kind if kind.endswith("@") else "")
    run = refresh("--cert", site.cert, "--haproxy-socket", fake.address)
    assert_silent_success(run)
    written = site.output.read_bytes()
    assert fake.commands == [command_for(written)]


def test_refused_push_is_exit_1_and_the_file_stays_written(site: Site, responder: Responder,
                                                           haproxy: StartHAProxy):
    """Twin of the push above: HAProxy says no; the new staple is on disk all the same."""
    body = responder.good()
    responder.serve(body)
    fake = haproxy(NO_MATCH)
    run = refresh("--cert", site.cert, "--haproxy-socket", fake.address)
    assert run.code == 1, run.err
    one_line(run, str(site.cert), "Certificate ID does not match any certificate or issuer.",
             f"{site.output} is written")
    assert site.output.read_bytes() == body
    assert fake.commands == [command_for(body)]


@pytest.mark.parametrize("answer", [
    b"certificate status is unknown.\n\n",
    b"Unable to parse OCSP response.\n\n",
    b"OCSP single response: no longer valid..\n\n",
    b"Unknown command.\n\n",
    b"",  # closed without a word
])
def test_other_answers_are_refusals(haproxy: StartHAProxy, answer: bytes):
    fake = haproxy(answer)
    with pytest.raises(DeployError, match="refused the staple") as e:
        push(fake.address, b"\x30\x03\x0a\x01\x00", timeout=5)
    words = answer.decode().strip() or "(no answer)"
    assert words in str(e.value)


@pytest.mark.parametrize("kind", ["unix", "unix@", "tcp", "ipv4@"])
def test_updated_is_success(haproxy: StartHAProxy, kind: str):
    """Twin of the refusals (in-process): HAProxy's words, whatever follows them, on every kind of socket."""
    fake = haproxy(b"OCSP Response updated!\n\n", tcp=kind in ("tcp", "ipv4@"),
                   prefix=kind if kind.endswith("@") else "")
    push(fake.address, b"\x30\x03\x0a\x01\x00", timeout=5)
    assert fake.commands == [command_for(b"\x30\x03\x0a\x01\x00")]


def test_no_haproxy_listening_is_exit_1_and_the_file_stays_written(site: Site, responder: Responder,
                                                                   sock_dir: Path):
    body = responder.good()
    responder.serve(body)
    address = str(sock_dir / "none.sock")
    run = refresh("--cert", site.cert, "--haproxy-socket", address)
    assert run.code == 1, run.err
    one_line(run, str(site.cert), "cannot talk to HAProxy", address)
    assert site.output.read_bytes() == body


@pytest.mark.parametrize("kind", ["stale unix socket", "closed tcp port"])
def test_no_haproxy_listening(sock_dir: Path, kind: str):
    if kind == "stale unix socket":
        # The socket file of a stopped HAProxy: it exists, nobody accepts.
        address = str(sock_dir / "stale.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(address)
    else:
        address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(DeployError, match="cannot talk to HAProxy.*refused"):
        push(address, b"\x30\x03\x0a\x01\x00", timeout=5)


def test_silent_haproxy_is_bounded_by_the_timeout(site: Site, responder: Responder, haproxy: StartHAProxy):
    body = responder.good()
    responder.serve(body)
    fake = haproxy(None)
    t0 = time.monotonic()
    run = refresh("--cert", site.cert, "--haproxy-socket", fake.address, "--timeout", "1")
    elapsed = time.monotonic() - t0
    assert run.code == 1, run.err
    one_line(run, str(site.cert), "did not answer within 1 s")
    assert elapsed < 5, elapsed
    assert site.output.read_bytes() == body
    assert fake.commands == [command_for(body)]


def test_push_deadline_is_total(haproxy: StartHAProxy):
    """In-process: the deadline covers connect, send and the answer together."""
    fake = haproxy(None, tcp=True)
    t0 = time.monotonic()
    with pytest.raises(DeployError, match="did not answer"):
        push(fake.address, b"\x30\x03\x0a\x01\x00", timeout=0.5)
    assert time.monotonic() - t0 < 2


# -- when nothing is pushed ------------------------------------------------------------

def test_fresh_staple_is_not_pushed_again(site: Site, responder: Responder, haproxy: StartHAProxy):
    fake = haproxy()
    assert_silent_success(refresh("--cert", site.cert, "--haproxy-socket", fake.address))
    assert len(fake.commands) == 1  # the twin: a written staple is pushed
    assert_silent_success(refresh("--cert", site.cert, "--haproxy-socket", fake.address))
    assert len(fake.commands) == 1
    assert responder.requests == 1  # fresh: not even fetched


@pytest.mark.parametrize("fault", ["tryLater", "wrong_ca"])
def test_refused_response_is_not_pushed(site: Site, responder: Responder, ca: CA, haproxy: StartHAProxy,
                                        fault: str):
    """A due staple, and the responder's answer fails validation: nothing changes, nothing is pushed."""
    before = due_staple(ca, site)
    responder.fault(fault)
    fake = haproxy()
    run = refresh("--cert", site.cert, "--haproxy-socket", fake.address)
    assert run.code == 1, run.err
    one_line(run, str(site.cert), "kept staple valid until")
    assert site.output.read_bytes() == before
    assert fake.commands == []
    assert responder.requests >= 1


def test_refused_response_without_staple_pushes_nothing(site: Site, responder: Responder,
                                                        haproxy: StartHAProxy):
    responder.fault("wrong_ca")
    fake = haproxy()
    run = refresh("--cert", site.cert, "--haproxy-socket", fake.address)
    assert run.code == 2, run.err
    assert not site.output.exists()
    assert fake.commands == []


def test_due_staple_replaced_by_a_valid_answer_is_pushed(site: Site, responder: Responder, ca: CA,
                                                         haproxy: StartHAProxy):
    """Twin of the refused cases: the same due staple, a sound newer answer."""
    before = due_staple(ca, site)
    fake = haproxy()
    assert_silent_success(refresh("--cert", site.cert, "--haproxy-socket", fake.address))
    after = site.output.read_bytes()
    assert after != before
    assert fake.commands == [command_for(after)]


def test_force_pushes_the_valid_unchanged_staple(site: Site, responder: Responder, ca: CA,
                                                 haproxy: StartHAProxy):
    t = now() - HOUR
    body = ca.respond(site.leaf.cert, this_update=t, next_update=t + 4 * DAY)
    site.output.write_bytes(body)
    # The responder has nothing newer (same thisUpdate): the file stays as it is ...
    responder.serve(ca.respond(site.leaf.cert, this_update=t, next_update=t + 4 * DAY))
    fake = haproxy()
    assert_silent_success(refresh("--cert", site.cert, "--haproxy-socket", fake.address))
    assert fake.commands == []  # fresh, unchanged: not pushed
    # ... but --force brings a HAProxy that missed a push up to date.
    assert_silent_success(refresh("--cert", site.cert, "--haproxy-socket", fake.address, "--force"))
    assert site.output.read_bytes() == body
    assert fake.commands == [command_for(body)]
    # A failed fetch with --force pushes the kept, still valid staple too, never the failed answer.
    responder.fault("wrong_ca")
    run = refresh("--cert", site.cert, "--haproxy-socket", fake.address, "--force")
    assert run.code == 1, run.err
    assert fake.commands == [command_for(body)] * 2


def test_force_pushes_nothing_without_a_valid_staple(site: Site, responder: Responder, ca: CA,
                                                     haproxy: StartHAProxy):
    """Twin of the --force push: an expired staple on disk and a refused answer: nothing to push."""
    site.output.write_bytes(FAULTS["expired"](responder))  # type: ignore[arg-type]
    responder.fault("tryLater")
    fake = haproxy()
    run = refresh("--cert", site.cert, "--haproxy-socket", fake.address, "--force")
    assert run.code == 2, run.err
    assert fake.commands == []


def verified(status: CertStatus, der: bytes) -> VerifiedResponse:
    t = now()
    return VerifiedResponse(der=der, status=status, this_update=t, next_update=t + DAY, produced_at=t,
                            expires=t + DAY, signer="the issuer")


@pytest.mark.parametrize("result, status, changed, force, pushed", [
    (Result.WRITTEN, CertStatus.GOOD, True, False, True),
    (Result.REVOKED, CertStatus.REVOKED, True, False, True),  # a written revocation reaches HAProxy
    (Result.FRESH, CertStatus.GOOD, False, False, False),
    (Result.UNCHANGED, CertStatus.GOOD, False, False, False),
    (Result.KEPT, CertStatus.GOOD, False, False, False),
    (Result.UNCHANGED, CertStatus.GOOD, False, True, True),
    (Result.KEPT, CertStatus.GOOD, False, True, True),
    (Result.REVOKED, CertStatus.REVOKED, False, True, True),  # the revoked staple on disk, again
    # a revocation that could not be written: never push the good staple it contradicts
    (Result.REVOKED, CertStatus.GOOD, False, True, False),
    (Result.MISSING, None, False, True, False),
])
def test_push_staples_decides(haproxy: StartHAProxy, tmp_path: Path, result, status, changed, force, pushed):
    """In-process: which outcomes are pushed (and that the failures are counted)."""
    fake = haproxy()
    der = b"\x30\x03\x0a\x01\x00"
    st = Staple(name="site.pem", cert=tmp_path / "site.pem", output=tmp_path / "site.pem.ocsp",
                haproxy_socket=fake.address, force=force, timeout=5)
    o = Outcome(name="site.pem", output=st.output, result=result, message="", changed=changed,
                staple=verified(status, der) if status else None)
    assert push_staples([(st, o)]) == 0
    assert fake.commands == ([command_for(der)] if pushed else [])
    # no socket configured: never pushed; a refusing HAProxy: one failure
    assert push_staples([(replace(st, haproxy_socket=None), o)]) == 0
    refusing = haproxy(NO_MATCH)
    assert push_staples([(replace(st, haproxy_socket=refusing.address), o)]) == (1 if pushed else 0)
    assert len(fake.commands) == (1 if pushed else 0)


# -- the config file ---------------------------------------------------------------------

def test_config_haproxy_socket_per_staple(tmp_path: Path, ca: CA, responder: Responder,
                                          haproxy: StartHAProxy):
    leaves = {name: ca.issue(f"{name}.example.test", ocsp_urls=(responder.url,)) for name in ("a", "b", "c")}
    by_serial = {leaf.cert.serial_number: leaf for leaf in leaves.values()}
    responder.reply_for = lambda req: Reply(ca.respond(by_serial[req.serial_number].cert))
    for name, leaf in leaves.items():
        write_pem(tmp_path / f"{name}.pem", leaf, ca.cert)
    default, own = haproxy(), haproxy(tcp=True)
    cfg = tmp_path / "ocspstaple.toml"
    cfg.write_text(f"""
[defaults]
haproxy_socket = "{default.address}"

[staple.a]
cert = "a.pem"

[staple.b]
cert = "b.pem"
haproxy_socket = "{own.address}"

[staple.c]
cert = "c.pem"
""")
    assert_silent_success(refresh("--config", cfg))
    staple = {name: (tmp_path / f"{name}.pem.ocsp").read_bytes() for name in leaves}
    assert sorted(default.commands) == sorted([command_for(staple["a"]), command_for(staple["c"])])
    assert own.commands == [command_for(staple["b"])]


def test_config_bad_haproxy_socket_is_that_staples_error(tmp_path: Path, ca: CA, responder: Responder,
                                                         haproxy: StartHAProxy):
    """Twin of the config test: a bad socket in one table spoils that staple only."""
    leaves = {name: ca.issue(f"{name}.example.test", ocsp_urls=(responder.url,)) for name in ("a", "b")}
    by_serial = {leaf.cert.serial_number: leaf for leaf in leaves.values()}
    responder.reply_for = lambda req: Reply(ca.respond(by_serial[req.serial_number].cert))
    for name, leaf in leaves.items():
        write_pem(tmp_path / f"{name}.pem", leaf, ca.cert)
    fake = haproxy()
    cfg = tmp_path / "ocspstaple.toml"
    cfg.write_text(f"""
[staple.a]
cert = "a.pem"
haproxy_socket = "{fake.address}"

[staple.b]
cert = "b.pem"
haproxy_socket = "127.0.0.1:70000"
""")
    run = refresh("--config", cfg)
    assert run.code == 2, run.err
    one_line(run, str(tmp_path / "b.pem"), "haproxy_socket", "70000")
    assert not (tmp_path / "b.pem.ocsp").exists()
    assert fake.commands == [command_for((tmp_path / "a.pem.ocsp").read_bytes())]


# -- addresses ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("/run/haproxy/admin.sock", (socket.AF_UNIX, "/run/haproxy/admin.sock")),
    ("admin.sock", (socket.AF_UNIX, "admin.sock")),
    ("/run/odd:name.sock", (socket.AF_UNIX, "/run/odd:name.sock")),
    ("unix@/run/haproxy/admin.sock", (socket.AF_UNIX, "/run/haproxy/admin.sock")),
    ("unix@odd:name", (socket.AF_UNIX, "odd:name")),
    ("127.0.0.1:9999", (socket.AF_INET, ("127.0.0.1", 9999))),
    ("ipv4@127.0.0.1:9999", (socket.AF_INET, ("127.0.0.1", 9999))),
    ("localhost:1", (socket.AF_INET, ("localhost", 1))),
    ("[::1]:65535", (socket.AF_INET6, ("::1", 65535))),
])
def test_parse_address(value, expected):
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", [
    "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:123456", "127.0.0.1:" + "9" * 5000,
    "127.0.0.1:", "127.0.0.1:http", "ipv4@127.0.0.1:x", "ipv4@/run/admin.sock", "ipv6@::1:80",
    "[::1]", "", "unix@", "bad\0path",
])
def test_parse_address_refuses(value):
    with pytest.raises(InputError, match="HAProxy socket"):
        parse_address(value)


def test_bad_haproxy_socket_option_is_exit_2(site: Site, responder: Responder, haproxy: StartHAProxy):
    run = refresh("--cert", site.cert, "--haproxy-socket", "127.0.0.1:99999")
    assert run.code == 2, run.err
    one_line(run, "--haproxy-socket", "99999")
    assert responder.requests == 0
    assert not site.output.exists()
    # Twin: a good value for the same run works.
    fake = haproxy(tcp=True)
    assert_silent_success(refresh("--cert", site.cert, "--haproxy-socket", fake.address))
    assert len(fake.commands) == 1
