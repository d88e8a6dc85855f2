"""``ocspstaple serve``: a local OCSP responder answering from the staple files.

Mostly in-process (make_server in a thread on 127.0.0.1, stopped at
teardown), with real HTTP, real crypto and real files; the CLI itself runs as
a process in a few tests, stopped by PID.  Whatever the file holds, the only
successful answer ever sent is a staple that passed validation: every bad
file gets tryLater.

Every refusal has a passing twin, so that a test cannot pass merely because
nothing works.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import clean_env, run_cli
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from pki import CA, DAY, HOUR, Issued, unsuccessful, write_pem

from ocspstaple.config import Staple
from ocspstaple.errors import InputError
from ocspstaple.serve import MAX_REQUEST, OcspServer, StapleIndex, make_server, parse_listen, served_url
from ocspstaple.store import FileStore

UTC = dt.timezone.utc
Status = ocsp.OCSPResponseStatus


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


@dataclass
class Served:
    leaf: Issued
    cert: Path  # leaf + issuer
    issuer: Path
    output: Path

    @property
    def staple(self) -> Staple:
        return Staple(name=str(self.cert), cert=self.cert, output=self.output)


def make_served(d: Path, ca: CA, name: str = "site") -> Served:
    d.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue(f"{name}.example.test")
    cert = write_pem(d / f"{name}.pem", leaf, ca.cert)
    issuer = write_pem(d / "ca.pem", ca.cert)
    return Served(leaf=leaf, cert=cert, issuer=issuer, output=d / f"{name}.pem.ocsp")


def request(leaf: Issued, ca: CA, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, ca.cert, algorithm or hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


def status(answer: bytes) -> Status:
    return ocsp.load_der_ocsp_response(answer).response_status


def ask(url: str, method: str, path: str = "", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request to the server (http.client: no proxy from the environment)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request(method, u.path + path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def post(url: str, body: bytes) -> bytes:
    code, answer = ask(url, "POST", body=body, headers={"Content-Type": "application/ocsp-request"})
    assert code == 200
    return answer


def get(url: str, path: str) -> bytes:
    code, answer = ask(url, "GET", path)
    assert code == 200
    return answer


class Clock:
    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(UTC) + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start(clock: Clock):
    """``start(staples) -> url``: make_server on 127.0.0.1:0 in a thread; stopped at teardown."""
    running: list[tuple[OcspServer, threading.Thread]] = []

    def start_(staples: list[Staple]) -> str:
        server = make_server("127.0.0.1:0", staples, store=FileStore(), clock=clock)
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        running.append((server, t))
        return served_url(server)

    yield start_
    for server, t in running:
        server.shutdown()
        server.server_close()
        t.join(5)
        assert not t.is_alive()


@pytest.fixture
def site(tmp_path: Path, ca: CA) -> Served:
    return make_served(tmp_path / "certs", ca)


StartServer = Callable[[list[Staple]], str]


# -- the staple, by POST and GET -----------------------------------------------------------

def test_post_returns_the_staple_file(site: Served, ca: CA, start: StartServer):
    staple = ca.respond(site.leaf.cert)
    site.output.write_bytes(staple)
    url = start([site.staple])
    assert post(url, request(site.leaf, ca)) == staple


def test_unknown_certificate_is_unauthorized(site: Served, ca: CA, start: StartServer):
    """Twin of the POST: a certificate of the same CA that is not served."""
    site.output.write_bytes(ca.respond(site.leaf.cert))
    url = start([site.staple])
    stranger = ca.issue("stranger.example.test")
    answer = post(url, request(stranger, ca))
    assert status(answer) is Status.UNAUTHORIZED
    # the same serial under another issuer is another certificate too
    other_ca = CA.root("Other Root")
    req = ocsp.OCSPRequestBuilder().add_certificate(site.leaf.cert, other_ca.cert, hashes.SHA1()).build()
    assert status(post(url, req.public_bytes(serialization.Encoding.DER))) is Status.UNAUTHORIZED


@pytest.fixture
def slashy(tmp_path: Path, ca: CA) -> Served:
    """A served certificate whose request's base64 has a '/' (and a '+' when luck allows)."""
    best = None
    for i in range(200):
        s = make_served(tmp_path / "certs", ca, name=f"slashy{i}")
        b64 = base64.b64encode(request(s.leaf, ca)).decode()
        if "/" in b64:
            best = s
            if "+" in b64:
                break
    assert best is not None
    return best


@pytest.mark.parametrize("form", ["plain", "percent-encoded", "prefix + plain", "prefix + percent-encoded",
                                  "url-safe"])
def test_get_returns_the_staple_file(slashy: Served, ca: CA, start: StartServer, form: str):
    staple = ca.respond(slashy.leaf.cert)
    slashy.output.write_bytes(staple)
    url = start([slashy.staple])
    b64 = base64.b64encode(request(slashy.leaf, ca)).decode()
    assert "/" in b64
    path = {
        "plain": b64,
        "percent-encoded": urllib.parse.quote(b64, safe=""),
        "prefix + plain": "ocsp/" + b64,
        "prefix + percent-encoded": "ocsp/" + urllib.parse.quote(b64, safe=""),
        "url-safe": base64.urlsafe_b64encode(request(slashy.leaf, ca)).decode().rstrip("="),
    }[form]
    assert get(url, path) == staple


@pytest.mark.parametrize("path", ["", "hello", "ocsp/", "MEIw", "%ZZ", "ocsp/" + "A" * 400])
def test_get_garbage_is_malformed(site: Served, ca: CA, start: StartServer, path: str):
    """Twin of the GET forms."""
    site.output.write_bytes(ca.respond(site.leaf.cert))
    url = start([site.staple])
    assert status(get(url, path)) is Status.MALFORMED_REQUEST


@pytest.mark.parametrize("body", [b"", b"garbage", b"\x30\x03\x02\x01\x00",
                                  base64.b64encode(b"\x30\x03\x02\x01\x00")])
def test_post_garbage_is_malformed(site: Served, ca: CA, start: StartServer, body: bytes):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    url = start([site.staple])
    assert status(post(url, body)) is Status.MALFORMED_REQUEST


def test_post_without_length_or_too_large(site: Served, ca: CA, start: StartServer):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    url = start([site.staple])
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 411")
    code, _ = ask(url, "POST", body=b"\x30" * (MAX_REQUEST + 1))
    assert code == 413


@pytest.mark.parametrize("algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_other_certid_hashes_are_unauthorized(site: Served, ca: CA, start: StartServer, algorithm):
    # The staple's CertID is SHA-1 (what refresh asks for, and what mod_ssl
    # sends): the client of a SHA-256 request could not match it.
    staple = ca.respond(site.leaf.cert)
    site.output.write_bytes(staple)
    url = start([site.staple])
    assert status(post(url, request(site.leaf, ca, algorithm))) is Status.UNAUTHORIZED
    # twin: the same certificate asked with SHA-1 gets the staple
    assert post(url, request(site.leaf, ca, hashes.SHA1())) == staple


# -- never a bad file --------------------------------------------------------------------------

def _bad_staples(ca: CA, leaf: Issued) -> dict[str, bytes | None]:
    impostor = CA.root("ocspstaple Test Root")  # the issuer's name, another key
    t = now()
    return {
        "missing": None,
        "empty": b"",
        "garbage": b"\x30\x82\x01\x00" + b"\xde\xad" * 64,
        "tryLater": unsuccessful("tryLater"),
        "expired": ca.respond(leaf.cert, this_update=t - 5 * DAY, next_update=t - HOUR),
        "expires in 2 minutes": ca.respond(leaf.cert, this_update=t - DAY, next_update=t + dt.timedelta(minutes=2)),
        "future": ca.respond(leaf.cert, this_update=t + DAY, next_update=t + 5 * DAY),
        "forged": impostor.respond(leaf.cert, issuer=ca.cert, signer=impostor),
        "other serial": ca.respond(ca.issue("other.example.test").cert),
        "unknown": ca.respond(leaf.cert, status="unknown"),
        "CA-flagged delegate": ca.respond(leaf.cert, signer=ca.sub_ca("Sibling CA")),
    }


BAD = list(_bad_staples(CA.root(), CA.root().issue()))


@pytest.mark.parametrize("bad", BAD)
def test_bad_staple_file_gets_try_later(site: Served, ca: CA, start: StartServer, bad: str):
    data = _bad_staples(ca, site.leaf)[bad]
    if data is not None:
        site.output.write_bytes(data)
    url = start([site.staple])
    answer = post(url, request(site.leaf, ca))
    assert status(answer) is Status.TRY_LATER
    assert answer != data or bad == "tryLater"
    assert site.output.exists() == (data is not None)  # the server never touches the file


def test_valid_staple_file_is_served(site: Served, ca: CA, start: StartServer):
    """Twin of the bad files: the same request, a sound file."""
    staple = ca.respond(site.leaf.cert)
    site.output.write_bytes(staple)
    url = start([site.staple])
    answer = post(url, request(site.leaf, ca))
    assert answer == staple
    resp = ocsp.load_der_ocsp_response(answer)
    assert resp.response_status is Status.SUCCESSFUL
    assert resp.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == site.leaf.cert.serial_number


def test_revoked_staple_is_served_as_revoked(site: Served, ca: CA, start: StartServer):
    staple = ca.respond(site.leaf.cert, status="revoked")
    site.output.write_bytes(staple)
    url = start([site.staple])
    answer = post(url, request(site.leaf, ca))
    assert answer == staple
    assert ocsp.load_der_ocsp_response(answer).certificate_status is ocsp.OCSPCertStatus.REVOKED


# -- the file changes under a running server --------------------------------------------------

def test_replaced_file_is_served_without_restart(site: Served, ca: CA, start: StartServer):
    url = start([site.staple])
    req = request(site.leaf, ca)
    assert status(post(url, req)) is Status.TRY_LATER  # no file yet
    first = ca.respond(site.leaf.cert, this_update=now() - 2 * HOUR)
    site.output.write_bytes(first)
    assert post(url, req) == first
    fresher = ca.respond(site.leaf.cert, this_update=now() - HOUR)
    tmp = site.output.with_name("tmp")
    tmp.write_bytes(fresher)
    os.replace(tmp, site.output)  # as refresh writes it
    assert post(url, req) == fresher
    # overwritten in place by something else, and invalid: not served, and the old one neither
    site.output.write_bytes(_bad_staples(ca, site.leaf)["forged"])  # type: ignore[arg-type]
    assert status(post(url, req)) is Status.TRY_LATER
    site.output.unlink()
    assert status(post(url, req)) is Status.TRY_LATER
    site.output.write_bytes(fresher)
    assert post(url, req) == fresher


def test_staple_that_expires_while_served_gets_try_later(site: Served, ca: CA, start: StartServer, clock: Clock):
    t = now()
    staple = ca.respond(site.leaf.cert, this_update=t - HOUR, next_update=t + HOUR)
    site.output.write_bytes(staple)
    url = start([site.staple])
    req = request(site.leaf, ca)
    assert post(url, req) == staple
    clock.offset = dt.timedelta(minutes=56)  # less than 5 minutes left: HAProxy would not staple it
    assert status(post(url, req)) is Status.TRY_LATER
    clock.offset = dt.timedelta()
    assert post(url, req) == staple


def test_several_certificates(tmp_path: Path, ca: CA, start: StartServer):
    a, b = make_served(tmp_path / "a", ca, "a"), make_served(tmp_path / "b", ca, "b")
    sa, sb = ca.respond(a.leaf.cert), ca.respond(b.leaf.cert, status="revoked")
    a.output.write_bytes(sa)
    b.output.write_bytes(sb)
    url = start([a.staple, b.staple])
    assert post(url, request(a.leaf, ca)) == sa
    assert post(url, request(b.leaf, ca)) == sb


def test_broken_staple_entry_does_not_stop_the_others(tmp_path: Path, ca: CA, start: StartServer):
    good = make_served(tmp_path / "good", ca, "good")
    staple = ca.respond(good.leaf.cert)
    good.output.write_bytes(staple)
    no_issuer = tmp_path / "lonely.pem"
    write_pem(no_issuer, ca.issue("lonely.example.test"))
    broken = [Staple(name="missing", cert=tmp_path / "missing.pem", output=tmp_path / "m.ocsp"),
              Staple(name="lonely", cert=no_issuer, output=tmp_path / "l.ocsp")]
    index = StapleIndex([*broken, good.staple], store=FileStore(), clock=Clock())
    assert index.failed == 2
    url = start([*broken, good.staple])
    assert post(url, request(good.leaf, ca)) == staple


# -- the real openssl client ---------------------------------------------------------------------

def openssl_ocsp(site: Served, url: str) -> subprocess.CompletedProcess:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return subprocess.run(
        ["openssl", "ocsp", "-issuer", str(site.issuer), "-cert", str(site.cert), "-url", url,
         "-CAfile", str(site.issuer), "-timeout", "10"],
        capture_output=True, text=True, timeout=30, env=clean_env(),
    )


def test_openssl_client_verifies_the_answer(site: Served, ca: CA, start: StartServer):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    p = openssl_ocsp(site, start([site.staple]))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Response verify OK" in p.stderr, p.stderr
    assert f"{site.cert}: good" in p.stdout, p.stdout


def test_openssl_client_gets_try_later_for_a_forged_staple(site: Served, ca: CA, start: StartServer):
    """Twin of the openssl test."""
    site.output.write_bytes(_bad_staples(ca, site.leaf)["forged"])  # type: ignore[arg-type]
    p = openssl_ocsp(site, start([site.staple]))
    assert "Response verify OK" not in p.stderr
    assert "trylater" in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
    assert ": good" not in p.stdout


# -- addresses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:8089", ("127.0.0.1", 8089)), ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:8089", ("::1", 8089)), ("localhost:1", ("localhost", 1)),
])
def test_parse_listen(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8089", ":8089", "127.0.0.1", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:65536",
                                   "127.0.0.1:-1"])
def test_parse_listen_refuses(value):
    with pytest.raises(InputError, match="--listen"):
        parse_listen(value)


# -- the command --------------------------------------------------------------------------------

LISTENING = re.compile(r"^ocspstaple serve: listening on (http://127\.0\.0\.1:(\d+)/)")


class ServeProcess:
    """``python -m ocspstaple serve ...`` with its stderr collected by a thread."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ocspstaple", "serve", *map(str, args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def url(self, deadline: float = 15) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for line in self.lines:
                if m := LISTENING.match(line):
                    return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no listening line: {self.lines}")

    def stop(self) -> int | None:
        """SIGTERM by PID; the exit code if it exits within 5 s."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            self._reader.join(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.fixture
def serve_process():
    started: list[ServeProcess] = []

    def start_(*args: str | Path) -> ServeProcess:
        p = ServeProcess(*args)
        started.append(p)
        return p

    yield start_
    for p in started:
        p.stop()


def test_serve_command(site: Served, ca: CA, serve_process):
    staple = ca.respond(site.leaf.cert)
    site.output.write_bytes(staple)
    p = serve_process("--cert", site.cert, "--listen", "127.0.0.1:0")
    url = p.url()
    assert post(url, request(site.leaf, ca)) == staple
    assert get(url, urllib.parse.quote(base64.b64encode(request(site.leaf, ca)).decode(), safe="")) == staple
    t0 = time.monotonic()
    assert p.stop() == 0
    assert time.monotonic() - t0 < 5
    assert [line for line in p.lines if line.strip()] == [f"ocspstaple serve: listening on {url} (1 certificate(s))"]
    with pytest.raises(OSError):
        post(url, request(site.leaf, ca))


def test_serve_command_with_a_broken_config_entry(tmp_path: Path, ca: CA, serve_process):
    good = make_served(tmp_path, ca, "good")
    staple = ca.respond(good.leaf.cert)
    good.output.write_bytes(staple)
    cfg = tmp_path / "ocspstaple.toml"
    cfg.write_text('[staple.bad]\ncert = "missing.pem"\n[staple.typo]\ncert = "good.pem"\ntimeout = "x"\n'
                   '[staple.good]\ncert = "good.pem"\n')
    p = serve_process("--config", cfg, "--listen", "127.0.0.1:0")
    url = p.url()
    assert post(url, request(good.leaf, ca)) == staple
    assert p.stop() == 0
    errors = [line for line in p.lines if "not served" in line]
    assert len(errors) == 2, p.lines
    assert any(str(tmp_path / "missing.pem") in line for line in errors)


def test_serve_with_no_certificate_is_exit_2(tmp_path: Path, ca: CA):
    """Twin of the serve command: nothing servable, so it does not start."""
    leaf = ca.issue("lonely.example.test")
    key_only = write_pem(tmp_path / "key.pem", leaf.key_pem)
    run = run_cli("serve", "--cert", key_only, "--listen", "127.0.0.1:0", timeout=15)
    assert run.code == 2, run.err
    assert "Traceback" not in run.err and "listening" not in run.err
    assert run.lines[-1].endswith("no certificate to serve"), run.err
    assert any(str(key_only) in line for line in run.lines), run.err
    cfg = tmp_path / "c.toml"
    cfg.write_text('[staple.a]\ncert = "missing.pem"\n')
    run = run_cli("serve", "--config", cfg, "--listen", "127.0.0.1:0", timeout=15)
    assert run.code == 2 and "no certificate to serve" in run.err, run.err


def test_serve_on_a_port_in_use_is_exit_2(site: Served, ca: CA):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        run = run_cli("serve", "--cert", site.cert, "--listen", f"127.0.0.1:{port}", timeout=15)
    assert run.code == 2, run.err
    assert "Traceback" not in run.err
    assert len(run.lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in run.lines[0], run.err


@pytest.mark.parametrize("args, words", [
    (["--cert", "site.pem", "--listen", "8089"], "--listen '8089': expected HOST:PORT"),
    (["--scan", "DIR", "--issuer", "ca.pem", "--listen", "127.0.0.1:0"], "go with --cert"),
    (["--listen", "127.0.0.1:0"], "give one of --cert, --config, --scan or --certbot-dir"),
])
def test_serve_usage_errors(site: Served, args: list[str], words: str):
    args = [{"site.pem": str(site.cert), "DIR": str(site.cert.parent)}.get(a, a) for a in args]
    run = run_cli("serve", *args, timeout=15)
    assert run.code == 2, run.err
    assert "Traceback" not in run.err and "listening" not in run.err
    assert words in run.err, run.err


# -- hostile clients (spec, "Trust on the local disk": any local user can connect) -------------------

def vm(pid: int, field: str) -> int:
    """A /proc/PID/status memory field, in bytes (VmHWM: the peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


BIG_HEAD = b"POST / HTTP/1.1\r\n" + b"".join(b"X-%02d: %s\r\n" % (i, b"a" * 65000) for i in range(99))


def hostile(host: str, port: int, kind: str) -> socket.socket:
    s = socket.create_connection((host, port), timeout=5)
    s.setblocking(False)
    try:
        if kind == "headers":  # what cost 38 MB a connection: 99 header lines of 64 KB
            s.send(BIG_HEAD)
        elif kind == "slowloris":  # a request that never ends
            s.send(b"GET /")
        else:  # a GET path of 8,000 "A/" segments
            s.send(b"GET /" + b"A/" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    except BlockingIOError:
        pass
    return s


def answered(s: socket.socket) -> bytes:
    s.settimeout(2)
    try:
        return s.recv(100)
    except OSError:  # dropped as one of the oldest, or reset: no answer to read
        return b""
    finally:
        s.close()


def test_500_hostile_connections_cost_bounded_memory(site: Served, ca: CA, serve_process):
    staple = ca.respond(site.leaf.cert)
    site.output.write_bytes(staple)
    p = serve_process("--cert", site.cert, "--listen", "127.0.0.1:0")
    url = p.url()
    u = urllib.parse.urlsplit(url)
    kinds = ("headers", "slowloris", "path")
    socks = [(kinds[i % 3], hostile(u.hostname, u.port, kinds[i % 3])) for i in range(500)]
    try:
        t0 = time.monotonic()
        assert post(url, request(site.leaf, ca)) == staple
        # The issue's bound: a legitimate request is still answered within a second.
        assert time.monotonic() - t0 < 1.0
        peak = vm(p.proc.pid, "VmHWM")
        assert peak < 100 << 20, f"peak RSS {peak >> 20} MB"
        # The hostile requests reached the server and were refused (the negative control:
        # the load was real), those of them still open to be read.
        got = {kind: [answered(s) for k, s in socks if k == kind][-40:] for kind in ("headers", "path")}
        assert any(a.startswith(b"HTTP/1.1 431") for a in got["headers"]), got["headers"][:3]
        assert any(a.startswith(b"HTTP/1.1 414") for a in got["path"]), got["path"][:3]
    finally:
        for _, s in socks:
            s.close()
    assert post(url, request(site.leaf, ca)) == staple
    assert p.stop() == 0


@contextlib.contextmanager
def serving(staple: Staple, clock, **bounds) -> Iterator[OcspServer]:
    """An OcspServer with other ``bounds`` (request_timeout, max_connections), in a thread."""
    server = OcspServer(("127.0.0.1", 0), StapleIndex([staple], store=FileStore(), clock=clock), **bounds)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_slow_request_is_cut_off_and_a_whole_one_is_answered(site: Served, ca: CA, clock):
    site.output.write_bytes(staple := ca.respond(site.leaf.cert))
    with serving(site.staple, clock, request_timeout=0.5) as server:
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as slow:
            slow.sendall(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n0")  # ... and never the rest
            assert slow.recv(100) == b""  # closed by the server (else recv times out after 10 s)
        # Twin: a whole request in time, on a kept-alive connection, twice.
        conn = http.client.HTTPConnection(host, port, timeout=5)
        for _ in range(2):
            conn.request("POST", "/", body=request(site.leaf, ca))
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, staple)
        conn.close()


def test_oldest_connection_gives_way_to_a_new_one(site: Served, ca: CA, clock):
    site.output.write_bytes(staple := ca.respond(site.leaf.cert))
    with serving(site.staple, clock, max_connections=4) as server:
        url = served_url(server)
        u = urllib.parse.urlsplit(url)
        # Connected (in the listen backlog, accepted in order) before the fifth connects.
        idle = [socket.create_connection((u.hostname, u.port), timeout=5) for _ in range(4)]
        assert post(url, request(site.leaf, ca)) == staple  # the fifth gets in
        idle[0].settimeout(2)
        assert idle[0].recv(10) == b""  # the oldest was dropped for it
        for s in idle:
            s.close()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "HEAD"])
def test_only_get_and_post(site: Served, ca: CA, start: StartServer, method: str):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    code, _ = ask(start([site.staple]), method)
    assert code == 405


def test_a_staple_swapped_for_a_fifo_blocks_nothing(site: Served, ca: CA, start: StartServer):
    staple = ca.respond(site.leaf.cert)
    site.output.write_bytes(staple)
    url = start([site.staple])
    assert post(url, request(site.leaf, ca)) == staple
    site.output.unlink()
    os.mkfifo(site.output)
    t0 = time.monotonic()
    assert status(post(url, request(site.leaf, ca))) is Status.TRY_LATER
    assert time.monotonic() - t0 < 1
    site.output.unlink()
    site.output.write_bytes(staple)  # the real file is back: served again
    assert post(url, request(site.leaf, ca)) == staple


def test_long_get_path_is_refused_at_once(site: Served, ca: CA, start: StartServer):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    url = start([site.staple])
    t0 = time.monotonic()
    code, _ = ask(url, "GET", "A/" * 8000)
    assert code == 414 and time.monotonic() - t0 < 1
    # Twin: a path within bounds with many segments before the request still works.
    b64 = urllib.parse.quote(base64.b64encode(request(site.leaf, ca)).decode(), safe="")
    assert get(url, "A/" * 100 + b64) == site.output.read_bytes()
