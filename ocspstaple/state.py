"""What the last attempts were, per staple: so `status` can tell
"responder down for 14 hours" from "fine".

One small JSON record per staple, written atomically after a run that tried
to fetch it (a run where the staple was still fresh writes nothing, so a
no-op run stays cheap).  By default the record sits beside the staple as
``.NAME.state.json`` (a dotfile: HAProxy's ``crt DIR`` loads every other file
as a certificate); with a state directory, in that directory under a name
derived from the output's absolute path.

A record also keeps the verdict of the last full check of the staple it was
saved with (``checked``): the SHA-256 digest of the exact certificate, issuer
and staple bytes that passed, and what the staple said.  A later run that
finds the same bytes takes the verdict instead of verifying two signatures
again; any other byte (a staple written by hand, a renewed certificate, a
changed setting) misses and is checked in full.  The verdict is only believed
from a record owned by the user running ocspstaple and writable by no one
else.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ocspstaple.errors import StoreError
from ocspstaple.store import Dirs, atomic_write, lock_output, read_owned, target_file
from ocspstaple.validate import CertStatus, VerifiedResponse

log = logging.getLogger(__name__)

VERSION = 1
#: A record is a few hundred bytes; anything larger is not ours.
MAX_RECORD = 64 << 10
#: The last error is kept to this many characters.
MAX_ERROR = 2000


@dataclass(frozen=True)
class Checked:
    """A staple that passed every check but the time window, and the digest of
    the bytes it passed with (refresh.checked_digest)."""

    digest: str
    #: the staple's fields; its ``der`` is empty (the staple file holds it)
    response: VerifiedResponse
    must_staple: bool

    def to_json(self) -> dict[str, object]:
        r: dict[str, object] = {}
        for f in fields(VerifiedResponse):
            v = getattr(self.response, f.name)
            if f.name != "der":
                # Full precision: the window is recomputed from these.
                r[f.name] = v.isoformat() if isinstance(v, dt.datetime) else getattr(v, "value", v)
        return {"digest": self.digest, "must_staple": self.must_staple, "response": r}

    @classmethod
    def from_json(cls, d: object) -> Checked:
        """Raises ValueError, TypeError or KeyError when ``d`` is not a verdict we wrote."""
        if not isinstance(d, dict) or not isinstance(d["digest"], str) or not isinstance(d["must_staple"], bool):
            raise ValueError("bad checked")
        r = d["response"]
        signer, reason = r["signer"], r["revocation_reason"]
        if not isinstance(signer, str) or not (reason is None or isinstance(reason, str)):
            raise ValueError("bad checked response")
        response = VerifiedResponse(
            der=b"", status=_STATUS[r["status"]], signer=signer, revocation_reason=reason,
            this_update=_utc(r["this_update"]), next_update=_utc_or_none(r["next_update"]),
            produced_at=_utc(r["produced_at"]), expires=_utc(r["expires"]),
            signer_not_before=_utc_or_none(r["signer_not_before"]),
            revocation_time=_utc_or_none(r["revocation_time"]))
        return cls(digest=d["digest"], response=response, must_staple=d["must_staple"])


#: CertStatus by value, without the Enum call's machinery (KeyError: not a status)
_STATUS = {s.value: s for s in CertStatus}
_UTC = dt.timezone.utc
_ZERO = dt.timedelta(0)


def _utc(v: str) -> dt.datetime:
    """A time as Checked.to_json writes it (isoformat of a UTC time)."""
    t = dt.datetime.fromisoformat(v)
    # fromisoformat gives "+00:00" the timezone.utc singleton: the offset is asked only otherwise.
    if t.tzinfo is not _UTC and t.utcoffset() != _ZERO:
        raise ValueError("not a UTC time")
    return t


def _utc_or_none(v: str | None) -> dt.datetime | None:
    return None if v is None else _utc(v)


@dataclass(frozen=True, kw_only=True)
class Record:
    """The history of one staple's refreshes, as far as `status` needs it."""

    last_attempt: dt.datetime | None = None
    last_success: dt.datetime | None = None
    #: when the current run of failures began (None while succeeding)
    failing_since: dt.datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_result: str | None = None
    #: the responder's max-age after an answer with nothing newer: not to be asked before then
    retry_after: dt.datetime | None = None
    #: the last full check of the staple on disk, if it passed
    checked: Checked | None = None

    def succeeded(self, now: dt.datetime, result: str, retry_after: dt.datetime | None = None,
                  checked: Checked | None = None) -> Record:
        now = now.replace(microsecond=0)  # as saved: the same value in this run's metrics and the next's
        return Record(last_attempt=now, last_success=now, last_result=result, retry_after=retry_after,
                      checked=checked)

    def failed(self, now: dt.datetime, result: str, error: str, checked: Checked | None = None) -> Record:
        now = now.replace(microsecond=0)
        return replace(self, last_attempt=now, failing_since=self.failing_since or now,
                       consecutive_failures=self.consecutive_failures + 1,
                       last_error=error[:MAX_ERROR], last_result=result, checked=checked)

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"version": VERSION}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "checked":
                if v is not None:
                    d[f.name] = v.to_json()
            else:
                d[f.name] = iso(v) if isinstance(v, dt.datetime) else v
        return d

    @classmethod
    def from_json(cls, d: object) -> Record:
        if not isinstance(d, dict) or d.get("version") != VERSION:
            raise ValueError("not a version 1 state record")
        times = {k: _time(d.get(k)) for k in ("last_attempt", "last_success", "failing_since", "retry_after")}
        failures = d.get("consecutive_failures", 0)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ValueError("bad consecutive_failures")
        error, result = d.get("last_error"), d.get("last_result")
        if not (error is None or isinstance(error, str)) or not (result is None or isinstance(result, str)):
            raise ValueError("bad last_error or last_result")
        checked = None
        if d.get("checked") is not None:
            try:
                checked = Checked.from_json(d["checked"])
            except (ValueError, TypeError, KeyError):
                checked = None  # checked in full again: costs time, never safety
        return cls(**times, consecutive_failures=failures, last_error=error, last_result=result, checked=checked)


def iso(t: dt.datetime) -> str:
    """ISO 8601 in UTC, to the second: ``2026-11-27T10:00:00Z``."""
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(v: object) -> dt.datetime | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError("bad time")
    t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError("time without a zone")
    return t


def state_path(output: Path, state_dir: Path | None, target: str | None = None) -> Path:
    """Where the record of ``output`` lives: beside the file the staple is
    (for a symlinked output, beside the link's target; ``target``: that
    file, store.target_file's answer, when known)."""
    if state_dir is None:
        head, name = os.path.split(target or target_file(output))
        return Path(head, f".{name}.state.json")
    key = hashlib.sha256(str(output.absolute()).encode()).hexdigest()[:16]
    return Path(state_dir, f"{output.name}.{key}.json")


def load(output: Path, state_dir: Path | None, *, dirs: Dirs | None = None) -> Record:
    """The record of ``output``; an empty one if there is none, it is
    unreadable, or it is not ours alone (see _read): every field of a record,
    the verdict, the retry hold and the counters alike, comes only from a
    record that no one else could have written."""
    path = state_path(output, state_dir)
    try:
        raw, ours = _read(path, dirs)
    except FileNotFoundError:
        return Record()
    except (OSError, StoreError) as e:
        log.debug("%s: cannot read %s: %s", output, path, e)
        return Record()
    if not ours:
        _not_ours(output, path)
        return Record()
    try:
        if len(raw) > MAX_RECORD:
            raise ValueError("too large")
        return Record.from_json(json.loads(raw))
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError; deep nesting recurses
        log.warning("%s: ignoring unreadable state record %s (%s)", output, path, e)
        return Record()


def recall(output: Path, state_dir: Path | None, *, dirs: Dirs | None = None,
           target: str | None = None) -> Checked | None:
    """Only the verdict of ``output``'s record (load() reads it all): None
    when there is none, or the record is unreadable or not ours alone.
    ``target``: the file ``output`` names (store.target_file), when known."""
    path = state_path(output, state_dir, target)
    try:
        raw, ours = _read(path, dirs)
        if not ours:
            _not_ours(output, path)
            return None
        d = json.loads(raw) if len(raw) <= MAX_RECORD else None
        if not isinstance(d, dict) or d.get("version") != VERSION or d.get("checked") is None:
            return None
        return Checked.from_json(d["checked"])
    except (OSError, StoreError, ValueError, TypeError, KeyError, RecursionError):
        return None  # load() says why, where it matters


def _read(path: Path | str, dirs: Dirs | None) -> tuple[bytes, bool]:
    """A record's bytes, and whether only this user could have written it:
    a regular file reached without a symlink (store.read_owned), owned by
    us and writable by no one else."""
    raw, info = read_owned(path, MAX_RECORD + 1, follow=False, dirs=dirs)
    return raw, info.st_uid == os.geteuid() and not info.st_mode & 0o022


def _not_ours(output: Path, path: Path | str) -> None:
    # Someone else could have written this verdict: the staple is checked in full.
    log.debug("%s: %s is not ours alone; nothing in it is used", output, path)


def save(output: Path, state_dir: Path | None, record: Record, *, lock_timeout: float, quiet: bool = False,
         dirs: Dirs | None = None, locked: bool = False) -> None:
    """Write the record atomically, under the output's lock (``locked``: the
    caller holds it already); a failure is a warning (info when ``quiet``:
    the staple's own error already said why), never a lost staple.

    Beside the staple, the record's temp file is named after the staple, so
    the staple's own cleanup of a killed run's temp files (which lists each
    directory once per run) removes it too; nothing here scans the directory,
    which for thousands of staples in one directory would be quadratic.  In a
    state directory a killed run's temp file stays (it is a few hundred bytes).
    """
    # The staple's file, resolved once for the record's path and its temp file's name.
    target = target_file(output) if state_dir is None else None
    path = state_path(output, state_dir, target)
    prefix = f".{os.path.basename(target)}.state." if target is not None else None
    try:
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.nullcontext() if locked else lock_output(output, timeout=lock_timeout, leftovers=_none,
                                                                  dirs=dirs):
            # One line: with an indent, json encodes in Python, a tenth of a
            # written staple's CPU; `jq . FILE` shows it indented.
            # Not fsynced: losing the latest record to a power cut costs nothing.
            # Not followed: a symlink at the record's name is replaced, never written through.
            atomic_write(path, (json.dumps(record.to_json(), sort_keys=True) + "\n").encode(),
                         temp_prefix=prefix, durable=False, follow=False, dirs=dirs)
    except (StoreError, OSError) as e:
        log.log(logging.INFO if quiet else logging.WARNING, "%s: cannot save the state record %s: %s", output, path, e)


def _none(path: Path) -> list[Path]:
    return []
