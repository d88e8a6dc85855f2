"""The validator as a pure function: real signatures, ``now`` passed in."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki import CA, DAY, HOUR, PSS_SHA256, assemble, ext, parts, unsuccessful, with_single_extension

from ocspstaple.certs import Pair
from ocspstaple.errors import ValidationError
from ocspstaple.validate import CertStatus, validate, verify

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.root("Validate Test Root", now=NOW)


@pytest.fixture(scope="module")
def leaf(ca: CA):
    return ca.issue("www.example.test")


@pytest.fixture(scope="module")
def pair(ca: CA, leaf) -> Pair:
    return Pair(cert=leaf.cert, issuer=ca.cert)


def resp(ca: CA, leaf, **kw) -> bytes:
    kw.setdefault("this_update", NOW - HOUR)
    kw.setdefault("produced_at", min(kw["this_update"], NOW))
    return ca.respond(leaf.cert, **kw)


def refused(data: bytes, pair: Pair, match: str, now: dt.datetime = NOW) -> str:
    """The validator's reason for refusing ``data``, which must match ``match``."""
    with pytest.raises(ValidationError, match=match) as e:
        validate(data, pair=pair, now=now)
    return str(e.value)


# -- signature and signer -----------------------------------------------------

def test_issuer_signed_good(ca, leaf, pair):
    v = validate(resp(ca, leaf), pair=pair, now=NOW)
    assert v.status is CertStatus.GOOD
    assert v.signer == "the issuer"
    assert v.this_update == NOW - HOUR
    assert v.expires == NOW - HOUR + 4 * DAY


def test_flipped_signature_bit_is_refused(ca, leaf, pair):
    good = resp(ca, leaf)
    p = parts(good)
    # Re-sign, then corrupt one byte of the signature itself (the last bytes of the DER).
    data = bytearray(assemble(p, ca.key))
    data[-3] ^= 0x01
    refused(bytes(data), pair, "signature does not verify|not a DER")


def test_tampered_this_update_breaks_signature(ca, leaf, pair):
    good = resp(ca, leaf, this_update=NOW - HOUR)
    stamp = (NOW - HOUR).strftime("%Y%m%d%H%M%SZ").encode()
    assert good.count(stamp) >= 1
    validate(good, pair=pair, now=NOW)
    # a replayed response made to look fresh: later thisUpdate, the old signature
    forged = good.replace(stamp, (NOW - MIN).strftime("%Y%m%d%H%M%SZ").encode())
    refused(forged, pair, "signature does not verify")


def test_response_signed_by_another_key_is_refused(ca, leaf, pair):
    p = parts(resp(ca, leaf))
    validate(assemble(p, ca.key), pair=pair, now=NOW)  # re-signed by the CA: fine
    other = CA.root("Validate Test Root", now=NOW)
    refused(assemble(p, other.key), pair, "signature does not verify")


def test_unrelated_ca_with_same_name_is_refused(ca, leaf, pair):
    impostor = CA.root("Validate Test Root", now=NOW)
    data = impostor.respond(leaf.cert, issuer=ca.cert, signer=impostor, this_update=NOW - HOUR, produced_at=NOW - HOUR)
    refused(data, pair, "signature does not verify with the issuer")


@pytest.mark.parametrize("key_kind", ["ec", "rsa", "ed25519"])
def test_signature_algorithms(key_kind):
    ca = CA.root(f"{key_kind} root", key_kind=key_kind, now=NOW)
    leaf = ca.issue("alg.example.test")
    pair = Pair(cert=leaf.cert, issuer=ca.cert)
    data = ca.respond(leaf.cert, this_update=NOW - HOUR, produced_at=NOW - HOUR)
    assert validate(data, pair=pair, now=NOW).status is CertStatus.GOOD
    impostor = CA.root(f"{key_kind} root", key_kind=key_kind, now=NOW)
    forged = impostor.respond(leaf.cert, issuer=ca.cert, this_update=NOW - HOUR, produced_at=NOW - HOUR)
    refused(forged, pair, "signature does not verify")


def test_rsa_pss_signature():
    ca = CA.root("pss root", key_kind="rsa", now=NOW)
    leaf = ca.issue("pss.example.test")
    pair = Pair(cert=leaf.cert, issuer=ca.cert)
    p = parts(ca.respond(leaf.cert, this_update=NOW - HOUR, produced_at=NOW - HOUR))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    data = assemble(p, ca.key, sig_alg=PSS_SHA256, padding_=pss, hash_alg=hashes.SHA256())
    assert validate(data, pair=pair, now=NOW).status is CertStatus.GOOD
    # the twin: a PSS signature made with another salt length than the parameters say
    bad = assemble(p, ca.key, sig_alg=PSS_SHA256,
                   padding_=padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20),
                   hash_alg=hashes.SHA256())
    refused(bad, pair, "signature does not verify")


def test_delegated_responder(ca, leaf, pair):
    delegate = ca.delegate()
    v = validate(resp(ca, leaf, signer=delegate), pair=pair, now=NOW)
    assert "delegated responder" in v.signer


def test_delegate_by_key_hash(ca, leaf, pair):
    delegate = ca.delegate()
    v = validate(resp(ca, leaf, signer=delegate, by_key=True), pair=pair, now=NOW)
    assert "delegated responder" in v.signer
    v = validate(resp(ca, leaf, by_key=True), pair=pair, now=NOW)
    assert v.signer == "the issuer"


def test_delegate_without_eku_is_refused(ca, leaf, pair):
    refused(resp(ca, leaf, signer=ca.delegate(eku=False)), pair, "lacks the id-kp-OCSPSigning")


def test_delegate_with_no_eku_extension_at_all_is_refused(ca, leaf, pair):
    """No ExtendedKeyUsage extension is not "any usage": RFC 6960 4.2.2.2
    requires id-kp-OCSPSigning in it."""
    bare = ca.issue("Bare Responder", ocsp_urls=(), san=False)
    with pytest.raises(x509.ExtensionNotFound):
        bare.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    refused(resp(ca, leaf, signer=bare), pair, "lacks the id-kp-OCSPSigning")


def test_delegate_that_is_a_ca_is_refused(ca, leaf, pair):
    sibling = ca.issue("Sibling Sub-CA", is_ca=True, ocsp_urls=(), eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    refused(resp(ca, leaf, signer=sibling), pair, "is a CA certificate")


def test_delegate_from_another_ca_is_refused(ca, leaf, pair):
    impostor = CA.root("Validate Test Root", now=NOW)
    refused(resp(ca, leaf, signer=impostor.delegate()), pair, "not issued by the certificate's issuer")


def test_delegate_not_valid_at_produced_at_is_refused(ca, leaf, pair):
    # A delegate that expired before producedAt (NOW - 1h here) is refused; the
    # same response from a delegate valid then is taken. Pinned to NOW, not
    # the wall clock, so the test means the same on every day.
    expired = ca.delegate(not_before=NOW - 10 * DAY, not_after=NOW - 2 * HOUR)
    refused(resp(ca, leaf, signer=expired), pair, "not valid at producedAt")
    current = ca.delegate(not_before=NOW - 10 * DAY, not_after=NOW + DAY)
    validate(resp(ca, leaf, signer=current), pair=pair, now=NOW)


def test_delegate_not_after_caps_usable_time(ca, leaf, pair):
    short = ca.delegate(not_before=NOW - DAY, not_after=NOW + 2 * HOUR)
    v = validate(resp(ca, leaf, signer=short), pair=pair, now=NOW)
    assert v.expires == short.cert.not_valid_after_utc
    refused(resp(ca, leaf, signer=short), pair, "expired", now=NOW + 3 * HOUR)


def test_delegate_missing_from_response_is_refused(ca, leaf, pair):
    refused(resp(ca, leaf, signer=ca.delegate(), include_signer=False), pair,
            "neither the issuer nor a certificate in the response")


# -- which certificate ----------------------------------------------------------

def test_other_serial_is_refused(ca, leaf, pair):
    other = ca.issue("other").cert
    refused(ca.respond(other, this_update=NOW - HOUR, produced_at=NOW - HOUR), pair, "another certificate")


def test_same_serial_other_issuer_is_refused(ca, leaf, pair):
    # CertID issuer hashes computed for another CA's key: same serial, wrong issuer
    other_ca = CA.root("Some Other Root", now=NOW)
    data = ca.respond(leaf.cert, issuer=other_ca.cert, this_update=NOW - HOUR, produced_at=NOW - HOUR)
    refused(data, pair, "of another issuer")


@pytest.mark.parametrize("alg", [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_certid_hash_algorithm_of_the_response(ca, leaf, pair, alg):
    # Only a SHA-1 CertID, the hash the request used (spec invariant 2; HAProxy staples no other).
    if isinstance(alg, hashes.SHA1):
        assert validate(resp(ca, leaf, hash_alg=alg), pair=pair, now=NOW).status is CertStatus.GOOD
    else:
        refused(resp(ca, leaf, hash_alg=alg), pair, "only a SHA-1 CertID")


def test_several_single_responses_only_ours_counts(ca, leaf, pair):
    other = ca.issue("neighbour")
    mine = parts(resp(ca, leaf))
    theirs = parts(ca.respond(other.cert, status="revoked", this_update=NOW - HOUR, produced_at=NOW - HOUR))
    mine["singles"] = theirs["singles"] + mine["singles"]
    v = validate(assemble(mine, ca.key), pair=pair, now=NOW)
    assert v.status is CertStatus.GOOD  # the neighbour's revocation is not ours
    # twin: ours unknown among several: refused
    unknown = parts(resp(ca, leaf, status="unknown"))
    unknown["singles"] = theirs["singles"] + unknown["singles"]
    refused(assemble(unknown, ca.key), pair, "unknown")


# -- status -------------------------------------------------------------------

def test_revoked_is_returned(ca, leaf, pair):
    v = validate(resp(ca, leaf, status="revoked", reason=x509.ReasonFlags.key_compromise), pair=pair, now=NOW)
    assert v.status is CertStatus.REVOKED
    assert v.revocation_reason == "key_compromise"
    assert v.revocation_time == NOW - 2 * HOUR


def test_unknown_is_refused(ca, leaf, pair):
    refused(resp(ca, leaf, status="unknown"), pair, "unknown")


@pytest.mark.parametrize("status", ["tryLater", "internalError", "unauthorized", "malformedRequest", "sigRequired"])
def test_error_statuses_are_refused(pair, status):
    refused(unsuccessful(status), pair, f"responder answered {status}")


@pytest.mark.parametrize("data, what", [
    (b"", "empty response"),
    (b"<html>busy</html>", "HTML"),
    (b"\x30\x82\x01\x00garbage", "binary"),
    (b"\x30\x03\x0a\x01\x00", "unreadable OCSP response: .*no.* BasicResponse"),  # successful, no responseBytes
])
def test_garbage_is_refused(pair, data, what):
    refused(data, pair, what)


def test_truncated_response_is_refused(ca, leaf, pair):
    good = resp(ca, leaf)
    for cut in (1, 10, len(good) // 2, len(good) - 1):
        refused(good[:cut], pair, "not a DER")


# -- extensions ----------------------------------------------------------------

def test_unknown_critical_response_extension_is_refused(ca, leaf, pair):
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    refused(resp(ca, leaf, extensions=[(unknown, True)]), pair, "unknown critical extension 1.3.6.1.4.1.55555.1")
    # twin: the same extension, not critical, is ignored
    validate(resp(ca, leaf, extensions=[(unknown, False)]), pair=pair, now=NOW)


def test_nonce_extension_is_known(ca, leaf, pair):
    """A nonce marked critical is a known extension (RFC 6960 4.4.1), not a reason
    to refuse; the test above is its twin (an unknown critical one is refused)."""
    data = resp(ca, leaf, extensions=[(x509.OCSPNonce(b"0123456789abcdef"), True)])
    assert ocsp.load_der_ocsp_response(data).extensions.get_extension_for_class(x509.OCSPNonce).critical
    v = validate(data, pair=pair, now=NOW)
    assert v.status is CertStatus.GOOD and v.this_update == NOW - HOUR


def test_unknown_critical_single_extension_is_refused(ca, leaf, pair):
    p = parts(resp(ca, leaf))
    p["singles"] = [with_single_extension(p["singles"][0], ext("1.3.6.1.4.1.55555.2", b"\x05\x00", True))]
    refused(assemble(p, ca.key), pair, "unknown critical extension 1.3.6.1.4.1.55555.2 in the SingleResponse")
    p = parts(resp(ca, leaf))
    p["singles"] = [with_single_extension(p["singles"][0], ext("1.3.6.1.4.1.55555.2", b"\x05\x00", False))]
    validate(assemble(p, ca.key), pair=pair, now=NOW)


def test_critical_extension_on_a_neighbours_single_does_not_count(ca, leaf, pair):
    other = ca.issue("neighbour")
    mine = parts(resp(ca, leaf))
    theirs = parts(ca.respond(other.cert, this_update=NOW - HOUR, produced_at=NOW - HOUR))
    odd = with_single_extension(theirs["singles"][0], ext("1.3.6.1.4.1.55555.3", b"\x05\x00", True))
    mine["singles"] = [odd] + mine["singles"]
    validate(assemble(mine, ca.key), pair=pair, now=NOW)
    mine["singles"] = [theirs["singles"][0], with_single_extension(mine["singles"][1],
                       ext("1.3.6.1.4.1.55555.3", b"\x05\x00", True))]
    refused(assemble(mine, ca.key), pair, "unknown critical extension")


# -- time ------------------------------------------------------------------------

def test_this_update_within_skew_is_accepted(ca, leaf, pair):
    validate(resp(ca, leaf, this_update=NOW + 4 * MIN), pair=pair, now=NOW)
    refused(resp(ca, leaf, this_update=NOW + 6 * MIN), pair, "thisUpdate .* is in the future")


def test_this_update_in_the_future_is_refused_with_produced_at_in_the_past(ca, leaf, pair):
    """producedAt alone would let it pass: the thisUpdate check must fire itself."""
    refused(resp(ca, leaf, this_update=NOW + HOUR, produced_at=NOW - HOUR), pair, "thisUpdate .* is in the future")
    refused(resp(ca, leaf, this_update=NOW - HOUR, produced_at=NOW + HOUR), pair, "producedAt .* is in the future")


def test_next_update_must_be_more_than_five_minutes_away(ca, leaf, pair):
    validate(resp(ca, leaf, this_update=NOW - DAY, next_update=NOW + 6 * MIN), pair=pair, now=NOW)
    refused(resp(ca, leaf, this_update=NOW - DAY, next_update=NOW + 4 * MIN), pair, "less than 5 minutes")
    refused(resp(ca, leaf, this_update=NOW - DAY, next_update=NOW - MIN), pair, "expired")


def test_no_next_update_counts_one_day(ca, leaf, pair):
    data = resp(ca, leaf, this_update=NOW - HOUR, next_update=None)
    v = validate(data, pair=pair, now=NOW)
    assert v.next_update is None and v.expires == NOW - HOUR + DAY
    refused(data, pair, "expired", now=NOW + DAY)
    v = validate(data, pair=pair, now=NOW, default_validity=2 * HOUR)
    assert v.expires == NOW + HOUR


def test_next_update_before_this_update_is_refused(ca, leaf, pair):
    refused(resp(ca, leaf, this_update=NOW - HOUR, next_update=NOW - 2 * HOUR), pair, "before its thisUpdate")


def test_clock_far_behind_does_not_discard_a_valid_response(ca, leaf, pair):
    data = resp(ca, leaf, this_update=NOW - HOUR, next_update=NOW + 3 * DAY)
    # verify() is independent of the clock; only the window check uses it
    assert verify(data, pair=pair).this_update == NOW - HOUR
    refused(data, pair, "in the future", now=NOW - 3 * HOUR)


def test_refresh_due_fraction(ca, leaf, pair):
    v = validate(resp(ca, leaf, this_update=NOW - DAY, next_update=NOW + 3 * DAY), pair=pair, now=NOW)
    assert v.refresh_due(0.5) == NOW + DAY
    assert v.refresh_due(0.25) == NOW


# -- hostile bytes (a first look; the full property suite is issue 6's) ----------

from conftest import examples  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def originals(ca, leaf) -> list[bytes]:
    # Made once: hypothesis replays draws, so the bytes must not change between examples.
    return [resp(ca, leaf), resp(ca, leaf, signer=ca.delegate())]


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_responses_raise_only_validation_error(originals, pair, data):
    from cryptography.x509 import ocsp

    good = data.draw(st.sampled_from(originals))
    original = ocsp.load_der_ocsp_response(good)
    mutated = bytearray(good)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "byte"]))
        if not mutated:
            break
        i = data.draw(st.integers(0, len(mutated) - 1))
        if kind == "flip":
            mutated[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del mutated[i:]
        else:
            mutated[i] = data.draw(st.integers(0, 255))
    try:
        v = validate(bytes(mutated), pair=pair, now=NOW)
    except ValidationError:
        return
    # Accepted: then what was signed is exactly what the CA signed.
    accepted = ocsp.load_der_ocsp_response(bytes(mutated))
    assert accepted.tbs_response_bytes == original.tbs_response_bytes
    assert v.status is CertStatus.GOOD and v.this_update == NOW - HOUR
