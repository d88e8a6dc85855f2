"""End to end: ocspstaple feeding real nginx, HAProxy and Apache httpd on 127.0.0.1.

Each test runs the real CLI (refresh, serve) as a subprocess against the test
responder (tests/responder.py), starts a real server in the foreground from a
config in tmp_path (tests/servers.py), and asks `openssl s_client -status`
what the server staples.  A staple is identified by its This Update (and Cert
Status), compared with what cryptography reads from the file on disk.

The staples of one test have distinct thisUpdates (A < B < C < R), so that a
server still showing the old one cannot pass a check for the new one: each
"it arrived" check first asserts that the server showed something else before.
Each "kept through an outage" check has a recovery twin in the same test,
proving that the same path would have shown a change.
"""
from __future__ import annotations

import datetime as dt
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from conftest import Run, run_cli
from cryptography.hazmat.primitives import hashes
from pki import CA, DAY, HOUR, write_pem
from responder import Reply, Responder
from servers import (
    Apache,
    HAProxy,
    Nginx,
    Serve,
    StapleFile,
    Started,
    TLSSite,
    make_tls_site,
    read_staple,
    s_client,
    stapled_matches,
    started_fixture,
    wait_stapled,
)

pytestmark = pytest.mark.e2e

MINUTE = dt.timedelta(minutes=1)
OUTAGES = ["down", "tryLater", "garbage"]
#: How long httpd may take to show a changed staple: its cache timeout (1 s) plus slack.
HTTPD_PICKUP = 8.0


# -- helpers ----------------------------------------------------------------------------

def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@dataclass
class Times:
    """thisUpdate of the staples A < B < C < R (revoked) of one test."""

    a: dt.datetime
    b: dt.datetime
    c: dt.datetime
    r: dt.datetime


@pytest.fixture
def started() -> Iterator[Started]:
    """Servers started through this are stopped by PID at teardown."""
    yield from started_fixture()


@pytest.fixture
def times() -> Times:
    t = now()
    return Times(a=t - 4 * HOUR, b=t - 3 * HOUR, c=t - 2 * HOUR, r=t - HOUR)


@pytest.fixture
def site(tmp_path: Path, ca: CA, responder: Responder) -> TLSSite:
    s = make_tls_site(tmp_path / "site", ca, responder.url)
    responder.leaf = s.leaf
    return s


def good(ca: CA, site: TLSSite, t: dt.datetime) -> bytes:
    return ca.respond(site.leaf.cert, this_update=t, next_update=t + 4 * DAY)


def revoked(ca: CA, site: TLSSite, t: dt.datetime) -> bytes:
    return ca.respond(site.leaf.cert, status="revoked", this_update=t, next_update=t + 4 * DAY,
                      revoked_at=t - HOUR)


def refresh(*args: str | Path) -> Run:
    return run_cli("refresh", "--timeout", "3", *args, timeout=40)


def fail_ca(responder: Responder, kind: str) -> None:
    """Make the CA's responder fail: ``down`` stops it (connections refused)."""
    if kind == "down":
        port = int(responder.url.rstrip("/").rsplit(":", 1)[1])
        responder.__exit__(None, None, None)  # the fixture's own __exit__ later is harmless
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    else:
        responder.fault(kind)


def refresh_after_outage(ca: CA, responder: Responder, kind: str, body: bytes, *args: str | Path) -> Run:
    """The CA is back and answers ``body``: refresh with ``args`` (the old
    responder, or a fresh one at --url when the old one was stopped)."""
    if kind != "down":
        responder.serve(body)
        return refresh(*args)
    with Responder(ca, responder.leaf) as fresh:
        fresh.serve(body)
        return refresh(*args, "--url", fresh.url)


def assert_kept(run: Run, cert: Path) -> None:
    """An outage run: exit 1, one line naming the certificate, the staple kept."""
    assert run.code == 1, run.err
    assert "Traceback" not in run.err, run.err
    lines = run.lines
    assert len(lines) == 1, run.err
    assert str(cert) in lines[0] and "kept staple valid until" in lines[0], lines[0]


def assert_quiet_success(run: Run) -> None:
    assert run.code == 0, run.err
    assert run.err.strip() == "" and run.out.strip() == "", run.err + run.out


def assert_revoked_reported(run: Run, cert: Path) -> None:
    assert run.code == 2, run.err
    assert "Traceback" not in run.err, run.err
    assert any(str(cert) in line and "revoked" in line for line in run.lines), run.err


def assert_stapled(port: int, staple: StapleFile) -> None:
    seen = s_client(port)
    assert stapled_matches(seen, staple), (
        f"server staples {seen}, the file holds {staple.cert_status}/{staple.this_update}\n{seen.output}")


# -- nginx: refresh writes the file, the deploy hook reloads nginx -----------------------

class NginxHook:
    """A deploy hook that records $OCSPSTAPLE_CHANGED, then reloads this test's nginx."""

    def __init__(self, directory: Path, nginx: Nginx) -> None:
        self.log = directory / "hook.log"
        self.command = f"printf '%s\\n--\\n' \"$OCSPSTAPLE_CHANGED\" >> {shlex.quote(str(self.log))} && " \
                       f"{nginx.reload_command}"

    def calls(self) -> list[str]:
        """$OCSPSTAPLE_CHANGED of every run of the hook so far."""
        if not self.log.exists():
            return []
        return [c.strip("\n") for c in self.log.read_text().split("--\n") if c.strip()]


@pytest.fixture
def nginx_with_a(tmp_path: Path, ca: CA, site: TLSSite, responder: Responder, times: Times,
                 started: Started) -> tuple[Nginx, NginxHook]:
    """nginx stapling A, which `refresh` wrote before nginx started."""
    responder.serve(good(ca, site, times.a))
    assert_quiet_success(refresh("--cert", site.fullchain, "--output", site.staple))
    (tmp_path / "nginx").mkdir()
    nginx = started(Nginx(tmp_path / "nginx", site))
    assert_stapled(nginx.port, read_staple(site.staple))
    assert s_client(nginx.port).this_update == times.a
    return nginx, NginxHook(tmp_path, nginx)


def test_nginx_staples_what_refresh_wrote_after_the_hook_reloads(ca, site, responder, times, nginx_with_a):
    nginx, hook = nginx_with_a
    b = good(ca, site, times.b)
    responder.serve(b)
    workers = nginx.workers()
    run = refresh("--cert", site.fullchain, "--output", site.staple, "--force", "--deploy-hook", hook.command)
    assert_quiet_success(run)
    assert site.staple.read_bytes() == b
    assert hook.calls() == [str(site.staple)]
    nginx.wait_reloaded(workers)
    seen = s_client(nginx.port)
    assert seen.this_update == times.b != times.a  # twin: A was stapled before
    assert_stapled(nginx.port, read_staple(site.staple))

    # Nothing changed (the CA answers B again): no hook, nginx untouched.
    workers = nginx.workers()
    responder.serve(good(ca, site, times.b))
    run = refresh("--cert", site.fullchain, "--output", site.staple, "--force", "--deploy-hook", hook.command)
    assert_quiet_success(run)
    assert site.staple.read_bytes() == b
    assert hook.calls() == [str(site.staple)]
    assert nginx.workers() == workers


def test_nginx_reads_the_file_only_at_reload(ca, site, responder, times, nginx_with_a):
    """Twin of the hook test: without the hook, nginx goes on stapling A even
    though C is on disk, so it was the hook's reload that brought B/C in."""
    nginx, hook = nginx_with_a
    responder.serve(good(ca, site, times.c))
    assert_quiet_success(refresh("--cert", site.fullchain, "--output", site.staple, "--force"))
    assert read_staple(site.staple).this_update == times.c
    assert s_client(nginx.port).this_update == times.a
    nginx.reload()
    assert_stapled(nginx.port, read_staple(site.staple))


@pytest.mark.parametrize("outage", OUTAGES)
def test_nginx_keeps_the_good_staple_through_a_ca_outage(ca, site, responder, times, nginx_with_a, outage):
    nginx, hook = nginx_with_a
    a = site.staple.read_bytes()
    fail_ca(responder, outage)
    run = refresh("--cert", site.fullchain, "--output", site.staple, "--force", "--deploy-hook", hook.command)
    assert_kept(run, site.fullchain)
    assert site.staple.read_bytes() == a
    assert hook.calls() == []  # nothing changed: no hook
    # Whoever reloads nginx now (logrotate, an operator) finds a sound file.
    nginx.reload()
    assert_stapled(nginx.port, read_staple(site.staple))
    assert s_client(nginx.port).this_update == times.a

    # Twin: the CA recovers with C; the same command brings C to nginx.
    workers = nginx.workers()
    c = good(ca, site, times.c)
    run = refresh_after_outage(ca, responder, outage, c, "--cert", site.fullchain, "--output", site.staple,
                               "--force", "--deploy-hook", hook.command)
    assert_quiet_success(run)
    assert site.staple.read_bytes() == c
    assert hook.calls() == [str(site.staple)]
    nginx.wait_reloaded(workers)
    assert s_client(nginx.port).this_update == times.c


def test_nginx_failing_or_hanging_hook_is_reported(ca, site, responder, times, nginx_with_a, tmp_path):
    """Twin of the hook test: a reload that fails (nginx is gone) or a hook that
    hangs gives exit 1 and a line about the hook; the staple stays written."""
    nginx, hook = nginx_with_a
    nginx.stop()
    b = good(ca, site, times.b)
    responder.serve(b)
    run = refresh("--cert", site.fullchain, "--output", site.staple, "--force", "--deploy-hook", hook.command)
    assert run.code == 1, run.err
    assert "Traceback" not in run.err
    assert any("hook" in line and "fail" in line for line in run.lines), run.err
    assert site.staple.read_bytes() == b
    assert hook.calls() == [str(site.staple)]

    pid_file = tmp_path / "hook.pid"
    hanging = f"echo $$ > {shlex.quote(str(pid_file))}; exec sleep 60"
    responder.serve(good(ca, site, times.c))
    t0 = time.monotonic()
    run = refresh("--cert", site.fullchain, "--output", site.staple, "--force", "--deploy-hook", hanging,
                  "--hook-timeout", "1")
    assert time.monotonic() - t0 < 15
    assert run.code == 1, run.err
    assert any("hook" in line for line in run.lines), run.err
    assert read_staple(site.staple).this_update == times.c
    assert not Path(f"/proc/{int(pid_file.read_text())}").exists(), "the hanging hook was left running"


def test_nginx_staples_a_revocation(ca, site, responder, times, nginx_with_a):
    nginx, hook = nginx_with_a
    assert s_client(nginx.port).cert_status == "good"  # twin: good before
    responder.serve(revoked(ca, site, times.r))
    workers = nginx.workers()
    run = refresh("--cert", site.fullchain, "--output", site.staple, "--force", "--deploy-hook", hook.command)
    assert_revoked_reported(run, site.fullchain)
    assert read_staple(site.staple).cert_status == "revoked"
    assert hook.calls() == [str(site.staple)]
    nginx.wait_reloaded(workers)
    seen = s_client(nginx.port)
    assert seen.cert_status == "revoked" and seen.this_update == times.r, seen.output


# -- HAProxy: refresh writes CRT.ocsp and pushes it over the stats socket ----------------

@pytest.fixture
def haproxy_with_a(tmp_path: Path, ca: CA, site: TLSSite, responder: Responder, times: Times,
                   started: Started) -> HAProxy:
    """HAProxy serving site.pem, started with A in site.pem.ocsp (written by refresh)."""
    responder.serve(good(ca, site, times.a))
    assert_quiet_success(refresh("--cert", site.combined))
    ocsp_file = Path(f"{site.combined}.ocsp")
    assert read_staple(ocsp_file).this_update == times.a
    (tmp_path / "haproxy").mkdir()
    haproxy = started(HAProxy(tmp_path / "haproxy", site.combined))
    assert_stapled(haproxy.port, read_staple(ocsp_file))
    return haproxy


def ocsp_file(site: TLSSite) -> Path:
    return Path(f"{site.combined}.ocsp")


@pytest.mark.parametrize("form", ["unix", "tcp"])
def test_haproxy_push_takes_effect_without_reload(ca, site, responder, times, haproxy_with_a, form):
    haproxy = haproxy_with_a
    sock = str(haproxy.socket) if form == "unix" else haproxy.tcp_socket
    pid = haproxy.pid
    assert s_client(haproxy.port).this_update == times.a  # twin: A before the push
    b = good(ca, site, times.b)
    responder.serve(b)
    run = refresh("--cert", site.combined, "--force", "--haproxy-socket", sock)
    assert_quiet_success(run)
    assert ocsp_file(site).read_bytes() == b
    assert_stapled(haproxy.port, read_staple(ocsp_file(site)))  # at once: no wait, no reload
    assert haproxy.alive() and haproxy.pid == pid  # the same process: no restart, no reload


def test_haproxy_failed_push_is_reported_and_force_pushes_again(ca, site, responder, times, haproxy_with_a,
                                                               tmp_path):
    """A push that cannot reach HAProxy: exit 1, a line naming the certificate,
    the file written all the same; HAProxy still has A.  The next --force run
    pushes B although B did not change (and without --force it would not)."""
    haproxy = haproxy_with_a
    b = good(ca, site, times.b)
    responder.serve(b)
    run = refresh("--cert", site.combined, "--force", "--haproxy-socket", tmp_path / "no-such.sock")
    assert run.code == 1, run.err
    assert len(run.lines) == 1 and str(site.combined) in run.lines[0], run.err
    assert "Traceback" not in run.err
    assert ocsp_file(site).read_bytes() == b
    assert s_client(haproxy.port).this_update == times.a

    # Not due and unchanged, no --force: nothing is pushed.
    run = refresh("--cert", site.combined, "--haproxy-socket", haproxy.socket)
    assert_quiet_success(run)
    assert s_client(haproxy.port).this_update == times.a

    # --force: the CA answers B again (no change on disk), B is pushed.
    responder.serve(good(ca, site, times.b))
    run = refresh("--cert", site.combined, "--force", "--haproxy-socket", haproxy.socket)
    assert_quiet_success(run)
    assert ocsp_file(site).read_bytes() == b
    assert_stapled(haproxy.port, read_staple(ocsp_file(site)))
    assert s_client(haproxy.port).this_update == times.b


@pytest.mark.parametrize("outage", OUTAGES)
def test_haproxy_keeps_the_good_staple_through_a_ca_outage(ca, site, responder, times, haproxy_with_a, outage):
    haproxy = haproxy_with_a
    a = ocsp_file(site).read_bytes()
    fail_ca(responder, outage)
    run = refresh("--cert", site.combined, "--force", "--haproxy-socket", haproxy.socket)
    assert_kept(run, site.combined)  # one line: the outage; the push of A itself went through
    assert ocsp_file(site).read_bytes() == a
    assert_stapled(haproxy.port, read_staple(ocsp_file(site)))
    assert s_client(haproxy.port).this_update == times.a

    # Twin: the CA recovers with C; the same command pushes C.
    c = good(ca, site, times.c)
    run = refresh_after_outage(ca, responder, outage, c, "--cert", site.combined, "--force",
                               "--haproxy-socket", haproxy.socket)
    assert_quiet_success(run)
    assert ocsp_file(site).read_bytes() == c
    assert s_client(haproxy.port).this_update == times.c


def test_haproxy_staples_a_pushed_revocation(ca, site, responder, times, haproxy_with_a):
    haproxy = haproxy_with_a
    assert s_client(haproxy.port).cert_status == "good"  # twin: good before
    # A genuine, newer response under a SHA-256 CertID (HAProxy 2.6 would not
    # staple it): refused, nothing pushed, HAProxy keeps stapling A (issue 13).
    a = ocsp_file(site).read_bytes()
    responder.serve(ca.respond(site.leaf.cert, this_update=times.b, next_update=times.b + 4 * DAY,
                               hash_alg=hashes.SHA256()))
    run = refresh("--cert", site.combined, "--force", "--haproxy-socket", haproxy.socket)
    assert_kept(run, site.combined)
    assert "only a SHA-1 CertID" in run.lines[0], run.err
    assert ocsp_file(site).read_bytes() == a
    assert s_client(haproxy.port).this_update == times.a
    responder.serve(revoked(ca, site, times.r))
    run = refresh("--cert", site.combined, "--force", "--haproxy-socket", haproxy.socket)
    assert_revoked_reported(run, site.combined)
    assert read_staple(ocsp_file(site)).cert_status == "revoked"
    seen = s_client(haproxy.port)
    assert seen.cert_status == "revoked" and seen.this_update == times.r, seen.output


def test_haproxy_push_for_a_certificate_it_does_not_serve(ca, site, responder, times, haproxy_with_a, tmp_path):
    haproxy = haproxy_with_a
    other_dir = tmp_path / "other"
    other = make_tls_site(other_dir, ca, responder.url, cn="other.example.test")
    body = ca.respond(other.leaf.cert, this_update=times.b)
    responder.serve(body)
    run = refresh("--cert", other.combined, "--haproxy-socket", haproxy.socket)
    assert run.code == 1, run.err
    assert "Traceback" not in run.err
    assert len(run.lines) == 1, run.err
    line = run.lines[0]
    assert str(other.combined) in line and "does not match any certificate" in line, line
    assert Path(f"{other.combined}.ocsp").read_bytes() == body  # written all the same
    assert s_client(haproxy.port).this_update == times.a  # the served staple is untouched

    # Twin: the same push for the certificate HAProxy does serve is taken.
    responder.serve(good(ca, site, times.b))
    assert_quiet_success(refresh("--cert", site.combined, "--force", "--haproxy-socket", haproxy.socket))
    assert s_client(haproxy.port).this_update == times.b


# -- httpd: mod_ssl asks `ocspstaple serve` (SSLStaplingForceURL) ------------------------

@dataclass
class HttpdSetup:
    httpd: Apache
    serve: Serve


@pytest.fixture
def httpd_with_a(tmp_path: Path, ca: CA, site: TLSSite, responder: Responder, times: Times,
                 started: Started) -> HttpdSetup:
    responder.serve(good(ca, site, times.a))
    assert_quiet_success(refresh("--cert", site.fullchain, "--output", site.staple))
    (tmp_path / "serve").mkdir()
    serve = started(Serve(tmp_path / "serve", "-vv", "--cert", site.fullchain, "--output", site.staple))
    (tmp_path / "httpd").mkdir()
    httpd = started(Apache(tmp_path / "httpd", site, serve.url))
    assert_stapled(httpd.port, read_staple(site.staple))
    return HttpdSetup(httpd, serve)


def test_httpd_staples_what_serve_holds(ca, site, responder, times, httpd_with_a):
    httpd = httpd_with_a.httpd
    assert s_client(httpd.port).this_update == times.a  # twin: A before
    requests_before = responder.requests
    b = good(ca, site, times.b)
    responder.serve(b)
    assert_quiet_success(refresh("--cert", site.fullchain, "--output", site.staple, "--force"))
    assert site.staple.read_bytes() == b
    wait_stapled(httpd.port, read_staple(site.staple), HTTPD_PICKUP)
    # httpd and serve never asked the CA: only the refresh did.
    assert responder.requests == requests_before + 1

    # Without serve, httpd staples nothing (SSLStaplingFakeTryLater off: not a
    # tryLater of its own making); keep ocspstaple-serve running.
    assert httpd_with_a.serve.stop() == 0  # SIGTERM: a clean stop
    time.sleep(httpd.cache_timeout + 0.5)
    assert s_client(httpd.port).response_status is None


def test_httpd_keeps_the_good_staple_through_a_ca_outage(ca, site, responder, times, httpd_with_a, started,
                                                        tmp_path):
    """Through tryLater, garbage and a dead CA, httpd behind serve staples A.
    Twin: a stock httpd asking the CA itself (same config, SSLStaplingForceURL
    at the CA) staples nothing during the same outage: httpd bug 57121."""
    httpd, serve = httpd_with_a.httpd, httpd_with_a.serve
    (tmp_path / "direct").mkdir()
    direct = started(Apache(tmp_path / "direct", site, responder.url))
    a = read_staple(site.staple)
    assert_stapled(direct.port, a)
    for outage in ["tryLater", "garbage", "down"]:  # down last: it stops the responder
        fail_ca(responder, outage)
        run = refresh("--cert", site.fullchain, "--output", site.staple, "--force")
        assert_kept(run, site.fullchain)
        assert site.staple.read_bytes() == a.der
        asked = serve.requests()
        time.sleep(httpd.cache_timeout + 0.5)  # both httpds' caches have expired
        assert_stapled(httpd.port, a)
        assert serve.requests() > asked, "httpd did not ask serve again: this only showed its cache"
        # Stock httpd has lost A and staples nothing.  (With the default
        # SSLStaplingFakeTryLater on, it staples a tryLater it made up itself
        # after garbage, an HTTP error or a dead CA, even with
        # SSLStaplingReturnResponderErrors off.)
        lost = s_client(direct.port)
        assert lost.response_status is None, (outage, lost)

    # Twin: the CA recovers with C; httpd behind serve shows C.
    c = good(ca, site, times.c)
    assert_quiet_success(refresh_after_outage(ca, responder, "down", c, "--cert", site.fullchain,
                                              "--output", site.staple, "--force"))
    wait_stapled(httpd.port, read_staple(site.staple), HTTPD_PICKUP)


def test_httpd_staples_a_revocation(ca, site, responder, times, httpd_with_a):
    httpd = httpd_with_a.httpd
    assert s_client(httpd.port).cert_status == "good"  # twin: good before
    responder.serve(revoked(ca, site, times.r))
    run = refresh("--cert", site.fullchain, "--output", site.staple, "--force")
    assert_revoked_reported(run, site.fullchain)
    staple = read_staple(site.staple)
    assert staple.cert_status == "revoked"
    seen = wait_stapled(httpd.port, staple, HTTPD_PICKUP)
    assert seen.cert_status == "revoked" and seen.this_update == times.r


# -- refresh --scan feeding HAProxy's `crt DIR` ------------------------------------------

def test_scan_directory_served_by_haproxy(tmp_path, ca, responder, times, started):
    """Two combined PEMs in one directory, HAProxy loading the whole directory
    (`crt DIR`, common in practice): refresh --scan writes both .pem.ocsp, and
    HAProxy, started afterwards, staples each by SNI.  Twin: a third PEM
    without its issuer is skipped quietly, and HAProxy staples nothing for it.
    Whatever else refresh leaves in DIR (a lock file once was
    `site.pem.ocsp.lock`) must not stop HAProxy from loading DIR."""
    certs = tmp_path / "certs"
    sites = [make_tls_site(tmp_path / name, ca, responder.url, cn=f"{name}.example.test") for name in ("one", "two")]
    certs.mkdir()
    for s in sites:
        (certs / f"{s.dir.name}.pem").write_bytes(s.combined.read_bytes())
    lone = make_tls_site(tmp_path / "lone", ca, responder.url, cn="lone.example.test")
    write_pem(certs / "lone.pem", lone.leaf, lone.leaf.key_pem)
    bodies = {s.leaf.cert.serial_number: good(ca, s, times.a + (i + 1) * MINUTE) for i, s in enumerate(sites)}
    responder.reply_for = lambda req: Reply(bodies[req.serial_number]) if req else Reply(status=400)
    run = refresh("--scan", certs)
    assert_quiet_success(run)
    for s in sites:
        assert (certs / f"{s.dir.name}.pem.ocsp").read_bytes() == bodies[s.leaf.cert.serial_number]
    (tmp_path / "haproxy").mkdir()
    haproxy = started(HAProxy(tmp_path / "haproxy", certs))
    for i, s in enumerate(sites):
        seen = s_client(haproxy.port, servername=f"{s.dir.name}.example.test")
        assert seen.cert_status == "good" and seen.this_update == times.a + (i + 1) * MINUTE, seen.output
    assert not (certs / "lone.pem.ocsp").exists()
    assert s_client(haproxy.port, servername="lone.example.test").response_status is None
