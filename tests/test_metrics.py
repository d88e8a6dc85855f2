"""`refresh --metrics-file`: Prometheus' text format for node_exporter's
textfile collector, parsed back with a strict parser (tests/watching.py).

metrics_text() is called directly with a fake clock for the values; the real
command shows the file is written after each run, atomically, and that a
metrics file that cannot be written never changes the run's exit code.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from conftest import Run, Site, run_cli
from cryptography.x509 import ocsp
from pki import CA, DAY, HOUR
from responder import Responder
from watching import WINDOW, make_cert, metric_staples, parse_prometheus, put_staple, utcnow, write_record

from ocspstaple import state
from ocspstaple.status import MetricStaple, examine, metrics_text
from ocspstaple.store import FileStore

PER_STAPLE = [
    "ocspstaple_staple_this_update_timestamp_seconds", "ocspstaple_staple_next_update_timestamp_seconds",
    "ocspstaple_staple_expiry_timestamp_seconds", "ocspstaple_staple_refresh_due_timestamp_seconds",
    "ocspstaple_staple_status", "ocspstaple_staple_must_staple",
    "ocspstaple_last_success_timestamp_seconds", "ocspstaple_consecutive_failures",
    "ocspstaple_failing_since_timestamp_seconds",
]
RUN = ["ocspstaple_run_duration_seconds", "ocspstaple_run_timestamp_seconds", "ocspstaple_run_exit_code"]
STATUS = "ocspstaple_staple_status"


def one_hot(m, cert: str) -> str:
    """The status whose series is 1; fails unless exactly one of good/revoked/none is 1 and the rest 0."""
    series = {lab["status"]: v for lab, v in m.get(STATUS, cert=cert)}
    assert sorted(series) == ["good", "none", "revoked"], series
    assert sorted(series.values()) == [0, 0, 1], series
    return next(k for k, v in series.items() if v == 1)


# -- values (fake clock) ------------------------------------------------------------

def test_metrics_values(tmp_path: Path, ca: CA):
    now = utcnow()
    good = make_cert(tmp_path, ca, "good", must_staple=True)
    put_staple(ca, good, now=now, left=6 * DAY)
    write_record(good, last_attempt=now - HOUR, last_success=now - 2 * HOUR, failing_since=now - HOUR,
                 consecutive_failures=3, last_error="responder answered tryLater")
    revoked = make_cert(tmp_path, ca, "revoked")
    put_staple(ca, revoked, now=now, left=WINDOW * 0.9, status="revoked")
    missing = make_cert(tmp_path, ca, "missing")
    rows = examine([c.staple() for c in (good, revoked, missing)], store=FileStore(), clock=lambda: now,
                   state_dir=None)
    text = metrics_text(metric_staples(rows), duration_s=1.25, ended=now, code=2)
    m = parse_prometheus(text)
    assert list(m.types) == PER_STAPLE + RUN and set(m.types.values()) == {"gauge"}
    assert list(m.help) == list(m.types) and all(m.help.values())

    g = good.name
    resp = ocsp.load_der_ocsp_response(good.output.read_bytes())
    assert m.value("ocspstaple_staple_this_update_timestamp_seconds", cert=g) == resp.this_update_utc.timestamp()
    assert m.value("ocspstaple_staple_next_update_timestamp_seconds", cert=g) == resp.next_update_utc.timestamp()
    assert m.value("ocspstaple_staple_this_update_timestamp_seconds", cert=g) == (now - 4 * DAY).timestamp()
    assert m.value("ocspstaple_staple_expiry_timestamp_seconds", cert=g) == (now + 6 * DAY).timestamp()
    assert m.get("ocspstaple_staple_this_update_timestamp_seconds", cert=g)[0][0] == \
        {"cert": g, "output": str(good.output), "staple": ""}
    assert m.value("ocspstaple_staple_must_staple", cert=g) == 1
    assert m.value("ocspstaple_staple_must_staple", cert=revoked.name) == 0
    assert m.value("ocspstaple_consecutive_failures", cert=g) == 3
    assert m.value("ocspstaple_last_success_timestamp_seconds", cert=g) == (now - 2 * HOUR).timestamp()
    assert [one_hot(m, c.name) for c in (good, revoked, missing)] == ["good", "revoked", "none"]
    # No staple: no time series for it, rather than a made-up 0.
    for name in PER_STAPLE[:3] + ["ocspstaple_last_success_timestamp_seconds"]:
        assert m.get(name, cert=missing.name) == []
    assert m.value("ocspstaple_consecutive_failures", cert=missing.name) == 0
    assert m.value("ocspstaple_run_duration_seconds") == 1.25
    assert m.value("ocspstaple_run_timestamp_seconds") == now.timestamp()
    assert m.value("ocspstaple_run_exit_code") == 2


def test_one_hot_check_catches_a_double_status(tmp_path: Path, ca: CA):
    """Twin: the one-hot helper fails on two 1s or on a missing series."""
    now = utcnow()
    c = make_cert(tmp_path, ca, "good")
    put_staple(ca, c, now=now, left=6 * DAY)
    rows = examine([c.staple()], store=FileStore(), clock=lambda: now, state_dir=None)
    text = metrics_text(metric_staples(rows), duration_s=0.1, ended=now, code=0)
    assert one_hot(parse_prometheus(text), c.name) == "good"
    double = text.replace('status="none"} 0', 'status="none"} 1')
    dropped = "\n".join(line for line in text.split("\n") if 'status="revoked"' not in line)
    for bad in (double, dropped):
        with pytest.raises(AssertionError):
            one_hot(parse_prometheus(bad), c.name)


def test_label_values_are_escaped():
    name = 'C:\\certs\\"odd"\nname.pem'
    text = metrics_text([MetricStaple(name=name, output=None, staple=None, must_staple=None, record=state.Record())],
                        duration_s=0.0, ended=dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc), code=2)
    m = parse_prometheus(text)
    assert one_hot(m, name) == "none"
    assert m.get("ocspstaple_staple_must_staple") == []  # unknown: no series
    assert m.value("ocspstaple_consecutive_failures", cert=name, output="") == 0


@pytest.mark.parametrize("bad", [
    "# TYPE x gauge\nx 1",  # no final newline: a truncated file
    "x 1\n",  # a sample without its TYPE
    '# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2\n',  # the same series twice
    '# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a="2"} 1\n',  # a family split up
    '# TYPE x gauge\nx{a="un"escaped"} 1\n',
    '# TYPE x gauge\nx{a="1",,} 1\n',
    '# TYPE x gauge\nx{a=1} 1\n',
    "# TYPE x gauge\nx one\n",
    "# TYPE x gauge\nx\n",
    "# TYPE x gauge\n\nx 1\n",
    "# TYPE x gauges\nx 1\n",
])
def test_prometheus_parser_refuses(bad: str):
    """Twin of every test above: the parser is strict, so passing it means something."""
    with pytest.raises((AssertionError, ValueError)):
        parse_prometheus(bad)


# -- the file written by refresh ------------------------------------------------------

def refresh(*args: str | Path) -> Run:
    run = run_cli("refresh", *args, "--timeout", "3", timeout=30)
    assert "Traceback" not in run.err, run.err
    return run


def test_refresh_writes_metrics(site: Site, responder: Responder, tmp_path: Path):
    mdir = tmp_path / "textfile"
    mdir.mkdir()
    prom = mdir / "ocspstaple.prom"
    t0 = utcnow().timestamp()  # whole seconds: the state record's times are
    run = refresh("--cert", site.cert, "--metrics-file", prom)
    t1 = dt.datetime.now(dt.timezone.utc).timestamp()
    assert run.code == 0 and run.err == "", run.err
    assert os.listdir(mdir) == ["ocspstaple.prom"]  # no temp file left
    m = parse_prometheus(prom.read_text())  # complete: every family, a final newline
    assert list(m.types) == PER_STAPLE + RUN
    cert = str(site.cert)
    resp = ocsp.load_der_ocsp_response(site.output.read_bytes())
    assert m.value("ocspstaple_staple_this_update_timestamp_seconds", cert=cert) == resp.this_update_utc.timestamp()
    assert m.value("ocspstaple_staple_next_update_timestamp_seconds", cert=cert) == resp.next_update_utc.timestamp()
    assert one_hot(m, cert) == "good"
    assert m.value("ocspstaple_consecutive_failures", cert=cert) == 0
    assert t0 <= m.value("ocspstaple_last_success_timestamp_seconds", cert=cert) <= t1
    assert t0 <= m.value("ocspstaple_run_timestamp_seconds") <= t1
    assert 0 <= m.value("ocspstaple_run_duration_seconds") <= t1 - t0
    assert m.value("ocspstaple_run_exit_code") == 0
    success = m.value("ocspstaple_last_success_timestamp_seconds", cert=cert)

    responder.fault("tryLater")
    # Each version is held open, so that its inode cannot be reused: a file
    # replaced by rename gets a new one; one rewritten in place would not.
    held = [open(prom, "rb")]  # noqa: SIM115 (closed below)
    inodes = {prom.stat().st_ino}
    for n in (1, 2):
        run = refresh("--cert", site.cert, "--force", "--metrics-file", prom)
        assert run.code == 1, run.err
        inodes.add(prom.stat().st_ino)
        held.append(open(prom, "rb"))  # noqa: SIM115
        m = parse_prometheus(prom.read_text())
        assert m.value("ocspstaple_consecutive_failures", cert=cert) == n
        assert m.value("ocspstaple_run_exit_code") == 1
        assert m.value("ocspstaple_last_success_timestamp_seconds", cert=cert) == success
        assert one_hot(m, cert) == "good"  # the kept staple is still good
        assert m.value("ocspstaple_staple_this_update_timestamp_seconds", cert=cert) == \
            resp.this_update_utc.timestamp()
    assert len(inodes) == 3  # replaced each time (rename), never rewritten in place
    assert [len(f.read()) > 0 for f in held] == [True] * 3  # every old version stayed whole
    for f in held:
        f.close()
    assert os.listdir(mdir) == ["ocspstaple.prom"]

    # A run with nothing due still writes the metrics, and no state record changes.
    responder.serve(responder.good(this_update=dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
                                   - dt.timedelta(minutes=5)))
    assert refresh("--cert", site.cert, "--force", "--metrics-file", prom).code == 0
    m = parse_prometheus(prom.read_text())
    assert m.value("ocspstaple_consecutive_failures", cert=cert) == 0
    # (to the second, as saved: the runs above may all fall within one second)
    assert m.value("ocspstaple_last_success_timestamp_seconds", cert=cert) >= success
    before = prom.stat().st_ino
    requests = responder.requests
    assert refresh("--cert", site.cert, "--metrics-file", prom).code == 0
    assert responder.requests == requests and prom.stat().st_ino != before
    assert parse_prometheus(prom.read_text()).value("ocspstaple_consecutive_failures", cert=cert) == 0


def test_metrics_for_a_must_staple_and_a_missing_staple(tmp_path: Path, ca: CA, responder: Responder):
    must = make_cert(tmp_path, ca, "must", must_staple=True, urls=(responder.url,))
    put_staple(ca, must, now=utcnow(), left=7 * DAY)  # not due (the 4-day cap)
    lost = make_cert(tmp_path, ca, "lost", urls=(responder.url,))
    config = tmp_path / "c.toml"
    config.write_text(f'[staple.must]\ncert = "{must.cert}"\n[staple.lost]\ncert = "{lost.cert}"\n')
    responder.fault("tryLater")
    prom = tmp_path / "m.prom"
    run = refresh("--config", config, "--metrics-file", prom)
    assert run.code == 2, run.err
    m = parse_prometheus(prom.read_text())
    assert m.value("ocspstaple_staple_must_staple", cert=must.name) == 1
    assert m.value("ocspstaple_staple_must_staple", cert=lost.name) == 0
    assert (one_hot(m, must.name), one_hot(m, lost.name)) == ("good", "none")
    assert m.value("ocspstaple_consecutive_failures", cert=must.name) == 0  # fresh: not attempted
    assert m.value("ocspstaple_consecutive_failures", cert=lost.name) == 1
    assert m.value("ocspstaple_run_exit_code") == 2


@pytest.mark.parametrize("fault, code", [(None, 0), ("tryLater", 1)])
def test_unwritable_metrics_file_keeps_the_exit_code(site: Site, responder: Responder, tmp_path: Path,
                                                     fault: str | None, code: int):
    if fault:
        put_staple(responder.ca, _cert(site), now=utcnow(), left=6 * DAY)
        responder.fault(fault)
    nowhere = tmp_path / "no" / "such" / "dir" / "m.prom"
    run = refresh("--cert", site.cert, "--force", "--metrics-file", nowhere)
    assert run.code == code, run.err
    errors = [line for line in run.lines if "metrics file" in line]
    assert len(errors) == 1 and "cannot write the metrics file" in errors[0] and str(nowhere) in errors[0]
    assert len(run.lines) == (1 if fault is None else 2)
    assert not nowhere.parent.exists()
    assert site.output.exists()
    # Twin: the same run with a directory that exists writes it, silently but for the fault.
    there = tmp_path / "m.prom"
    run = refresh("--cert", site.cert, "--force", "--metrics-file", there)
    assert run.code == code and not any("metrics file" in line for line in run.lines), run.err
    assert parse_prometheus(there.read_text()).value("ocspstaple_run_exit_code") == code


def _cert(site: Site):
    from watching import Cert
    return Cert(leaf=site.leaf, cert=site.cert, output=site.output)
