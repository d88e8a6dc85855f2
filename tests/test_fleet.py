"""A fleet: one relay, an HTTP cache in front of it, 20 edges, the CA.

All real and all on 127.0.0.1: the CA is the misbehaving test responder
(tests/responder.py, in a thread, counting requests); the relay is
``ocspstaple refresh`` and ``ocspstaple serve`` as processes; the cache is a
real nginx with ``proxy_cache``; the edges are 20 configurations with their
own outputs and state directories, each run as ``ocspstaple refresh
--config`` in this process (click's CliRunner: the CLI whole, without 20
interpreter start-ups; separate runs, so nothing is shared between edges as
it would be between the tables of one config).  Each edge asks the relay
first and the certificate's AIA URL (the CA) after.

Every passing case has its twin: the relay's help taken away, a bad relay
answer, a relay-only edge when the relay is down.
"""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import http.client
import re
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import run_cli
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from pki import CA, HOUR, Issued, unsuccessful, write_pem
from responder import FAULTS, Reply, Responder
from servers import Serve, Server, binary, free_port, run_as_root, started_fixture

from ocspstaple.cli import main

UTC = dt.timezone.utc
EDGES = 20
WINDOW = 4 * HOUR
#: the proxy settings of the environment must not reach 127.0.0.1
NO_PROXY = {"HTTP_PROXY": "", "http_proxy": "", "HTTPS_PROXY": "", "https_proxy": "", "NO_PROXY": "*"}


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


started = pytest.fixture(started_fixture)


class CacheNginx(Server):
    """nginx as an HTTP cache (proxy_cache, revalidating) in front of ``upstream``."""

    def __init__(self, directory: Path, upstream: str) -> None:
        super().__init__("nginx", directory, free_port())
        directory.mkdir(parents=True, exist_ok=True)
        self.bin = binary("nginx")
        self.conf = directory / "nginx.conf"
        self.access = directory / "access.log"
        self.conf.write_text(f"""\
{"user root;" if run_as_root() else ""}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {self.log} info;
events {{ worker_connections 256; }}
http {{
    log_format fleet '$request_method $status $upstream_cache_status';
    access_log {self.access} fleet;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    proxy_cache_path {directory}/cache levels=1:2 keys_zone=ocsp:1m max_size=10m inactive=1d;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass {upstream.rstrip("/")};
            proxy_cache ocsp;
            # the origin's max-age decides how long; a revalidation is a conditional GET
            proxy_cache_revalidate on;
            proxy_cache_lock on;
        }}
    }}
}}
""")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "CacheNginx":
        self._popen([self.bin, "-p", str(self.dir), "-e", str(self.log), "-c", str(self.conf), "-g", "daemon off;"])
        return self

    def statuses(self) -> list[str]:
        """The cache status of each request so far (HIT, MISS, EXPIRED, ...; "-" for POST)."""
        text = self.access.read_text() if self.access.exists() else ""
        return [line.split()[2] for line in text.splitlines()]


class CA_:
    """The CA's responder: one answer per certificate (serial), as a real
    CA publishes one response per window; ``publish`` starts a new window."""

    def __init__(self, ca: CA, responder: Responder) -> None:
        self.ca = ca
        self.responder = responder
        self.answers: dict[int, bytes] = {}
        responder.reply_for = lambda req: (Reply(self.answers[req.serial_number])
                                           if req is not None and req.serial_number in self.answers
                                           else Reply(unsuccessful("unauthorized")))

    def publish(self, leaves: list[Issued], this_update: dt.datetime, *, revoked: tuple[int, ...] = ()) -> None:
        for i, leaf in enumerate(leaves):
            self.answers[leaf.cert.serial_number] = self.ca.respond(
                leaf.cert, this_update=this_update, next_update=this_update + WINDOW,
                status="revoked" if i in revoked else "good")

    @property
    def requests(self) -> int:
        return self.responder.requests


@dataclass
class Fleet:
    root: Path
    ca: CA_
    leaves: list[Issued]
    certs: list[Path]

    def relay_config(self, refresh_at: float) -> Path:
        d = self.root / "relay"
        d.mkdir(exist_ok=True)
        return _config(d / "relay.toml", self.certs, refresh_at=refresh_at, urls=None)

    def edges(self, urls: list[str], refresh_at: float = 0.5, name: str = "edges") -> list[Path]:
        """EDGES configurations, each with its own outputs and state directory."""
        configs = []
        for k in range(EDGES):
            d = self.root / name / f"e{k:02d}"
            d.mkdir(parents=True)
            configs.append(_config(d / "edge.toml", self.certs, refresh_at=refresh_at, urls=urls))
        return configs


def _config(path: Path, certs: list[Path], *, refresh_at: float, urls: list[str] | None) -> Path:
    lines = ["[defaults]", f"refresh_at = {refresh_at!r}", 'state_dir = "state"', "timeout = 5", ""]
    for i, cert in enumerate(certs):
        lines += [f"[staple.c{i}]", f'cert = "{cert}"', f'output = "out/c{i}.der"']
        if urls is not None:
            lines.append("urls = [" + ", ".join(f'"{u}"' for u in urls) + "]")
        lines.append("")
    (path.parent / "out").mkdir(exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def staple(config: Path, i: int) -> bytes:
    return (config.parent / "out" / f"c{i}.der").read_bytes()


def run_edges(configs: list[Path], *args: str) -> list[Result]:
    return [CliRunner().invoke(main, ["refresh", "--config", str(c), *args], env=NO_PROXY) for c in configs]


def codes(results: list[Result]) -> set[int]:
    return {r.exit_code for r in results}


@pytest.fixture
def fleet(tmp_path: Path, ca: CA):
    with Responder(ca) as responder:
        the_ca = CA_(ca, responder)
        leaves, certs = [], []
        (tmp_path / "certs").mkdir()
        for i in range(2):
            leaf = ca.issue(f"c{i}.fleet.test", ocsp_urls=(responder.url,))
            leaves.append(leaf)
            certs.append(write_pem(tmp_path / "certs" / f"c{i}.pem", leaf, ca.cert))
        yield Fleet(tmp_path, the_ca, leaves, certs)


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"  # nothing listens there


# -- the pattern: relay, cache, edges -------------------------------------------------------------

def test_fleet_asks_the_ca_once_per_certificate_per_window(fleet: Fleet, started):
    n = len(fleet.certs)
    t0 = now()
    # Window 1 runs from t0 - 1 h; the relay's refresh point (and the end of
    # every cached copy) is 9 s after t0, the edges' 10 s after it.
    relay_at = (HOUR.total_seconds() + 9) / WINDOW.total_seconds()
    edge_at = (HOUR.total_seconds() + 10) / WINDOW.total_seconds()
    fleet.ca.publish(fleet.leaves, t0 - HOUR)
    relay = fleet.relay_config(relay_at)
    r = run_cli("refresh", "--config", relay)
    assert r.code == 0, r.err
    assert fleet.ca.requests == n
    serve = started(Serve(relay.parent, "--config", relay, "-vv"))
    cache = started(CacheNginx(fleet.root / "nginx", serve.url))
    edges = fleet.edges([cache.url, "aia"], refresh_at=edge_at)

    results = run_edges(edges)
    assert codes(results) == {0}, [r.output for r in results if r.exit_code]
    assert fleet.ca.requests == n, "the edges asked the CA"
    for e in edges:
        for i in range(n):
            assert staple(e, i) == staple(relay, i)
    statuses = cache.statuses()
    assert len(statuses) == EDGES * n
    assert statuses.count("HIT") == (EDGES - 1) * n  # the cache answered all but the first of each
    assert serve.requests() == n

    # Not due: nobody asks anybody.
    assert codes(run_edges(edges[:3])) == {0}
    assert len(cache.statuses()) == EDGES * n and fleet.ca.requests == n

    # What the cache got from serve, checked against the staple's own times
    # (through nginx: the headers reach a client as serve sent them).
    seen = ocsp.load_der_ocsp_response(staple(relay, 0))
    path = _get_path(fleet, 0)
    code, headers, body = _http_get(cache.url + path)
    assert code == 200 and body == staple(relay, 0)
    assert headers["etag"] == '"' + hashlib.sha256(body).hexdigest() + '"'
    assert _date(headers["last-modified"]) == seen.produced_at_utc.replace(tzinfo=UTC)
    age = int(re.fullmatch(r"max-age=(\d+), public, no-transform, must-revalidate", headers["cache-control"])[1])
    refresh_point = seen.this_update_utc.replace(tzinfo=UTC) + (seen.next_update_utc - seen.this_update_utc) * relay_at
    assert abs((now() + dt.timedelta(seconds=age)) - refresh_point) <= dt.timedelta(seconds=2)
    assert _date(headers["expires"]) < seen.next_update_utc.replace(tzinfo=UTC)
    code, _, body = _http_get(cache.url + path, {"If-None-Match": headers["etag"]})
    assert (code, body) == (304, b"")

    # Window 2: the CA publishes (and has revoked c0); once the relay's
    # refresh point has passed, one run of the relay and one of each edge
    # bring every edge the new staples and the revocation, and the CA sees
    # only the relay.
    fleet.ca.publish(fleet.leaves, now() - dt.timedelta(minutes=1), revoked=(0,))
    time.sleep(max(0.0, (t0 + dt.timedelta(seconds=10.5) - dt.datetime.now(UTC)).total_seconds()))
    r = run_cli("refresh", "--config", relay)
    assert r.code == 2 and "REVOKED" in r.err, r.err
    assert fleet.ca.requests == 2 * n
    before = len(cache.statuses())
    results = run_edges(edges)
    assert codes(results) == {2} and all("c0.pem: certificate is REVOKED" in r.output for r in results), \
        results[0].output
    assert fleet.ca.requests == 2 * n, "the edges asked the CA"
    for e in edges:
        for i in range(n):
            assert staple(e, i) == fleet.ca.answers[fleet.leaves[i].cert.serial_number]
    window2 = cache.statuses()[before:]
    assert window2.count("HIT") >= (EDGES - 1) * n, window2


def _get_path(fleet: Fleet, i: int) -> str:
    req = ocsp.OCSPRequestBuilder().add_certificate(fleet.leaves[i].cert, fleet.ca.ca.cert, hashes.SHA1()).build()
    return urllib.parse.quote(base64.b64encode(req.public_bytes(serialization.Encoding.DER)).decode(), safe="")


def _http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request("GET", u.path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _date(value: str) -> dt.datetime:
    return email.utils.parsedate_to_datetime(value)


# -- when a part is down --------------------------------------------------------------------------

def test_relay_down_edges_fall_back_to_the_ca(fleet: Fleet):
    n = len(fleet.certs)
    fleet.ca.publish(fleet.leaves, now() - HOUR)
    results = run_edges(fleet.edges([closed_url(), "aia"]))
    assert codes(results) == {0}, results[0].output
    assert fleet.ca.requests == EDGES * n
    # twin: an edge that knows only the relay has nothing
    results = run_edges(fleet.edges([closed_url()], name="relay-only")[:2])
    assert codes(results) == {2} and "no valid staple" in results[0].output


def test_ca_down_relay_up_edges_still_refresh(fleet: Fleet, started):
    fleet.ca.publish(fleet.leaves, now() - HOUR)
    relay = fleet.relay_config(0.5)
    assert run_cli("refresh", "--config", relay).code == 0
    serve = started(Serve(relay.parent, "--config", relay))
    fleet.ca.responder.fault("close")  # the CA is down from here on
    edges = fleet.edges([serve.url, "aia"])
    results = run_edges(edges)
    assert codes(results) == {0}, results[0].output
    assert all(staple(e, 0) == staple(relay, 0) for e in edges)
    # twin: the relay down too
    serve.stop()
    results = run_edges(fleet.edges([serve.url, "aia"], name="both-down")[:2])
    assert codes(results) == {2}


# -- a relay that cannot be trusted -----------------------------------------------------------------

def _impostor(fleet: Fleet, leaf: Issued) -> bytes:
    impostor = CA.root(fleet.ca.ca.cert.subject.rfc4514_string().split("=", 1)[1])
    return impostor.respond(leaf.cert, issuer=fleet.ca.ca.cert, signer=impostor)


BAD_RELAY = {
    "older": lambda f, leaf: f.ca.ca.respond(leaf.cert, this_update=now() - 2 * HOUR),
    "forged": _impostor,
    "another certificate": lambda f, leaf: f.ca.ca.respond(f.ca.ca.issue("other.fleet.test").cert),
    "SHA-256 CertID": lambda f, leaf: f.ca.ca.respond(leaf.cert, hash_alg=hashes.SHA256()),
    "garbage": lambda f, leaf: FAULTS["garbage"](f.ca.responder).body,  # type: ignore[union-attr]
}


@pytest.mark.parametrize("bad", [*BAD_RELAY, "honest (twin)"])
def test_a_bad_relay_answer_is_refused_by_every_edge(fleet: Fleet, ca: CA, bad: str):
    n = len(fleet.certs)
    fleet.ca.publish(fleet.leaves, now() - dt.timedelta(minutes=10))
    with Responder(ca) as relay:
        if bad in BAD_RELAY:
            relay_answers = {leaf.cert.serial_number: BAD_RELAY[bad](fleet, leaf) for leaf in fleet.leaves}
        else:
            relay_answers = dict(fleet.ca.answers)
        relay.reply_for = lambda req: Reply(relay_answers[req.serial_number])
        edges = fleet.edges([relay.url, "aia"])
        for e in edges:  # what every edge holds: a valid staple from an hour ago
            for i, leaf in enumerate(fleet.leaves):
                (e.parent / "out" / f"c{i}.der").write_bytes(ca.respond(leaf.cert, this_update=now() - HOUR))
        results = run_edges(edges, "--force")
        assert codes(results) == {0}, results[0].output
        assert relay.requests >= EDGES * n  # every edge asked the relay first
    for e in edges:
        for i, leaf in enumerate(fleet.leaves):
            assert staple(e, i) == fleet.ca.answers[leaf.cert.serial_number]
    assert fleet.ca.requests == (0 if bad == "honest (twin)" else EDGES * n)


@pytest.mark.parametrize("urls", ["relay, aia", "relay only (twin)"])
def test_a_due_edge_asks_the_ca_when_the_relay_has_nothing_newer(fleet: Fleet, ca: CA, urls: str):
    """A relay that has not caught up (its CA run failed, or it runs late)
    serves the staple the edges already hold: a due edge goes on to the CA
    rather than settling for "nothing newer"."""
    n = len(fleet.certs)
    t = now() - HOUR
    held = {leaf.cert.serial_number: ca.respond(leaf.cert, this_update=t, next_update=t + WINDOW)
            for leaf in fleet.leaves}
    fleet.ca.publish(fleet.leaves, now() - dt.timedelta(minutes=10))
    with Responder(ca) as relay:
        relay.reply_for = lambda req: Reply(held[req.serial_number])
        # due: a fifth of the window has passed since thisUpdate
        edges = fleet.edges([relay.url, "aia"] if urls == "relay, aia" else [relay.url], refresh_at=0.2)
        for e in edges:
            for i, leaf in enumerate(fleet.leaves):
                (e.parent / "out" / f"c{i}.der").write_bytes(held[leaf.cert.serial_number])
        results = run_edges(edges)
        assert codes(results) == {0}, results[0].output
        assert relay.requests >= EDGES * n
    for e in edges:
        for i, leaf in enumerate(fleet.leaves):
            want = fleet.ca.answers if urls == "relay, aia" else held
            assert staple(e, i) == want[leaf.cert.serial_number]
    assert fleet.ca.requests == (EDGES * n if urls == "relay, aia" else 0)


# -- the URL list, as configured --------------------------------------------------------------------

def test_urls_key_and_aia_entry(tmp_path: Path):
    from ocspstaple.config import BadEntry, Options, Staple, load_config

    config = tmp_path / "c.toml"
    config.write_text('[staple.a]\ncert = "a.pem"\nurls = ["http://relay:8089/", "AIA"]\n'
                      '[staple.b]\ncert = "b.pem"\nurl = "http://ocsp.example/"\n'
                      '[staple.c]\ncert = "c.pem"\nurl = "http://x/"\nurls = ["aia"]\n'
                      '[staple.d]\ncert = "d.pem"\nurls = ["http://relay/", 7]\n')
    a, b, c, d = load_config(config, cli=Options(), force=False)
    assert isinstance(a, Staple) and a.urls == ("http://relay:8089/", "aia")
    assert isinstance(b, Staple) and b.urls == ("http://ocsp.example/",)  # the old key still works
    assert isinstance(c, BadEntry) and "url or urls, not both" in c.reason
    assert isinstance(d, BadEntry) and "expected a string or a list of strings" in d.reason


def test_aia_expands_in_place_each_url_once(fleet: Fleet):
    from ocspstaple.certs import load_pair
    from ocspstaple.config import Staple
    from ocspstaple.errors import InputError
    from ocspstaple.refresh import _urls

    pair = load_pair(fleet.certs[0], None)
    own = fleet.ca.responder.url
    st = Staple(name="x", cert=fleet.certs[0], output=fleet.root / "x.der")
    assert _urls(st, pair) == (own,)
    assert _urls(replace(st, urls=("http://relay/", "aia")), pair) == ("http://relay/", own)
    assert _urls(replace(st, urls=("aia", "http://relay/", own)), pair) == (own, "http://relay/")
    # twin: without aia the certificate's own URL is not asked
    assert _urls(replace(st, urls=("http://relay/",)), pair) == ("http://relay/",)
    bare = load_pair(write_pem(fleet.root / "bare.pem", fleet.ca.ca.issue("bare.test", ocsp_urls=()),
                               fleet.ca.ca.cert), None)
    assert _urls(replace(st, urls=("http://relay/", "aia")), bare) == ("http://relay/",)
    with pytest.raises(InputError, match="names no OCSP responder URL"):
        _urls(replace(st, urls=("aia",)), bare)


def test_url_option_repeats_with_aia(fleet: Fleet):
    fleet.ca.publish(fleet.leaves, now() - HOUR)
    out = fleet.root / "one.der"
    r = CliRunner().invoke(main, ["refresh", "--cert", str(fleet.certs[0]), "--output", str(out),
                                  "--url", closed_url(), "--url", "aia"], env=NO_PROXY)
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == fleet.ca.answers[fleet.leaves[0].cert.serial_number]
    # twin: the dead URL alone
    r = CliRunner().invoke(main, ["refresh", "--cert", str(fleet.certs[1]), "--output", str(fleet.root / "two.der"),
                                  "--url", closed_url()], env=NO_PROXY)
    assert r.exit_code == 2 and "c1.pem" in r.output
