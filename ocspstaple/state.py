"""What the last attempts were, per staple: so `status` can tell
"responder down for 14 hours" from "fine".

One small JSON record per staple, written atomically after a run that tried
to fetch it (a run where the staple was still fresh writes nothing, so a
no-op run stays cheap).  By default the record sits beside the staple as
``.NAME.state.json`` (a dotfile: HAProxy's ``crt DIR`` loads every other file
as a certificate); with a state directory, in that directory under a name
derived from the output's absolute path.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ocspstaple.errors import StoreError
from ocspstaple.store import atomic_write, lock_output, resolve_target

log = logging.getLogger(__name__)

VERSION = 1
#: A record is a few hundred bytes; anything larger is not ours.
MAX_RECORD = 64 << 10
#: The last error is kept to this many characters.
MAX_ERROR = 2000


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

    def succeeded(self, now: dt.datetime, result: str, retry_after: dt.datetime | None = None) -> Record:
        now = now.replace(microsecond=0)  # as saved: the same value in this run's metrics and the next's
        return Record(last_attempt=now, last_success=now, last_result=result, retry_after=retry_after)

    def failed(self, now: dt.datetime, result: str, error: str) -> Record:
        now = now.replace(microsecond=0)
        return replace(self, last_attempt=now, failing_since=self.failing_since or now,
                       consecutive_failures=self.consecutive_failures + 1,
                       last_error=error[:MAX_ERROR], last_result=result)

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"version": VERSION}
        for k, v in asdict(self).items():
            d[k] = iso(v) if isinstance(v, dt.datetime) else v
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
        return cls(**times, consecutive_failures=failures, last_error=error, last_result=result)


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


def state_path(output: Path, state_dir: Path | None) -> Path:
    """Where the record of ``output`` lives: beside the file the staple is
    (for a symlinked output, beside the link's target)."""
    if state_dir is None:
        target = resolve_target(output)
        return target.with_name(f".{target.name}.state.json")
    key = hashlib.sha256(str(output.absolute()).encode()).hexdigest()[:16]
    return state_dir / f"{output.name}.{key}.json"


def load(output: Path, state_dir: Path | None) -> Record:
    """The record of ``output``; an empty one if there is none or it is unreadable."""
    path = state_path(output, state_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECORD + 1)
    except FileNotFoundError:
        return Record()
    except OSError as e:
        log.debug("%s: cannot read %s: %s", output, path, e)
        return Record()
    try:
        if len(raw) > MAX_RECORD:
            raise ValueError("too large")
        return Record.from_json(json.loads(raw))
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        log.warning("%s: ignoring unreadable state record %s (%s)", output, path, e)
        return Record()


def save(output: Path, state_dir: Path | None, record: Record, *, lock_timeout: float, quiet: bool = False) -> None:
    """Write the record atomically, under the output's lock; a failure is a
    warning (info when ``quiet``: the staple's own error already said why),
    never a lost staple.

    Beside the staple, the record's temp file is named after the staple, so
    the staple's own cleanup of a killed run's temp files (which lists each
    directory once per run) removes it too; nothing here scans the directory,
    which for thousands of staples in one directory would be quadratic.  In a
    state directory a killed run's temp file stays (it is a few hundred bytes).
    """
    path = state_path(output, state_dir)
    try:
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        with lock_output(output, timeout=lock_timeout, leftovers=_none):
            prefix = f".{resolve_target(output).name}.state." if state_dir is None else None
            # Not fsynced: losing the latest record to a power cut costs nothing.
            atomic_write(path, (json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n").encode(),
                         temp_prefix=prefix, durable=False)
    except (StoreError, OSError) as e:
        log.log(logging.INFO if quiet else logging.WARNING, "%s: cannot save the state record %s: %s", output, path, e)


def _none(path: Path) -> list[Path]:
    return []
