"""Response bytes + certificate + issuer + now -> a verified response, or a reason.

No I/O and no clock: ``now`` is a parameter.  The checks follow the spec's
invariant (RFC 6960 4.2.2.2 for delegated responders, RFC 5019 for timing).
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ocspstaple import der
from ocspstaple.certs import Pair, describe, issuer_hashes, key_bits, sha1
from ocspstaple.errors import ValidationError

# Clock skew tolerated on thisUpdate and producedAt, as certbot and OpenSSL allow.
SKEW = dt.timedelta(minutes=5)
# HAProxy does not staple a response with 300 s or less left (servers.md).
MIN_REMAINING = dt.timedelta(minutes=5)
# RFC 5019 2.2.4: a response without nextUpdate; how long we treat it as valid.
DEFAULT_VALIDITY = dt.timedelta(days=1)

_STATUS_NAMES = {
    ocsp.OCSPResponseStatus.MALFORMED_REQUEST: "malformedRequest",
    ocsp.OCSPResponseStatus.INTERNAL_ERROR: "internalError",
    ocsp.OCSPResponseStatus.TRY_LATER: "tryLater",
    ocsp.OCSPResponseStatus.SIG_REQUIRED: "sigRequired",
    ocsp.OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
}

# Extensions RFC 6960 4.4 and RFC 6962 define for responses and SingleResponses.
# A critical extension outside this set must make the response unusable.
KNOWN_EXTENSIONS = frozenset({
    "1.3.6.1.5.5.7.48.1.2",  # nonce
    "1.3.6.1.5.5.7.48.1.3",  # CRL references
    "1.3.6.1.5.5.7.48.1.6",  # archive cutoff
    "1.3.6.1.5.5.7.48.1.9",  # extended revoke
    "2.5.29.21",  # CRL reason
    "2.5.29.24",  # invalidity date
    "2.5.29.29",  # certificate issuer
    "1.3.6.1.4.1.11129.2.4.5",  # CT signed certificate timestamps
})

_RSASSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_HASHES_BY_OID: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.14.3.2.26": hashes.SHA1,
    "2.16.840.1.101.3.4.2.4": hashes.SHA224,
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"


@dataclass(frozen=True)
class VerifiedResponse:
    """An OCSP response that passed every check but the time window."""

    der: bytes
    status: CertStatus
    this_update: dt.datetime
    next_update: dt.datetime | None
    produced_at: dt.datetime
    #: When the staple stops being usable: nextUpdate (or thisUpdate plus the
    #: default validity), capped at the delegated responder certificate's notAfter.
    expires: dt.datetime
    #: "the issuer" or "delegated responder <CN>"
    signer: str
    signer_not_before: dt.datetime | None = None
    revocation_time: dt.datetime | None = None
    revocation_reason: str | None = None

    def refresh_due(self, fraction: float) -> dt.datetime:
        """When this staple should be replaced: ``fraction`` of its window after thisUpdate."""
        return self.this_update + (self.expires - self.this_update) * fraction


def fmt_time(t: dt.datetime) -> str:
    """A time in log lines: ``2026-11-27 10:00 UTC``."""
    u = t.astimezone(dt.timezone.utc)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d} {u.hour:02d}:{u.minute:02d} UTC"  # strftime's, faster


def validate(
    data: bytes,
    *,
    pair: Pair,
    now: dt.datetime,
    default_validity: dt.timedelta = DEFAULT_VALIDITY,
) -> VerifiedResponse:
    """Every check of the spec's invariant, 1 to 5: a response usable at ``now``."""
    resp = verify(data, pair=pair, default_validity=default_validity)
    check_window(resp, now=now)
    return resp


def check_window(resp: VerifiedResponse, *, now: dt.datetime) -> None:
    """Raise unless ``resp`` is usable at ``now`` (thisUpdate not in the future,
    more than five minutes left, the delegated signer currently valid)."""
    if resp.this_update > now + SKEW:
        raise ValidationError(
            f"response thisUpdate {fmt_time(resp.this_update)} is in the future "
            "(is the local clock behind?)"
        )
    if resp.produced_at > now + SKEW:
        raise ValidationError(
            f"response producedAt {fmt_time(resp.produced_at)} is in the future "
            "(is the local clock behind?)"
        )
    if resp.signer_not_before is not None and resp.signer_not_before > now + SKEW:
        raise ValidationError(f"{resp.signer} certificate is not valid yet")
    if resp.expires <= now + MIN_REMAINING:
        what = "expired" if resp.expires <= now else "expires in less than 5 minutes"
        raise ValidationError(f"response {what} (usable until {fmt_time(resp.expires)})")


def verify(
    data: bytes,
    *,
    pair: Pair,
    default_validity: dt.timedelta = DEFAULT_VALIDITY,
) -> VerifiedResponse:
    """Every check that does not depend on the current time.

    Parses ``data`` as a successful BasicOCSPResponse, finds the SingleResponse
    for ``pair.cert``, checks its status and the signature of the issuer or of
    a delegated responder the issuer authorised.  Raises only ValidationError.
    """
    try:
        return _verify(data, pair=pair, default_validity=default_validity)
    except (ValueError, TypeError, IndexError, KeyError, UnsupportedAlgorithm) as e:
        # cryptography parses some fields lazily: a mangled ResponderID name
        # raises ValueError, or KeyError for an unknown string tag, only when
        # read.  Hostile bytes that got past the first parse are one more
        # reason to refuse.
        raise ValidationError(f"malformed response ({_short(e)})") from None


def _verify(data: bytes, *, pair: Pair, default_validity: dt.timedelta) -> VerifiedResponse:
    if not data:
        raise ValidationError("empty response")
    try:
        resp = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise ValidationError(f"not a DER OCSP response ({_sniff(data)})") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValidationError(f"responder answered {_STATUS_NAMES.get(resp.response_status, resp.response_status)}")

    try:
        basic = _basic_response(data)
        tbs = basic[0].children()
        tbs_fields = tbs[1:] if tbs and tbs[0].tag == 0xA0 else tbs
        der_singles = tbs_fields[2].children()
        response_exts = next((f for f in tbs_fields[3:] if f.tag == 0xA1), None)
        singles = list(resp.responses)
    except (ValueError, IndexError) as e:
        raise ValidationError(f"malformed BasicOCSPResponse ({_short(e)})") from None
    if len(der_singles) != len(singles):
        raise ValidationError("malformed BasicOCSPResponse (SingleResponse count)")
    index, single = _matching_single(singles, pair)
    try:
        _refuse_critical(response_exts, "the response")
        single_fields = der_singles[index].children()
        _refuse_critical(next((f for f in single_fields[3:] if f.tag == 0xA1), None), "the SingleResponse")
    except IndexError:
        raise ValidationError("malformed extensions in the response") from None

    if single.certificate_status == ocsp.OCSPCertStatus.UNKNOWN:
        raise ValidationError("responder says the certificate status is unknown")

    produced_at = resp.produced_at_utc
    signer, signer_cert = _verify_signer(resp, basic, pair, produced_at)

    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if next_update is not None and next_update < this_update:
        raise ValidationError("response nextUpdate is before its thisUpdate")
    expires = next_update if next_update is not None else this_update + default_validity
    if signer_cert is not None:
        expires = min(expires, signer_cert.not_valid_after_utc)

    revoked = single.certificate_status == ocsp.OCSPCertStatus.REVOKED
    reason = single.revocation_reason if revoked else None
    return VerifiedResponse(
        der=data,
        status=CertStatus.REVOKED if revoked else CertStatus.GOOD,
        this_update=this_update,
        next_update=next_update,
        produced_at=produced_at,
        expires=expires,
        signer=signer,
        signer_not_before=signer_cert.not_valid_before_utc if signer_cert else None,
        revocation_time=single.revocation_time_utc if revoked else None,
        revocation_reason=reason.name if reason is not None else None,
    )


def _sniff(data: bytes) -> str:
    """A few words on what garbage looks like, for the log line."""
    head = data[:64].lstrip().lower()
    kind = "HTML" if head.startswith((b"<!doctype", b"<html", b"<")) else "binary"
    if kind != "HTML" and all(32 <= c < 127 or c in (9, 10, 13) for c in data[:64]):
        kind = "text"
    return f"{len(data)} bytes of {kind}"


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def _basic_response(data: bytes) -> list[der.TLV]:
    """The fields of the BasicOCSPResponse inside an OCSPResponse."""
    top = der.read_one(data)[0].children()
    response_bytes = top[1].children()[0].children()
    return der.read_one(response_bytes[1].value)[0].children()


def _refuse_critical(exts: der.TLV | None, where: str) -> None:
    if exts is None:
        return
    for ext in exts.children()[0].children():
        fields = ext.children()
        oid = der.decode_oid(fields[0].value)
        critical = len(fields) == 3 and fields[1].tag == der.BOOLEAN and fields[1].value != b"\x00"
        if critical and oid not in KNOWN_EXTENSIONS:
            raise ValidationError(f"unknown critical extension {oid} in {where}")


def _matching_single(
    singles: list[ocsp.OCSPSingleResponse], pair: Pair
) -> tuple[int, ocsp.OCSPSingleResponse]:
    serials = []
    for i, s in enumerate(singles):
        serials.append(format(s.serial_number, "X"))
        if s.serial_number != pair.cert.serial_number:
            continue
        try:
            name_hash, key_hash = issuer_hashes(pair.issuer, s.hash_algorithm)
        except UnsupportedAlgorithm:
            continue
        if (s.issuer_name_hash, s.issuer_key_hash) == (name_hash, key_hash):
            return i, s
    if pair.cert.serial_number in [s.serial_number for s in singles]:
        raise ValidationError(f"response is for serial {pair.serial_hex} of another issuer")
    raise ValidationError(f"response is for another certificate (serial {', '.join(serials)})")


def _verify_signer(
    resp: ocsp.OCSPResponse, basic: list[der.TLV], pair: Pair, produced_at: dt.datetime
) -> tuple[str, x509.Certificate | None]:
    """Find the signer by the ResponderID and verify it; return its description
    and, for a delegated responder, its certificate."""
    issuer = pair.issuer
    candidates = [issuer] + [c for c in resp.certificates if c != issuer]
    if resp.responder_name is not None:
        matches = [c for c in candidates if c.subject == resp.responder_name]
        rid = f"name {resp.responder_name.rfc4514_string()}"
    else:
        matches = [c for c in candidates if sha1(key_bits(c)) == resp.responder_key_hash]
        rid = f"key hash {(resp.responder_key_hash or b'').hex()}"
    if not matches:
        raise ValidationError(f"responder {rid} is neither the issuer nor a certificate in the response")
    errors: list[ValidationError] = []
    for cand in matches:
        try:
            if cand == issuer:
                _check_signature(resp, basic, cand, "the issuer")
                return "the issuer", None
            name = f"delegated responder {describe(cand)!r}"
            _check_delegate(cand, issuer, produced_at, name)
            _check_signature(resp, basic, cand, name)
            return name, cand
        except ValidationError as e:
            errors.append(e)
    raise errors[0]


def _check_delegate(cand: x509.Certificate, issuer: x509.Certificate, produced_at: dt.datetime, name: str) -> None:
    """RFC 6960 4.2.2.2: issued directly by the CA, with id-kp-OCSPSigning; and
    not a CA (a CA-flagged signer is how a sibling sub-CA could forge)."""
    try:
        cand.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise ValidationError(f"{name} was not issued by the certificate's issuer") from None
    try:
        eku = cand.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise ValidationError(f"{name} lacks the id-kp-OCSPSigning extended key usage")
    try:
        bc = cand.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise ValidationError(f"{name} is a CA certificate; refusing it as an OCSP signer")
    if not cand.not_valid_before_utc <= produced_at <= cand.not_valid_after_utc:
        raise ValidationError(f"{name} certificate was not valid at producedAt {fmt_time(produced_at)}")


def _check_signature(resp: ocsp.OCSPResponse, basic: list[der.TLV], signer: x509.Certificate, name: str) -> None:
    key = signer.public_key()
    sig = resp.signature
    data = resp.tbs_response_bytes
    oid = resp.signature_algorithm_oid.dotted_string
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if oid == _RSASSA_PSS:
                pss, algorithm = _pss_params(basic[1])
                key.verify(sig, data, pss, algorithm)
            else:
                key.verify(sig, data, padding.PKCS1v15(), _hash_of(resp))
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(_hash_of(resp)))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            if oid != "1.3.101.112":
                raise ValidationError(f"signature algorithm {oid} does not fit {name}'s Ed25519 key")
            key.verify(sig, data)
        elif isinstance(key, ed448.Ed448PublicKey):
            if oid != "1.3.101.113":
                raise ValidationError(f"signature algorithm {oid} does not fit {name}'s Ed448 key")
            key.verify(sig, data)
        else:
            raise ValidationError(f"{name}'s key type is not supported")
    except InvalidSignature:
        raise ValidationError(f"signature does not verify with {name}'s key") from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as e:
        raise ValidationError(f"signature of {name} cannot be checked ({_short(e)})") from None


def _hash_of(resp: ocsp.OCSPResponse) -> hashes.HashAlgorithm:
    alg = resp.signature_hash_algorithm
    if alg is None:
        raise ValidationError("signature algorithm names no hash")
    return alg


def _pss_params(alg_id: der.TLV) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    """Decode RSASSA-PSS-params (RFC 4055 3.1); the defaults are SHA-1 and salt 20."""
    fields = alg_id.children()
    params = fields[1].children() if len(fields) > 1 and fields[1].tag == der.SEQUENCE else []
    hash_cls: type[hashes.HashAlgorithm] = hashes.SHA1
    mgf_hash_cls: type[hashes.HashAlgorithm] = hashes.SHA1
    salt = 20
    for p in params:
        inner = p.children()[0]
        if p.tag == 0xA0:
            hash_cls = _hash_oid(inner.children()[0].value)
        elif p.tag == 0xA1:
            mgf = inner.children()
            if der.decode_oid(mgf[0].value) != _MGF1:
                raise ValidationError("RSASSA-PSS with a mask generation function other than MGF1")
            mgf_hash_cls = _hash_oid(mgf[1].children()[0].value)
        elif p.tag == 0xA2:
            salt = int.from_bytes(inner.value, "big")
        elif p.tag == 0xA3:
            if int.from_bytes(inner.value, "big") != 1:
                raise ValidationError("RSASSA-PSS with an unknown trailer field")
    return padding.PSS(mgf=padding.MGF1(mgf_hash_cls()), salt_length=salt), hash_cls()


def _hash_oid(value: bytes) -> type[hashes.HashAlgorithm]:
    oid = der.decode_oid(value)
    try:
        return _HASHES_BY_OID[oid]
    except KeyError:
        raise ValidationError(f"unsupported hash algorithm {oid}") from None
