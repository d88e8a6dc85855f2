"""Atomic replacement and locking on real files; each test checks the whole directory."""
from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
from conftest import clean_env

from ocspstaple.errors import StoreError
from ocspstaple.store import TEMP_SUFFIX, atomic_write, lock_output, lock_path, read_staple


def listing(d) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_new_file_is_0644_and_alone(tmp_path):
    out = tmp_path / "site.der"
    atomic_write(out, b"staple")
    assert out.read_bytes() == b"staple"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert listing(tmp_path) == {"site.der"}


def test_replace_keeps_mode_and_owner(tmp_path):
    out = tmp_path / "site.der"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    os.chown(out, os.getuid(), os.getgid())
    atomic_write(out, b"new")
    assert out.read_bytes() == b"new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert listing(tmp_path) == {"site.der"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_replace_keeps_a_foreign_owner(tmp_path):
    out = tmp_path / "site.der"
    out.write_bytes(b"old")
    os.chown(out, 33, 33)  # www-data on Debian
    atomic_write(out, b"new")
    st = out.stat()
    assert (st.st_uid, st.st_gid) == (33, 33)


def test_replace_is_a_new_inode(tmp_path):
    # A reader holding the old file keeps reading the old bytes: never a mix.
    out = tmp_path / "site.der"
    out.write_bytes(b"old" * 100)
    with open(out, "rb") as reader:
        atomic_write(out, b"new" * 100)
        assert reader.read() == b"old" * 100
    assert out.read_bytes() == b"new" * 100


def test_symlinked_output_is_replaced_where_it_points(tmp_path):
    real = tmp_path / "archive" / "site1.der"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "site.der"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert listing(real.parent) == {"site1.der"}


def test_missing_directory_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="cannot write .*No such file or directory"):
        atomic_write(tmp_path / "nope" / "site.der", b"x")
    assert listing(tmp_path) == set()


def test_output_that_is_a_directory(tmp_path):
    (tmp_path / "site.der").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        atomic_write(tmp_path / "site.der", b"x")
    with pytest.raises(StoreError, match="is a directory"):
        read_staple(tmp_path / "site.der")
    assert listing(tmp_path) == {"site.der"}


def test_failure_mid_write_leaves_old_file_and_no_temp(tmp_path):
    out = tmp_path / "site.der"
    out.write_bytes(b"old")

    # not bytes-like: the write itself raises TypeError
    with pytest.raises(TypeError):
        atomic_write(out, object())  # type: ignore[arg-type]
    assert out.read_bytes() == b"old"
    assert listing(tmp_path) == {"site.der"}


class Syncs:
    """A spy on the disk edge: every fsync/fdatasync, with what its descriptor
    was (device, inode, directory or not) and what ``watch`` held then."""

    def __init__(self, monkeypatch, watch) -> None:
        self.calls: list[tuple[int, int, bool, bytes | None]] = []
        for name in ("fsync", "fdatasync"):
            monkeypatch.setattr(os, name, self._spy(getattr(os, name), watch))

    def _spy(self, real, watch):
        def sync(fd: int) -> None:
            st = os.fstat(fd)
            held = watch.read_bytes() if watch.is_file() else None
            self.calls.append((st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode), held))
            real(fd)
        return sync

    def of(self, path) -> list[bytes | None]:
        """What the target held at each sync of the file or directory now at ``path``."""
        st = os.stat(path)
        return [held for dev, ino, is_dir, held in self.calls
                if (dev, ino, is_dir) == (st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))]


@pytest.mark.parametrize("linked", [False, True], ids=["plain", "through-a-symlink"])
def test_the_directory_is_synced_after_the_replace(tmp_path, monkeypatch, linked):
    """A power cut after os.replace may bring back the old directory entry unless
    the directory itself is synced, after the rename: kill -9 cannot show this,
    a spy on the disk edge can.  Through a symlink the directory is the one of
    the file the link points to."""
    real = tmp_path / "archive" / "site1.der"
    real.parent.mkdir()
    real.write_bytes(b"old")
    out = tmp_path / "site.der"
    if linked:
        out.symlink_to(real)
    else:
        out = real
    syncs = Syncs(monkeypatch, real)
    atomic_write(out, b"new")
    assert b"new" in syncs.of(real.parent), syncs.calls
    if linked:
        assert syncs.of(tmp_path) == []
    # The new file's own bytes were synced before the rename made them visible.
    assert syncs.of(real) == [b"old"], syncs.calls


def test_twin_a_non_durable_write_syncs_nothing(tmp_path, monkeypatch):
    """Twin: the spy sees no directory sync where none is made (durable=False,
    for state records), so the test above can fail."""
    out = tmp_path / "site.der"
    out.write_bytes(b"old")
    syncs = Syncs(monkeypatch, out)
    atomic_write(out, b"new", durable=False)
    assert out.read_bytes() == b"new"
    assert syncs.calls == []


def test_read_missing_is_none(tmp_path):
    assert read_staple(tmp_path / "none.der") is None


def test_lock_makes_a_second_holder_wait(tmp_path):
    """Another process holds the lock; this one waits for it and gets it only
    once the other has let go.  No sleep decides the outcome: the holder says
    on a pipe when it holds the lock, a flock probe confirms it, and the holder
    says when it lets go (time.monotonic is one clock for both processes)."""
    out = tmp_path / "site.der"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert holder.stdout.readline() == "held\n"
        with open(lock_path(out), "rb") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        with lock_output(out, timeout=30):
            got = time.monotonic()
        released = float(holder.stdout.readline())
        assert got > released
    finally:
        holder.kill()
        holder.wait()


# Takes the lock, says so, and once told to go holds it 0.3 s more (while the
# test waits for it) and prints the time it lets go.
HOLDER = """
import sys, time
from pathlib import Path
from ocspstaple.store import lock_output
with lock_output(Path(sys.argv[1]), timeout=10):
    print("held", flush=True)
    sys.stdin.readline()
    time.sleep(0.3)
    print(time.monotonic(), flush=True)
"""


def test_lock_timeout_is_a_store_error(tmp_path):
    out = tmp_path / "site.der"
    errors = []

    def second():
        try:
            with lock_output(out, timeout=0.2):
                pass
        except StoreError as e:
            errors.append(str(e))

    with lock_output(out, timeout=10):
        t = threading.Thread(target=second)
        t.start()
        t.join()
    assert errors and ".site.der.lock" in errors[0]


def test_lock_removes_temp_files_of_a_dead_run(tmp_path):
    out = tmp_path / "site.der"
    out.write_bytes(b"good")
    dead = tmp_path / (".site.der.abc123" + TEMP_SUFFIX)
    dead.write_bytes(b"half")
    unrelated = tmp_path / ".other.der.abc123.ocspstaple-tmp"
    unrelated.write_bytes(b"not ours")
    with lock_output(out, timeout=5):
        pass
    assert listing(tmp_path) == {"site.der", ".site.der.lock", unrelated.name}


# -- the directory fsync, shared by writers that rename meanwhile ---------------------

def _writes_with_slow_dir_fsync(tmp_path, monkeypatch, n: int) -> tuple[list[tuple[float, float]],
                                                                        list[tuple[float, float]]]:
    """``n`` threads write a file each into one directory at once, with an
    fsync that takes 30 ms; each write's (rename time, return time) and each
    directory fsync's (start, end)."""
    real_fsync, real_replace = os.fsync, os.replace
    syncs: list[tuple[float, float]] = []
    renamed: dict[str, float] = {}

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            t0 = time.monotonic()
            time.sleep(0.03)
            real_fsync(fd)
            syncs.append((t0, time.monotonic()))
        else:
            real_fsync(fd)

    def replace(src, dst, **kw) -> None:
        real_replace(src, dst, **kw)
        renamed[os.fspath(dst)] = time.monotonic()

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    done: list[tuple[str, float]] = []
    start = threading.Barrier(n)

    def write(i: int) -> None:
        start.wait()
        atomic_write(tmp_path / f"s{i}.ocsp", b"x" * 100)
        done.append((f"s{i}.ocsp", time.monotonic()))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [(renamed[name], end) for name, end in done], syncs


def test_every_rename_is_made_durable_before_its_write_returns(tmp_path, monkeypatch):
    writes, syncs = _writes_with_slow_dir_fsync(tmp_path, monkeypatch, 8)
    assert len(writes) == 8
    for renamed_at, returned_at in writes:
        # an fsync of the directory that began after this rename and ended before the write returned
        assert any(renamed_at <= s0 and s1 <= returned_at for s0, s1 in syncs), (renamed_at, returned_at, syncs)


def test_writers_that_rename_meanwhile_share_one_directory_fsync(tmp_path, monkeypatch):
    """Twin: the guarantee above does not need one fsync per write; 8 writers
    renaming while an fsync runs share the next one."""
    writes, syncs = _writes_with_slow_dir_fsync(tmp_path, monkeypatch, 8)
    assert len(writes) == 8
    assert len(syncs) < 8, syncs
