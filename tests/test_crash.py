"""Crash safety (issue 6, item 1): kill -9 a refresh at random points, many times.

Each killed run is a real `ocspstaple refresh` (``ocspstaple.cli.main``) in a
process of its own, against the real responder on 127.0.0.1, writing real
files.  A test-only hook (nothing in the package) counts the process's file
operations (open, temp file, fsync, fchmod, replace, unlink, ...) as
checkpoints; the run stops at a randomly chosen one and says so on a pipe, and
the test kills it with SIGKILL by its PID.  A quarter of the runs are instead
killed after a random delay.

After every kill the staple is exactly the old bytes or a response the
responder served to that run, and it validates; the next run removes whatever
temp file the dead one left and succeeds, silently.

The loop forks the test process (the package is already imported there, so a
run costs milliseconds, not the 0.6 s an interpreter start costs); one more
test does the same with separate ``python -c`` processes and the real CLI.
"""
from __future__ import annotations

import datetime as dt
import importlib
import inspect
import os
import pkgutil
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import Site, clean_env, run_cli
from pki import CA, HOUR, write_pem
from responder import Reply, Responder

import ocspstaple
from ocspstaple.certs import Pair
from ocspstaple.errors import ValidationError
from ocspstaple.store import TEMP_SUFFIX, lock_output
from ocspstaple.validate import validate

ITERATIONS = 200
SEED = 20261127


def _child(kill_at: int, pipe_w: int, argv: list[str], stderr_path: str, nap: float) -> None:
    """Body of a run to be killed: wrap the file operations, then run the CLI.

    Self-contained (imports inside), because it also runs as ``python -c`` from
    its own source.  Checkpoint number ``kill_at`` writes its name to ``pipe_w``
    and waits to be killed; 0 means never stop.  At the end the number of
    checkpoints passed is written to the pipe.  ``nap`` sleeps at every
    checkpoint, which widens the windows for kills at a random time.
    """
    import builtins
    import io
    import os
    import sys
    import time

    count = 0

    def hit(label: str) -> None:
        nonlocal count
        count += 1
        if count == kill_at:
            os.write(pipe_w, f"at {count} {label}\n".encode())
            time.sleep(120)  # the test kills us here
            os._exit(99)
        if nap:
            time.sleep(nap)

    def after(fn, label):
        def wrapped(*a, **kw):
            r = fn(*a, **kw)
            hit(label)
            return r
        return wrapped

    def around(fn, label):
        def wrapped(*a, **kw):
            hit("before " + label)
            r = fn(*a, **kw)
            hit("after " + label)
            return r
        return wrapped

    def before(fn, label):
        def wrapped(*a, **kw):
            hit("before " + label)
            return fn(*a, **kw)
        return wrapped

    err = open(stderr_path, "w")
    os.dup2(err.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout = sys.stderr = err
    code = 3
    try:
        opener = after(builtins.open, "open")
        builtins.open = io.open = opener
        os.open = after(os.open, "os.open")
        os.fdopen = after(os.fdopen, "fdopen")
        import ocspstaple.store

        # The temp file's creation (O_EXCL in the target's directory).
        ocspstaple.store._temp_file = after(ocspstaple.store._temp_file, "temp file")
        os.fsync = around(os.fsync, "fsync")
        os.fchmod = before(os.fchmod, "fchmod")
        os.fchown = before(os.fchown, "fchown")
        os.replace = around(os.replace, "replace")
        os.rename = around(os.rename, "rename")
        os.unlink = before(os.unlink, "unlink")
        os.truncate = before(os.truncate, "truncate")
        from ocspstaple.cli import main

        main(argv, prog_name="ocspstaple")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException as e:  # noqa: BLE001 - reported through the exit code
        print(f"child crashed: {e!r}", file=err)
        code = 4
    finally:
        err.flush()
        os.write(pipe_w, f"done {count}\n".encode())
        os._exit(code)


def warm_up(responder: Responder, directory: Path) -> None:
    """Import and exercise now what a run would import lazily, so that a forked
    run costs milliseconds (a child's imports die with it)."""
    import concurrent.futures  # noqa: F401
    import subprocess  # noqa: F401
    import tomllib  # noqa: F401

    import requests

    for mod in pkgutil.iter_modules(ocspstaple.__path__):
        importlib.import_module(f"ocspstaple.{mod.name}")
    # A request through requests itself, not through HttpTransport: a forked
    # child must not inherit the parent's state of the transport's thread pool.
    with requests.Session() as s:
        s.get(responder.url, timeout=5).close()
    with lock_output(directory / "warm-up", timeout=5):
        pass


def fork_run(argv: list[str], stderr_path: Path, *, kill_at: int = 0, nap: float = 0.0) -> tuple[int, int]:
    """Fork a child that runs ``_child``; return (pid, read end of its pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            _child(kill_at, w, argv, str(stderr_path), nap)
        finally:
            os._exit(5)
    os.close(w)
    return pid, r


def read_pipe(fd: int, timeout: float) -> str:
    """What the child wrote, up to its first line or EOF, within ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return data.decode() + "<timeout>"
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode()


def reap(pid: int, *, kill: bool) -> int:
    """Kill (if asked) and wait for the child ``pid``; return its exit status."""
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    return status


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


class Served:
    """Every request gets a newer response than the one before (thisUpdate + 1 s)."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.base = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - 2 * HOUR
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        responder.reply_for = self.reply

    def reply(self, req) -> Reply:
        with self.lock:
            body = self.responder.good(this_update=self.base + dt.timedelta(seconds=len(self.bodies)))
            self.bodies.append(body)
        return Reply(body)


class LoopResult:
    def __init__(self) -> None:
        self.problems: list[str] = []  # broken staple guarantees, first one first
        self.other_temps: set[str] = set()  # temp files of other files, left behind for good
        self.stats = {"temp left": 0, "old kept": 0, "new in place": 0, "finished before the kill": 0}
        self.labels: set[str] = set()
        self.iterations = 0


def staple_temps(output: Path) -> list[str]:
    """Temp files of the staple itself (``.NAME.<random>.ocspstaple-tmp``)."""
    prefix = "." + output.name + "."
    return sorted(n for n in temp_files(output.parent) if n.startswith(prefix))


@pytest.fixture(scope="module")
def crash_loop(ca: CA, tmp_path_factory) -> LoopResult:
    """Kill ITERATIONS runs, each followed by a run that must recover; the
    findings are checked by the tests below."""
    # On a tmpfs when there is one: a kill -9 leaves the page cache as it was,
    # so the filesystem does not matter here, and fsync costs nothing there.
    shm = Path("/dev/shm")
    fast = shm.is_dir() and os.access(shm, os.W_OK)
    root = Path(tempfile.mkdtemp(prefix="ocspstaple-crash-", dir=shm)) if fast else tmp_path_factory.mktemp("crash")
    (root / "log").mkdir()
    err = root / "log" / "stderr.txt"
    out = LoopResult()
    try:
        _run_loop(ca, root, err, out)
    finally:
        if fast:
            shutil.rmtree(root, ignore_errors=True)
    return out


def _run_loop(ca: CA, root: Path, err: Path, out: LoopResult) -> None:
    with Responder(ca) as responder:
        site_dir = root / "site"
        site_dir.mkdir()
        leaf = ca.issue("www.example.test", ocsp_urls=(responder.url,))
        responder.leaf = leaf
        cert = write_pem(site_dir / "fullchain.pem", leaf, ca.cert)
        output = site_dir / "fullchain.pem.ocsp"
        pair = Pair(cert=leaf.cert, issuer=ca.cert)
        served = Served(responder)
        warm_up(responder, root / "log")
        _loop(out, ["refresh", "--cert", str(cert), "--timeout", "5", "--lock-timeout", "10"],
              output, pair, served, err)


def _loop(out: LoopResult, argv: list[str], output: Path, pair: Pair, served: Served, err: Path) -> None:
    rng = random.Random(SEED)
    directory = output.parent

    def valid(data: bytes) -> bool:
        try:
            validate(data, pair=pair, now=dt.datetime.now(dt.timezone.utc))
        except ValidationError:
            return False
        return True

    # Calibration: a whole run, counting its checkpoints and its duration.
    t0 = time.monotonic()
    pid, r = fork_run(argv + ["--force"], err)
    line = read_pipe(r, 30)
    os.close(r)
    status = reap(pid, kill=False)
    duration = time.monotonic() - t0
    assert os.waitstatus_to_exitcode(status) == 0, (line, err.read_text())
    assert line.startswith("done "), line
    checkpoints = int(line.split()[1])
    assert checkpoints >= 8, line  # the hook really sees the writes
    assert output.read_bytes() == served.bodies[-1]

    for i in range(ITERATIONS):
        out.iterations = i + 1
        old = output.read_bytes()
        n_served = len(served.bodies)
        by_time = rng.random() < 0.25
        kill_at = 0 if by_time else rng.randint(1, checkpoints + 1)
        pid, r = fork_run(argv + ["--force"], err, kill_at=kill_at, nap=0.002 if by_time else 0.0)
        if by_time:
            time.sleep(rng.uniform(0, duration * 1.5))
            line = ""
        else:
            line = read_pipe(r, 30)
            if "<timeout>" in line:
                reap(pid, kill=True)
                out.problems.append(f"iteration {i}: the run never reached checkpoint {kill_at}: {line}")
                return
            if line.startswith("at "):
                out.labels.add(line.split(" ", 2)[2].strip())
        reap(pid, kill=True)
        os.close(r)
        if line.startswith("done"):
            out.stats["finished before the kill"] += 1
        where = f"iteration {i} (kill at {line.strip() or 'a random time'})"

        # The staple: the old bytes or a response served to the killed run, whole and valid.
        now_bytes = output.read_bytes() if output.exists() else b""
        if now_bytes not in [old, *served.bodies[n_served:]]:
            out.problems.append(f"{where}: the staple is neither the old nor a new response ({len(now_bytes)} bytes)")
            return
        if not valid(now_bytes):
            out.problems.append(f"{where}: the staple on disk does not validate")
            return
        out.stats["old kept" if now_bytes == old else "new in place"] += 1
        out.stats["temp left"] += bool(staple_temps(output))

        # The next run cleans up after the dead one and succeeds, silently.
        force = rng.random() < 0.3
        pid, r = fork_run(argv + (["--force"] if force else []), err)
        line = read_pipe(r, 30)
        os.close(r)
        code = os.waitstatus_to_exitcode(reap(pid, kill=False))
        after = output.read_bytes()
        if code != 0 or err.read_text() != "":
            out.problems.append(f"{where}: the next run exited {code}: {err.read_text()!r} {line!r}")
        elif staple_temps(output):
            out.problems.append(f"{where}: the next run left {staple_temps(output)}")
        elif not valid(after) or (force and after != served.bodies[-1]):
            out.problems.append(f"{where}: the next run did not leave the newest valid staple")
        if out.problems:
            return
        out.other_temps |= set(temp_files(directory)) - set(staple_temps(output))


def test_kill_9_at_random_points_never_loses_the_staple(crash_loop: LoopResult):
    assert crash_loop.problems == []
    assert crash_loop.iterations == ITERATIONS
    # The kills really hit the write: some left a temp file, some the old and some the new staple.
    stats = crash_loop.stats
    assert stats["temp left"] > 0 and stats["old kept"] > 0 and stats["new in place"] > 0, stats
    assert {"before replace", "after replace", "temp file", "before fsync"} <= crash_loop.labels, crash_loop.labels


def test_kill_9_leaves_no_temp_file_of_any_kind_behind(crash_loop: LoopResult):
    """Spec, Writing: "No temp file is ever left behind" -- also for the other
    files a run writes beside the staple (e.g. its state record): each must be
    cleaned up by a later run, as the staple's are."""
    assert crash_loop.iterations == ITERATIONS
    assert sorted(crash_loop.other_temps) == [], "left for good by killed runs"


def test_killed_cli_process_and_the_next_cli_run(site: Site, responder: Responder, ca: CA, tmp_path: Path):
    """The same with separate interpreters: ``python -c`` runs the CLI with the
    hook and is killed by PID just before os.replace (a whole temp file on disk),
    or just after the temp file is made (an empty one); then ``python -m ocspstaple`` cleans up."""
    served = Served(responder)
    tests = str(Path(__file__).parent)
    argv = ["refresh", "--cert", str(site.cert), "--force"]
    assert run_cli(*argv).code == 0
    directory = site.output.parent
    for label in ("before replace", "temp file"):
        old = site.output.read_bytes()
        r, w = os.pipe()
        source = inspect.getsource(_child)
        code = (f"import sys; sys.path.insert(0, {tests!r})\n{source}\n"
                f"_child(-1, {w}, {argv!r}, {os.devnull!r}, 0.0)\n")
        # -1: never stop by number; the label decides.
        code = code.replace("if count == kill_at:", f"if count == kill_at or label == {label!r}:")
        p = subprocess.Popen([sys.executable, "-c", code], pass_fds=(w,), env=clean_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(w)
        try:
            line = read_pipe(r, 30)
        finally:
            os.close(r)
            p.kill()  # SIGKILL, by the PID of the process we started
            p.wait(timeout=30)
        assert line.strip().endswith(label), line
        assert p.returncode == -signal.SIGKILL
        left = temp_files(directory)
        assert len(left) == 1, left  # the dead run's temp file is there
        assert site.output.read_bytes() == old
        run = run_cli(*argv)
        assert run.code == 0 and run.err == "", run.err
        assert temp_files(directory) == []
        assert site.output.read_bytes() == served.bodies[-1] != old
