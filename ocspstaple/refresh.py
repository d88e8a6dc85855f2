"""One staple's whole story: decide, fetch, validate, compare, write.

The clock, the network and the disk come in as parameters; this module reads
none of them on its own.
"""
from __future__ import annotations

import copy
import datetime as dt
import enum
import hashlib
import logging
import os
import pickle
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

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
from ocspstaple.fetch import Fetched, HttpReply, Origins, Transport, fetch
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

#: Staples refreshed at once when --jobs is not given: twice the per-host cap
#: (fetch.MAX_PER_HOST), so that checking and writing the staples whose answers
#: are in overlaps the next requests to a responder, and two responders are
#: each asked 8 at a time.
DEFAULT_JOBS = 16
#: From this many staples on, a second process looks at half of them first
#: (see _quick_all).
SPLIT_AT = 1000

Clock = Callable[[], dt.datetime]
#: (timeout, proxy) -> a transport; lets one run share connections per setting.
Network = Callable[[float, "str | None"], Transport]
#: The verdict of the last full check of a staple (from its state record), if any.
Recall = Callable[[Staple], "Checked | None"]

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


def refresh_all(
    staples: Sequence[Staple | BadEntry],
    *,
    network: Network,
    clock: Clock,
    store: Store,
    jobs: int | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    hold: Callable[[Staple], dt.datetime | None] | None = None,
    recall: Recall | None = None,
    split_at: int = SPLIT_AT,
    origins: Origins | None = None,
) -> list[Outcome]:
    """Refresh every staple; one failure never stops the others.

    Outcomes come back in the order of ``staples``; each one's log line is
    emitted as soon as that staple is done.  ``jobs``: how many staples are
    refreshed at once (default DEFAULT_JOBS), by a pool of worker threads.
    Each staple is still decided, validated, compared and written under its
    own output lock, exactly as alone.  Shared by the whole run:

    * the network: one transport per (timeout, proxy), made only once a
      staple is due (a run where nothing is due imports no HTTP code);
    * identical requests (the same request to the same URL with the same
      settings: the same certificate and issuer configured for several
      outputs) are sent once, and every staple asking gets that answer to
      validate for itself;
    * an issuer file named by many staples is read and parsed once.

    ``recall``: the verdict of a staple's last full check (see state.Checked).
    Every staple is first looked at without the pool: one whose certificate,
    issuer and staple are byte for byte what an earlier run verified, and
    which is usable and not due, is FRESH without verifying a signature (and
    without the pool's hand-offs).  The rest go to the pool.  With
    ``split_at`` staples or more, a forked process looks at half of them
    (see _quick_all).

    The per-responder cap on requests in flight (fetch.MAX_PER_HOST) is the
    transport's: HttpTransport holds each request's slot until its socket
    work is over.
    """
    shared = _Shared(network, hold, recall)
    jobs = DEFAULT_JOBS if jobs is None else max(1, jobs)
    #: kept staples whose responder gave no answer: said at the end, once per origin found down
    deferred: list[Outcome] = []

    def done(outcome: Outcome) -> Outcome:
        if outcome.unreachable and outcome.result is Result.KEPT:
            deferred.append(outcome)
        else:
            report(outcome)
        if on_done is not None:
            on_done(outcome)  # e.g. a progress bar; called from the worker threads
        return outcome

    def one(st: Staple | BadEntry) -> Outcome:
        return done(_one(st, shared, clock=clock, store=store))

    outcomes = _quick_all(staples, shared, clock=clock, store=store, split_at=split_at)
    for o in outcomes:
        if o is not None:
            done(o)
    rest = [i for i, o in enumerate(outcomes) if o is None]
    try:
        if jobs == 1 or len(rest) <= 1:
            for i in rest:
                outcomes[i] = one(staples[i])
        else:
            pool = ThreadPoolExecutor(max_workers=min(jobs, len(rest)), thread_name_prefix="ocspstaple-job")
            try:
                futures: list[tuple[int, Future[Outcome]]] = [(i, pool.submit(one, staples[i])) for i in rest]
                for i, f in futures:
                    outcomes[i] = f.result()
            except BaseException:
                # Ctrl-C: staples not started are left alone; the ones in progress
                # finish (their writes are atomic either way).
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    except BaseException:
        for o in deferred:
            report(o)
        raise
    finished = _all(outcomes)
    tell_down(finished, deferred, origins.down() if origins is not None else {})
    return finished


def _all(outcomes: list[Outcome | None]) -> list[Outcome]:
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def _quick_all(
    staples: Sequence[Staple | BadEntry], shared: _Shared, *, clock: Clock, store: Store, split_at: int
) -> list[Outcome | None]:
    """_quick for every staple; with ``split_at`` or more, in two processes.

    Looking at a recalled staple is a few file reads and a little Python per
    staple, all under the GIL: threads cannot share it, but a forked child
    can take the second half on another core.  It only reads (its outcomes
    come back pickled through a pipe; the log lines, the progress and every
    write stay with this process) and anything it could not do, or a child
    that fails, is simply decided in full here.  No fork while other threads
    run (a fork copies their held locks) or on one CPU.
    """
    def look(part: Sequence[Staple | BadEntry]) -> list[Outcome | None]:
        return [_quick(st, shared, clock=clock, store=store) for st in part]

    n = len(staples)
    if n < split_at or n < 2 or not hasattr(os, "fork") or _cpus() < 2 or threading.active_count() > 1:
        return look(staples)
    half = n // 2
    theirs = staples[half:]
    r, w = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice
        if stream is not None:  # None: started with the descriptor closed
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    try:
        pid = os.fork()
    except OSError as e:  # no process to be had (a limit, memory): all of it here
        log.debug("cannot fork (%s); looking at every staple in this process", e)
        os.close(r)
        os.close(w)
        return look(staples)
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            data = pickle.dumps(look(theirs),
                                protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as f:
                f.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as pipe:
            mine = look(staples[:half])
            data = pipe.read()
    except BaseException:  # Ctrl-C: the child must not outlive us
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    os.waitpid(pid, 0)
    try:
        got = pickle.loads(data)  # from our own child, through our own pipe
    except Exception:
        got = None
    if not isinstance(got, list) or len(got) != len(theirs):
        log.debug("the second process looked at no staples; deciding them here")
        got = [None] * len(theirs)
    return mine + got


def _cpus() -> int:
    """CPUs this process may run on (a systemd CPUAffinity or taskset counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _quick(st: Staple | BadEntry, shared: _Shared, *, clock: Clock, store: Store) -> Outcome | None:
    """The outcome when it needs neither a signature check nor the network:
    a bad entry, or a staple recalled FRESH; None: decide in full."""
    if isinstance(st, BadEntry):
        return _one(st, shared, clock=clock, store=store)
    if st.force or shared.recall is None:
        return None
    try:
        return _recalled(st, shared, clock=clock, store=store)
    except Exception:  # a bug here costs only the shortcut
        log.debug("%s: recalling the last check failed", st.name, exc_info=True)
        return None


def _one(st: Staple | BadEntry, shared: _Shared, *, clock: Clock, store: Store) -> Outcome:
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


class _Shared:
    """What the staples of one run share; safe to use from many threads."""

    def __init__(self, network: Network, hold: Callable[[Staple], dt.datetime | None] | None = None,
                 recall: Recall | None = None) -> None:
        self._network = network
        #: when a staple's responder may be asked again (its max-age), from the state records
        self.hold = hold or (lambda st: None)
        self.recall = recall
        self._skew_warned = False
        self._lock = threading.Lock()
        self._transports: dict[tuple[float, str | None], _Deduped] = {}
        self._flights: dict[tuple[Any, ...], _Flight] = {}
        self._issuers: dict[Path, tuple[bytes, list[Any]] | InputError] = {}

    def check_clock(self, got: Fetched, url: str, now: dt.datetime, produced_at: dt.datetime | None) -> None:
        """Warn once per run when the responder's clock (HTTP Date; a producedAt
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
            with self._lock:
                if self._skew_warned:
                    return
                self._skew_warned = True
            side = "behind" if offset > dt.timedelta(0) else "ahead of"
            log.warning("the local clock is %s %s responder %s (by %s); check NTP: a wrong clock makes valid "
                        "responses look expired or from the future", _span(abs(offset)), side, url, what)
            return

    def network(self, timeout: float, proxy: str | None) -> Transport:
        """The run's transport for these settings, made on first use."""
        key = (timeout, proxy)
        with self._lock:
            t = self._transports.get(key)
            if t is None:
                t = self._transports[key] = _Deduped(self._network(timeout, proxy), self, key)
            return t

    def once(self, key: tuple[Any, ...], send: Callable[[], HttpReply]) -> HttpReply:
        """``send()`` for the first caller with ``key``; the same answer (or
        error) for every later or concurrent caller with it."""
        with self._lock:
            flight = self._flights.get(key)
            first = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if first:
            try:
                flight.reply = send()
            except Exception as e:
                flight.error = e
            finally:
                flight.done.set()
        else:
            flight.done.wait()
            log.debug("%s: same request as another staple; answer shared", key[2][:80])
        if flight.error is not None:
            if first or not isinstance(flight.error, FetchError):
                raise flight.error
            raise copy.copy(flight.error)  # its class and origin, without the first caller's traceback
        assert flight.reply is not None
        return flight.reply

    def inputs(self, st: Staple) -> Inputs:
        """The certificate file's bytes, and the issuer file's (read and
        parsed once per run: many staples name one issuer file)."""
        cert = read_pem_bytes(st.cert)
        if st.issuer is None:
            return Inputs(cert, None, None)
        with self._lock:
            issuer = self._issuers.get(st.issuer)
        if issuer is None:
            try:
                data = read_pem_bytes(st.issuer)
                issuer = (data, parse_pem(data, name=str(st.issuer)))
            except InputError as e:
                issuer = e  # the same error for every staple naming it
            with self._lock:
                self._issuers[st.issuer] = issuer
        if isinstance(issuer, InputError):
            raise InputError(str(issuer))
        return Inputs(cert, *issuer)


@dataclass(frozen=True)
class Inputs:
    """What one staple's checks start from, as read."""

    cert: bytes
    issuer: bytes | None  # None: the issuer is in the certificate file
    issuers: list[Any] | None  # the issuer file's certificates, parsed

    def pair(self, st: Staple) -> Pair:
        return pair_of(parse_pem(self.cert, name=str(st.cert)), self.issuers, cert_path=st.cert)


def checked_digest(st: Staple, inputs: Inputs, staple: bytes) -> str:
    """SHA-256 over everything a staple's time-free checks depend on: the
    certificate and issuer files, the staple, the settings that bear on the
    checks (URLs given, default validity) and CHECKS_VERSION."""
    parts = (CHECKS_VERSION, inputs.cert, b"\0" if inputs.issuer is None else b"\1" + inputs.issuer, staple,
             "\n".join(st.urls).encode(), repr(st.default_validity.total_seconds()).encode())
    # Each part prefixed with its length, so that no bytes can move from one part to the next.
    return hashlib.sha256(b"".join(len(p).to_bytes(8, "big") + p for p in parts)).hexdigest()


class _Flight:
    __slots__ = ("done", "reply", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: HttpReply | None = None
        self.error: Exception | None = None


class _Deduped:
    """A transport whose identical requests within one run are sent once."""

    def __init__(self, inner: Transport, shared: _Shared, settings: tuple[float, str | None]) -> None:
        self._inner = inner
        self._shared = shared
        self._settings = settings

    def get(self, url: str) -> HttpReply:
        return self._shared.once((self._settings, "GET", url, None), lambda: self._inner.get(url))

    def post(self, url: str, body: bytes) -> HttpReply:
        return self._shared.once((self._settings, "POST", url, body), lambda: self._inner.post(url, body))


_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 70: logging.ERROR}


def tell_down(outcomes: Sequence[Outcome], deferred: Sequence[Outcome], down: dict[str, str]) -> None:
    """Say once per origin found ``down`` (origin -> how, see
    fetch.Origins.down) what it cost: how many staples, how many kept and until when at
    the earliest, which are now missing.  A kept staple of such an origin has
    its own line only under -v; ``deferred`` kept staples whose origin was
    not found down get theirs now.  A staple left without a valid one has had
    its own error line already."""
    groups: dict[tuple[str, ...], list[Outcome]] = {}
    for o in outcomes:
        if o.unreachable and all(origin in down for origin in o.unreachable):
            groups.setdefault(o.unreachable, []).append(o)
    grouped = {id(o) for group in groups.values() for o in group}
    for o in deferred:
        if id(o) in grouped:
            log.info("%s: %s", o.name, o.message)
        else:
            report(o)
    for key, group in groups.items():
        kept = [o.staple.expires for o in group if o.staple is not None]
        missing = [o.name for o in group if o.staple is None]
        what = "; ".join(f"responder {origin} is down ({down[origin]} this run)"
                         for origin in key)
        parts = [f"{len(group)} staple(s) not refreshed"]
        if kept:
            parts.append(f"{len(kept)} kept (the first runs out {fmt_time(min(kept))})")
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            parts.append(f"{len(missing)} now without a valid staple: {shown}")
        log.log(logging.ERROR if missing else logging.WARNING, "%s: %s", what, "; ".join(parts))


def report(o: Outcome) -> None:
    """One log line per staple: info when fine, warning when kept, error otherwise."""
    log.log(_LEVELS[_EXIT[o.result]], "%s: %s", o.name, o.message)


def refresh_one(st: Staple, *, network: Network, clock: Clock, store: Store) -> Outcome:
    """Refresh one staple: fetch if due, write only a valid and fresher response."""
    return _refresh_one(st, _Shared(network), clock=clock, store=store)


def _span(d: dt.timedelta) -> str:
    minutes = round(d.total_seconds() / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def _recalled(st: Staple, shared: _Shared, *, clock: Clock, store: Store) -> Outcome | None:
    """FRESH from the verdict of an earlier full check (state.Checked), when
    the certificate, issuer and staple are byte for byte what it checked, and
    the staple is usable now and not due; None: decide in full."""
    assert shared.recall is not None
    checked = shared.recall(st)
    if checked is None or _leftovers(store, st.output):
        return None
    try:
        inputs = shared.inputs(st)
        data = store.read(st.output)
    except (InputError, StoreError):
        return None  # said in full by the full decision
    if data is None or checked_digest(st, inputs, data) != checked.digest:
        return None
    r = checked.response
    staple = VerifiedResponse(  # replace(r, der=data), without its generic machinery
        der=data, status=r.status, this_update=r.this_update, next_update=r.next_update, produced_at=r.produced_at,
        expires=r.expires, signer=r.signer, signer_not_before=r.signer_not_before,
        revocation_time=r.revocation_time, revocation_reason=r.revocation_reason)
    now = clock()
    try:
        check_window(staple, now=now)
    except ValidationError:
        return None
    disk = Disk(staple, staple if staple.status is CertStatus.REVOKED else None, "")
    outcome = _fresh(st, disk, now, shared, checked.digest)
    if outcome is None:
        return None
    return _must_staple(outcome) if checked.must_staple else outcome


def _refresh_one(st: Staple, shared: _Shared, *, clock: Clock, store: Store) -> Outcome:
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
    if not st.force and not _leftovers(store, st.output):
        now = clock()
        outcome = _fresh(st, inspect_disk(store, st, pair, now), now, shared)
    if outcome is None:
        try:
            with store.lock(st.output, timeout=st.lock_timeout):
                outcome = _refresh_locked(st, pair, urls, shared=shared, clock=clock, store=store)
        except StoreError as e:
            # The lock could not be had: say what the staple on disk is worth anyway.
            outcome = _failed(st, str(e), inspect_disk(store, st, pair, clock()))
    if outcome.staple is not None:
        outcome = replace(outcome, digest=checked_digest(st, inputs, outcome.staple.der))
    return _must_staple(outcome) if must_staple(pair.cert) else outcome


def _must_staple(o: Outcome) -> Outcome:
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
    st: Staple, pair: Pair, urls: tuple[str, ...], *, shared: _Shared, clock: Clock, store: Store
) -> Outcome:
    now = clock()
    disk = inspect_disk(store, st, pair, now)
    fresh = None if st.force else _fresh(st, disk, now, shared)
    if fresh is not None:
        return fresh
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
    due: bool, shared: _Shared, clock: Clock,
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
    shared: _Shared, clock: Clock, why: str,
) -> tuple[VerifiedResponse, str]:
    log.debug("%s: %s; asking again with POST", st.name, why)
    again = fetch(transport, url, request, uncached=True)
    newer = _validated(again, url, pair, st, shared, clock)
    try:
        _check_fresher(newer, disk)
    except StaleError as e:
        raise _Stale(e, _retry_after(again, clock())) from None
    return newer, f"; {why}, POST gave the fresher one"


def _validated(got: Fetched, url: str, pair: Pair, st: Staple, shared: _Shared, clock: Clock) -> VerifiedResponse:
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
        shared.check_clock(got, url, now, signed.produced_at if signed else None)
        raise _Refused(e, signed) from None
    shared.check_clock(got, url, now, new.produced_at)
    return new


def _retry_after(got: Fetched, now: dt.datetime) -> dt.datetime | None:
    age = got.max_age
    return now + dt.timedelta(seconds=age) if age else None


def _leftovers(store: Store, path: Path) -> bool:
    """Whether a killed run may have left a temp file beside ``path``, which
    only a visit under the lock removes (True when the store cannot tell)."""
    find = getattr(store, "leftovers", None)
    if find is None:
        return True
    try:
        return bool(find(path))
    except Exception:
        return True


def _fresh(st: Staple, disk: Disk, now: dt.datetime, shared: _Shared, digest: str | None = None) -> Outcome | None:
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
