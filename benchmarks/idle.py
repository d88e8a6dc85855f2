#!/usr/bin/env python3
"""What a pause between pieces of work costs in CPU time, on this machine.

A due run does about 2 ms of work per staple, then waits for the responder;
with 50 ms of latency and 8 requests in flight, the process is idle most of
the time and each staple's work starts on a core that has just been idle.
This measures the same fixed piece of work (an OCSP response parsed and its
ECDSA signature verified with cryptography, a state record's JSON written
and read back, a few file system calls) done back to back and with a sleep
between pieces, in one thread, with nothing else of ours running: the CPU
time per piece (``time.process_time``) is the number to compare.  On the VM
of benchmarks/README.md a piece costs 1.4 to 1.7 times as much CPU when it
follows 10 to 50 ms of sleep as when it follows the previous piece, so the
CPU per staple of a due run with 50 ms of latency is not its work done back
to back.

    .venv/bin/python benchmarks/idle.py
"""
from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

PIECES = 300
PAUSES = (0.0, 0.001, 0.01, 0.05)


def response() -> tuple[bytes, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idle test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = (ocsp.OCSPResponseBuilder()
           .add_response(cert=cert, issuer=cert, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
                         this_update=now, next_update=now + dt.timedelta(days=4), revocation_time=None,
                         revocation_reason=None)
           .responder_id(ocsp.OCSPResponderEncoding.HASH, cert).sign(key, hashes.SHA256())
           .public_bytes(Encoding.DER))
    return der, key.public_key()


def piece(der: bytes, public: ec.EllipticCurvePublicKey, directory: str) -> None:
    r = ocsp.load_der_ocsp_response(der)
    public.verify(r.signature, r.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    record = json.dumps({"serial": r.serial_number, "this_update": r.this_update_utc.isoformat(),
                         "next_update": r.next_update_utc.isoformat() if r.next_update_utc else None})
    path = os.path.join(directory, "record.json")
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, record.encode())
    os.close(fd)
    os.replace(path + ".tmp", path)
    with open(path, "rb") as f:
        json.loads(f.read())


def cpu_per_piece(pause: float, der: bytes, public: ec.EllipticCurvePublicKey, directory: str) -> float:
    started = time.process_time()
    for _ in range(PIECES):
        piece(der, public, directory)
        if pause:
            time.sleep(pause)
    return (time.process_time() - started) / PIECES


def main() -> int:
    der, public = response()
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(50):  # warm up
            piece(der, public, directory)
        results: dict[float, list[float]] = {p: [] for p in PAUSES}
        for _ in range(3):  # interleaved, so that a noisy minute hits every pause alike
            for p in PAUSES:
                results[p].append(cpu_per_piece(p, der, public, directory))
    base = statistics.median(results[0.0])
    print("| pause between pieces | CPU per piece (us), median of 3 | against back to back |")
    print("|---|---|---|")
    for p in PAUSES:
        med = statistics.median(results[p])
        print(f"| {p * 1000:g} ms | {med * 1e6:.0f} | {med / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
