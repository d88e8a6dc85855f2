"""A written staple takes one lock (issue 15): its state record is saved under
the lock its refresh already holds, not under a second one.  Real files,
real crypto, real filelock; only the network edge is fixed."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import filelock
import pytest
from conftest import AnswerNetwork, lock_held
from pki import CA, DAY, HOUR, write_pem

from ocspstaple import state
from ocspstaple.config import Staple
from ocspstaple.refresh import Outcome, Result
from ocspstaple.run import refresh_all
from ocspstaple.store import FileStore, lock_path

UTC = dt.timezone.utc
# The real clock: execute() below reads it.
T0 = dt.datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.root("One Lock Root", now=T0)


@pytest.fixture
def due(tmp_path: Path, ca: CA) -> tuple[Staple, bytes]:
    """A staple with nothing on disk, and the good response its responder gives."""
    leaf = ca.issue("onelock.example.test", ocsp_urls=("http://ocsp.test/",))
    st = Staple(name="one", cert=write_pem(tmp_path / "c.pem", leaf), issuer=write_pem(tmp_path / "i.pem", ca.cert),
                output=tmp_path / "c.pem.ocsp")
    return st, ca.respond(leaf.cert, this_update=T0 - HOUR, next_update=T0 + 4 * DAY)


def test_settled_runs_while_the_staple_lock_is_held(due):
    st, body = due
    seen: list[tuple[Result, bool]] = []

    def settled(o: Outcome) -> None:
        seen.append((o.result, lock_held(lock_path(st.output))))

    [o] = refresh_all([st], network=AnswerNetwork(body), clock=lambda: T0, store=FileStore(), settled=settled)
    assert o.result is Result.WRITTEN
    assert seen == [(Result.WRITTEN, True)]
    # Twin: once the run is over, nobody holds it.
    assert not lock_held(lock_path(st.output))


def test_a_fresh_staple_settles_nothing(due):
    """Twin: a staple left alone takes no lock, so there is nothing to settle under one."""
    st, body = due
    st.output.write_bytes(body)
    seen: list[Outcome] = []
    [o] = refresh_all([st], network=AnswerNetwork(body), clock=lambda: T0, store=FileStore(), settled=seen.append)
    assert o.result is Result.FRESH and seen == []


def test_a_written_staple_takes_one_lock_and_saves_its_record(due, monkeypatch, tmp_path):
    from ocspstaple import fetch
    from ocspstaple.config import RunSettings
    from ocspstaple.run import execute

    st, body = due
    taken: list[str] = []
    real = filelock.UnixFileLock.acquire

    def counted(self, *a, **k):
        taken.append(self.lock_file)
        return real(self, *a, **k)

    monkeypatch.setattr(filelock.UnixFileLock, "acquire", counted)

    class Transport:
        def __init__(self, **kw) -> None:
            pass

        def get(self, url):
            return fetch.HttpReply(200, body)

        post = get

        def close(self) -> None:
            pass

    monkeypatch.setattr(fetch, "HttpTransport", Transport)
    code = execute([st], RunSettings())
    assert code == 0
    assert taken == [str(lock_path(st.output))]  # one lock, not one more for the record
    record = state.load(st.output, None)
    assert record.last_success is not None and record.checked is not None
