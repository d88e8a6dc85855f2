"""The verification verdict cache: a staple whose certificate, issuer and
staple bytes are exactly what an earlier run verified is FRESH without
verifying a signature again (run._recalled, state.Checked, state.recall).

The crypto is real (tests/pki.py) and never replaced: to show that no
signature was checked on the shortcut, the real check functions are wrapped
with a call counter (``checks``).  The network is a hand-written fake (the
edge), or the real loopback responder for the CLI.  Every case that shows the
verdict being taken has a twin showing a changed byte, setting, time or
record being caught and decided in full.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import AnswerNetwork as Network
from conftest import Checks, NoNetwork, Run, Site, assert_silent_success, run_cli
from conftest import FixedClock as Clock
from pki import CA, DAY, HOUR, Issued, write_pem
from responder import Responder

import ocspstaple.certs
import ocspstaple.validate
from ocspstaple import refresh, state
from ocspstaple.config import Staple
from ocspstaple.errors import FetchError, ValidationError
from ocspstaple.refresh import Inputs, Outcome, Result, checked_digest, exit_code
from ocspstaple.run import refresh_all
from ocspstaple.state import Checked, Record
from ocspstaple.store import TEMP_SUFFIX, FileStore
from ocspstaple.validate import CertStatus, VerifiedResponse

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
URL = "http://ocsp.test/"
# The default staple: thisUpdate T0 - 1 h, nextUpdate 4 days later, so due
# (refresh_at 0.5) at T0 + 47 h and expired at T0 + 95 h.
DUE = T0 - HOUR + 2 * DAY
EXPIRES = T0 - HOUR + 4 * DAY


# -- the edges -----------------------------------------------------------------

class Memo:
    """The state records' verdicts, kept in a dict: ``memo(st)`` is the recall."""

    def __init__(self) -> None:
        self.verdicts: dict[Path, Checked] = {}

    def __call__(self, st: Staple) -> Checked | None:
        return self.verdicts.get(st.output)

    def save(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            c = o.checked()
            if c is not None and o.output is not None:
                self.verdicts[o.output] = c


# -- the site: a certificate, its issuer and a staple, on disk -------------------

@pytest.fixture(scope="module")
def core_ca() -> CA:
    return CA.root("Recall Root", now=T0)


def respond(ca: CA, leaf: Issued, this_update: dt.datetime = T0 - HOUR, **kw) -> bytes:
    kw.setdefault("next_update", this_update + 4 * DAY)
    return ca.respond(leaf.cert, this_update=this_update, produced_at=this_update, **kw)


@pytest.fixture
def leaf(core_ca: CA) -> Issued:
    return core_ca.issue("recall.example.test", ocsp_urls=(URL,))


@pytest.fixture
def st(tmp_path: Path, core_ca: CA, leaf: Issued) -> Staple:
    cert = write_pem(tmp_path / "cert.pem", leaf, core_ca.cert)
    issuer = write_pem(tmp_path / "issuer.pem", core_ca.cert)
    return Staple(name="recall", cert=cert, issuer=issuer, output=tmp_path / "cert.pem.ocsp")


def run(staples: list[Staple], network, now: dt.datetime, recall=None, **kw) -> list[Outcome]:
    return refresh_all(staples, network=network, clock=Clock(now), store=FileStore(), recall=recall, **kw)


def first_run(st: Staple, body: bytes, memo: Memo) -> Outcome:
    """No staple yet: ``body`` is fetched, checked in full and written; its verdict kept in ``memo``."""
    [o] = run([st], Network(body), T0, memo)
    assert o.result in (Result.WRITTEN, Result.REVOKED) and o.changed, o.message
    assert st.output.read_bytes() == body
    memo.save([o])
    assert st.output in memo.verdicts
    return o


@pytest.fixture
def verified(st: Staple, core_ca: CA, leaf: Issued, checks: Checks) -> tuple[Memo, bytes]:
    """A good staple on disk and the verdict of its full check; ``checks`` reset."""
    body = respond(core_ca, leaf)
    memo = Memo()
    first_run(st, body, memo)
    checks.clear()
    return memo, body


def flip_last_byte(data: bytes) -> bytes:
    # The last byte of a response signed by the CA itself (no certs) is in its signature.
    return data[:-1] + bytes([data[-1] ^ 0x01])


# -- 1. the shortcut, and its twin -----------------------------------------------

def test_first_run_keeps_the_verdict_of_its_full_check(st, core_ca, leaf, checks):
    body = respond(core_ca, leaf)
    memo = Memo()
    o = first_run(st, body, memo)
    assert checks["verify"] >= 1 and checks["issued_by"] == 1  # a first run checks in full
    c = o.checked()
    assert c is not None and c.must_staple is False
    assert c.digest == o.digest == checked_digest(st, Inputs(st.cert.read_bytes(), st.issuer.read_bytes(), None), body)
    assert re.fullmatch(r"[0-9a-f]{64}", c.digest)
    assert c.response == replace(o.staple, der=b"")  # the record holds no staple bytes


def test_no_valid_staple_leaves_no_verdict(st, checks):
    [o] = run([st], Network(FetchError("down")), T0, Memo())
    assert o.result is Result.MISSING
    assert o.staple is None and o.digest is None and o.checked() is None


def test_same_bytes_are_fresh_without_checking_a_signature(st, verified, checks):
    memo, body = verified
    [o] = run([st], NoNetwork(), T0 + HOUR, memo)
    assert o.result is Result.FRESH and o.result.exit_code == 0, o.message
    assert checks["verify"] == 0 and checks["issued_by"] == 0
    assert o.staple is not None and o.staple.der == body and o.staple.status is CertStatus.GOOD
    assert o.must_staple is False and o.fetched is None
    assert f"next refresh after {DUE:%Y-%m-%d %H:%M} UTC" in o.message
    assert st.output.read_bytes() == body


@pytest.mark.parametrize("recall", ["none", "empty memo", "recall fails", "force"])
def test_without_a_usable_verdict_the_staple_is_checked_in_full(st, core_ca, leaf, verified, checks, recall):
    """Twin of the shortcut: the same files, no verdict to take (or --force)."""
    memo, body = verified
    if recall == "none":
        o = run([st], NoNetwork(), T0 + HOUR)[0]
    elif recall == "empty memo":
        o = run([st], NoNetwork(), T0 + HOUR, Memo())[0]
    elif recall == "recall fails":
        def broken(_st):
            raise RuntimeError("bug in the recall")
        o = run([st], NoNetwork(), T0 + HOUR, broken)[0]
    else:
        newer = respond(core_ca, leaf, T0)
        net = Network(newer)
        o = run([replace(st, force=True)], net, T0 + HOUR, memo)[0]
        assert o.result is Result.WRITTEN and net.requests == 1 and st.output.read_bytes() == newer
    if recall != "force":
        assert o.result is Result.FRESH and o.staple.der == body
    assert checks["verify"] >= 1 and checks["issued_by"] == 1


def test_leftover_temp_file_means_a_visit_under_the_lock(st, verified, checks):
    """A killed run's temp file beside the staple: decided in full (and cleaned up)."""
    memo, body = verified
    leftover = st.output.with_name(f".{st.output.name}.x1y2z3{TEMP_SUFFIX}")
    leftover.write_bytes(b"half a staple")
    [o] = run([st], NoNetwork(), T0 + HOUR, memo)
    assert o.result is Result.FRESH
    assert checks["verify"] >= 1
    assert not leftover.exists()


# -- 2. any changed input misses the verdict ----------------------------------------

def test_one_flipped_staple_byte_misses_the_verdict(st, core_ca, leaf, verified, checks):
    memo, body = verified
    st.output.write_bytes(flip_last_byte(body))
    newer = respond(core_ca, leaf, T0)
    net = Network(newer)
    [o] = run([st], net, T0 + HOUR, memo)
    assert o.result is Result.WRITTEN, o.message
    assert net.requests == 1 and checks["verify"] >= 2  # the one on disk, and the fetched one
    assert st.output.read_bytes() == newer


def test_forged_staple_misses_the_verdict_and_is_not_trusted(st, core_ca, leaf, verified, checks):
    """A staple signed by an unrelated CA with the very same name as ours."""
    memo, body = verified
    impostor = CA.root(core_ca.cert.subject.rfc4514_string().split("=", 1)[1], now=T0)
    assert impostor.cert.subject == core_ca.cert.subject
    forged = impostor.respond(leaf.cert, issuer=core_ca.cert, signer=impostor,
                              this_update=T0 - HOUR, produced_at=T0 - HOUR, next_update=T0 + 4 * DAY)
    st.output.write_bytes(forged)
    [o] = run([st], Network(FetchError("cannot reach responder")), T0 + HOUR, memo)
    assert o.result is Result.MISSING and o.result.exit_code == 2, o.message
    assert "unusable" in o.message
    assert o.staple is None and o.checked() is None
    assert checks["verify"] >= 1


def test_another_leaf_in_the_cert_file_misses_the_verdict(st, core_ca, verified, checks):
    """A renewed certificate: the staple on disk is about the old serial."""
    memo, body = verified
    renewed = core_ca.issue("recall.example.test", ocsp_urls=(URL,))
    write_pem(st.cert, renewed, core_ca.cert)
    new_body = respond(core_ca, renewed, T0)
    net = Network(new_body)
    [o] = run([st], net, T0 + HOUR, memo)
    assert o.result is Result.WRITTEN and net.requests == 1, o.message
    assert st.output.read_bytes() == new_body
    assert checks["verify"] >= 2 and checks["issued_by"] == 1


def test_issuer_file_of_another_ca_misses_the_verdict(st, verified, checks):
    memo, body = verified
    write_pem(st.issuer, CA.root("Some Other Root", now=T0).cert)
    [o] = run([st], NoNetwork(), T0 + HOUR, memo)
    assert o.result is Result.BAD_INPUT and "did not sign" in o.message, o.message
    assert checks["issued_by"] == 1


def _nothing(st, monkeypatch):
    return st


def _issuer_with_extra_cert(st, monkeypatch):
    write_pem(st.issuer, st.issuer.read_bytes(), CA.root("Extra Root", now=T0).cert)
    return st


def _cert_file_reformatted(st, monkeypatch):
    st.cert.write_bytes(st.cert.read_bytes() + b"\n")
    return st


def _urls_given(st, monkeypatch):
    return replace(st, urls=("http://elsewhere.test/",))


def _default_validity(st, monkeypatch):
    return replace(st, default_validity=dt.timedelta(hours=12))


def _checks_version(st, monkeypatch):
    monkeypatch.setattr(refresh, "CHECKS_VERSION", refresh.CHECKS_VERSION + b" (changed)")
    return st


@pytest.mark.parametrize("change, verifies", [
    (_nothing, 0),  # the control: the verdict is taken
    (_issuer_with_extra_cert, 1),
    (_cert_file_reformatted, 1),
    (_urls_given, 1),
    (_default_validity, 1),
    (_checks_version, 1),
], ids=lambda v: v.__name__.strip("_") if callable(v) else str(v))
def test_changed_input_that_keeps_the_staple_valid_is_checked_in_full(st, verified, checks, monkeypatch,
                                                                      change, verifies):
    """Still FRESH either way (nothing here makes the staple invalid); only
    byte-identical inputs, settings and checks take the verdict."""
    memo, body = verified
    changed = change(st, monkeypatch)
    [o] = run([changed], NoNetwork(), T0 + HOUR, memo)
    assert o.result is Result.FRESH, o.message
    assert checks["verify"] == verifies and checks["issued_by"] == verifies


def test_checked_digest_covers_what_the_checks_depend_on(st, monkeypatch):
    cert, issuer, staple = b"cert bytes", b"issuer bytes", b"staple bytes"
    base = checked_digest(st, Inputs(cert, issuer, None), staple)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checked_digest(st, Inputs(cert, issuer, None), staple) == base
    # Settings that do not bear on the checks leave it alone.
    for other in (replace(st, name="x"), replace(st, timeout=1.0), replace(st, refresh_at=0.9),
                  replace(st, proxy="http://proxy.test:3128"), replace(st, force=True),
                  replace(st, lock_timeout=1.0), replace(st, output=st.output.with_name("other.ocsp"))):
        assert checked_digest(other, Inputs(cert, issuer, None), staple) == base, other
    # Everything that does changes it.
    changed = {
        "cert": checked_digest(st, Inputs(cert + b"\n", issuer, None), staple),
        "issuer": checked_digest(st, Inputs(cert, issuer + b"x", None), staple),
        "issuer in cert file": checked_digest(st, Inputs(cert, None, None), staple),
        "empty issuer file": checked_digest(st, Inputs(cert, b"", None), staple),
        "bytes moved between parts": checked_digest(st, Inputs(cert, issuer + staple[:1], None), staple[1:]),
        "staple": checked_digest(st, Inputs(cert, issuer, None), flip_last_byte(staple)),
        "urls": checked_digest(replace(st, urls=(URL,)), Inputs(cert, issuer, None), staple),
        "two urls": checked_digest(replace(st, urls=(URL, "http://b.test/")), Inputs(cert, issuer, None), staple),
        "default_validity": checked_digest(replace(st, default_validity=dt.timedelta(days=2)),
                                           Inputs(cert, issuer, None), staple),
    }
    monkeypatch.setattr(refresh, "CHECKS_VERSION", refresh.CHECKS_VERSION + b" next")
    changed["CHECKS_VERSION"] = checked_digest(st, Inputs(cert, issuer, None), staple)
    assert base not in changed.values()
    assert len(set(changed.values())) == len(changed), changed


# -- 3. time ---------------------------------------------------------------------

def test_recalled_staple_before_its_refresh_point_is_fresh(st, verified, checks):
    memo, body = verified
    [o] = run([st], NoNetwork(), DUE - dt.timedelta(minutes=1), memo)
    assert o.result is Result.FRESH and checks["verify"] == 0


def test_recalled_staple_past_its_refresh_point_is_refreshed(st, core_ca, leaf, verified, checks):
    memo, body = verified
    newer = respond(core_ca, leaf, DUE)
    net = Network(newer)
    [o] = run([st], net, DUE + dt.timedelta(minutes=1), memo)
    assert o.result is Result.WRITTEN and net.requests == 1, o.message
    assert st.output.read_bytes() == newer


def test_due_recalled_staple_held_by_max_age_is_fresh(st, verified, checks):
    """Due, but the responder's max-age said not to ask yet: still the shortcut."""
    memo, body = verified
    now = DUE + dt.timedelta(minutes=1)
    [o] = run([st], NoNetwork(), now, memo, hold=lambda _st: now + HOUR)
    assert o.result is Result.FRESH and "max-age" in o.message
    assert checks["verify"] == 0


@pytest.mark.parametrize("now", [EXPIRES + dt.timedelta(minutes=1), EXPIRES - dt.timedelta(minutes=4),
                                 T0 - 3 * HOUR],
                         ids=["expired", "less-than-5-minutes-left", "clock-behind-this-update"])
def test_recalled_staple_out_of_its_window_is_not_fresh(st, verified, checks, now):
    memo, body = verified
    net = Network(FetchError("cannot reach responder"))
    [o] = run([st], net, now, memo)
    assert o.result is Result.MISSING and o.result.exit_code == 2, o.message
    assert net.requests >= 1 and checks["verify"] >= 1
    assert st.output.read_bytes() == body  # kept on disk, but not called usable


# -- 4. revoked and must-staple -------------------------------------------------------

def test_recalled_revocation_is_revoked_never_fresh(st, core_ca, leaf, checks):
    revoked = respond(core_ca, leaf, status="revoked")
    memo = Memo()
    assert first_run(st, revoked, memo).result is Result.REVOKED
    assert memo.verdicts[st.output].response.status is CertStatus.REVOKED
    checks.clear()
    outcomes = run([st], NoNetwork(), T0 + HOUR, memo)
    [o] = outcomes
    assert o.result is Result.REVOKED and exit_code(outcomes) == 2, o.message
    assert "REVOKED" in o.message and o.staple.status is CertStatus.REVOKED
    assert checks["verify"] == 0


def test_recalled_must_staple_verdict_marks_the_outcome(tmp_path, core_ca, checks):
    must = core_ca.issue("must.example.test", ocsp_urls=(URL,), must_staple=True)
    cert = write_pem(tmp_path / "must.pem", must, core_ca.cert)
    st = Staple(name="must", cert=cert, output=tmp_path / "must.pem.ocsp")  # issuer in the cert file
    memo = Memo()
    o = first_run(st, respond(core_ca, must), memo)
    assert o.must_staple and memo.verdicts[st.output].must_staple
    checks.clear()
    [o] = run([st], NoNetwork(), T0 + HOUR, memo)
    assert o.result is Result.FRESH and o.must_staple is True
    assert checks["verify"] == 0 and checks["issued_by"] == 0


# -- a tampered staple among recalled ones ---------------------------------------------------

@pytest.mark.parametrize("tampered", [None, 3], ids=["same-bytes", "one-tampered"])
def test_a_run_recalls_each_staple_on_its_own(st, core_ca, leaf, checks, tampered):
    """All in this process (no fork since issue 15): a tampered staple is
    checked in full and refused; the others are recalled."""
    body = respond(core_ca, leaf)
    staples = [replace(st, name=f"s{i}", output=st.output.with_name(f"s{i}.ocsp")) for i in range(4)]
    memo = Memo()
    memo.save(run(staples, Network(body), T0, memo))
    assert len(memo.verdicts) == 4
    if tampered is not None:
        staples[tampered].output.write_bytes(flip_last_byte(body))
    checks.clear()
    outcomes = run(staples, Network(FetchError("down")), T0 + HOUR, memo)
    want = [Result.FRESH] * 4
    if tampered is not None:
        want[tampered] = Result.MISSING
    assert [o.result for o in outcomes] == want
    assert [o.name for o in outcomes] == ["s0", "s1", "s2", "s3"]
    if tampered is None:
        assert checks["verify"] == 0
    else:
        assert checks["verify"] >= 1 and set(checks.verified) == {flip_last_byte(body)}


# -- a recalled outcome carries its digest ------------------------------------------------

def test_recalled_outcome_carries_its_digest(st, verified, checks):
    memo, body = verified
    [o] = run([st], NoNetwork(), T0 + HOUR, memo)
    assert o.result is Result.FRESH and checks["verify"] == 0
    assert o.digest == memo.verdicts[st.output].digest
    assert o.checked() == memo.verdicts[st.output]


# -- 5. the state record ---------------------------------------------------------------

MICRO = dt.datetime(2026, 11, 24, 11, 0, 0, 123456, tzinfo=UTC)


def verdict(status: CertStatus = CertStatus.REVOKED) -> Checked:
    revoked = status is CertStatus.REVOKED
    return Checked(digest="ab" * 32, must_staple=revoked, response=VerifiedResponse(
        der=b"", status=status, this_update=MICRO, next_update=MICRO + 4 * DAY if revoked else None,
        produced_at=MICRO + dt.timedelta(microseconds=1), expires=MICRO + 4 * DAY - dt.timedelta(microseconds=7),
        signer="delegated responder OCSP Responder" if revoked else "the issuer",
        signer_not_before=MICRO - DAY if revoked else None,
        revocation_time=MICRO - HOUR if revoked else None, revocation_reason="key_compromise" if revoked else None))


@pytest.mark.parametrize("status", list(CertStatus))
def test_record_with_a_verdict_round_trips_to_the_microsecond(status):
    rec = Record(last_attempt=T0, last_success=T0, consecutive_failures=0, last_result="written",
                 checked=verdict(status))
    text = json.dumps(rec.to_json())
    back = Record.from_json(json.loads(text))
    assert back == rec
    assert back.checked.response.expires.microsecond == 123456 - 7
    assert back.checked.response.produced_at.microsecond == 123457
    assert json.loads(text)["checked"]["digest"] == "ab" * 32
    assert "checked" not in Record(last_attempt=T0).to_json()


def save_record(output: Path, state_dir: Path | None, rec: Record) -> Path:
    state.save(output, state_dir, rec, lock_timeout=5)
    return state.state_path(output, state_dir)


@pytest.mark.parametrize("where", ["beside", "state-dir"])
@pytest.mark.parametrize("mode, believed", [(0o600, True), (0o644, True), (0o640, True),
                                            (0o664, False), (0o646, False), (0o620, False), (0o666, False)],
                         ids=lambda v: oct(v) if isinstance(v, int) and not isinstance(v, bool) else str(v))
def test_recall_believes_only_a_record_no_one_else_can_write(tmp_path, where, mode, believed):
    out = tmp_path / "site.pem.ocsp"
    state_dir = tmp_path / "states" if where == "state-dir" else None
    rec = Record(last_attempt=T0, consecutive_failures=3, last_error="down", checked=verdict())
    path = save_record(out, state_dir, rec)
    os.chmod(path, mode)
    assert state.recall(out, state_dir) == (rec.checked if believed else None)
    # Every field comes only from a record that is ours alone (spec, "Trust on
    # the local disk"): the counters and the error as much as the verdict.
    assert state.load(out, state_dir) == (rec if believed else Record())


def test_recall_ignores_a_record_owned_by_another_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    out = tmp_path / "site.pem.ocsp"
    rec = Record(consecutive_failures=2, checked=verdict())
    path = save_record(out, None, rec)
    os.chmod(path, 0o644)
    os.chown(path, 65534, -1)
    assert state.recall(out, None) is None
    assert state.load(out, None) == Record()
    os.chown(path, os.geteuid(), -1)  # the twin: ours again
    assert state.recall(out, None) == rec.checked
    assert state.load(out, None) == rec


def _set(key: str, value):
    def change(c: dict) -> None:
        c["response"][key] = value
    return change


CORRUPT = {
    "untouched": None,  # the control
    "no digest": lambda c: c.pop("digest"),
    "no response": lambda c: c.pop("response"),
    "no expires": lambda c: c["response"].pop("expires"),
    "bad status": _set("status", "maybe"),
    "time without zone": _set("this_update", "2026-11-24T11:00:00"),
    "time not UTC": _set("expires", "2026-11-28T11:00:00+02:00"),
    "time not a string": _set("produced_at", 1764000000),
    "digest not a string": lambda c: c.update(digest=None),
    "must_staple not a bool": lambda c: c.update(must_staple="yes"),
    "signer not a string": _set("signer", ["the issuer"]),
    "response not an object": lambda c: c.update(response=[1, 2]),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_verdict_is_not_used_but_the_rest_of_the_record_is(tmp_path, name):
    out = tmp_path / "site.pem.ocsp"
    rec = Record(last_attempt=T0, failing_since=T0, consecutive_failures=4, last_error="tryLater",
                 checked=verdict())
    path = save_record(out, None, rec)
    d = json.loads(path.read_text())
    if CORRUPT[name] is not None:
        CORRUPT[name](d["checked"])
    path.write_text(json.dumps(d))
    want = rec.checked if CORRUPT[name] is None else None
    assert state.recall(out, None) == want
    loaded = state.load(out, None)
    assert loaded == replace(rec, checked=want)


@pytest.mark.parametrize("content, want", [
    (None, None), (b"{not json", None), (b'{"version": 2, "checked": {}}', None), (b"[]", None),
    (b"x" * (state.MAX_RECORD + 1), None), (b"[" * 60000, None), ("ours", "ours"),
], ids=["missing", "unparsable", "other-version", "not-an-object", "too-large", "deeply-nested", "ours"])
def test_recall_of_a_missing_or_foreign_record_is_none(tmp_path, content, want):
    out = tmp_path / "site.pem.ocsp"
    rec = Record(checked=verdict(), consecutive_failures=3)
    path = save_record(out, None, rec)
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    assert state.recall(out, None) == (rec.checked if want else None)
    # load() reads the whole record: an empty one for anything it cannot read (never an exception)
    assert state.load(out, None) == (rec if want else Record())


# -- 6. the CLI end to end ---------------------------------------------------------------

def cli_refresh(site: Site) -> Run:
    return run_cli("refresh", "--cert", site.cert, "--issuer", site.issuer, "--output", site.output,
                   "--timeout", "5", timeout=30)


def record_of(site: Site) -> Path:
    return site.output.with_name(f".{site.output.name}.state.json")


def expected_digest(site: Site, staple: bytes) -> str:
    st = Staple(name=str(site.cert), cert=site.cert, issuer=site.issuer, output=site.output)
    return checked_digest(st, Inputs(site.cert.read_bytes(), site.issuer.read_bytes(), None), staple)


def test_cli_second_run_takes_the_verdict_and_writes_nothing(site: Site, responder: Responder):
    assert_silent_success(cli_refresh(site))
    staple = site.output.read_bytes()
    record = record_of(site)
    checked = json.loads(record.read_text())["checked"]
    assert re.fullmatch(r"[0-9a-f]{64}", checked["digest"])
    assert checked["digest"] == expected_digest(site, staple)
    assert checked["response"]["status"] == "good" and checked["must_staple"] is False
    before = record.stat()
    asked = responder.requests

    assert_silent_success(cli_refresh(site))
    assert responder.requests == asked
    after = record.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert site.output.read_bytes() == staple


def test_cli_flipped_staple_byte_is_fetched_again(site: Site, responder: Responder, ca: CA):
    """Twin: the same second run over a staple with one byte of its signature flipped."""
    assert_silent_success(cli_refresh(site))
    tampered = flip_last_byte(site.output.read_bytes())
    pair = ocspstaple.certs.Pair(cert=site.leaf.cert, issuer=ca.cert)
    with pytest.raises(ValidationError):
        ocspstaple.validate.verify(tampered, pair=pair)
    site.output.write_bytes(tampered)
    asked = responder.requests

    assert_silent_success(cli_refresh(site))
    assert responder.requests == asked + 1
    staple = site.output.read_bytes()
    assert staple != tampered
    assert ocspstaple.validate.verify(staple, pair=pair).status is CertStatus.GOOD
    assert json.loads(record_of(site).read_text())["checked"]["digest"] == expected_digest(site, staple)


def test_cli_uses_the_recorded_verdict_only_from_a_record_of_ours(site: Site, responder: Responder, ca: CA):
    """The CLI really recalls: a staple due by its own bytes (75% through its
    window) whose recorded verdict was edited to a longer window is FRESH with
    no request while the record is ours alone; once the record is
    group-writable, the verdict is not believed and the due staple is asked
    for.  (That an edited record is believed is why only our own are.)"""
    t = dt.datetime.now(UTC).replace(microsecond=0)
    body = ca.respond(site.leaf.cert, this_update=t - 3 * DAY, next_update=t + DAY)
    responder.serve(body)
    assert_silent_success(cli_refresh(site))
    assert site.output.read_bytes() == body
    record = record_of(site)
    d = json.loads(record.read_text())
    later = (t + 10 * DAY).isoformat()
    d["checked"]["response"].update(next_update=later, expires=later)
    record.write_text(json.dumps(d))
    os.chmod(record, 0o644)
    asked = responder.requests

    assert_silent_success(cli_refresh(site))  # FRESH by the edited verdict
    assert responder.requests == asked

    os.chmod(record, 0o664)
    assert_silent_success(cli_refresh(site))  # due by its own bytes; nothing newer: UNCHANGED
    assert responder.requests > asked
    assert site.output.read_bytes() == body


@pytest.mark.parametrize("where", ["beside the target", "beside the link"])
def test_cli_recalls_a_symlinked_output_from_the_record_beside_its_target(site: Site, responder: Responder,
                                                                         ca: CA, tmp_path: Path, where: str):
    """A staple reached through a symlink of ours has its record beside the
    file the link names (state.state_path); the shortcut finds it there from
    the staple's own read (FileStore.target), with no link resolved again.
    As above, a due staple with an edited, longer verdict shows whether the
    record was recalled.  Twin: the same record beside the link is not the
    staple's record, and the due staple is asked for."""
    archive = tmp_path / "archive"
    archive.mkdir()
    target = archive / "site1.der"
    link = site.output
    link.symlink_to(target)
    t = dt.datetime.now(UTC).replace(microsecond=0)
    body = ca.respond(site.leaf.cert, this_update=t - 3 * DAY, next_update=t + DAY)
    responder.serve(body)
    assert_silent_success(cli_refresh(site))
    assert link.is_symlink() and target.read_bytes() == body
    record = archive / ".site1.der.state.json"
    assert state.state_path(link, None) == record and not record_of(site).exists()
    d = json.loads(record.read_text())
    later = (t + 10 * DAY).isoformat()
    d["checked"]["response"].update(next_update=later, expires=later)
    record.write_text(json.dumps(d))
    if where == "beside the link":
        record.rename(record_of(site))
    asked = responder.requests

    assert_silent_success(cli_refresh(site))
    if where == "beside the target":
        assert responder.requests == asked  # FRESH by the edited verdict: recalled
    else:
        assert responder.requests > asked  # due by its own bytes: asked (nothing newer: UNCHANGED)
    assert link.is_symlink() and target.read_bytes() == body
