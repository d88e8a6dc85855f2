"""One staple's whole story: decide, fetch, validate, compare, write.

The clock, the network and the disk come in as parameters; this module reads
none of them on its own.  What a staple shares with the other staples of its
run (transports, the issuer files read once, the responder's max-age from the
state records, the once-per-run clock warning) comes in as ``Services``, a
Protocol defined here and met by ocspstaple.run, which this module never
imports; ``refresh_one`` is a staple alone, with services of its own.
"""
from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from ocspstaple.certs import Pair, build_request, must_staple, ocsp_urls, pair_of, parse_pem, read_pem_bytes
from ocspstaple.config import AIA, BadEntry, Staple
from ocspstaple.errors import (
    FetchError,
    InputError,
    StaleError,
    StoreError,
    TrustError,
    UnreachableError,
    ValidationError,
)
from ocspstaple.fetch import Fetched, Transport, fetch
from ocspstaple.state import Checked
from ocspstaple.store import Store
from ocspstaple.urls import check_url
from ocspstaple.validate import (
    MIN_REMAINING,
    SKEW,
    CertStatus,
    VerifiedResponse,
    check_window,
    fmt_time,
    validate,
    verify,
)

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
#: (timeout, proxy) -> a transport; lets one run share connections per setting.
Network = Callable[[float, "str | None"], Transport]

#: Part of every checked_digest: raise it whenever a check of validate.verify,
#: certs.pair_of or must_staple changes, so that no older verdict is taken.
CHECKS_VERSION = b"ocspstaple checks 2"  # 2: SHA-1 CertIDs only, SHA-1 signatures, extensions by place


class Result(enum.Enum):
    """What became of one staple; the value is the exit code it asks for."""

    WRITTEN = "written"  # a fresher good response was written
    FRESH = "fresh"  # usable and not yet due: nothing fetched
    UNCHANGED = "unchanged"  # due, but the responder had nothing newer; still valid
    KEPT = "kept"  # the refresh failed; the previous staple is kept and valid
    AT_RISK = "at-risk"  # as KEPT, for a must-staple certificate: browsers hard-fail once it runs out
    MISSING = "missing"  # no valid staple on disk, and none could be had
    REVOKED = "revoked"  # the staple on disk says revoked
    BAD_INPUT = "bad-input"  # unreadable certificate, wrong issuer, no URL, bad config
    INTERNAL = "internal-error"  # a bug; the staple is left as it was

    @property
    def exit_code(self) -> int:
        return _EXIT[self]


_EXIT = {
    Result.WRITTEN: 0, Result.FRESH: 0, Result.UNCHANGED: 0,
    Result.KEPT: 1,
    Result.MISSING: 2, Result.REVOKED: 2, Result.BAD_INPUT: 2, Result.AT_RISK: 2,
    # sysexits.h EX_SOFTWARE: a crash must not look like "kept" (1), which the
    # systemd unit counts as success, nor like bad input (2)
    Result.INTERNAL: 70,
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
    #: True: a valid response was had this run; False: fetching was tried and
    #: failed; None: nothing was tried (the staple was fresh, or the input bad)
    fetched: bool | None = None
    #: why the refresh failed, without the rest of the log line
    error: str | None = None
    #: the responder's Cache-Control max-age after an answer with nothing newer:
    #: not to be asked again for this staple before then
    retry_after: dt.datetime | None = None
    #: the certificate asks for a staple in every handshake (RFC 7633)
    must_staple: bool = False
    #: checked_digest of the inputs and ``staple``, for the state record
    digest: str | None = None
    #: the refresh failed only because these responder origins gave no answer
    #: at all (timed out, refused, reset, or found down and not asked)
    unreachable: tuple[str, ...] = ()
    #: ``staple`` passed a full check this run (not recalled from the state
    #: record): its verdict is worth saving even when nothing was fetched
    verified: bool = False

    def checked(self) -> Checked | None:
        """The verdict to keep in the state record: ``staple`` passed every
        check but the time window, with the inputs of ``digest``."""
        if self.staple is None or self.digest is None:
            return None
        return Checked(digest=self.digest, response=replace(self.staple, der=b""), must_staple=self.must_staple)


@dataclass(frozen=True)
class Disk:
    """What the staple file holds, as far as it matters for this certificate."""

    usable: VerifiedResponse | None  # valid now
    revoked: VerifiedResponse | None  # a validly signed revocation, whether or not it is still current
    problem: str  # why there is no usable staple ("" when there is one)
    #: a validly signed staple that is not usable only because it looks "from
    #: the future" (the local clock is behind): nothing older may replace it
    ahead: VerifiedResponse | None = None


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """The run's exit code: the worst of its staples'."""
    return max((o.result.exit_code for o in outcomes), default=0)


class Services(Protocol):
    """What one staple's refresh asks of its run; safe to call from many threads."""

    def network(self, timeout: float, proxy: str | None) -> Transport:
        """The transport for these settings."""
        ...

    def inputs(self, st: Staple) -> Inputs:
        """The staple's certificate and issuer files, as read (InputError when unreadable)."""
        ...

    def hold(self, st: Staple) -> dt.datetime | None:
        """Not to ask the staple's responder before then (its max-age, from the state record)."""
        ...

    def clock_warning(self, text: str) -> None:
        """Say ``text`` (the local clock looks wrong); a run says it once."""
        ...

    def settled(self, outcome: Outcome) -> None:
        """``outcome`` is the staple's final one and its output lock is still
        held: a run saves the state record now, without taking the lock again.
        Never raises."""
        ...


class _Alone:
    """The Services of a staple refreshed on its own (refresh_one)."""

    def __init__(self, network: Network) -> None:
        self._network = network

    def network(self, timeout: float, proxy: str | None) -> Transport:
        return self._network(timeout, proxy)

    def inputs(self, st: Staple) -> Inputs:
        return read_inputs(st)

    def hold(self, st: Staple) -> dt.datetime | None:
        return None

    def clock_warning(self, text: str) -> None:
        log.warning("%s", text)

    def settled(self, outcome: Outcome) -> None:
        pass


def one(st: Staple | BadEntry, shared: Services, *, clock: Clock, store: Store) -> Outcome:
    """The outcome of one entry of a run; never raises (a bug is INTERNAL)."""
    if isinstance(st, BadEntry):
        return Outcome(name=st.name, output=None, result=Result.BAD_INPUT, message=st.reason)
    try:
        return _refresh_one(st, shared, clock=clock, store=store)
    except TrustError as e:
        # Nothing is fetched for a staple that could not be written safely.
        return Outcome(name=st.name, output=st.output, result=Result.BAD_INPUT, message=str(e))
    except Exception as e:  # a bug must not stop the other staples
        log.debug("%s: internal error", st.name, exc_info=True)
        return Outcome(name=st.name, output=st.output, result=Result.INTERNAL,
                       message=f"internal error, staple left as it was ({type(e).__name__}: {e}); please report")


@dataclass(frozen=True)
class Inputs:
    """What one staple's checks start from, as read."""

    cert: bytes
    issuer: bytes | None  # None: the issuer is in the certificate file
    issuers: list[Any] | None  # the issuer file's certificates, parsed

    def pair(self, st: Staple) -> Pair:
        return pair_of(parse_pem(self.cert, name=str(st.cert)), self.issuers, cert_path=st.cert)


def read_inputs(st: Staple) -> Inputs:
    """The staple's certificate and issuer files; InputError when unreadable."""
    cert = read_pem_bytes(st.cert)
    return Inputs(cert, None, None) if st.issuer is None else Inputs(cert, *read_issuer(st.issuer))


def read_issuer(path: Path) -> tuple[bytes, list[Any]]:
    """An issuer file's bytes and its certificates, parsed; InputError when unusable."""
    data = read_pem_bytes(path)
    return data, parse_pem(data, name=str(path))


def checked_digest(st: Staple, inputs: Inputs, staple: bytes) -> str:
    """SHA-256 over everything a staple's time-free checks depend on: the
    certificate and issuer files, the staple, the settings that bear on the
    checks (URLs given, default validity) and CHECKS_VERSION."""
    parts = (CHECKS_VERSION, inputs.cert, b"\0" if inputs.issuer is None else b"\1" + inputs.issuer, staple,
             "\n".join(st.urls).encode(), repr(st.default_validity.total_seconds()).encode())
    # Each part prefixed with its length, so that no bytes can move from one part to the next.
    return hashlib.sha256(b"".join(len(p).to_bytes(8, "big") + p for p in parts)).hexdigest()


_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 70: logging.ERROR}


def report(o: Outcome) -> None:
    """One log line per staple: info when fine, warning when kept, error otherwise."""
    log.log(_LEVELS[_EXIT[o.result]], "%s: %s", o.name, o.message)


def refresh_one(st: Staple, *, network: Network, clock: Clock, store: Store) -> Outcome:
    """Refresh one staple: fetch if due, write only a valid and fresher response."""
    return _refresh_one(st, _Alone(network), clock=clock, store=store)


def _span(d: dt.timedelta) -> str:
    minutes = round(d.total_seconds() / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def _refresh_one(st: Staple, shared: Services, *, clock: Clock, store: Store) -> Outcome:
    try:
        inputs = shared.inputs(st)
        pair = inputs.pair(st)
        urls = _urls(st, pair)
    except InputError as e:
        return Outcome(name=st.name, output=st.output, result=Result.BAD_INPUT, message=str(e))
    # A staple that is usable and not due is left alone without taking its
    # lock: writes are atomic, so what was read is a whole staple, and
    # deciding "nothing to do" writes nothing.  This keeps a run where
    # nothing is due cheap (no lock file, no directory scan per staple).
    # Anything that may lead to a write goes through the lock and decides
    # afresh.
    outcome = None
    if not st.force and not leftovers(store, st.output):
        now = clock()
        outcome = fresh(st, inspect_disk(store, st, pair, now), now, shared)
    if outcome is None:
        try:
            with store.lock(st.output, timeout=st.lock_timeout):
                outcome = _final(st, inputs, pair, _refresh_locked(st, pair, urls, shared=shared, clock=clock,
                                                                   store=store))
                shared.settled(outcome)  # one lock per staple: the state record is saved under this one
                return outcome
        except StoreError as e:
            # The lock could not be had: say what the staple on disk is worth anyway.
            outcome = _failed(st, str(e), inspect_disk(store, st, pair, clock()))
    return _final(st, inputs, pair, outcome)


def _final(st: Staple, inputs: Inputs, pair: Pair, outcome: Outcome) -> Outcome:
    """The outcome with what the run needs of it: the checked digest of a
    verified staple (for the state record's verdict) and must-staple."""
    if outcome.staple is not None:
        outcome = replace(outcome, digest=checked_digest(st, inputs, outcome.staple.der), verified=True)
    return with_must_staple(outcome) if must_staple(pair.cert) else outcome


def with_must_staple(o: Outcome) -> Outcome:
    """A must-staple certificate: a failed refresh is an error, not a warning."""
    o = replace(o, must_staple=True)
    if o.result is Result.KEPT:
        return replace(o, result=Result.AT_RISK,
                       message=o.message + "; must-staple certificate: browsers refuse it once the staple runs out")
    if o.result is Result.MISSING:
        return replace(o, message=o.message + "; must-staple certificate: browsers refuse it without a staple")
    return o


def _urls(st: Staple, pair: Pair) -> tuple[str, ...]:
    """The URLs to ask, in order: the staple's own list (the certificate's AIA
    URLs where it says ``aia``), or the AIA URLs alone; each URL once."""
    named = ocsp_urls(pair.cert)
    aia = tuple(u for u in named if u.lower().startswith(("http://", "https://")))
    urls: list[str] = []
    for entry in st.urls or (AIA,):
        for u in aia if entry == AIA else (check_url(entry),):
            if u not in urls:
                urls.append(u)
    if not urls:
        if named:
            raise InputError(f"certificate names no http(s) OCSP URL (only {', '.join(named)}); give --url")
        raise InputError("certificate names no OCSP responder URL (its CA may have ended OCSP); give --url")
    return tuple(urls)


def inspect_disk(store: Store, st: Staple, pair: Pair, now: dt.datetime) -> Disk:
    """What the staple file holds; TrustError when it is refused outright (a
    directory or a symlink another user controls)."""
    try:
        data = store.read(st.output)
    except TrustError:
        raise
    except StoreError as e:
        return Disk(None, None, str(e))
    if data is None:
        return Disk(None, None, "none on disk")
    try:
        resp = verify(data, pair=pair, default_validity=st.default_validity)
    except ValidationError as e:
        return Disk(None, None, f"the one on disk is unusable: {e}")
    revoked = resp if resp.status is CertStatus.REVOKED else None
    try:
        check_window(resp, now=now)
    except ValidationError as e:
        ahead = resp if resp.expires > now else None  # not expired: too new for this clock
        return Disk(None, revoked, f"the one on disk is unusable: {e}", ahead)
    return Disk(resp, revoked, "")


def _refresh_locked(
    st: Staple, pair: Pair, urls: tuple[str, ...], *, shared: Services, clock: Clock, store: Store
) -> Outcome:
    now = clock()
    disk = inspect_disk(store, st, pair, now)
    not_due = None if st.force else fresh(st, disk, now, shared)
    if not_due is not None:
        return not_due
    due = disk.usable is not None and now >= disk.usable.refresh_due(st.refresh_at, st.max_refresh_interval)

    request = build_request(pair)
    transport = shared.network(st.timeout, st.proxy)
    failures: list[str] = []
    unreachable: list[str] = []  # origins that gave no answer at all
    answered = False  # some URL failed otherwise (an error answer, a refused response)
    unchanged: Outcome | None = None
    for i, url in enumerate(urls):
        try:
            new, how = _ask(transport, url, request, pair, st, disk, due=due, shared=shared, clock=clock)
        except StaleError as e:
            if disk.usable is not None and e.this_update == disk.usable.this_update:
                # The last URL with nothing newer says when to ask again: the
                # one asked last is the fallback (the CA after a relay).
                unchanged = replace(
                    _kept(st, disk.usable, Result.UNCHANGED,
                          f"responder has nothing newer (thisUpdate {fmt_time(disk.usable.this_update)}); "
                          f"staple valid until {fmt_time(disk.usable.expires)}"),
                    retry_after=e.retry_after if isinstance(e, _Stale) else None)
                if due and i + 1 < len(urls):
                    # A relay or a cache that has not caught up yet: the
                    # next URL may have the fresher one the staple is due for.
                    log.debug("%s: %s has nothing newer; asking %s", st.name, url, urls[i + 1])
                    continue
                return unchanged
            failures.append(_from(url, urls, str(e)))
            answered = True
            continue
        except (FetchError, ValidationError, InputError) as e:
            failures.append(_from(url, urls, str(e)))
            if isinstance(e, UnreachableError):
                unreachable.append(e.origin)
            else:
                answered = True
            continue
        try:
            store.write(st.output, new.der)
        except StoreError as e:
            if new.status is CertStatus.REVOKED:
                # Never quieter than the revocation itself.
                return Outcome(name=st.name, output=st.output, result=Result.REVOKED, staple=disk.usable,
                               fetched=False, error=str(e),
                               message=f"certificate is REVOKED ({_describe(new)}), but {e}")
            return _failed(st, str(e), disk)
        if new.status is CertStatus.REVOKED:
            return Outcome(
                name=st.name, output=st.output, result=Result.REVOKED, staple=new, changed=True, fetched=True,
                message=f"certificate is REVOKED ({_describe(new)}); wrote the revoked staple to {st.output}{how}",
            )
        return Outcome(name=st.name, output=st.output, result=Result.WRITTEN, staple=new, changed=True,
                       fetched=True, message=f"wrote {st.output} ({_describe(new)}){how}")
    if unchanged is not None:  # nothing newer anywhere, and the staple on disk still valid
        return unchanged
    failed = _failed(st, "; ".join(failures), disk)
    if unreachable and not answered:  # the run may say this once for all the origin's staples
        failed = replace(failed, unreachable=tuple(dict.fromkeys(unreachable)))
    return failed


class _Stale(StaleError):
    """Nothing newer, and the responder's max-age says when to ask again."""

    def __init__(self, e: StaleError, retry_after: dt.datetime | None) -> None:
        super().__init__(str(e), e.this_update)
        self.retry_after = retry_after


class _Refused(ValidationError):
    """A refused answer, and what it is once the time window is set aside
    (None when even the signature or the CertID fails): it tells the
    responder's clock, and whether a cache served a copy that ran out."""

    def __init__(self, e: ValidationError, signed: VerifiedResponse | None) -> None:
        super().__init__(str(e))
        self.signed = signed


def _ask(
    transport: Transport, url: str, request: bytes, pair: Pair, st: Staple, disk: Disk, *,
    due: bool, shared: Services, clock: Clock,
) -> tuple[VerifiedResponse, str]:
    """A valid response from ``url`` that is fresher than the staple on disk,
    and a note for the log line on how it was had; StaleError when there is none.

    A CDN may serve a cached copy to GET: when the answer to GET is a validly
    signed response that has expired, or (for a due staple) a valid one that
    is not fresher, ask once more with POST, which caches pass through.
    """
    got = fetch(transport, url, request)
    try:
        new = _validated(got, url, pair, st, shared, clock)
    except _Refused as e:
        ran_out = e.signed is not None and e.signed.expires <= clock() + MIN_REMAINING
        if got.method != "GET" or not ran_out:
            raise
        return _post_again(transport, url, request, pair, st, disk, shared=shared, clock=clock,
                           why="the GET answer had expired (a cached copy?)")
    try:
        _check_fresher(new, disk)
        return new, ""
    except StaleError as e:
        if not (due and got.method == "GET"):
            raise _Stale(e, _retry_after(got, clock())) from None
    return _post_again(transport, url, request, pair, st, disk, shared=shared, clock=clock,
                       why=f"the GET answer was older (thisUpdate {fmt_time(new.this_update)}, a cached copy?)")


def _post_again(
    transport: Transport, url: str, request: bytes, pair: Pair, st: Staple, disk: Disk, *,
    shared: Services, clock: Clock, why: str,
) -> tuple[VerifiedResponse, str]:
    log.debug("%s: %s; asking again with POST", st.name, why)
    again = fetch(transport, url, request, uncached=True)
    newer = _validated(again, url, pair, st, shared, clock)
    try:
        _check_fresher(newer, disk)
    except StaleError as e:
        raise _Stale(e, _retry_after(again, clock())) from None
    return newer, f"; {why}, POST gave the fresher one"


def _validated(got: Fetched, url: str, pair: Pair, st: Staple, shared: Services, clock: Clock) -> VerifiedResponse:
    """validate(), and the clock check on what the responder signed; _Refused when refused."""
    now = clock()
    try:
        new = validate(got.body, pair=pair, now=now, default_validity=st.default_validity)
    except ValidationError as e:
        # A producedAt ahead of us is refused by the time window; the signed
        # response still tells the responder's clock, for the warning.
        try:
            signed: VerifiedResponse | None = verify(got.body, pair=pair, default_validity=st.default_validity)
        except ValidationError:
            signed = None
        _check_clock(shared, got, url, now, signed.produced_at if signed else None)
        raise _Refused(e, signed) from None
    _check_clock(shared, got, url, now, new.produced_at)
    return new


def _check_clock(shared: Services, got: Fetched, url: str, now: dt.datetime, produced_at: dt.datetime | None) -> None:
    """Warn (once per run) when the responder's clock (HTTP Date; a producedAt
    ahead of us) differs from ours by more than the skew allowance: most
    "response is from the future" reports are a wrong local clock."""
    offsets = []
    if got.date is not None:
        offsets.append(("its HTTP Date", got.date - now))
    if produced_at is not None and produced_at - now > SKEW:
        offsets.append(("the response's producedAt", produced_at - now))
    for what, offset in offsets:
        if abs(offset) <= SKEW:
            continue
        side = "behind" if offset > dt.timedelta(0) else "ahead of"
        shared.clock_warning(f"the local clock is {_span(abs(offset))} {side} responder {url} (by {what}); check "
                             "NTP: a wrong clock makes valid responses look expired or from the future")
        return


def _retry_after(got: Fetched, now: dt.datetime) -> dt.datetime | None:
    age = got.max_age
    return now + dt.timedelta(seconds=age) if age else None


def leftovers(store: Store, path: Path) -> bool:
    """Whether a killed run may have left a temp file beside ``path``, which
    only a visit under the lock removes (True when the store cannot tell)."""
    find = getattr(store, "leftovers", None)
    if find is None:
        return True
    try:
        return bool(find(path))
    except Exception:
        return True


def fresh(st: Staple, disk: Disk, now: dt.datetime, shared: Services, digest: str | None = None) -> Outcome | None:
    """The FRESH outcome when the staple on disk is usable and not yet due, or
    due but the responder asked (max-age) not to be asked again yet; else None.
    ``digest``: the staple's checked_digest, when known."""
    if disk.usable is None:
        return None
    due = disk.usable.refresh_due(st.refresh_at, st.max_refresh_interval)
    if now >= due:
        # The responder's max-age holds back at most half of what is left
        # after the refresh point, so an outage after it still finds time.
        hold = shared.hold(st)
        if hold is None or now >= min(hold, due + (disk.usable.expires - due) / 2):
            return None
        return _kept(st, disk.usable, Result.FRESH,
                     f"staple due, but the responder's max-age says not to ask before {fmt_time(hold)}; "
                     f"staple valid until {fmt_time(disk.usable.expires)}", digest)
    about = "" if disk.usable.status is CertStatus.REVOKED else f" ({_describe(disk.usable)})"
    return _kept(st, disk.usable, Result.FRESH, f"staple still fresh{about}; next refresh after {fmt_time(due)}",
                 digest)


def _from(url: str, urls: tuple[str, ...], reason: str) -> str:
    return reason if len(urls) == 1 or url in reason else f"{url}: {reason}"


def _check_fresher(new: VerifiedResponse, disk: Disk) -> None:
    """Spec invariant 6, and revocation is final."""
    if disk.revoked is not None and new.status is CertStatus.GOOD:
        raise ValidationError(
            "responder says good, but a validly signed revocation "
            f"(revoked {fmt_time(disk.revoked.revocation_time or disk.revoked.this_update)}) is on disk; "
            "revocation is final, refused"
        )
    cur = disk.usable or disk.ahead
    if cur is None:
        return
    if new.status is CertStatus.REVOKED and cur.status is CertStatus.GOOD:
        # A validly signed revocation replaces a good staple whatever its
        # thisUpdate (spec, "revoked ... IS written"): only the CA could have
        # signed it, and it did revoke the certificate; an older one is no
        # replay to refuse, and an equal one is never hidden.
        return
    if new.this_update < cur.this_update:
        raise StaleError(
            f"responder sent an older response (thisUpdate {fmt_time(new.this_update)}) than the staple "
            f"on disk ({fmt_time(cur.this_update)}): a replay or a stale cache, refused", new.this_update)
    if new.this_update == cur.this_update:
        raise StaleError("responder sent the same response as the staple on disk", new.this_update)


def _failed(st: Staple, reason: str, disk: Disk) -> Outcome:
    if disk.usable is not None:
        kept = _kept(st, disk.usable, Result.KEPT, f"{reason}; kept staple valid until {fmt_time(disk.usable.expires)}")
        return replace(kept, error=reason)
    return Outcome(name=st.name, output=st.output, result=Result.MISSING, fetched=False, error=reason,
                   message=f"{reason}; no valid staple ({disk.problem})")


def _kept(st: Staple, staple: VerifiedResponse, result: Result, message: str, digest: str | None = None) -> Outcome:
    fetched = {Result.FRESH: None, Result.UNCHANGED: True, Result.KEPT: False}[result]
    if staple.status is CertStatus.REVOKED:
        result = Result.REVOKED
        message = f"certificate is REVOKED ({_describe(staple)}); " + message
    return Outcome(name=st.name, output=st.output, result=result, message=message, staple=staple, fetched=fetched,
                   digest=digest)


def _describe(r: VerifiedResponse) -> str:
    if r.status is CertStatus.REVOKED:
        what = f"revoked {fmt_time(r.revocation_time)}" if r.revocation_time else "revoked"
        if r.revocation_reason:
            what += f", reason {r.revocation_reason}"
    else:
        what = "good"
    return f"{what}, thisUpdate {fmt_time(r.this_update)}, valid until {fmt_time(r.expires)}, signed by {r.signer}"
