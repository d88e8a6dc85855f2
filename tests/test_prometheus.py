"""contrib/prometheus: the alert rules are valid, each fires from a broken
staple's series and stays silent on a healthy one (promtool test rules), and
they watch the metrics ocspstaple really writes."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, cannot_run_here

from ocspstaple.status import METRICS, RUN_METRICS, SERVED_METRICS

RULES = ROOT / "contrib" / "prometheus" / "ocspstaple.rules.yml"
TESTS = ROOT / "contrib" / "prometheus" / "ocspstaple.rules.test.yml"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        cannot_run_here("promtool is not installed (Debian package prometheus; contrib/ci/deps.sh)")
    return subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_rules_are_valid_and_their_tests_pass() -> None:
    p = promtool("check", "rules", RULES)
    assert p.returncode == 0 and "SUCCESS: 7 rules found" in p.stdout, p.stdout + p.stderr
    p = promtool("test", "rules", TESTS)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


ALERTS = re.findall(r"^      - alert: (\w+)$", RULES.read_text(), re.M)


@pytest.mark.parametrize("alert", ALERTS)
def test_a_removed_rule_fails_its_test(tmp_path: Path, alert: str) -> None:
    """Twin: without any one of the alerts, promtool's test fails, naming it."""
    text = RULES.read_text()
    start = text.index(f"      - alert: {alert}\n")
    end = text.find("      - alert: ", start + 1)
    (tmp_path / RULES.name).write_text(text[:start] + (text[end:] if end != -1 else ""))
    (tmp_path / TESTS.name).write_text(TESTS.read_text())
    assert promtool("check", "rules", tmp_path / RULES.name).returncode == 0
    p = promtool("test", "rules", tmp_path / TESTS.name)
    assert p.returncode != 0 and alert in p.stdout + p.stderr, p.stdout + p.stderr


def test_the_rules_name_only_metrics_ocspstaple_writes() -> None:
    written = {name for name, _ in METRICS + RUN_METRICS + SERVED_METRICS} | {"node_textfile_mtime_seconds"}
    exprs = "\n".join(line for line in RULES.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\b(ocspstaple_[a-z_]+|node_textfile_[a-z_]+)\b", exprs))
    assert used and used <= written, used - written
