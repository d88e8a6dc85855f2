"""The sdist and the wheel hold what they must, and an unpacked sdist runs its tests.

Built once per session with `python -m build` (the `build` package, in the
test extra): an sdist from the checkout, then a wheel built from that sdist,
as pip does, so a file missing from the sdist breaks the wheel too.

The unpacked sdist's tests are collected in full (every test module and
helper imports) and two fast files are run there, with that tree's package
first on the path; running the whole unpacked suite would double CI time for
little more.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, clean_env

import ocspstaple

pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import build"], capture_output=True).returncode != 0,
    reason="the `build` package is not installed (it is in the test extra: pip install -e '.[test]')",
)

NAME = f"ocspstaple-{ocspstaple.__version__}"
# The directories the sdist carries whole (MANIFEST.in); every file the
# checkout has there must be in it, so a new test helper or unit is never
# forgotten.
GRAFTED = ("tests", "man", "contrib")
ALWAYS = {"LICENSE", "README.md", "setup.cfg", "pyproject.toml", "man/ocspstaple.1",
          "contrib/install.sh", "contrib/ocspstaple.example.toml",
          "contrib/systemd/ocspstaple.service", "contrib/systemd/ocspstaple.timer",
          "contrib/systemd/ocspstaple-serve.service", "contrib/demo.sh", "contrib/ci/deps.sh",
          "tests/conftest.py", "tests/pki.py", "tests/responder.py", "tests/servers.py", "tests/watching.py"}


def checkout_files() -> set[str]:
    found = set()
    for top in GRAFTED:
        for p in (ROOT / top).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".pyo")):
                found.add(p.relative_to(ROOT).as_posix())
    return found


def missing(expected: set[str], names: set[str]) -> list[str]:
    return sorted(expected - names)


@pytest.fixture(scope="session")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, env=clean_env(), timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    sdist = out / f"{NAME}.tar.gz"
    wheel = out / f"{NAME}-py3-none-any.whl"
    assert sdist.is_file() and wheel.is_file(), sorted(os.listdir(out))
    return sdist, wheel


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as t:
        return {m.name.removeprefix(f"{NAME}/") for m in t.getmembers() if m.isfile()}


def test_the_sdist_has_the_man_page_contrib_license_and_every_test_helper(dists):
    names = sdist_names(dists[0])
    assert missing(ALWAYS | checkout_files(), names) == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_content_check_catches_a_missing_helper(dists):
    """Twin: the same check, on the sdist's list without tests/pki.py."""
    names = sdist_names(dists[0]) - {"tests/pki.py"}
    assert missing(ALWAYS | checkout_files(), names) == ["tests/pki.py"]


def test_the_wheel_has_the_package_the_man_page_the_license_and_the_command(dists):
    with zipfile.ZipFile(dists[1]) as z:
        names = set(z.namelist())
        entry_points = z.read(f"{NAME}.dist-info/entry_points.txt").decode()
        metadata = z.read(f"{NAME}.dist-info/METADATA").decode()
    modules = {f"ocspstaple/{p.name}" for p in (ROOT / "ocspstaple").iterdir() if p.suffix == ".py"}
    assert missing(modules | {"ocspstaple/py.typed", f"{NAME}.data/data/share/man/man1/ocspstaple.1",
                              f"{NAME}.dist-info/licenses/LICENSE"}, names) == []
    assert "ocspstaple = ocspstaple.cli:main" in entry_points
    assert "License: MIT" in metadata
    assert not [n for n in names if n.startswith("tests/")], "the tests do not belong in the wheel"


@pytest.fixture(scope="session")
def unpacked(dists, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("sdist")
    with tarfile.open(dists[0]) as t:
        t.extractall(where, filter="data")
    return where / NAME


def in_tree(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in the unpacked tree, its own package first on the path."""
    env = clean_env()
    env["PYTHONPATH"] = str(tree)
    return subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, text=True, env=env, timeout=300)


def test_the_unpacked_sdist_imports_its_own_package(unpacked):
    p = in_tree(unpacked, "-c", "import ocspstaple; print(ocspstaple.__file__)")
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).is_relative_to(unpacked), p.stdout


def test_the_unpacked_sdist_collects_every_test_and_runs_two_files(unpacked):
    p = in_tree(unpacked, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    collected = {line.split("::")[0] for line in p.stdout.splitlines() if "::" in line}
    assert collected == {n for n in checkout_files() if n.startswith("tests/test_")}, collected
    p = in_tree(unpacked, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_docs.py",
                "tests/test_validate.py")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert " passed" in p.stdout and "failed" not in p.stdout, p.stdout[-2000:]


def test_an_unpacked_sdist_without_a_helper_fails_to_collect(unpacked, tmp_path):
    """Twin: the collection check notices a missing helper (the sdist of issue 14 had none)."""
    tree = tmp_path / NAME
    shutil.copytree(unpacked, tree)
    (tree / "tests" / "responder.py").unlink()
    p = in_tree(tree, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert p.returncode != 0
    assert "responder" in p.stdout + p.stderr
