"""Resource bounds (issue 6, item 7).

Already covered elsewhere (not repeated here): a body trickled for ~100 s
against --timeout (test_refresh_cli), the size caps and one plain redirect
(test_fetch, test_refresh_cli).  Added here:

* a server that trickles forever, in the headers (requests' per-read timeout
  never fires) or in an endless body, is cut off at the total deadline, by the
  transport and by the real command;
* a redirect loop, and redirects to file:// and ftp:// (on GET and on POST),
  are never followed: one request, one clear reason, the staple kept;
* a config of 10,000 staples with a broken one in the middle: the broken one
  is reported by name, every other one is processed.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Run, Site, clean_env
from pki import CA, DAY, HOUR, write_pem
from responder import Reply, Responder

from ocspstaple.config import Options, Staple, load_config
from ocspstaple.errors import FetchError
from ocspstaple.fetch import HttpReply, HttpTransport
from ocspstaple.refresh import Result, exit_code, refresh_one
from ocspstaple.run import refresh_all
from ocspstaple.store import FileStore

UTC = dt.timezone.utc
MIN = dt.timedelta(minutes=1)


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


# -- trickling forever -----------------------------------------------------------------

class Trickler:
    """An HTTP server on 127.0.0.1 that never finishes its answer: after the
    status line it sends one byte of a header (``where="headers"``) or of an
    endless body (``where="body"``) every ``interval`` seconds until stopped."""

    def __init__(self, where: str, interval: float = 0.05) -> None:
        self.where = where
        self.interval = interval
        self.stop = threading.Event()
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._sock = socket.socket()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/"

    def __enter__(self) -> Trickler:
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(5)
        self._sock.close()
        assert not any(t.is_alive() for t in self._threads)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)
                if self.where == "headers":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                                 b"Content-Length: 60000\r\n\r\n0")
                while not self.stop.wait(self.interval):
                    conn.sendall(b"a")
            except OSError:
                pass  # the client gave up: that is the point


def bounded(fn, limit: float):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it is not done within ``limit``."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"still waiting after {limit} s: no total deadline"
    return result, time.monotonic() - start


@pytest.mark.parametrize("where", ["headers", "body"])
def test_transport_gives_up_on_a_server_that_trickles_forever(where: str):
    with Trickler(where) as server:
        result, elapsed = bounded(lambda: HttpTransport(timeout=1.0).get(server.url), limit=8)
    assert isinstance(result.get("error"), FetchError), result
    assert "within 1 s" in str(result["error"]), result["error"]
    assert elapsed < 3, elapsed
    assert server.connections == 1


def test_transport_twin_a_slow_but_finite_answer_is_read(responder: Responder):
    """Twin: bytes arriving slowly but finishing well within the deadline are read."""
    responder.serve(Reply(b"x" * 20, trickle=0.02))
    result, _ = bounded(lambda: HttpTransport(timeout=5).get(responder.url), limit=8)
    reply = result.get("value")
    assert isinstance(reply, HttpReply) and (reply.status, reply.body) == (200, b"x" * 20), result


def refresh(*args: str | Path) -> Run:
    p = subprocess.run([sys.executable, "-m", "ocspstaple", "refresh", *map(str, args)],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    return Run(p.returncode, p.stdout, p.stderr)


def test_cli_run_against_a_header_trickler_ends_at_the_timeout(site: Site, responder: Responder):
    body = responder.good()
    responder.serve(body)
    assert refresh("--cert", site.cert).code == 0
    with Trickler("headers") as server:
        start = time.monotonic()
        run = refresh("--cert", site.cert, "--url", server.url, "--force", "--timeout", "1")
        elapsed = time.monotonic() - start
    assert run.code == 1, run.err
    assert len(run.lines) == 1 and "within 1 s" in run.lines[0] and "kept staple valid until" in run.lines[0], run.err
    assert elapsed < 6, elapsed  # interpreter start-up + 1 s, with room for a loaded machine
    assert site.output.read_bytes() == body


# -- redirects -------------------------------------------------------------------------------

@pytest.fixture
def kept_staple(tmp_path: Path, ca: CA, responder: Responder):
    """A valid staple on disk for a certificate whose responder is ``responder``."""
    leaf = ca.issue("bounds.example.test", ocsp_urls=(responder.url,))
    responder.leaf = leaf
    cert = write_pem(tmp_path / "cert.pem", leaf, ca.cert)
    st = Staple(name=str(cert), cert=cert, output=tmp_path / "cert.pem.ocsp", force=True, timeout=5)
    body = responder.good(this_update=now() - 2 * HOUR)
    st.output.write_bytes(body)
    return st, body


def real_network(timeout: float, proxy: str | None) -> HttpTransport:
    return HttpTransport(timeout=timeout, proxy=proxy)


def wall_clock() -> dt.datetime:
    return dt.datetime.now(UTC)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("target", ["loop", "file:///etc/passwd", "ftp://127.0.0.1/ocsp", "gopher://127.0.0.1/"])
def test_redirects_are_never_followed(kept_staple, responder: Responder, method: str, target: str):
    st, body = kept_staple
    url = responder.url if method == "GET" else responder.url + "p" * 300  # a long URL is POSTed
    location = url if target == "loop" else target
    responder.serve(Reply(status=302 if method == "GET" else 307, headers={"Location": location}))
    o = refresh_one(replace(st, urls=(url,)), network=real_network, clock=wall_clock, store=FileStore())
    assert o.result is Result.KEPT and o.result.exit_code == 1, o.message
    assert "redirects are not followed" in o.message and location[:40] in o.message, o.message
    assert [s.method for s in responder.seen] == [method]  # one request; a 3xx is not retried by POST either
    assert st.output.read_bytes() == body


def test_redirect_twin_the_same_responder_answering_is_written(kept_staple, responder: Responder):
    st, body = kept_staple
    newer = responder.good(this_update=now() - HOUR)
    responder.serve(newer)
    o = refresh_one(st, network=real_network, clock=wall_clock, store=FileStore())
    assert o.result is Result.WRITTEN, o.message
    assert st.output.read_bytes() == newer


# -- 10,000 staples --------------------------------------------------------------------------------

N = 10_000
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class MemoryStore:
    """Staples in a dict: 10,000 real lock files cost ~1 ms each to create on
    ext4, and the disk is not what this test is about (test_disk_faults is)."""

    def __init__(self) -> None:
        self.files: dict[Path, bytes] = {}

    def read(self, path: Path) -> bytes | None:
        return self.files.get(path)

    def lock(self, path: Path, *, timeout: float) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def write(self, path: Path, data: bytes) -> None:
        self.files[path] = data


class CountingNetwork:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        self.lock = threading.Lock()

    def __call__(self, timeout: float, proxy: str | None) -> CountingNetwork:
        return self

    def get(self, url: str) -> HttpReply:
        with self.lock:
            self.requests += 1
        return HttpReply(200, self.body)

    def post(self, url: str, body: bytes) -> HttpReply:
        return self.get(url)


def test_ten_thousand_staples_with_broken_ones_in_the_middle(tmp_path: Path, caplog):
    ca = CA.root("Bounds Root", now=T0)
    leaf = ca.issue("many.example.test", ocsp_urls=("http://ocsp.test/",))
    write_pem(tmp_path / "cert.pem", leaf)
    write_pem(tmp_path / "issuer.pem", ca.cert)
    fresh = ca.respond(leaf.cert, this_update=T0 - HOUR, produced_at=T0 - HOUR, next_update=T0 + 3 * DAY)
    newer = ca.respond(leaf.cert, this_update=T0 - 30 * MIN, produced_at=T0 - 30 * MIN, next_update=T0 + 3 * DAY)
    lines = ["[defaults]\ntimeout = 5\n"]
    store = MemoryStore()
    broken_table, missing_cert = N // 2, N // 2 + 1
    for i in range(N):
        output = f"out/{i:05d}.ocsp"
        if i == broken_table:
            lines.append(f'[staple.s{i}]\ncert = "cert.pem"\nissuer = "issuer.pem"\noutput = "{output}"\n'
                         'ouptut = "typo"\n')
            continue
        cert = "no-such-cert.pem" if i == missing_cert else "cert.pem"
        lines.append(f'[staple.s{i}]\ncert = "{cert}"\nissuer = "issuer.pem"\noutput = "{output}"\n')
        if i not in (0, N - 1):  # the first and the last have no staple yet: they are fetched
            store.files[tmp_path / output] = fresh
    config = tmp_path / "many.toml"
    config.write_text("".join(lines))

    start = time.monotonic()
    staples = load_config(config, cli=Options(), force=False)
    assert len(staples) == N
    net = CountingNetwork(newer)
    with caplog.at_level(logging.WARNING, logger="ocspstaple"):
        outcomes = refresh_all(staples, network=net, clock=lambda: T0, store=store)
    elapsed = time.monotonic() - start

    assert len(outcomes) == N
    by_result: dict[Result, list[int]] = {}
    for i, o in enumerate(outcomes):
        by_result.setdefault(o.result, []).append(i)
    assert by_result[Result.BAD_INPUT] == [broken_table, missing_cert]
    assert by_result[Result.WRITTEN] == [0, N - 1]
    assert len(by_result[Result.FRESH]) == N - 4 and set(by_result) == {Result.BAD_INPUT, Result.WRITTEN, Result.FRESH}
    assert net.requests >= 1
    assert store.files[tmp_path / "out/00000.ocsp"] == newer
    assert store.files[tmp_path / f"out/{N - 1:05d}.ocsp"] == newer
    assert tmp_path / f"out/{broken_table:05d}.ocsp" not in store.files
    assert exit_code(outcomes) == 2
    # One line for each broken entry, naming it; nothing about the others.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 2, errors[:5]
    assert "ouptut" in errors[0] and str(tmp_path / "cert.pem") in errors[0]
    assert "no-such-cert.pem" in errors[1]
    assert elapsed < 60, elapsed
