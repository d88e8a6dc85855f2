"""The one rule for every URL we are given: absolute http or https."""
from __future__ import annotations

import urllib.parse

from ocspstaple.errors import InputError


def check_url(url: str, what: str = "OCSP URL") -> str:
    """Refuse anything but an absolute http or https URL; return it unchanged."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what} {url!r} is not an http:// or https:// URL")
    return url
