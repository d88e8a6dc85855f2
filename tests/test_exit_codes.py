"""Exit codes say what happened: a bug is 70 (EX_SOFTWARE), never 1 ("kept",
which the systemd unit counts as success) nor 2 (missing, revoked, bad input).

Crashes are planted by replacing a function with one that raises; each has
its twin, the same run without the plant, ending with its documented code.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT, Site, clean_env
from pki import CA, write_pem

import ocspstaple.cli
import ocspstaple.config
import ocspstaple.refresh
import ocspstaple.status
import ocspstaple.validate
from ocspstaple.cli import EXIT_INTERNAL, main

INTERNAL_LINE = "internal error: RuntimeError: planted; please report"


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="ocspstaple",
                              env={"HTTP_PROXY": "", "http_proxy": ""})


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def planted(*args: object, **kwargs: object) -> object:
    raise RuntimeError("planted")


@pytest.fixture
def refused_cert(tmp_path: Path, ca: CA):
    """A fullchain whose OCSP URL is a loopback port that refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused at once
        leaf = ca.issue("refused.example.test", ocsp_urls=(f"http://127.0.0.1:{s.getsockname()[1]}/",))
        yield write_pem(tmp_path / "site.pem", leaf, ca.cert)


def test_a_crash_in_one_staple_is_70_and_one_line(refused_cert: Path, monkeypatch):
    monkeypatch.setattr(ocspstaple.refresh, "_refresh_one", planted)
    r = invoke("refresh", "--cert", refused_cert)
    assert r.exit_code == EXIT_INTERNAL == 70, r.stderr
    assert lines(r.stderr) == [f"{refused_cert}: internal error, staple left as it was (RuntimeError: planted); "
                               "please report"]
    assert not Path(str(refused_cert) + ".ocsp").exists()


def test_twin_an_expected_failure_stays_2(refused_cert: Path):
    r = invoke("refresh", "--cert", refused_cert)
    assert r.exit_code == 2, r.stderr
    (line,) = lines(r.stderr)
    assert "cannot reach responder" in line and "Connection refused" in line and "internal error" not in line


def test_a_crash_outside_the_staples_is_70_and_one_line_traceback_only_with_vv(refused_cert: Path, monkeypatch):
    monkeypatch.setattr(ocspstaple.cli, "_gather", planted)
    r = invoke("refresh", "--cert", refused_cert)
    assert (r.exit_code, lines(r.stderr)) == (70, [INTERNAL_LINE])
    assert "Traceback" not in r.stderr
    r = invoke("refresh", "--cert", refused_cert, "-vv")
    assert r.exit_code == 70 and "Traceback" in r.stderr and r.stderr.rstrip().endswith(INTERNAL_LINE)


@pytest.mark.parametrize(("command", "module", "name"), [
    ("status", ocspstaple.status, "examine"),
    ("verify", ocspstaple.validate, "validate"),
    ("serve", ocspstaple.cli, "_gather"),
])
def test_every_command_says_70_for_a_crash(refused_cert: Path, tmp_path: Path, monkeypatch, command, module, name):
    args = ["--cert", refused_cert]
    if command == "verify":
        staple = tmp_path / "x.ocsp"
        staple.write_bytes(b"\x30\x03\x0a\x01\x01")  # any bytes: validate is never reached without the plant
        args.append(staple)
    if command != "serve":  # serve would serve: its twins are in test_serve and test_hostile_options
        # Twin first: without the plant, the documented code of that command.
        r = invoke(command, *args)
        assert r.exit_code == 2 and "internal error" not in r.output + r.stderr, r.stderr
    monkeypatch.setattr(module, name, planted)
    r = invoke(command, *args)
    assert (r.exit_code, lines(r.stderr)) == (70, [INTERNAL_LINE]), r.stderr


def test_check_says_unknown_for_a_crash(refused_cert: Path, monkeypatch):
    r = invoke("check", "--cert", refused_cert)
    assert r.exit_code == 2 and r.stdout.startswith("OCSPSTAPLE CRITICAL - "), r.stdout  # twin: no staple yet
    monkeypatch.setattr(ocspstaple.status, "examine", planted)
    r = invoke("check", "--cert", refused_cert)
    assert r.exit_code == 3 and r.stderr == ""
    assert r.stdout == f"OCSPSTAPLE UNKNOWN - {INTERNAL_LINE}\n"


def test_a_real_process_exits_70(refused_cert: Path):
    # Not only click's test runner: the real entry point's exit status, as systemd sees it.
    code = ("import sys, ocspstaple.config as c, ocspstaple.cli as cli\n"
            "def boom(*a, **k): raise KeyError('planted')\n"
            "c.staple_from_options = boom\n"
            "sys.argv = ['ocspstaple', 'refresh', '--cert', sys.argv[1]]\n"
            "cli.main()\n")
    p = subprocess.run([sys.executable, "-c", code, str(refused_cert)], capture_output=True, text=True,
                       env=clean_env(), cwd=ROOT, timeout=60)
    assert p.returncode == 70 and lines(p.stderr) == ["internal error: KeyError: 'planted'; please report"], p.stderr


def test_kept_is_1_and_a_usage_error_is_2(site: Site, responder):
    # The twins of 70 among the documented codes: a kept staple, and a usage error (one line).
    assert invoke("refresh", "--cert", site.cert).exit_code == 0
    responder.fault("tryLater")
    r = invoke("refresh", "--cert", site.cert, "--force")
    assert r.exit_code == 1 and "kept staple valid until" in r.stderr
    r = invoke("refresh", "--cert", site.cert, "--timeout", "nan")
    assert r.exit_code == 2
    assert lines(r.stderr) == ["Error: --timeout: expected a finite number, got nan "
                               "(see 'ocspstaple refresh --help')"]


def test_the_documentation_names_70():
    readme = (ROOT / "README.md").read_text()
    man = (ROOT / "man" / "ocspstaple.1").read_text()
    assert "| 70 | internal error" in readme and ".It 70\nAn internal error" in man
    for command in ("refresh", "status", "verify", "serve"):
        assert "70 internal error" in invoke(command, "--help").stdout, command
    assert "an internal error" in invoke("check", "--help").stdout


def test_serve_answers_on_after_a_crash_in_one_request(monkeypatch, caplog):
    import http.client
    import threading

    from ocspstaple.serve import OcspServer, StapleIndex
    from ocspstaple.store import FileStore

    server = OcspServer(("127.0.0.1", 0), StapleIndex([], store=FileStore(), clock=None))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def post() -> int:
        c = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        try:
            c.request("POST", "/", body=b"\x30\x00", headers={"Content-Type": "application/ocsp-request"})
            return c.getresponse().status
        except (http.client.HTTPException, OSError):
            return 0  # the crashed request's connection is dropped
        finally:
            c.close()

    try:
        assert post() == 200  # twin: malformedRequest, answered
        monkeypatch.setattr(StapleIndex, "lookup", planted)
        with caplog.at_level("ERROR", logger="ocspstaple"):
            assert post() == 0
        (record,) = [r for r in caplog.records if "internal error" in r.getMessage()]
        assert record.getMessage().endswith("RuntimeError: planted; please report")
        monkeypatch.undo()
        assert post() == 200  # and the server answers on
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
