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


def commands() -> list[str]:
    r = run_cli("--help")
    return re.findall(r"^\s{2}([a-z][a-z-]+)\s", r.out.split("Commands:")[-1], re.M)


def test_every_option_of_every_command_is_in_the_man_page_and_the_readme():
    assert {"refresh", "serve"} <= set(commands())
    opts = {c: help_options(c) for c in commands()}
    assert {"--cert", "--issuer", "--output", "--url", "--config", "--scan", "--force", "--timeout", "--proxy",
            "--refresh-at", "--jobs", "--haproxy-socket", "--deploy-hook", "--hook-timeout"} <= opts["refresh"]
    assert {"--cert", "--config", "--scan", "--listen"} <= opts["serve"]
    man = man_text()
    readme = (ROOT / "README.md").read_text()
    for c, options in opts.items():
        assert re.search(rf"\.Ss {c}\b", man), f"the man page has no section for {c}"
        assert sorted(o for o in options if o not in man) == [], c
        assert sorted(o for o in options if f"`{o}" not in readme) == [], c


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
