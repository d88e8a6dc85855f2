"""contrib/install.sh installs for production into the real system paths, and
--uninstall leaves nothing behind.

This is what an administrator runs, so it runs for real, as root, on the
machine (CI is a throwaway root machine); it is skipped when not root, and
when ocspstaple is already installed or configured here (the test would
replace or remove it).  Installed, the program is checked where the units
and the administrator meet it: `ocspstaple` on PATH, `man -w ocspstaple`,
`systemd-analyze verify` of the installed units (no stub binary, man page
checked), and the demo run against the installed program.

One sequence, as an administrator lives it: install, use, edit the config,
upgrade in place (the config is kept), uninstall (the edited config is kept
and named; nothing else is left).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, clean_env

import ocspstaple

INSTALL = ROOT / "contrib" / "install.sh"
PREFIX = Path("/opt/ocspstaple")
BIN = Path("/usr/local/bin/ocspstaple")
MAN = Path("/usr/local/share/man/man1/ocspstaple.1")
UNIT_DIR = Path("/usr/local/lib/systemd/system")
UNITS = ("ocspstaple.service", "ocspstaple.timer", "ocspstaple-serve.service")
CONFIG = Path("/etc/ocspstaple.toml")
EXAMPLE = ROOT / "contrib" / "ocspstaple.example.toml"
# What systemd gives a service; nothing of the test's own venv.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WATCHED = ("/opt", "/usr/local", "/etc/systemd", str(CONFIG), "/var/lib/ocspstaple")

pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs into /opt, /usr/local and /etc: root only (CI)"),
    pytest.mark.skipif(any(p.exists() or p.is_symlink() for p in (PREFIX, BIN, CONFIG)),
                       reason="ocspstaple is installed or configured on this machine; the test would replace it"),
    pytest.mark.skipif(any(shutil.which(c) is None for c in ("man", "systemd-analyze")),
                       reason="man (man-db) and systemd-analyze are needed; contrib/ci/deps.sh installs them"),
]


def system_env() -> dict[str, str]:
    env = clean_env()
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = SYSTEM_PATH
    return {k: v for k, v in env.items() if k not in ("PAGER", "SYSTEMD_PAGER", "MANPATH")}


def sh(*argv: str | Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=kw.pop("env", system_env()),
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def snapshot() -> set[str]:
    found = set()
    for top in map(Path, WATCHED):
        if top.is_symlink() or top.is_file():
            found.add(str(top))
        elif top.is_dir():
            found.add(str(top))
            for dirpath, dirnames, filenames in os.walk(top):
                found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


def said(p: subprocess.CompletedProcess[str]) -> str:
    """install.sh's own lines (pip's warnings about the local index mirrors aside)."""
    return "\n".join(line for line in (p.stdout + p.stderr).splitlines() if line.startswith("install.sh:"))


def test_install_use_upgrade_and_uninstall_leaves_nothing(tmp_path):
    before = snapshot()
    try:
        p = sh("bash", INSTALL)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "Traceback" not in p.stdout + p.stderr
        assert f"installed ocspstaple, version {ocspstaple.__version__}" in said(p)

        # on PATH where the units run it, from the venv
        assert shutil.which("ocspstaple", path=SYSTEM_PATH) == str(BIN)
        assert BIN.resolve().is_relative_to(PREFIX)
        v = sh("ocspstaple", "--version")
        assert v.returncode == 0 and v.stdout.strip() == f"ocspstaple, version {ocspstaple.__version__}", v

        # man finds the page (from the wheel, the repository's own text)
        m = sh("man", "-w", "ocspstaple")
        assert m.returncode == 0, m.stderr
        assert Path(m.stdout.strip()).resolve() == MAN.resolve()
        assert MAN.read_bytes() == (ROOT / "man" / "ocspstaple.1").read_bytes()

        # the installed units, as shipped; verify finds the binary and the man page
        installed = [UNIT_DIR / u for u in UNITS]
        for unit in installed:
            assert unit.read_text() == (ROOT / "contrib" / "systemd" / unit.name).read_text(), unit
        env = system_env()
        env["SYSTEMD_LOG_COLOR"] = "0"
        ver = sh("systemd-analyze", "verify", *installed, env=env, timeout=60)
        assert (ver.returncode, ver.stdout + ver.stderr) == (0, ""), ver.stdout + ver.stderr

        # the example config: valid, and names no certificate yet
        assert CONFIG.read_bytes() == EXAMPLE.read_bytes()
        r = sh("ocspstaple", "refresh", "--config", CONFIG)
        assert r.returncode == 2 and r.stderr.strip().endswith("no [staple.NAME] tables"), r.stderr

        # the demo against the installed program
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        env = system_env()
        env["TMPDIR"] = str(scratch)
        d = sh("bash", ROOT / "contrib" / "demo.sh", env=env, cwd=tmp_path, timeout=120)
        assert d.returncode == 0, d.stdout[-3000:] + d.stderr[-3000:]
        assert "ocspstaple command: ocspstaple\n" in d.stdout
        assert "All steps behaved as expected" in d.stdout

        # the administrator edits the config; an upgrade in place keeps it
        mine = CONFIG.read_text() + '\n[staple.site]\ncert = "/etc/haproxy/certs/site.pem"\n'
        CONFIG.write_text(mine)
        p = sh("bash", INSTALL)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"kept your {CONFIG}" in said(p)
        assert CONFIG.read_text() == mine
        assert sh("ocspstaple", "--version").returncode == 0

        # uninstall: everything goes but the edited config, which is named
        u = sh("bash", INSTALL, "--uninstall")
        assert u.returncode == 0, u.stdout + u.stderr
        assert re.search(rf"kept {re.escape(str(CONFIG))}\b", said(u)), said(u)
        assert CONFIG.read_text() == mine
        assert shutil.which("ocspstaple", path=SYSTEM_PATH) is None
        assert sh("man", "-w", "ocspstaple").returncode != 0
        CONFIG.unlink()
        assert sorted(snapshot() - before) == [], "left behind"
        assert sorted(before - snapshot()) == [], "removed what was there before"
    finally:
        if PREFIX.exists():  # a failed step: do not leave an install behind
            sh("bash", INSTALL, "--uninstall")
        if CONFIG.exists() and not {str(CONFIG)} <= before:
            CONFIG.unlink()


def test_uninstall_without_an_install_changes_nothing():
    """Twin of the snapshot: --uninstall on a clean machine removes nothing that is not its own."""
    before = snapshot()
    u = sh("bash", INSTALL, "--uninstall")
    assert u.returncode == 0, u.stdout + u.stderr
    assert snapshot() == before


def test_install_refuses_to_replace_a_foreign_ocspstaple():
    """An /usr/local/bin/ocspstaple of another origin (a pip install) is not overwritten."""
    assert BIN.parent.is_dir()  # Debian has /usr/local/bin
    BIN.write_text("#!/bin/sh\necho someone else's\n")
    try:
        p = sh("bash", INSTALL)
        assert p.returncode == 1
        assert "is not this script's link" in p.stderr, p.stderr
        assert BIN.read_text() == "#!/bin/sh\necho someone else's\n"
        assert not PREFIX.exists()
    finally:
        BIN.unlink()
