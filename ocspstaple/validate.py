"""Response bytes + certificate + issuer + now -> a verified response, or a reason.

No I/O and no clock: ``now`` is a parameter.  The checks follow the spec's
invariant (RFC 6960 4.2.2.2 for delegated responders, RFC 5019 for timing).
"""
from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ocspstaple import der
from ocspstaple.certs import Pair, certificate_signature, check_signature, describe, issuer_hashes, key_bits, sha1
from ocspstaple.errors import ValidationError

# Clock skew tolerated on thisUpdate and producedAt, as certbot and OpenSSL allow.
SKEW = dt.timedelta(minutes=5)
# HAProxy does not staple a response with 300 s or less left (servers.md).
MIN_REMAINING = dt.timedelta(minutes=5)
# RFC 5019 2.2.4: a response without nextUpdate; how long we treat it as valid.
DEFAULT_VALIDITY = dt.timedelta(days=1)
# The CA/Browser Forum Baseline Requirements (4.9.10) have CAs publish a new
# response at least every four days: never wait longer than this after
# thisUpdate, whatever nextUpdate says (a 100-year window must not keep a
# later revocation from the server for a century).
MAX_REFRESH_INTERVAL = dt.timedelta(days=4)

_STATUS_NAMES = {
    ocsp.OCSPResponseStatus.MALFORMED_REQUEST: "malformedRequest",
    ocsp.OCSPResponseStatus.INTERNAL_ERROR: "internalError",
    ocsp.OCSPResponseStatus.TRY_LATER: "tryLater",
    ocsp.OCSPResponseStatus.SIG_REQUIRED: "sigRequired",
    ocsp.OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
}

# Extensions RFC 6960 4.4 and RFC 6962 3.3 define, by where they stand.  A
# critical extension is understood only where its RFC puts it: a nonce is a
# responseExtension (4.4.1), never a singleExtension; anything else critical
# makes the response unusable.
RESPONSE_EXTENSIONS = {
    "1.3.6.1.5.5.7.48.1.2": "nonce",  # 4.4.1
    "1.3.6.1.5.5.7.48.1.9": "extended revoke",  # 4.4.8
}
SINGLE_EXTENSIONS = {
    "1.3.6.1.5.5.7.48.1.3": "CRL references",  # 4.4.2
    "1.3.6.1.5.5.7.48.1.6": "archive cutoff",  # 4.4.4
    "2.5.29.21": "CRL reason",  # 4.4.5: the CRL entry extensions
    "2.5.29.24": "invalidity date",
    "2.5.29.29": "certificate issuer",
    "1.3.6.1.4.1.11129.2.4.5": "CT signed certificate timestamps",  # RFC 6962 3.3
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

    def refresh_due(self, fraction: float, max_interval: dt.timedelta = MAX_REFRESH_INTERVAL) -> dt.datetime:
        """When this staple should be replaced: ``fraction`` of its window after
        thisUpdate, and never later than ``max_interval`` after thisUpdate.

        The one rule of "When to fetch": refresh, status, check and the
        metrics all ask this."""
        return self.this_update + min((self.expires - self.this_update) * fraction, max_interval)


def fmt_time(t: dt.datetime) -> str:
    """A time in log lines: ``2026-11-27 10:00 UTC``."""
    u = t if t.tzinfo is dt.timezone.utc else t.astimezone(dt.timezone.utc)
    # strftime's format, in half the time of strftime or an f-string: a no-op run says three times a staple
    return "%04d-%02d-%02d %02d:%02d UTC" % (u.year, u.month, u.day, u.hour, u.minute)


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
    except ValueError as e:
        if not _one_der_element(data):
            raise ValidationError(f"not a DER OCSP response ({_sniff(data)})") from None
        # Well-formed DER the parser refuses (a GeneralizedTime with
        # fractions, an explicitly encoded default version, an unknown
        # status): refused all the same, but with the parser's own reason.
        raise ValidationError(f"unreadable OCSP response: {_parser_reason(e)}") from None
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
        _refuse_critical(response_exts, "the response", RESPONSE_EXTENSIONS, SINGLE_EXTENSIONS)
        single_fields = der_singles[index].children()
        _refuse_critical(next((f for f in single_fields[3:] if f.tag == 0xA1), None), "the SingleResponse",
                         SINGLE_EXTENSIONS, RESPONSE_EXTENSIONS)
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


def _one_der_element(data: bytes) -> bool:
    """Whether ``data`` is exactly one whole DER element (so not HTML, text or a truncated body)."""
    try:
        return der.read_one(data)[1] == len(data)
    except ValidationError:
        return False


_PARSE_ERROR = re.compile(r"ParseError \{ kind: (\w+)(?:[^\[]*location: \[(.*)\])?")
#: the parser's error kinds, in the operator's words
_PARSE_KINDS = {
    "EncodedDefault": "a DEFAULT value encoded explicitly, which DER forbids",
    "InvalidValue": "an invalid value",
    "UnknownDefinedBy": "an unknown type",
    "ShortData": "truncated data",
    "ExtraData": "trailing data",
    "UnexpectedTag": "an unexpected field",
    "InvalidLength": "an invalid length",
}


def _parser_reason(e: Exception) -> str:
    """cryptography's reason, with the field it names when it names one:
    ``ParseError { kind: EncodedDefault, location: [..., "ResponseData::version"] }``
    becomes ``EncodedDefault at ResponseData::version (...)``."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    m = _PARSE_ERROR.search(text)
    if m is None:
        return text[:160]
    kind, where = m.group(1), m.group(2)
    field = where.split(",")[-1].strip().strip('"') if where else ""
    gloss = _PARSE_KINDS.get(kind)
    return f"parser: {kind}" + (f" at {field}" if field else "") + (f" ({gloss})" if gloss else "")


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def _basic_response(data: bytes) -> list[der.TLV]:
    """The fields of the BasicOCSPResponse inside an OCSPResponse."""
    top = der.read_one(data)[0].children()
    response_bytes = top[1].children()[0].children()
    return der.read_one(response_bytes[1].value)[0].children()


def _refuse_critical(exts: der.TLV | None, where: str, here: dict[str, str], elsewhere: dict[str, str]) -> None:
    """Refuse a critical extension not understood ``where`` it stands: one not
    in ``here`` (the extensions its RFC puts there)."""
    if exts is None:
        return
    for ext in exts.children()[0].children():
        fields = ext.children()
        oid = der.decode_oid(fields[0].value)
        critical = len(fields) == 3 and fields[1].tag == der.BOOLEAN and fields[1].value != b"\x00"
        if not critical or oid in here:
            continue
        if oid in elsewhere:
            other = "the SingleResponse" if where == "the response" else "the response extensions"
            raise ValidationError(f"critical {elsewhere[oid]} extension ({oid}) in {where}: it is not understood "
                                  f"there (it belongs in {other})")
        raise ValidationError(f"unknown critical extension {oid} in {where}")


def _matching_single(
    singles: list[ocsp.OCSPSingleResponse], pair: Pair
) -> tuple[int, ocsp.OCSPSingleResponse]:
    """The SingleResponse for ``pair.cert`` under a SHA-1 CertID (spec, invariant 2)."""
    serials = []
    other_hash = None
    for i, s in enumerate(singles):
        serials.append(format(s.serial_number, "X"))
        if s.serial_number != pair.cert.serial_number:
            continue
        try:
            algorithm = s.hash_algorithm
            name_hash, key_hash = issuer_hashes(pair.issuer, algorithm)
        except UnsupportedAlgorithm:
            continue
        if (s.issuer_name_hash, s.issuer_key_hash) != (name_hash, key_hash):
            continue
        if isinstance(algorithm, hashes.SHA1):
            return i, s
        other_hash = algorithm.name.upper().replace("SHA", "SHA-")
    if other_hash is not None:
        # Genuinely about this certificate, but HAProxy 2.6 refuses to staple
        # it ("Certificate ID does not match certificate and issuer") and
        # clients match the SHA-1 CertID the request used.
        raise ValidationError(f"response CertID uses {other_hash}; only a SHA-1 CertID (the hash the request "
                              "used, the only one HAProxy staples) is accepted")
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
    if cand.issuer != issuer.subject:
        raise ValidationError(f"{name} was not issued by the certificate's issuer (it names "
                              f"{cand.issuer.rfc4514_string()})")
    try:
        problem = certificate_signature(cand, issuer)
    except ValidationError:  # der: not a well-formed certificate encoding
        raise ValidationError(f"{name} certificate is malformed") from None
    if problem is not None and problem.mismatch:
        raise ValidationError(f"{name} was not issued by the certificate's issuer ({problem.reason})")
    if problem is not None:
        raise ValidationError(f"cannot check that the certificate's issuer issued {name}: {problem.reason}")
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
    problem = check_signature(signer.public_key(), resp.signature, resp.tbs_response_bytes, basic[1])
    if problem is None:
        return
    if problem.mismatch:
        raise ValidationError(f"signature does not verify with {name}'s key ({problem.reason})")
    raise ValidationError(f"signature of {name} cannot be checked: {problem.reason}")
