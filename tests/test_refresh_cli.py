"""`ocspstaple refresh` end to end: the real CLI as a subprocess, real crypto,
a real HTTP responder on 127.0.0.1 and real files in tmp_path.

Every refusal has a passing twin beside it, so that a test cannot pass merely
because nothing works.
"""
from __future__ import annotations

import base64
import datetime as dt
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import filelock
import pytest
from conftest import Run, Site, clean_env, run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from pki import CA, DAY, HOUR, Issued, assemble, parts, seq, tlv, unsuccessful, write_pem
from responder import FAULTS, Reply, Responder

from ocspstaple.store import lock_path

MINUTE = dt.timedelta(minutes=1)
SITE_FILES = {"fullchain.pem", "issuer.pem"}
# The staple, its lock file and the state record of the last attempt (dotfiles: HAProxy's crt DIR skips them).
AFTER_WRITE = SITE_FILES | {"fullchain.pem.ocsp", ".fullchain.pem.ocsp.lock", ".fullchain.pem.ocsp.state.json"}
# Every fault but "revoked": that one is a valid answer that must be written.
FAULT_NAMES = [name for name in FAULTS if name != "revoked"]
# Words the one-line reason should carry for faults whose reason has an obvious name.
REASON_WORDS = {
    "tryLater": "tryLater",
    "internalError": "internalError",
    "unauthorized": "unauthorized",
    "malformedRequest": "malformedRequest",
    "sigRequired": "sigRequired",
    "http500": "500",
    "redirect": "redirect",
    "unknown": "unknown",
    "expired": "expired",
    "future": "future",
}


# -- helpers -------------------------------------------------------------------

def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def refresh(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    # A deadline that is not enforced shows up as a hang: keep the cap well
    # below conftest's 60 s so that such a bug fails quickly.
    return run_cli("refresh", *args, env=env, timeout=30)


def listing(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.err and "Traceback" not in run.out, run.err


def assert_one_line(run: Run, *needles: str) -> str:
    assert_no_traceback(run)
    assert run.out == "", run.out
    assert len(run.lines) == 1, run.err
    line = run.lines[0]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def assert_silent_success(run: Run) -> None:
    assert run.code == 0, run.err
    assert run.out == "" and run.err == "", run.err


def assert_written_or_refused(run: Run, site: Site, body: bytes, written: bool, *words: str) -> None:
    """With no staple on disk: ``body`` written (exit 0, silent), or refused
    (exit 2, one line naming the certificate, nothing written)."""
    if written:
        assert_silent_success(run)
        assert site.output.read_bytes() == body
    else:
        assert run.code == 2, run.err
        assert_one_line(run, str(site.cert), *words)
        assert not site.output.exists()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_request(leaf: Issued, ca: CA) -> bytes:
    """The request the spec asks for: one SHA-1 CertID, no nonce, DER."""
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, ca.cert, hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


def make_site(directory: Path, ca: CA, responder: Responder | None, *,
              urls: tuple[str, ...] | None = None, cn: str = "www.example.test") -> Site:
    """A leaf (its AIA naming ``urls``, default the responder) as fullchain.pem + issuer.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    assert urls is not None or responder is not None
    leaf = ca.issue(cn, ocsp_urls=urls if urls is not None else (responder.url,))  # type: ignore[union-attr]
    if responder is not None:
        responder.leaf = leaf
    cert = write_pem(directory / "fullchain.pem", leaf, ca.cert)
    issuer = write_pem(directory / "issuer.pem", ca.cert)
    return Site(leaf=leaf, cert=cert, issuer=issuer, output=directory / "fullchain.pem.ocsp")


def openssl_verdict(site: Site, staple: Path | None = None) -> subprocess.CompletedProcess:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return subprocess.run(
        ["openssl", "ocsp", "-respin", str(staple or site.output), "-CAfile", str(site.issuer),
         "-issuer", str(site.issuer), "-cert", str(site.cert)],
        capture_output=True, text=True, timeout=30,
    )


def assert_openssl_good(site: Site) -> None:
    p = openssl_verdict(site)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Response verify OK" in p.stderr, p.stderr
    assert f"{site.cert}: good" in p.stdout, p.stdout


def write_good_staple(site: Site, responder: Responder) -> bytes:
    """A valid good staple on disk, written by a successful plain refresh."""
    run = refresh("--cert", site.cert)
    assert_silent_success(run)
    return site.output.read_bytes()


# -- 1. faults: a valid staple is kept, nothing bad is ever written ------------

@pytest.mark.parametrize("fault", FAULT_NAMES)
def test_fault_keeps_the_valid_staple(site: Site, responder: Responder, fault: str):
    before = write_good_staple(site, responder)
    responder.fault(fault)
    run = refresh("--cert", site.cert, "--force", "--timeout", "1.5")
    assert run.code == 1, run.err
    assert site.output.read_bytes() == before
    line = assert_one_line(run, str(site.cert), "kept staple valid until")
    if fault in REASON_WORDS:
        assert REASON_WORDS[fault] in line
    assert listing(site.output.parent) == AFTER_WRITE
    if fault == "redirect":
        assert not any(s.path.endswith("elsewhere") for s in responder.seen), "followed a redirect"


def test_good_answer_replaces_the_valid_staple(site: Site, responder: Responder):
    """Twin of the fault test: the same run with a sound, newer answer writes it."""
    before = write_good_staple(site, responder)
    newer = responder.good(this_update=now() - 10 * MINUTE)
    responder.serve(newer)
    run = refresh("--cert", site.cert, "--force", "--timeout", "1.5")
    assert_silent_success(run)
    assert site.output.read_bytes() == newer != before
    assert listing(site.output.parent) == AFTER_WRITE
    assert_openssl_good(site)


@pytest.mark.parametrize("fault", FAULT_NAMES)
def test_fault_without_staple_writes_nothing(site: Site, responder: Responder, fault: str):
    responder.fault(fault)
    run = refresh("--cert", site.cert, "--timeout", "1.5")
    assert run.code == 2, run.err
    line = assert_one_line(run, str(site.cert))
    if fault in REASON_WORDS:
        assert REASON_WORDS[fault] in line
    assert not site.output.exists()
    assert listing(site.output.parent) - {".fullchain.pem.ocsp.lock", ".fullchain.pem.ocsp.state.json"} == SITE_FILES
    assert responder.requests >= 1


def test_good_answer_without_staple_is_written(site: Site, responder: Responder):
    """Twin of the no-staple fault test."""
    body = responder.good()
    responder.serve(body)
    run = refresh("--cert", site.cert, "--timeout", "1.5")
    assert_silent_success(run)
    assert site.output.read_bytes() == body
    assert listing(site.output.parent) == AFTER_WRITE


def test_fault_runs_are_bounded_by_the_timeout(site: Site, responder: Responder):
    """A trickling server cannot hold a run much past --timeout (here 1.5 s, trickle ~100 s)."""
    responder.fault("trickle")
    t0 = time.monotonic()
    run = refresh("--cert", site.cert, "--timeout", "1.5")
    elapsed = time.monotonic() - t0
    assert run.code == 2, run.err
    assert elapsed < 10, elapsed


# -- replay, equal, newer --------------------------------------------------------

@pytest.fixture
def staple_at_t(site: Site, responder: Responder, ca: CA) -> tuple[dt.datetime, bytes]:
    """A good staple with thisUpdate T = now - 2 h on disk, written by the CLI."""
    t = now() - 2 * HOUR
    body = ca.respond(site.leaf.cert, this_update=t, next_update=t + 4 * DAY)
    responder.serve(body)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == body
    return t, body


def test_older_response_is_refused_as_replay(site, responder, ca, staple_at_t):
    t, before = staple_at_t
    older = ca.respond(site.leaf.cert, this_update=t - HOUR, next_update=t + 3 * DAY)
    responder.serve(older)
    run = refresh("--cert", site.cert, "--force")
    assert run.code == 1, run.err
    assert site.output.read_bytes() == before
    until = (t + 4 * DAY).strftime("%Y-%m-%d %H:%M UTC")
    assert_one_line(run, str(site.cert), "older", f"kept staple valid until {until}")
    assert listing(site.output.parent) == AFTER_WRITE


def test_equal_response_changes_nothing(site, responder, ca, staple_at_t):
    t, before = staple_at_t
    # Signed anew (ECDSA signatures differ), same thisUpdate: still "no news".
    same = ca.respond(site.leaf.cert, this_update=t, next_update=t + 4 * DAY)
    assert same != before
    responder.serve(same)
    run = refresh("--cert", site.cert, "--force")
    assert_silent_success(run)
    assert site.output.read_bytes() == before
    assert responder.requests == 2


def test_newer_response_replaces_the_staple(site, responder, ca, staple_at_t):
    """Twin of the replay and equal cases."""
    t, before = staple_at_t
    newer = ca.respond(site.leaf.cert, this_update=t + HOUR, next_update=t + 5 * DAY)
    responder.serve(newer)
    run = refresh("--cert", site.cert, "--force")
    assert_silent_success(run)
    assert site.output.read_bytes() == newer


# -- 2. who signed it ---------------------------------------------------------------

def _signed(kind: str, ca: CA, leaf: Issued) -> bytes:
    if kind == "issuer":
        return ca.respond(leaf.cert)
    if kind == "issuer_by_key":
        return ca.respond(leaf.cert, by_key=True)
    if kind == "delegate":
        return ca.respond(leaf.cert, signer=ca.delegate())
    if kind == "delegate_by_key":
        return ca.respond(leaf.cert, signer=ca.delegate(), by_key=True)
    if kind == "delegate_without_eku":
        return ca.respond(leaf.cert, signer=ca.delegate("No EKU", eku=False))
    if kind == "delegate_not_included":
        return ca.respond(leaf.cert, signer=ca.delegate(), include_signer=False)
    if kind == "delegate_of_another_ca":
        return ca.respond(leaf.cert, signer=CA.root("Another Root").delegate())
    if kind == "ca_flagged_delegate":
        # A sibling sub-CA with the OCSP EKU must not be able to vouch for our leaf.
        sub = ca.issue("Sibling Sub-CA", is_ca=True, ocsp_urls=(),
                       eku=[x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING])
        return ca.respond(leaf.cert, signer=sub)
    if kind == "impostor_by_key":
        impostor = CA.root("ocspstaple Test Root")
        return impostor.respond(leaf.cert, issuer=ca.cert, signer=impostor, by_key=True)
    raise ValueError(kind)


ACCEPTED_SIGNERS = ["issuer", "issuer_by_key", "delegate", "delegate_by_key"]
REFUSED_SIGNERS = ["delegate_without_eku", "delegate_not_included", "delegate_of_another_ca",
                   "ca_flagged_delegate", "impostor_by_key"]


@pytest.mark.parametrize("kind", ACCEPTED_SIGNERS)
def test_properly_signed_response_is_written(site: Site, responder: Responder, ca: CA, kind: str):
    body = _signed(kind, ca, site.leaf)
    responder.serve(body)
    run = refresh("--cert", site.cert)
    assert_silent_success(run)
    assert site.output.read_bytes() == body
    assert stat.S_IMODE(site.output.stat().st_mode) == 0o644
    assert listing(site.output.parent) == AFTER_WRITE


@pytest.mark.parametrize("kind", REFUSED_SIGNERS)
def test_improperly_signed_response_is_refused(site: Site, responder: Responder, ca: CA, kind: str):
    responder.serve(_signed(kind, ca, site.leaf))
    run = refresh("--cert", site.cert)
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert))
    assert not site.output.exists()


def _certid_case(kind: str, ca: CA, leaf: Issued) -> bytes:
    if kind == "sha256_certid":
        return ca.respond(leaf.cert, hash_alg=hashes.SHA256())
    if kind == "certid_of_another_issuer":
        # Same serial, signed by our CA, but the CertID names another issuer.
        return ca.respond(leaf.cert, issuer=CA.root("Another Root").cert)
    other = ca.respond(ca.issue("other.example").cert)
    if kind == "ours_among_several":
        mine = ca.respond(leaf.cert)
    elif kind == "ours_unknown_among_good":
        mine = ca.respond(leaf.cert, status="unknown")
    else:
        raise ValueError(kind)
    p = parts(mine)
    p["singles"] = parts(other)["singles"] + p["singles"]
    return assemble(p, ca.key)


@pytest.mark.parametrize("kind, written", [
    ("sha256_certid", False),  # only a SHA-1 CertID (spec invariant 2; HAProxy staples no other)
    ("certid_of_another_issuer", False),
    ("ours_among_several", True),
    ("ours_unknown_among_good", False),
])
def test_the_matching_single_response_counts(site: Site, responder: Responder, ca: CA, kind: str, written: bool):
    body = _certid_case(kind, ca, site.leaf)
    responder.serve(body)
    run = refresh("--cert", site.cert)
    assert_written_or_refused(run, site, body, written)


def test_replacement_keeps_the_old_mode(site: Site, responder: Responder, ca: CA):
    """Twin of the 0644 check: an existing staple's mode is kept."""
    write_good_staple(site, responder)
    os.chmod(site.output, 0o640)
    newer = ca.respond(site.leaf.cert, this_update=now() - 5 * MINUTE)
    responder.serve(newer)
    assert_silent_success(refresh("--cert", site.cert, "--force"))
    assert site.output.read_bytes() == newer
    assert stat.S_IMODE(site.output.stat().st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_replacement_keeps_the_old_owner(site: Site, responder: Responder, ca: CA):
    write_good_staple(site, responder)
    os.chown(site.output, 65534, 65533)
    newer = ca.respond(site.leaf.cert, this_update=now() - 5 * MINUTE)
    responder.serve(newer)
    assert_silent_success(refresh("--cert", site.cert, "--force"))
    assert site.output.read_bytes() == newer
    st = site.output.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65533)


def test_signer_is_found_by_responder_id_not_position(site: Site, responder: Responder, ca: CA):
    """Two certificates with the responder's name: the decoy comes first."""
    real = ca.delegate("OCSP Responder")
    decoy = ca.delegate("OCSP Responder")
    p = parts(ca.respond(site.leaf.cert, signer=real))
    der = lambda c: c.cert.public_bytes(serialization.Encoding.DER)  # noqa: E731
    p["certs"] = [tlv(0xA0, seq(der(decoy), der(real)))]
    body = assemble(p, real.key)
    responder.serve(body)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == body


def test_decoy_alone_does_not_sign(site: Site, responder: Responder, ca: CA):
    """Twin: only the decoy is included; nothing verifies the signature."""
    real = ca.delegate("OCSP Responder")
    decoy = ca.delegate("OCSP Responder")
    p = parts(ca.respond(site.leaf.cert, signer=real))
    p["certs"] = [tlv(0xA0, seq(decoy.cert.public_bytes(serialization.Encoding.DER)))]
    responder.serve(assemble(p, real.key))
    run = refresh("--cert", site.cert)
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert))
    assert not site.output.exists()


@pytest.mark.parametrize("critical, written", [(False, True), (True, False)])
def test_unknown_response_extension(site: Site, responder: Responder, ca: CA, critical: bool, written: bool):
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    body = ca.respond(site.leaf.cert, extensions=[(unknown, critical)])
    responder.serve(body)
    run = refresh("--cert", site.cert)
    assert_written_or_refused(run, site, body, written, "1.3.6.1.4.1.99999.1")


@pytest.mark.parametrize("delegate_life, written", [(DAY, True), (-HOUR, False), (3 * MINUTE, False)])
def test_delegate_must_be_valid(site: Site, responder: Responder, ca: CA, delegate_life, written: bool):
    """A delegate within its validity signs; an expired one (or one with less than
    the 5 minutes left that cap the staple) does not."""
    t = now()
    delegate = ca.delegate(not_before=t - 10 * DAY, not_after=t + delegate_life)
    body = ca.respond(site.leaf.cert, signer=delegate, this_update=t - HOUR)
    responder.serve(body)
    run = refresh("--cert", site.cert)
    assert_written_or_refused(run, site, body, written)


@pytest.mark.parametrize("this_update, next_update, written", [
    (4 * MINUTE, 4 * DAY, True),     # thisUpdate within the 5 minutes of skew
    (6 * MINUTE, 4 * DAY, False),    # beyond it
    (-HOUR, 7 * MINUTE, True),       # more than 5 minutes left
    (-HOUR, 4 * MINUTE, False),      # less: HAProxy would not staple it
])
def test_time_window_boundaries(site: Site, responder: Responder, ca: CA, this_update, next_update, written):
    t = now()
    body = ca.respond(site.leaf.cert, this_update=t + this_update, next_update=t + next_update)
    responder.serve(body)
    run = refresh("--cert", site.cert)
    assert_written_or_refused(run, site, body, written)


def test_output_option(tmp_path: Path, site: Site, responder: Responder):
    out_dir = tmp_path / "staples"
    out_dir.mkdir()
    out = out_dir / "site.der"
    body = responder.good()
    responder.serve(body)
    assert_silent_success(refresh("--cert", site.cert, "--output", out))
    assert out.read_bytes() == body
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert not site.output.exists()
    assert listing(out_dir) == {"site.der", ".site.der.lock", ".site.der.state.json"}


@pytest.mark.parametrize("args", [
    [], ["--config", "x.toml", "--cert", "CERT"], ["--config", "x.toml", "--url", "http://x/"],
    ["--cert", "CERT", "--timeout", "0"], ["--cert", "CERT", "--timeout", "soon"],
    ["--cert", "CERT", "--refresh-at", "1.5"], ["--cert", "CERT", "--default-validity", "forever"],
    ["--cert", "CERT", "--proxy", "socks5://127.0.0.1:1080"],
])
def test_usage_errors_exit_2(site: Site, responder: Responder, args: list):
    run = refresh(*[str(site.cert) if a == "CERT" else a for a in args])
    assert run.code == 2, run.err
    assert_no_traceback(run)
    assert responder.requests == 0
    assert not site.output.exists()
    # Twin: the plain, well-formed run.
    assert_silent_success(refresh("--cert", site.cert))


# -- revocation ------------------------------------------------------------------------

def test_revoked_replaces_good_and_is_final(site: Site, responder: Responder, ca: CA):
    t = now() - 2 * HOUR
    good = ca.respond(site.leaf.cert, this_update=t, next_update=t + 4 * DAY)
    responder.serve(good)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == good

    revoked = ca.respond(site.leaf.cert, status="revoked", this_update=t + HOUR,
                         next_update=t + 5 * DAY, revoked_at=t + 30 * MINUTE,
                         reason=x509.ReasonFlags.key_compromise)
    responder.serve(revoked)
    run = refresh("--cert", site.cert, "--force")
    assert run.code == 2, run.err
    assert site.output.read_bytes() == revoked
    assert_one_line(run, str(site.cert), "REVOKED")
    assert listing(site.output.parent) == AFTER_WRITE

    # A plain run keeps saying so: exit 2, loudly, without fetching.
    n = responder.requests
    run = refresh("--cert", site.cert)
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert), "REVOKED")
    assert responder.requests == n

    # Revocation is final: a later, validly signed "good" is refused.
    later_good = ca.respond(site.leaf.cert, this_update=now() - 10 * MINUTE)
    responder.serve(later_good)
    run = refresh("--cert", site.cert, "--force")
    assert run.code == 2, run.err
    assert site.output.read_bytes() == revoked
    assert_one_line(run, str(site.cert), "REVOKED")
    assert responder.requests == n + 1


def test_revoked_without_staple_is_written(site: Site, responder: Responder):
    responder.fault("revoked")
    run = refresh("--cert", site.cert)
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert), "REVOKED")
    p = openssl_verdict(site)
    assert f"{site.cert}: revoked" in p.stdout, p.stdout + p.stderr


def test_later_good_after_good_is_written(site: Site, responder: Responder, ca: CA):
    """Twin of revocation-is-final: good after good is an ordinary refresh."""
    t = now() - 2 * HOUR
    responder.serve(ca.respond(site.leaf.cert, this_update=t, next_update=t + 4 * DAY))
    assert_silent_success(refresh("--cert", site.cert))
    later_good = ca.respond(site.leaf.cert, this_update=now() - 10 * MINUTE)
    responder.serve(later_good)
    assert_silent_success(refresh("--cert", site.cert, "--force"))
    assert site.output.read_bytes() == later_good


# -- the file on disk is not a usable staple -----------------------------------------------

def _unusable(kind: str, ca: CA, site: Site) -> bytes:
    if kind == "garbage":
        return b"\x30\x03\x0a\x01\x03 not a staple"
    if kind == "expired":
        return ca.respond(site.leaf.cert, this_update=now() - 5 * DAY, next_update=now() - HOUR)
    if kind == "other_cert":
        return ca.respond(ca.issue("other.example").cert)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["garbage", "expired", "other_cert"])
def test_unusable_staple_on_disk_is_replaced(site: Site, responder: Responder, ca: CA, kind: str):
    site.output.write_bytes(_unusable(kind, ca, site))
    body = responder.good()
    responder.serve(body)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == body


@pytest.mark.parametrize("kind", ["garbage", "expired", "other_cert"])
def test_unusable_staple_on_disk_is_left_alone_on_failure(site: Site, responder: Responder, ca: CA, kind: str):
    old = _unusable(kind, ca, site)
    site.output.write_bytes(old)
    responder.fault("tryLater")
    run = refresh("--cert", site.cert)
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert), "tryLater")
    assert site.output.read_bytes() == old


# -- 3. when to fetch ---------------------------------------------------------------------

@pytest.fixture
def staple_75(site: Site, responder: Responder, ca: CA) -> bytes:
    """A good staple 75 % through its window (thisUpdate now-3d, nextUpdate now+1d)."""
    body = ca.respond(site.leaf.cert, this_update=now() - 3 * DAY, next_update=now() + DAY)
    responder.serve(body)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == body
    return body


def test_due_staple_is_refreshed_without_force(site, responder, ca, staple_75):
    n = responder.requests
    fresh = ca.respond(site.leaf.cert, this_update=now() - HOUR)
    responder.serve(fresh)
    run = refresh("--cert", site.cert)
    assert_silent_success(run)
    assert responder.requests == n + 1
    assert site.output.read_bytes() == fresh


def test_refresh_at_later_fraction_leaves_the_staple_alone(site, responder, ca, staple_75):
    """Twin: the same staple is not due at --refresh-at 0.9."""
    n = responder.requests
    responder.serve(ca.respond(site.leaf.cert, this_update=now() - HOUR))
    run = refresh("--cert", site.cert, "--refresh-at", "0.9")
    assert_silent_success(run)
    assert responder.requests == n
    assert site.output.read_bytes() == staple_75


@pytest.fixture
def fresh_staple(site: Site, responder: Responder, ca: CA) -> bytes:
    body = ca.respond(site.leaf.cert, this_update=now() - HOUR, next_update=now() + 4 * DAY)
    responder.serve(body)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == body
    return body


def test_fresh_staple_makes_no_request(site, responder, fresh_staple):
    n = responder.requests
    run = refresh("--cert", site.cert)
    assert_silent_success(run)
    assert responder.requests == n
    assert site.output.read_bytes() == fresh_staple


def test_fresh_staple_verbose_says_one_line(site, responder, fresh_staple):
    n = responder.requests
    run = refresh("--cert", site.cert, "-v")
    assert run.code == 0, run.err
    assert_one_line(run, str(site.cert))
    assert responder.requests == n


def test_force_fetches_a_fresh_staple(site, responder, ca, fresh_staple):
    """Twin of the no-request case."""
    n = responder.requests
    newer = ca.respond(site.leaf.cert, this_update=now() - 10 * MINUTE)
    responder.serve(newer)
    run = refresh("--cert", site.cert, "--force")
    assert_silent_success(run)
    assert responder.requests == n + 1
    assert site.output.read_bytes() == newer


@pytest.mark.parametrize("delegate_life, due", [(30 * MINUTE, True), (10 * DAY, False)])
def test_delegate_not_after_shortens_the_window(site, responder, ca, delegate_life, due):
    """The staple is usable until the earlier of nextUpdate and the delegate's
    notAfter; with a delegate expiring in 30 min, half of (now-1h .. now+30m) is past."""
    t = now()
    delegate = ca.delegate(not_before=t - 10 * DAY, not_after=t + delegate_life)
    old = ca.respond(site.leaf.cert, signer=delegate, this_update=t - HOUR, next_update=t + 3 * DAY)
    responder.serve(old)
    assert_silent_success(refresh("--cert", site.cert))
    newer = ca.respond(site.leaf.cert, this_update=now() - 5 * MINUTE)
    responder.serve(newer)
    assert_silent_success(refresh("--cert", site.cert))
    assert responder.requests == (2 if due else 1)
    assert site.output.read_bytes() == (newer if due else old)


@pytest.mark.parametrize("hours_ago, due", [(13, True), (11, False)])
def test_response_without_next_update_counts_one_day(site, responder, ca, hours_ago, due):
    """No nextUpdate: valid one day after thisUpdate, refreshed at the half (12 h)."""
    old = ca.respond(site.leaf.cert, this_update=now() - hours_ago * HOUR, next_update=None)
    responder.serve(old)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == old
    newer = ca.respond(site.leaf.cert, this_update=now() - 5 * MINUTE)
    responder.serve(newer)
    run = refresh("--cert", site.cert)
    assert_silent_success(run)
    assert responder.requests == (2 if due else 1)
    assert site.output.read_bytes() == (newer if due else old)


@pytest.mark.parametrize("validity, due", [([], False), (["--default-validity", "12h"], True)])
def test_default_validity_is_configurable(site, responder, ca, validity, due):
    """No nextUpdate, thisUpdate 7 h ago: due under a 12 h validity (half: 6 h), not under 1 d."""
    old = ca.respond(site.leaf.cert, this_update=now() - 7 * HOUR, next_update=None)
    responder.serve(old)
    assert_silent_success(refresh("--cert", site.cert, *validity))
    newer = ca.respond(site.leaf.cert, this_update=now() - 5 * MINUTE, next_update=None)
    responder.serve(newer)
    assert_silent_success(refresh("--cert", site.cert, *validity))
    assert responder.requests == (2 if due else 1)
    assert site.output.read_bytes() == (newer if due else old)


# -- 4. GET and POST ------------------------------------------------------------------------

def test_default_request_is_one_get_with_encoded_path(site: Site, responder: Responder, ca: CA):
    assert_silent_success(refresh("--cert", site.cert))
    assert [s.method for s in responder.seen] == ["GET"]
    path = responder.seen[0].path
    assert path.startswith("/") and not path.startswith("//")
    tail = path[1:]
    assert re.fullmatch(r"[A-Za-z0-9%]+", tail), tail  # no raw '+', '/', '='
    want = expected_request(site.leaf, ca)
    assert tail == urllib.parse.quote(base64.b64encode(want).decode(), safe="")
    req = ocsp.load_der_ocsp_request(base64.b64decode(urllib.parse.unquote(tail), validate=True))
    assert isinstance(req.hash_algorithm, hashes.SHA1)
    assert req.serial_number == site.leaf.cert.serial_number
    assert len(req.extensions) == 0  # no nonce


@pytest.mark.parametrize("get_answer", ["http500", "http404", "malformedRequest"])
def test_post_after_failed_get(site: Site, responder: Responder, get_answer: str):
    good = responder.good()
    bad = {
        "http500": Reply(b"oops", status=500, content_type="text/plain"),
        "http404": Reply(b"not here", status=404, content_type="text/plain"),
        "malformedRequest": Reply(unsuccessful("malformedRequest")),
    }[get_answer]
    responder.reply_for = lambda req: bad if responder.seen[-1].method == "GET" else Reply(good)
    run = refresh("--cert", site.cert)
    assert_silent_success(run)
    assert [s.method for s in responder.seen] == ["GET", "POST"]
    assert responder.seen[1].serials == [site.leaf.cert.serial_number]
    assert site.output.read_bytes() == good


def test_post_failing_too_writes_nothing(site: Site, responder: Responder):
    """Twin: HTTP 500 to GET and to POST."""
    responder.fault("http500")
    run = refresh("--cert", site.cert)
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert), "500")
    assert [s.method for s in responder.seen] == ["GET", "POST"]
    assert not site.output.exists()


@pytest.mark.parametrize("extra, method", [(0, "GET"), (1, "POST"), (120, "POST")])
def test_get_only_while_url_within_255_bytes(site: Site, responder: Responder, ca: CA, extra: int, method: str):
    enc = urllib.parse.quote(base64.b64encode(expected_request(site.leaf, ca)).decode(), safe="")
    base = responder.url.rstrip("/")
    # GET URL = base + "/" + "p"*k + "/" + enc; make it 255 + extra bytes long.
    k = 255 + extra - len(base) - 2 - len(enc)
    assert k > 0
    url = base + "/" + "p" * k
    assert len(url + "/" + enc) == 255 + extra
    body = responder.good()
    responder.serve(body)
    run = refresh("--cert", site.cert, "--url", url)
    assert_silent_success(run)
    assert [s.method for s in responder.seen] == [method]
    if method == "POST":
        assert responder.seen[0].path == "/" + "p" * k
        assert responder.seen[0].serials == [site.leaf.cert.serial_number]
    else:
        assert responder.seen[0].path == "/" + "p" * k + "/" + enc
    assert site.output.read_bytes() == body


# -- 5. several OCSP URLs -------------------------------------------------------------------

def test_second_url_used_when_first_is_dead(tmp_path: Path, ca: CA, responder: Responder):
    dead = f"http://127.0.0.1:{closed_port()}/"
    site = make_site(tmp_path, ca, None, urls=(dead, responder.url))
    responder.leaf = site.leaf
    body = responder.good()
    responder.serve(body)
    assert_silent_success(refresh("--cert", site.cert))
    assert site.output.read_bytes() == body
    assert responder.requests == 1


def test_only_a_dead_url_writes_nothing(tmp_path: Path, ca: CA, responder: Responder):
    """Twin: the same dead URL alone."""
    port = closed_port()
    site = make_site(tmp_path, ca, None, urls=(f"http://127.0.0.1:{port}/",))
    run = refresh("--cert", site.cert)
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert), str(port))
    assert not site.output.exists()


def test_second_url_used_when_first_answers_badly(tmp_path: Path, ca: CA, responder: Responder):
    with Responder(ca) as first:
        site = make_site(tmp_path, ca, None, urls=(first.url, responder.url))
        first.leaf = responder.leaf = site.leaf
        first.fault("tryLater")
        body = responder.good()
        responder.serve(body)
        assert_silent_success(refresh("--cert", site.cert))
        assert first.requests >= 1 and responder.requests == 1
        assert site.output.read_bytes() == body


def test_all_urls_failing_names_each(tmp_path: Path, ca: CA, responder: Responder):
    """Twin: both URLs fail; one line, exit 2."""
    with Responder(ca) as first:
        site = make_site(tmp_path, ca, None, urls=(first.url, responder.url))
        first.leaf = responder.leaf = site.leaf
        first.fault("tryLater")
        responder.fault("unknown")
        run = refresh("--cert", site.cert)
        assert run.code == 2, run.err
        assert_one_line(run, str(site.cert), "tryLater", "unknown")
        assert not site.output.exists()


def test_first_good_url_stops_the_search(tmp_path: Path, ca: CA, responder: Responder):
    with Responder(ca) as second:
        site = make_site(tmp_path, ca, None, urls=(responder.url, second.url))
        responder.leaf = second.leaf = site.leaf
        assert_silent_success(refresh("--cert", site.cert))
        assert responder.requests == 1 and second.requests == 0


# -- 6. bad input ------------------------------------------------------------------------------

def _bad_input(case: str, tmp_path: Path, ca: CA, responder: Responder) -> tuple[Path, list, list]:
    """(cert path, args of the bad run, args of its good twin)."""
    site = make_site(tmp_path, ca, responder)
    if case == "missing_cert":
        missing = tmp_path / "nonexistent.pem"
        return missing, ["--cert", missing], ["--cert", site.cert]
    if case == "not_pem":
        der = tmp_path / "cert.der"
        der.write_bytes(site.leaf.cert.public_bytes(serialization.Encoding.DER))
        return der, ["--cert", der, "--issuer", site.issuer], ["--cert", site.cert, "--issuer", site.issuer]
    if case == "leaf_only_without_issuer":
        leaf = write_pem(tmp_path / "cert.pem", site.leaf)
        return leaf, ["--cert", leaf], ["--cert", leaf, "--issuer", site.issuer]
    if case == "wrong_issuer":
        other = write_pem(tmp_path / "other-root.pem", CA.root("Another Root").cert)
        return site.cert, ["--cert", site.cert, "--issuer", other], ["--cert", site.cert, "--issuer", site.issuer]
    if case == "no_ocsp_url":
        leaf = ca.issue("no-ocsp.example", ocsp_urls=())
        responder.leaf = leaf
        cert = write_pem(tmp_path / "no-ocsp.pem", leaf, ca.cert)
        return cert, ["--cert", cert], ["--cert", cert, "--url", responder.url]
    if case == "ftp_url":
        return site.cert, ["--cert", site.cert, "--url", "ftp://x"], ["--cert", site.cert, "--url", responder.url]
    raise ValueError(case)


BAD_INPUTS = ["missing_cert", "not_pem", "leaf_only_without_issuer", "wrong_issuer", "no_ocsp_url", "ftp_url"]


def _staples_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.name.endswith(".ocsp") or "tmp" in p.name)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_line(tmp_path: Path, ca: CA, responder: Responder, case: str):
    cert, bad, _ = _bad_input(case, tmp_path, ca, responder)
    run = refresh(*bad)
    assert run.code == 2, run.err
    assert_one_line(run, str(cert))
    assert _staples_in(tmp_path) == []
    assert responder.requests == 0


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_twin_succeeds(tmp_path: Path, ca: CA, responder: Responder, case: str):
    _, _, good = _bad_input(case, tmp_path, ca, responder)
    assert_silent_success(refresh(*good))
    assert responder.requests == 1
    assert len([p for p in _staples_in(tmp_path) if p.name.endswith(".ocsp")]) == 1


# -- 7. config files --------------------------------------------------------------------------

def _two_site_config(tmp_path: Path, ca: CA, r1: Responder, r2: Responder, *,
                     defaults: str = "timeout = 1.0\nrefresh_at = 0.5\n", extra_b: str = "") -> dict:
    conf = tmp_path / "conf"
    a = make_site(conf / "certs" / "a", ca, r1, cn="a.example.test")
    leaf_b = ca.issue("b.example.test", ocsp_urls=(r2.url,))
    r2.leaf = leaf_b
    (conf / "certs" / "b").mkdir(parents=True)
    (conf / "staples").mkdir()
    write_pem(conf / "certs" / "b" / "cert.pem", leaf_b)
    write_pem(conf / "certs" / "b" / "chain.pem", ca.cert)
    path = conf / "ocspstaple.toml"
    path.write_text(
        f"[defaults]\n{defaults}\n"
        '[staple.a]\ncert = "certs/a/fullchain.pem"\n\n'
        '[staple.b]\ncert = "certs/b/cert.pem"\nissuer = "certs/b/chain.pem"\n'
        f'output = "staples/b.der"\n{extra_b}'
    )
    return {
        "config": path, "a": a, "leaf_b": leaf_b,
        "cert_b": conf / "certs" / "b" / "cert.pem", "out_b": conf / "staples" / "b.der",
    }


def test_config_writes_every_staple(tmp_path: Path, ca: CA, responder: Responder):
    with Responder(ca) as r2:
        c = _two_site_config(tmp_path, ca, responder, r2)
        body_a = ca.respond(c["a"].leaf.cert)
        body_b = ca.respond(c["leaf_b"].cert)
        responder.serve(body_a)
        r2.serve(body_b)
        # The run's working directory (the repository) is not the config's.
        assert Path.cwd() != c["config"].parent
        run = refresh("--config", c["config"])
        assert_silent_success(run)
        assert c["a"].output.read_bytes() == body_a
        assert c["out_b"].read_bytes() == body_b
        assert not (c["cert_b"].parent / "cert.pem.ocsp").exists()
        assert responder.requests == 1 and r2.requests == 1
        # -v: one line per certificate, each naming it; both fresh, nothing fetched.
        run = refresh("--config", c["config"], "-v")
        assert run.code == 0 and run.out == "", run.err
        assert len(run.lines) == 2, run.err
        assert sorted(line.split(": ")[0] for line in run.lines) == sorted([str(c["a"].cert), str(c["cert_b"])])
        assert responder.requests == 1 and r2.requests == 1


def test_config_one_failing_responder_keeps_the_other(tmp_path: Path, ca: CA, responder: Responder):
    """Twin: staple b's responder stalls past [defaults] timeout; a stays fresh."""
    with Responder(ca) as r2:
        c = _two_site_config(tmp_path, ca, responder, r2)
        body_a = ca.respond(c["a"].leaf.cert)
        # b is 75 % through its window: due on the next run.
        body_b = ca.respond(c["leaf_b"].cert, this_update=now() - 3 * DAY, next_update=now() + DAY)
        responder.serve(body_a)
        r2.serve(body_b)
        assert_silent_success(refresh("--config", c["config"]))
        n_a = responder.requests
        # A good answer after 4 s: only [defaults] timeout = 1.0 makes this a failure.
        r2.fault("slow")
        run = refresh("--config", c["config"])
        assert run.code == 1, run.err
        assert_one_line(run, str(c["cert_b"]), "kept staple valid until")
        assert responder.requests == n_a  # a was fresh: not even asked
        assert c["a"].output.read_bytes() == body_a
        assert c["out_b"].read_bytes() == body_b


@pytest.mark.parametrize("defaults, cli, due", [
    ("refresh_at = 0.5\n", [], True),
    ("refresh_at = 0.8\n", [], False),
    ("refresh_at = 0.8\n", ["--refresh-at", "0.5"], True),
])
def test_config_refresh_at_from_defaults_and_cli(tmp_path: Path, ca: CA, responder: Responder,
                                                 defaults: str, cli: list, due: bool):
    with Responder(ca) as r2:
        c = _two_site_config(tmp_path, ca, responder, r2, defaults=defaults)
        responder.serve(ca.respond(c["a"].leaf.cert))
        old_b = ca.respond(c["leaf_b"].cert, this_update=now() - 3 * DAY, next_update=now() + DAY)
        r2.serve(old_b)
        assert_silent_success(refresh("--config", c["config"]))
        new_b = ca.respond(c["leaf_b"].cert, this_update=now() - 5 * MINUTE)
        r2.serve(new_b)
        assert_silent_success(refresh("--config", c["config"], *cli))
        assert r2.requests == (2 if due else 1)
        assert c["out_b"].read_bytes() == (new_b if due else old_b)


def test_config_with_unknown_key_in_one_staple(tmp_path: Path, ca: CA, responder: Responder):
    with Responder(ca) as r2:
        c = _two_site_config(tmp_path, ca, responder, r2, extra_b='colour = "red"\n')
        body_a = ca.respond(c["a"].leaf.cert)
        responder.serve(body_a)
        run = refresh("--config", c["config"])
        assert run.code == 2, run.err
        assert_one_line(run, "colour", "staple.b")
        assert c["a"].output.read_bytes() == body_a  # the other staple still written
        assert not c["out_b"].exists()
        assert r2.requests == 0


def test_config_error_line_names_the_certificate(tmp_path: Path, ca: CA, responder: Responder):
    with Responder(ca) as r2:
        c = _two_site_config(tmp_path, ca, responder, r2, extra_b='colour = "red"\n')
        run = refresh("--config", c["config"])
        assert run.code == 2, run.err
        assert_one_line(run, "colour", str(c["cert_b"]))


def test_broken_toml_config(tmp_path: Path, ca: CA, responder: Responder):
    with Responder(ca) as r2:
        c = _two_site_config(tmp_path, ca, responder, r2)
        good_text = c["config"].read_text()
        c["config"].write_text(good_text.replace("[staple.b]", "[staple.b"))
        run = refresh("--config", c["config"])
        assert run.code == 2, run.err
        assert_one_line(run, str(c["config"]))
        assert _staples_in(tmp_path) == []
        assert responder.requests == 0 and r2.requests == 0
        # Twin: the same file, repaired, works.
        c["config"].write_text(good_text)
        assert_silent_success(refresh("--config", c["config"]))
        assert c["a"].output.exists() and c["out_b"].exists()


# -- 8. concurrent runs ---------------------------------------------------------------------

def _six_at_once(site: Site, *extra: str) -> list[tuple[int, str, str]]:
    cmd = [sys.executable, "-m", "ocspstaple", "refresh", "--cert", str(site.cert), *extra]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
             for _ in range(6)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append((p.returncode, out, err))
    return results


@pytest.mark.parametrize("force", [True, False])
def test_six_concurrent_runs_take_turns(site: Site, responder: Responder, force: bool):
    # Each answer takes a moment, so that the runs really overlap.
    responder.reply_for = lambda req: Reply(responder.good(), delay=0.3)
    results = _six_at_once(site, *(["--force"] if force else []))
    assert [r[0] for r in results] == [0] * 6, results
    assert all(out == "" and err == "" for _, out, err in results), results
    assert listing(site.output.parent) == AFTER_WRITE
    assert responder.max_active == 1  # the lock serialises the fetches
    # Without --force, the runs that waited decide afresh and find a fresh staple.
    assert responder.requests == (6 if force else 1)
    assert_openssl_good(site)


def test_lock_held_elsewhere_with_staple_is_kept(site: Site, responder: Responder):
    """Twin of the concurrent runs: a lock that is never released."""
    before = write_good_staple(site, responder)
    n = responder.requests
    with filelock.FileLock(str(lock_path(site.output)), mode=0o600):
        run = refresh("--cert", site.cert, "--force", "--lock-timeout", "0.5")
    assert run.code == 1, run.err
    assert_one_line(run, str(site.cert), "lock", "kept staple valid until")
    assert responder.requests == n
    assert site.output.read_bytes() == before


def test_lock_held_elsewhere_without_staple(site: Site, responder: Responder):
    with filelock.FileLock(str(lock_path(site.output)), mode=0o600):
        run = refresh("--cert", site.cert, "--lock-timeout", "0.5")
    assert run.code == 2, run.err
    assert_one_line(run, str(site.cert), "lock")
    assert responder.requests == 0
    assert not site.output.exists()


# -- 9. proxies ------------------------------------------------------------------------------

def _proxy_run(how: str, proxy: str, site: Site) -> Run:
    env = clean_env()
    args: list = ["--cert", site.cert]
    if how == "--proxy":
        args += ["--proxy", proxy]
    else:
        env[how] = proxy
    return refresh(*args, env=env)


@pytest.mark.parametrize("how", ["HTTP_PROXY", "http_proxy", "--proxy"])
def test_dead_proxy_fails_the_fetch(site: Site, responder: Responder, how: str):
    port = closed_port()
    run = _proxy_run(how, f"http://127.0.0.1:{port}", site)
    assert run.code == 2, run.err
    line = assert_one_line(run, str(site.cert))
    assert "proxy" in line.lower()
    assert responder.requests == 0
    assert not site.output.exists()
    # Twin: the very same run without the proxy succeeds.
    assert_silent_success(refresh("--cert", site.cert))
    assert responder.requests == 1


@pytest.mark.parametrize("how", ["HTTP_PROXY", "http_proxy", "--proxy"])
def test_requests_go_through_the_proxy(tmp_path: Path, ca: CA, responder: Responder, how: str):
    """Twin of the dead proxy: the responder itself acts as the proxy of a URL
    nothing listens on, so only a proxied request can succeed."""
    port = closed_port()
    site = make_site(tmp_path, ca, None, urls=(f"http://127.0.0.1:{port}/",))
    responder.leaf = site.leaf
    body = responder.good()
    responder.serve(body)
    run = _proxy_run(how, responder.url.rstrip("/"), site)
    assert_silent_success(run)
    assert responder.requests == 1
    assert responder.seen[0].path.startswith(f"http://127.0.0.1:{port}/")  # absolute-form: a proxy request
    assert site.output.read_bytes() == body
