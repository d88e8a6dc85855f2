"""`ocspstaple check`, the monitoring plugin: states, the one output line and
its perfdata, on real staples made by the test CA.

Thresholds are shown with a fake clock (examine() and check_line() called
directly, down to the second at each boundary); the plugin contract (exit
codes 0-3, usage errors are UNKNOWN) with the real command.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from conftest import Run, run_cli
from pki import CA, DAY, HOUR
from watching import WINDOW, Cert, make_cert, parse_check, put_staple, utcnow, write_record

from ocspstaple.config import BadEntry
from ocspstaple.errors import InputError
from ocspstaple.status import State, Threshold, check_line, evaluate, examine
from ocspstaple.store import FileStore

SECOND = dt.timedelta(seconds=1)
W40, C20 = Threshold(fraction=0.4), Threshold(fraction=0.2)
SIX_HOURS = 6 * HOUR


def rows_at(now: dt.datetime, certs: list[Cert]):
    return examine([c.staple() for c in certs], store=FileStore(), clock=lambda: now, state_dir=None)


def judge(now: dt.datetime, c: Cert, warning: Threshold = W40, critical: Threshold = C20,
          max_failing: dt.timedelta = SIX_HOURS) -> tuple[State, str]:
    (row,) = rows_at(now, [c])
    return evaluate(row, now, warning=warning, critical=critical, max_failing=max_failing)


def check(*args: str | Path) -> Run:
    run = run_cli("check", *args)
    assert "Traceback" not in run.out + run.err, run.err
    return run


# -- thresholds, to the second (fake clock) ---------------------------------------

@pytest.mark.parametrize("left, must, want", [
    (WINDOW * 0.5, False, State.OK),
    (WINDOW * 0.4, False, State.OK),  # exactly 40% left is not "less than"
    (WINDOW * 0.4 - SECOND, False, State.WARNING),
    (WINDOW * 0.3, False, State.WARNING),
    (WINDOW * 0.2, False, State.WARNING),
    (WINDOW * 0.2 - SECOND, False, State.CRITICAL),
    (WINDOW * 0.05, False, State.CRITICAL),
    (WINDOW * 0.4, True, State.OK),  # twin: must-staple with room to spare is fine
    (WINDOW * 0.4 - SECOND, True, State.CRITICAL),  # must-staple below warning
    (WINDOW * 0.3, True, State.CRITICAL),
])
def test_share_thresholds(tmp_path: Path, ca: CA, left: dt.timedelta, must: bool, want: State):
    now = utcnow()
    c = make_cert(tmp_path, ca, "site", must_staple=must)
    put_staple(ca, c, now=now, left=left)
    state, why = judge(now, c)
    assert state is want, why
    assert (why == "") == (want is State.OK)
    if want is not State.OK:
        assert why.endswith(" left (must-staple)" if must else " left"), why


@pytest.mark.parametrize("left, warning, critical, want", [
    (40 * HOUR, "36h", "12h", State.OK),
    (30 * HOUR, "36h", "12h", State.WARNING),
    (10 * HOUR, "36h", "12h", State.CRITICAL),
    (30 * HOUR, "1d", "12h", State.OK),  # twin of the WARNING above: a lower threshold
    (30 * HOUR, "2d", "31h", State.CRITICAL),
    (30 * HOUR, "40%", "2d", State.CRITICAL),  # a duration and a share mixed
    (5 * DAY, "2d", "10%", State.OK),
])
def test_duration_thresholds(tmp_path: Path, ca: CA, left: dt.timedelta, warning: str, critical: str,
                             want: State):
    now = utcnow()
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=now, left=left)
    state, why = judge(now, c, Threshold.parse(warning, "--warning"), Threshold.parse(critical, "--critical"))
    assert state is want, why


def test_threshold_parse():
    assert Threshold.parse("40%", "--warning") == Threshold(fraction=0.4)
    assert Threshold.parse(" 12.5% ", "--warning") == Threshold(fraction=0.125)
    assert Threshold.parse("36h", "--warning") == Threshold(fixed=36 * HOUR)
    assert Threshold.parse("90m", "--warning").of(WINDOW) == dt.timedelta(minutes=90)
    assert Threshold.parse("40%", "--warning").of(WINDOW) == 4 * DAY


@pytest.mark.parametrize("text", ["40x", "", "%", "abc%", "0%", "100%", "150%", "-5%", "nan%", "-1h", "0s",
                                  "1w"])
def test_threshold_parse_refuses(text: str):
    """Twin of test_threshold_parse."""
    with pytest.raises(InputError) as e:
        Threshold.parse(text, "--warning")
    assert "--warning" in str(e.value)


def test_missing_expired_revoked_unreadable(tmp_path: Path, ca: CA):
    now = utcnow()
    missing = make_cert(tmp_path, ca, "missing")
    must_missing = make_cert(tmp_path, ca, "mustmissing", must_staple=True)
    expired = make_cert(tmp_path, ca, "expired")
    put_staple(ca, expired, now=now, left=-HOUR)
    revoked = make_cert(tmp_path, ca, "revoked")
    put_staple(ca, revoked, now=now, left=WINDOW * 0.9, status="revoked")
    gone = make_cert(tmp_path, ca, "gone")
    put_staple(ca, gone, now=now, left=-HOUR, status="revoked")
    assert judge(now, missing) == (State.CRITICAL, "no valid staple: none on disk")
    assert judge(now, must_missing) == (State.CRITICAL, "no valid staple (must-staple): none on disk")
    state, why = judge(now, expired)
    assert state is State.CRITICAL and "expired" in why
    assert judge(now, revoked) == (State.CRITICAL, "certificate revoked")  # even with 90% left
    assert judge(now, gone) == (State.CRITICAL, "certificate revoked")
    (tmp_path / "junk.pem").write_text("junk\n")
    junk = Cert(leaf=missing.leaf, cert=tmp_path / "junk.pem", output=tmp_path / "junk.pem.ocsp")
    state, why = judge(now, junk)
    assert state is State.UNKNOWN and why


def test_failing_streak_longer_than_max_failing(tmp_path: Path, ca: CA):
    now = utcnow()
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=now, left=WINDOW * 0.9)
    write_record(c, last_attempt=now - HOUR, last_success=now - 9 * HOUR, failing_since=now - 8 * HOUR,
                 consecutive_failures=8, last_error="responder answered tryLater", last_result="kept")
    assert judge(now, c) == (State.WARNING, "refresh failing for 8h 0m: responder answered tryLater")
    # Twins: the same streak within the limit, and the same record with the streak over.
    assert judge(now, c, max_failing=9 * HOUR) == (State.OK, "")
    write_record(c, last_attempt=now - HOUR, last_success=now - HOUR, consecutive_failures=0)
    assert judge(now, c) == (State.OK, "")
    # A staple low on time outranks the streak.
    put_staple(ca, c, now=now, left=WINDOW * 0.1)
    write_record(c, failing_since=now - 8 * HOUR, consecutive_failures=8, last_error="tryLater")
    assert judge(now, c)[0] is State.CRITICAL


# -- the line and its perfdata (fake clock) ---------------------------------------------

def test_ok_line_and_perfdata(tmp_path: Path, ca: CA):
    now = utcnow()
    a, b = make_cert(tmp_path, ca, "a"), make_cert(tmp_path, ca, "b")
    put_staple(ca, a, now=now, left=WINDOW * 0.9)
    put_staple(ca, b, now=now, left=3 * DAY, window=4 * DAY)
    state, line = check_line(rows_at(now, [a, b]), now, warning=W40, critical=C20, max_failing=SIX_HOURS)
    assert state is State.OK
    st, text, perf = parse_check(line)
    assert st == "OK" and text == f"2 staple(s) valid, least left 3d 0h ({b.name})"
    assert [p.label for p in perf] == [str(a.output), str(b.output)]
    pa, pb = perf
    assert (pa.value, pa.warn, pa.crit, pa.min, pa.max) == (777600, 345600, 172800, 0, 864000)
    assert (pb.value, pb.warn, pb.crit, pb.min, pb.max) == (259200, 138240, 69120, 0, 345600)
    for p in perf:
        assert p.warn is not None and p.crit is not None and p.max is not None
        assert 0 <= p.crit <= p.warn <= p.max and 0 <= p.value <= p.max


def test_perfdata_parser_refuses_junk():
    """Twin: the perfdata regex is what checks the numbers; malformed data fails it."""
    parse_check("OCSPSTAPLE OK - fine | 'a'=1s;2:;3:;0;4 'b b'=0s;;;0")
    for bad in ("OCSPSTAPLE OK - fine | 'a'=1;2;3;0;4", "OCSPSTAPLE OK - fine | 'a'=1s;2;3;0;4",
                "OCSPSTAPLE OK - fine | a=1s;2;3;0;4",
                "OCSPSTAPLE OK - fine | 'a'=-1s;2;3;0;4", "OCSPSTAPLE OK - fine | 'a'=1s;2;3;0;4 junk",
                "OCSPSTAPLE FINE - fine | 'a'=1s;2;3;0;4", "OCSPSTAPLE OK - fine\nsecond line",
                "OCSPSTAPLE OK - fine | 'a'=1.5s;2;3;0;4"):
        with pytest.raises(AssertionError):
            parse_check(bad)


def test_worst_state_wins_and_problems_are_named(tmp_path: Path, ca: CA):
    now = utcnow()
    ok, warn, crit = (make_cert(tmp_path, ca, n) for n in ("ok", "warn", "crit"))
    put_staple(ca, ok, now=now, left=WINDOW * 0.9)
    put_staple(ca, warn, now=now, left=WINDOW * 0.3)
    rows = rows_at(now, [ok, warn, crit])
    state, line = check_line(rows, now, warning=W40, critical=C20, max_failing=SIX_HOURS)
    st, text, perf = parse_check(line)
    assert state is State.CRITICAL and st == "CRITICAL"
    assert text == f"1 critical, 1 warning, 1 ok: {crit.name}: no valid staple: none on disk; {warn.name}: 3d 0h left"
    assert [(p.label, p.value, p.warn, p.crit, p.max) for p in perf][2] == (str(crit.output), 0, None, None, None)
    state, line = check_line(rows[:2], now, warning=W40, critical=C20, max_failing=SIX_HOURS)
    assert state is State.WARNING and line.startswith("OCSPSTAPLE WARNING - 1 warning, 1 ok: ")
    # An unreadable certificate is UNKNOWN, but a WARNING elsewhere outranks it.
    rows_u = [*rows[:2], *examine([BadEntry(name="[staple.x]", reason="missing key cert")], store=FileStore(),
                                  clock=lambda: now, state_dir=None)]
    state, line = check_line(rows_u, now, warning=W40, critical=C20, max_failing=SIX_HOURS)
    assert state is State.WARNING and "[staple.x]: missing key cert" in line
    state, line = check_line(rows_u[2:], now, warning=W40, critical=C20, max_failing=SIX_HOURS)
    assert state is State.UNKNOWN and parse_check(line)[0] == "UNKNOWN"
    assert check_line([], now, warning=W40, critical=C20, max_failing=SIX_HOURS)[0] is State.UNKNOWN


def test_perfdata_label_cannot_break_out(tmp_path: Path, ca: CA):
    now = utcnow()
    c = make_cert(tmp_path / "it's=here", ca, "site")
    put_staple(ca, c, now=now, left=WINDOW * 0.9)
    _, line = check_line(rows_at(now, [c]), now, warning=W40, critical=C20, max_failing=SIX_HOURS)
    (p,) = parse_check(line)[2]
    assert p.label == str(c.output).replace("'", "_").replace("=", "_") and p.value == 777600


# -- the plugin contract (real command) -------------------------------------------------

def test_cli_ok(tmp_path: Path, ca: CA):
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=utcnow(), left=WINDOW * 0.6)
    run = check("--cert", c.cert)
    assert run.code == 0 and run.err == "", run
    st, text, (p,) = parse_check(run.out)
    assert st == "OK" and text.startswith("1 staple(s) valid, least left 5d 23h")
    assert p.label == str(c.output) and p.max == 864000 and (p.warn, p.crit) == (345600, 172800)
    assert 518400 - 60 <= p.value <= 518400


def test_cli_warning_and_its_twin(tmp_path: Path, ca: CA):
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=utcnow(), left=WINDOW * 0.3)
    run = check("--cert", c.cert)
    assert run.code == 1, run
    assert parse_check(run.out)[0] == "WARNING" and "left" in run.out
    run = check("--cert", c.cert, "--warning", "25%")
    assert run.code == 0, run


def test_cli_durations_in_perfdata(tmp_path: Path, ca: CA):
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=utcnow(), left=30 * HOUR)
    run = check("--cert", c.cert, "--warning", "36h", "--critical", "12h")
    assert run.code == 1, run
    (p,) = parse_check(run.out)[2]
    assert (p.warn, p.crit, p.min, p.max) == (129600, 43200, 0, 864000)


def test_cli_max_failing(tmp_path: Path, ca: CA):
    now = utcnow()
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=now, left=WINDOW * 0.9)
    write_record(c, last_attempt=now - HOUR, failing_since=now - 8 * HOUR, consecutive_failures=8,
                 last_error="responder answered tryLater", last_result="kept")
    run = check("--cert", c.cert)
    assert run.code == 1, run
    assert f"{c.name}: refresh failing for 8h 0m: responder answered tryLater" in run.out
    assert check("--cert", c.cert, "--max-failing", "12h").code == 0


@pytest.mark.parametrize("kind", ["missing", "expired", "revoked", "low", "must-warning"])
def test_cli_critical(tmp_path: Path, ca: CA, kind: str):
    now = utcnow()
    c = make_cert(tmp_path, ca, "site", must_staple=kind == "must-warning")
    if kind == "expired":
        put_staple(ca, c, now=now, left=-HOUR)
    elif kind == "revoked":
        put_staple(ca, c, now=now, left=WINDOW * 0.9, status="revoked")
    elif kind == "low":
        put_staple(ca, c, now=now, left=WINDOW * 0.1)
    elif kind == "must-warning":
        put_staple(ca, c, now=now, left=WINDOW * 0.3)
    run = check("--cert", c.cert)
    assert run.code == 2, run
    assert parse_check(run.out)[0] == "CRITICAL" and run.err == ""


@pytest.mark.parametrize("args, words", [
    (["--bogus"], "--bogus"),
    (["--warning", "40x"], "--warning"),
    (["--critical", "0%"], "--critical"),
    (["--max-failing", "soon"], "--max-failing"),
    (["--cert", "{missing}"], "cannot read"),
    (["--cert", "{junk}"], ""),
])
def test_cli_unknown(tmp_path: Path, ca: CA, args: list[str], words: str):
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=utcnow(), left=WINDOW * 0.9)
    (tmp_path / "junk.pem").write_text("junk\n")
    subst = {"{missing}": str(tmp_path / "none.pem"), "{junk}": str(tmp_path / "junk.pem")}
    args = [subst.get(a, a) for a in args]
    if "--cert" not in args:
        args += ["--cert", str(c.cert)]
    run = check(*args)
    assert run.code == 3, run
    assert parse_check(run.out)[0] == "UNKNOWN" and words in run.out
    assert len(run.out.splitlines()) == 1


def test_cli_no_input_is_unknown():
    run = check()
    assert run.code == 3, run
    assert parse_check(run.out)[0] == "UNKNOWN"
