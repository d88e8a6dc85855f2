"""check/status --connect: what real servers staple, beside the file on disk.

Real nginx, HAProxy and httpd on 127.0.0.1 (tests/servers.py), the real CLI,
real staples signed by the test CA.  Each passing case has its failing twin:
the same server and command with the one thing changed that the verdict is
about.  The verdict logic itself is also driven without a network, through a
handshake passed in (ocspstaple.served.Handshake).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import Run, run_cli
from pki import CA, DAY, HOUR
from servers import Apache, HAProxy, Nginx, Serve, Started, TLSSite, free_port, make_tls_site, started_fixture

from ocspstaple.certs import load_pair
from ocspstaple.errors import ServedError
from ocspstaple.served import Served, parse_messages
from ocspstaple.status import Row, State, Threshold, ask_server, evaluate_served
from ocspstaple.validate import verify

pytestmark = pytest.mark.e2e

UTC = dt.timezone.utc


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def plugin(run: Run) -> str:
    """check's one line on stdout, and nothing on stderr, never a traceback."""
    assert "Traceback" not in run.out + run.err, run.out + run.err
    assert run.err == "", run.err
    lines = run.out.splitlines()
    assert len(lines) == 1, run.out
    return lines[0]


def check(site: TLSSite, output: Path, *args: str | Path) -> Run:
    return run_cli("check", "--cert", site.fullchain, "--output", output, *args)


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    yield from started_fixture()


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


# -- nginx: the file's staple, then a changed file without a reload ---------------------

def test_nginx_serving_the_file_then_not_reloaded(where: Path, ca: CA, started: Started) -> None:
    site = make_tls_site(where / "nginx", ca, "http://127.0.0.1:9/")
    t = now()
    old = ca.respond(site.leaf.cert, this_update=t - 3 * DAY, next_update=t + 4 * DAY)
    site.staple.write_bytes(old)
    nginx = started(Nginx(where / "nginx", site))
    connect = ("--connect", f"127.0.0.1:{nginx.port}")

    run = check(site, site.staple, *connect)
    line = plugin(run)
    assert run.code == 0, line
    assert f"127.0.0.1:{nginx.port} (localhost) staples the file's (CN=localhost, serial " \
           f"{site.leaf.cert.serial_number:X})" in line
    assert f"'{site.staple}@127.0.0.1:{nginx.port}'=" in line  # perfdata: the served staple's time left

    # The file changes (a refresh) but nginx is not reloaded.
    new = ca.respond(site.leaf.cert, this_update=t - 3 * HOUR, next_update=t + 6 * DAY)
    site.staple.write_bytes(new)
    # Within the grace period (the file changed just now): a reload may be under way.
    run = check(site, site.staple, *connect)
    assert run.code == 0, plugin(run)
    # Changed two hours ago: WARNING, naming the fix.
    two_hours_ago = time.time() - 2 * 3600
    os.utime(site.staple, (two_hours_ago, two_hours_ago))
    run = check(site, site.staple, *connect)
    line = plugin(run)
    assert run.code == 1, line
    assert line.startswith("OCSPSTAPLE WARNING - ")
    assert "staples an older response" in line and "for 2h 0m" in line, line
    assert "'nginx -s reload' or 'systemctl reload nginx'" in line
    # A longer grace: OK again (twin of the grace).
    assert check(site, site.staple, *connect, "--served-grace", "3h").code == 0
    # The served staple has less left than --critical (4d of its 7-day window
    # vs 4.5d = 108h): CRITICAL by age; the file (6d left) is fine with the same thresholds.
    run = check(site, site.staple, *connect, "-w", "5d", "-c", "108h")
    line = plugin(run)
    assert run.code == 2 and "staples an older response" in line, line
    assert check(site, site.staple, "-w", "5d", "-c", "108h").code == 0  # without --connect: the file only

    # status shows the served staple beside the file, and its exit says not all is well.
    run = run_cli("status", "--cert", site.fullchain, "--output", site.staple, *connect, "--json")
    assert run.code == 2, run.err
    served = json.loads(run.out)[0]["served"]
    assert [(s["verdict"], s["servername"], s["same_as_file"]) for s in served] == \
        [("older than file", "localhost", False)]
    table = run_cli("status", "--cert", site.fullchain, "--output", site.staple, *connect)
    assert f"served by 127.0.0.1:{nginx.port} (localhost)" in table.out and "older than file" in table.out

    # The fix works: after the reload, the same check is OK.
    nginx.reload()
    run = check(site, site.staple, *connect)
    assert run.code == 0, plugin(run)
    assert "staples the file's" in plugin(run)
    run = run_cli("status", "--cert", site.fullchain, "--output", site.staple, *connect)
    assert run.code == 0 and "same as file" in run.out, run.out


def test_another_certificate_for_the_servername(where: Path, ca: CA, started: Started) -> None:
    """httpd (stapling through ocspstaple serve) presents localhost's certificate; the check
    is for another one: CRITICAL naming what was presented. Twin: the right certificate is OK."""
    site = make_tls_site(where / "httpd", ca, "http://127.0.0.1:9/")
    site.staple.write_bytes(ca.respond(site.leaf.cert))
    serve = started(Serve(where / "httpd", "--cert", site.fullchain, "--output", site.staple))
    httpd = started(Apache(where / "httpd", site, serve.url))
    other = make_tls_site(where / "other", ca, "http://127.0.0.1:9/", cn="other.example.test")
    other.staple.write_bytes(ca.respond(other.leaf.cert))
    connect = ("--connect", f"127.0.0.1:{httpd.port}")

    run = check(other, other.staple, *connect)
    line = plugin(run)
    assert run.code == 2, line
    assert (f"127.0.0.1:{httpd.port} (other.example.test) presented another certificate: CN=localhost, "
            f"serial {site.leaf.cert.serial_number:X} (not serial {other.leaf.cert.serial_number:X}") in line

    # httpd fetches its staple through serve on the first handshakes; give it a moment.
    deadline = time.monotonic() + 10
    while (run := check(site, site.staple, *connect)).code != 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert run.code == 0, plugin(run)
    assert "staples the file's (CN=localhost" in plugin(run)


# -- HAProxy: started without a .ocsp ------------------------------------------------------

@pytest.mark.parametrize("with_ocsp", [False, True], ids=["no-ocsp", "with-ocsp"])
def test_haproxy_without_ocsp_staples_none(where: Path, ca: CA, started: Started, with_ocsp: bool) -> None:
    d = where / f"haproxy-{with_ocsp}"
    site = make_tls_site(d, ca, "http://127.0.0.1:9/")
    staple = Path(str(site.combined) + ".ocsp")
    if with_ocsp:
        staple.write_bytes(ca.respond(site.leaf.cert))
    haproxy = started(HAProxy(d, site.combined))
    if not with_ocsp:
        staple.write_bytes(ca.respond(site.leaf.cert))  # on disk now, but HAProxy never loaded it
    run = run_cli("check", "--cert", site.combined, "--connect", f"127.0.0.1:{haproxy.port}")
    line = plugin(run)
    if with_ocsp:
        assert run.code == 0 and "staples the file's" in line, line
    else:
        assert run.code == 1, line
        assert f"127.0.0.1:{haproxy.port} (localhost): none stapled (CN=localhost, serial " in line


def test_server_not_listening_is_unknown(where: Path, ca: CA) -> None:
    site = make_tls_site(where / "nobody", ca, "http://127.0.0.1:9/")
    site.staple.write_bytes(ca.respond(site.leaf.cert))
    port = free_port()
    run = check(site, site.staple, "--connect", f"127.0.0.1:{port}")
    line = plugin(run)
    assert run.code == 3, line
    assert line.startswith("OCSPSTAPLE UNKNOWN - ")
    assert f"127.0.0.1:{port} (localhost): cannot connect: connection refused" in line
    # Twin: the file alone is OK; only the server made it UNKNOWN.
    assert check(site, site.staple).code == 0


@pytest.mark.parametrize("value", ["127.0.0.1", "host:99999", "-oops:1", "a b:1"])
def test_bad_connect_is_unknown_usage(tmp_path: Path, ca: CA, value: str) -> None:
    site = make_tls_site(tmp_path, ca, "http://127.0.0.1:9/")
    run = check(site, site.staple, "--connect", value)
    assert run.code == 3 and "is not HOST:PORT" in plugin(run), run.out


def test_config_connect_and_servername(tmp_path: Path, ca: CA) -> None:
    site = make_tls_site(tmp_path, ca, "http://127.0.0.1:9/")
    site.staple.write_bytes(ca.respond(site.leaf.cert))
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(f'[staple.site]\ncert = "fullchain.pem"\noutput = "site.der"\n'
                      f'connect = "127.0.0.1:{port}"\nservername = "www.example.test"\n')
    line = plugin(run := run_cli("check", "--config", config))
    assert run.code == 3 and f"127.0.0.1:{port} (www.example.test): cannot connect" in line, line
    config.write_text(config.read_text().replace("servername = \"www.example.test\"", "servername = \"a b\""))
    line = plugin(run := run_cli("check", "--config", config))
    assert run.code == 3 and "servername: 'a b' is not a DNS name" in line, line


# -- the verdicts, without a network ---------------------------------------------------

class Fixed:
    """A Handshake that returns what it is given (or raises)."""

    def __init__(self, served: Served | Exception) -> None:
        self.served = served

    def __call__(self, *, address: str, servername: str | None, timeout: float) -> Served:
        if isinstance(self.served, Exception):
            raise self.served
        return self.served


def _judge(site: TLSSite, ca: CA, served_der: bytes | None, *, file_der: bytes | None = None,
           leaf=None) -> tuple[State, str]:
    pair = load_pair(site.fullchain, None)
    t = now()
    file = verify(file_der or ca.respond(site.leaf.cert), pair=pair)
    sv = ask_server("127.0.0.1:1", servername=None, pair=pair, file=file, written=t - 2 * HOUR,
                    handshake=Fixed(Served(chain=((leaf or site.leaf).cert,), staple=served_der, protocol="TLS 1.3")),
                    timeout=1, now=t, default_validity=DAY, fix="reload it")
    row = Row(name="site", output=site.staple, serial="1", staple=file, usable=True)
    return evaluate_served(row, sv, t, warning=Threshold(fraction=0.4), critical=Threshold(fraction=0.2),
                           grace=HOUR)


def test_verdict_none_stapled(tmp_path: Path, ca: CA) -> None:
    state, why = _judge(make_tls_site(tmp_path, ca, "http://127.0.0.1:9/"), ca, None)
    assert state is State.WARNING and why.startswith("127.0.0.1:1 (localhost): none stapled (CN=localhost, serial ")


def test_verdict_not_valid_and_revoked(tmp_path: Path, ca: CA) -> None:
    other_ca = CA.root("Impostor Root")
    site = make_tls_site(tmp_path / "s", ca, "http://127.0.0.1:9/")
    good = ca.respond(site.leaf.cert)
    forged = other_ca.respond(site.leaf.cert, issuer=ca.cert)
    other = ca.issue("other.example.test")
    expired = ca.respond(site.leaf.cert, this_update=now() - 5 * DAY, next_update=now() - DAY)
    revoked = ca.respond(site.leaf.cert, status="revoked")
    results = {name: _judge(site, ca, der, file_der=good)
               for name, der in [("good", good), ("forged", forged), ("expired", expired), ("revoked", revoked)]}
    assert results["good"] == (State.OK, "")
    # Twin of "good": the same staple, presented with another certificate.
    state, why = _judge(site, ca, good, file_der=good, leaf=other)
    assert state is State.CRITICAL and "presented another certificate: CN=other.example.test" in why
    assert results["forged"][0] is State.CRITICAL and "stapled response not valid" in results["forged"][1]
    assert results["expired"][0] is State.CRITICAL and "response expired" in results["expired"][1]
    assert results["revoked"] == (State.CRITICAL, "127.0.0.1:1 (localhost) staples a revocation")


def test_verdict_unreachable_is_unknown(tmp_path: Path, ca: CA) -> None:
    site = make_tls_site(tmp_path, ca, "http://127.0.0.1:9/")
    pair = load_pair(site.fullchain, None)
    sv = ask_server("127.0.0.1:1", servername="x.test", pair=pair, file=None, written=None,
                    handshake=Fixed(ServedError("cannot connect: connection refused")), timeout=1, now=now(),
                    default_validity=DAY)
    row = Row(name="site", output=site.staple)
    assert evaluate_served(row, sv, now(), warning=Threshold(fraction=0.4), critical=Threshold(fraction=0.2),
                           grace=HOUR) == (State.UNKNOWN, "127.0.0.1:1 (x.test): cannot connect: connection refused")


# -- parsing s_client's message dump ---------------------------------------------------------

def _dump(*messages: tuple[str, bytes]) -> str:
    lines = ["CONNECTED(00000003)"]
    for proto, msg in messages:
        lines.append(f"<<< {proto}, Handshake [length {len(msg):04x}], Something")
        lines += ["    " + " ".join(f"{b:02x}" for b in msg[i:i + 16]) for i in range(0, len(msg), 16)]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _u(n: int, width: int) -> bytes:
    return n.to_bytes(width, "big")


def _handshake(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _u(len(body), 3) + body


def test_parse_tls12_and_tls13(ca: CA) -> None:
    leaf = ca.issue("localhost")
    der = leaf.cert.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                            fromlist=["Encoding"]).Encoding.DER)
    staple = ca.respond(leaf.cert)
    status = bytes([1]) + _u(len(staple), 3) + staple
    cert12 = _handshake(11, _u(len(der) + 3, 3) + _u(len(der), 3) + der)
    got = parse_messages(_dump(("TLS 1.2", cert12), ("TLS 1.2", _handshake(22, status))))
    assert (got.chain[0], got.staple, got.protocol) == (leaf.cert, staple, "TLS 1.2")
    assert parse_messages(_dump(("TLS 1.2", cert12))).staple is None  # twin: no CertificateStatus

    ext = _u(5, 2) + _u(len(status), 2) + status
    entry = _u(len(der), 3) + der + _u(len(ext), 2) + ext
    cert13 = _handshake(11, b"\x00" + _u(len(entry), 3) + entry)
    got = parse_messages(_dump(("TLS 1.3", cert13)))
    assert (got.chain[0], got.staple) == (leaf.cert, staple)
    entry = _u(len(der), 3) + der + _u(0, 2)
    assert parse_messages(_dump(("TLS 1.3", _handshake(11, b"\x00" + _u(len(entry), 3) + entry)))).staple is None

    with pytest.raises(ServedError, match="no TLS handshake"):
        parse_messages("CONNECTED(00000003)\nno peer certificate available\n")
    with pytest.raises(ServedError, match="truncated"):
        parse_messages(_dump(("TLS 1.2", cert12[:-10])))


def test_refresh_metrics_gauge_the_served_staple(where: Path, ca: CA, started: Started) -> None:
    """refresh (nothing due: no fetch) writes the served gauges for a config's connect server;
    twin: the server stapling another response than the file gives matches_file 0."""
    d = where / "metrics"
    site = make_tls_site(d, ca, "http://127.0.0.1:9/")
    t = now()
    site.staple.write_bytes(ca.respond(site.leaf.cert, this_update=t - HOUR, next_update=t + 6 * DAY))
    nginx = started(Nginx(d, site))
    config = d / "c.toml"
    config.write_text(f'[staple.site]\ncert = "fullchain.pem"\noutput = "site.der"\n'
                      f'connect = "127.0.0.1:{nginx.port}"\n')
    metrics = d / "ocspstaple.prom"

    def gauges() -> dict[str, float]:
        run = run_cli("refresh", "--config", config, "--metrics-file", metrics)
        assert run.code == 0, run.err
        return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.read_text().splitlines()
                if line.startswith("ocspstaple_served_")
                and f'connect="127.0.0.1:{nginx.port}",servername="localhost"' in line}

    g = gauges()
    assert g == {"ocspstaple_served_up": 1, "ocspstaple_served_staple_present": 1,
                 "ocspstaple_served_matches_file": 1,
                 "ocspstaple_served_this_update_timestamp_seconds": (t - HOUR).timestamp(),
                 "ocspstaple_served_next_update_timestamp_seconds": (t + 6 * DAY).timestamp()}
    site.staple.write_bytes(ca.respond(site.leaf.cert, this_update=t - HOUR // 2, next_update=t + 6 * DAY))
    g = gauges()
    assert (g["ocspstaple_served_matches_file"], g["ocspstaple_served_this_update_timestamp_seconds"]) == \
        (0, (t - HOUR).timestamp())
