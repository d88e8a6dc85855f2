"""Request policy over a hand-written transport, and the real HTTP transport on loopback."""
from __future__ import annotations

import base64
import time
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pki import unsuccessful
from responder import Reply, Responder

from ocspstaple.errors import FetchError, InputError
from ocspstaple.fetch import HttpReply, HttpTransport, fetch_response, get_url
from ocspstaple.urls import check_url

# A request whose base64 holds '+', '/' and '='.
REQ = bytes(range(250, 256)) + b"\xfb\xff\xbf" * 7 + b"\x00"


class FakeTransport:
    """Answers from a list; records what was asked."""

    def __init__(self, *replies: HttpReply) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, str, bytes | None]] = []

    def get(self, url: str) -> HttpReply:
        self.calls.append(("GET", url, None))
        return self.replies.pop(0)

    def post(self, url: str, body: bytes) -> HttpReply:
        self.calls.append(("POST", url, body))
        return self.replies.pop(0)


def test_get_url_has_exactly_one_slash_and_percent_encoding():
    b64 = base64.b64encode(REQ).decode()
    assert set("+/=") <= set(b64)
    for base in ("http://ocsp.example/", "http://ocsp.example", "http://ocsp.example//"):
        url = get_url(base, REQ)
        assert url.startswith("http://ocsp.example/") and not url.startswith("http://ocsp.example//")
        tail = url[len("http://ocsp.example/"):]
        assert "+" not in tail and "/" not in tail and "=" not in tail
        assert "%2B" in tail and "%2F" in tail and "%3D" in tail
        assert base64.b64decode(urllib.parse.unquote(tail)) == REQ
    assert get_url("http://ocsp.example/path", REQ).startswith("http://ocsp.example/path/M") or \
        get_url("http://ocsp.example/path", REQ).startswith("http://ocsp.example/path/")


def test_short_request_uses_get_only():
    t = FakeTransport(HttpReply(200, b"response"))
    assert fetch_response(t, "http://ocsp.example/", REQ) == b"response"
    assert [c[0] for c in t.calls] == ["GET"]


def test_long_url_uses_post():
    t = FakeTransport(HttpReply(200, b"response"))
    url = "http://ocsp.example/" + "p" * 250
    assert fetch_response(t, url, REQ) == b"response"
    assert t.calls == [("POST", url, REQ)]


@pytest.mark.parametrize("first", [
    HttpReply(400, b""), HttpReply(404, b""), HttpReply(405, b""), HttpReply(500, b""), HttpReply(503, b""),
    HttpReply(200, unsuccessful("malformedRequest")),
])
def test_post_after_get_error(first):
    t = FakeTransport(first, HttpReply(200, b"response"))
    assert fetch_response(t, "http://ocsp.example/", REQ) == b"response"
    assert [c[0] for c in t.calls] == ["GET", "POST"]


@pytest.mark.parametrize("first", [HttpReply(200, unsuccessful("tryLater")), HttpReply(200, b"junk")])
def test_no_post_after_a_200_that_is_not_malformed_request(first):
    # tryLater is an answer: the responder understood us; POST would not help
    t = FakeTransport(first)
    assert fetch_response(t, "http://ocsp.example/", REQ) == first.body
    assert len(t.calls) == 1


def test_redirect_is_not_followed():
    t = FakeTransport(HttpReply(301, b"", {"location": "http://elsewhere/"}))
    with pytest.raises(FetchError, match="redirect"):
        fetch_response(t, "http://ocsp.example/", REQ)
    assert len(t.calls) == 1


def test_post_error_is_reported():
    t = FakeTransport(HttpReply(500, b""), HttpReply(502, b""))
    with pytest.raises(FetchError, match="HTTP 502"):
        fetch_response(t, "http://ocsp.example/", REQ)


@pytest.mark.parametrize("url", ["ftp://ocsp.example/", "ldap://ocsp.example/", "file:///etc/passwd", "ocsp.example",
                                 "http:///nohost"])
def test_only_http_and_https(url):
    with pytest.raises(InputError, match="not an http"):
        check_url(url)
    t = FakeTransport()
    with pytest.raises(InputError):
        fetch_response(t, url, REQ)
    assert t.calls == []


def test_https_is_accepted():
    assert check_url("https://ocsp.example/") == "https://ocsp.example/"


# -- the real transport, against a real server on 127.0.0.1 ------------------------

@pytest.fixture
def server(ca):
    with Responder(ca) as r:
        yield r


def test_transport_reads_a_normal_answer(server):
    server.serve(Reply(b"x" * 3000))
    t = HttpTransport(timeout=5)
    reply = t.get(server.url + "abc")
    assert (reply.status, reply.body) == (200, b"x" * 3000)
    assert server.seen[-1].method == "GET"
    reply = t.post(server.url, b"\x30\x00")
    assert reply.body == b"x" * 3000 and server.seen[-1].method == "POST"


def test_transport_total_deadline_beats_a_trickling_server(server):
    # one byte every 0.2 s: each socket read succeeds, only a total deadline stops it
    server.serve(Reply(b"y" * 100, trickle=0.2))
    t = HttpTransport(timeout=1.0)
    start = time.monotonic()
    with pytest.raises(FetchError, match="within 1 s"):
        t.get(server.url)
    assert time.monotonic() - start < 3.0
    # twin: the same server answering at once is read in full
    server.serve(Reply(b"y" * 100))
    assert t.get(server.url).body == b"y" * 100


def test_transport_size_cap_by_content_length(server):
    server.serve(Reply(huge=200 * 1024 * 1024))
    with pytest.raises(FetchError, match="cap is 65536"):
        HttpTransport(timeout=5).get(server.url)


def test_transport_size_cap_while_streaming(server):
    # a body just over the cap, read as a stream, is refused; one at the cap is not
    server.serve(Reply(b"z" * (64 * 1024 + 1), no_length=True))
    with pytest.raises(FetchError, match="more than 65536 bytes"):
        HttpTransport(timeout=5, max_bytes=64 * 1024).get(server.url)
    server.serve(Reply(huge=200 * 1024 * 1024, no_length=True))
    with pytest.raises(FetchError, match="more than 65536 bytes"):
        HttpTransport(timeout=5).get(server.url)
    server.serve(Reply(b"z" * (64 * 1024), no_length=True))
    assert len(HttpTransport(timeout=5).get(server.url).body) == 64 * 1024


def test_transport_does_not_follow_redirects(server):
    server.serve(Reply(status=302, headers={"Location": server.url + "next"}))
    reply = HttpTransport(timeout=5).get(server.url)
    assert reply.status == 302 and server.requests == 1


def test_transport_closed_connection(server):
    server.serve(Reply(close=True))
    with pytest.raises(FetchError, match="127.0.0.1"):
        HttpTransport(timeout=5).get(server.url)


def test_transport_connection_refused():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(FetchError, match="cannot reach"):
        HttpTransport(timeout=5).get(f"http://127.0.0.1:{port}/")


def test_transport_proxy_option_is_used(server):
    # the "proxy" is our responder: a proxied GET carries the absolute URL as its path
    server.serve(Reply(b"via proxy"))
    t = HttpTransport(timeout=5, proxy=server.url)
    assert t.get("http://ocsp.invalid/abc").body == b"via proxy"
    assert server.seen[-1].path == "http://ocsp.invalid/abc"


def test_transport_refuses_a_non_http_proxy():
    with pytest.raises(InputError, match="proxy"):
        HttpTransport(timeout=5, proxy="socks9://127.0.0.1:1")


# The environment is read once per origin (requests would read it again for
# every request); what it says must still hold, origin by origin.

def test_transport_env_proxy_is_used(server, monkeypatch):
    server.serve(Reply(b"via proxy"))
    monkeypatch.setenv("http_proxy", server.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    t = HttpTransport(timeout=5)
    assert t.get("http://ocsp.invalid/abc").body == b"via proxy"
    assert server.seen[-1].path == "http://ocsp.invalid/abc"


def test_transport_no_proxy_bypasses_the_env_proxy_for_its_origin_only(server, monkeypatch):
    """Twin of the above: NO_PROXY names the responder's host, so its request
    goes direct while another origin still goes through the (dead) proxy."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    server.serve(Reply(b"direct"))
    monkeypatch.setenv("http_proxy", dead)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    t = HttpTransport(timeout=5)
    assert t.get(server.url).body == b"direct"
    assert server.seen[-1].path == "/"  # origin-form: not a proxy request
    with pytest.raises(FetchError, match="proxy"):
        t.get("http://ocsp.invalid/abc")


# A request's origin is worked out from the URL's head alone (cached): it must
# be what the same parse (urlsplit's) makes of the whole URL, whatever the URL.

def _origin_by_urlsplit(url: str) -> tuple[str, str, int | None]:
    from ocspstaple.fetch import _origin_key_of

    return _origin_key_of.__wrapped__(url)  # uncached, on the whole URL


_URL_PIECES = st.sampled_from(["http", "HTTPS", "ftp", "", ":", "//", "/", "?", "#", "@", "[::1]", "]", "[",
                               "ocsp.test", "OCSP.Test", ":8080", ":x", "user:pw@", "a", "%2F", "//x"])


@given(st.lists(_URL_PIECES, max_size=10).map("".join) | st.text(max_size=40))
def test_origin_of_a_url_is_that_of_urlsplit(url):
    from ocspstaple.fetch import _origin_key

    try:
        expected = _origin_by_urlsplit(url)
    except ValueError:  # urlsplit refuses it (a bad IPv6 literal): so does every request
        return
    assert _origin_key(url) == expected


def test_origin_of_a_get_url_ignores_the_request_in_its_path():
    """Twin: two GET URLs to one responder share an origin; another port does not."""
    from ocspstaple.fetch import origin_of

    assert origin_of("http://Ocsp.Test/MEQw%2B") == origin_of("http://ocsp.test:80/other") == "http://ocsp.test:80"
    assert origin_of("http://ocsp.test:8080/MEQw%2B") == "http://ocsp.test:8080"
