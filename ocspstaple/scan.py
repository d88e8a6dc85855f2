"""Directory mode: HAProxy-style combined PEMs, one staple per served certificate.

Every ``*.pem`` in the directory whose first certificate has its issuer in the
same file gets ``*.pem.ocsp`` beside it, HAProxy's convention.  Files that do
not fit (no certificate, no issuer in the file, a CA certificate, no OCSP URL)
are skipped with an info line: a certificate directory holds such files, and
cron should not mail about them every hour.  A file another user owns, or
anything but a regular file, is skipped with a warning: root would otherwise
staple, and write beside, whatever a less-trusted user planted there (see
store.scan_files).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ocspstaple.certs import find_issuer, is_ca, ocsp_urls, read_pem_file
from ocspstaple.config import BadEntry, Options, Staple, staple_from_options
from ocspstaple.errors import InputError, TrustError
from ocspstaple.store import scan_files, why

log = logging.getLogger(__name__)


def scan_dir(directory: Path, *, options: Options, force: bool) -> list[Staple | BadEntry]:
    """The staples of one directory, in name order (a missing directory raises
    InputError; one that others can write is a BadEntry: its staples would be
    written there)."""
    try:
        files = scan_files(directory, ".pem")
    except TrustError as e:
        return [BadEntry(name=f"--scan {directory}", reason=str(e))]
    except FileNotFoundError:
        raise InputError(f"--scan {directory}: no such directory") from None
    except NotADirectoryError:
        raise InputError(f"--scan {directory}: not a directory") from None
    except OSError as e:
        raise InputError(f"--scan {directory}: {why(e)}") from None
    staples: list[Staple | BadEntry] = []
    for path, refused in files:
        if refused:
            # Not what a certificate directory holds by itself: said even without -v.
            log.warning("%s: skipped: %s", path, refused)
            continue
        skip = _skip_reason(path)
        if skip:
            log.info("%s: skipped: %s", path, skip)
            continue
        try:
            staples.append(staple_from_options(cert=path, issuer=None, output=None, url=None,
                                               options=options, force=force))
        except InputError as e:
            log.warning("%s: skipped: %s", path, e)
    if not staples:
        log.warning("--scan %s: no *.pem with its issuer inside and an OCSP URL; nothing to do there%s",
                    directory, "" if files else " (no *.pem at all)")
    return staples


def _skip_reason(path: Path) -> str:
    try:
        chain = read_pem_file(path)
    except InputError as e:
        return str(e)
    cert = chain[0]
    if is_ca(cert):
        return "its first certificate is a CA certificate"
    if find_issuer(cert, chain[1:]) is None:
        return "no certificate in the file signed the first one"
    try:
        if not ocsp_urls(cert):
            return "the certificate names no OCSP responder (its CA may have ended OCSP)"
    except InputError as e:
        return str(e)
    return ""

