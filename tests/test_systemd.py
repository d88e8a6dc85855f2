"""`systemd-analyze verify` accepts every unit in contrib/systemd, unchanged,
and `systemd-analyze security` rates both services 3.5 or lower.

How the real files are tested: verify checks that every Exec*= binary exists
and is executable, and the units name /usr/local/bin/ocspstaple (where
contrib/install.sh links the program), which a test machine need not have
(tests/test_install.py verifies the installed units on the real system).
Editing a copy of the units to point at another binary would test a file
that differs from what ships, so instead the units are verified byte for
byte inside a scratch root (`systemd-analyze verify --root=TMP`, which
resolves unit and binary paths under TMP):
- TMP/etc/systemd/system: the units, copied unchanged;
- TMP/usr/lib/systemd/system: a copy of the host's units (sysinit.target,
  timers.target, network-online.target ... that verify loads as dependencies);
- TMP/usr/local/bin/ocspstaple: the real program (this checkout's, run by
  the test's interpreter; the test runs it once).  Any other Exec*= path
  must exist on the host, so that a typo in it is still caught.
Documentation=man:ocspstaple(1) is checked against the repository's own man
page (MANPATH); man (man-db) is required, as on a real machine.

verify exits 0 on some mistakes (an unknown Type= value is "ignored" with a
warning), so a unit passes only with exit 0 and nothing at all on stderr.
Each kind of mistake has a negative twin below, made from the real units.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SYSTEMD = ROOT / "contrib" / "systemd"
EXPECTED_UNITS = {"ocspstaple.service", "ocspstaple.timer", "ocspstaple-serve.service"}
HOST_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
OWN_BINARY = re.compile(r"/ocspstaple$")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or HOST_UNITS is None or shutil.which("man") is None,
    reason="systemd-analyze (package systemd) or man (man-db) is not installed; contrib/ci/deps.sh installs them",
)
# systemd-analyze security's verdict for each service, at most.
MAX_EXPOSURE = 3.5


def real_units() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(SYSTEMD.iterdir())
            if p.suffix in (".service", ".timer", ".socket", ".path", ".target")}


def exec_paths(text: str) -> list[str]:
    """The absolute binaries of the Exec*= lines (not comments), prefixes removed."""
    paths = []
    for line in text.splitlines():
        m = re.match(r"\s*Exec[A-Za-z]+\s*=\s*(.*)", line)
        if not m:
            continue
        argv0 = m.group(1).lstrip("-@:+!|").split()[0] if m.group(1).strip() else ""
        if argv0.startswith("/"):
            paths.append(argv0)
    return paths


def install_program(path: Path) -> None:
    """The real program at ``path``: this checkout's ocspstaple, by the test's interpreter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m ocspstaple "$@"\n')
    path.chmod(0o755)
    p = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("ocspstaple, version"), p


def verify(tmp_path: Path, units: dict[str, str], *, program: bool = True) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)  # type: ignore[arg-type]
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name, text in units.items():
        (unit_dir / name).write_text(text)
        for path in exec_paths(text):
            if not OWN_BINARY.search(path):
                assert os.access(path, os.X_OK), f"{name}: {path} does not exist on this machine"
            elif program and not (root / path.lstrip("/")).exists():
                install_program(root / path.lstrip("/"))
    env = {k: v for k, v in os.environ.items() if k not in ("SYSTEMD_PAGER", "PAGER")}
    env["SYSTEMD_LOG_COLOR"] = "0"
    args = ["systemd-analyze", "verify", f"--root={root}"]
    manpath = tmp_path / "man"
    (manpath / "man1").mkdir(parents=True)
    shutil.copy(ROOT / "man" / "ocspstaple.1", manpath / "man1" / "ocspstaple.1")
    env["MANPATH"] = str(manpath)
    return subprocess.run([*args, *(str(unit_dir / n) for n in units)], capture_output=True, text=True,
                          env=env, timeout=60)


def problems(p: subprocess.CompletedProcess[str]) -> str:
    """Empty when verify is fully content: exit 0 and no warning at all."""
    return "" if p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip() \
        else f"exit {p.returncode}\n{p.stdout}{p.stderr}"


def test_the_expected_units_are_there():
    assert EXPECTED_UNITS <= set(real_units()), sorted(real_units())


def test_systemd_analyze_verify_accepts_every_unit(tmp_path):
    units = real_units()
    assert units
    assert any(OWN_BINARY.search(p) for t in units.values() for p in exec_paths(t)), "no unit runs ocspstaple?"
    result = verify(tmp_path, units)
    assert problems(result) == "", problems(result)


def mutate(units: dict[str, str], name: str, old: str, new: str) -> dict[str, str]:
    assert name in units, name
    assert re.search(old, units[name], re.M), f"{name} no longer has {old!r}: update this twin"
    return {**units, name: re.sub(old, new, units[name], count=1, flags=re.M)}


# Each: a deliberate error in one real unit, and words verify says about it.
BROKEN = {
    "unknown-type": ("ocspstaple.service", r"^Type=oneshot$", "Type=oneshott", "service type"),
    "relative-exec": ("ocspstaple.service", r"^ExecStart=/", "ExecStart=", "absolute path"),
    "bad-calendar": ("ocspstaple.timer", r"^OnCalendar=.*$", "OnCalendar=hourlyy", "calendar"),
    "misspelt-section": ("ocspstaple-serve.service", r"^\[Service\]$", "[Servce]", "Servce"),
    "serve-bad-value": ("ocspstaple-serve.service", r"^Restart=on-failure$", "Restart=on-failur",
                        "restart specifier"),
    "serve-unknown-key": ("ocspstaple-serve.service", r"^RestartSec=", "RestartSecs=", "RestartSecs"),
    "missing-man-page": ("ocspstaple.service", r"^Documentation=man:ocspstaple\(1\)$",
                         "Documentation=man:ocspstaple-nonesuch(1)", "ocspstaple-nonesuch"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_systemd_analyze_verify_rejects_a_broken_unit(tmp_path, case):
    name, old, new, words = BROKEN[case]
    result = verify(tmp_path, mutate(real_units(), name, old, new))
    assert problems(result), f"{case}: verify accepted it"
    assert words in result.stdout + result.stderr, result.stdout + result.stderr


def test_systemd_analyze_verify_rejects_a_missing_binary(tmp_path):
    """Twin of the installed program: without it, ocspstaple's binary is missing in the root."""
    units = real_units()
    own = {p for t in units.values() for p in exec_paths(t) if OWN_BINARY.search(p)}
    result = verify(tmp_path, units, program=False)
    assert result.returncode != 0
    for path in own:
        assert f"Command {path} is not executable" in result.stderr, result.stderr


def exposure(unit: Path) -> float:
    """The "Overall exposure level" systemd-analyze security gives a unit file (0 best, 10 worst)."""
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", p.stdout + p.stderr)
    assert m, f"no exposure level in:\n{p.stdout}{p.stderr}"
    return float(m.group(1))


@pytest.mark.parametrize("name", ["ocspstaple.service", "ocspstaple-serve.service", "ocspstaple-relay.service"])
def test_systemd_analyze_security_rates_the_service_at_most_3_5(name):
    assert exposure(SYSTEMD / name) <= MAX_EXPOSURE


def test_systemd_analyze_security_rates_an_unhardened_unit_above_3_5(tmp_path):
    """Twin: the same service without its hardening settings rates worse: the number is read right."""
    text = (SYSTEMD / "ocspstaple.service").read_text()
    bare = "\n".join(line for line in text.splitlines()
                     if not re.match(r"(Protect|Private|Restrict|Capability|SystemCall|NoNew|Lock|Memory|UMask|"
                                     r"ReadWrite|State|ProcSubset)", line))
    (tmp_path / "ocspstaple.service").write_text(bare)
    assert exposure(tmp_path / "ocspstaple.service") > MAX_EXPOSURE
