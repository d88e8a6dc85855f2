"""Clock trouble (issue 6, item 6): the local clock hours behind or ahead.

The core gets a fake clock; the CA (and so the responder) keeps the true time
T.  Whatever the clock says: nothing worse is written, a response "from the
future" beyond the 5-minute skew is refused with a line that names the clock,
and a staple that is still valid is never thrown away as expired.  One CLI
run with a shifted clock checks the same through the real command.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import AnswerNetwork as Network
from conftest import Run, Site, clean_env
from pki import CA, DAY, HOUR, write_pem
from responder import Responder

from ocspstaple.config import Staple
from ocspstaple.errors import FetchError
from ocspstaple.refresh import Result, refresh_one
from ocspstaple.store import FileStore

UTC = dt.timezone.utc
T = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # the true time
MIN = dt.timedelta(minutes=1)
URL = "http://ocsp.test/"




@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.root("Clock Test Root", now=T)


@pytest.fixture
def setup(tmp_path: Path, ca: CA):
    leaf = ca.issue("clock.example.test", ocsp_urls=(URL,))
    cert = write_pem(tmp_path / "cert.pem", leaf, ca.cert)
    staple = Staple(name=str(cert), cert=cert, output=tmp_path / "cert.pem.ocsp")

    def resp(this_update: dt.datetime, next_update: dt.datetime | None = None, **kw) -> bytes:
        kw.setdefault("produced_at", this_update)
        return ca.respond(leaf.cert, this_update=this_update,
                          next_update=next_update or this_update + 4 * DAY, **kw)

    return staple, resp


def run(staple: Staple, answer: bytes | Exception, clock: dt.datetime, **kw):
    net = Network(answer)
    o = refresh_one(replace(staple, **kw), network=net, clock=lambda: clock, store=FileStore())
    return o, net


# -- clock behind ------------------------------------------------------------------------

def test_clock_hours_behind_refuses_a_response_from_its_future(setup):
    staple, resp = setup
    fresh = resp(T - HOUR)  # the CA's true time: an hour ago
    o, _ = run(staple, fresh, T - 3 * HOUR)
    assert o.result is Result.MISSING and o.result.exit_code == 2
    assert "in the future" in o.message and "clock behind" in o.message, o.message
    assert not staple.output.exists()


def test_a_this_update_ahead_of_the_clock_is_refused_though_produced_at_is_not(setup):
    """The response was produced within the clock's past, but speaks for a
    time beyond the skew ahead (a responder that signs ahead of time): its
    thisUpdate alone refuses it, and the line names thisUpdate.  Where
    producedAt = thisUpdate, as above, the producedAt check would hide a
    missing thisUpdate check."""
    staple, resp = setup
    ahead = resp(T + HOUR, produced_at=T - HOUR)
    o, _ = run(staple, ahead, T)
    assert o.result is Result.MISSING and o.result.exit_code == 2
    assert "thisUpdate" in o.message and "in the future" in o.message, o.message
    assert not staple.output.exists()
    # twin: the same pair of times, with thisUpdate within the skew, is written
    near = resp(T + 4 * MIN, produced_at=T - HOUR)
    o, _ = run(staple, near, T)
    assert o.result is Result.WRITTEN and staple.output.read_bytes() == near, o.message


def test_clock_behind_within_the_skew_accepts(setup):
    """Twin: four minutes behind is within the 5-minute skew."""
    staple, resp = setup
    fresh = resp(T - HOUR)
    o, _ = run(staple, fresh, T - HOUR - 4 * MIN)
    assert o.result is Result.WRITTEN and staple.output.read_bytes() == fresh


def test_clock_behind_keeps_the_staple_and_says_why(setup):
    """A staple written while the clock was right looks "from the future" now:
    it is left on disk, the responder's (true-time) answer is refused, and the
    line names the clock."""
    staple, resp = setup
    on_disk = resp(T - 2 * HOUR)
    staple.output.write_bytes(on_disk)
    o, _ = run(staple, resp(T - HOUR), T - 3 * HOUR)
    assert staple.output.read_bytes() == on_disk
    assert o.result.exit_code == 2 and "clock behind" in o.message, o.message


def test_clock_behind_never_trades_the_staple_for_an_older_response(setup):
    """The clock is 3 h behind; the staple on disk (thisUpdate T-1h) looks 2 h
    in the future.  A stale cache answers with a response from T-5h, valid by
    the wrong clock: it is older than the staple, so it must not replace it
    (spec invariant 6: the staple is not missing, unparsable, foreign or
    expired, so only a fresher response may replace it)."""
    staple, resp = setup
    on_disk = resp(T - HOUR)
    staple.output.write_bytes(on_disk)
    stale = resp(T - 5 * HOUR, T + 3 * DAY)
    o, _ = run(staple, stale, T - 3 * HOUR)
    assert staple.output.read_bytes() == on_disk
    assert "older response" in o.message, o.message
    # twin: once the clock is right, a fresher response does replace it
    newer = resp(T - 30 * MIN)
    o, _ = run(staple, newer, T, force=True)
    assert staple.output.read_bytes() == newer, o.message


# -- clock ahead ---------------------------------------------------------------------------

def test_clock_hours_ahead_keeps_a_valid_staple_without_asking(setup):
    staple, resp = setup
    on_disk = resp(T - HOUR)  # valid until T+3d23h, due at T+1d23h
    staple.output.write_bytes(on_disk)
    o, net = run(staple, FetchError("must not be asked"), T + 6 * HOUR)
    assert o.result is Result.FRESH and net.requests == 0
    assert staple.output.read_bytes() == on_disk


def test_clock_ahead_near_the_end_still_keeps_the_staple(setup):
    """Clock 3 d 22 h ahead: the staple has an hour left by that clock; it is
    still valid and kept through a failure (exit 1), not discarded."""
    staple, resp = setup
    on_disk = resp(T - HOUR)
    staple.output.write_bytes(on_disk)
    o, net = run(staple, FetchError("cannot reach responder http://ocsp.test/: refused"), T + 3 * DAY + 22 * HOUR)
    assert net.requests == 1
    assert o.result is Result.KEPT and o.result.exit_code == 1, o.message
    assert "kept staple valid until 2026-11-28 11:00 UTC" in o.message
    assert staple.output.read_bytes() == on_disk


def test_clock_days_ahead_refuses_everything_as_expired_and_deletes_nothing(setup):
    staple, resp = setup
    on_disk = resp(T - HOUR)
    staple.output.write_bytes(on_disk)
    o, _ = run(staple, resp(T - 10 * MIN), T + 5 * DAY)  # the CA's newest answer also looks expired
    assert o.result is Result.MISSING and o.result.exit_code == 2
    assert "expired" in o.message
    assert staple.output.read_bytes() == on_disk


def test_clock_ahead_refuses_a_response_with_less_than_five_minutes_left(setup):
    staple, resp = setup
    o, _ = run(staple, resp(T - HOUR), T - HOUR + 4 * DAY - 4 * MIN)
    assert o.result is Result.MISSING and "less than 5 minutes" in o.message
    assert not staple.output.exists()
    # twin: six minutes left is enough
    o, _ = run(staple, resp(T - HOUR), T - HOUR + 4 * DAY - 6 * MIN)
    assert o.result is Result.WRITTEN


# -- the real command, its clock shifted -------------------------------------------------------

SHIFTED_CLI = """
import datetime, sys
import ocspstaple.run
_real = ocspstaple.run.refresh_all
_offset = datetime.timedelta(hours=float(sys.argv[1]))
def _shifted(*args, clock, **kw):  # the CLI's clock, as the core sees it, shifted
    return _real(*args, clock=lambda: clock() + _offset, **kw)
ocspstaple.run.refresh_all = _shifted
from ocspstaple.cli import main
main(sys.argv[2:], prog_name="ocspstaple")
"""


def shifted_refresh(hours: float, *args: str | Path) -> Run:
    p = subprocess.run([sys.executable, "-c", SHIFTED_CLI, str(hours), "refresh", *map(str, args)],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    return Run(p.returncode, p.stdout, p.stderr)


def test_cli_with_the_clock_hours_behind(site: Site, responder: Responder):
    body = responder.good()  # thisUpdate an hour ago, true time
    responder.serve(body)
    run = shifted_refresh(-3, "--cert", site.cert)
    assert run.code == 2, run.err
    # One warning for the run naming the offset (from the HTTP Date), one error for the certificate.
    assert len(run.lines) == 2 and "Traceback" not in run.err, run.err
    assert "local clock is 3h 0m behind" in run.lines[0] and "NTP" in run.lines[0], run.err
    assert str(site.cert) in run.lines[1] and "is the local clock behind?" in run.lines[1], run.err
    assert not site.output.exists()
    # Twin: the same command with the clock right writes the staple.
    run = shifted_refresh(0, "--cert", site.cert)
    assert run.code == 0 and run.err == "", run.err
    assert site.output.read_bytes() == body
