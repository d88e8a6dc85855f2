"""One signature policy for every signature ocspstaple checks (issue 13, item 4).

The policy (README, "What valid means"): what `openssl ocsp` accepts at
OpenSSL's default security level.  SHA-1 signatures (sha1WithRSAEncryption)
on a certificate by its issuer, on a delegated responder certificate by the
issuer and on a response by its signer are accepted; MD5 is refused; every
refusal names the algorithm.  Each case is made here with real keys (openssl
makes the SHA-1 certificates: cryptography refuses to sign them) and checked
against the policy and against what `openssl ocsp -respin ... -CAfile` or
`openssl verify -CAfile` says of the same files.
"""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from pki import CA, HOUR, Issued, assemble, new_key, oid, parts, seq, tlv, write_pem

from ocspstaple.certs import Pair, check_issued_by, load_pair
from ocspstaple.errors import InputError, ValidationError
from ocspstaple.validate import CertStatus, validate

UTC = dt.timezone.utc
# openssl ocsp checks the certificates' validity on today's clock: so do these files.


def now() -> dt.datetime:
    """The moment of the call: the module's fixtures (and openssl's
    certificates, which start the second they are made) may run minutes
    after collection in a full suite."""
    return dt.datetime.now(UTC).replace(microsecond=0)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


SHA1_RSA = seq(oid("1.2.840.113549.1.1.5"), tlv(0x05, b""))
MD5_RSA = seq(oid("1.2.840.113549.1.1.4"), tlv(0x05, b""))


def openssl(*args: str | Path) -> str:
    p = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def make_cert(d: Path, name: str, cn: str, *, ca: str | None, md: str = "sha1", is_ca: bool = False,
              ocsp_signing: bool = False) -> Issued:
    """``d/NAME.pem`` for a new RSA key ``d/NAME.key``, signed by ``d/CA.pem``'s key with
    ``md`` (cryptography refuses to sign certificates with SHA-1: openssl makes them,
    as a private PKI's own tooling would); self-signed without ``ca``."""
    key = d / f"{name}.key"
    key.write_bytes(Issued(cert=None, key=new_key("rsa")).key_pem)  # type: ignore[arg-type]
    ext = d / f"{name}.ext"
    ext.write_text("basicConstraints=critical,CA:" + ("TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n" if is_ca
                                                      else "FALSE\n")
                   + ("extendedKeyUsage=OCSPSigning\n" if ocsp_signing else ""))
    pem = d / f"{name}.pem"
    if ca is None:
        openssl("req", "-x509", "-new", "-key", key, f"-{md}", "-subj", f"/CN={cn}", "-days", "90",
                "-extensions", "v3", "-config", _config(d, ext), "-out", pem)
    else:
        csr = d / f"{name}.csr"
        openssl("req", "-new", "-key", key, "-subj", f"/CN={cn}", "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", d / f"{ca}.pem", "-CAkey", d / f"{ca}.key", f"-{md}",
                "-days", "90", "-set_serial", str(x509.random_serial_number()), "-extfile", ext, "-out", pem)
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    from cryptography.hazmat.primitives import serialization

    return Issued(cert=cert, key=serialization.load_pem_private_key(key.read_bytes(), None))


def _config(d: Path, ext: Path) -> Path:
    conf = d / "req.cnf"
    conf.write_text("[req]\ndistinguished_name=dn\n[dn]\n[v3]\n" + ext.read_text())
    return conf


def tampered(cert: x509.Certificate) -> x509.Certificate:
    """The same certificate with one bit of its signature flipped: same names, same
    algorithm, a signature the issuer's key did not make."""
    data = bytearray(cert.public_bytes(Encoding.DER))
    data[-1] ^= 0x01
    return x509.load_der_x509_certificate(bytes(data))


@dataclass
class Chain:
    ca: CA
    leaf: Issued
    dir: Path

    @property
    def pair(self) -> Pair:
        return Pair(cert=self.leaf.cert, issuer=self.ca.cert)


@pytest.fixture(scope="module")
def sha1_chain(tmp_path_factory) -> Chain:
    """A private PKI that still signs with SHA-1: root and leaf both sha1WithRSAEncryption."""
    d = tmp_path_factory.mktemp("sha1")
    root = make_cert(d, "ca", "SHA-1 Root", ca=None, is_ca=True)
    leaf = make_cert(d, "leaf", "sha1.example.test", ca="ca")
    return Chain(CA(cert=root.cert, key=root.key, now=now()), leaf, d)


def openssl_ocsp(resp: Path, chain: Chain) -> tuple[bool, str]:
    """(verified, output) of `openssl ocsp -respin` for the chain's leaf."""
    p = subprocess.run(
        ["openssl", "ocsp", "-respin", str(resp), "-issuer", str(chain.dir / "ca.pem"),
         "-cert", str(chain.dir / "leaf.pem"), "-CAfile", str(chain.dir / "ca.pem")],
        capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    return "Response verify OK" in out and p.returncode == 0, out


def respond(chain: Chain, name: str, *, signer: Issued | None = None, key=None, sig_alg: bytes = SHA1_RSA,
            digest: hashes.HashAlgorithm | None = None) -> Path:
    """A response about the leaf, signed with ``digest`` (sha1WithRSAEncryption by default)
    by ``signer`` (default: the CA) or by ``key`` instead of the signer's own."""
    signer = signer or chain.ca
    # producedAt now: openssl's certificates start the second they are made
    made = chain.ca.respond(chain.leaf.cert, this_update=now() - HOUR, signer=signer, produced_at=now())
    path = chain.dir / name
    path.write_bytes(assemble(parts(made), key or signer.key, sig_alg=sig_alg, hash_alg=digest or hashes.SHA1()))
    return path


def judge(resp: Path, chain: Chain) -> CertStatus:
    return validate(resp.read_bytes(), pair=chain.pair, now=now()).status


# -- a certificate signed by its issuer with SHA-1 ----------------------------------------

def test_sha1_signed_leaf_is_issued_by_its_sha1_signed_root(sha1_chain: Chain):
    assert sha1_chain.leaf.cert.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.5"
    assert sha1_chain.ca.cert.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.5"
    check_issued_by(sha1_chain.leaf.cert, sha1_chain.ca.cert)  # no error: the issuer did sign it
    pair = load_pair(sha1_chain.dir / "leaf.pem", sha1_chain.dir / "ca.pem")
    assert pair.issuer == sha1_chain.ca.cert
    assert ": OK" in openssl("verify", "-CAfile", sha1_chain.dir / "ca.pem", sha1_chain.dir / "leaf.pem")


def test_a_sha1_signature_the_issuer_did_not_make_is_refused(sha1_chain: Chain, tmp_path: Path):
    """Twin: the same names and algorithm, a signature the issuer's key did not make."""
    forged = tampered(sha1_chain.leaf.cert)
    with pytest.raises(InputError, match=r"did not sign this certificate: its sha1WithRSAEncryption signature "
                                         r"does not verify"):
        check_issued_by(forged, sha1_chain.ca.cert)
    write_pem(tmp_path / "forged.pem", forged)
    p = subprocess.run(["openssl", "verify", "-CAfile", str(sha1_chain.dir / "ca.pem"), str(tmp_path / "forged.pem")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0  # OpenSSL agrees


def test_md5_signed_certificate_is_refused_naming_the_algorithm(sha1_chain: Chain):
    md5 = make_cert(sha1_chain.dir, "md5", "md5.example.test", ca="ca", md="md5")
    assert md5.cert.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.4"
    with pytest.raises(InputError, match="cannot check that the issuer .* signed this certificate: "
                                         "md5WithRSAEncryption signatures are refused"):
        check_issued_by(md5.cert, sha1_chain.ca.cert)


# -- a response signed by the issuer with SHA-1 ----------------------------------------------

def test_sha1_signed_response_from_the_sha1_issuer(sha1_chain: Chain):
    resp = respond(sha1_chain, "issuer.der")
    assert judge(resp, sha1_chain) is CertStatus.GOOD
    ok, out = openssl_ocsp(resp, sha1_chain)
    assert ok and "leaf.pem: good" in out, out
    # and through the real CLI
    r = run_cli("verify", resp, "--cert", sha1_chain.dir / "leaf.pem", "--issuer", sha1_chain.dir / "ca.pem")
    assert r.code == 0 and "valid, certificate good" in r.out, r.out + r.err


def test_sha1_signed_response_by_another_key_is_refused(sha1_chain: Chain):
    """Twin: the same response signed with SHA-1 by a key that is not the issuer's."""
    resp = respond(sha1_chain, "impostor.der", key=new_key("rsa"))
    with pytest.raises(ValidationError, match=r"signature does not verify with the issuer's key "
                                              r"\(its sha1WithRSAEncryption signature"):
        judge(resp, sha1_chain)
    ok, out = openssl_ocsp(resp, sha1_chain)
    assert not ok, out


def test_md5_signed_response_is_refused_naming_the_algorithm(sha1_chain: Chain):
    resp = respond(sha1_chain, "md5.der", sig_alg=MD5_RSA, digest=hashes.MD5())
    with pytest.raises(ValidationError, match="md5WithRSAEncryption signatures are refused"):
        judge(resp, sha1_chain)


# -- a delegated responder certificate signed by the issuer with SHA-1 ----------------------

@pytest.fixture(scope="module")
def sha1_delegate(sha1_chain: Chain) -> Issued:
    return make_cert(sha1_chain.dir, "delegate", "SHA-1 OCSP Responder", ca="ca", ocsp_signing=True)


def test_sha1_signed_delegate(sha1_chain: Chain, sha1_delegate: Issued):
    resp = respond(sha1_chain, "delegate.der", signer=sha1_delegate)
    v = validate(resp.read_bytes(), pair=sha1_chain.pair, now=now())
    assert v.status is CertStatus.GOOD and v.signer == "delegated responder 'SHA-1 OCSP Responder'"
    ok, out = openssl_ocsp(resp, sha1_chain)
    assert ok and "leaf.pem: good" in out, out


def test_sha1_delegate_the_issuer_did_not_sign_is_refused(sha1_chain: Chain, sha1_delegate: Issued):
    """Twin: the same delegate with a SHA-1 signature the issuer's key did not make."""
    false = Issued(cert=tampered(sha1_delegate.cert), key=sha1_delegate.key)
    resp = respond(sha1_chain, "false-delegate.der", signer=false)
    with pytest.raises(ValidationError, match=r"was not issued by the certificate's issuer \(its "
                                              r"sha1WithRSAEncryption signature does not verify"):
        judge(resp, sha1_chain)
    ok, out = openssl_ocsp(resp, sha1_chain)
    assert not ok, out
