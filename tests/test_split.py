"""A no-op run over many staples, in one process (issue 15: the fork of
issue 5 is gone).

A run where nothing is due once looked at half of its staples in a forked
process; now every staple is looked at in the run's own process, and a run
that had to verify a staple in full saves the verdict so that the next run
recalls it.  The staples and their recalled verdicts are real (real files,
real crypto for the first, full run); the clock is passed in.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from conftest import NoNetwork, run_cli
from pki import CA, DAY, HOUR, write_pem

from ocspstaple import state
from ocspstaple.config import Staple
from ocspstaple.refresh import Result
from ocspstaple.run import refresh_all
from ocspstaple.store import FileStore

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
N = 6


class PidClock:
    """T0, and a note in ``log`` of the process that asked (children included)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self) -> dt.datetime:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return T0

    def pids(self) -> set[int]:
        return {int(x) for x in self.log.read_text().split()} if self.log.exists() else set()


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.root("Noop Root", now=T0)


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


def run(staples, memo, clock, *, store=None, jobs: int = 1):
    return refresh_all(staples, network=NoNetwork(), clock=clock, store=store or FileStore(), jobs=jobs,
                       recall=lambda st: memo.get(st.output))


def summary(outcomes) -> list[tuple]:
    return [(o.name, o.result, o.staple.der, o.message, o.must_staple) for o in outcomes]


def test_every_staple_is_looked_at_in_this_process(fleet, tmp_path, monkeypatch, checks):
    staples, memo = fleet
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("a run forked"))
    clock = PidClock(tmp_path / "pids")
    outcomes = run(staples * 200, memo, clock)  # 1,200 staples: once the threshold of the split
    assert clock.pids() == {os.getpid()}
    assert [o.result for o in outcomes] == [Result.FRESH] * N * 200
    assert checks["verify"] == 0  # all recalled


def test_recalled_outcomes_are_those_of_a_full_decision(fleet):
    """Twin: without verdicts, the same staples decided in full say the same."""
    staples, memo = fleet
    assert summary(run(staples, memo, lambda: T0)) == summary(run(staples, {}, lambda: T0))


def test_outcomes_keep_the_order_of_the_staples_with_a_pool(fleet):
    staples, memo = fleet
    half = {st.output: memo[st.output] for st in staples[::2]}  # the rest go to the pool
    outcomes = run(staples, half, lambda: T0, jobs=4)
    assert [o.name for o in outcomes] == [st.name for st in staples]
    assert [o.verified for o in outcomes] == [False, True] * (N // 2)


def test_outcomes_without_stdout(fleet, monkeypatch):
    """Started with stdout closed (Python's sys.stdout is then None): no crash."""
    staples, memo = fleet
    monkeypatch.setattr("sys.stdout", None)
    assert [o.result for o in run(staples, memo, lambda: T0)] == [Result.FRESH] * N


# -- a verdict had in full is saved, even by a run that fetched nothing ------------------------

def cli_site(tmp_path: Path, ca: CA) -> Path:
    """A config of N fresh staples that another tool wrote (no state records)."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    issuer = write_pem(tmp_path / "issuer.pem", ca.cert)
    lines = []
    for i in range(N):
        leaf = ca.issue(f"noop{i}.example.test", ocsp_urls=("http://127.0.0.1:9/",))
        cert = write_pem(tmp_path / f"c{i}.pem", leaf)
        (tmp_path / f"c{i}.pem.ocsp").write_bytes(ca.respond(leaf.cert, this_update=now - HOUR,
                                                              next_update=now + 4 * DAY))
        lines += [f"[staple.c{i}]", f'cert = "{cert}"', f'issuer = "{issuer}"']
    config = tmp_path / "c.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_a_noop_run_that_verified_saves_the_verdict_once(tmp_path, ca):
    config = cli_site(tmp_path, ca)
    state_dir = tmp_path / "state"
    first = run_cli("refresh", "--config", config, "--state-dir", state_dir)
    assert first.code == 0 and first.err == "", first.err
    records = sorted(state_dir.iterdir())
    assert len(records) == N
    for i in range(N):
        r = state.load(tmp_path / f"c{i}.pem.ocsp", state_dir)
        assert r.checked is not None and r.last_attempt is None  # a verdict, no attempt
    stamps = [p.stat().st_mtime_ns for p in records]
    second = run_cli("refresh", "--config", config, "--state-dir", state_dir)
    assert second.code == 0 and second.err == "", second.err
    # the verdicts were recalled: nothing written again
    assert [p.stat().st_mtime_ns for p in sorted(state_dir.iterdir())] == stamps


def test_a_noop_run_whose_verdicts_are_recalled_writes_nothing(tmp_path, ca):
    """Twin: the staples' recalled verdicts need no saving; the directory is as it was."""
    config = cli_site(tmp_path, ca)
    state_dir = tmp_path / "state"
    run_cli("refresh", "--config", config, "--state-dir", state_dir)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = run_cli("refresh", "--config", config, "--state-dir", state_dir)
    assert again.code == 0, again.err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
