"""Operations details (issue 14, point 6): stable metrics labels, status and
check reading refresh's settings, a missing state directory, check's
thresholds and one-line output, and the messages an operator reads first.

In-process runs (click's CliRunner); no network but refused loopback ports.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from pki import CA, DAY, write_pem
from watching import Cert, make_cert, parse_iso, parse_prometheus, put_staple, utcnow

from ocspstaple.cli import main


def invoke(*args: str | Path, cwd: Path | None = None):
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        return CliRunner().invoke(main, [str(a) for a in args], prog_name="ocspstaple",
                                  env={"HTTP_PROXY": "", "http_proxy": ""})




def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def refused_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused at once
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"


# -- metrics labels -------------------------------------------------------------------

def test_metrics_labels_are_the_same_from_any_working_directory(tmp_path: Path, ca: CA, refused_url: str):
    site = make_cert(tmp_path / "certs", ca, "shop", urls=(refused_url,))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "ocspstaple.toml").write_text('[staple.shop]\ncert = "../certs/shop.pem"\n')
    prom = tmp_path / "m.prom"
    labels = []
    # The timer's run (cwd /, the path through a "..") and a manual one from the config's directory.
    for cwd, config in (("/", str(etc / ".." / "etc" / "ocspstaple.toml")), (etc, "ocspstaple.toml")):
        r = invoke("refresh", "--config", config, "--metrics-file", prom, cwd=Path(cwd))
        assert r.exit_code == 2, r.stderr  # the responder refuses: no staple
        m = parse_prometheus(prom.read_text())
        (series,) = m.get("ocspstaple_consecutive_failures")
        labels.append(series[0])
    assert labels[0] == labels[1] == {"cert": str(site.cert), "output": str(site.output), "staple": "shop"}
    # Twin: the two runs named the certificate differently; only the labels agree.
    assert str(etc / ".." / "etc" / ".." / "certs" / "shop.pem") != "../certs/shop.pem"


def test_metrics_staple_label_is_the_table_name(tmp_path: Path, ca: CA, refused_url: str):
    a = make_cert(tmp_path, ca, "a", urls=(refused_url,))
    (tmp_path / "c.toml").write_text(f'[staple.first]\ncert = "{a.cert}"\n'
                                     f'[staple.second]\ncert = "{a.cert}"\noutput = "b.ocsp"\n'
                                     '[staple.broken]\ncert = "nowhere.pem"\ntimeout = "x"\n'
                                     '[staple.nocert]\noutput = "x.ocsp"\n')
    prom = tmp_path / "m.prom"
    invoke("refresh", "--config", "c.toml", "--metrics-file", prom, cwd=tmp_path)  # relative: made absolute
    m = parse_prometheus(prom.read_text())
    got = {s[0]["staple"]: s[0] for s in m.get("ocspstaple_consecutive_failures")}
    assert sorted(got) == ["broken", "first", "nocert", "second"]
    assert got["nocert"]["cert"] == "[staple.nocert]"
    assert got["first"]["cert"] == got["second"]["cert"] == str(a.cert)
    assert got["first"]["output"] != got["second"]["output"] == str(tmp_path / "b.ocsp")
    assert got["broken"]["cert"] == str(tmp_path / "nowhere.pem") and got["broken"]["output"] == ""


# -- status and check read refresh's settings -------------------------------------------

@pytest.fixture
def fresh(tmp_path: Path, ca: CA) -> Cert:
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=utcnow(), left=9 * DAY)  # 1 day of a 10-day window gone
    return c


def status_json(*args: str | Path) -> dict:
    r = invoke("status", "--json", *args)
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    return row


def test_status_takes_refresh_at_like_refresh(fresh: Cert, tmp_path: Path):
    # A cap far away: only the fraction decides here (the 4-day cap has tests of its own).
    cap = ("--max-refresh-interval", "365d")
    row = status_json("--cert", fresh.cert, "--refresh-at", "0.2", *cap)
    this_update, expires = parse_iso(row["this_update"]), parse_iso(row["expires"])
    assert parse_iso(row["refresh_due"]) == this_update + (expires - this_update) * 0.2
    # Twin: without it, half-life; and the config's refresh_at is read the same way.
    row = status_json("--cert", fresh.cert, *cap)
    assert parse_iso(row["refresh_due"]) == this_update + (expires - this_update) * 0.5
    (tmp_path / "c.toml").write_text(f'[defaults]\nrefresh_at = 0.2\nmax_refresh_interval = "365d"\n'
                                     f'[staple.site]\ncert = "{fresh.cert}"\n')
    row = status_json("--config", tmp_path / "c.toml")
    assert parse_iso(row["refresh_due"]) == this_update + (expires - this_update) * 0.2


def test_status_takes_default_validity_like_refresh(tmp_path: Path, ca: CA):
    c = make_cert(tmp_path, ca, "nonext")
    now = utcnow()
    c.output.write_bytes(ca.respond(c.leaf.cert, this_update=now - dt.timedelta(hours=30), next_update=None))
    # A response without nextUpdate: usable for --default-validity after its thisUpdate.
    row = status_json("--cert", c.cert, "--default-validity", "2d")
    assert row["usable"] and parse_iso(row["expires"]) == now - dt.timedelta(hours=30) + 2 * DAY
    r = invoke("status", "--json", "--cert", c.cert)  # twin: the default 1d has run out
    assert r.exit_code == 2 and not json.loads(r.stdout)[0]["usable"]


def test_status_and_check_refuse_a_state_dir_that_does_not_exist(fresh: Cert, tmp_path: Path):
    missing = tmp_path / "nonexistent"
    r = invoke("status", "--cert", fresh.cert, "--state-dir", missing)
    assert r.exit_code == 2 and r.stdout == ""
    assert lines(r.stderr) == [f"state directory {missing} does not exist or is not a directory "
                               "(refresh creates it on its first run)"]
    r = invoke("check", "--cert", fresh.cert, "--state-dir", missing)
    assert r.exit_code == 3 and r.stdout.startswith("OCSPSTAPLE UNKNOWN - state directory") and r.stderr == ""
    (tmp_path / "c.toml").write_text(f'[defaults]\nstate_dir = "nonexistent"\n[staple.a]\ncert = "{fresh.cert}"\n')
    assert invoke("status", "--config", tmp_path / "c.toml").exit_code == 2
    # Twin: once it exists, all is well.
    missing.mkdir()
    assert invoke("status", "--cert", fresh.cert, "--state-dir", missing).exit_code == 0
    assert invoke("check", "--cert", fresh.cert, "--state-dir", missing).exit_code == 0
    assert invoke("status", "--config", tmp_path / "c.toml").exit_code == 0


# -- check ---------------------------------------------------------------------------

@pytest.mark.parametrize(("warning", "critical"), [("10%", "50%"), ("20%", "20%"), ("1h", "2h"), ("1d", "24h")])
def test_check_refuses_a_warning_below_the_critical_threshold(fresh: Cert, warning: str, critical: str):
    r = invoke("check", "--cert", fresh.cert, "-w", warning, "-c", critical)
    assert r.exit_code == 3 and lines(r.stdout) == [r.stdout.rstrip("\n")]
    assert r.stdout == (f"OCSPSTAPLE UNKNOWN - --warning {warning} must leave more than --critical {critical}: "
                        "a staple is to reach WARNING before CRITICAL\n")


@pytest.mark.parametrize(("warning", "critical"), [("50%", "10%"), ("2h", "1h"), ("10%", "3d"), ("95%", "20%")])
def test_twin_check_takes_a_warning_above_the_critical_threshold(fresh: Cert, warning: str, critical: str):
    r = invoke("check", "--cert", fresh.cert, "-w", warning, "--critical", critical)
    assert r.exit_code in (0, 1) and r.stdout.startswith("OCSPSTAPLE "), r.stdout  # 90% left: WARNING at 95%
    assert invoke("check", "--cert", fresh.cert, "--warning", warning, "-c", critical).stdout == r.stdout


def test_check_output_is_one_line_whatever_a_file_name_holds(tmp_path: Path, ca: CA):
    odd = tmp_path / "a\nOCSPSTAPLE OK - b|c.pem"
    c = Cert(leaf=ca.issue("odd.example.test"), cert=odd, output=Path(str(odd) + ".ocsp"))
    write_pem(odd, c.leaf, ca.cert)
    for bad in ((), ("--state-dir", tmp_path / "x\ny|z")):  # no staple (CRITICAL); an UNKNOWN naming a path
        r = invoke("check", "--cert", odd, *bad)
        assert r.exit_code in (2, 3) and r.stdout.count("\n") == 1, r.stdout
        head = r.stdout.split(" | ")[0]
        assert "|" not in head and "\\n" in head and "\\x7c" in r.stdout, r.stdout
    # Twin: the raw name would have made two lines, and a "|" before the perfdata.
    assert len(f"OCSPSTAPLE CRITICAL - {odd}".splitlines()) == 2


def test_status_table_is_one_row_per_staple_whatever_a_file_name_holds(tmp_path: Path, ca: CA):
    odd = tmp_path / "a\nb.pem"
    write_pem(odd, ca.issue("odd.example.test"), ca.cert)
    # (an output name with a newline is refused: $OCSPSTAPLE_CHANGED is one path a line)
    r = invoke("status", "--cert", odd, "--output", tmp_path / "odd.ocsp")
    assert r.exit_code == 2 and len(r.stdout.splitlines()) == 2 and "a\\nb.pem" in r.stdout


# -- messages ----------------------------------------------------------------------------

def test_connection_refused_without_errno(tmp_path: Path, ca: CA, refused_url: str):
    c = make_cert(tmp_path, ca, "site", urls=(refused_url,))
    r = invoke("refresh", "--cert", c.cert)
    (line,) = lines(r.stderr)
    assert f"cannot reach responder {refused_url}: Connection refused;" in line and "Errno" not in line


def test_a_der_certificate_gets_the_command_to_convert_it(tmp_path: Path, ca: CA):
    leaf = ca.issue("der.example.test")
    der = tmp_path / "site.der"
    der.write_bytes(leaf.cert.public_bytes(serialization.Encoding.DER))
    r = invoke("refresh", "--cert", der)
    assert r.exit_code == 2
    assert lines(r.stderr) == [f"{der}: {der} holds no PEM certificate (it looks like DER: convert it with "
                               f"`openssl x509 -inform der -in {der} -out {der}.pem`)"]
    # Twin: a file that is neither PEM nor DER gets no such hint.
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x30\x82 not a certificate")
    (line,) = lines(invoke("refresh", "--cert", junk).stderr)
    assert "holds no PEM certificate" in line and "DER" not in line


def test_a_ca_certificate_alone_is_called_one(tmp_path: Path, ca: CA):
    root = write_pem(tmp_path / "ca.pem", ca.cert)
    (line,) = lines(invoke("refresh", "--cert", root).stderr)
    assert "holds a CA certificate (ocspstaple Test Root), not a server certificate" in line
    assert "give --issuer" not in line
    # Twin: a server certificate alone still needs its issuer.
    leaf = write_pem(tmp_path / "leaf.pem", ca.issue("leaf.example.test"))
    (line,) = lines(invoke("refresh", "--cert", leaf).stderr)
    assert "holds no issuer certificate after the first; give --issuer" in line


def test_errno_is_dropped_wherever_it_is_in_the_words():
    from ocspstaple.fetch import _reason

    # Not every chain ends in the OSError itself: urllib3 sometimes keeps only its words.
    assert _reason(Exception("Failed to establish a new connection: [Errno 113] No route to host")) == \
        "Failed to establish a new connection: No route to host"
    assert _reason(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert _reason(Exception("[Errno x] not an errno")) == "[Errno x] not an errno"  # twin: only "[Errno N] "
