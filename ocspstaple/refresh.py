"""One staple's whole story: decide, fetch, validate, compare, write.

The clock, the network and the disk come in as parameters; this module reads
none of them on its own.
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ocspstaple.certs import Pair, build_request, load_pair, ocsp_urls
from ocspstaple.config import BadEntry, Staple
from ocspstaple.errors import FetchError, InputError, StaleError, StoreError, ValidationError
from ocspstaple.fetch import Transport, fetch_response
from ocspstaple.store import Store
from ocspstaple.urls import check_url
from ocspstaple.validate import CertStatus, VerifiedResponse, check_window, fmt_time, validate, verify

log = logging.getLogger(__name__)

#: Staples refreshed at once when --jobs is not given.
DEFAULT_JOBS = 8

Clock = Callable[[], dt.datetime]
#: (timeout, proxy) -> a transport; lets one run share connections per setting.
Network = Callable[[float, "str | None"], Transport]


class Result(enum.Enum):
    """What became of one staple; the value is the exit code it asks for."""

    WRITTEN = "written"  # a fresher good response was written
    FRESH = "fresh"  # usable and not yet due: nothing fetched
    UNCHANGED = "unchanged"  # due, but the responder had nothing newer; still valid
    KEPT = "kept"  # the refresh failed; the previous staple is kept and valid
    MISSING = "missing"  # no valid staple on disk, and none could be had
    REVOKED = "revoked"  # the staple on disk says revoked
    BAD_INPUT = "bad-input"  # unreadable certificate, wrong issuer, no URL, bad config

    @property
    def exit_code(self) -> int:
        return _EXIT[self]


_EXIT = {
    Result.WRITTEN: 0, Result.FRESH: 0, Result.UNCHANGED: 0,
    Result.KEPT: 1,
    Result.MISSING: 2, Result.REVOKED: 2, Result.BAD_INPUT: 2,
}


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The result for one staple, with the one line that explains it."""

    name: str
    output: Path | None
    result: Result
    message: str
    #: the valid staple on disk after the run, if any
    staple: VerifiedResponse | None = None
    changed: bool = False


@dataclass(frozen=True)
class _Disk:
    """What the staple file holds, as far as it matters for this certificate."""

    usable: VerifiedResponse | None  # valid now
    revoked: VerifiedResponse | None  # a validly signed revocation, whether or not it is still current
    problem: str  # why there is no usable staple ("" when there is one)


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """The run's exit code: the worst of its staples'."""
    return max((o.result.exit_code for o in outcomes), default=0)


def refresh_all(
    staples: Sequence[Staple | BadEntry],
    *,
    network: Network,
    clock: Clock,
    store: Store,
    jobs: int | None = None,
) -> list[Outcome]:
    """Refresh every staple; one failure never stops the others.

    Outcomes come back in the order of ``staples``.  ``jobs``: how many
    staples are refreshed at once (default DEFAULT_JOBS).
    """
    outcomes = []
    for st in staples:
        if isinstance(st, BadEntry):
            outcome = Outcome(name=st.name, output=None, result=Result.BAD_INPUT, message=st.reason)
        else:
            try:
                outcome = refresh_one(st, network=network, clock=clock, store=store)
            except Exception as e:  # a bug must not stop the other staples
                log.debug("%s: internal error", st.name, exc_info=True)
                outcome = Outcome(name=st.name, output=st.output, result=Result.BAD_INPUT,
                                  message=f"internal error, staple left as it was ({type(e).__name__}: {e})")
        report(outcome)
        outcomes.append(outcome)
    return outcomes


def report(o: Outcome) -> None:
    """One log line per staple: info when fine, warning when kept, error otherwise."""
    level = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}[o.result.exit_code]
    log.log(level, "%s: %s", o.name, o.message)


def refresh_one(st: Staple, *, network: Network, clock: Clock, store: Store) -> Outcome:
    """Refresh one staple: fetch if due, write only a valid and fresher response."""
    try:
        pair = load_pair(st.cert, st.issuer)
        urls = _urls(st, pair)
    except InputError as e:
        return Outcome(name=st.name, output=st.output, result=Result.BAD_INPUT, message=str(e))
    try:
        with store.lock(st.output, timeout=st.lock_timeout):
            return _refresh_locked(st, pair, urls, network=network, clock=clock, store=store)
    except StoreError as e:
        # The lock could not be had: say what the staple on disk is worth anyway.
        disk = _inspect(store, st, pair, clock())
        return _failed(st, str(e), disk)


def _urls(st: Staple, pair: Pair) -> tuple[str, ...]:
    if st.urls:
        return tuple(check_url(u) for u in st.urls)
    named = ocsp_urls(pair.cert)
    usable = tuple(u for u in named if u.lower().startswith(("http://", "https://")))
    if not usable:
        if named:
            raise InputError(f"certificate names no http(s) OCSP URL (only {', '.join(named)}); give --url")
        raise InputError("certificate names no OCSP responder URL (its CA may have ended OCSP); give --url")
    return usable


def _inspect(store: Store, st: Staple, pair: Pair, now: dt.datetime) -> _Disk:
    try:
        data = store.read(st.output)
    except StoreError as e:
        return _Disk(None, None, str(e))
    if data is None:
        return _Disk(None, None, "none on disk")
    try:
        resp = verify(data, pair=pair, default_validity=st.default_validity)
    except ValidationError as e:
        return _Disk(None, None, f"the one on disk is unusable: {e}")
    revoked = resp if resp.status is CertStatus.REVOKED else None
    try:
        check_window(resp, now=now)
    except ValidationError as e:
        return _Disk(None, revoked, f"the one on disk is unusable: {e}")
    return _Disk(resp, revoked, "")


def _refresh_locked(
    st: Staple, pair: Pair, urls: tuple[str, ...], *, network: Network, clock: Clock, store: Store
) -> Outcome:
    now = clock()
    disk = _inspect(store, st, pair, now)
    if disk.usable is not None and not st.force:
        due = disk.usable.refresh_due(st.refresh_at)
        if now < due:
            about = "" if disk.usable.status is CertStatus.REVOKED else f" ({_describe(disk.usable)})"
            message = f"staple still fresh{about}; next refresh after {fmt_time(due)}"
            return _kept(st, disk.usable, Result.FRESH, message)

    request = build_request(pair)
    transport = network(st.timeout, st.proxy)
    failures: list[str] = []
    for url in urls:
        try:
            body = fetch_response(transport, url, request)
            new = validate(body, pair=pair, now=clock(), default_validity=st.default_validity)
            _check_fresher(new, disk)
        except StaleError as e:
            if disk.usable is not None and new.this_update == disk.usable.this_update:
                return _kept(st, disk.usable, Result.UNCHANGED,
                             f"responder has nothing newer (thisUpdate {fmt_time(new.this_update)}); "
                             f"staple valid until {fmt_time(disk.usable.expires)}")
            failures.append(_from(url, urls, str(e)))
            continue
        except (FetchError, ValidationError, InputError) as e:
            failures.append(_from(url, urls, str(e)))
            continue
        try:
            store.write(st.output, new.der)
        except StoreError as e:
            if new.status is CertStatus.REVOKED:
                # Never quieter than the revocation itself.
                return Outcome(name=st.name, output=st.output, result=Result.REVOKED, staple=disk.usable,
                               message=f"certificate is REVOKED ({_describe(new)}), but {e}")
            return _failed(st, str(e), disk)
        if new.status is CertStatus.REVOKED:
            return Outcome(
                name=st.name, output=st.output, result=Result.REVOKED, staple=new, changed=True,
                message=f"certificate is REVOKED ({_describe(new)}); wrote the revoked staple to {st.output}",
            )
        return Outcome(name=st.name, output=st.output, result=Result.WRITTEN, staple=new, changed=True,
                       message=f"wrote {st.output} ({_describe(new)})")
    return _failed(st, "; ".join(failures), disk)


def _from(url: str, urls: tuple[str, ...], reason: str) -> str:
    return reason if len(urls) == 1 or url in reason else f"{url}: {reason}"


def _check_fresher(new: VerifiedResponse, disk: _Disk) -> None:
    """Spec invariant 6, and revocation is final."""
    if disk.revoked is not None and new.status is CertStatus.GOOD:
        raise ValidationError(
            "responder says good, but a validly signed revocation "
            f"(revoked {fmt_time(disk.revoked.revocation_time or disk.revoked.this_update)}) is on disk; "
            "revocation is final, refused"
        )
    cur = disk.usable
    if cur is None:
        return
    if new.this_update < cur.this_update:
        raise StaleError(
            f"responder sent an older response (thisUpdate {fmt_time(new.this_update)}) than the staple "
            f"on disk ({fmt_time(cur.this_update)}): a replay or a stale cache, refused"
        )
    if new.this_update == cur.this_update and not (
        new.status is CertStatus.REVOKED and cur.status is CertStatus.GOOD
    ):
        # Equal changes nothing; but a signed revocation beside a good
        # response of the same moment is passed on, never hidden.
        raise StaleError("responder sent the same response as the staple on disk")


def _failed(st: Staple, reason: str, disk: _Disk) -> Outcome:
    if disk.usable is not None:
        return _kept(st, disk.usable, Result.KEPT, f"{reason}; kept staple valid until {fmt_time(disk.usable.expires)}")
    return Outcome(name=st.name, output=st.output, result=Result.MISSING,
                   message=f"{reason}; no valid staple ({disk.problem})")


def _kept(st: Staple, staple: VerifiedResponse, result: Result, message: str) -> Outcome:
    if staple.status is CertStatus.REVOKED:
        result = Result.REVOKED
        message = f"certificate is REVOKED ({_describe(staple)}); " + message
    return Outcome(name=st.name, output=st.output, result=result, message=message, staple=staple)


def _describe(r: VerifiedResponse) -> str:
    if r.status is CertStatus.REVOKED:
        what = f"revoked {fmt_time(r.revocation_time)}" if r.revocation_time else "revoked"
        if r.revocation_reason:
            what += f", reason {r.revocation_reason}"
    else:
        what = "good"
    return f"{what}, thisUpdate {fmt_time(r.this_update)}, valid until {fmt_time(r.expires)}, signed by {r.signer}"
