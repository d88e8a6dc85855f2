"""Issue 5: a run where nothing is due looks at half of its staples in a forked
process (refresh._quick_all), and is decided exactly as in one process.

The staples and their recalled verdicts are real (real files, real crypto
for the first, full run); the clock is passed in and notes which process
asked it, which is how the tests see whether a second process took part.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import NoNetwork, stop_stray_threads
from pki import CA, DAY, HOUR, write_pem

from ocspstaple import refresh
from ocspstaple.config import Staple
from ocspstaple.refresh import Result, refresh_all
from ocspstaple.store import FileStore

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
N = 6

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or refresh._cpus() < 2,
                                reason="splits only with fork and two CPUs")


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """refresh_all does not fork while another thread runs: start each test
    from one thread, whatever tests ran before."""
    stop_stray_threads()


class PidClock:
    """T0, and a note in ``log`` of the process that asked (children included)."""

    def __init__(self, log: Path, *, child_sleeps: float = 0.0) -> None:
        self.log, self.parent, self.child_sleeps = log, os.getpid(), child_sleeps

    def __call__(self) -> dt.datetime:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        if self.child_sleeps and os.getpid() != self.parent:
            time.sleep(self.child_sleeps)
        return T0

    def pids(self) -> set[int]:
        return {int(x) for x in self.log.read_text().split()} if self.log.exists() else set()


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.root("Split Root", now=T0)


@pytest.fixture
def fleet(tmp_path: Path, ca: CA) -> tuple[list[Staple], dict[Path, object]]:
    """N fresh staples on disk, and the verdicts of a first, full run over them."""
    issuer = write_pem(tmp_path / "issuer.pem", ca.cert)
    staples = []
    for i in range(N):
        leaf = ca.issue(f"split{i}.example.test", ocsp_urls=("http://ocsp.test/",))
        cert = write_pem(tmp_path / f"c{i}.pem", leaf)
        st = Staple(name=f"c{i}", cert=cert, issuer=issuer, output=tmp_path / f"c{i}.ocsp")
        st.output.write_bytes(ca.respond(leaf.cert, this_update=T0 - HOUR, produced_at=T0 - HOUR,
                                         next_update=T0 + 4 * DAY))
        staples.append(st)
    first = refresh_all(staples, network=NoNetwork(), clock=lambda: T0, store=FileStore(), jobs=1)
    assert [o.result for o in first] == [Result.FRESH] * N
    return staples, {o.output: o.checked() for o in first}


def run(staples, memo, clock, *, split_at: int = 2, store=None):
    return refresh_all(staples, network=NoNetwork(), clock=clock, store=store or FileStore(), jobs=1,
                       recall=lambda st: memo.get(st.output), split_at=split_at)


def summary(outcomes) -> list[tuple]:
    return [(o.name, o.result, o.staple.der, o.message, o.must_staple) for o in outcomes]


def test_half_of_the_staples_are_looked_at_by_a_second_process(fleet, tmp_path):
    staples, memo = fleet
    clock = PidClock(tmp_path / "pids")
    split = run(staples, memo, clock)
    assert len(clock.pids() - {os.getpid()}) == 1
    assert summary(split) == summary(run(staples, memo, lambda: T0, split_at=10**9))
    assert [o.result for o in split] == [Result.FRESH] * N


def test_below_the_threshold_one_process_does_it_all(fleet, tmp_path):
    staples, memo = fleet
    clock = PidClock(tmp_path / "pids")
    run(staples, memo, clock, split_at=N + 1)
    assert clock.pids() == {os.getpid()}


def test_no_fork_while_another_thread_runs(fleet, tmp_path):
    staples, memo = fleet
    clock = PidClock(tmp_path / "pids")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        outcomes = run(staples, memo, clock)
    finally:
        stop.set()
        t.join()
    assert clock.pids() == {os.getpid()}
    assert [o.result for o in outcomes] == [Result.FRESH] * N


class ChildDies(FileStore):
    """A store whose reads kill any process but the test's: the forked child dies mid-look."""

    def __init__(self) -> None:
        super().__init__()
        self.parent = os.getpid()

    def read(self, path: Path) -> bytes | None:
        if os.getpid() != self.parent:
            os._exit(7)
        return super().read(path)


def test_a_child_that_dies_leaves_its_half_to_be_decided_in_full(fleet, tmp_path, checks):
    staples, memo = fleet
    outcomes = run(staples, memo, PidClock(tmp_path / "pids"), store=ChildDies())
    assert [o.result for o in outcomes] == [Result.FRESH] * N
    # The parent's half was recalled; the dead child's half was verified here, in full
    # (counts made in a child die with it: these are this process's).
    assert checks["verify"] == N - N // 2


def test_a_live_child_does_its_half_without_verifying(fleet, tmp_path, checks):
    staples, memo = fleet
    clock = PidClock(tmp_path / "pids")
    outcomes = run(staples, memo, clock)
    assert [o.result for o in outcomes] == [Result.FRESH] * N
    # A second process took part (without it, no verify here would prove nothing).
    assert len(clock.pids() - {os.getpid()}) == 1
    assert checks["verify"] == 0


def test_interrupted_parent_does_not_wait_for_its_child(fleet, tmp_path):
    staples, memo = fleet
    clock = PidClock(tmp_path / "pids", child_sleeps=30)
    asked = 0

    def interrupting() -> dt.datetime:
        nonlocal asked
        t = clock()
        if os.getpid() == clock.parent:
            asked += 1
            if asked == N // 2:  # the parent's last staple: Ctrl-C once the child is at work
                deadline = time.monotonic() + 5
                while not clock.pids() - {os.getpid()} and time.monotonic() < deadline:
                    time.sleep(0.01)
                raise KeyboardInterrupt
        return t

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(staples, memo, interrupting)
    assert time.monotonic() - started < 10  # the child sleeps 30 s per staple unless killed
    children = clock.pids() - {os.getpid()}
    assert len(children) == 1
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(children.pop(), 0)


def test_no_process_to_be_had_means_one_process_does_it_all(fleet, tmp_path, monkeypatch):
    staples, memo = fleet
    clock = PidClock(tmp_path / "pids")

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    outcomes = run(staples, memo, clock)
    assert [o.result for o in outcomes] == [Result.FRESH] * N
    assert clock.pids() == {os.getpid()}


def test_split_with_stdout_closed(fleet, tmp_path, monkeypatch):
    """Started with stdout closed (Python's sys.stdout is then None): no crash."""
    staples, memo = fleet
    clock = PidClock(tmp_path / "pids")
    monkeypatch.setattr("sys.stdout", None)
    outcomes = run(staples, memo, clock)
    assert [o.result for o in outcomes] == [Result.FRESH] * N
    assert len(clock.pids()) == 2
