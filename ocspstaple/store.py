"""The disk: read the current staple, lock it, replace it atomically.

The replace follows python-atomicwrites: a temp file in the target's own
directory, flush + fsync, the old file's mode and owner, ``os.replace``, then
fsync of the directory.  On any failure the temp file is removed and the old
file is untouched.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

from ocspstaple.errors import StoreError

log = logging.getLogger(__name__)

# A staple is a few KiB; anything much larger on disk is not one of ours.
MAX_STAPLE_BYTES = 1 << 20
NEW_FILE_MODE = 0o644
TEMP_SUFFIX = ".ocspstaple-tmp"


class Store(Protocol):
    """Where staples live; passed in so that the refresh logic owns no I/O."""

    def read(self, path: Path) -> bytes | None: ...

    def lock(self, path: Path, *, timeout: float) -> contextlib.AbstractContextManager[None]: ...

    def write(self, path: Path, data: bytes) -> None: ...


class FileStore:
    """Staples as files on the local disk.

    Safe to share between threads.  One FileStore serves one run: it lists
    each directory's leftover temp files once, at the first lock taken in
    it, rather than scanning the directory again for every staple (10,000
    staples in one directory made that scan quadratic).
    """

    def __init__(self) -> None:
        self._temps = _TempListing()

    def read(self, path: Path) -> bytes | None:
        """The current staple's bytes, or None when there is none."""
        return read_staple(path)

    def lock(self, path: Path, *, timeout: float) -> contextlib.AbstractContextManager[None]:
        return lock_output(path, timeout=timeout, leftovers=self._temps.leftovers)

    def leftovers(self, path: Path) -> list[Path]:
        """Temp files a killed run left beside ``path`` (as listed once per
        directory per run); taking the lock removes them."""
        return self._temps.leftovers(path)

    def write(self, path: Path, data: bytes) -> None:
        atomic_write(path, data)


def read_staple(path: Path) -> bytes | None:
    """Bytes of the file at ``path``; None when it does not exist."""
    try:
        return read_file(path, MAX_STAPLE_BYTES)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StoreError(f"output {path} is a directory") from None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None


def read_file(path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes of a file; OSError as open() raises.

    With os.open and os.read rather than a buffered file object: a run where
    nothing is due reads three small files per staple, thousands of staples.
    """
    return read_fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC), limit)


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``, which is closed."""
    try:
        # A first small read: os.read allocates what it is asked for, and a
        # certificate, a staple or a record is a few KiB.
        want = min(1 << 13, limit)
        data = os.read(fd, want)
        if len(data) < want:  # end of file (a regular file reads short only there)
            return data
        chunks = [data]
        got = len(data)
        while got < limit:
            want = min(1 << 16, limit - got)
            chunk = os.read(fd, want)
            chunks.append(chunk)
            got += len(chunk)
            if len(chunk) < want:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


def lock_path(path: Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it.

    Hidden on purpose: HAProxy's ``crt DIR`` loads every file of the directory
    as a certificate except dotfiles and a few suffixes, and refuses to start
    on ``site.pem.ocsp.lock`` (seen with HAProxy 2.6).
    """
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def lock_output(
    path: Path, *, timeout: float, leftovers: Callable[[Path], list[Path]] | None = None
) -> Iterator[None]:
    """Hold the output's lock file so that concurrent runs take turns on one staple.

    ``leftovers`` finds the temp files to remove (default: stale_temp_files,
    a scan of the directory).

    An exclusive flock(2) on ``.NAME.lock``, as filelock takes it on Unix (so
    the two interoperate), without filelock's per-lock machinery: half a
    millisecond a lock, twice per staple, was a tenth of a due run's CPU.  A
    lock is per open file, so threads of one run exclude each other too; it
    is not reentrant (nothing here takes a lock it holds).  The file stays.
    """
    lock_file = lock_path(path)
    try:
        # O_NOFOLLOW: a symlink planted at the lock's name is refused, not followed.
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise StoreError(f"cannot create {lock_file}: {e.strerror or e}") from None
    try:
        _flock(fd, lock_file, timeout)
        # Whoever holds the lock is the only writer, so a temp file found now
        # was left by a run that died (kill -9, power loss) mid-write.
        for stale in (leftovers or stale_temp_files)(path):
            with contextlib.suppress(OSError):
                stale.unlink()
                log.info("%s: removed %s left by an interrupted run", path, stale.name)
        yield
    finally:
        os.close(fd)  # releases the lock


def _flock(fd: int, lock_file: Path, timeout: float) -> None:
    """Lock ``fd`` exclusively, polling until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(f"another run held {lock_file} for {timeout:g} s; gave up") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.1)
        except OSError as e:
            raise StoreError(f"cannot lock {lock_file}: {e.strerror or e}") from None


def resolve_target(path: Path) -> Path:
    """The file to replace: a symlink's final target (certbot's live/ style
    links stay links), else ``path`` itself."""
    if os.path.islink(path):
        return Path(os.path.realpath(path))
    return path


def target_file(path: Path) -> str:
    """resolve_target as a string: cheaper where every staple of a run asks."""
    p = os.fspath(path)
    return os.path.realpath(p) if os.path.islink(p) else p


def atomic_write(path: Path, data: bytes, *, temp_prefix: str | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    The temp file is ``.NAME.XXXXXXXX.ocspstaple-tmp`` beside the target, or
    starts with ``temp_prefix`` (a file written for a staple names its temp
    after the staple, so that the staple's cleanup of dead runs' temp files
    finds it too).  ``durable=False`` skips the fsyncs: still atomic, but a
    power cut may bring back the previous version (fine for a state record,
    never for a staple)."""
    target = resolve_target(path)
    directory = target.parent
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise StoreError(f"cannot stat {target}: {e.strerror or e}") from None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise StoreError(f"output {target} is a directory")
    try:
        # mkstemp uses O_EXCL with a random name: a symlink planted in the
        # directory is never followed.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix or f".{target.name}.",
                                   suffix=TEMP_SUFFIX)
    except OSError as e:
        raise StoreError(f"cannot create a temp file in {directory}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            # mkstemp makes 0600 files: a TLS server running as another user
            # could not read the staple.
            os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) if old else NEW_FILE_MODE)
            if old is not None:
                _keep_owner(f.fileno(), old)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise StoreError(f"cannot write {target}: {e.strerror or e}") from None
        raise
    if durable:
        _fsync_dir(directory)


def _keep_owner(fd: int, old: os.stat_result) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        # Not root: the new file keeps our owner, and the old mode.
        log.debug("cannot keep owner %d:%d; not privileged", old.st_uid, old.st_gid)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        log.warning("%s: cannot open the directory to fsync it: %s", directory, e.strerror)
        return
    try:
        os.fsync(dfd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            log.warning("%s: fsync of the directory failed: %s", directory, e.strerror)
    finally:
        os.close(dfd)


def stale_temp_files(path: Path) -> list[Path]:
    """Temp files a killed run may have left beside ``path``'s target."""
    target = resolve_target(path)
    return sorted(target.parent.glob("." + glob_escape(target.name) + ".*" + TEMP_SUFFIX))


class _TempListing:
    """Leftover temp files per directory, listed once: at the first lock in it.

    A temp file that a run elsewhere leaves later (killed after this listing)
    is removed by the next run; one of this run's own live temp files, listed
    while another thread was writing, is gone (renamed) by the time its
    output's lock is ours, and unlinking it fails quietly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, list[str]] = {}

    def leftovers(self, path: Path) -> list[Path]:
        directory, name = os.path.split(target_file(path))
        with self._lock:
            names = self._names.get(directory)
            if names is None:
                try:
                    names = [n for n in os.listdir(directory) if n.endswith(TEMP_SUFFIX)]
                except OSError:
                    names = []
                self._names[directory] = names
        if not names:
            return []
        # The same names as stale_temp_files' pattern.
        prefix = "." + name + "."
        return sorted(Path(directory, n) for n in names
                      if n.startswith(prefix) and len(n) >= len(prefix) + len(TEMP_SUFFIX))


def glob_escape(name: str) -> str:
    return "".join("[" + c + "]" if c in "*?[" else c for c in name)
