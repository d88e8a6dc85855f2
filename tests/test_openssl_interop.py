"""ocspstaple against the real `openssl ocsp` responder.

The PKI is made with the `openssl` command line (a CA, a delegated OCSP
responder certificate with id-kp-OCSPSigning, leaf certificates whose AIA
names the responder), the revocation state lives in an OpenSSL CA database
(index.txt), and the responder is `openssl ocsp -index ... -port PORT`
started here with subprocess.Popen.  Every staple ocspstaple writes is then
checked by `openssl ocsp -respin`, so both ends of the exchange are OpenSSL.

Facts about `openssl ocsp` as a responder (docs/servers.md) that shape this file:
- -port binds every address; the port is picked by binding 127.0.0.1:0.
- A client that connects and closes without a request makes it spin forever,
  so readiness is its "waiting for OCSP client connections" stderr line,
  never a probe of its port.
- index.txt changes show up one request late: restart it after a change.
- It logs "Received request, 1st line: GET /..." on stderr, which is how the
  tests see the HTTP method and path ocspstaple used.
Each test stops the responders it started, by PID, in the fixture finalizer.
"""
from __future__ import annotations

import base64
import datetime as dt
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import Run, run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command line is not installed"),
]

UTC = dt.timezone.utc
READY_LINE = "waiting for OCSP client connections"
REQUEST_LINE = re.compile(r"Received request, 1st line: (\S+) (\S+) HTTP/")

KEY_TYPES = {
    "RSA-2048": ["-newkey", "rsa:2048"],
    "EC-P256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
}

CA_EXT = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
RESPONDER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
# The same, without the EKU: `openssl ocsp` signs with it all the same.
RESPONDER_NO_EKU_EXT = RESPONDER_EXT.replace("extendedKeyUsage = OCSPSigning\n", "")
# A CA-flagged certificate with the EKU: how a sibling sub-CA could forge responses.
RESPONDER_CA_EXT = RESPONDER_EXT.replace("CA:FALSE", "CA:TRUE").replace(
    "digitalSignature", "digitalSignature, keyCertSign")
LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:{cn}
authorityKeyIdentifier = keyid
authorityInfoAccess = OCSP;URI:{url}
"""


# -- openssl helpers -------------------------------------------------------------

def openssl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"openssl {' '.join(map(str, args))}\n{p.stdout}\n{p.stderr}"
    return p


def serial_hex(serial: int) -> str:
    """A serial as OpenSSL's index.txt spells it: upper-case hex, whole bytes."""
    h = f"{serial:X}"
    return h if len(h) % 2 == 0 else "0" + h


def new_serial() -> int:
    return secrets.randbits(63) | (1 << 62)


def asn1_time(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


@dataclass
class IndexEntry:
    serial: int
    subject: str
    expiry: dt.datetime
    revoked: dt.datetime | None = None
    reason: str | None = None

    def line(self) -> str:
        """One line of OpenSSL's CA database:
        V|R <TAB> expiry <TAB> revocation[,reason] <TAB> serial <TAB> file <TAB> subject."""
        rev = ""
        if self.revoked is not None:
            rev = asn1_time(self.revoked) + (f",{self.reason}" if self.reason else "")
        status = "V" if self.revoked is None else "R"
        return "\t".join([status, asn1_time(self.expiry), rev, serial_hex(self.serial), "unknown", self.subject]) + "\n"


def write_index(path: Path, entries: list[IndexEntry]) -> None:
    path.write_text("".join(e.line() for e in entries))


@dataclass
class Verdict:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def verified(self) -> bool:
        return self.code == 0 and "Response verify OK" in self.text

    def status(self, cert: Path) -> str | None:
        m = re.search(re.escape(str(cert)) + r": (good|revoked|unknown)\b", self.out)
        return m.group(1) if m else None


def openssl_respin(staple: Path, *, ca_file: Path, issuer: Path, cert: Path) -> Verdict:
    """`openssl ocsp -respin`: verify a stapling file the way OpenSSL does."""
    p = subprocess.run(
        ["openssl", "ocsp", "-respin", str(staple), "-CAfile", str(ca_file),
         "-issuer", str(issuer), "-cert", str(cert)],
        capture_output=True, text=True, timeout=30,
    )
    return Verdict(p.returncode, p.stdout, p.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the PKI ---------------------------------------------------------------------

@dataclass
class Leaf:
    pem: Path
    fullchain: Path
    serial: int
    subject: str
    not_after: dt.datetime

    @property
    def staple(self) -> Path:
        return self.fullchain.with_name(self.fullchain.name + ".ocsp")

    def entry(self, **kw: object) -> IndexEntry:
        return IndexEntry(self.serial, self.subject, self.not_after, **kw)  # type: ignore[arg-type]


@dataclass
class PKI:
    """A CA and its responder certificates, made by `openssl req` / `openssl x509 -req`."""

    dir: Path
    kind: str

    def __post_init__(self) -> None:
        d, newkey = self.dir, KEY_TYPES[self.kind]
        (d / "ca.ext").write_text(CA_EXT)
        openssl("req", "-x509", *newkey, "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-subj", f"/CN=Interop Test CA {self.kind}", "-days", "3650",
                "-set_serial", "0x" + serial_hex(new_serial()), "-extensions", "v3_ca_interop",
                "-config", self._req_config("v3_ca_interop", CA_EXT), cwd=d)
        # One leaf key/CSR for every leaf: the CA signs it with a new serial each time.
        openssl("req", "-new", *newkey, "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr",
                "-subj", "/CN=www.example.test", cwd=d)
        self.responders: dict[str, tuple[Path, Path]] = {}
        for name, ext in (("r", RESPONDER_EXT), ("r-noeku", RESPONDER_NO_EKU_EXT), ("r-ca", RESPONDER_CA_EXT)):
            (d / f"{name}.ext").write_text(ext)
            openssl("req", "-new", *newkey, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", f"/CN=Interop OCSP Responder {name}", cwd=d)
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-set_serial", "0x" + serial_hex(new_serial()), "-days", "30",
                    "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
            self.responders[name] = (d / f"{name}.pem", d / f"{name}.key")
        self.responders["ca"] = (self.ca, self.ca_key)
        # An unrelated CA, for the negative twin of every `openssl ocsp -respin` check.
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "other.key", "-out", "other.pem", "-subj", "/CN=Unrelated CA", "-days", "30", cwd=d)

    def _req_config(self, section: str, body: str) -> str:
        path = self.dir / "req.cnf"
        path.write_text(f"[req]\ndistinguished_name = dn\n[dn]\n[{section}]\n{body}")
        return str(path)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def other_ca(self) -> Path:
        return self.dir / "other.pem"

    def leaf(self, dest: Path, url: str, *, serial: int | None = None, cn: str = "www.example.test") -> Leaf:
        """A leaf signed by the CA, its AIA naming ``url``: leaf.pem and fullchain.pem in ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        serial = serial or new_serial()
        ext = dest / f"leaf-{serial_hex(serial)}.ext"
        ext.write_text(LEAF_EXT.format(cn=cn, url=url))
        pem = dest / "leaf.pem"
        openssl("x509", "-req", "-in", self.dir / "leaf.csr", "-CA", self.ca, "-CAkey", self.ca_key,
                "-set_serial", "0x" + serial_hex(serial), "-days", "30", "-extfile", ext, "-out", pem, cwd=dest)
        ext.unlink()
        fullchain = dest / "fullchain.pem"
        fullchain.write_bytes(pem.read_bytes() + self.ca.read_bytes())
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        assert cert.serial_number == serial
        return Leaf(pem=pem, fullchain=fullchain, serial=serial, subject=f"/CN={cn}",
                    not_after=cert.not_valid_after_utc)


# -- the responder ------------------------------------------------------------------

class PortBusy(Exception):
    pass


@dataclass
class OpensslResponder:
    """`openssl ocsp -index ... -port PORT -ignore_err`, as a child process."""

    workdir: Path
    pki: PKI
    index: Path
    port: int
    signer: str = "r"
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        rsigner, rkey = self.pki.responders[self.signer]
        return ["openssl", "ocsp", "-index", str(self.index), "-port", str(self.port),
                "-rsigner", str(rsigner), "-rkey", str(rkey), "-CA", str(self.pki.ca),
                "-nmin", "60", "-ignore_err", *self.extra]

    def start(self, *, ready_within: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log = self.workdir / f"responder-{self.port}-{self.starts}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            text = self.stderr()
            if READY_LINE in text:
                return
            if self.proc.poll() is not None:
                if "Address already in use" in text or "Error starting accept" in text:
                    raise PortBusy(text)
                raise AssertionError(f"openssl ocsp exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.01)
        self.stop()
        raise AssertionError(f"openssl ocsp printed no {READY_LINE!r} within {ready_within} s:\n{self.stderr()}")

    def stop(self) -> None:
        """Stop it by its PID: SIGTERM, wait, SIGKILL if it will not go."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """The same port (the leaf's AIA names it); a few tries in case the old socket lingers."""
        self.stop()
        for attempt in range(20):
            try:
                self.start()
                return
            except PortBusy:
                if attempt == 19:
                    raise
                time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        assert self.log is not None
        return self.log.read_text(errors="replace")

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request this run of the responder received."""
        return REQUEST_LINE.findall(self.stderr())


@dataclass
class Lab:
    """One test's world: a leaf on disk, index.txt, and a running responder for it."""

    dir: Path
    pki: PKI
    index: Path
    responder: OpensslResponder
    leaf: Leaf
    started: list[OpensslResponder]

    def set_index(self, *entries: IndexEntry) -> None:
        write_index(self.index, list(entries))

    def verify(self, leaf: Leaf | None = None, *, ca_file: Path | None = None) -> Verdict:
        leaf = leaf or self.leaf
        return openssl_respin(leaf.staple, ca_file=ca_file or self.pki.ca, issuer=self.pki.ca, cert=leaf.pem)

    def start_responder(self, entries: list[IndexEntry] | None = None, **kw: object) -> OpensslResponder:
        """A responder on a free port; retried on another port if that one was taken meanwhile."""
        for attempt in range(5):
            r = OpensslResponder(self.dir, self.pki, self.index, free_port(), **kw)  # type: ignore[arg-type]
            self.started.append(r)
            try:
                r.start()
                return r
            except PortBusy:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], PKI]:
    """The module's PKI of a key type, made on first use: a test that
    parametrizes ``pki`` itself (to leave out a combination that cannot be)
    shares them instead of making its own for every case."""
    made: dict[str, PKI] = {}

    def get(kind: str) -> PKI:
        if kind not in made:
            made[kind] = PKI(tmp_path_factory.mktemp(f"pki-{kind}"), kind)
        return made[kind]

    return get


@pytest.fixture(scope="module", params=list(KEY_TYPES))
def pki(request: pytest.FixtureRequest, pkis: Callable[[str], PKI]) -> PKI:
    return pkis(request.param)


@pytest.fixture
def lab(tmp_path: Path, pki: PKI) -> Iterator[Lab]:
    serial = new_serial()
    index = tmp_path / "index.txt"
    # index.txt only needs the serial and subject, so the responder can start
    # (and find its port) before the leaf whose AIA names that port exists.
    subject = "/CN=www.example.test"
    write_index(index, [IndexEntry(serial, subject, dt.datetime.now(UTC) + dt.timedelta(days=30))])
    lab = Lab(dir=tmp_path, pki=pki, index=index, responder=None, leaf=None, started=[])  # type: ignore[arg-type]
    try:
        lab.responder = lab.start_responder()
        lab.leaf = pki.leaf(tmp_path / "site", lab.responder.url, serial=serial)
        lab.set_index(lab.leaf.entry())  # the exact notAfter now that the leaf exists
        yield lab
    finally:
        for r in lab.started:
            r.stop()
        assert not any(r.running for r in lab.started)


# -- helpers -------------------------------------------------------------------------

def refresh(*args: str | Path) -> Run:
    run = run_cli("refresh", *args, timeout=30)
    assert "Traceback" not in run.err, run.err
    return run


def site_files(leaf: Leaf) -> set[str]:
    return set(os.listdir(leaf.fullchain.parent))


def no_temp_files(leaf: Leaf) -> bool:
    # Dotfiles beside the staple are its lock and state record; a temp file ends in .ocspstaple-tmp.
    return not [n for n in site_files(leaf) if "tmp" in n]


def decode_get(path: str) -> ocsp.OCSPRequest:
    """The OCSPRequest carried by an RFC 6960 A.1 GET path."""
    assert path.startswith("/") and "/" not in path[1:], path
    return ocsp.load_der_ocsp_request(base64.b64decode(urllib.parse.unquote(path[1:]), validate=True))


# -- 1: a staple written, and OpenSSL agrees it is good --------------------------------

def test_refresh_writes_a_staple_that_openssl_verifies(lab: Lab) -> None:
    run = refresh("--cert", lab.leaf.fullchain)
    assert run.code == 0, run.err
    assert run.out == "" and run.err == "", "quiet when all is well"
    assert lab.leaf.staple.is_file()
    assert site_files(lab.leaf) == {"leaf.pem", "fullchain.pem", "fullchain.pem.ocsp", ".fullchain.pem.ocsp.lock",
                                    ".fullchain.pem.ocsp.state.json"}
    verdict = lab.verify()
    assert verdict.verified, verdict.text
    assert verdict.status(lab.leaf.pem) == "good", verdict.text
    assert [m for m, _ in lab.responder.requests()] == ["GET"]


def test_staple_does_not_verify_against_an_unrelated_ca(lab: Lab) -> None:
    """The negative twin: the same check with another trust anchor fails, so
    the positive one above is not merely `openssl ocsp` accepting anything."""
    assert refresh("--cert", lab.leaf.fullchain).code == 0
    assert lab.verify().verified
    verdict = lab.verify(ca_file=lab.pki.other_ca)
    assert not verdict.verified, verdict.text
    assert verdict.code != 0
    assert "Response Verify Failure" in verdict.text, verdict.text


def test_second_run_is_quiet_and_makes_no_request(lab: Lab) -> None:
    assert refresh("--cert", lab.leaf.fullchain).code == 0
    before = lab.leaf.staple.read_bytes()
    run = refresh("--cert", lab.leaf.fullchain)
    assert run.code == 0 and run.err == "", run.err
    assert lab.leaf.staple.read_bytes() == before
    assert len(lab.responder.requests()) == 1, "a fresh staple is not due for 30 minutes"


# -- 2: a revocation in index.txt reaches the disk -------------------------------------

def test_revocation_in_index_is_written_and_reported(lab: Lab) -> None:
    assert refresh("--cert", lab.leaf.fullchain).code == 0
    good = lab.leaf.staple.read_bytes()
    assert lab.verify().status(lab.leaf.pem) == "good"

    revoked_at = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    lab.set_index(lab.leaf.entry(revoked=revoked_at, reason="keyCompromise"))
    lab.responder.restart()  # index.txt changes show up one request late otherwise

    run = refresh("--cert", lab.leaf.fullchain, "--force")
    assert run.code == 2, run.err
    assert any("REVOKED" in line and "fullchain.pem" in line for line in run.lines), run.err
    assert run.out == ""
    assert lab.leaf.staple.read_bytes() != good
    verdict = lab.verify()
    assert verdict.verified, verdict.text
    assert verdict.status(lab.leaf.pem) == "revoked", verdict.text
    assert "keyCompromise" in verdict.text
    assert no_temp_files(lab.leaf)


def test_revocation_is_final_against_a_later_good(lab: Lab) -> None:
    """A CA that "unrevokes" (index.txt back to V) cannot bring the staple back to good."""
    lab.set_index(lab.leaf.entry(revoked=dt.datetime.now(UTC) - dt.timedelta(hours=2)))
    lab.responder.restart()
    run = refresh("--cert", lab.leaf.fullchain)
    assert run.code == 2 and "REVOKED" in run.err, run.err
    revoked = lab.leaf.staple.read_bytes()
    assert lab.verify().status(lab.leaf.pem) == "revoked"

    lab.set_index(lab.leaf.entry())
    lab.responder.restart()
    run = refresh("--cert", lab.leaf.fullchain, "--force")
    assert run.code == 2, run.err
    assert [m for m, _ in lab.responder.requests()] == ["GET"], "it did ask, and was answered good"
    assert lab.leaf.staple.read_bytes() == revoked
    assert lab.verify().status(lab.leaf.pem) == "revoked"


# -- 3: the responder goes away ----------------------------------------------------------

def test_responder_down_keeps_the_staple(lab: Lab) -> None:
    assert refresh("--cert", lab.leaf.fullchain).code == 0
    before = lab.leaf.staple.read_bytes()
    pid = lab.responder.proc.pid  # type: ignore[union-attr]
    lab.responder.stop()
    assert not lab.responder.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    started = time.monotonic()
    run = refresh("--cert", lab.leaf.fullchain, "--force", "--timeout", "2")
    elapsed = time.monotonic() - started
    assert run.code == 1, run.err
    assert lab.leaf.staple.read_bytes() == before
    assert len(run.lines) == 1 and "fullchain.pem" in run.lines[0] and "kept" in run.lines[0], run.err
    assert elapsed < 15, elapsed
    assert no_temp_files(lab.leaf)
    assert lab.verify().status(lab.leaf.pem) == "good"

    # Not due yet and not forced: no request is tried, the staple is valid, all quiet.
    run = refresh("--cert", lab.leaf.fullchain, "--timeout", "2")
    assert run.code == 0 and run.err == "", run.err


# -- 4: GET for short requests, POST for long URLs ---------------------------------------

def test_get_request_is_the_rfc_6960_form(lab: Lab) -> None:
    assert refresh("--cert", lab.leaf.fullchain).code == 0
    (method, path), = lab.responder.requests()
    assert method == "GET"
    assert len(lab.responder.url.rstrip("/") + path) <= 255
    req = decode_get(path)
    assert req.serial_number == lab.leaf.serial
    assert isinstance(req.hash_algorithm, hashes.SHA1), "RFC 5019 / HAProxy: SHA-1 CertID"
    assert len(req.extensions) == 0, "no nonce"
    assert lab.verify().verified


def test_long_url_forces_post(lab: Lab) -> None:
    url = lab.responder.url + "a-long-path/" + "p" * 250
    assert len(url) > 255
    run = refresh("--cert", lab.leaf.fullchain, "--url", url)
    assert run.code == 0, run.err
    (method, path), = lab.responder.requests()
    assert method == "POST"
    assert path == urllib.parse.urlsplit(url).path, "POST goes to the URL as given"
    verdict = lab.verify()
    assert verdict.verified and verdict.status(lab.leaf.pem) == "good", verdict.text


def test_get_refused_by_openssl_falls_back_to_post(lab: Lab) -> None:
    """`openssl ocsp` takes GET only with the base64 right after the first `/`:
    behind a path prefix it answers HTTP 400, and ocspstaple must retry by POST."""
    url = lab.responder.url + "ocsp"
    run = refresh("--cert", lab.leaf.fullchain, "--url", url)
    assert run.code == 0, run.err
    methods = [m for m, _ in lab.responder.requests()]
    assert methods == ["GET", "POST"], lab.responder.stderr()
    assert lab.verify().status(lab.leaf.pem) == "good"


# -- 5: unknown to the responder -----------------------------------------------------------

def test_unknown_serial_is_refused(lab: Lab) -> None:
    stranger = lab.pki.leaf(lab.dir / "stranger", lab.responder.url)  # a serial not in index.txt
    run = refresh("--cert", stranger.fullchain)
    assert run.code == 2, run.err
    assert len(run.lines) == 1 and "unknown" in run.lines[0] and "fullchain.pem" in run.lines[0], run.err
    assert not stranger.staple.exists()
    assert no_temp_files(stranger)
    assert [m for m, _ in lab.responder.requests()] == ["GET"], "it was the answer that was refused"
    # The passing twin: the same responder, the leaf it knows.
    assert refresh("--cert", lab.leaf.fullchain).code == 0
    assert lab.verify().status(lab.leaf.pem) == "good"


# -- 6: signers and signature forms `openssl ocsp` produces -----------------------------

SIGNER_VARIANTS = {
    # name: (rsigner, extra args)
    "issuer-signs": ("ca", []),
    "issuer-signs-byKey-no-certs": ("ca", ["-resp_key_id", "-resp_no_certs"]),
    "delegate-byKey": ("r", ["-resp_key_id"]),
    "delegate-sha512": ("r", ["-rmd", "sha512"]),
    "delegate-rsa-pss": ("r", ["-rsigopt", "rsa_padding_mode:pss"]),
}


@pytest.mark.parametrize("pki, variant", [
    (kind, variant) for kind in KEY_TYPES for variant in SIGNER_VARIANTS
    if "pss" not in variant or kind == "RSA-2048"  # RSA-PSS needs an RSA key: not made for EC, not skipped
], indirect=["pki"])
def test_signer_variants_are_accepted(lab: Lab, variant: str) -> None:
    signer, extra = SIGNER_VARIANTS[variant]
    lab.responder.signer, lab.responder.extra = signer, list(extra)
    lab.responder.restart()
    run = refresh("--cert", lab.leaf.fullchain)
    assert run.code == 0, run.err
    if "pss" in variant:
        written = ocsp.load_der_ocsp_response(lab.leaf.staple.read_bytes())
        assert written.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    args = ["-verify_other", str(lab.pki.ca)] if "no-certs" in variant else []
    p = subprocess.run(["openssl", "ocsp", "-respin", str(lab.leaf.staple), "-CAfile", str(lab.pki.ca),
                        "-issuer", str(lab.pki.ca), "-cert", str(lab.leaf.pem), *args],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "Response verify OK" in p.stderr + p.stdout, p.stderr
    assert f"{lab.leaf.pem}: good" in p.stdout


REFUSED_SIGNERS = {
    # name: (rsigner, extra args, a word the one-line reason carries)
    # A delegated signer not included in the response: nothing to check its key against.
    "delegate-no-certs": ("r", ["-resp_no_certs"], "Interop OCSP Responder r"),
    # `openssl ocsp` signs with any certificate it is given; RFC 6960 4.2.2.2 needs the EKU.
    "delegate-without-eku": ("r-noeku", [], "OCSPSigning"),
    # A CA-flagged responder certificate (the sibling sub-CA forgery).
    "delegate-is-a-ca": ("r-ca", [], "CA"),
}


@pytest.mark.parametrize("variant", list(REFUSED_SIGNERS))
def test_bad_signers_are_refused(lab: Lab, variant: str) -> None:
    signer, extra, word = REFUSED_SIGNERS[variant]
    lab.responder.signer, lab.responder.extra = signer, list(extra)
    lab.responder.restart()
    run = refresh("--cert", lab.leaf.fullchain)
    assert run.code == 2, run.err
    assert len(run.lines) == 1 and "fullchain.pem" in run.lines[0] and word in run.lines[0], run.err
    assert not lab.leaf.staple.exists()
    assert no_temp_files(lab.leaf)
    assert [m for m, _ in lab.responder.requests()] == ["GET"], "it was the answer that was refused"
    # The passing twin: the proper delegate on the same port.
    lab.responder.signer, lab.responder.extra = "r", []
    lab.responder.restart()
    assert refresh("--cert", lab.leaf.fullchain).code == 0
    assert lab.verify().status(lab.leaf.pem) == "good"
