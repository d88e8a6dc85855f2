"""A throwaway PKI for the tests: real keys, real certificates, real OCSP responses.

Nothing here is faked: the responses are signed with real keys by
cryptography's OCSPResponseBuilder, so the validator under test checks real
signatures.  Times are always passed in, never read from the clock here.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)

_RSA_CACHE: list[rsa.RSAPrivateKey] = []


def new_key(kind: str = "ec"):
    """A fresh private key; RSA keys are drawn from a small pool (keygen is slow)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        # A fresh RSA key costs ~50 ms; distinct identities only need distinct keys
        # within one test, so a pool of a few is plenty.
        if len(_RSA_CACHE) < 6:
            _RSA_CACHE.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
            return _RSA_CACHE[-1]
        _RSA_CACHE.append(_RSA_CACHE.pop(0))
        return _RSA_CACHE[-1]
    raise ValueError(kind)


def _hash_for(key) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: object

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass
class CA(Issued):
    """A certificate authority that issues certificates and signs OCSP responses."""

    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(UTC))

    @classmethod
    def root(cls, cn: str = "ocspstaple Test Root", *, key_kind: str = "ec",
             now: dt.datetime | None = None) -> "CA":
        now = now or dt.datetime.now(UTC)
        key = new_key(key_kind)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - 30 * DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _hash_for(key))
        )
        return cls(cert=cert, key=key, now=now)

    def issue(
        self,
        cn: str = "localhost",
        *,
        ocsp_urls: Sequence[str] = ("http://127.0.0.1:9/",),
        is_ca: bool = False,
        eku: Iterable[x509.ObjectIdentifier] | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_kind: str = "ec",
        must_staple: bool = False,
        san: bool = True,
    ) -> Issued:
        key = new_key(key_kind)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or self.now - 10 * DAY)
            .not_valid_after(not_after or self.now + 90 * DAY)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if san and not is_ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        if is_ca:
            ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
            b = b.add_extension(ca_usage, critical=True)
        if ocsp_urls:
            b = b.add_extension(
                x509.AuthorityInformationAccess(
                    [x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP,
                                            x509.UniformResourceIdentifier(u)) for u in ocsp_urls]
                ),
                critical=False,
            )
        if eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        if must_staple:
            b = b.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
        cert = b.sign(self.key, _hash_for(self.key))  # type: ignore[arg-type]
        return Issued(cert=cert, key=key)

    def sub_ca(self, cn: str, *, key_kind: str = "ec") -> "CA":
        issued = self.issue(cn, is_ca=True, ocsp_urls=(), key_kind=key_kind)
        return CA(cert=issued.cert, key=issued.key, now=self.now)

    def delegate(self, cn: str = "OCSP Responder", *, eku: bool = True, **kw) -> Issued:
        """A delegated OCSP responder certificate issued by this CA."""
        return self.issue(cn, ocsp_urls=(), eku=[ExtendedKeyUsageOID.OCSP_SIGNING] if eku
                          else [ExtendedKeyUsageOID.SERVER_AUTH], san=False, **kw)

    def respond(
        self,
        cert: x509.Certificate,
        *,
        status: str = "good",
        this_update: dt.datetime | None = None,
        next_update: dt.datetime | None | str = "default",
        signer: Issued | None = None,
        issuer: x509.Certificate | None = None,
        hash_alg: hashes.HashAlgorithm | None = None,
        by_key: bool = False,
        include_signer: bool = True,
        revoked_at: dt.datetime | None = None,
        reason: x509.ReasonFlags | None = None,
        extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
        sign_hash: hashes.HashAlgorithm | None | str = "default",
        produced_at: dt.datetime | None = None,
    ) -> bytes:
        """A signed BasicOCSPResponse (DER) about ``cert``.

        ``signer`` defaults to this CA itself; pass a delegate (or anything else)
        to sign with another key.  ``issuer`` is the issuer used for the CertID
        (defaults to this CA's certificate).
        """
        # Whole seconds: GeneralizedTime in OCSP carries no fractions.
        this_update = this_update or dt.datetime.now(UTC).replace(microsecond=0) - HOUR
        if next_update == "default":
            next_update = this_update + 4 * DAY
        signer = signer or self
        cert_status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[status]
        if status == "revoked" and revoked_at is None:
            revoked_at = this_update - HOUR
        b = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=issuer or self.cert,
            algorithm=hash_alg or hashes.SHA1(),
            cert_status=cert_status,
            this_update=this_update,
            next_update=next_update,  # type: ignore[arg-type]
            revocation_time=revoked_at if status == "revoked" else None,
            revocation_reason=reason if status == "revoked" else None,
        )
        b = b.responder_id(
            ocsp.OCSPResponderEncoding.HASH if by_key else ocsp.OCSPResponderEncoding.NAME,
            signer.cert,
        )
        if include_signer and signer is not self:
            b = b.certificates([signer.cert])
        for ext, critical in extensions:
            b = b.add_extension(ext, critical)
        alg = _hash_for(signer.key) if sign_hash == "default" else sign_hash
        data = b.sign(signer.key, alg).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]
        if produced_at is not None:
            # The builder stamps the real time; re-sign with the time asked for.
            p = parts(data)
            p["produced_at"] = tlv(0x18, produced_at.strftime("%Y%m%d%H%M%SZ").encode())
            data = assemble(p, signer.key)
        return data


def unsuccessful(status: str) -> bytes:
    """An OCSPResponse with an error status (tryLater, internalError, ...)."""
    st = {
        "malformedRequest": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        "internalError": ocsp.OCSPResponseStatus.INTERNAL_ERROR,
        "tryLater": ocsp.OCSPResponseStatus.TRY_LATER,
        "sigRequired": ocsp.OCSPResponseStatus.SIG_REQUIRED,
        "unauthorized": ocsp.OCSPResponseStatus.UNAUTHORIZED,
    }[status]
    return ocsp.OCSPResponseBuilder.build_unsuccessful(st).public_bytes(serialization.Encoding.DER)


def write_pem(path: Path, *items: Issued | x509.Certificate | bytes) -> Path:
    """Write certificates (and raw PEM blobs such as keys) into one PEM file."""
    out = b""
    for it in items:
        if isinstance(it, bytes):
            out += it
        elif isinstance(it, x509.Certificate):
            out += it.public_bytes(serialization.Encoding.PEM)
        else:
            out += it.pem
    path.write_bytes(out)
    return path


# -- hand-made DER, for responses cryptography's builder cannot make ----------

def tlv(tag: int, content: bytes) -> bytes:
    """One DER element."""
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytes([40 * arcs[0] + arcs[1]])
    for a in arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, body)


def ext(dotted: str, value: bytes, critical: bool) -> bytes:
    return seq(oid(dotted), *( [tlv(0x01, b"\xff")] if critical else []), tlv(0x04, value))


SHA256_ALG = seq(oid("2.16.840.1.101.3.4.2.1"), tlv(0x05, b""))
PSS_SHA256 = seq(
    oid("1.2.840.113549.1.1.10"),
    seq(
        tlv(0xA0, SHA256_ALG),
        tlv(0xA1, seq(oid("1.2.840.113549.1.1.8"), SHA256_ALG)),
        tlv(0xA2, tlv(0x02, b"\x20")),
    ),
)


def parts(response_der: bytes) -> dict:
    """Split a successful OCSPResponse into the pieces ``assemble`` takes."""
    from ocspstaple import der

    top = der.read_one(response_der)[0].children()
    basic = der.read_one(top[1].children()[0].children()[1].value)[0].children()
    tbs = basic[0].children()
    version = [tbs[0].raw] if tbs[0].tag == 0xA0 else []
    rest = tbs[len(version):]
    return {
        "version": version,
        "responder_id": rest[0].raw,
        "produced_at": rest[1].raw,
        "singles": [s.raw for s in rest[2].children()],
        "response_exts": [r.raw for r in rest[3:]],
        "sig_alg": basic[1].raw,
        "certs": [b.raw for b in basic[3:]],
    }


def assemble(p: dict, key, *, sig_alg: bytes | None = None, padding_=None, hash_alg=None) -> bytes:
    """Re-sign ResponseData built from ``p`` with ``key`` and wrap it whole."""
    tbs = seq(*p["version"], p["responder_id"], p["produced_at"], seq(*p["singles"]), *p["response_exts"])
    alg = sig_alg or p["sig_alg"]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(tbs)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(tbs, ec.ECDSA(hash_alg or hashes.SHA256()))
    else:
        from cryptography.hazmat.primitives.asymmetric import padding as pad

        sig = key.sign(tbs, padding_ or pad.PKCS1v15(), hash_alg or hashes.SHA256())
    basic = seq(tbs, alg, tlv(0x03, b"\x00" + sig), *p["certs"])
    return seq(tlv(0x0A, b"\x00"), tlv(0xA0, seq(oid("1.3.6.1.5.5.7.48.1.1"), tlv(0x04, basic))))


def with_single_extension(single: bytes, extension: bytes) -> bytes:
    """A SingleResponse with [1] singleExtensions added."""
    from ocspstaple import der

    fields = der.read_one(single)[0].children()
    return seq(*[f.raw for f in fields if f.tag != 0xA1], tlv(0xA1, seq(extension)))
