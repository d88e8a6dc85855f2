"""Full disk, I/O errors and symlinks (issue 6, items 2 and 3), with the real CLI.

Each fault keeps the old staple byte for byte, prints one line naming the
certificate and the reason, leaves no temp file, and exits as the spec says
(1 when a valid staple is kept, 2 when there is none).  Each has a twin: the
same run once the fault is gone writes the new staple.

Mounts (a tiny tmpfs, a read-only remount) need root; where mounting is not
possible the test is skipped and says why, and fails under CI=true (CI runs as
root: a skip there would hide an untested rule).  Every mount is undone in a finally.

Symlink policy (spec: "Writing"): an output that is a symlink (certbot's
live/ directory) is replaced where it finally points; the link itself stays.
A dangling link whose target's directory exists gets the target created
(the link then works); one whose target's directory is missing, or a link
loop, is one clear error and the link is left alone.  Temp files are made
only with mkstemp (O_EXCL, random name): a symlink planted at a temp name is
never followed, and one planted at a stale-temp name is removed, not followed.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from conftest import Run, Site, cannot_run_here, clean_env
from responder import Responder

from ocspstaple import store
from ocspstaple.store import TEMP_SUFFIX, atomic_write, lock_output

MINUTE = dt.timedelta(minutes=1)


# -- helpers -------------------------------------------------------------------

def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def refresh(*args: str | Path, prefix: tuple[str, ...] = ()) -> Run:
    """``ocspstaple refresh ARGS`` as a real process (``prefix``: e.g. setpriv)."""
    p = subprocess.run([*prefix, sys.executable, "-m", "ocspstaple", "refresh", *map(str, args)],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    return Run(p.returncode, p.stdout, p.stderr)


def one_line(run: Run, cert: Path, *needles: str) -> str:
    """One line names the certificate and carries ``needles``; no traceback.
    (Other lines may only be about other files, e.g. a state record that
    could not be saved on the same broken disk.)"""
    assert "Traceback" not in run.err and run.out == "", run.err
    about = [line for line in run.lines if str(cert) in line]
    assert len(about) == 1, run.err
    for needle in needles:
        assert needle in about[0], (needle, about[0])
    return about[0]


def silent(run: Run) -> None:
    assert run.code == 0 and run.err == "" and run.out == "", run.err


def temps(*dirs: Path) -> list[str]:
    return [p.name for d in dirs for p in d.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def newer(responder: Responder, minutes: int) -> bytes:
    """Serve (and return) a good response with thisUpdate ``minutes`` ago."""
    body = responder.good(this_update=now() - minutes * MINUTE)
    responder.serve(body)
    return body


def first_staple(site: Site, responder: Responder, output: Path) -> bytes:
    body = newer(responder, 30)
    silent(refresh("--cert", site.cert, "--output", output))
    assert output.read_bytes() == body
    return body


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mountpoint``, unmounted whatever happens."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        cannot_run_here("mounting a tmpfs needs root and mount(8); this test cannot run here")
    mountpoint.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        cannot_run_here(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {p.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mountpoint)], capture_output=True, timeout=30)
        u = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, timeout=30)
        if u.returncode != 0:  # something still open there: detach it rather than leave it mounted
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)
        assert not os.path.ismount(mountpoint)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last block."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 1024)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return filler


# -- 2. full disk, read-only, permission denied, a directory -------------------------

def test_full_disk_keeps_the_old_staple(site: Site, responder: Responder, tmp_path: Path):
    with tmpfs(tmp_path / "tiny", "64k") as tiny:
        out = tiny / "site.ocsp"
        old = first_staple(site, responder, out)
        filler = fill(tiny)
        body = newer(responder, 10)
        run = refresh("--cert", site.cert, "--output", out, "--force")
        assert run.code == 1, run.err
        one_line(run, site.cert, "No space left on device", "kept staple valid until")
        assert out.read_bytes() == old
        assert temps(tiny) == []
        # Twin: room again, the same run writes.
        filler.unlink()
        silent(refresh("--cert", site.cert, "--output", out, "--force"))
        assert out.read_bytes() == body
        assert temps(tiny) == []


def test_full_disk_without_a_staple_exits_2(site: Site, responder: Responder, tmp_path: Path):
    with tmpfs(tmp_path / "tiny", "64k") as tiny:
        out = tiny / "site.ocsp"
        filler = fill(tiny)
        body = newer(responder, 10)
        run = refresh("--cert", site.cert, "--output", out)
        assert run.code == 2, run.err
        one_line(run, site.cert, "No space left on device", "no valid staple")
        assert not out.exists() and temps(tiny) == []
        filler.unlink()
        silent(refresh("--cert", site.cert, "--output", out))
        assert out.read_bytes() == body


def test_read_only_filesystem_keeps_the_old_staple(site: Site, responder: Responder, tmp_path: Path):
    with tmpfs(tmp_path / "ro", "1m") as ro:
        out = ro / "site.ocsp"
        old = first_staple(site, responder, out)
        body = newer(responder, 10)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, timeout=30)
        run = refresh("--cert", site.cert, "--output", out, "--force")
        assert run.code == 1, run.err
        one_line(run, site.cert, "Read-only file system", "kept staple valid until")
        assert out.read_bytes() == old
        subprocess.run(["mount", "-o", "remount,rw", str(ro)], check=True, timeout=30)
        silent(refresh("--cert", site.cert, "--output", out, "--force"))
        assert out.read_bytes() == body and temps(ro) == []


def _unprivileged() -> tuple[str, ...]:
    """A prefix that makes a root process obey permission bits (drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH); nothing when not root."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        cannot_run_here("as root, permission bits are ignored and setpriv(1) is missing to drop the capability")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def test_permission_denied_keeps_the_old_staple(site: Site, responder: Responder, tmp_path: Path):
    prefix = _unprivileged()
    out_dir = tmp_path / "staples"
    out_dir.mkdir()
    out = out_dir / "site.ocsp"
    old = first_staple(site, responder, out)
    body = newer(responder, 10)
    out_dir.chmod(0o555)
    try:
        run = refresh("--cert", site.cert, "--output", out, "--force", prefix=prefix)
        assert run.code == 1, run.err
        one_line(run, site.cert, "Permission denied", "kept staple valid until")
        assert out.read_bytes() == old
        assert temps(out_dir) == []
    finally:
        out_dir.chmod(0o755)
    # Twin: the same unprivileged run, with write permission.
    silent(refresh("--cert", site.cert, "--output", out, "--force", prefix=prefix))
    assert out.read_bytes() == body


def test_output_that_is_a_directory_is_left_alone(site: Site, responder: Responder, tmp_path: Path):
    out = tmp_path / "site.ocsp"
    out.mkdir()
    (out / "inside").write_bytes(b"keep me")
    body = newer(responder, 10)
    run = refresh("--cert", site.cert, "--output", out)
    assert run.code == 2, run.err
    one_line(run, site.cert, "is a directory")
    assert out.is_dir() and os.listdir(out) == ["inside"] and (out / "inside").read_bytes() == b"keep me"
    assert temps(tmp_path) == []
    # Twin: a file there instead.
    shutil.rmtree(out)
    silent(refresh("--cert", site.cert, "--output", out))
    assert out.read_bytes() == body


# -- 3. symlinks ------------------------------------------------------------------------

def certbot_layout(root: Path, site: Site, staple: bytes | None) -> tuple[Path, Path, Path]:
    """live/example/{fullchain.pem, fullchain.pem.ocsp} as relative symlinks into
    archive/example/, as certbot makes them; returns (cert link, staple link, staple target)."""
    archive = root / "archive" / "example"
    live = root / "live" / "example"
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    shutil.copy(site.cert, archive / "fullchain1.pem")
    (live / "fullchain.pem").symlink_to("../../archive/example/fullchain1.pem")
    target = archive / "fullchain1.pem.ocsp"
    if staple is not None:
        target.write_bytes(staple)
    (live / "fullchain.pem.ocsp").symlink_to("../../archive/example/fullchain1.pem.ocsp")
    return live / "fullchain.pem", live / "fullchain.pem.ocsp", target


def test_symlinked_output_is_replaced_where_it_points(site: Site, responder: Responder, tmp_path: Path):
    old = newer(responder, 30)
    cert, link, target = certbot_layout(tmp_path / "le", site, old)
    target.chmod(0o640)
    body = newer(responder, 10)
    silent(refresh("--cert", cert, "--force"))
    assert link.is_symlink() and os.readlink(link) == "../../archive/example/fullchain1.pem.ocsp"
    assert target.read_bytes() == body and link.read_bytes() == body
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert temps(link.parent, target.parent) == []
    # A fault on the same layout keeps the target's bytes and the link.
    responder.fault("tryLater")
    run = refresh("--cert", cert, "--force")
    assert run.code == 1, run.err
    one_line(run, cert, "tryLater", "kept staple valid until")
    assert link.is_symlink() and target.read_bytes() == body


def test_dangling_symlink_output_gets_its_target_created(site: Site, responder: Responder, tmp_path: Path):
    cert, link, target = certbot_layout(tmp_path / "le", site, None)
    assert not link.exists() and link.is_symlink()
    body = newer(responder, 10)
    silent(refresh("--cert", cert))
    assert link.is_symlink() and target.read_bytes() == body
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert temps(link.parent, target.parent) == []


def test_dangling_symlink_into_a_missing_directory(site: Site, responder: Responder, tmp_path: Path):
    link = tmp_path / "site.ocsp"
    link.symlink_to(tmp_path / "gone" / "site.ocsp")
    newer(responder, 10)
    run = refresh("--cert", site.cert, "--output", link)
    assert run.code == 2, run.err
    one_line(run, site.cert, str(tmp_path / "gone"))
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "gone" / "site.ocsp")
    assert not (tmp_path / "gone").exists()
    # Twin: the directory is back, the target is written.
    (tmp_path / "gone").mkdir()
    silent(refresh("--cert", site.cert, "--output", link))
    assert (tmp_path / "gone" / "site.ocsp").exists() and link.is_symlink()


def test_symlink_loop_is_one_clear_error(site: Site, responder: Responder, tmp_path: Path):
    link = tmp_path / "site.ocsp"
    link.symlink_to(tmp_path / "other.ocsp")
    (tmp_path / "other.ocsp").symlink_to(link)
    newer(responder, 10)
    run = refresh("--cert", site.cert, "--output", link)
    assert run.code == 2, run.err
    one_line(run, site.cert, "symbolic links")
    assert os.readlink(link) == str(tmp_path / "other.ocsp")
    assert os.readlink(tmp_path / "other.ocsp") == str(link)


class Names:
    """Stands in for the store's random temp names: the planted one first.
    ``drawn`` lists the names the store asked for, so a test sees which it
    really tried."""

    def __init__(self, *names: str) -> None:
        self.names = iter(names)
        self.drawn: list[str] = []

    def __call__(self) -> str:
        name = next(self.names)
        self.drawn.append(name)
        return name


def replacements(monkeypatch) -> list[str]:
    """The full path of every file os.replace moves, from now on (a name
    relative to a directory descriptor is resolved through /proc)."""
    seen: list[str] = []
    real_replace = os.replace

    def spy(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        base = os.readlink(f"/proc/self/fd/{src_dir_fd}") if src_dir_fd is not None else os.getcwd()
        seen.append(os.path.join(base, os.fsdecode(src)))
        return real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", spy)
    return seen


def test_symlink_planted_at_the_temp_name_is_not_followed(tmp_path: Path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dangling_victim = tmp_path / "nothing-here"
    out = tmp_path / "site.ocsp"
    out.write_bytes(b"old")
    planted = tmp_path / (".site.ocsp.planted" + TEMP_SUFFIX)
    planted.symlink_to(victim)
    planted2 = tmp_path / (".site.ocsp.planted2" + TEMP_SUFFIX)
    planted2.symlink_to(dangling_victim)
    # The temp file's random names come from here: the attacker guessed the first two right.
    names = Names("planted", "planted2", "fresh")
    monkeypatch.setattr(store, "_random_name", names)
    replaced = replacements(monkeypatch)
    atomic_write(out, b"new")
    assert out.read_bytes() == b"new" and not out.is_symlink()
    assert victim.read_bytes() == b"precious" and not dangling_victim.exists()
    assert planted.is_symlink() and planted2.is_symlink()  # skipped, not followed, not replaced
    # Both planted names were tried, where they were planted, and refused:
    # the temp file is the third name, beside the staple.
    assert names.drawn == ["planted", "planted2", "fresh"]
    assert replaced == [str(tmp_path / (".site.ocsp.fresh" + TEMP_SUFFIX))]
    # The next holder of the lock removes links at stale-temp names without following them.
    with lock_output(out, timeout=5):
        pass
    assert not planted.is_symlink() and not planted2.is_symlink()
    assert victim.read_bytes() == b"precious" and not dangling_victim.exists()


def test_planted_temp_name_twin_is_used_when_free(tmp_path: Path, monkeypatch):
    """Twin: with the planted names free, the first one is taken, in the
    staple's own directory (so the test above really offered the planted
    name first, where it was planted)."""
    out = tmp_path / "site.ocsp"
    names = Names("planted", "fresh")
    monkeypatch.setattr(store, "_random_name", names)
    replaced = replacements(monkeypatch)
    atomic_write(out, b"new")
    assert names.drawn == ["planted"]
    assert replaced == [str(tmp_path / (".site.ocsp.planted" + TEMP_SUFFIX))]
