"""Issue 5: many certificates in one run, refreshed at once.

The core (refresh_all) with the real HttpTransport against the real
responder of tests/responder.py on 127.0.0.1, which counts requests and the
most it was answering at once (``max_active``).  Every test that shows
something works has a twin showing that the check would catch it failing.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import replace
from pathlib import Path

import filelock
import pytest
from conftest import NoNetwork, RealNetwork
from pki import CA, DAY, HOUR, Issued, unsuccessful, write_pem
from responder import Reply, Responder

from ocspstaple.config import BadEntry, Staple
from ocspstaple.fetch import MAX_PER_HOST, HostGates
from ocspstaple.refresh import Result, exit_code
from ocspstaple.run import refresh_all
from ocspstaple.store import TEMP_SUFFIX, FileStore, lock_path

UTC = dt.timezone.utc
DELAY = 0.15  # every answer waits this long, so that requests overlap


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


class Fleet:
    """Leaves under one CA, on disk, each answered by serial with its own Reply."""

    def __init__(self, tmp_path: Path, ca: CA, responder: Responder) -> None:
        self.tmp, self.ca, self.responder = tmp_path, ca, responder
        self.issuer = write_pem(tmp_path / "issuer.pem", ca.cert)
        self.replies: dict[int, Reply] = {}
        responder.reply_for = self._reply

    def _reply(self, req) -> Reply:
        if req is None or req.serial_number not in self.replies:
            return Reply(unsuccessful("unauthorized"))
        return self.replies[req.serial_number]

    def add(self, name: str, *, reply: Reply | None = None, answer: str = "good",
            urls: tuple[str, ...] | None = None, on_disk: bytes | None = None, **kw) -> tuple[Staple, Issued]:
        leaf = self.ca.issue(f"{name}.example.test", ocsp_urls=urls if urls is not None else (self.responder.url,))
        cert = write_pem(self.tmp / f"{name}.pem", leaf)
        if reply is None:
            body = {"good": lambda: self.respond(leaf),
                    "revoked": lambda: self.respond(leaf, status="revoked"),
                    "unknown": lambda: self.respond(leaf, status="unknown"),
                    "tryLater": lambda: unsuccessful("tryLater")}[answer]()
            reply = Reply(body, delay=DELAY)
        self.replies[leaf.cert.serial_number] = reply
        st = Staple(name=name, cert=cert, issuer=self.issuer, output=self.tmp / f"{name}.ocsp", **{"timeout": 5, **kw})
        if on_disk is not None:
            st.output.write_bytes(on_disk)
        return st, leaf

    def respond(self, leaf: Issued, *, age: dt.timedelta = HOUR, **kw) -> bytes:
        this_update = now().replace(microsecond=0) - age
        return self.ca.respond(leaf.cert, this_update=this_update, next_update=this_update + 4 * DAY, **kw)


class Gather:
    """A responder's reply_for that holds the first ``n`` requests until all
    ``n`` are in (or ``deadline`` seconds passed), then answers as ``answer``
    would.  The responder counts a request as active before it asks
    reply_for, so once the n are in, ``max_active`` has seen n at once however
    slowly the client's threads were scheduled on loaded cores; a client
    capped below n never gets there, and waits out the deadline."""

    def __init__(self, n: int, answer, *, deadline: float = 20) -> None:
        self.left, self.answer, self.deadline = n, answer, deadline
        self.cond = threading.Condition()

    def __call__(self, req) -> Reply:
        with self.cond:
            if self.left > 0:
                self.left -= 1
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.left == 0, timeout=self.deadline)
        return self.answer(req)


@pytest.fixture
def fleet(tmp_path: Path, ca: CA, responder: Responder) -> Fleet:
    return Fleet(tmp_path, ca, responder)


def run(staples, network, *, jobs: int | None = None, store=None):
    try:
        return refresh_all(staples, network=network, clock=now, store=store or FileStore(), jobs=jobs)
    finally:
        if isinstance(network, RealNetwork):
            network.close()


# -- many certificates, mixed faults -------------------------------------------

def mixed(fleet: Fleet) -> tuple[list[Staple | BadEntry], list[Result]]:
    """Thirty staples whose outcomes are known, in an order that mixes them."""
    staples: list[Staple | BadEntry] = []
    expected: list[Result] = []
    for i in range(30):
        kind = i % 10
        if kind in (0, 1, 2, 3):
            st, _ = fleet.add(f"good{i}")
            want = Result.WRITTEN
        elif kind == 4:
            st, _ = fleet.add(f"revoked{i}", answer="revoked")
            want = Result.REVOKED
        elif kind == 5:  # the responder fails, a valid but due staple is kept
            st, leaf = fleet.add(f"kept{i}", answer="tryLater")
            st.output.write_bytes(fleet.respond(leaf, age=3 * DAY))
            want = Result.KEPT
        elif kind == 6:  # the responder fails and there is nothing to keep
            st, _ = fleet.add(f"missing{i}", reply=Reply(b"oops", status=500, content_type="text/plain"))
            want = Result.MISSING
        elif kind == 7:  # unknown is never written
            st, _ = fleet.add(f"unknown{i}", answer="unknown")
            want = Result.MISSING
        elif kind == 8:  # fresh on disk: nothing fetched
            st, leaf = fleet.add(f"fresh{i}")
            st.output.write_bytes(fleet.respond(leaf))
            want = Result.FRESH
        else:  # a broken config table
            staples.append(BadEntry(name=f"[staple.broken{i}]", reason="missing key cert"))
            expected.append(Result.BAD_INPUT)
            continue
        staples.append(st)
        expected.append(want)
    return staples, expected


def test_many_certificates_with_mixed_faults_in_one_run(fleet: Fleet, responder: Responder):
    staples, expected = mixed(fleet)
    responder.reply_for = Gather(2, fleet._reply)
    outcomes = run(staples, RealNetwork(), jobs=8)
    assert [o.name for o in outcomes] == [st.name for st in staples]  # the order of `staples`
    assert [o.result for o in outcomes] == expected
    assert exit_code(outcomes) == 2
    # Fresh staples and broken entries asked nothing; a GET answered 500 was retried as POST.
    due = sum(1 for r in expected if r not in (Result.FRESH, Result.BAD_INPUT))
    http500 = sum(1 for st in staples if st.name.startswith("missing"))
    assert responder.requests == due + http500
    assert responder.max_active > 1  # it really ran at once
    for st, o in zip(staples, outcomes, strict=True):
        if o.result in (Result.WRITTEN, Result.REVOKED):
            assert isinstance(st, Staple) and st.output.read_bytes() == o.staple.der


def test_twin_the_same_run_one_at_a_time_gives_the_same_outcomes(fleet: Fleet, responder: Responder):
    """Twin: the concurrency changed nothing but the overlap."""
    staples, expected = mixed(fleet)
    outcomes = run(staples, RealNetwork(), jobs=1)
    assert [o.result for o in outcomes] == expected
    assert responder.max_active == 1


def test_exit_code_of_a_concurrent_run_is_1_when_only_kept(fleet: Fleet):
    staples = [fleet.add(f"ok{i}")[0] for i in range(6)]
    st, leaf = fleet.add("kept", answer="tryLater")
    st.output.write_bytes(fleet.respond(leaf, age=3 * DAY))
    outcomes = run([*staples, st], RealNetwork(), jobs=8)
    assert [o.result for o in outcomes] == [Result.WRITTEN] * 6 + [Result.KEPT]
    assert exit_code(outcomes) == 1
    assert exit_code(outcomes[:-1]) == 0  # twin: without the kept one, 0


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.getMessage().split(":")[0])


def test_outcomes_come_back_in_input_order_not_completion_order(fleet: Fleet):
    # The first staples answer slowest, so they finish last.
    staples = []
    for i in range(8):
        st, leaf = fleet.add(f"o{i}")
        fleet.replies[leaf.cert.serial_number] = Reply(fleet.respond(leaf), delay=0.05 * (8 - i))
        staples.append(st)
    log = logging.getLogger("ocspstaple.refresh")
    lines, level = Lines(), log.level
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    try:
        outcomes = run(staples, RealNetwork(), jobs=8)
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    logged = lines.names
    assert [o.name for o in outcomes] == [f"o{i}" for i in range(8)]
    # Twin: the log lines came as each finished, in another order, so the
    # order of the outcomes is the function's doing.
    assert sorted(logged) == sorted(o.name for o in outcomes) and logged != [o.name for o in outcomes]


# -- dedupe --------------------------------------------------------------------

def test_the_same_certificate_for_several_outputs_is_fetched_once(fleet: Fleet, responder: Responder):
    st, _ = fleet.add("shared")
    copies = [replace(st, name=f"shared-{i}", output=fleet.tmp / f"shared-{i}.ocsp") for i in range(4)]
    outcomes = run(copies, RealNetwork(), jobs=8)
    assert [o.result for o in outcomes] == [Result.WRITTEN] * 4
    assert responder.requests == 1
    bodies = {c.output.read_bytes() for c in copies}
    assert len(bodies) == 1  # each output got the one answer, validated and written under its own lock


def test_twin_different_certificates_are_each_fetched(fleet: Fleet, responder: Responder):
    staples = [fleet.add(f"distinct{i}")[0] for i in range(4)]
    outcomes = run(staples, RealNetwork(), jobs=8)
    assert [o.result for o in outcomes] == [Result.WRITTEN] * 4
    assert responder.requests == 4


def test_a_shared_failure_is_each_staples_own_outcome(fleet: Fleet, responder: Responder):
    """The one answer is judged per output: kept where a staple is on disk, missing where not."""
    st, leaf = fleet.add("fails", answer="tryLater")
    kept = replace(st, name="with-staple", output=fleet.tmp / "with.ocsp")
    kept.output.write_bytes(fleet.respond(leaf, age=3 * DAY))
    bare = replace(st, name="without", output=fleet.tmp / "without.ocsp")
    outcomes = run([kept, bare], RealNetwork(), jobs=8)
    assert [o.result for o in outcomes] == [Result.KEPT, Result.MISSING]
    assert responder.requests == 1
    assert "tryLater" in outcomes[0].message and "tryLater" in outcomes[1].message


# -- the per-host cap ------------------------------------------------------------

def test_the_per_host_cap_is_never_exceeded(fleet: Fleet, responder: Responder):
    staples = [fleet.add(f"cap{i}")[0] for i in range(3 * MAX_PER_HOST)]
    responder.reply_for = Gather(MAX_PER_HOST, fleet._reply)
    outcomes = run(staples, RealNetwork(), jobs=4 * MAX_PER_HOST)
    assert {o.result for o in outcomes} == {Result.WRITTEN}
    assert responder.max_active == MAX_PER_HOST  # reached, never passed


def test_twin_without_the_cap_the_counter_sees_more(fleet: Fleet, responder: Responder):
    """Twin: the same run with the cap lifted overlaps more requests, so the
    counter above would have caught a cap that did nothing."""
    staples = [fleet.add(f"nocap{i}")[0] for i in range(3 * MAX_PER_HOST)]
    responder.reply_for = Gather(MAX_PER_HOST + 1, fleet._reply)
    run(staples, RealNetwork(gates=HostGates(1000)), jobs=4 * MAX_PER_HOST)
    assert responder.max_active > MAX_PER_HOST


def test_twin_one_job_means_one_request_at_a_time(fleet: Fleet, responder: Responder):
    staples = [fleet.add(f"seq{i}")[0] for i in range(4)]
    run(staples, RealNetwork(), jobs=1)
    assert responder.max_active == 1


def test_the_cap_is_per_host_and_holds_across_transports(fleet: Fleet, ca: CA, responder: Responder):
    """Two responders are two hosts: each sees at most the cap, together more.
    Staples with two timeouts (two transports) still share one host's cap."""
    with Responder(ca) as other:
        responder.reply_for = Gather(MAX_PER_HOST, fleet._reply)
        other.reply_for = Gather(MAX_PER_HOST, fleet._reply)
        staples = []
        for i in range(2 * MAX_PER_HOST):
            staples.append(fleet.add(f"a{i}", timeout=5 + i % 2)[0])
            staples.append(fleet.add(f"b{i}", urls=(other.url,), timeout=5 + i % 2)[0])
        network = RealNetwork()
        outcomes = run(staples, network, jobs=4 * MAX_PER_HOST)
    assert {o.result for o in outcomes} == {Result.WRITTEN}
    assert len(network.made) == 2
    assert responder.max_active == other.max_active == MAX_PER_HOST


# -- nothing due -------------------------------------------------------------------

def test_a_run_with_nothing_due_makes_no_transport_and_takes_no_lock(fleet: Fleet, responder: Responder):
    staples = []
    for i in range(20):
        st, leaf = fleet.add(f"idle{i}")
        st.output.write_bytes(fleet.respond(leaf))
        staples.append(st)
    outcomes = run(staples, NoNetwork(), jobs=8)
    assert {o.result for o in outcomes} == {Result.FRESH}
    assert responder.requests == 0
    assert not [p for p in fleet.tmp.iterdir() if p.name.endswith(".lock")]


def test_twin_one_due_staple_uses_the_network_and_its_lock(fleet: Fleet):
    staples = []
    for i in range(5):
        st, leaf = fleet.add(f"idle{i}")
        st.output.write_bytes(fleet.respond(leaf, age=3 * DAY if i == 2 else HOUR))
        staples.append(st)
    outcomes = run(staples, NoNetwork(), jobs=8)
    assert outcomes[2].result is Result.INTERNAL and "the network was used" in outcomes[2].message
    assert [p.name for p in fleet.tmp.iterdir() if p.name.endswith(".lock")] == [lock_path(staples[2].output).name]


class HeldLock:
    """Another run holding an output's lock (in a thread of its own)."""

    def __init__(self, output: Path) -> None:
        self.lock = filelock.FileLock(str(lock_path(output)), mode=0o600)  # as ocspstaple makes its locks
        self.taken, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        with self.lock:
            self.taken.set()
            self.done.wait(30)

    def __enter__(self) -> "HeldLock":
        self.thread.start()
        assert self.taken.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(10)


def test_a_fresh_staple_is_not_held_up_by_another_runs_lock(fleet: Fleet):
    st, leaf = fleet.add("busy", lock_timeout=0.5)
    st.output.write_bytes(fleet.respond(leaf))
    with HeldLock(st.output):
        [o] = run([st], NoNetwork())
    assert o.result is Result.FRESH


def test_twin_a_due_staple_waits_for_the_lock_and_says_so(fleet: Fleet):
    st, leaf = fleet.add("busy", lock_timeout=0.5)
    st.output.write_bytes(fleet.respond(leaf, age=3 * DAY))
    with HeldLock(st.output):
        [o] = run([st], NoNetwork())
    assert o.result is Result.KEPT and "gave up" in o.message


def test_a_leftover_temp_file_beside_a_fresh_staple_is_still_removed(fleet: Fleet):
    st, leaf = fleet.add("crashed")
    st.output.write_bytes(fleet.respond(leaf))
    dead = fleet.tmp / f".{st.output.name}.abcd1234{TEMP_SUFFIX}"
    dead.write_bytes(b"half a staple")
    [o] = run([st], NoNetwork())
    assert o.result is Result.FRESH
    assert not dead.exists()  # twin of the no-lock test above: here the lock was taken, to clean up
