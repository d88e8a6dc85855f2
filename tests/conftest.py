from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

from pki import CA, Issued, write_pem  # noqa: E402
from responder import Responder  # noqa: E402

import ocspstaple.certs  # noqa: E402
import ocspstaple.validate  # noqa: E402
from ocspstaple import refresh  # noqa: E402
from ocspstaple.fetch import HostGates, HttpReply, HttpTransport, Origins  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def assert_silent_success(run: Run) -> None:
    """Exit 0 and not a word: quiet when all is well (cron mails whatever is printed)."""
    assert run.code == 0, run.err
    assert run.out == "" and run.err == "", run.err


def one_line(run: Run, *needles: str) -> str:
    """The one stderr line of a run, holding every needle."""
    assert "Traceback" not in run.err, run.err
    assert len(run.lines) == 1, run.err
    for needle in needles:
        assert needle in run.lines[0], (needle, run.lines[0])
    return run.lines[0]


def in_ci() -> bool:
    """CI=true (as CI services set it): the run must hold every rule."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def cannot_run_here(reason: str) -> NoReturn:
    """Skip a test this machine cannot run; under CI=true fail instead: CI is
    set up (root, every package) to run them all, and a skip there would hide
    that a rule went untested."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this must run in CI)", pytrace=False)
    pytest.skip(reason)


# Hypothesis profiles (README, "Development"): which one runs is decided here,
# before any test module builds its settings.
#   dev      the default: random examples, failures saved in .hypothesis/ and replayed first.
#   ci       selected by CI=true: the same examples on every run (derandomize), no
#            database, no deadline: a CI run cannot pass or fail by luck, and a
#            failure reproduces with the same command.
#   explore  HYPOTHESIS_PROFILE=explore: random, ten times the examples.
# HYPOTHESIS_PROFILE names one explicitly and wins over CI.
# Each from Hypothesis' own defaults: not from whatever profile Hypothesis
# loaded itself on seeing CI set (its built-in "ci", which this one replaces).
_BASE = settings.get_profile("default")
settings.register_profile("dev", _BASE, deadline=None)
settings.register_profile("ci", _BASE, derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", _BASE, deadline=None, print_blob=True)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci() else "dev")
settings.load_profile(HYPOTHESIS_PROFILE)


def examples(n: int) -> int:
    """A property's max_examples under the profile: ``n`` as the test has it for
    dev and ci (chosen to keep the whole suite under ten minutes), ten times
    that to explore."""
    return n * 10 if HYPOTHESIS_PROFILE == "explore" else n


def lock_held(path: Path) -> bool:
    """Whether another open file description holds the flock of ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class AnswerNetwork:
    """The network edge for the core: every request (GET or POST) gets
    ``answer``, a body or an exception to raise; requests are counted."""

    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer
        self.requests = 0

    def __call__(self, timeout: float, proxy: str | None) -> AnswerNetwork:
        return self

    def _reply(self) -> HttpReply:
        self.requests += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return HttpReply(200, self.answer)

    def get(self, url: str) -> HttpReply:
        return self._reply()

    def post(self, url: str, body: bytes) -> HttpReply:
        return self._reply()


class RealNetwork:
    """A run's network as the CLI makes it: a real HttpTransport per
    (timeout, proxy), sharing ``gates`` (default: the process's) and
    ``origins`` (None: never cut off); the transports made, to close."""

    def __init__(self, *, gates: HostGates | None = None, origins: Origins | None = None) -> None:
        self.gates, self.origins = gates, origins
        self.made: list[HttpTransport] = []
        self.lock = threading.Lock()

    def __call__(self, timeout: float, proxy: str | None) -> HttpTransport:
        with self.lock:
            t = HttpTransport(timeout=timeout, proxy=proxy, gates=self.gates, origins=self.origins)
            self.made.append(t)
            return t

    def close(self) -> None:
        for t in self.made:
            t.close()


class NoNetwork:
    """The network edge of a run that must not use it."""

    def __call__(self, timeout: float, proxy: str | None):
        raise AssertionError("the network was used")


class FixedClock:
    """The clock of the core: ``now``, until a test moves it."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def run_on_tty(*args: str | Path, stream: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``python -m ocspstaple ARGS`` with its ``stream`` ("stdout" or
    "stderr") on a pseudo-terminal, the other discarded; (exit code, what the
    terminal got)."""
    import pty

    master, slave = pty.openpty()
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: slave}
    p = subprocess.Popen([sys.executable, "-m", "ocspstaple", *map(str, args)], stdin=subprocess.DEVNULL,
                         env=env, cwd=ROOT, **streams)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        code = p.wait(timeout=60)
    return code, b"".join(chunks).decode(errors="replace")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
    """Run ``python -m ocspstaple ARGS`` as a real process."""
    p = subprocess.run(
        [sys.executable, "-m", "ocspstaple", *map(str, args)],
        capture_output=True, text=True, env=env if env is not None else clean_env(), timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr)


@pytest.fixture(autouse=True)
def _library_logging():
    """Each test starts with the "ocspstaple" logger as a library leaves it.

    An in-process CLI run (click's CliRunner) sets it up as the CLI does: a
    handler of its own and no propagation.  pytest (from 8) then attaches
    its capture handler to such a logger as well as to the root, and a test
    that makes it propagate again would see every record twice.
    """
    logger = logging.getLogger("ocspstaple")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    yield


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA.root()


@pytest.fixture
def responder(ca: CA):
    leaf = ca.issue("www.example.test")  # replaced per test by `site`
    with Responder(ca, leaf) as r:
        yield r


@dataclass
class Site:
    """A leaf certificate whose AIA points at the test responder, on disk."""

    leaf: Issued
    cert: Path  # fullchain: leaf + issuer
    issuer: Path
    output: Path


@pytest.fixture
def site(tmp_path: Path, ca: CA, responder: Responder) -> Site:
    leaf = ca.issue("www.example.test", ocsp_urls=(responder.url,))
    responder.leaf = leaf
    cert = write_pem(tmp_path / "fullchain.pem", leaf, ca.cert)
    issuer = write_pem(tmp_path / "issuer.pem", ca.cert)
    return Site(leaf=leaf, cert=cert, issuer=issuer, output=tmp_path / "fullchain.pem.ocsp")


class Checks:
    """How often the real signature checks ran: ``checks["verify"]`` for OCSP
    responses (refresh.verify for the staple on disk, validate.verify behind
    validate() for a fetched one; ``verified`` lists their bytes), and
    ``checks["issued_by"]`` for the certificate's signature."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.verified: list[bytes] = []

    def __getitem__(self, key: str) -> int:
        return self.counts[key]

    def clear(self) -> None:
        self.counts.clear()
        self.verified.clear()


@pytest.fixture
def checks(monkeypatch) -> Checks:
    seen = Checks()

    def spy(module, name: str, key: str) -> None:
        real = getattr(module, name)

        def counting(*args, **kwargs):
            seen.counts[key] += 1
            if key == "verify":
                seen.verified.append(args[0])
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    spy(refresh, "verify", "verify")
    spy(ocspstaple.validate, "verify", "verify")
    spy(ocspstaple.certs, "check_issued_by", "issued_by")
    return seen
