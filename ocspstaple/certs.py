"""Certificates in, OCSP requests out: loading, issuer checks, URLs (pure)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from ocspstaple import der
from ocspstaple.errors import InputError, ValidationError
from ocspstaple.store import read_file

# Far larger than any real certificate chain; a bound so that a wrong path
# (a log file, a device) is refused rather than read whole.
MAX_PEM_BYTES = 1 << 20


@dataclass(frozen=True)
class Pair:
    """A certificate and the certificate of the CA that issued it."""

    cert: x509.Certificate
    issuer: x509.Certificate

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "X")


def read_pem_file(path: Path) -> list[x509.Certificate]:
    """All certificates in a PEM file (other PEM blocks, such as keys, are skipped)."""
    return parse_pem(read_pem_bytes(path), name=str(path))


def read_pem_bytes(path: Path) -> bytes:
    """The bytes of a certificate file, bounded; InputError when unreadable."""
    try:
        data = read_file(path, MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {path}: is a directory") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_PEM_BYTES:
        raise InputError(f"{path} is larger than {MAX_PEM_BYTES} bytes; not a certificate file")
    return data


def parse_pem(data: bytes, *, name: str) -> list[x509.Certificate]:
    """Parse the CERTIFICATE blocks of PEM data."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if _is_der(data):
            raise InputError(f"{name} holds no PEM certificate (it looks like DER: convert it with "
                             f"`openssl x509 -inform der -in {name} -out {name}.pem`)")
        raise InputError(f"{name} holds no PEM certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InputError(f"{name}: unparsable PEM certificate") from None
    return certs


def _is_der(data: bytes) -> bool:
    # Only on the error path: a DER certificate (a .der or .crt from a CA's
    # web page) is the commonest "not PEM" file.
    if not data.startswith(b"\x30"):
        return False
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` says it is a CA (basicConstraints cA)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):  # absent or unparsable: not a CA as far as we know
        return False


def load_pair(cert_path: Path, issuer_path: Path | None) -> Pair:
    """Load a certificate and its issuer; the issuer must have signed it.

    Without ``issuer_path`` the issuer is the second certificate of
    ``cert_path`` (a fullchain.pem or HAProxy's combined PEM).
    """
    chain = read_pem_file(cert_path)
    issuers = read_pem_file(issuer_path) if issuer_path is not None else None
    return pair_of(chain, issuers, cert_path=cert_path)


def pair_of(chain: list[x509.Certificate], issuers: list[x509.Certificate] | None, *, cert_path: Path) -> Pair:
    """load_pair for parsed files: the first of ``issuers`` when given, else
    the certificate of ``chain`` after the first that signed it."""
    cert = chain[0]
    if issuers is not None:
        issuer = issuers[0]
    else:
        found = find_issuer(cert, chain[1:])
        if found is not None:
            return Pair(cert=cert, issuer=found)
        if len(chain) == 1:
            if is_ca(cert):
                # A CA's own certificate (often self-signed): more --issuer would not help.
                raise InputError(f"{cert_path} holds a CA certificate ({describe(cert)}), not a server "
                                 "certificate: staples are for the certificate a TLS server presents")
            raise InputError(f"{cert_path} holds no issuer certificate after the first; give --issuer")
        issuer = chain[1]  # for the error message below
    check_issued_by(cert, issuer)
    return Pair(cert=cert, issuer=issuer)


def find_issuer(cert: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    """The first of ``candidates`` that signed ``cert`` (named as its issuer first)."""
    named = [c for c in candidates if c.subject == cert.issuer]
    for c in named + [c for c in candidates if c.subject != cert.issuer]:
        try:
            check_issued_by(cert, c)
        except InputError:
            continue
        return c
    return None


def check_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise InputError unless ``issuer`` signed ``cert`` (under the signature
    policy of check_signature: SHA-1 is accepted, as ``openssl ocsp`` does)."""
    who = f"the issuer ({issuer.subject.rfc4514_string()})"
    if cert.issuer != issuer.subject:
        raise InputError(f"{who} did not sign this certificate: it names another issuer "
                         f"({cert.issuer.rfc4514_string()})")
    try:
        problem = certificate_signature(cert, issuer)
    except ValidationError as e:  # der: an encoding that cannot be walked
        raise InputError(f"cannot check that {who} signed this certificate: {e}") from None
    if problem is None:
        return
    if problem.mismatch:
        raise InputError(f"{who} did not sign this certificate: {problem.reason}")
    raise InputError(f"cannot check that {who} signed this certificate: {problem.reason}")


# -- signatures: one policy for every signature ocspstaple checks -------------
#
# A certificate by its issuer, a delegated responder certificate by the
# issuer, a response by its signer: all go through check_signature.  The
# policy is what `openssl ocsp` accepts at OpenSSL's default security level:
# RSA (PKCS#1 v1.5 or PSS) and ECDSA with SHA-1 or SHA-2, Ed25519 and Ed448.
# SHA-1 stays accepted because a private PKI that still signs with it would
# otherwise get no staple at all, while `openssl ocsp` and the TLS servers
# accept its responses.  MD2 and MD5 are refused (practical collisions), and
# so is any algorithm not named here.  Every refusal names the algorithm.

_SHA1, _SHA224, _SHA256, _SHA384, _SHA512 = (hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384,
                                             hashes.SHA512)
_RSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
#: signature algorithm OID -> (name, key kind, hash; None for EdDSA and PSS)
_SIGNATURE_ALGORITHMS: dict[str, tuple[str, str, type[hashes.HashAlgorithm] | None]] = {
    "1.2.840.113549.1.1.5": ("sha1WithRSAEncryption", "RSA", _SHA1),
    "1.2.840.113549.1.1.14": ("sha224WithRSAEncryption", "RSA", _SHA224),
    "1.2.840.113549.1.1.11": ("sha256WithRSAEncryption", "RSA", _SHA256),
    "1.2.840.113549.1.1.12": ("sha384WithRSAEncryption", "RSA", _SHA384),
    "1.2.840.113549.1.1.13": ("sha512WithRSAEncryption", "RSA", _SHA512),
    _RSA_PSS: ("RSASSA-PSS", "RSA", None),
    "1.2.840.10045.4.1": ("ecdsa-with-SHA1", "EC", _SHA1),
    "1.2.840.10045.4.3.1": ("ecdsa-with-SHA224", "EC", _SHA224),
    "1.2.840.10045.4.3.2": ("ecdsa-with-SHA256", "EC", _SHA256),
    "1.2.840.10045.4.3.3": ("ecdsa-with-SHA384", "EC", _SHA384),
    "1.2.840.10045.4.3.4": ("ecdsa-with-SHA512", "EC", _SHA512),
    "1.3.101.112": ("Ed25519", "Ed25519", None),
    "1.3.101.113": ("Ed448", "Ed448", None),
}
#: refused by policy, with the reason
_REFUSED_ALGORITHMS = {
    "1.2.840.113549.1.1.2": "md2WithRSAEncryption",
    "1.2.840.113549.1.1.3": "md4WithRSAEncryption",
    "1.2.840.113549.1.1.4": "md5WithRSAEncryption",
}
_HASHES_BY_OID: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.14.3.2.26": _SHA1,
    "2.16.840.1.101.3.4.2.4": _SHA224,
    "2.16.840.1.101.3.4.2.1": _SHA256,
    "2.16.840.1.101.3.4.2.2": _SHA384,
    "2.16.840.1.101.3.4.2.3": _SHA512,
}


@dataclass(frozen=True)
class SignatureProblem:
    """Why a signature was not accepted; ``reason`` names the algorithm."""

    reason: str
    #: True: the signature does not verify with the key (the key did not
    #: sign it); False: it could not be checked (an algorithm refused by the
    #: policy, unknown, or unfit for the key)
    mismatch: bool


def certificate_signature(cert: x509.Certificate, issuer: x509.Certificate) -> SignatureProblem | None:
    """check_signature of ``cert``'s signature with ``issuer``'s key."""
    outer = der.read_one(cert.public_bytes(serialization.Encoding.DER))[0].children()
    return check_signature(issuer.public_key(), cert.signature, cert.tbs_certificate_bytes, outer[1])


def check_signature(key: object, signature: bytes, data: bytes, algorithm: der.TLV) -> SignatureProblem | None:
    """None when ``signature`` over ``data`` verifies with ``key`` under the
    AlgorithmIdentifier ``algorithm`` (raw DER) and the policy above."""
    try:
        fields = algorithm.children()
        oid = der.decode_oid(fields[0].value)
    except (ValidationError, IndexError):
        return SignatureProblem("unreadable signature algorithm", mismatch=False)
    if oid in _REFUSED_ALGORITHMS:
        return SignatureProblem(f"{_REFUSED_ALGORITHMS[oid]} signatures are refused (MD2, MD4 and MD5 collisions "
                                "are practical)", mismatch=False)
    known = _SIGNATURE_ALGORITHMS.get(oid)
    if known is None:
        return SignatureProblem(f"unsupported signature algorithm {oid}", mismatch=False)
    name, kind, hash_cls = known
    try:
        if kind == "RSA" and isinstance(key, rsa.RSAPublicKey):
            if hash_cls is None:
                pss, pss_hash = _pss_params(fields)
                name = f"RSASSA-PSS with {pss_hash.name.upper()}"
                key.verify(signature, data, pss, pss_hash)
            else:
                key.verify(signature, data, padding.PKCS1v15(), hash_cls())
        elif kind == "EC" and isinstance(key, ec.EllipticCurvePublicKey) and hash_cls is not None:
            key.verify(signature, data, ec.ECDSA(hash_cls()))
        elif kind == "Ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif kind == "Ed448" and isinstance(key, ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return SignatureProblem(f"signature algorithm {name} does not fit the signer's "
                                    f"{_key_kind(key)} key", mismatch=False)
    except InvalidSignature:
        return SignatureProblem(f"its {name} signature does not verify with that key", mismatch=True)
    except ValidationError as e:  # RSASSA-PSS parameters
        return SignatureProblem(f"{name}: {e}", mismatch=False)
    except (UnsupportedAlgorithm, ValueError, TypeError, IndexError) as e:
        return SignatureProblem(f"{name} signature cannot be checked ({e or type(e).__name__})", mismatch=False)
    return None


def _key_kind(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _pss_params(fields: list[der.TLV]) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    """Decode RSASSA-PSS-params (RFC 4055 3.1); the defaults are SHA-1 and salt 20."""
    params = fields[1].children() if len(fields) > 1 and fields[1].tag == der.SEQUENCE else []
    hash_cls: type[hashes.HashAlgorithm] = _SHA1
    mgf_hash_cls: type[hashes.HashAlgorithm] = _SHA1
    salt = 20
    for p in params:
        inner = p.children()[0]
        if p.tag == 0xA0:
            hash_cls = _hash_oid(inner.children()[0].value)
        elif p.tag == 0xA1:
            mgf = inner.children()
            if der.decode_oid(mgf[0].value) != _MGF1:
                raise ValidationError("a mask generation function other than MGF1")
            mgf_hash_cls = _hash_oid(mgf[1].children()[0].value)
        elif p.tag == 0xA2:
            salt = int.from_bytes(inner.value, "big")
        elif p.tag == 0xA3:
            if int.from_bytes(inner.value, "big") != 1:
                raise ValidationError("an unknown trailer field")
    return padding.PSS(mgf=padding.MGF1(mgf_hash_cls()), salt_length=salt), hash_cls()


def _hash_oid(value: bytes) -> type[hashes.HashAlgorithm]:
    oid = der.decode_oid(value)
    try:
        return _HASHES_BY_OID[oid]
    except KeyError:
        raise ValidationError(f"unsupported hash algorithm {oid}") from None


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    """The OCSP responder URLs named in the certificate's AIA extension, in order."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        raise InputError("the certificate's extensions are unparsable") from None
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def build_request(pair: Pair) -> bytes:
    """A DER OCSPRequest with a SHA-1 CertID and no nonce (RFC 5019 2.1.1).

    HAProxy only matches SHA-1 CertIDs, and nonces defeat responder caching.
    """
    req = ocsp.OCSPRequestBuilder().add_certificate(pair.cert, pair.issuer, hashes.SHA1()).build()
    return req.public_bytes(serialization.Encoding.DER)


def issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of a CertID under ``algorithm`` (RFC 6960 4.1.1)."""
    name = der.tbs_subject(issuer.tbs_certificate_bytes)
    key = key_bits(issuer)
    return _digest(algorithm, name), _digest(algorithm, key)


def key_bits(cert: x509.Certificate) -> bytes:
    """The certificate's subjectPublicKey BIT STRING contents."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der.spki_key_bits(spki)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def sha1(data: bytes) -> bytes:
    return _digest(hashes.SHA1(), data)


def describe(cert: x509.Certificate) -> str:
    """A short human name of a certificate: its subject CN, or the whole subject."""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:X}"


def must_staple(cert: x509.Certificate) -> bool:
    """Whether the certificate carries the TLS Feature status_request (RFC 7633):
    browsers then refuse the connection without a staple."""
    try:
        features = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return x509.TLSFeatureType.status_request in features
