"""certbot lineages: every ``DIR/live/NAME`` is a staple written to
``OUTPUT_DIR/NAME.der``, the name an nginx config points at.

A lineage whose certificate names no OCSP URL is skipped with an info line:
several CAs, Let's Encrypt among them, ended OCSP in 2025, and cron should not
mail about it every hour.  A must-staple certificate without one is an error,
since browsers refuse it without a staple.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ocspstaple.certs import must_staple, ocsp_urls, read_pem_file
from ocspstaple.config import BadEntry, Options, Staple, staple_from_options
from ocspstaple.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("/etc/letsencrypt")
#: Set by certbot for a deploy hook: the lineage just renewed (``.../live/NAME``).
RENEWED_VAR = "RENEWED_LINEAGE"


def lineages(
    certbot_dir: Path,
    *,
    output_dir: Path,
    names: Sequence[str],
    options: Options,
    force: bool,
) -> list[Staple | BadEntry]:
    """The staples of the lineages in ``certbot_dir/live`` (all, or those in ``names``)."""
    live = certbot_dir / "live"
    try:
        found = sorted(d.name for d in live.iterdir() if d.is_dir())
    except FileNotFoundError:
        raise InputError(f"--certbot-dir {certbot_dir}: no live/ directory; is it certbot's config dir?") from None
    except OSError as e:
        raise InputError(f"--certbot-dir {certbot_dir}: cannot list live/: {e.strerror or e}") from None
    out: list[Staple | BadEntry] = []
    for name in names or found:
        if name not in found:
            out.append(BadEntry(name=str(live / name), reason=f"no certbot lineage {name!r} in {live}"))
            continue
        entry = _lineage(live / name, output_dir=output_dir, options=options, force=force)
        if entry is not None:
            out.append(entry)
    return out


def _lineage(d: Path, *, output_dir: Path, options: Options, force: bool) -> Staple | BadEntry | None:
    try:  # Path.exists raises on EACCES (archive/ unreadable to this user), ENAMETOOLONG, ...
        pair = (d / "cert.pem").exists() and (d / "chain.pem").exists()
        full = (d / "fullchain.pem").exists()
    except OSError as e:
        return BadEntry(name=str(d), reason=f"cannot read the lineage: {e.strerror or e}")
    if pair:
        cert, issuer = d / "cert.pem", d / "chain.pem"
    elif full:
        cert, issuer = d / "fullchain.pem", None
    else:
        return BadEntry(name=str(d), reason="lineage has neither cert.pem with chain.pem nor fullchain.pem")
    try:
        leaf = read_pem_file(cert)[0]
        urls = ocsp_urls(leaf)
    except InputError as e:
        return BadEntry(name=str(d), reason=str(e))
    if not urls:
        if must_staple(leaf):
            return BadEntry(name=str(d), reason="must-staple certificate names no OCSP responder URL: "
                                                "browsers will refuse it without a staple")
        log.info("%s: skipped: the certificate names no OCSP responder (its CA may have ended OCSP)", d)
        return None
    try:
        st = staple_from_options(cert=cert, issuer=issuer, output=output_dir / f"{d.name}.der", url=None,
                                 options=options, force=force)
    except InputError as e:  # a lineage name that makes no usable output name
        return BadEntry(name=str(d), reason=str(e))
    return replace(st, name=str(d), label=d.name)


def renewed_lineage() -> Path | None:
    """The lineage certbot just renewed, when run as its deploy hook."""
    value = os.environ.get(RENEWED_VAR, "").strip()
    return Path(value) if value else None


def within(path: Path, lineage: Path) -> bool:
    """Whether ``path`` is a file of ``lineage`` (live/NAME or the archive/NAME its links point into)."""
    try:
        real = Path(os.path.realpath(path))
        roots = {Path(os.path.realpath(lineage))}
        roots |= {Path(os.path.realpath(p)).parent for p in lineage.glob("*.pem")}
    except OSError:
        return False
    return any(real == r or r in real.parents for r in roots) or path.parent == lineage
