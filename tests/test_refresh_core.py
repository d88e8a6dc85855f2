"""The refresh story with the clock, the network and the disk passed in.

The network is a hand-written fake (the edge); the crypto is real; the disk
is real files in tmp_path, or a fake store where a disk failure is the point.
"""
from __future__ import annotations

import datetime as dt
import resource
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FixedClock as Clock
from conftest import NoNetwork
from pki import CA, DAY, HOUR, unsuccessful, write_pem

from ocspstaple.config import BadEntry, Staple
from ocspstaple.errors import FetchError, StoreError
from ocspstaple.fetch import HttpReply
from ocspstaple.refresh import Result, exit_code, refresh_one
from ocspstaple.run import refresh_all
from ocspstaple.store import FileStore, lock_path

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
URL = "http://ocsp.test/"
MIN = dt.timedelta(minutes=1)


class Network:
    """Serves queued bodies (or raises queued errors) for whatever is asked."""

    def __init__(self, *answers: bytes | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def __call__(self, timeout: float, proxy: str | None) -> "Network":
        return self

    def _next(self, url: str) -> HttpReply:
        self.asked.append(url)
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a
        return HttpReply(200, a)

    def get(self, url: str) -> HttpReply:
        return self._next(url)

    def post(self, url: str, body: bytes) -> HttpReply:
        return self._next(url)


class FailingWrites(FileStore):
    def write(self, path: Path, data: bytes) -> None:
        raise StoreError(f"cannot write {path}: No space left on device")


class ShortWrites(FileStore):
    """The real file layer on the real disk, where no file may grow past half of
    what is written (RLIMIT_FSIZE): the kernel takes the first half and then
    refuses with EFBIG, as a filling disk would.  Python ignores SIGXFSZ, so
    the refusal is an OSError, not the end of the test.  Written in place, the
    old staple would be left cut in half."""

    def write(self, path: Path, data: bytes) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, hard))
        try:
            super().write(path, data)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.root("Refresh Core Root", now=T0)


@pytest.fixture
def setup(tmp_path, ca):
    leaf = ca.issue("core.example.test", ocsp_urls=(URL,))
    cert = write_pem(tmp_path / "cert.pem", leaf, ca.cert)
    st = Staple(name=str(cert), cert=cert, output=tmp_path / "cert.pem.ocsp")

    def resp(this_update: dt.datetime = T0 - HOUR, next_update: dt.datetime | None = None, **kw) -> bytes:
        return ca.respond(leaf.cert, this_update=this_update, produced_at=this_update,
                          next_update=next_update or this_update + 4 * DAY, **kw)

    return st, resp


def run(st, network, now, store=None, **kw):
    return refresh_one(st, network=network, clock=Clock(now), store=store or FileStore(), **kw)


def test_no_staple_fetches_and_writes(setup):
    st, resp = setup
    body = resp()
    o = run(st, Network(body), T0)
    assert o.result is Result.WRITTEN and o.changed
    assert st.output.read_bytes() == body


def test_no_staple_and_failure_is_missing(setup):
    st, resp = setup
    o = run(st, Network(unsuccessful("tryLater")), T0)
    assert o.result is Result.MISSING and o.result.exit_code == 2
    assert "tryLater" in o.message and "none on disk" in o.message
    assert not st.output.exists()


def test_fresh_staple_uses_no_network(setup):
    st, resp = setup
    st.output.write_bytes(resp())
    o = run(st, NoNetwork(), T0 + HOUR)
    assert o.result is Result.FRESH and o.result.exit_code == 0


def test_staple_past_half_life_is_refreshed(setup):
    st, resp = setup
    old = resp(T0 - 3 * DAY, T0 + DAY)  # 75% through its window
    st.output.write_bytes(old)
    new = resp(T0 - HOUR)
    net = Network(new)
    o = run(st, net, T0)
    assert o.result is Result.WRITTEN and net.asked
    assert st.output.read_bytes() == new


def test_refresh_at_fraction_moves_the_due_time(setup):
    st, resp = setup
    st.output.write_bytes(resp(T0 - 3 * DAY, T0 + DAY))
    o = run(replace(st, refresh_at=0.9), NoNetwork(), T0)
    assert o.result is Result.FRESH


def test_force_fetches_a_fresh_staple(setup):
    st, resp = setup
    st.output.write_bytes(resp(T0 - 2 * HOUR))
    new = resp(T0 - HOUR)
    o = run(replace(st, force=True), Network(new), T0)
    assert o.result is Result.WRITTEN and st.output.read_bytes() == new


def test_failure_keeps_valid_staple(setup):
    st, resp = setup
    old = resp(T0 - 3 * DAY, T0 + DAY)
    st.output.write_bytes(old)
    o = run(st, Network(FetchError("cannot reach responder http://ocsp.test/: refused")), T0)
    assert o.result is Result.KEPT and o.result.exit_code == 1
    assert "kept staple valid until 2026-11-25 12:00 UTC" in o.message
    assert st.output.read_bytes() == old


def test_expired_staple_and_failure_is_missing(setup):
    st, resp = setup
    old = resp(T0 - 5 * DAY, T0 - HOUR)
    st.output.write_bytes(old)
    o = run(st, Network(FetchError("down")), T0)
    assert o.result is Result.MISSING and "expired" in o.message
    assert st.output.read_bytes() == old


def test_expired_staple_is_replaced_by_anything_valid(setup):
    st, resp = setup
    st.output.write_bytes(resp(T0 - 5 * DAY, T0 - HOUR))
    new = resp(T0 - 2 * HOUR)
    assert run(st, Network(new), T0).result is Result.WRITTEN


@pytest.mark.parametrize("junk", [b"", b"garbage", b"\x30\x03\x0a\x01\x03"])
def test_unparsable_staple_on_disk_is_replaced(setup, junk):
    st, resp = setup
    st.output.write_bytes(junk)
    new = resp()
    o = run(st, Network(new), T0)
    assert o.result is Result.WRITTEN and st.output.read_bytes() == new


def test_staple_of_another_certificate_is_replaced(setup, ca):
    st, resp = setup
    other = ca.issue("other.example.test")
    st.output.write_bytes(ca.respond(other.cert, this_update=T0 - HOUR, produced_at=T0 - HOUR))
    assert run(st, Network(resp(T0 - 2 * HOUR)), T0).result is Result.WRITTEN


def test_older_response_is_refused(setup):
    st, resp = setup
    current = resp(T0 - HOUR)
    st.output.write_bytes(current)
    o = run(replace(st, force=True), Network(resp(T0 - 2 * HOUR)), T0)
    assert o.result is Result.KEPT and "older" in o.message
    assert st.output.read_bytes() == current


def test_equal_response_changes_nothing(setup):
    st, resp = setup
    current = resp(T0 - HOUR)
    st.output.write_bytes(current)
    same_time_other_bytes = resp(T0 - HOUR, T0 + 5 * DAY)
    o = run(replace(st, force=True), Network(same_time_other_bytes), T0)
    assert o.result is Result.UNCHANGED and o.result.exit_code == 0
    assert st.output.read_bytes() == current


def test_revocation_replaces_good_and_is_final(setup):
    st, resp = setup
    st.output.write_bytes(resp(T0 - 2 * HOUR))
    revoked = resp(T0 - HOUR, status="revoked")
    o = run(replace(st, force=True), Network(revoked), T0)
    assert o.result is Result.REVOKED and o.changed and "REVOKED" in o.message
    assert st.output.read_bytes() == revoked
    # a later "good" is refused: revocation is final
    o = run(replace(st, force=True), Network(resp(T0 - HOUR + MIN)), T0 + MIN)
    assert o.result is Result.REVOKED and not o.changed and "revocation is final" in o.message
    assert st.output.read_bytes() == revoked


def test_revocation_is_final_even_after_the_revoked_staple_expired(setup):
    st, resp = setup
    revoked = resp(T0 - 5 * DAY, T0 - DAY, status="revoked")
    st.output.write_bytes(revoked)
    o = run(st, Network(resp(T0 - HOUR)), T0)
    assert o.result is Result.MISSING and "revocation is final" in o.message
    assert st.output.read_bytes() == revoked
    # a fresher revoked response is taken
    newer = resp(T0 - HOUR, status="revoked")
    o = run(st, Network(newer), T0)
    assert o.result is Result.REVOKED and st.output.read_bytes() == newer


def test_revocation_with_the_same_this_update_is_passed_on(setup):
    st, resp = setup
    st.output.write_bytes(resp(T0 - HOUR))
    revoked = resp(T0 - HOUR, status="revoked")
    o = run(replace(st, force=True), Network(revoked), T0)
    assert o.result is Result.REVOKED and st.output.read_bytes() == revoked


def test_write_failure_keeps_the_old_staple(setup, tmp_path):
    st, resp = setup
    old = resp(T0 - 2 * HOUR)
    st.output.write_bytes(old)
    before = sorted(p.name for p in tmp_path.iterdir())
    o = run(replace(st, force=True), Network(resp(T0 - HOUR)), T0, store=ShortWrites())
    assert o.result is Result.KEPT and "File too large" in o.message and str(st.output) in o.message, o.message
    assert st.output.read_bytes() == old
    # Nothing half-written is left behind: only the staple's lock file is new.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, lock_path(st.output).name])
    # Twin: the same run on a disk that takes the whole file writes it.
    new = resp(T0 - HOUR)
    o = run(replace(st, force=True), Network(new), T0)
    assert o.result is Result.WRITTEN and st.output.read_bytes() == new, o.message


def test_revocation_that_cannot_be_written_is_still_loud(setup):
    st, resp = setup
    old = resp(T0 - 2 * HOUR)
    st.output.write_bytes(old)
    o = run(replace(st, force=True), Network(resp(T0 - HOUR, status="revoked")), T0, store=FailingWrites())
    assert o.result is Result.REVOKED and o.result.exit_code == 2
    assert "REVOKED" in o.message and "No space left" in o.message
    assert st.output.read_bytes() == old


def test_second_url_is_tried(setup):
    st, resp = setup
    good = resp()
    net = Network(FetchError("cannot reach responder http://first.test/"), good)
    o = run(replace(st, urls=("http://first.test/", "http://second.test/")), net, T0)
    assert o.result is Result.WRITTEN
    assert [u.split("/")[2] for u in net.asked] == ["first.test", "second.test"]


def test_all_urls_failing_names_each(setup):
    st, resp = setup
    net = Network(unsuccessful("tryLater"))
    o = run(replace(st, urls=("http://first.test/", "http://second.test/")), net, T0)
    assert o.result is Result.MISSING
    assert "http://first.test/: responder answered tryLater" in o.message
    assert "http://second.test/: responder answered tryLater" in o.message


def test_certificate_without_ocsp_url(tmp_path, ca):
    leaf = ca.issue("no-ocsp.example.test", ocsp_urls=())
    cert = write_pem(tmp_path / "cert.pem", leaf, ca.cert)
    st = Staple(name=str(cert), cert=cert, output=tmp_path / "cert.pem.ocsp")
    o = run(st, NoNetwork(), T0)
    assert o.result is Result.BAD_INPUT and "no OCSP responder URL" in o.message


def test_refresh_all_goes_on_after_a_bad_entry_and_a_crash(setup, ca, tmp_path):
    st, resp = setup

    class Crashing(FileStore):
        def lock(self, path, *, timeout):
            if path.name == "crash.ocsp":
                raise RuntimeError("bug")
            return super().lock(path, timeout=timeout)

    crash = replace(st, output=tmp_path / "crash.ocsp", name="crash")
    outcomes = refresh_all([BadEntry(name="broken", reason="[staple.broken]: missing key cert"), crash, st],
                           network=Network(resp()), clock=Clock(T0), store=Crashing())
    assert [o.result for o in outcomes] == [Result.BAD_INPUT, Result.INTERNAL, Result.WRITTEN]
    assert "internal error" in outcomes[1].message and "RuntimeError: bug" in outcomes[1].message
    assert exit_code(outcomes) == 70  # a bug is neither "kept" (1) nor bad input (2)
    assert exit_code(outcomes[:1]) == 2 and exit_code(outcomes[2:]) == 0


def test_lock_timeout_reports_what_is_on_disk(setup):
    st, resp = setup
    old = resp(T0 - 3 * DAY)  # still valid, but due: a staple not due needs no lock (test_concurrency)
    st.output.write_bytes(old)

    class Locked(FileStore):
        def lock(self, path, *, timeout):
            raise StoreError(f"another run held {lock_path(path)} for {timeout:g} s; gave up")

    o = run(st, NoNetwork(), T0, store=Locked())
    assert o.result is Result.KEPT and "gave up" in o.message
    st.output.unlink()
    assert run(st, NoNetwork(), T0, store=Locked()).result is Result.MISSING


def test_exit_code_is_the_worst():
    assert exit_code([]) == 0
    assert Result.WRITTEN.exit_code == Result.FRESH.exit_code == Result.UNCHANGED.exit_code == 0
    assert Result.KEPT.exit_code == 1
    assert Result.MISSING.exit_code == Result.REVOKED.exit_code == Result.BAD_INPUT.exit_code == 2

