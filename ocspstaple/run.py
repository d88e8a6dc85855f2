"""A run over many staples: what the staples of one run share, and what
follows their outcomes.

Between the command line (cli.py: options in, an exit code out) and one
staple's story (refresh.py): the pool of worker threads and the order of
outcomes; the run's shared services (``Shared``, refresh.Services: one
transport per setting, identical requests sent once, issuer files read once,
the clock warning said once); the recall shortcut (a staple whose inputs an
earlier run verified is FRESH without a signature check); the transports and
the record of responder origins found down (fetch.Origins), said once per
origin; the state records saved as outcomes arrive (``Records``); and after
the staples: the HAProxy push, the deploy hook and the metrics file.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from ocspstaple.certs import read_pem_bytes
from ocspstaple.config import BadEntry, RunSettings, Staple
from ocspstaple.errors import FetchError, InputError, StoreError, ValidationError
from ocspstaple.fetch import HttpReply, Origins, Transport
from ocspstaple.refresh import (
    Clock,
    Disk,
    Inputs,
    Network,
    Outcome,
    Result,
    checked_digest,
    exit_code,
    fresh,
    leftovers,
    one,
    read_issuer,
    report,
    with_must_staple,
)
from ocspstaple.state import Checked
from ocspstaple.store import Store
from ocspstaple.validate import CertStatus, VerifiedResponse, check_window, fmt_time

if TYPE_CHECKING:
    from ocspstaple import state
    from ocspstaple.status import Served
    from ocspstaple.store import Dirs

log = logging.getLogger(__name__)

#: Staples refreshed at once when --jobs is not given: twice the per-host cap
#: (fetch.MAX_PER_HOST), so that checking and writing the staples whose answers
#: are in overlaps the next requests to a responder, and two responders are
#: each asked 8 at a time.
DEFAULT_JOBS = 16
#: The exit code of a run that left a written staple unpushed or its hook failed
EXIT_KEPT = 1
#: The exit code of a run stopped by Ctrl-C
EXIT_INTERRUPTED = 130

#: The verdict of the last full check of a staple (from its state record), if any.
Recall = Callable[[Staple], "Checked | None"]


class Progress(Protocol):
    """A progress display: told of each outcome, cleared at the end."""

    def __call__(self, outcome: Outcome, /) -> None: ...

    def clear(self) -> None: ...


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
    origins: Origins | None = None,
    settled: Callable[[Outcome], None] | None = None,
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
    without the pool's hand-offs).  The rest go to the pool.  All of it in
    this one process: a forked second process once took half of a large
    no-op run, but the GIL-bound part is now small enough not to need it.

    ``origins``: the run's fetch.Origins (the one its transports report
    to); each origin found down is said once (see tell_down), after the
    run, instead of one warning per kept staple.

    ``settled``: called with a staple's outcome while its output lock is
    still held (refresh.Services.settled), before ``on_done``; for the
    staples decided under their lock only.

    The per-responder cap on requests in flight (fetch.MAX_PER_HOST) is the
    transport's: HttpTransport holds each request's slot until its socket
    work is over.
    """
    shared = Shared(network, hold, recall, settled)
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

    def full(st: Staple | BadEntry) -> Outcome:
        return done(one(st, shared, clock=clock, store=store))

    outcomes = [_quick(st, shared, clock=clock, store=store) for st in staples]
    for o in outcomes:
        if o is not None:
            done(o)
    rest = [i for i, o in enumerate(outcomes) if o is None]
    try:
        if jobs == 1 or len(rest) <= 1:
            for i in rest:
                outcomes[i] = full(staples[i])
        else:
            pool = ThreadPoolExecutor(max_workers=min(jobs, len(rest)), thread_name_prefix="ocspstaple-job")
            try:
                futures: list[tuple[int, Future[Outcome]]] = [(i, pool.submit(full, staples[i])) for i in rest]
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


def _quick(st: Staple | BadEntry, shared: Shared, *, clock: Clock, store: Store) -> Outcome | None:
    """The outcome when it needs neither a signature check nor the network:
    a bad entry, or a staple recalled FRESH; None: decide in full."""
    if isinstance(st, BadEntry):
        return one(st, shared, clock=clock, store=store)
    if st.force or shared.recall is None:
        return None
    try:
        return _recalled(st, shared, clock=clock, store=store)
    except Exception:  # a bug here costs only the shortcut
        log.debug("%s: recalling the last check failed", st.name, exc_info=True)
        return None


def _recalled(st: Staple, shared: Shared, *, clock: Clock, store: Store) -> Outcome | None:
    """FRESH from the verdict of an earlier full check (state.Checked), when
    the certificate, issuer and staple are byte for byte what it checked, and
    the staple is usable now and not due; None: decide in full."""
    assert shared.recall is not None
    try:
        # The staple first: the walk that reads it finds the file it is
        # (FileStore.target), beside which the record and temp files are.
        data = store.read(st.output)
        if data is None:
            return None
        checked = shared.recall(st)
        if checked is None or leftovers(store, st.output):
            return None
        inputs = shared.inputs(st)
    except (InputError, StoreError):
        return None  # said in full by the full decision
    if checked_digest(st, inputs, data) != checked.digest:
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
    outcome = fresh(st, disk, now, shared, checked.digest)
    if outcome is None:
        return None
    return with_must_staple(outcome) if checked.must_staple else outcome


class Shared:
    """What the staples of one run share (refresh.Services); safe to use from many threads."""

    def __init__(self, network: Network, hold: Callable[[Staple], dt.datetime | None] | None = None,
                 recall: Recall | None = None, settled: Callable[[Outcome], None] | None = None) -> None:
        self._network = network
        #: when a staple's responder may be asked again (its max-age), from the state records
        self.hold = hold or (lambda st: None)
        self.recall = recall
        self._settled = settled
        self._skew_warned = False
        self._lock = threading.Lock()
        self._transports: dict[tuple[float, str | None], _Deduped] = {}
        self._flights: dict[tuple[Any, ...], _Flight] = {}
        self._issuers: dict[Path, tuple[bytes, list[Any]] | InputError] = {}

    def clock_warning(self, text: str) -> None:
        with self._lock:
            if self._skew_warned:
                return
            self._skew_warned = True
        log.warning("%s", text)

    def settled(self, outcome: Outcome) -> None:
        if self._settled is not None:
            self._settled(outcome)

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
                issuer = read_issuer(st.issuer)
            except InputError as e:
                issuer = e  # the same error for every staple naming it
            with self._lock:
                self._issuers[st.issuer] = issuer
        if isinstance(issuer, InputError):
            raise InputError(str(issuer))
        return Inputs(cert, *issuer)


class _Flight:
    __slots__ = ("done", "reply", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: HttpReply | None = None
        self.error: Exception | None = None


class _Deduped:
    """A transport whose identical requests within one run are sent once."""

    def __init__(self, inner: Transport, shared: Shared, settings: tuple[float, str | None]) -> None:
        self._inner = inner
        self._shared = shared
        self._settings = settings

    def get(self, url: str) -> HttpReply:
        return self._shared.once((self._settings, "GET", url, None), lambda: self._inner.get(url))

    def post(self, url: str, body: bytes) -> HttpReply:
        return self._shared.once((self._settings, "POST", url, body), lambda: self._inner.post(url, body))


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


def execute(staples: Sequence[Staple | BadEntry], settings: RunSettings, *, progress: Progress | None = None) -> int:
    """Refresh every staple with the real clock, disk and network, then push,
    run the deploy hook and write the metrics; the run's exit code."""
    from ocspstaple import state
    from ocspstaple.config import DEFAULT_HOOK_TIMEOUT
    from ocspstaple.deploy import changed_outputs, push_staples, run_hook
    from ocspstaple.errors import DeployError
    from ocspstaple.fetch import HttpTransport
    from ocspstaple.store import FileStore

    transports: dict[tuple[float, str | None], HttpTransport] = {}
    origins = Origins()

    def network(timeout: float, proxy: str | None) -> HttpTransport:
        key = (timeout, proxy)
        if key not in transports:
            transports[key] = HttpTransport(timeout=timeout, proxy=proxy, origins=origins)
        return transports[key]

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    started = time.monotonic()
    store = FileStore()
    dirs = store.dirs  # each directory reached and checked once per run
    beside = settings.state_dir is None  # each state record beside its staple
    records = Records(staples, settings, clock, dirs)

    def done(o: Outcome) -> None:
        records.save(o)  # now, while other staples wait for their responders
        if progress is not None:
            progress(o)

    try:
        outcomes = refresh_all(staples, network=network, clock=clock, store=store, jobs=settings.jobs, on_done=done,
                               hold=lambda st: state.load(st.output, settings.state_dir, dirs=dirs).retry_after,
                               recall=lambda st: state.recall(st.output, settings.state_dir, dirs=dirs,
                                                              target=store.target(st.output) if beside else None),
                               origins=origins, settled=records.save_locked)
    except KeyboardInterrupt:
        # Writes are atomic: whatever was interrupted left the staple as it was.
        log.error("interrupted; staples not yet refreshed are left as they were")
        return EXIT_INTERRUPTED
    finally:
        if progress is not None:
            progress.clear()
        for t in transports.values():
            t.close()
    code = exit_code(outcomes)
    pairs = [(st, o) for st, o in zip(staples, outcomes, strict=True) if isinstance(st, Staple)]
    if push_staples(pairs):
        code = max(code, EXIT_KEPT)
    changed = changed_outputs(outcomes)
    if settings.deploy_hook and changed:
        timeout = settings.hook_timeout or DEFAULT_HOOK_TIMEOUT
        try:
            if settings.nginx_test:
                try:
                    run_hook(settings.nginx_test, changed, timeout=timeout, what="configuration test")
                except DeployError as e:
                    raise DeployError(f"{e}, so the deploy hook {settings.deploy_hook!r} was not run") from None
            run_hook(settings.deploy_hook, changed, timeout=timeout)
        except DeployError as e:
            log.error("%s; the %d changed staple(s) are written: %s", e, len(changed),
                      ", ".join(map(str, changed)))
            code = max(code, EXIT_KEPT)
    _metrics(staples, outcomes, records, settings, clock(), code=code, duration_s=time.monotonic() - started)
    store.close()
    return code


class Records:
    """The state records of one run: each attempted staple's is saved as soon
    as its outcome is known (from the worker thread that had it), so the
    saves overlap the other staples' requests rather than follow them all.

    A staple whose outcome needed no fetch has its record saved only when
    its staple was verified in full (no verdict could be recalled: records
    lost, or a staple another tool wrote), so that the next run recalls the
    verdict instead of paying for the signature checks again; a run where
    every verdict was recalled writes nothing."""

    def __init__(self, staples: Sequence[Staple | BadEntry], settings: RunSettings, clock: Clock,
                 dirs: Dirs | None) -> None:
        self._settings, self._clock, self._dirs = settings, clock, dirs
        #: (name, output) names one staple; the same twice is the same settings
        self._staples: dict[tuple[str, Path | None], Staple] = {
            (st.name, st.output): st for st in staples if isinstance(st, Staple)}
        self._saved: dict[int, state.Record] = {}
        #: id() of the outcomes whose record is saved or being saved (the outcomes live as long as the run)
        self._done: set[int] = set()
        self._lock = threading.Lock()

    def save(self, o: Outcome) -> None:
        """Save ``o``'s record, under its output lock (unless save_locked did already)."""
        self._try(o, locked=False)

    def save_locked(self, o: Outcome) -> None:
        """Save ``o``'s record while the caller holds its output lock, so
        that a staple written takes one lock, not two."""
        self._try(o, locked=True)

    def _try(self, o: Outcome, *, locked: bool) -> None:
        if o.fetched is None and not o.verified:
            return  # nothing attempted, nothing newly verified: a no-op run writes nothing
        with self._lock:
            if id(o) in self._done:
                return
            self._done.add(id(o))
        try:
            self._save(o, locked=locked)
        except Exception as e:  # a bug here must not stop the run: the staple is what matters
            log.warning("%s: cannot save the state record (internal error: %s: %s)", o.name, type(e).__name__, e)

    def _save(self, o: Outcome, *, locked: bool) -> None:
        from dataclasses import replace

        from ocspstaple import state

        st = self._staples.get((o.name, o.output))
        if st is None:
            return
        record = state.load(st.output, self._settings.state_dir, dirs=self._dirs)
        if o.fetched is None:
            checked = o.checked()
            if checked is None or record.checked == checked:
                return
            record = replace(record, checked=checked)  # the verdict only: no attempt was made
        else:
            now = self._clock()
            record = (record.succeeded(now, o.result.value, o.retry_after, o.checked()) if o.fetched
                      else record.failed(now, o.result.value, o.error or o.message, o.checked()))
        # A verdict alone that cannot be saved costs the next run time, not a
        # staple: said with -v only.
        state.save(st.output, self._settings.state_dir, record, lock_timeout=st.lock_timeout,
                   quiet=o.result.exit_code > 0 or o.fetched is None, dirs=self._dirs, locked=locked)
        self._saved[id(o)] = record

    def refresh_due(self, o: Outcome) -> dt.datetime | None:
        """When ``o``'s staple is due, by its staple's settings (None without one)."""
        st = self._staples.get((o.name, o.output))
        if st is None or o.staple is None:
            return None
        return o.staple.refresh_due(st.refresh_at, st.max_refresh_interval)

    def of(self, o: Outcome) -> state.Record:
        """The record as saved this run; else as on disk (for the metrics)."""
        from ocspstaple import state

        saved = self._saved.get(id(o))
        if saved is not None:
            return saved
        st = self._staples.get((o.name, o.output))
        return state.load(st.output, self._settings.state_dir, dirs=self._dirs) if st is not None else state.Record()


def _metrics(staples: Sequence[Staple | BadEntry], outcomes: Sequence[Outcome], records: Records,
             settings: RunSettings, now: dt.datetime, *, code: int, duration_s: float) -> None:
    """Write the metrics file, if asked for."""
    if settings.metrics_file is None:
        return
    from ocspstaple.status import MetricStaple, metrics_text
    from ocspstaple.store import atomic_write

    def cert(st: Staple | BadEntry) -> Path | None:
        if isinstance(st, Staple):
            return st.cert
        # A broken entry is named by its certificate's path, or as "[staple.NAME]" when it has none.
        return None if st.name.startswith("[") else Path(st.name)

    metrics = [MetricStaple(name=o.name, output=o.output, staple=o.staple, must_staple=o.must_staple,
                            record=records.of(o), refresh_due=records.refresh_due(o), cert=cert(st), label=st.label,
                            served=_served(st, o.staple, now))
               for st, o in zip(staples, outcomes, strict=True)]
    text = metrics_text(metrics, duration_s=duration_s, ended=now, code=code)
    try:
        atomic_write(settings.metrics_file, text.encode())
    except StoreError as e:  # the run's outcome stands
        log.error("cannot write the metrics file %s: %s", settings.metrics_file, e)


def _served(st: Staple | BadEntry, staple: VerifiedResponse | None, now: dt.datetime) -> tuple[Served, ...]:
    """For the metrics: what ``st``'s connect servers staple (after the push and the hook)."""
    from ocspstaple.certs import load_pair
    from ocspstaple.served import s_client
    from ocspstaple.status import ask_servers

    if not isinstance(st, Staple) or not st.connect:
        return ()
    try:
        pair = load_pair(st.cert, st.issuer)
    except InputError:
        return ()  # already reported by the run
    return ask_servers(st, pair, staple, handshake=s_client, now=now)
