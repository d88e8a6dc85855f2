"""`ocspstaple status`, the state records behind it, must-staple and `verify`,
on real staples made by the test CA (tests/pki.py).

The table and JSON are checked cell by cell with a fake clock (examine() and
table() called directly), and the CLI contract (exit codes, no colour on a
pipe, --state-dir, records written by real refresh runs against a responder
answering tryLater) with the real command as a subprocess.

Every test that shows something works has a twin showing its failure is caught.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import click
import pytest
from conftest import Run, Site, clean_env, run_cli, run_on_tty
from pki import CA, DAY, HOUR
from responder import Responder
from watching import (
    ANSI,
    COLUMNS,
    JSON_KEYS,
    WINDOW,
    Cert,
    make_cert,
    parse_iso,
    parse_table,
    put_staple,
    utcnow,
    write_config,
    write_record,
)

from ocspstaple import state
from ocspstaple.config import BadEntry
from ocspstaple.status import examine, format_table, table, to_json
from ocspstaple.store import FileStore

MINUTE = dt.timedelta(minutes=1)
KINDS = ("good", "must", "revoked", "expired", "missing")


def when(t: dt.datetime) -> str:
    """A time as the table shows it."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.err + run.out, run.err


def make_kind(directory: Path, ca: CA, kind: str, now: dt.datetime, *,
              urls: tuple[str, ...] = ("http://127.0.0.1:9/",)) -> Cert:
    """A certificate and its staple on disk: good (6 of 10 days left), must
    (the same, must-staple), revoked, expired (an hour ago) or missing."""
    c = make_cert(directory, ca, kind, must_staple=kind == "must", urls=urls)
    if kind in ("good", "must"):
        put_staple(ca, c, now=now, left=6 * DAY)
    elif kind == "revoked":
        put_staple(ca, c, now=now, left=6 * DAY, status="revoked")
    elif kind == "expired":
        put_staple(ca, c, now=now, left=-HOUR)
    return c


def rows_at(now: dt.datetime, certs: list[Cert], state_dir: Path | None = None):
    return examine([c.staple() for c in certs], store=FileStore(), clock=lambda: now, state_dir=state_dir)


def status_json(*args: str | Path) -> tuple[Run, list[dict]]:
    run = run_cli("status", "--json", *args)
    assert_no_traceback(run)
    return run, json.loads(run.out)


def file_id(p: Path) -> tuple[int, int, bytes]:
    st = p.stat()
    return st.st_ino, st.st_mtime_ns, p.read_bytes()


# -- the table, cell by cell (fake clock) -------------------------------------------

def test_table_cells(tmp_path: Path, ca: CA):
    now = utcnow()
    certs = {k: make_kind(tmp_path, ca, k, now) for k in KINDS}
    gone = make_cert(tmp_path, ca, "gone")  # revoked, and that staple has run out
    put_staple(ca, gone, now=now, left=-HOUR, status="revoked")
    failing = make_cert(tmp_path, ca, "failing")
    put_staple(ca, failing, now=now, left=3 * DAY)
    write_record(failing, last_attempt=now - 10 * MINUTE, last_success=now - DAY, failing_since=now - 3 * HOUR,
                 consecutive_failures=4, last_error="responder answered tryLater", last_result="kept")
    just = make_cert(tmp_path, ca, "just")  # its first failure, seconds ago
    put_staple(ca, just, now=now, left=3 * DAY)
    write_record(just, last_attempt=now - dt.timedelta(seconds=20), failing_since=now - dt.timedelta(seconds=20),
                 consecutive_failures=1, last_error="responder answered tryLater", last_result="kept")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    junk = Cert(leaf=certs["good"].leaf, cert=tmp_path / "junk.pem", output=tmp_path / "junk.pem.ocsp")
    order = [*certs.values(), gone, failing, just, junk]
    rows = rows_at(now, order)
    text = format_table(table(rows, now))
    got = {r["CERTIFICATE"]: r for r in parse_table(text)}
    assert list(got) == [c.name for c in order]  # one row per certificate, in order
    assert text.split("\n")[0].split() == " ".join(COLUMNS).split()

    good = got[certs["good"].name]
    this, nxt = now - 4 * DAY, now + 6 * DAY
    assert good == {
        "CERTIFICATE": certs["good"].name, "STAPLE": str(certs["good"].output), "STATUS": "good",
        "THIS UPDATE": when(this), "NEXT UPDATE": when(nxt), "LEFT": "6d 0h",
        # the 4-day cap (--max-refresh-interval) comes before half of the 10-day window
        "REFRESH DUE": when(this + 4 * DAY), "MUST-STAPLE": "no", "LAST FAILURE": "-",
    }
    assert got[certs["must"].name]["MUST-STAPLE"] == "yes"
    assert got[certs["must"].name]["STATUS"] == "good"
    rev = got[certs["revoked"].name]
    assert (rev["STATUS"], rev["LEFT"], rev["LAST FAILURE"]) == ("revoked", "6d 0h", "-")
    exp = got[certs["expired"].name]
    assert (exp["STATUS"], exp["THIS UPDATE"], exp["LEFT"], exp["REFRESH DUE"]) == ("none", "-", "-", "-")
    assert exp["LAST FAILURE"].startswith("the one on disk is unusable: response expired"), exp
    miss = got[certs["missing"].name]
    assert (miss["STATUS"], miss["LEFT"], miss["LAST FAILURE"]) == ("none", "-", "none on disk")
    assert (got[gone.name]["STATUS"], got[gone.name]["LEFT"]) == ("revoked (expired)", "-")
    assert got[failing.name]["LAST FAILURE"] == "4 failed for 3h 0m: responder answered tryLater"
    assert got[failing.name]["LEFT"] == "3d 0h"
    # A failure seconds old lasted "<1m" (it used to read "0m", or "expired" under a second).
    assert got[just.name]["LAST FAILURE"] == "1 failed for <1m: responder answered tryLater"
    bad = got[junk.name]
    assert (bad["STATUS"], bad["MUST-STAPLE"]) == ("none", "-")
    assert "junk.pem" in bad["LAST FAILURE"] or "PEM" in bad["LAST FAILURE"], bad


def test_table_parser_catches_misalignment(tmp_path: Path, ca: CA):
    """Twin: parse_table is what checks the alignment; a shifted cell fails it."""
    now = utcnow()
    rows = rows_at(now, [make_kind(tmp_path, ca, k, now) for k in ("good", "missing")])
    lines = format_table(table(rows, now)).split("\n")
    parse_table("\n".join(lines))
    for broken in (lines[:1] + [lines[1].replace("  ", " ", 1)] + lines[2:],  # one row shifted
                   lines[:2] + [lines[2].replace("  ", "   ", 3)]):
        with pytest.raises(AssertionError):
            parse_table("\n".join(broken))


def test_bad_config_entry_is_a_row(tmp_path: Path, ca: CA):
    now = utcnow()
    c = make_kind(tmp_path, ca, "good", now)
    rows = examine([BadEntry(name="[staple.broken]", reason="missing key cert"), c.staple()],
                   store=FileStore(), clock=lambda: now, state_dir=None)
    got = parse_table(format_table(table(rows, now)))
    assert [r["CERTIFICATE"] for r in got] == ["[staple.broken]", c.name]
    assert (got[0]["STAPLE"], got[0]["STATUS"], got[0]["LAST FAILURE"]) == ("-", "none", "missing key cert")
    assert got[1]["STATUS"] == "good"


# -- JSON: a stable schema (fake clock) ------------------------------------------------

def assert_schema(item: dict) -> None:
    assert sorted(item) == JSON_KEYS


def test_json_schema_and_values(tmp_path: Path, ca: CA):
    now = utcnow()
    certs = {k: make_kind(tmp_path, ca, k, now) for k in KINDS}
    write_record(certs["good"], last_attempt=now - HOUR, last_success=now - 2 * HOUR,
                 failing_since=now - HOUR, consecutive_failures=1, last_error="responder answered tryLater")
    items = json.loads(to_json(rows_at(now, list(certs.values())), now))
    assert [i["cert"] for i in items] == [c.name for c in certs.values()]
    for item in items:
        assert_schema(item)
        for k, v in item.items():
            if k in ("this_update", "next_update", "expires", "refresh_due", "revocation_time",
                     "last_attempt", "last_success", "failing_since") and v is not None:
                parse_iso(v)  # ISO 8601 UTC, to the second, ending in Z
        if item["expires"] is not None and item["usable"]:
            assert item["seconds_left"] == (parse_iso(item["expires"]) - now).total_seconds()
    by = {i["cert"]: i for i in items}
    good = by[certs["good"].name]
    assert good | {"serial": None} == {
        "cert": certs["good"].name, "output": str(certs["good"].output), "subject": "good.example.test",
        "serial": None, "status": "good", "usable": True, "problem": None,
        "this_update": state.iso(now - 4 * DAY), "next_update": state.iso(now + 6 * DAY),
        "expires": state.iso(now + 6 * DAY), "seconds_left": int((6 * DAY).total_seconds()),
        "refresh_due": state.iso(now),  # thisUpdate + the 4-day cap, before half of the 10-day window
        "revocation_time": None, "revocation_reason": None,
        "signer": "the issuer", "must_staple": False, "last_attempt": state.iso(now - HOUR),
        "last_success": state.iso(now - 2 * HOUR), "failing_since": state.iso(now - HOUR),
        "consecutive_failures": 1, "last_error": "responder answered tryLater", "served": [],
    }
    assert good["serial"] == format(certs["good"].leaf.cert.serial_number, "X")
    assert by[certs["must"].name]["must_staple"] is True
    rev = by[certs["revoked"].name]
    assert (rev["status"], rev["usable"], rev["revocation_time"]) == ("revoked", True, state.iso(now - 4 * DAY - HOUR))
    exp = by[certs["expired"].name]
    assert (exp["status"], exp["usable"], exp["expires"], exp["seconds_left"]) == ("none", False, None, None)
    assert exp["problem"].startswith("the one on disk is unusable")
    miss = by[certs["missing"].name]
    assert (miss["status"], miss["problem"], miss["consecutive_failures"], miss["last_error"]) == \
        ("none", "none on disk", 0, None)


def test_json_schema_check_catches_a_missing_or_extra_key(tmp_path: Path, ca: CA):
    """Twin: the schema comparison fails when a key is dropped, renamed or added."""
    now = utcnow()
    item = json.loads(to_json(rows_at(now, [make_kind(tmp_path, ca, "good", now)]), now))[0]
    assert_schema(item)
    for key in JSON_KEYS:
        with pytest.raises(AssertionError):
            assert_schema({k: v for k, v in item.items() if k != key})
    with pytest.raises(AssertionError):
        assert_schema(item | {"last_result": "kept"})
    with pytest.raises(AssertionError):
        parse_iso("2026-11-27T10:00:00+00:00")


# -- the CLI contract --------------------------------------------------------------

def test_status_cli_table(tmp_path: Path, ca: CA):
    now = utcnow()
    certs = {k: make_kind(tmp_path, ca, k, now) for k in KINDS}
    config = write_config(tmp_path / "ocspstaple.toml", list(certs.values()))
    run = run_cli("status", "--config", config)
    assert_no_traceback(run)
    assert run.code == 2, run
    assert run.err == ""
    assert not ANSI.search(run.out) and "\x1b" not in run.out  # stdout is a pipe: no colour
    got = {r["CERTIFICATE"]: r for r in parse_table(run.out)}
    assert list(got) == [c.name for c in certs.values()]
    for k in ("expired", "missing"):
        assert got[certs[k].name]["LEFT"] == "-"
    for k in ("good", "must", "revoked"):
        assert got[certs[k].name]["LEFT"] in ("6d 0h", "5d 23h")  # minutes pass while the test runs
        assert got[certs[k].name]["LAST FAILURE"] == "-"
    assert [got[c.name]["STATUS"] for c in certs.values()] == ["good", "good", "revoked", "none", "none"]
    assert [got[c.name]["MUST-STAPLE"] for c in certs.values()] == ["no", "yes", "no", "no", "no"]
    assert got[certs["missing"].name]["LAST FAILURE"] == "none on disk"
    assert "response expired" in got[certs["expired"].name]["LAST FAILURE"]


def test_status_on_a_terminal_has_colour(tmp_path: Path, ca: CA):
    """Twin of "no ANSI on a pipe": on a terminal the STATUS cell is coloured,
    and the table is still aligned once the colour is taken out."""
    now = utcnow()
    certs = [make_kind(tmp_path, ca, k, now) for k in ("good", "missing")]
    config = write_config(tmp_path / "ocspstaple.toml", certs)
    env = clean_env() | {"TERM": "xterm", "COLUMNS": "400"}
    code, out = run_on_tty("status", "--config", config, stream="stdout", env=env)
    text = out.replace("\r\n", "\n")
    assert code == 2
    assert ANSI.search(text), text
    plain = parse_table(ANSI.sub("", text))
    assert [r["STATUS"] for r in plain] == ["good", "none"]
    # The same cells, styled as the CLI does, are what the pipe test would catch.
    assert ANSI.search(click.style("good", fg="green"))


@pytest.mark.parametrize("kind, code", [("good", 0), ("must", 0), ("revoked", 2), ("expired", 2), ("missing", 2)])
def test_status_exit_code(tmp_path: Path, ca: CA, kind: str, code: int):
    c = make_kind(tmp_path, ca, kind, utcnow())
    run = run_cli("status", "--cert", c.cert)
    assert_no_traceback(run)
    assert run.code == code, run
    assert [r["STATUS"] for r in parse_table(run.out)] == [{"must": "good", "expired": "none",
                                                           "missing": "none"}.get(kind, kind)]


def test_status_cli_json(tmp_path: Path, ca: CA):
    now = utcnow()
    certs = {k: make_kind(tmp_path, ca, k, now) for k in KINDS}
    config = write_config(tmp_path / "ocspstaple.toml", list(certs.values()))
    before = dt.datetime.now(dt.timezone.utc)
    run, items = status_json("--config", config)
    after = dt.datetime.now(dt.timezone.utc)
    assert run.code == 2 and run.err == ""
    assert [i["cert"] for i in items] == [c.name for c in certs.values()]
    for item in items:
        assert_schema(item)
        if item["usable"]:
            left = parse_iso(item["expires"]) - before
            assert (left - (after - before)).total_seconds() - 1 <= item["seconds_left"] <= left.total_seconds()
            assert parse_iso(item["next_update"]) == now + 6 * DAY
    assert [i["status"] for i in items] == ["good", "good", "revoked", "none", "none"]
    assert [i["must_staple"] for i in items] == [False, True, False, False, False]


# -- state records: written by refresh, read by status -------------------------------

def refresh(*args: str | Path) -> Run:
    run = run_cli("refresh", *args, "--timeout", "3", timeout=30)
    assert_no_traceback(run)
    return run


def bracket(f):
    """(result, t0, t1): f() and the whole seconds around it."""
    t0 = utcnow()
    out = f()
    t1 = utcnow() + dt.timedelta(seconds=1)
    return out, t0, t1


def test_failing_streak_then_success(site: Site, responder: Responder):
    record = site.output.with_name(".fullchain.pem.ocsp.state.json")
    run, s0, s1 = bracket(lambda: refresh("--cert", site.cert))
    assert run.code == 0, run.err
    assert record.exists()  # a dotfile beside the staple
    assert record.name.startswith(".")
    staple = site.output.read_bytes()

    responder.fault("tryLater")
    ids = [file_id(record)]
    run, f0, f1 = bracket(lambda: refresh("--cert", site.cert, "--force"))
    assert run.code == 1, run.err
    ids.append(file_id(record))
    for _ in range(2):
        run, l0, l1 = bracket(lambda: refresh("--cert", site.cert, "--force"))
        assert run.code == 1, run.err
        ids.append(file_id(record))
    assert len(set(ids)) == len(ids)  # every attempted run rewrote the record
    assert site.output.read_bytes() == staple

    run, items = status_json("--cert", site.cert)
    assert run.code == 0 and run.err == ""  # the staple is still valid and good
    (item,) = items
    assert item["consecutive_failures"] == 3
    assert f0 <= parse_iso(item["failing_since"]) <= f1  # the FIRST failure
    assert l0 <= parse_iso(item["last_attempt"]) <= l1
    assert s0 <= parse_iso(item["last_success"]) <= s1
    assert "tryLater" in item["last_error"]
    disk = json.loads(record.read_text())
    assert disk["last_result"] == "kept" and disk["version"] == 1
    run = run_cli("status", "--cert", site.cert)
    (row,) = parse_table(run.out)
    assert row["LAST FAILURE"].startswith("3 failed for ") and "tryLater" in row["LAST FAILURE"], row

    # A success resets the streak.
    responder.serve(responder.good(this_update=utcnow() - 10 * MINUTE))
    run, g0, g1 = bracket(lambda: refresh("--cert", site.cert, "--force"))
    assert run.code == 0, run.err
    run, (item,) = status_json("--cert", site.cert)
    assert run.code == 0
    assert (item["consecutive_failures"], item["failing_since"], item["last_error"]) == (0, None, None)
    assert g0 <= parse_iso(item["last_success"]) <= g1
    assert item["last_attempt"] == item["last_success"]

    # A run where the staple is fresh (not due) leaves the record alone.
    before, requests = file_id(record), responder.requests
    run = refresh("--cert", site.cert)
    assert run.code == 0 and run.err == ""
    assert responder.requests == requests
    assert file_id(record) == before


def test_fresh_run_writes_no_record(tmp_path: Path, ca: CA, responder: Responder):
    c = make_cert(tmp_path, ca, "site", urls=(responder.url,))
    put_staple(ca, c, now=utcnow(), left=7 * DAY)  # due in a day (the 4-day cap)
    responder.leaf = c.leaf
    # The first run checks the staple in full and keeps that verdict (issue 15:
    # only the first such run pays for the signatures), under the staple's
    # lock; nothing else is written.
    files = [".site.pem.ocsp.lock", ".site.pem.ocsp.state.json", "site.pem", "site.pem.ocsp"]
    run = refresh("--cert", c.cert)
    assert run.code == 0 and run.err == ""
    assert responder.requests == 0
    assert sorted(os.listdir(tmp_path)) == files
    assert json.loads(c.record.read_text())["checked"]["digest"]
    # A run with the verdict recalled writes nothing at all.
    before = c.record.stat()
    run = refresh("--cert", c.cert)
    assert run.code == 0 and run.err == "" and responder.requests == 0
    assert c.record.stat().st_ino == before.st_ino and c.record.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(os.listdir(tmp_path)) == files
    # Twin: the same staple with --force is attempted, and so recorded.
    responder.serve(responder.good(this_update=utcnow() - MINUTE))
    run = refresh("--cert", c.cert, "--force")
    assert run.code == 0, run.err
    assert json.loads(c.record.read_text())["last_result"] == "written"


def test_state_dir(tmp_path: Path, ca: CA, responder: Responder):
    c = make_cert(tmp_path / "certs", ca, "site", urls=(responder.url,))
    put_staple(ca, c, now=utcnow(), left=6 * DAY)
    responder.fault("tryLater")
    states = tmp_path / "var" / "state"  # made when needed
    run = refresh("--cert", c.cert, "--force", "--state-dir", states)
    assert run.code == 1, run.err
    (name,) = os.listdir(states)
    assert name.startswith("site.pem.ocsp.") and name.endswith(".json")
    assert not c.record.exists()
    assert not [n for n in os.listdir(c.cert.parent) if "state" in n]
    assert json.loads((states / name).read_text())["consecutive_failures"] == 1

    run, (item,) = status_json("--cert", c.cert, "--state-dir", states)
    assert item["consecutive_failures"] == 1 and "tryLater" in item["last_error"]
    # Twin: without --state-dir, status looks beside the staple and finds nothing.
    run, (item,) = status_json("--cert", c.cert)
    assert (item["consecutive_failures"], item["last_attempt"]) == (0, None)


def test_corrupt_record_is_ignored_with_a_warning(tmp_path: Path, ca: CA, responder: Responder):
    c = make_cert(tmp_path, ca, "site", urls=(responder.url,))
    put_staple(ca, c, now=utcnow(), left=6 * DAY)
    c.record.write_text('{"version": 1, "consecutive_failures": ')
    run, (item,) = status_json("--cert", c.cert)
    assert run.code == 0
    assert item["consecutive_failures"] == 0 and item["status"] == "good"
    assert len(run.lines) == 1 and "ignoring unreadable state record" in run.err and str(c.record) in run.err

    responder.fault("tryLater")
    run = refresh("--cert", c.cert, "--force")
    assert run.code == 1, run.err
    assert "ignoring unreadable state record" in run.err
    fixed = json.loads(c.record.read_text())  # replaced by a sound record
    assert fixed["consecutive_failures"] == 1 and fixed["version"] == 1

    # Twin: a sound hand-written record is read, without a warning.
    write_record(c, failing_since=utcnow() - 2 * HOUR, last_attempt=utcnow(), consecutive_failures=5,
                 last_error="responder answered tryLater")
    run, (item,) = status_json("--cert", c.cert)
    assert run.err == "" and item["consecutive_failures"] == 5


@pytest.mark.parametrize("content", [
    b"not json", b"[]", b'{"version": 2}', b'{"version": 1, "consecutive_failures": -1}',
    b'{"version": 1, "consecutive_failures": "3"}', b'{"version": 1, "last_attempt": "2026-11-27T10:00:00"}',
    b'{"version": 1, "last_attempt": "yesterday"}', b'{"version": 1, "last_error": 5}',
    b'{"version": 1, "last_error": "' + b"x" * (70 << 10) + b'"}', b"\xff\xfe",
], ids=["text", "list", "v2", "negative", "string-count", "naive-time", "bad-time", "error-type", "huge", "binary"])
def test_load_ignores_a_bad_record(tmp_path: Path, content: bytes, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("ocspstaple"), "propagate", True)
    out = tmp_path / "site.pem.ocsp"
    state.state_path(out, None).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="ocspstaple"):
        assert state.load(out, None) == state.Record()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "ignoring unreadable state record" in caplog.records[0].getMessage()


def test_load_reads_a_sound_record(tmp_path: Path, caplog, monkeypatch):
    """Twin: the record the loader refuses above differs from one it reads."""
    monkeypatch.setattr(logging.getLogger("ocspstaple"), "propagate", True)
    out = tmp_path / "site.pem.ocsp"
    t = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone.utc)
    rec = state.Record().failed(t, "kept", "responder answered tryLater").failed(t + HOUR, "kept", "again")
    state.save(out, None, rec, lock_timeout=5)
    assert state.state_path(out, None).name == ".site.pem.ocsp.state.json"
    with caplog.at_level(logging.WARNING, logger="ocspstaple"):
        assert state.load(out, None) == rec
    assert caplog.records == []
    assert (rec.consecutive_failures, rec.failing_since, rec.last_attempt, rec.last_error) == (2, t, t + HOUR, "again")
    ok = rec.succeeded(t + 2 * HOUR, "written")
    assert ok == state.Record(last_attempt=t + 2 * HOUR, last_success=t + 2 * HOUR, last_result="written")
    assert len(state.Record().failed(t, "kept", "x" * 10_000).last_error or "") == state.MAX_ERROR


# -- must-staple -------------------------------------------------------------------

def test_must_staple_failed_refresh_is_an_error(tmp_path: Path, ca: CA, responder: Responder):
    now = utcnow()
    must = make_cert(tmp_path, ca, "must", must_staple=True, urls=(responder.url,))
    plain = make_cert(tmp_path, ca, "plain", urls=(responder.url,))
    staples = {c.name: put_staple(ca, c, now=now, left=7 * DAY) for c in (must, plain)}
    responder.fault("tryLater")

    run = refresh("--cert", must.cert)  # not due: a must-staple certificate alone is no error
    assert run.code == 0 and run.err == ""
    run = refresh("--cert", must.cert, "--force")
    assert run.code == 2, run.err
    (line,) = run.lines
    assert str(must.cert) in line and "tryLater" in line and "kept staple valid until" in line
    assert "must-staple" in line
    # Twin: the same failure for an ordinary certificate is a warning.
    run = refresh("--cert", plain.cert, "--force")
    assert run.code == 1, run.err
    (line,) = run.lines
    assert "tryLater" in line and "must-staple" not in line
    for c in (must, plain):
        assert c.output.read_bytes() == staples[c.name]
    assert json.loads(must.record.read_text())["last_result"] == "at-risk"
    assert json.loads(plain.record.read_text())["last_result"] == "kept"

    run = run_cli("status", "--config", write_config(tmp_path / "c.toml", [must, plain]))
    assert run.code == 0, run
    got = {r["CERTIFICATE"]: r for r in parse_table(run.out)}
    assert (got[must.name]["MUST-STAPLE"], got[plain.name]["MUST-STAPLE"]) == ("yes", "no")
    for c in (must, plain):
        assert got[c.name]["LAST FAILURE"].startswith("1 failed for <1m: responder answered tryLater")


# -- verify -------------------------------------------------------------------------

def verify(staple: Path, c: Cert) -> Run:
    run = run_cli("verify", staple, "--cert", c.cert)
    assert_no_traceback(run)
    return run


def test_verify_good(tmp_path: Path, ca: CA):
    now = utcnow()
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=now, left=6 * DAY)
    run = verify(c.output, c)
    assert run.code == 0 and run.err == "", run
    lines = run.out.splitlines()
    assert lines[0] == f"{c.output}: valid, certificate good"
    assert f"  this update:  {when(now - 4 * DAY)} UTC" in lines
    assert f"  next update:  {when(now + 6 * DAY)} UTC" in lines
    assert f"  usable until: {when(now + 6 * DAY)} UTC" in lines
    assert "  signed by:    the issuer" in lines
    assert any(line.startswith("  certificate:  site.example.test (serial ") for line in lines)


def test_verify_tampered(tmp_path: Path, ca: CA):
    """Twin of test_verify_good: one flipped bit in the signature."""
    c = make_cert(tmp_path, ca, "site")
    body = put_staple(ca, c, now=utcnow(), left=6 * DAY)
    c.output.write_bytes(body[:-1] + bytes([body[-1] ^ 0x01]))  # the signature is the last element
    run = verify(c.output, c)
    assert run.code == 2
    assert run.out.startswith(f"{c.output}: NOT VALID for site.example.test") and "signature" in run.out, run.out
    assert len(run.out.splitlines()) == 1


def test_verify_other_certificate(tmp_path: Path, ca: CA):
    c = make_cert(tmp_path, ca, "site")
    other = make_cert(tmp_path, ca, "other")
    put_staple(ca, other, now=utcnow(), left=6 * DAY)
    assert verify(other.output, other).code == 0  # twin: valid for its own certificate
    run = verify(other.output, c)
    assert run.code == 2 and "NOT VALID" in run.out, run


def test_verify_revoked(tmp_path: Path, ca: CA):
    now = utcnow()
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=now, left=6 * DAY, status="revoked")
    run = verify(c.output, c)
    assert run.code == 2
    assert run.out.splitlines()[0] == f"{c.output}: valid, certificate REVOKED"
    assert f"  revoked at:   {when(now - 4 * DAY - HOUR)} UTC" in run.out.splitlines()


def test_verify_missing_file(tmp_path: Path, ca: CA):
    c = make_cert(tmp_path, ca, "site")
    run = verify(tmp_path / "nothing.ocsp", c)
    assert run.code == 2 and run.out == ""
    assert run.lines == [f"{tmp_path / 'nothing.ocsp'}: no such file"]


def test_verify_expired(tmp_path: Path, ca: CA):
    c = make_cert(tmp_path, ca, "site")
    put_staple(ca, c, now=utcnow(), left=-HOUR, window=WINDOW)
    run = verify(c.output, c)
    assert run.code == 2 and "NOT VALID" in run.out and "expired" in run.out, run
