"""Issue 13: judge responses as the servers and clients that use them do.

SHA-1 CertIDs only, an older revocation is still written, the 4-day refresh
cap, the parser's own words for DER it cannot read, extensions judged where
they stand, ``verify --at``, and pyca's ``cryptography_vectors`` responses
(which nobody here wrote) judged through the real CLI.  Every accepting case
has its refusing twin.  The SHA-1 signature policy is tests/test_sha1_policy.py.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FixedClock, NoNetwork, run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pki import CA, DAY, HOUR, assemble, ext, parts, seq, tlv, with_single_extension, write_pem
from test_validate import NOW, pair, refused, resp  # noqa: F401  (pair is a fixture: this module's ca and leaf)

from ocspstaple import der, state
from ocspstaple.config import BadEntry, Options, Staple, read_config
from ocspstaple.errors import ConfigError
from ocspstaple.fetch import HttpReply
from ocspstaple.refresh import Result, refresh_one
from ocspstaple.status import MetricStaple, Threshold, evaluate, examine, metrics_text
from ocspstaple.store import FileStore
from ocspstaple.validate import CertStatus, validate

UTC = dt.timezone.utc
MIN = dt.timedelta(minutes=1)
URL = "http://ocsp.test/"


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.root("Real Responses Root", now=NOW)


@pytest.fixture(scope="module")
def leaf(ca: CA):
    return ca.issue("www.example.test", ocsp_urls=(URL,))




class Network:
    """The network edge: every request gets ``body``; requests are counted."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0

    def __call__(self, timeout: float, proxy: str | None) -> Network:
        return self

    def get(self, url: str) -> HttpReply:
        self.requests += 1
        return HttpReply(200, self.body)

    def post(self, url: str, body: bytes) -> HttpReply:
        return self.get(url)


@pytest.fixture
def staple(tmp_path: Path, ca: CA, leaf) -> Staple:
    cert = write_pem(tmp_path / "cert.pem", leaf, ca.cert)
    return Staple(name=str(cert), cert=cert, output=tmp_path / "cert.pem.ocsp")


def run(st: Staple, network, now: dt.datetime = NOW):
    return refresh_one(st, network=network, clock=FixedClock(now), store=FileStore())


# -- 1. only a SHA-1 CertID ----------------------------------------------------------

@pytest.mark.parametrize("alg, name", [(hashes.SHA256(), "SHA-256"), (hashes.SHA384(), "SHA-384"),
                                       (hashes.SHA512(), "SHA-512")])
def test_genuine_response_with_a_sha2_certid_is_refused(ca, leaf, pair, alg, name):
    why = refused(resp(ca, leaf, hash_alg=alg), pair, f"CertID uses {name}; only a SHA-1 CertID")
    assert "HAProxy" in why
    # Twin: the same response with the SHA-1 CertID the request used is taken.
    assert validate(resp(ca, leaf, hash_alg=hashes.SHA1()), pair=pair, now=NOW).status is CertStatus.GOOD


def test_sha256_certid_does_not_replace_a_working_sha1_staple(staple, ca, leaf):
    current = resp(ca, leaf, this_update=NOW - 3 * HOUR)
    staple.output.write_bytes(current)
    newer = resp(ca, leaf, this_update=NOW - HOUR, hash_alg=hashes.SHA256())
    o = run(replace(staple, force=True), Network(newer))
    assert o.result is Result.KEPT and o.result.exit_code == 1
    assert "only a SHA-1 CertID" in o.message and "kept staple valid until" in o.message
    assert staple.output.read_bytes() == current
    # Twin: the same newer response under a SHA-1 CertID replaces it.
    newer_sha1 = resp(ca, leaf, this_update=NOW - HOUR)
    assert run(replace(staple, force=True), Network(newer_sha1)).result is Result.WRITTEN
    assert staple.output.read_bytes() == newer_sha1


# -- 2. an older revocation is written ------------------------------------------------

def test_older_revocation_replaces_a_newer_good_staple(staple, ca, leaf):
    good = resp(ca, leaf, this_update=NOW - HOUR)
    staple.output.write_bytes(good)
    revoked = resp(ca, leaf, this_update=NOW - 3 * HOUR, status="revoked",
                   reason=x509.ReasonFlags.key_compromise)
    o = run(replace(staple, force=True), Network(revoked))
    assert o.result is Result.REVOKED and o.result.exit_code == 2 and o.changed
    assert "REVOKED" in o.message and "key_compromise" in o.message and "replay" not in o.message
    assert staple.output.read_bytes() == revoked
    # Revocation stays final: a later good is refused.
    later_good = resp(ca, leaf, this_update=NOW - MIN)
    o = run(replace(staple, force=True), Network(later_good))
    assert o.result is Result.REVOKED and not o.changed and "revocation is final" in o.message
    assert staple.output.read_bytes() == revoked


def test_older_good_response_is_still_refused_as_a_replay(staple, ca, leaf):
    """Twin: the same older thisUpdate saying good is a replay."""
    good = resp(ca, leaf, this_update=NOW - HOUR)
    staple.output.write_bytes(good)
    o = run(replace(staple, force=True), Network(resp(ca, leaf, this_update=NOW - 3 * HOUR)))
    assert o.result is Result.KEPT and "replay" in o.message
    assert staple.output.read_bytes() == good


def test_older_revocation_does_not_replace_a_newer_revocation(staple, ca, leaf):
    """A revocation on disk is only replaced by a fresher one (nothing hidden either way)."""
    newer = resp(ca, leaf, this_update=NOW - HOUR, status="revoked")
    staple.output.write_bytes(newer)
    o = run(replace(staple, force=True), Network(resp(ca, leaf, this_update=NOW - 3 * HOUR, status="revoked")))
    assert o.result is Result.REVOKED and not o.changed
    assert staple.output.read_bytes() == newer


# -- 3. never wait longer than 4 days after thisUpdate ----------------------------------

CENTURY = 36524 * DAY


def test_a_hundred_year_window_is_refreshed_after_four_days(staple, ca, leaf):
    old = resp(ca, leaf, this_update=NOW - 4 * DAY - MIN, next_update=NOW + CENTURY)
    staple.output.write_bytes(old)
    fresh = resp(ca, leaf, this_update=NOW - MIN, next_update=NOW + CENTURY)
    net = Network(fresh)
    o = run(staple, net)
    assert net.requests == 1 and o.result is Result.WRITTEN
    assert staple.output.read_bytes() == fresh


def test_within_four_days_the_same_staple_is_left_alone(staple, ca, leaf):
    """Twin: three days after thisUpdate it is not due (half of a century is far off)."""
    young = resp(ca, leaf, this_update=NOW - 3 * DAY, next_update=NOW + CENTURY)
    staple.output.write_bytes(young)
    o = run(staple, NoNetwork())
    assert o.result is Result.FRESH and f"next refresh after {(NOW + DAY):%Y-%m-%d %H:%M} UTC" in o.message
    # ... but a shorter --max-refresh-interval makes it due.
    net = Network(resp(ca, leaf, this_update=NOW - MIN, next_update=NOW + CENTURY))
    assert run(replace(staple, max_refresh_interval=2 * DAY), net).result is Result.WRITTEN


def test_the_fraction_still_wins_when_it_comes_first(ca, leaf, pair):
    v = validate(resp(ca, leaf, this_update=NOW - HOUR, next_update=NOW + 3 * DAY - HOUR), pair=pair, now=NOW)
    assert v.refresh_due(0.5) == NOW - HOUR + 1.5 * DAY  # half of 3 days comes before 4 days
    v = validate(resp(ca, leaf, this_update=NOW - HOUR, next_update=NOW + CENTURY), pair=pair, now=NOW)
    assert v.refresh_due(0.5) == NOW - HOUR + 4 * DAY
    assert v.refresh_due(0.5, 36 * HOUR) == NOW - HOUR + 36 * HOUR


def test_status_check_and_metrics_use_the_same_rule(tmp_path, staple, ca, leaf):
    staple.output.write_bytes(resp(ca, leaf, this_update=NOW - HOUR, next_update=NOW + CENTURY))
    (row,) = examine([replace(staple, max_refresh_interval=2 * DAY)], store=FileStore(), clock=lambda: NOW,
                     state_dir=None)
    assert row.usable and row.refresh_due == NOW - HOUR + 2 * DAY
    text = metrics_text([MetricStaple(name="a", output=staple.output, staple=row.staple, must_staple=False,
                                      record=state.Record(), refresh_due=row.refresh_due)],
                        duration_s=1.0, ended=NOW, code=0)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ocspstaple_staple_refresh_due_timestamp_seconds{")]
    assert f'output="{staple.output}"' in line and line.endswith(f" {(NOW - HOUR + 2 * DAY).timestamp()!r}")
    # check: a staple due (by the rule) for longer than --max-failing, with a
    # record showing refresh ran before but not since, is a WARNING ...
    later = NOW + 5 * DAY  # a day after thisUpdate + 4 days
    (row,) = examine([staple], store=FileStore(), clock=lambda: later, state_dir=None)
    stale = replace(row, record=state.Record(last_attempt=NOW - 2 * HOUR))
    got = evaluate(stale, later, warning=Threshold(fraction=0.4), critical=Threshold(fraction=0.2),
                   max_failing=6 * HOUR)
    assert got[0].name == "WARNING" and "refresh due since" in got[1] and "timer" in got[1]
    # ... and its twin, attempted after it fell due, is OK.
    attempted = replace(row, record=state.Record(last_attempt=later - HOUR))
    assert evaluate(attempted, later, warning=Threshold(fraction=0.4), critical=Threshold(fraction=0.2),
                    max_failing=6 * HOUR)[0].name == "OK"


def test_max_refresh_interval_from_the_config_and_the_command_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[defaults]\nmax_refresh_interval = "2d"\n[staple.a]\ncert = "a.pem"\n'
                      '[staple.b]\ncert = "b.pem"\nmax_refresh_interval = 36000\n')
    a, b = read_config(config, cli=Options(), force=False).staples
    assert isinstance(a, Staple) and a.max_refresh_interval == 2 * DAY
    assert isinstance(b, Staple) and b.max_refresh_interval == 10 * HOUR
    (a, b) = read_config(config, cli=Options(max_refresh_interval=DAY), force=False).staples
    assert a.max_refresh_interval == b.max_refresh_interval == DAY  # the command line wins
    assert Staple(name="x", cert=Path("x"), output=Path("y")).max_refresh_interval == 4 * DAY


@pytest.mark.parametrize("value", ['"0"', "0", "-1", '"-1d"', "nan", "inf", '"nan"', '"99999999999999d"',
                                   '"366d"', '"30m"', "true", '"forever"'])
def test_hostile_max_refresh_interval_in_the_config(tmp_path, value):
    config = tmp_path / "c.toml"
    config.write_text(f'[staple.a]\ncert = "a.pem"\nmax_refresh_interval = {value}\n')
    (entry,) = read_config(config, cli=Options(), force=False).staples
    assert isinstance(entry, BadEntry) and "max_refresh_interval" in entry.reason
    config.write_text(f'[defaults]\nmax_refresh_interval = {value}\n[staple.a]\ncert = "a.pem"\n')
    with pytest.raises(ConfigError, match="max_refresh_interval"):
        read_config(config, cli=Options(), force=False)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "99999999999999d", "1e400", "366d", "garbage", ""])
def test_hostile_max_refresh_interval_on_the_command_line(tmp_path, ca, leaf, value):
    cert = write_pem(tmp_path / "cert.pem", leaf, ca.cert)
    r = run_cli("refresh", "--cert", cert, "--max-refresh-interval", value)
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert len(r.lines) == 1 and "--max-refresh-interval" in r.lines[0], r.err
    assert not Path(str(cert) + ".ocsp").exists()


def test_max_refresh_interval_on_the_command_line_leaves_a_young_staple_alone(tmp_path, ca):
    """Twin of the hostile values: a valid value is taken (no network: the staple is fresh)."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    leaf = ca.issue("cli.example.test", ocsp_urls=("http://127.0.0.1:9/",))
    cert = write_pem(tmp_path / "cert.pem", leaf, ca.cert)
    Path(str(cert) + ".ocsp").write_bytes(ca.respond(leaf.cert, this_update=now - HOUR, next_update=now + CENTURY))
    r = run_cli("refresh", "--cert", cert, "--max-refresh-interval", "2d", "-v")
    assert r.code == 0, r.err
    assert f"next refresh after {(now - HOUR + 2 * DAY):%Y-%m-%d %H:%M} UTC" in r.err


# -- 5. honest parse failures -----------------------------------------------------------

def _with_single_this_update(single: bytes, stamp: bytes) -> bytes:
    fields = der.read_one(single)[0].children()
    return seq(*[tlv(0x18, stamp) if f.tag == 0x18 else f.raw for f in fields])


def test_generalized_time_with_fractions_gives_the_parsers_reason(ca, leaf, pair):
    p = parts(resp(ca, leaf))
    validate(assemble(p, ca.key), pair=pair, now=NOW)  # twin: as made, whole seconds, valid
    p["singles"] = [_with_single_this_update(p["singles"][0], b"20261124110000.123Z")]  # pyhanko's fixtures
    why = refused(assemble(p, ca.key), pair,
                  "unreadable OCSP response: parser: InvalidValue at SingleResponse::this_update")
    assert "not a DER" not in why and "bytes of binary" not in why
    p = parts(resp(ca, leaf))
    p["produced_at"] = tlv(0x18, b"20261124110000.5Z")
    refused(assemble(p, ca.key), pair, r"InvalidValue at ResponseData::produced_at")


def test_explicit_default_version_gives_the_parsers_reason(ca, leaf, pair):
    p = parts(resp(ca, leaf))
    assert p["version"] == []  # DER leaves the default v1 out
    p["version"] = [tlv(0xA0, tlv(0x02, b"\x00"))]  # as golang's test responses have it
    why = refused(assemble(p, ca.key), pair, "EncodedDefault at ResponseData::version")
    assert "DER forbids" in why


@pytest.mark.parametrize("data, what", [
    (b"<html><body>503</body></html>", "not a DER OCSP response (29 bytes of HTML)"),
    (b"\x30\x82\x01\x00garbage", "not a DER OCSP response (11 bytes of binary)"),
])
def test_what_is_not_der_at_all_is_still_called_so(pair, data, what):
    """Twin: bytes that are not one DER element are described, not parsed."""
    assert refused(data, pair, "not a DER") == what


# -- 6. extensions judged where they stand ------------------------------------------------

NONCE = "1.3.6.1.5.5.7.48.1.2"


def test_critical_nonce_inside_the_single_response_is_refused(ca, leaf, pair):
    p = parts(resp(ca, leaf))
    p["singles"] = [with_single_extension(p["singles"][0], ext(NONCE, tlv(0x04, b"0123456789abcdef"), True))]
    why = refused(assemble(p, ca.key), pair, f"critical nonce extension \\({NONCE}\\) in the SingleResponse")
    assert "belongs in the response extensions" in why
    # Not critical: ignored, as any non-critical extension.
    p["singles"] = [with_single_extension(parts(resp(ca, leaf))["singles"][0],
                                          ext(NONCE, tlv(0x04, b"0123456789abcdef"), False))]
    validate(assemble(p, ca.key), pair=pair, now=NOW)


def test_critical_nonce_in_the_response_extensions_is_fine(ca, leaf, pair):
    """Twin: where RFC 6960 4.4.1 puts it, a critical nonce is understood."""
    data = resp(ca, leaf, extensions=[(x509.OCSPNonce(b"0123456789abcdef"), True)])
    assert validate(data, pair=pair, now=NOW).status is CertStatus.GOOD


def test_critical_single_extension_in_the_response_extensions_is_refused(ca, leaf, pair):
    """A CRL reason is a singleExtension (4.4.5); critical at the response level it is not understood."""
    p = parts(resp(ca, leaf))
    p["response_exts"] = [tlv(0xA1, seq(ext("2.5.29.21", tlv(0x0A, b"\x01"), True)))]
    refused(assemble(p, ca.key), pair, r"critical CRL reason extension \(2.5.29.21\) in the response")
    p = parts(resp(ca, leaf))
    p["singles"] = [with_single_extension(p["singles"][0], ext("2.5.29.21", tlv(0x0A, b"\x01"), True))]
    validate(assemble(p, ca.key), pair=pair, now=NOW)  # twin: in the SingleResponse it is understood


# -- 7. verify --at ------------------------------------------------------------------------

@pytest.fixture
def on_disk(tmp_path, ca, leaf) -> tuple[Path, Path]:
    cert = write_pem(tmp_path / "fullchain.pem", leaf, ca.cert)
    out = tmp_path / "fullchain.pem.ocsp"
    out.write_bytes(resp(ca, leaf, this_update=NOW - HOUR, next_update=NOW + 2 * DAY))
    return cert, out


@pytest.mark.parametrize("at", ["2026-11-25T09:00:00Z", "2026-11-25T10:00:00+01:00", "2026-11-25T09:00:00",
                                "2026-11-25 09:00", "2026-11-25"])
def test_verify_at_a_moment_inside_the_window(on_disk, at):
    cert, out = on_disk
    r = run_cli("verify", out, "--cert", cert, "--at", at)
    assert r.code == 0, r.out + r.err
    assert r.out.splitlines()[0] == f"{out}: valid at 2026-11-25 {'00:00' if len(at) == 10 else '09:00'} UTC, " \
                                    "certificate good"


def test_verify_at_a_moment_after_the_window(on_disk):
    """Twin: the same staple judged after nextUpdate, and before thisUpdate."""
    cert, out = on_disk
    r = run_cli("verify", out, "--cert", cert, "--at", "2026-11-26T11:56:00Z")
    assert r.code == 2 and "NOT VALID at 2026-11-26 11:56 UTC" in r.out
    assert "expires in less than 5 minutes" in r.out
    r = run_cli("verify", out, "--cert", cert, "--at", "2026-11-24T10:00:00Z")
    assert r.code == 2 and "in the future" in r.out


def test_verify_at_now_is_todays_clock(on_disk):
    cert, out = on_disk
    now = run_cli("verify", out, "--cert", cert, "--at", "now")
    plain = run_cli("verify", out, "--cert", cert)
    assert now.code == plain.code
    if dt.datetime.now(UTC) > NOW + 2 * DAY:
        assert now.code == 2 and "expired" in now.out


@pytest.mark.parametrize("at, words", [
    ("garbage", "is not a time"), ("99999-01-01T00:00:00Z", "is not a time"), ("", "is not a time"),
    ("2026-13-01", "is not a time"), ("2026-11-25T09:00:00+25:00", "is not a time"), ("2026-W48", "is not a time"),
    ("0001-01-01T00:00:00+01:00", "outside the years"), ("9999-12-31T23:00:00Z", "outside the years"),
    ("1969-12-31", "outside the years"), ("2026-11-25T09:00:00Z" + "0" * 100, "is not a time"),
])
def test_verify_at_hostile_values(on_disk, at, words):
    cert, out = on_disk
    r = run_cli("verify", out, "--cert", cert, "--at", at)
    assert r.code == 2 and r.out == "" and "Traceback" not in r.err, r.err
    assert len(r.lines) == 1 and r.lines[0].startswith("--at: ") and words in r.lines[0], r.err


# -- pyca's cryptography_vectors, judged through the real CLI ---------------------------------

cryptography_vectors = pytest.importorskip("cryptography_vectors")
VECTORS = Path(os.path.dirname(cryptography_vectors.__file__)) / "x509"
#: the response's window: 2018-08-30 11:00 to 2018-09-06 11:00 UTC
INSIDE = "2018-09-01T12:00:00Z"

# resp-sha256.der is named for its *signature* (sha256WithRSAEncryption by
# Let's Encrypt Authority X3); its CertID is SHA-1 (`openssl ocsp -respin
# resp-sha256.der -resp_text` shows "Hash Algorithm: sha1"), so rule 1 takes
# it: good inside its window, expired on today's clock.  The other responses
# are about certificates whose issuers the package does not ship (serial 3F20
# of a throwaway "Cryptography CA" for the revoked one): judged against
# cryptography.io's certificate they are honestly "for another certificate";
# the error statuses and the unreadable ones are refused before that.
VECTOR_VERDICTS = [
    ("resp-sha256.der", INSIDE, 0, "valid at 2018-09-01 12:00 UTC, certificate good"),
    ("resp-sha256.der", "now", 2, "response expired (usable until 2018-09-06 11:00 UTC)"),
    ("resp-sha256.der", "2018-08-30T10:00:00Z", 2, "thisUpdate 2018-08-30 11:00 UTC is in the future"),
    ("resp-unauthorized.der", INSIDE, 2, "responder answered unauthorized"),
    ("resp-invalid-signature-oid.der", INSIDE, 2,
     "signature of the issuer cannot be checked: md2WithRSAEncryption signatures are refused"),
    ("resp-successful-no-response-bytes.der", INSIDE, 2,
     "unreadable OCSP response: Successful OCSP response does not contain a BasicResponse"),
    ("resp-unknown-response-status.der", INSIDE, 2,
     "unreadable OCSP response: OCSP response has an unknown status code"),
    ("resp-revoked-no-next-update.der", "2018-10-23T12:00:00Z", 2,
     "response is for another certificate (serial 3F20)"),
    ("resp-invalid-version.der", INSIDE, 2, "unreadable OCSP response: 1 is not a valid OCSP response version"),
    ("resp-response-type-unknown-oid.der", INSIDE, 2,
     "unreadable OCSP response: parser: UnknownDefinedBy at ResponseBytes::response"),
]


@pytest.mark.parametrize("name, at, code, verdict", VECTOR_VERDICTS, ids=[f"{v[0]}@{v[1]}" for v in VECTOR_VERDICTS])
def test_cryptography_vectors(name, at, code, verdict):
    r = run_cli("verify", VECTORS / "ocsp" / name, "--cert", VECTORS / "cryptography.io.precert.pem",
                "--issuer", VECTORS / "letsencryptx3.pem", "--at", at)
    assert "Traceback" not in r.err and r.err == "", r.err
    assert r.code == code, r.out
    assert verdict in r.out.splitlines()[0], r.out


def test_the_vector_inside_its_window_in_full():
    r = run_cli("verify", VECTORS / "ocsp" / "resp-sha256.der", "--cert", VECTORS / "cryptography.io.precert.pem",
                "--issuer", VECTORS / "letsencryptx3.pem", "--at", INSIDE)
    assert r.code == 0
    assert r.out.splitlines()[1:] == [
        "  certificate:  cryptography.io (serial 31C787A7DC90295007BC5F2220B3B527AF0)",
        "  this update:  2018-08-30 11:00 UTC",
        "  next update:  2018-09-06 11:00 UTC",
        "  usable until: 2018-09-06 11:00 UTC",
        "  produced at:  2018-08-30 11:15 UTC",
        "  signed by:    the issuer",
    ]


def test_the_issuer_in_the_certificate_file_is_found(tmp_path):
    """Without --issuer, a fullchain made of the two vector certificates works the same."""
    chain = tmp_path / "chain.pem"
    chain.write_bytes((VECTORS / "cryptography.io.precert.pem").read_bytes()
                      + (VECTORS / "letsencryptx3.pem").read_bytes())
    r = run_cli("verify", VECTORS / "ocsp" / "resp-sha256.der", "--cert", chain, "--at", INSIDE)
    assert r.code == 0 and "certificate good" in r.out, r.out + r.err
