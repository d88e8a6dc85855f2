"""ocspstaple: fetch, validate and atomically write OCSP stapling files."""
from __future__ import annotations

__version__ = "0.1.0"
