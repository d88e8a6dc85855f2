"""Safe as root beside less-trusted local users (spec, "Trust on the local disk").

Every attack is made for real: a second local user created here (root only,
as in CI), real symlinks, FIFOs, device nodes, hard links and held locks.
Each attack has its twin: the legitimate set-up beside it keeps working.
Tests that need root (another user, chown, mknod) skip with that reason
elsewhere; the FIFO and same-file tests run as anyone.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Run, Site, assert_silent_success, lock_held, one_line, run_cli
from pki import CA, write_pem
from responder import Responder

from ocspstaple import state
from ocspstaple.config import DEFAULT_VALIDITY, Staple
from ocspstaple.errors import StoreError, TrustError
from ocspstaple.refresh import Inputs, checked_digest
from ocspstaple.store import atomic_write, lock_output, lock_path, read_file, read_staple
from ocspstaple.validate import verify

UTC = dt.timezone.utc
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: another user, chown and mknod (CI runs as root)")


def refresh(*args: str | Path, timeout: float = 60) -> Run:
    return run_cli("refresh", *args, timeout=timeout)


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class User:
    """The less-trusted local user: a web application's account, say."""

    name: str
    uid: int
    gid: int

    def run(self, *cmd: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(map(str, cmd)), user=self.uid, group=self.gid, extra_groups=[],
                              capture_output=True, text=True, timeout=30)

    def popen(self, *cmd: str | Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(map(str, cmd)), user=self.uid, group=self.gid, extra_groups=[],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def owns(self, path: Path) -> None:
        """Give ``path`` (not what a link points to) to this user, as if they had made it."""
        os.lchown(path, self.uid, self.gid)


@pytest.fixture(scope="session")
def mallory() -> User:
    if not ROOT:
        pytest.skip("needs root to create a second local user (CI runs as root)")
    name = "ocspstaple-mallory"
    created = False
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        created = True
        pw = pwd.getpwnam(name)
    yield User(name, pw.pw_uid, pw.pw_gid)
    if created:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def arena() -> Path:
    """A root-owned 0755 directory that the other user can enter (pytest's
    tmp_path is 0700), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="ocspstaple-trust-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def subdir(parent: Path, name: str, mode: int = 0o755) -> Path:
    d = parent / name
    d.mkdir()
    os.chmod(d, mode)
    return d


@pytest.fixture
def here(arena: Path, ca: CA, responder: Responder) -> Site:
    """The site of conftest, in the arena: certificates in certs/ (0755)."""
    certs = subdir(arena, "certs")
    leaf = ca.issue("www.example.test", ocsp_urls=(responder.url,))
    responder.leaf = leaf
    cert = write_pem(certs / "fullchain.pem", leaf, ca.cert)
    issuer = write_pem(certs / "issuer.pem", ca.cert)
    return Site(leaf=leaf, cert=cert, issuer=issuer, output=certs / "fullchain.pem.ocsp")


@pytest.fixture
def victim(arena: Path) -> Path:
    """A root file that no write of ours may touch."""
    v = subdir(arena, "etc") / "passwd"
    v.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    os.chmod(v, 0o600)
    return v


def untouched(victim: Path) -> None:
    st = victim.stat()
    assert victim.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n"
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)


def names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


# -- a directory others can write: refused, with the fix -------------------------------------------

@needs_root
def test_planted_record_link_in_a_shared_directory(here: Site, arena: Path, victim: Path, mallory: User):
    shared = subdir(arena, "shared", 0o777)
    out = shared / "site.der"
    planted = mallory.run("ln", "-s", victim, shared / ".site.der.state.json")
    assert planted.returncode == 0, planted.stderr
    run = refresh("--cert", here.cert, "--output", out)
    assert run.code == 2, run.err
    line = one_line(run, str(here.cert), f"directory {shared} is writable by every user",
                    f"chmod go-w {shared}")
    assert "chown root:root" in line
    untouched(victim)
    assert names(shared) == {".site.der.state.json"}  # nothing written, not even a lock


@needs_root
def test_twin_a_root_directory_takes_the_staple(here: Site, arena: Path):
    private = subdir(arena, "private", 0o755)
    assert_silent_success(refresh("--cert", here.cert, "--output", private / "site.der"))
    assert names(private) == {"site.der", ".site.der.lock", ".site.der.state.json"}
    assert stat.S_IMODE((private / ".site.der.lock").stat().st_mode) == 0o600


@needs_root
@pytest.mark.parametrize("why, mode, owner", [("group", 0o775, "group"), ("owner", 0o755, "user")])
def test_directory_of_another_user_or_group(here: Site, arena: Path, mallory: User, why: str, mode: int, owner: str):
    d = subdir(arena, "app", mode)
    os.chown(d, mallory.uid if owner == "user" else 0, mallory.gid)
    run = refresh("--cert", here.cert, "--output", d / "site.der")
    assert run.code == 2
    one_line(run, str(here.cert), f"directory {d} is",
             f"group gid {mallory.gid}" if why == "group" else f"owned by uid {mallory.uid} ({mallory.name})")
    assert names(d) == set()
    os.chown(d, 0, 0)  # twin: the group is root's (logrotate accepts that), the owner too
    assert_silent_success(refresh("--cert", here.cert, "--output", d / "site.der"))


@needs_root
def test_state_dir_others_can_write_is_not_written_through(here: Site, arena: Path, victim: Path, mallory: User):
    out = subdir(arena, "www") / "site.der"
    states = subdir(arena, "states", 0o777)
    record = state.state_path(out, states)
    assert mallory.run("ln", "-s", victim, record).returncode == 0
    run = refresh("--cert", here.cert, "--output", out, "--state-dir", states)
    assert run.code == 0 and out.exists(), run.err  # the staple's own directory is fine
    one_line(run, "cannot save the state record", f"directory {states} is writable by every user")
    untouched(victim)
    assert record.is_symlink()
    # Twin: a state directory of root's gets the record.
    os.chmod(states, 0o755)
    record.unlink()
    assert_silent_success(refresh("--cert", here.cert, "--output", out, "--state-dir", states, "--force"))
    assert record.is_file() and not record.is_symlink()


# -- symlinks: followed only when root (or the running user) made them ------------------------------

@needs_root
def test_foreign_symlink_at_the_staple_is_refused(here: Site, arena: Path, victim: Path, mallory: User):
    www = subdir(arena, "www")
    link = www / "site.der"
    link.symlink_to(victim)
    mallory.owns(link)  # made before the directory was locked down, say
    run = refresh("--cert", here.cert, "--output", link)
    assert run.code == 2
    one_line(run, str(here.cert), f"{link} is a symlink owned by uid {mallory.uid} ({mallory.name})")
    untouched(victim)
    assert os.readlink(link) == str(victim)


@needs_root
def test_twin_a_root_symlink_at_the_staple_is_followed(here: Site, arena: Path):
    archive = subdir(arena, "archive")
    link = subdir(arena, "live") / "site.der"
    link.symlink_to(archive / "site1.der")
    assert_silent_success(refresh("--cert", here.cert, "--output", link))
    assert link.is_symlink() and (archive / "site1.der").stat().st_size > 0


@needs_root
def test_foreign_symlink_in_the_path_is_refused(here: Site, arena: Path, mallory: User):
    real = subdir(arena, "real")
    hop = arena / "hop"
    hop.symlink_to(real)
    mallory.owns(hop)
    run = refresh("--cert", here.cert, "--output", hop / "site.der")
    assert run.code == 2
    one_line(run, str(here.cert), f"{hop} is a symlink owned by uid {mallory.uid}")
    assert names(real) == set()
    os.lchown(hop, 0, 0)  # twin: root's link
    assert_silent_success(refresh("--cert", here.cert, "--output", hop / "site.der"))
    assert (real / "site.der").exists()


@needs_root
def test_device_node_at_the_staple_is_refused_not_replaced(here: Site, arena: Path):
    out = subdir(arena, "www") / "site.der"
    os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null
    run = refresh("--cert", here.cert, "--output", out)
    assert run.code == 2
    one_line(run, str(here.cert), "is a character device, not a regular file")
    assert stat.S_ISCHR(out.lstat().st_mode)


@needs_root
def test_metrics_file_link_of_another_user(here: Site, arena: Path, victim: Path, mallory: User):
    metrics = subdir(arena, "metrics") / "ocsp.prom"
    metrics.symlink_to(victim)
    mallory.owns(metrics)
    out = subdir(arena, "www") / "site.der"
    run = refresh("--cert", here.cert, "--output", out, "--metrics-file", metrics)
    one_line(run, "cannot write the metrics file", "symlink owned by")
    untouched(victim)
    assert out.exists()
    metrics.unlink()  # twin
    assert_silent_success(refresh("--cert", here.cert, "--output", out, "--metrics-file", metrics))
    assert b"ocspstaple_" in metrics.read_bytes()


# -- --scan takes only root's (or our) files --------------------------------------------------------

@needs_root
def test_scan_skips_a_planted_certificate(arena: Path, ca: CA, responder: Responder, victim: Path,
                                          mallory: User):
    crt = subdir(arena, "crt")
    site = ca.issue("site.example.test", ocsp_urls=(responder.url,))
    evil = ca.issue("evil.example.test", ocsp_urls=(responder.url,))
    by_serial = {site.cert.serial_number: site, evil.cert.serial_number: evil}
    from responder import Reply
    responder.reply_for = lambda req: Reply(ca.respond(by_serial[req.serial_number].cert))
    write_pem(crt / "site.pem", site, ca.cert, site.key_pem)
    write_pem(crt / "evil.pem", evil, ca.cert)
    mallory.owns(crt / "evil.pem")
    (crt / "evil.pem.ocsp").symlink_to(victim)
    mallory.owns(crt / "evil.pem.ocsp")
    run = refresh("--scan", crt)
    assert run.code == 0, run.err
    one_line(run, str(crt / "evil.pem"), f"owned by uid {mallory.uid} ({mallory.name})",
             "--scan takes only files owned by root")
    untouched(victim)
    assert (crt / "site.pem.ocsp").stat().st_size > 0  # the twin, in the same directory
    # The scanned directory itself must be root's alone.
    os.chmod(crt, 0o777)
    run = refresh("--scan", crt, "--force")
    assert run.code == 2
    one_line(run, f"--scan {crt}", f"directory {crt} is writable by every user")


@needs_root
def test_haproxy_crt_directory_with_root_links_into_letsencrypt(arena: Path, ca: CA, responder: Responder):
    """The legitimate set-up: crt/ (root, 0700) holds site.pem, a root-owned
    symlink into a certbot-like live/ tree; the staple goes beside it."""
    live = subdir(subdir(subdir(arena, "letsencrypt"), "live"), "site", 0o700)
    site = ca.issue("site.example.test", ocsp_urls=(responder.url,))
    responder.leaf = site
    write_pem(live / "haproxy.pem", site, ca.cert, site.key_pem)
    crt = subdir(arena, "crt", 0o700)
    (crt / "site.pem").symlink_to(live / "haproxy.pem")
    assert_silent_success(refresh("--scan", crt))
    assert (crt / "site.pem.ocsp").is_file() and not (crt / "site.pem.ocsp").is_symlink()
    assert names(live) == {"haproxy.pem"}


@needs_root
def test_nginx_directory_and_a_state_dir_of_root(here: Site, arena: Path):
    """/etc/nginx/ocsp (root 0755) and --state-dir /var/lib/ocspstaple, as the README sets them up."""
    nginx = subdir(subdir(arena, "nginx"), "ocsp")
    states = subdir(subdir(arena, "lib"), "ocspstaple")
    assert_silent_success(refresh("--cert", here.cert, "--output", nginx / "site.der", "--state-dir", states))
    assert names(nginx) == {"site.der", ".site.der.lock"}
    assert len(names(states)) == 1


# -- locks: 0600, and nobody else holds them ----------------------------------------------------------

@needs_root
def test_a_lock_another_user_holds_is_replaced(here: Site, arena: Path, mallory: User):
    www = subdir(arena, "www")
    out = www / "site.der"
    lock = lock_path(out)
    lock.write_bytes(b"")
    os.chmod(lock, 0o644)  # as an older version made it: anyone who can read it can flock it
    holder = mallory.popen("flock", "-s", lock, "sleep", "60")
    try:
        deadline = time.monotonic() + 10
        while not lock_held(lock):
            assert time.monotonic() < deadline and holder.poll() is None, "the other user never took the lock"
            time.sleep(0.05)
        run = refresh("--cert", here.cert, "--output", out, "--lock-timeout", "5")
        assert_silent_success(run)
        assert out.exists()
        st = lock.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
        # ... and the other user cannot open the new one to hold it.
        again = mallory.run("flock", "-n", "-s", lock, "true")
        assert again.returncode != 0 and "Permission denied" in again.stderr
    finally:
        holder.kill()
        holder.wait(10)


def test_twin_a_lock_of_our_own_run_is_waited_for(site: Site):
    """Another run of ours holding the (0600) lock: this run waits, then gives up."""
    site.output.write_bytes(b"")
    with lock_output(site.output, timeout=5):
        run = refresh("--cert", site.cert, "--output", site.output, "--lock-timeout", "0.5", "--force")
    assert run.code == 2
    one_line(run, "gave up")


def test_new_lock_is_0600_and_a_0644_one_is_replaced(tmp_path: Path):
    out = tmp_path / "site.der"
    with lock_output(out, timeout=5):
        pass
    assert stat.S_IMODE(lock_path(out).stat().st_mode) == 0o600
    lock_path(out).unlink()
    lock_path(out).write_bytes(b"")
    os.chmod(lock_path(out), 0o644)
    old = lock_path(out).stat().st_ino
    with lock_output(out, timeout=5):
        pass
    st = lock_path(out).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_ino != old
    assert names(tmp_path) == {".site.der.lock"}


def test_a_hard_linked_lock_is_replaced_not_chmodded(tmp_path: Path):
    precious = tmp_path / "precious"
    precious.write_bytes(b"x")
    os.chmod(precious, 0o644)
    os.link(precious, lock_path(tmp_path / "site.der"))
    with lock_output(tmp_path / "site.der", timeout=5):
        pass
    assert stat.S_IMODE(precious.stat().st_mode) == 0o644 and precious.stat().st_nlink == 1


# -- FIFOs: refused without waiting -------------------------------------------------------------

def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["refresh", "status", "check"])
def test_fifo_at_the_staple_does_not_hang(site: Site, command: str):
    fifo(site.output)
    run = run_cli(command, "--cert", site.cert, "--output", site.output, timeout=30) if command == "refresh" \
        else run_cli(command, "--cert", site.cert, timeout=30)
    assert "Traceback" not in run.err
    # check: a staple that cannot be judged is UNKNOWN, as any bad input is there.
    assert run.code == {"check": 3}.get(command, 2), (run.code, run.out, run.err)
    text = run.out + run.err
    assert "is a FIFO, not a regular file" in text, text
    assert stat.S_ISFIFO(site.output.lstat().st_mode)


def test_fifo_at_a_record_and_at_an_input(site: Site, tmp_path: Path):
    assert_silent_success(refresh("--cert", site.cert))  # a staple and its record
    record = state.state_path(site.output, None)
    record.unlink()
    fifo(record)
    assert_silent_success(refresh("--cert", site.cert))  # a record that is a FIFO is no record
    assert run_cli("status", "--cert", site.cert, timeout=30).code == 0
    issuer = fifo(tmp_path / "issuer-fifo.pem")
    run = refresh("--cert", site.cert, "--issuer", issuer, "--force")
    assert run.code == 2
    one_line(run, str(issuer), "is a FIFO, not a regular file")
    config = fifo(tmp_path / "ocspstaple.toml")
    run = refresh("--config", config)
    assert run.code == 2
    one_line(run, str(config), "is a FIFO")


def test_one_fifo_does_not_stop_the_others(tmp_path: Path, ca: CA, responder: Responder):
    leaf = ca.issue("www.example.test", ocsp_urls=(responder.url,))
    responder.leaf = leaf
    cert = write_pem(tmp_path / "site.pem", leaf, ca.cert)
    fifo(tmp_path / "a.der")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[staple.a]\ncert = "site.pem"\noutput = "a.der"\n[staple.b]\ncert = "site.pem"\noutput = "b.der"\n')
    run = refresh("--config", cfg)
    assert run.code == 2
    one_line(run, str(cert), "a.der is a FIFO")
    assert (tmp_path / "b.der").stat().st_size > 0


def test_reading_a_fifo_or_device_never_opens_it(tmp_path: Path):
    f = fifo(tmp_path / "f")
    for read in (lambda: read_file(f, 100), lambda: read_staple(f)):
        t0 = time.monotonic()
        with pytest.raises((OSError, StoreError), match="FIFO"):
            read()
        assert time.monotonic() - t0 < 5
    assert read_file(Path("/etc/hostname"), 100)  # twin: a regular file reads


class Writer:
    """A writer blocked in open(2) on a FIFO until some reader opens it: it
    tells whether anyone opened the FIFO for reading, however briefly."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._open, daemon=True)
        self.thread.start()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        os.close(fd)

    def release(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # the twin: a reader does open it
        assert self.opened.wait(5)
        os.close(fd)
        self.thread.join(5)


def test_a_fifo_at_a_staple_or_record_is_never_opened_even_for_an_instant(tmp_path: Path):
    """O_NONBLOCK alone would not wait, but would still open the FIFO (and
    wake its writer): the stat before the open refuses it unopened."""
    out = tmp_path / "site.der"
    f = fifo(out)
    writer = Writer(f)
    with pytest.raises(TrustError, match="FIFO"):
        read_staple(out)
    assert read_file(Path("/etc/hostname"), 100)
    os.mkfifo(state.state_path(out, None))
    records = Writer(state.state_path(out, None))
    assert state.recall(out, None) is None and state.load(out, None) == state.Record()
    with pytest.raises(OSError, match="FIFO"):
        read_file(f, 100)
    time.sleep(0.2)
    assert not writer.opened.is_set() and not records.opened.is_set()
    writer.release()
    records.release()


def test_a_fifo_swapped_in_between_the_stat_and_the_open_is_refused(tmp_path: Path, monkeypatch):
    """The race the fstat after the open is for: a regular file when looked
    at, a FIFO (renamed over it) when opened: refused, without waiting.
    Twin: without the swap the same read returns the staple."""
    out = tmp_path / "site.der"
    out.write_bytes(b"staple")
    assert read_staple(out) == b"staple"
    swap = fifo(tmp_path / "swap")
    real_open = os.open

    def swapping_open(path, flags, *args, **kw):
        if path == out.name and swap.exists():
            os.replace(swap, out)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", swapping_open)
    t0 = time.monotonic()
    with pytest.raises(TrustError, match="FIFO"):
        read_staple(out)
    assert time.monotonic() - t0 < 5
    assert stat.S_ISFIFO(out.lstat().st_mode)


@needs_root
def test_a_staple_is_not_read_through_a_foreign_symlink(arena: Path, victim: Path, mallory: User):
    """Reading follows no link another user could have planted, as writing
    does not (spec, "Trust on the local disk"). Twin: the link of root's is
    followed."""
    www = subdir(arena, "www")
    link = www / "site.der"
    link.symlink_to(victim)
    mallory.owns(link)
    with pytest.raises(TrustError, match=f"{link} is a symlink owned by uid {mallory.uid}"):
        read_staple(link)
    os.lchown(link, 0, 0)
    assert read_staple(link) == victim.read_bytes()


# -- state records: believed only from a regular file of ours, reached without a link ----------------

def forged_record(site: Site, staple: bytes, url: str) -> bytes:
    """A record claiming that ``staple`` (expired) passed every check and is
    good for a year: what the attacker's JSON says."""
    resp = verify(staple, pair=_pair(site), default_validity=DEFAULT_VALIDITY)
    from dataclasses import replace
    st = Staple(name=str(site.cert), cert=site.cert, output=site.output, urls=(url,))
    digest = checked_digest(st, Inputs(site.cert.read_bytes(), None, None), staple)
    year = now() + dt.timedelta(days=365)
    forged = replace(resp, der=b"", this_update=now() - dt.timedelta(hours=1), next_update=year, expires=year)
    checked = state.Checked(digest=digest, response=forged, must_staple=False)
    rec = state.Record(last_attempt=now(), last_success=now(), checked=checked)
    return json.dumps(rec.to_json()).encode()


def _pair(site: Site):
    from ocspstaple.certs import load_pair
    return load_pair(site.cert, None)


@pytest.mark.parametrize("how", ["symlink", "regular"])
def test_forged_record_through_a_symlink_is_not_believed(site: Site, ca: CA, tmp_path: Path, how: str):
    staple = ca.respond(site.leaf.cert, this_update=now() - dt.timedelta(days=9),
                        next_update=now() - dt.timedelta(days=2))
    site.output.write_bytes(staple)
    record = state.state_path(site.output, None)
    elsewhere = tmp_path / "forged.json"
    url = "http://127.0.0.1:9/"  # no responder there
    elsewhere.write_bytes(forged_record(site, staple, url))
    os.chmod(elsewhere, 0o644)
    if how == "symlink":
        record.symlink_to(elsewhere)
    else:  # the twin: the same bytes as a record of ours are believed (what makes the difference is the link)
        shutil.copy(elsewhere, record)
    run = refresh("--cert", site.cert, "--url", url)
    if how == "symlink":
        assert run.code == 2, run.err
        one_line(run, "no valid staple")
        assert state.recall(site.output, None) is None
    else:
        assert_silent_success(run)


@needs_root
def test_record_of_another_user_gives_no_field(tmp_path: Path, mallory: User):
    out = tmp_path / "site.der"
    state.save(out, None, state.Record(consecutive_failures=7, last_error="down",
                                       retry_after=now() + dt.timedelta(days=1)), lock_timeout=5)
    record = state.state_path(out, None)
    assert state.load(out, None).consecutive_failures == 7  # twin: ours
    mallory.owns(record)
    assert state.load(out, None) == state.Record()


# -- no input is ever an output ----------------------------------------------------------------

@pytest.mark.parametrize("case", ["cert", "issuer", "symlink", "hardlink", "config", "other staple", "metrics"])
def test_an_output_that_is_an_input_is_a_config_error(site: Site, tmp_path: Path, case: str):
    combined = write_pem(tmp_path / "combined.pem", site.leaf, _ca_cert(site), site.leaf.key_pem)
    before = {p: p.read_bytes() for p in (combined, site.issuer)}
    if case == "cert":
        run = refresh("--cert", combined, "--output", combined)
    elif case == "issuer":
        run = refresh("--cert", combined, "--issuer", site.issuer, "--output", site.issuer)
    elif case == "symlink":
        (tmp_path / "link.der").symlink_to(combined)
        run = refresh("--cert", combined, "--output", tmp_path / "link.der")
    elif case == "hardlink":
        os.link(combined, tmp_path / "hard.der")
        run = refresh("--cert", combined, "--output", tmp_path / "hard.der")
    elif case == "config":
        cfg = tmp_path / "c.toml"
        cfg.write_text('[staple.a]\ncert = "combined.pem"\noutput = "./combined.pem"\n')
        run = refresh("--config", cfg)
    elif case == "other staple":
        cfg = tmp_path / "c.toml"
        cfg.write_text('[staple.a]\ncert = "combined.pem"\noutput = "a.der"\n'
                       '[staple.b]\ncert = "fullchain.pem"\noutput = "combined.pem"\n')
        run = refresh("--config", cfg)
        assert (tmp_path / "a.der").exists()  # a is fine and is refreshed
    else:
        run = refresh("--cert", combined, "--metrics-file", combined)
    assert run.code == 2, run.err
    one_line(run, "is the same file as", "give another metrics file" if case == "metrics" else "give another output")
    assert {p: p.read_bytes() for p in (combined, site.issuer)} == before


def _ca_cert(site: Site):
    from cryptography import x509
    return x509.load_pem_x509_certificate(site.issuer.read_bytes())


def test_twin_distinct_outputs_are_written(site: Site, tmp_path: Path):
    assert_silent_success(refresh("--cert", site.cert, "--issuer", site.issuer, "--output", tmp_path / "x.der"))
    assert (tmp_path / "x.der").stat().st_size > 0


# -- a newline in an output name: $OCSPSTAPLE_CHANGED stays one path a line --------------------------

def test_an_output_name_with_a_newline_is_refused(site: Site, tmp_path: Path):
    run = refresh("--cert", site.cert, "--output", tmp_path / "a\nb.der")
    assert run.code == 2
    one_line(run, "holds a control character", "OCSPSTAPLE_CHANGED")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[staple.a]\ncert = "fullchain.pem"\noutput = "x\\ny.der"\n'
                   '[staple.b]\ncert = "fullchain.pem"\noutput = "fine.der"\n')
    run = refresh("--config", cfg)
    assert run.code == 2
    one_line(run, "[staple.a] output", "control character")
    assert names(tmp_path) >= {"fine.der"} and not any("\n" in n for n in names(tmp_path))


def test_a_certbot_lineage_with_a_newline(tmp_path: Path, ca: CA, responder: Responder):
    live = tmp_path / "le" / "live"
    good, evil = live / "good", live / "evil\nname"
    for d in (good, evil):
        d.mkdir(parents=True)
        leaf = ca.issue("x.example.test", ocsp_urls=(responder.url,))
        write_pem(d / "cert.pem", leaf, ca.cert)
        write_pem(d / "chain.pem", ca.cert)
    responder.reply_for = lambda req: __import__("responder").Reply(
        ca.respond(__import__("cryptography").x509.load_pem_x509_certificate((good / "cert.pem").read_bytes())))
    outdir = tmp_path / "out"
    outdir.mkdir()
    run = refresh("--certbot-dir", tmp_path / "le", "--output-dir", outdir)
    assert run.code == 2
    one_line(run, "evil\\nname", "control character")
    assert names(outdir) >= {"good.der"} and not any("\n" in n for n in names(outdir))


# -- the file layer directly --------------------------------------------------------------------

def test_atomic_write_refuses_a_directory_others_can_write(tmp_path: Path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(TrustError, match="writable by every user"):
        atomic_write(d / "x", b"data")
    assert names(d) == set()
    os.chmod(d, 0o755)  # twin
    atomic_write(d / "x", b"data")
    assert (d / "x").read_bytes() == b"data"


def test_verify_judges_a_file_anywhere_but_never_a_fifo(site: Site, ca: CA, tmp_path: Path):
    """verify only reads what it is given: a staple in a world-writable
    directory is judged (it writes nothing there), a FIFO is refused at once."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "x.der").write_bytes(ca.respond(site.leaf.cert))
    run = run_cli("verify", shared / "x.der", "--cert", site.cert, timeout=30)
    assert run.code == 0 and "valid, certificate good" in run.out, run.err
    run = run_cli("verify", fifo(shared / "f.der"), "--cert", site.cert, timeout=30)
    assert run.code == 2
    one_line(run, "is a FIFO, not a regular file")
