"""The deploy hook (``--deploy-hook`` / ``deploy_hook``): once per run that changed a staple.

The CLI runs as a real process against the real test responder; the hooks
are real shell commands that leave their traces (environment, PID) in files.
Every process a hook starts is stopped by the test, by PID, if the run did
not stop it.

Every refusal has a passing twin, so that a test cannot pass merely because
nothing works.
"""
from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path

import pytest
from conftest import Run, assert_silent_success, one_line, run_cli
from pki import CA, write_pem
from responder import Reply, Responder

from ocspstaple.deploy import CHANGED_VAR, KILL_GRACE, changed_outputs, run_hook
from ocspstaple.errors import DeployError
from ocspstaple.refresh import Outcome, Result


def refresh(*args: str | Path) -> Run:
    return run_cli("refresh", *args, timeout=30)






def two_sites(tmp_path: Path, ca: CA, responder: Responder, *, defaults: str = "", extra_a: str = "") -> Path:
    """a.pem and b.pem (leaf + issuer), answered by the responder, and a config naming both."""
    leaves = {name: ca.issue(f"{name}.example.test", ocsp_urls=(responder.url,)) for name in ("a", "b")}
    by_serial = {leaf.cert.serial_number: leaf for leaf in leaves.values()}
    responder.reply_for = lambda req: Reply(ca.respond(by_serial[req.serial_number].cert))
    for name, leaf in leaves.items():
        write_pem(tmp_path / f"{name}.pem", leaf, ca.cert)
    cfg = tmp_path / "ocspstaple.toml"
    cfg.write_text(f'[defaults]\n{defaults}\n[staple.a]\ncert = "a.pem"\n{extra_a}\n[staple.b]\ncert = "b.pem"\n')
    return cfg


def recorder(tmp_path: Path, word: str = "run") -> str:
    """A hook that appends ``word`` to runs.txt and writes $OCSPSTAPLE_CHANGED to changed.txt."""
    runs, changed = shlex.quote(str(tmp_path / "runs.txt")), shlex.quote(str(tmp_path / "changed.txt"))
    return f'echo {word} >> {runs}; printf "%s" "${CHANGED_VAR}" > {changed}'


def runs(tmp_path: Path) -> list[str]:
    p = tmp_path / "runs.txt"
    return p.read_text().split() if p.exists() else []


@pytest.fixture
def pid_file(tmp_path: Path):
    """Where a hook writes the PID of a child it started; the child is killed at teardown if alive."""
    path = tmp_path / "child.pid"
    yield path
    if path.exists() and path.read_text().strip():
        pid = int(path.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def ends(pid: int, deadline: float = 5) -> bool:
    """The process is gone within ``deadline`` seconds.  A killed process is
    not gone the instant the signal is sent: the kernel still has to run it
    to its end, and init to reap it, which on loaded cores takes a while."""
    end = time.monotonic() + deadline
    while alive(pid):
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)
    return True


def wait_for_pid(path: Path, deadline: float = 5) -> int:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"no PID in {path}")


# -- once per run, with the changed files ------------------------------------------------

def test_hook_runs_once_with_both_changed_staples(tmp_path: Path, ca: CA, responder: Responder):
    cfg = two_sites(tmp_path, ca, responder)
    run = refresh("--config", cfg, "--deploy-hook", recorder(tmp_path))
    assert_silent_success(run)
    assert runs(tmp_path) == ["run"]
    a, b = tmp_path / "a.pem.ocsp", tmp_path / "b.pem.ocsp"
    assert (tmp_path / "changed.txt").read_text() == f"{a}\n{b}"
    assert a.exists() and b.exists()
    # Twin: the next run changes nothing (both staples fresh), so the hook does not run.
    assert_silent_success(refresh("--config", cfg, "--deploy-hook", recorder(tmp_path)))
    assert runs(tmp_path) == ["run"]
    assert responder.requests == 2


def test_hook_names_only_the_staples_that_changed(tmp_path: Path, ca: CA, responder: Responder):
    cfg = two_sites(tmp_path, ca, responder)
    assert_silent_success(refresh("--config", cfg))
    a = tmp_path / "a.pem.ocsp"
    a.unlink()
    assert_silent_success(refresh("--config", cfg, "--deploy-hook", recorder(tmp_path)))
    assert runs(tmp_path) == ["run"]
    assert (tmp_path / "changed.txt").read_text() == str(a)


def test_no_hook_when_the_refresh_failed(tmp_path: Path, ca: CA, responder: Responder):
    """A refused answer changes nothing: no hook (the twin of the first test)."""
    cfg = two_sites(tmp_path, ca, responder)
    responder.fault("tryLater")
    run = refresh("--config", cfg, "--deploy-hook", recorder(tmp_path))
    assert run.code == 2, run.err
    assert runs(tmp_path) == []


def test_changed_outputs_in_order_and_once(tmp_path: Path):
    def o(name: str, changed: bool) -> Outcome:
        return Outcome(name=name, output=tmp_path / f"{name}.ocsp", result=Result.WRITTEN, message="",
                       changed=changed)

    outcomes = [o("b", True), o("a", False), o("c", True), o("b", True)]
    assert changed_outputs(outcomes) == [tmp_path / "b.ocsp", tmp_path / "c.ocsp"]
    assert changed_outputs([o("a", False)]) == []


# -- a failing hook ---------------------------------------------------------------------------

def test_failing_hook_is_exit_1_and_the_staples_stay_written(tmp_path: Path, ca: CA, responder: Responder):
    cfg = two_sites(tmp_path, ca, responder)
    run = refresh("--config", cfg, "--deploy-hook", f"{recorder(tmp_path)}; exit 3")
    assert run.code == 1, run.err
    a, b = tmp_path / "a.pem.ocsp", tmp_path / "b.pem.ocsp"
    one_line(run, "deploy hook", "exit status 3", str(a), str(b))
    assert runs(tmp_path) == ["run"]
    assert a.stat().st_size > 0 and b.stat().st_size > 0


# -- a hanging hook --------------------------------------------------------------------------

@pytest.mark.parametrize("hook, grace", [
    # a background child in the hook's process group goes too
    ("sleep 60 & echo $! > {pid}; wait", 0),
    # a hook that ignores SIGTERM (its child inherits that) is killed after the grace period
    ("trap '' TERM; sleep 60 & echo $! > {pid}; wait", KILL_GRACE),
])
def test_hanging_hook_is_stopped_after_the_timeout(tmp_path: Path, ca: CA, responder: Responder,
                                                   pid_file: Path, hook: str, grace: float):
    cfg = two_sites(tmp_path, ca, responder)
    t0 = time.monotonic()
    # A child left alive would hold the captured stderr open: run_cli's own timeout would fire.
    run = refresh("--config", cfg, "--deploy-hook", hook.format(pid=shlex.quote(str(pid_file))),
                  "--hook-timeout", "1")
    elapsed = time.monotonic() - t0
    assert run.code == 1, run.err
    one_line(run, "deploy hook", "did not finish within 1 s", str(tmp_path / "a.pem.ocsp"))
    assert 1 + grace <= elapsed < 1 + grace + 5, elapsed
    if "{pid}" in hook:
        assert ends(wait_for_pid(pid_file))
    assert (tmp_path / "a.pem.ocsp").exists() and (tmp_path / "b.pem.ocsp").exists()


def test_hook_within_the_timeout_succeeds(tmp_path: Path, ca: CA, responder: Responder):
    """Twin of the hanging hook: the same kind of hook, finishing in time."""
    cfg = two_sites(tmp_path, ca, responder)
    run = refresh("--config", cfg, "--deploy-hook", f"sleep 0.3 & wait; {recorder(tmp_path)}",
                  "--hook-timeout", "10")
    assert_silent_success(run)
    assert runs(tmp_path) == ["run"]


def test_run_hook_stops_the_process_group(tmp_path: Path, pid_file: Path):
    """In-process: run_hook itself returns within timeout + grace, and the group is gone."""
    t0 = time.monotonic()
    with pytest.raises(DeployError, match="did not finish within 0.5 s"):
        run_hook(f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait", [tmp_path / "x.ocsp"], timeout=0.5)
    assert time.monotonic() - t0 < 0.5 + 3
    assert ends(wait_for_pid(pid_file))
    # A member of the group that ignores SIGTERM is killed too, though the shell ended at once.
    stubborn = tmp_path / "stubborn.pid"
    with pytest.raises(DeployError, match="did not finish"):
        run_hook(f"sh -c \"trap '' TERM; echo \\$\\$ > {shlex.quote(str(stubborn))}; while :; do sleep 1; done\" & "
                 "wait", [tmp_path / "x.ocsp"], timeout=0.5)
    assert ends(wait_for_pid(stubborn))
    # Twin: a hook that finishes returns quietly, having seen the changed files.
    out = tmp_path / "env.txt"
    run_hook(f'printf "%s" "${CHANGED_VAR}" > {shlex.quote(str(out))}', [tmp_path / "x", tmp_path / "y"],
             timeout=5)
    assert out.read_text() == f"{tmp_path / 'x'}\n{tmp_path / 'y'}"


@pytest.mark.parametrize("command, words", [
    ("exit 4", "exit status 4"),
    ("kill -9 $$", "killed by signal 9"),
    ("/nonexistent/reload-script", "exit status 127"),
])
def test_run_hook_failures(tmp_path: Path, command: str, words: str):
    with pytest.raises(DeployError, match=words):
        run_hook(command, [tmp_path / "x"], timeout=5)


# -- the config file ---------------------------------------------------------------------------

def test_hook_and_timeout_from_the_config(tmp_path: Path, ca: CA, responder: Responder):
    cfg = two_sites(tmp_path, ca, responder, defaults=f"deploy_hook = '{recorder(tmp_path, 'config')}'")
    assert_silent_success(refresh("--config", cfg))
    assert runs(tmp_path) == ["config"]


def test_hook_timeout_from_the_config_stops_the_hook(tmp_path: Path, ca: CA, responder: Responder):
    cfg = two_sites(tmp_path, ca, responder, defaults="deploy_hook = 'sleep 60'\nhook_timeout = 1")
    t0 = time.monotonic()
    run = refresh("--config", cfg)
    assert run.code == 1, run.err
    one_line(run, "did not finish within 1 s")
    assert time.monotonic() - t0 < 6


def test_command_line_overrides_the_config(tmp_path: Path, ca: CA, responder: Responder):
    """Twin of the config tests: --deploy-hook and --hook-timeout win over [defaults]."""
    hook = f"sleep 1.5; {recorder(tmp_path, 'config')}"
    cfg = two_sites(tmp_path, ca, responder, defaults=f"deploy_hook = '{hook}'\nhook_timeout = 0.5")
    assert_silent_success(refresh("--config", cfg, "--deploy-hook", recorder(tmp_path, "cli"),
                                  "--hook-timeout", "10"))
    assert runs(tmp_path) == ["cli"]
    # Only the timeout from the command line: the config's hook, given the time it needs.
    (tmp_path / "a.pem.ocsp").unlink()
    assert_silent_success(refresh("--config", cfg, "--hook-timeout", "10"))
    assert runs(tmp_path) == ["cli", "config"]


# (hook_timeout and jobs in a staple table: test_config.py, in-process)
@pytest.mark.parametrize("key", ["deploy_hook = 'true'"])
def test_run_settings_in_a_staple_table_spoil_that_staple(tmp_path: Path, ca: CA, responder: Responder, key: str):
    cfg = two_sites(tmp_path, ca, responder, defaults=f"deploy_hook = '{recorder(tmp_path)}'", extra_a=key)
    run = refresh("--config", cfg)
    assert run.code == 2, run.err
    one_line(run, str(tmp_path / "a.pem"), "unknown key", key.split()[0])
    assert not (tmp_path / "a.pem.ocsp").exists()
    b = tmp_path / "b.pem.ocsp"
    assert b.exists()
    # the other staple changed, so the hook ran, for it alone
    assert runs(tmp_path) == ["run"]
    assert (tmp_path / "changed.txt").read_text() == str(b)
