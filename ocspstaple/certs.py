"""Certificates in, OCSP requests out: loading, issuer checks, URLs (pure)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from ocspstaple import der
from ocspstaple.errors import InputError
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


def _is_ca(cert: x509.Certificate) -> bool:
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
            if _is_ca(cert):
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
    """Raise InputError unless ``issuer`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError) as e:
        raise InputError(f"the issuer ({issuer.subject.rfc4514_string()}) did not sign this certificate: {e}") from None
    except Exception as e:  # InvalidSignature carries no message
        raise InputError(
            f"the issuer ({issuer.subject.rfc4514_string()}) did not sign this certificate "
            f"({type(e).__name__})"
        ) from None


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
