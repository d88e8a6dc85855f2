"""The progress bar: on a terminal's stderr for long runs, never otherwise."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, Site, clean_env, run_on_tty

BAR = "] 25/25 certificates"


def config(site: Site, n: int = 25) -> Path:
    path = site.cert.parent / "many.toml"
    path.write_text("".join(f'[staple.s{i}]\ncert = "{site.cert}"\noutput = "out{i}.der"\n' for i in range(n)))
    return path


def run(args: list[str], *, tty: bool) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (tty=True) or a pipe; return (code, stderr)."""
    env = clean_env() | {"TERM": "xterm"}
    if tty:
        return run_on_tty(*args, stream="stderr", env=env)
    p = subprocess.run([sys.executable, "-m", "ocspstaple", *args], capture_output=True, text=True, env=env,
                       timeout=60, cwd=ROOT)
    return p.returncode, p.stderr


def test_a_long_run_on_a_terminal_shows_a_bar_and_clears_it(site: Site) -> None:
    code, err = run(["refresh", "--config", str(config(site))], tty=True)
    assert code == 0, err
    assert BAR in err and "\r[" in err
    assert err.rstrip("\r\n").endswith("\x1b[K")  # cleared at the end: the terminal is left clean


def test_a_failure_line_is_not_glued_to_the_bar(site: Site, responder) -> None:
    responder.fault("tryLater")
    code, err = run(["refresh", "--config", str(config(site))], tty=True)
    assert code == 2
    lines = [ln for ln in err.replace("\r\x1b[K", "\n").splitlines() if "tryLater" in ln]
    assert lines and all(ln.startswith(str(site.cert)) for ln in lines), lines


def test_no_bar_without_a_terminal_with_q_or_v_or_for_a_short_run(site: Site) -> None:
    cfg = config(site)
    assert BAR not in run(["refresh", "--config", str(cfg)], tty=False)[1]
    assert BAR not in run(["refresh", "--config", str(cfg), "--force", "-q"], tty=True)[1]
    assert BAR not in run(["refresh", "--config", str(cfg), "--force", "-v"], tty=True)[1]
    short = config(site, n=5)
    assert "certificates" not in run(["refresh", "--config", str(short), "--force"], tty=True)[1]
