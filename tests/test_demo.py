"""contrib/demo.sh runs to the end offline and leaves nothing behind."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, clean_env

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command line is not installed"),
]

DEMO = ROOT / "contrib" / "demo.sh"


def run_demo(tmp_path: Path, **env_changes: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)  # so that anything left behind would be found here
    # The interpreter under test, not whatever python3 comes first on PATH.
    env["OCSPSTAPLE"] = f"{sys.executable} -m ocspstaple"
    env.update(env_changes)
    return subprocess.run(["bash", str(DEMO)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def pid_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return b"openssl" in cmdline  # a reused PID is not our responder


def assert_cleaned_up(p: subprocess.CompletedProcess[str], tmp_path: Path) -> Path:
    m = re.search(r"Working in (\S+) \(removed at exit\)", p.stdout)
    assert m, p.stdout
    work = Path(m.group(1))
    assert work.parent == tmp_path / "tmp"
    assert not work.exists(), "the demo's temp dir was left behind"
    assert os.listdir(tmp_path / "tmp") == []
    pids = [int(x) for x in re.findall(r"responder PID (\d+)", p.stdout)]
    assert pids
    assert not [pid for pid in pids if pid_alive(pid)], "a responder outlived the demo"
    return work


def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    p = run_demo(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "All steps behaved as expected" in p.stdout
    assert "FAILED" not in p.stdout + p.stderr
    # The three stories, as the newcomer sees them.
    assert "Cert Status: good" in p.stdout
    assert "exit code 1" in p.stdout and "byte-for-byte" in p.stdout
    assert "REVOKED" in p.stdout and "Cert Status: revoked" in p.stdout
    assert len(re.findall(r"responder PID (\d+) listening", p.stdout)) == 2  # started, restarted in step 3
    assert_cleaned_up(p, tmp_path)


def test_demo_falls_back_to_python_m_ocspstaple(tmp_path: Path) -> None:
    """Without `ocspstaple` on PATH the demo runs `python3 -m ocspstaple`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A wrapper, not a symlink: a symlinked venv python outside the venv loses its site-packages.
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    path = [str(bin_dir)] + [d for d in os.environ.get("PATH", "").split(os.pathsep)
                             if d and not (Path(d) / "ocspstaple").exists()]
    p = run_demo(tmp_path, PATH=os.pathsep.join(path), OCSPSTAPLE="")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ocspstaple command: python3 -m ocspstaple" in p.stdout
    assert_cleaned_up(p, tmp_path)


def test_demo_fails_loudly_and_still_cleans_up(tmp_path: Path) -> None:
    """A step that does not behave (here: an "ocspstaple" that does nothing)
    stops the demo with a clear message and a non-zero exit, and the trap still
    stops the responder and removes the temp dir."""
    p = run_demo(tmp_path, OCSPSTAPLE="true")
    assert p.returncode != 0
    assert "demo.sh: FAILED: step 1" in p.stderr, p.stderr
    assert "All steps behaved as expected" not in p.stdout
    assert_cleaned_up(p, tmp_path)


def test_demo_ignores_a_proxy_in_the_environment(tmp_path: Path) -> None:
    """A newcomer behind a proxy: the demo's responder is local, not for the proxy."""
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    p = run_demo(tmp_path, http_proxy=dead, HTTP_PROXY=dead)
    assert p.returncode == 0, p.stdout + p.stderr
    assert_cleaned_up(p, tmp_path)


def test_demo_interrupted_still_cleans_up(tmp_path: Path) -> None:
    """SIGTERM once the responder runs: the EXIT trap stops it and removes the temp dir."""
    env = clean_env()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    proc = subprocess.Popen(["bash", str(DEMO)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            seen += line
            if "listening on port" in line:
                break
        proc.terminate()  # by PID: SIGTERM to the demo's bash
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    p = subprocess.CompletedProcess(proc.args, proc.returncode, seen + out, err)
    assert p.returncode == 143, p.stdout + p.stderr
    assert "All steps behaved as expected" not in p.stdout
    assert_cleaned_up(p, tmp_path)
