"""The one exception hierarchy of ocspstaple.

Every expected failure is an :class:`OcspstapleError`; its message is one line
that completes "<certificate>: ..." in the log.
"""
from __future__ import annotations


class OcspstapleError(Exception):
    """Base of every expected failure."""


class InputError(OcspstapleError):
    """The certificate, the issuer, a URL or the configuration is unusable (exit 2)."""


class ConfigError(InputError):
    """The configuration file is unreadable or invalid."""


class FetchError(OcspstapleError):
    """The responder could not be reached or gave no OCSP response."""


class UnreachableError(FetchError):
    """No HTTP answer at all: the connection timed out, was refused or reset
    (an HTTP error status is a plain FetchError: the responder is alive)."""

    def __init__(self, message: str, origin: str = "", how: str = "failed") -> None:
        super().__init__(message)
        #: the responder's origin, scheme://host:port
        self.origin = origin
        #: how it failed, completing "the last requests ...": "timed out", "were refused", ...
        self.how = how


class NotAskedError(UnreachableError):
    """The request was not sent: the run found its responder's origin down
    (fetch.Origins)."""


class ValidationError(OcspstapleError):
    """An OCSP response was refused by the validator."""


class StaleError(ValidationError):
    """A valid response that is not fresher than the staple on disk."""

    def __init__(self, message: str, this_update: object = None) -> None:
        super().__init__(message)
        #: the refused response's thisUpdate
        self.this_update = this_update


class StoreError(OcspstapleError):
    """The staple could not be read, locked or written."""


class TrustError(StoreError):
    """A path another local user could have planted or can write: a directory
    writable by others, a symlink they own, a file of theirs (spec, "Trust on
    the local disk").  The staple is refused, not just this attempt (exit 2)."""


class DeployError(OcspstapleError):
    """A written staple could not be handed to the server (push or hook, exit 1)."""


class ServedError(OcspstapleError):
    """A TLS server could not be asked what it staples (not listening, no TLS handshake)."""
