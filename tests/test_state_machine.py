"""Random sequences (issue 6, item 5): a stateful hypothesis test of the core.

A responder (a fake network serving bytes that a real CA signed) is driven
through random sequences of good, older, equal, revoked, unknown, expired,
future, failing and forged answers while a fake clock moves forward; every
step is one ``refresh_one`` on the real FileStore in a temporary directory,
with or without --force.

After every step, with the test's own bookkeeping of what each served body
is (nothing parsed by the code under test):

* the file on disk is missing or is a body that was valid when served;
* it is never older than any valid response fetched so far that is still
  usable now (all answers share one validity length, so a fresher response
  never expires before an older one);
* once a revocation was taken, the file says revoked for good;
* and the file is exactly what the spec's rules (when to fetch, validity,
  fresher, revocation is final) say it must be.
"""
from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from conftest import AnswerNetwork, examples
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pki import CA, DAY, HOUR, unsuccessful, write_pem

from ocspstaple.config import Staple
from ocspstaple.errors import FetchError
from ocspstaple.refresh import Result, refresh_one
from ocspstaple.store import TEMP_SUFFIX, FileStore

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)
SKEW = 5 * MIN
VALIDITY = 4 * DAY  # every answer's nextUpdate - thisUpdate
URL = "http://ocsp.test/"

# One PKI for every run of the machine (keys are slow to make).
CA_ = CA.root("State Machine Root", now=T0)
LEAF = CA_.issue("sm.example.test", ocsp_urls=(URL,))
DELEGATE = CA_.delegate("SM Responder", not_before=T0 - 10 * DAY, not_after=T0 + 3650 * DAY)
FORGERS = {
    "impostor CA": CA.root("State Machine Root", now=T0),
    "delegate without EKU": CA_.delegate("SM Responder", eku=False),
    "CA-flagged signer": CA_.issue("SM Responder", is_ca=True, ocsp_urls=(), eku=[ExtendedKeyUsageOID.OCSP_SIGNING]),
}


@dataclass(frozen=True)
class Body:
    """What the test knows about a body it served."""

    data: bytes
    this_update: dt.datetime
    next_update: dt.datetime
    status: str  # good, revoked, unknown
    signed_properly: bool

    def valid_at(self, now: dt.datetime) -> bool:
        """Spec invariant 1-5, from the test's own knowledge of the body."""
        return (self.signed_properly and self.status in ("good", "revoked")
                and self.this_update <= now + SKEW and self.next_update > now + SKEW)

    def usable_at(self, now: dt.datetime) -> bool:
        return self.this_update <= now + SKEW and self.next_update > now + SKEW




class StapleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ocspstaple-sm-"))
        cert = write_pem(self.dir / "cert.pem", LEAF, CA_.cert)
        self.staple = Staple(name=str(cert), cert=cert, output=self.dir / "cert.pem.ocsp")
        self.now = T0
        self.network = AnswerNetwork(FetchError("no answer set"))
        self.bodies: dict[bytes, Body] = {}
        self.best_fetched: list[Body] = []  # valid, eligible bodies that were fetched
        self.revocation_taken = False
        self.expected: bytes | None = None  # what the spec says the file holds

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the responder's answers ----------------------------------------------------
    def _sign(self, this_update: dt.datetime, *, status: str = "good", signer=None, proper: bool = True,
              next_update: dt.datetime | None = None) -> Body:
        data = CA_.respond(LEAF.cert, status=status, this_update=this_update, produced_at=this_update,
                           next_update=next_update or this_update + VALIDITY, signer=signer)
        body = Body(data, this_update, next_update or this_update + VALIDITY, status, proper)
        self.bodies[data] = body
        return body

    def _on_disk(self) -> Body | None:
        data = self.staple.output.read_bytes() if self.staple.output.exists() else None
        return None if data is None else self.bodies[data]

    def _refresh(self, answer: Body | bytes | Exception, force: bool) -> None:
        """One run, and the spec's verdict on it, side by side."""
        self.network.answer = answer.data if isinstance(answer, Body) else answer
        before = self._on_disk()
        asked_before = self.network.requests
        st_ = replace(self.staple, force=force)
        outcome = refresh_one(st_, network=self.network, clock=lambda: self.now, store=FileStore())
        fetched = self.network.requests > asked_before

        # The spec's verdict.
        now = self.now
        usable = before if before is not None and before.valid_at(now) else None
        due = usable is None or force or now >= usable.this_update + (usable.next_update - usable.this_update) / 2
        assert fetched == due, (fetched, due, outcome)
        expected = before
        if fetched and isinstance(answer, Body) and answer.valid_at(now):
            revoked_on_disk = before is not None and before.signed_properly and before.status == "revoked"
            final = revoked_on_disk and answer.status == "good"
            # A validly signed revocation replaces a good staple whatever its
            # thisUpdate (spec: an older "revoked" is never refused as a replay).
            fresher = usable is None or answer.this_update > usable.this_update or (
                answer.status == "revoked" and usable.status == "good")
            if not final:
                self.best_fetched.append(answer)
            if fresher and not final:
                expected = answer
                self.revocation_taken |= answer.status == "revoked"
        after = self._on_disk()
        assert after == expected, f"spec says {expected}, disk has {after}; outcome {outcome}"
        # ... and the exit code says what is on disk now.
        if after is None or not after.valid_at(now):
            assert outcome.result.exit_code == 2, outcome
        elif after.status == "revoked":
            assert outcome.result is Result.REVOKED, outcome
        else:
            assert outcome.result.exit_code in (0, 1), outcome

    # -- rules ------------------------------------------------------------------------
    @rule(minutes=st.integers(1, 3 * 24 * 60))
    def clock_moves_on(self, minutes: int) -> None:
        self.now += minutes * MIN

    @rule(age=st.integers(-4, 180), by_delegate=st.booleans(), force=st.booleans())
    def good(self, age: int, by_delegate: bool, force: bool) -> None:
        self._refresh(self._sign(self.now - age * MIN, signer=DELEGATE if by_delegate else None), force)

    @rule(age=st.integers(0, 180), force=st.booleans())
    def revoked(self, age: int, force: bool) -> None:
        self._refresh(self._sign(self.now - age * MIN, status="revoked"), force)

    @precondition(lambda self: self._on_disk() is not None)
    @rule(back=st.integers(1, 600), force=st.booleans())
    def older(self, back: int, force: bool) -> None:
        disk = self._on_disk()
        assert disk is not None
        self._refresh(self._sign(disk.this_update - back * MIN), force)

    @precondition(lambda self: self._on_disk() is not None)
    @rule(force=st.booleans(), same_bytes=st.booleans())
    def equal(self, force: bool, same_bytes: bool) -> None:
        disk = self._on_disk()
        assert disk is not None
        self._refresh(disk if same_bytes else self._sign(disk.this_update, status=disk.status), force)

    @rule(kind=st.sampled_from(["unknown", "expired", "future", "tryLater", "internalError", "garbage",
                                "unreachable", "empty"]), force=st.booleans())
    def failing(self, kind: str, force: bool) -> None:
        answers: dict[str, object] = {
            "unknown": lambda: self._sign(self.now - HOUR, status="unknown"),
            "expired": lambda: self._sign(self.now - 5 * DAY, next_update=self.now - HOUR),
            "future": lambda: self._sign(self.now + 10 * MIN),
            "tryLater": lambda: unsuccessful("tryLater"),
            "internalError": lambda: unsuccessful("internalError"),
            "garbage": lambda: b"<html>busy</html>",
            "unreachable": lambda: FetchError("cannot reach responder http://ocsp.test/: refused"),
            "empty": lambda: b"",
        }
        self._refresh(answers[kind](), force)  # type: ignore[operator]

    @rule(forger=st.sampled_from(sorted(FORGERS)), status=st.sampled_from(["good", "revoked"]),
          force=st.booleans())
    def forged(self, forger: str, status: str, force: bool) -> None:
        signer = FORGERS[forger]
        data = CA_.respond(LEAF.cert, status=status, this_update=self.now, produced_at=self.now,
                           next_update=self.now + VALIDITY, signer=signer)
        self.bodies[data] = Body(data, self.now, self.now + VALIDITY, status, False)
        self._refresh(self.bodies[data], force)

    @rule(force=st.booleans(), where=st.integers(0, 10_000))
    def tampered(self, force: bool, where: int) -> None:
        """A fresh good response, re-dated after signing: the signature no longer covers it."""
        good = self._sign(self.now - MIN)
        del self.bodies[good.data]
        stamp = (self.now - MIN).strftime("%Y%m%d%H%M%SZ").encode()
        later = (self.now).strftime("%Y%m%d%H%M%SZ").encode()
        data = good.data.replace(stamp, later)
        if data == good.data:  # no timestamp to move: flip a signature bit instead
            b = bytearray(good.data)
            b[-1 - where % 8] ^= 1
            data = bytes(b)
        self.bodies[data] = Body(data, self.now, self.now + VALIDITY, "good", False)
        self._refresh(self.bodies[data], force)

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def the_file_is_a_valid_response(self) -> None:
        disk = self._on_disk()
        if disk is not None:
            assert disk.signed_properly and disk.status in ("good", "revoked"), disk
        assert not [p for p in self.dir.iterdir() if p.name.endswith(TEMP_SUFFIX)]

    @invariant()
    def never_older_than_the_best_valid_response_seen(self) -> None:
        still_usable = [b for b in self.best_fetched if b.usable_at(self.now)]
        disk = self._on_disk()
        if disk is not None and disk.status == "revoked":
            # A revocation replaces a good staple whatever its thisUpdate
            # (spec); it is still never older than the best revocation seen.
            still_usable = [b for b in still_usable if b.status == "revoked"]
        if still_usable:
            assert disk is not None
            assert disk.this_update >= max(b.this_update for b in still_usable), disk

    @invariant()
    def revoked_once_a_revocation_was_taken(self) -> None:
        if self.revocation_taken:
            disk = self._on_disk()
            assert disk is not None and disk.status == "revoked", disk


StapleMachine.TestCase.settings = settings(
    max_examples=examples(40), stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStapleMachine = StapleMachine.TestCase
