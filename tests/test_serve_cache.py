"""``ocspstaple serve`` as a cache origin (RFC 5019 section 6), and safe on a network.

A GET answered with a staple is cacheable until the staple's refresh point
(or 5 minutes before it expires, if sooner), with the headers checked against
the staple's own thisUpdate, producedAt and nextUpdate; conditional GETs get
304; everything else stays no-cache.  In-process server on 127.0.0.1 (the
``start`` fixture of test_serve), real responses, real files; the serve CLI
as a process once, for --refresh-at.  Every cacheable case has a twin that
is not.
"""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import http.client
import socket
import threading
import urllib.parse
from dataclasses import replace
from pathlib import Path

import pytest
from pki import CA, DAY, HOUR
from servers import Serve
from test_serve import (  # noqa: F401  (clock and start are fixtures)
    Served,
    StartServer,
    clock,
    make_served,
    request,
    start,
    status,
)

from ocspstaple.serve import OcspServer
from ocspstaple.validate import MIN_REMAINING

UTC = dt.timezone.utc


def whole_now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def fetch(url: str, method: str, path: str = "", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request(method, u.path + path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_path(site: Served, ca: CA) -> str:
    return urllib.parse.quote(base64.b64encode(request(site.leaf, ca)).decode(), safe="")


def http_time(value: str) -> dt.datetime:
    return email.utils.parsedate_to_datetime(value)


def max_age(headers: dict[str, str]) -> int:
    cc = [p.strip() for p in headers["cache-control"].split(",")]
    assert cc[1:] == ["public", "no-transform", "must-revalidate"], cc
    assert cc[0].startswith("max-age=")
    return int(cc[0].removeprefix("max-age="))


@pytest.fixture
def site(tmp_path: Path, ca: CA) -> Served:
    return make_served(tmp_path / "certs", ca)


# -- the headers, against the staple's own times ----------------------------------------

@pytest.mark.parametrize("refresh_at, interval, bound", [
    (0.5, dt.timedelta(days=4), "refresh point"),  # thisUpdate + half of 6 days
    (0.9, dt.timedelta(days=4), "max interval"),  # 0.9 of 6 days is past thisUpdate + 4 days
])
def test_get_answer_is_cacheable_until_the_refresh_point(site: Served, ca: CA, start: StartServer,
                                                         refresh_at: float, interval: dt.timedelta, bound: str):
    this_update = whole_now() - HOUR
    produced = this_update + dt.timedelta(minutes=10)
    next_update = this_update + 6 * DAY
    der = ca.respond(site.leaf.cert, this_update=this_update, next_update=next_update, produced_at=produced)
    site.output.write_bytes(der)
    url = start([replace(site.staple, refresh_at=refresh_at, max_refresh_interval=interval)])
    before = whole_now()
    code, headers, body = fetch(url, "GET", get_path(site, ca))
    after = whole_now() + dt.timedelta(seconds=1)
    assert code == 200 and body == der
    due = this_update + min((next_update - this_update) * refresh_at, interval)
    assert due == (this_update + 3 * DAY if bound == "refresh point" else this_update + 4 * DAY)
    age = max_age(headers)
    # the cache's copy runs out at the refresh point: not earlier, never later
    assert before + dt.timedelta(seconds=age) <= due <= after + dt.timedelta(seconds=age)
    assert dt.timedelta(seconds=age) < next_update - after
    date = http_time(headers["date"])
    assert http_time(headers["expires"]) == date + dt.timedelta(seconds=age)
    assert http_time(headers["last-modified"]) == produced  # RFC 5019: producedAt
    assert http_time(headers["last-modified"]) >= this_update
    assert headers["etag"] == '"' + hashlib.sha256(der).hexdigest() + '"'
    assert headers["content-type"] == "application/ocsp-response"


def test_max_age_ends_five_minutes_before_expiry_when_that_is_sooner(site: Served, ca: CA, start: StartServer):
    this_update = whole_now() - HOUR
    next_update = whole_now() + HOUR
    site.output.write_bytes(ca.respond(site.leaf.cert, this_update=this_update, next_update=next_update))
    url = start([replace(site.staple, refresh_at=0.99)])  # refresh point 1 h 58 m after thisUpdate
    _, headers, _ = fetch(url, "GET", get_path(site, ca))
    age = dt.timedelta(seconds=max_age(headers))
    assert next_update - MIN_REMAINING - dt.timedelta(seconds=3) <= whole_now() + age <= next_update - MIN_REMAINING


def test_a_staple_past_its_refresh_point_is_served_with_max_age_0(site: Served, ca: CA, start: StartServer):
    """Twin: still valid (served), but due: a cache must ask again every time."""
    this_update = whole_now() - 3 * DAY
    site.output.write_bytes(ca.respond(site.leaf.cert, this_update=this_update, next_update=this_update + 4 * DAY))
    url = start([site.staple])
    code, headers, body = fetch(url, "GET", get_path(site, ca))
    assert code == 200 and status(body).name == "SUCCESSFUL"
    assert max_age(headers) == 0
    assert http_time(headers["expires"]) == http_time(headers["date"])


def test_serve_refresh_at_option_sets_max_age(site: Served, ca: CA, tmp_path: Path):
    """The CLI's --refresh-at reaches the headers (a real serve process)."""
    this_update = whole_now() - HOUR
    site.output.write_bytes(ca.respond(site.leaf.cert, this_update=this_update, next_update=this_update + 4 * DAY))
    ages = {}
    for fraction in ("0.25", "0.5"):
        d = tmp_path / f"serve{fraction}"
        d.mkdir()
        serve = Serve(d, "--cert", site.cert, "--output", site.output, "--refresh-at", fraction).start()
        try:
            _, headers, _ = fetch(serve.url, "GET", get_path(site, ca))
        finally:
            serve.stop()
        ages[fraction] = max_age(headers)
    assert abs(ages["0.25"] - (DAY - HOUR).total_seconds()) <= 5
    assert abs(ages["0.5"] - (2 * DAY - HOUR).total_seconds()) <= 5


# -- what stays no-cache -------------------------------------------------------------------

def test_post_answer_is_not_cacheable(site: Served, ca: CA, start: StartServer):
    """Twin of the GET: the same staple by POST (a cache keys on the URL, not the body)."""
    der = ca.respond(site.leaf.cert)
    site.output.write_bytes(der)
    url = start([site.staple])
    code, headers, body = fetch(url, "POST", body=request(site.leaf, ca),
                                headers={"Content-Type": "application/ocsp-request"})
    assert code == 200 and body == der
    assert headers["cache-control"] == "no-cache"
    assert "etag" not in headers and "last-modified" not in headers and "expires" not in headers


@pytest.mark.parametrize("case", ["tryLater", "unauthorized", "malformedRequest"])
def test_error_answers_to_get_are_not_cacheable(site: Served, ca: CA, start: StartServer, case: str):
    url = start([site.staple])  # no staple file yet: tryLater
    path = {"tryLater": get_path(site, ca),
            "unauthorized": urllib.parse.quote(base64.b64encode(request(ca.issue("x.example"), ca)).decode(),
                                               safe=""),
            "malformedRequest": "hello"}[case]
    code, headers, body = fetch(url, "GET", path, headers={"If-None-Match": "*"})
    assert code == 200 and status(body).name == {"tryLater": "TRY_LATER", "unauthorized": "UNAUTHORIZED",
                                                  "malformedRequest": "MALFORMED_REQUEST"}[case]
    assert headers["cache-control"] == "no-cache"
    assert "etag" not in headers


# -- conditional GETs --------------------------------------------------------------------

def test_conditional_get_gets_304(site: Served, ca: CA, start: StartServer):
    der = ca.respond(site.leaf.cert)
    site.output.write_bytes(der)
    url = start([site.staple])
    path = get_path(site, ca)
    _, first, _ = fetch(url, "GET", path)
    for cond in ({"If-None-Match": first["etag"]}, {"If-None-Match": f'"x", W/{first["etag"]}'},
                 {"If-Modified-Since": first["last-modified"]}):
        code, headers, body = fetch(url, "GET", path, headers=cond)
        assert (code, body) == (304, b""), cond
        assert headers["etag"] == first["etag"] and headers["last-modified"] == first["last-modified"]
        assert "cache-control" in headers and "expires" in headers
        assert "content-length" not in headers
    # twins: another tag, or a date that is not this staple's
    later = email.utils.format_datetime(http_time(first["last-modified"]) + HOUR, usegmt=True)
    for cond in ({"If-None-Match": '"' + "0" * 64 + '"'}, {"If-Modified-Since": later},
                 {"If-Modified-Since": "yesterday"},
                 # If-None-Match decides when both are given (RFC 9110 13.2.2)
                 {"If-None-Match": '"nope"', "If-Modified-Since": first["last-modified"]}):
        code, _, body = fetch(url, "GET", path, headers=cond)
        assert (code, body) == (200, der), cond


def test_conditional_get_after_the_staple_changed_gets_the_new_one(site: Served, ca: CA, start: StartServer):
    """A revocation with an older producedAt than the good staple it replaced
    (refresh writes it whatever its age) is not "not modified since"."""
    good = ca.respond(site.leaf.cert, this_update=whole_now() - HOUR)
    site.output.write_bytes(good)
    url = start([site.staple])
    path = get_path(site, ca)
    _, first, _ = fetch(url, "GET", path)
    revoked = ca.respond(site.leaf.cert, status="revoked", this_update=whole_now() - 2 * HOUR,
                         produced_at=whole_now() - 2 * HOUR)
    site.output.write_bytes(revoked)
    for cond in ({"If-None-Match": first["etag"]}, {"If-Modified-Since": first["last-modified"]}):
        code, headers, body = fetch(url, "GET", path, headers=cond)
        assert (code, body) == (200, revoked), cond
        assert headers["etag"] != first["etag"]


# -- safe on a network ------------------------------------------------------------------------

def raw(url: str, data: bytes) -> bytes:
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize("data, code", [
    (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"PUT /etc/passwd HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /x HTTP/2.0 extra\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n\r\n", 411),
    (b"GET /" + b"A" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_http_errors_say_nothing_of_the_server(site: Served, ca: CA, start: StartServer, data: bytes, code: int):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    url = start([site.staple])
    answer = raw(url, data)
    assert answer.startswith(f"HTTP/1.1 {code} ".encode()), answer[:80]
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert len(body) < 40 and b"/" not in body and b"ocspstaple" not in body.lower(), body
    assert str(site.output.parent).encode() not in answer


def test_an_internal_error_sends_nothing_of_it(site: Served, ca: CA):
    """A bug answering a request: that connection is closed with no answer at all,
    so no path or exception text reaches the client; the next request is served."""
    class Broken:
        clock = staticmethod(lambda: dt.datetime.now(UTC))
        calls = 0

        def lookup(self, der: bytes):  # a hand-written fake index, passed in
            Broken.calls += 1
            raise RuntimeError(f"cannot read {site.output}: secret")

    server = OcspServer(("127.0.0.1", 0), Broken())  # type: ignore[arg-type]
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        req = request(site.leaf, ca)
        post = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(req) + req
        assert raw(url, post) == b""
        assert Broken.calls == 1
        # twin: the server still answers a request that does not hit the bug
        assert raw(url, b"DELETE / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_unknown_certificate_by_get_is_unauthorized_and_names_nothing(site: Served, ca: CA, start: StartServer):
    site.output.write_bytes(ca.respond(site.leaf.cert))
    url = start([site.staple])
    stranger = ca.issue("stranger.example.test")
    code, headers, body = fetch(url, "GET", urllib.parse.quote(base64.b64encode(request(stranger, ca)).decode(),
                                                               safe=""))
    assert code == 200 and status(body).name == "UNAUTHORIZED" and len(body) < 10
    # twin: the served certificate's request gets its staple
    code, _, body = fetch(url, "GET", get_path(site, ca))
    assert code == 200 and len(body) > 100

