"""Issue 7, items 3 and 4, through the real CLI: stale caches and clock skew.

Most OCSP responders sit behind a CDN that may serve an old object to GET.
A small caching front on 127.0.0.1 plays that CDN: it serves a stored older
answer to every GET it has cached and passes POST through to the test
responder (the origin).  A due staple whose GET answer is not fresher is
asked again with POST; a responder's Cache-Control max-age is remembered in
the state record; a responder clock (HTTP Date, producedAt) hours away from
ours is warned about once per run.

Every case that shows something works has a twin beside it showing that the
failure is caught, so a test cannot pass merely because nothing happens.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import http.client
import json
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from conftest import Run, run_cli
from pki import CA, DAY, HOUR, Issued, write_pem
from responder import Reply, Responder

from ocspstaple.certs import Pair, build_request
from ocspstaple.fetch import get_url

MINUTE = dt.timedelta(minutes=1)
STATE = ".fullchain.pem.ocsp.state.json"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def refresh(*args: str | Path) -> Run:
    return run_cli("refresh", "--timeout", "5", *args, timeout=30)


def http_date(t: dt.datetime) -> str:
    return email.utils.format_datetime(t.astimezone(dt.timezone.utc), usegmt=True)


def no_traceback(run: Run) -> None:
    assert "Traceback" not in run.err and run.out == "", run.err


# -- the CDN -------------------------------------------------------------------------

class Cdn:
    """A caching HTTP front for ``origin`` on 127.0.0.1.

    GET: a cached path is answered from the cache (however old the object);
    a miss is fetched from the origin and cached.  POST is passed through to
    the origin, headers (Date, Cache-Control) and all, and never cached, as
    CDNs do.  ``seen`` lists the methods it was asked with.
    """

    def __init__(self, origin: str) -> None:
        self.origin = urllib.parse.urlsplit(origin)
        self.cache: dict[str, bytes] = {}
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def store(self, leaf: Issued, issuer: CA, body: bytes) -> None:
        """Hold ``body`` as the cached GET answer for ``leaf``'s request."""
        request = build_request(Pair(cert=leaf.cert, issuer=issuer.cert))
        self.cache[urllib.parse.urlsplit(get_url(self.url, request)).path] = body

    def _forward(self, method: str, path: str, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self.origin.hostname is not None
        conn = http.client.HTTPConnection(self.origin.hostname, self.origin.port, timeout=5)
        try:
            headers = {"Content-Type": "application/ocsp-request"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def __enter__(self) -> Cdn:
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                with cdn._lock:
                    cdn.seen.append("GET")
                    cached = cdn.cache.get(self.path)
                if cached is not None:
                    # A stale object: served as it was stored a day ago.
                    self._send(200, [("Content-Type", "application/ocsp-response"), ("Age", "86400")], cached)
                    return
                status, headers, body = cdn._forward("GET", self.path, None)
                if status == 200:
                    with cdn._lock:
                        cdn.cache[self.path] = body
                self._send(status, headers, body)

            def do_POST(self) -> None:
                with cdn._lock:
                    cdn.seen.append("POST")
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._send(*cdn._forward("POST", self.path, body))

            def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                passed = {k.lower(): v for k, v in headers}
                if "date" in passed:  # the origin's clock, not ours
                    self.date_time_string = lambda timestamp=None: passed["date"]  # type: ignore[method-assign]
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("date", "server", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Site:
    leaf: Issued
    cert: Path
    output: Path


def make_site(directory: Path, ca: CA, url: str, cn: str = "www.example.test") -> Site:
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue(cn, ocsp_urls=(url,))
    cert = write_pem(directory / "fullchain.pem", leaf, ca.cert)
    return Site(leaf=leaf, cert=cert, output=directory / "fullchain.pem.ocsp")


@pytest.fixture
def cdn(responder: Responder) -> Iterator[Cdn]:
    with Cdn(responder.url) as c:
        yield c


@dataclass
class Times:
    """Three responses for one leaf: T0 older than the staple, T1 the staple, T2 fresher."""

    t0: bytes
    t1: bytes
    t2: bytes
    t1_at: dt.datetime
    t2_at: dt.datetime


def responses(ca: CA, leaf: Issued, *, due: bool = True) -> Times:
    n = now()
    # Due: more than half of T1's window (thisUpdate now-2.5d, nextUpdate now+1.5d) has
    # passed, and less than three quarters (until then a max-age may hold back a refresh).
    t1_at = n - 60 * HOUR if due else n - 2 * HOUR
    t1 = ca.respond(leaf.cert, this_update=t1_at, next_update=n + 36 * HOUR if due else n + 3 * DAY)
    t0 = ca.respond(leaf.cert, this_update=t1_at - 6 * HOUR, next_update=n + 12 * HOUR)
    t2_at = n - HOUR
    t2 = ca.respond(leaf.cert, this_update=t2_at, next_update=t2_at + 4 * DAY)
    return Times(t0, t1, t2, t1_at, t2_at)


def cdn_site(tmp_path: Path, ca: CA, responder: Responder, cdn: Cdn, *, due: bool = True) -> tuple[Site, Times]:
    """A leaf whose AIA names the CDN, its staple T1 on disk."""
    site = make_site(tmp_path, ca, cdn.url)
    responder.leaf = site.leaf
    times = responses(ca, site.leaf, due=due)
    site.output.write_bytes(times.t1)
    return site, times


def methods(r: Responder) -> list[str]:
    return [s.method for s in r.seen]


def hhmm(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


# -- 3. a CDN with a stale object: ask again with POST ---------------------------------

@pytest.mark.parametrize("cached", ["same", "older"])
def test_stale_cdn_get_then_post_writes_the_fresher(tmp_path, ca, responder, cdn, cached):
    """Due staple T1; the CDN serves T1 (or older) to GET; the origin has T2:
    POST gets T2, it is written, and -v says POST gave the fresher one."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    cdn.store(site.leaf, ca, t.t1 if cached == "same" else t.t0)
    responder.serve(t.t2)
    run = refresh("--cert", site.cert, "-v")
    no_traceback(run)
    assert run.code == 0, run.err
    assert site.output.read_bytes() == t.t2
    assert len(run.lines) == 1, run.err
    line = run.lines[0]
    assert "the GET answer was older" in line and "POST gave the fresher one" in line, line
    assert "a cached copy?" in line and hhmm(t.t2_at) in line, line
    assert cdn.seen == ["GET", "POST"]
    assert methods(responder) == ["POST"]  # the GET never reached the origin


@pytest.mark.parametrize("cached, code", [("same", 0), ("older", 1)])
def test_not_due_forced_get_is_not_retried_with_post(tmp_path, ca, responder, cdn, cached, code):
    """Twin: the staple is not due (--force asks anyway): a GET answer that
    is not fresher is not asked again with POST; the staple is unchanged
    (same), or the older answer is refused and the staple kept (exit 1)."""
    site, t = cdn_site(tmp_path, ca, responder, cdn, due=False)
    cdn.store(site.leaf, ca, t.t1 if cached == "same" else t.t0)
    responder.serve(t.t2)
    run = refresh("--cert", site.cert, "--force", "-v")
    no_traceback(run)
    assert run.code == code, run.err
    assert site.output.read_bytes() == t.t1
    assert cdn.seen == ["GET"] and responder.requests == 0
    assert len(run.lines) == 1, run.err
    assert ("nothing newer" if cached == "same" else "older response") in run.lines[0], run.lines
    assert "POST" not in run.err


@pytest.mark.parametrize("origin, code", [("same", 0), ("older", 1)])
def test_stale_cdn_and_nothing_newer_at_the_origin(tmp_path, ca, responder, cdn, origin, code):
    """Twin: the origin has nothing newer either.  The same T1: UNCHANGED,
    exit 0, quiet.  An older one (a replay): refused, staple kept, exit 1.
    Exactly one GET and one POST either way."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    cdn.store(site.leaf, ca, t.t1)
    responder.serve(t.t1 if origin == "same" else t.t0)
    run = refresh("--cert", site.cert)
    no_traceback(run)
    assert run.code == code, run.err
    assert site.output.read_bytes() == t.t1
    assert cdn.seen == ["GET", "POST"] and methods(responder) == ["POST"]
    if origin == "same":
        assert run.err == ""
    else:
        assert len(run.lines) == 1 and "older response" in run.lines[0], run.err


def test_direct_fresher_get_needs_no_post(tmp_path, ca, responder):
    """Twin: no CDN, the responder has T2: one GET, written, no POST."""
    site = make_site(tmp_path, ca, responder.url)
    responder.leaf = site.leaf
    t = responses(ca, site.leaf)
    site.output.write_bytes(t.t1)
    responder.serve(t.t2)
    run = refresh("--cert", site.cert, "-v")
    no_traceback(run)
    assert run.code == 0 and site.output.read_bytes() == t.t2, run.err
    assert methods(responder) == ["GET"]
    assert len(run.lines) == 1 and "POST" not in run.lines[0], run.err


# -- 3. max-age: do not ask again before ---------------------------------------------

def retry_after(site: Site) -> dt.datetime | None:
    value = json.loads((site.output.parent / STATE).read_text())["retry_after"]
    return None if value is None else dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_max_age_holds_the_next_runs_until_force(tmp_path, ca, responder, cdn):
    """The origin answers POST with the same T1 and max-age=3600: UNCHANGED,
    retry_after ~ now+1h in the state record; the next run (staple still due)
    asks nobody and says max-age; --force asks."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    cdn.store(site.leaf, ca, t.t1)
    responder.serve(Reply(t.t1, headers={"Cache-Control": "public, max-age=3600"}))
    started = now()
    first = refresh("--cert", site.cert)
    no_traceback(first)
    assert first.code == 0 and first.err == "", first.err
    assert cdn.seen == ["GET", "POST"] and methods(responder) == ["POST"]
    held = retry_after(site)
    assert held is not None and started + 3590 * dt.timedelta(seconds=1) <= held <= now() + HOUR + MINUTE, held

    again = refresh("--cert", site.cert, "-v")
    no_traceback(again)
    assert again.code == 0, again.err
    assert cdn.seen == ["GET", "POST"] and responder.requests == 1  # nobody asked
    assert len(again.lines) == 1, again.err
    assert "max-age says not to ask before" in again.lines[0] and hhmm(held) in again.lines[0], again.lines
    assert retry_after(site) == held  # a run that asked nobody keeps the record

    forced = refresh("--cert", site.cert, "--force")
    no_traceback(forced)
    assert forced.code == 0, forced.err
    assert cdn.seen == ["GET", "POST", "GET", "POST"] and responder.requests == 2


def test_without_max_age_the_next_run_asks_again(tmp_path, ca, responder, cdn):
    """Twin: the same answers without max-age: no retry_after, and the next
    run asks again (GET and POST)."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    cdn.store(site.leaf, ca, t.t1)
    responder.serve(t.t1)
    first = refresh("--cert", site.cert)
    assert first.code == 0 and first.err == "", first.err
    assert retry_after(site) is None
    again = refresh("--cert", site.cert, "-v")
    no_traceback(again)
    assert again.code == 0, again.err
    assert "max-age" not in again.err and "nothing newer" in again.err, again.err
    assert cdn.seen == ["GET", "POST"] * 2 and methods(responder) == ["POST", "POST"]


def test_max_age_of_a_fresher_answer_holds_nothing(tmp_path, ca, responder, cdn):
    """Twin: max-age on an answer that IS fresher: written, and no hold is
    saved (the state record's retry_after stays empty)."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    cdn.store(site.leaf, ca, t.t1)
    responder.serve(Reply(t.t2, headers={"Cache-Control": "max-age=3600"}))
    run = refresh("--cert", site.cert)
    assert run.code == 0 and run.err == "", run.err
    assert site.output.read_bytes() == t.t2
    assert retry_after(site) is None


# -- 4. clock skew: one warning per run -------------------------------------------------

def skew_lines(run: Run) -> list[str]:
    return [line for line in run.lines if "the local clock is" in line]


@pytest.mark.parametrize("offset, side", [(3 * HOUR, "behind"), (-3 * HOUR, "ahead of")])
def test_responder_date_hours_off_warns_once(tmp_path, ca, responder, offset, side):
    """The responder's Date is 3 h off; its response is valid by our clock:
    the staple is written, and one line names the offset, the side and NTP."""
    site = make_site(tmp_path, ca, responder.url)
    responder.leaf = site.leaf
    body = ca.respond(site.leaf.cert)
    responder.serve(Reply(body, headers={"Date": http_date(now() + offset)}))
    run = refresh("--cert", site.cert)
    no_traceback(run)
    assert run.code == 0 and site.output.read_bytes() == body, run.err
    assert len(run.lines) == 1, run.err
    line = run.lines[0]
    for needle in ("the local clock is 3h 0m " + side, responder.url, "its HTTP Date", "NTP"):
        assert needle in line, (needle, line)


@pytest.mark.parametrize("offset", [dt.timedelta(0), 2 * MINUTE, -2 * MINUTE])
def test_responder_date_within_the_allowance_is_quiet(tmp_path, ca, responder, offset):
    """Twin: a right Date, or one 2 minutes off (under 5), warns nothing."""
    site = make_site(tmp_path, ca, responder.url)
    responder.leaf = site.leaf
    body = ca.respond(site.leaf.cert)
    responder.serve(Reply(body, headers={"Date": http_date(now() + offset)}))
    run = refresh("--cert", site.cert)
    assert run.code == 0 and run.err == "", run.err
    assert site.output.read_bytes() == body


@pytest.mark.parametrize("skewed", [True, False])
def test_skew_warning_once_for_two_staples(tmp_path, ca, responder, skewed):
    """Two certificates in one config, one responder 3 h off: both staples
    are written and the warning appears once, not twice.  Twin: with a right
    clock, none."""
    a = make_site(tmp_path / "a", ca, responder.url, "a.example.test")
    b = make_site(tmp_path / "b", ca, responder.url, "b.example.test")
    bodies = {s.leaf.cert.serial_number: ca.respond(s.leaf.cert) for s in (a, b)}
    date = http_date(now() + (3 * HOUR if skewed else dt.timedelta(0)))
    responder.reply_for = lambda req: Reply(bodies[req.serial_number], headers={"Date": date})
    config = tmp_path / "ocspstaple.toml"
    config.write_text('[staple.a]\ncert = "a/fullchain.pem"\n\n[staple.b]\ncert = "b/fullchain.pem"\n')
    run = refresh("--config", config)
    no_traceback(run)
    assert run.code == 0, run.err
    assert a.output.read_bytes() == bodies[a.leaf.cert.serial_number]
    assert b.output.read_bytes() == bodies[b.leaf.cert.serial_number]
    assert responder.requests == 2  # two requests, each with the skewed Date
    if skewed:
        assert len(run.lines) == 1 and len(skew_lines(run)) == 1, run.err
        assert "3h 0m behind" in run.lines[0], run.lines
    else:
        assert run.err == ""


def test_produced_at_hours_ahead_warns_and_is_refused(tmp_path, ca, responder):
    """producedAt 2 h ahead (thisUpdate normal, Date right): validate refuses
    it (more than 5 minutes in the future), so nothing is written (exit 2),
    and two lines: the producedAt skew warning and the error."""
    site = make_site(tmp_path, ca, responder.url)
    responder.leaf = site.leaf
    n = now()
    responder.serve(ca.respond(site.leaf.cert, this_update=n - HOUR, produced_at=n + 2 * HOUR))
    run = refresh("--cert", site.cert)
    no_traceback(run)
    assert run.code == 2, run.err
    assert not site.output.exists()
    assert len(run.lines) == 2, run.err
    warning, error = skew_lines(run), [line for line in run.lines if "the local clock is" not in line]
    assert len(warning) == 1 and "2h 0m behind" in warning[0] and "producedAt" in warning[0], run.err
    assert "NTP" in warning[0], warning
    assert str(site.cert) in error[0] and "producedAt" in error[0] and "future" in error[0], error


def test_produced_at_within_the_allowance_is_quiet(tmp_path, ca, responder):
    """Twin: producedAt 2 minutes ahead is within the skew: written, no warning."""
    site = make_site(tmp_path, ca, responder.url)
    responder.leaf = site.leaf
    n = now()
    body = ca.respond(site.leaf.cert, this_update=n - HOUR, produced_at=n + 2 * MINUTE)
    responder.serve(body)
    run = refresh("--cert", site.cert)
    assert run.code == 0 and run.err == "", run.err
    assert site.output.read_bytes() == body


# -- an expired cached copy; max-age capped -----------------------------------------------

def test_expired_cdn_get_answer_is_asked_again_with_post(tmp_path, ca, responder, cdn):
    """The CDN serves a validly signed but expired copy to GET (the commonest
    stale-CDN failure); the origin has T2: POST gets it and it is written."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    expired = ca.respond(site.leaf.cert, this_update=now() - 5 * DAY, next_update=now() - HOUR)
    cdn.store(site.leaf, ca, expired)
    responder.serve(t.t2)
    run = refresh("--cert", site.cert, "-v")
    no_traceback(run)
    assert run.code == 0 and site.output.read_bytes() == t.t2, run.err
    assert "the GET answer had expired" in run.err and "POST gave the fresher one" in run.err, run.err
    assert cdn.seen == ["GET", "POST"]


def test_a_forged_get_answer_is_not_asked_again(tmp_path, ca, responder, cdn):
    """Twin: a GET answer refused for anything but having run out (here a
    forged signature) is not a cache symptom: no POST, the staple kept."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    impostor = CA.root(ca.cert.subject.rfc4514_string().split("=", 1)[1])
    cdn.store(site.leaf, ca, impostor.respond(site.leaf.cert, issuer=ca.cert, signer=impostor))
    responder.serve(t.t2)
    run = refresh("--cert", site.cert)
    no_traceback(run)
    assert run.code == 1 and site.output.read_bytes() == t.t1, run.err
    assert cdn.seen == ["GET"] and responder.requests == 0


def test_max_age_never_holds_past_three_quarters_of_the_window(tmp_path, ca, responder, cdn):
    """A staple past three quarters of its window is asked for whatever the
    last max-age said: the hold must not eat the margin an outage needs."""
    site, t = cdn_site(tmp_path, ca, responder, cdn)
    late = ca.respond(site.leaf.cert, this_update=now() - 80 * HOUR, next_update=now() + 16 * HOUR)
    site.output.write_bytes(late)
    cdn.store(site.leaf, ca, late)
    responder.serve(Reply(late, headers={"Cache-Control": "max-age=86400"}))
    assert refresh("--cert", site.cert).code == 0
    assert retry_after(site) is not None
    asked = len(cdn.seen)
    assert refresh("--cert", site.cert).code == 0
    assert len(cdn.seen) > asked  # asked again: the hold does not apply this late
    # twin: at under three quarters (the cdn_site staple) the same max-age holds the next run
    site.output.write_bytes(t.t1)
    cdn.store(site.leaf, ca, t.t1)
    responder.serve(Reply(t.t1, headers={"Cache-Control": "max-age=86400"}))
    assert refresh("--cert", site.cert).code == 0
    asked = len(cdn.seen)
    assert refresh("--cert", site.cert).code == 0
    assert len(cdn.seen) == asked
