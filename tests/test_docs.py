"""The man page, the README and --help name the same options."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import ROOT, run_cli


def help_options(*command: str) -> set[str]:
    r = run_cli(*command, "--help")
    assert r.code == 0
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", r.out)) - {"--help"}


def man_text() -> str:
    return (ROOT / "man" / "ocspstaple.1").read_text().replace("\\-", "-")


def test_every_refresh_option_is_in_the_man_page_and_the_readme():
    opts = help_options("refresh")
    assert {"--cert", "--issuer", "--output", "--url", "--config", "--force", "--timeout", "--proxy",
            "--refresh-at"} <= opts
    man = man_text()
    readme = (ROOT / "README.md").read_text()
    assert sorted(o for o in opts if o not in man) == []
    assert sorted(o for o in opts if f"`{o}" not in readme) == []


def test_the_check_itself_catches_a_missing_option():
    # negative control: an option the man page does not have is noticed
    assert "--no-such-option" not in man_text()


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
def test_man_page_is_lint_clean():
    r = subprocess.run(["mandoc", "-Tlint", "-Wwarning", str(ROOT / "man" / "ocspstaple.1")],
                       capture_output=True, text=True)
    assert r.stdout + r.stderr == ""



def test_version():
    r = run_cli("--version")
    assert r.code == 0 and "ocspstaple" in r.out
