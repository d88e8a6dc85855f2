"""The file layer: every open, read, lock and replace of a file ocspstaple
touches, with the rules of trust on the local disk in one place.

ocspstaple usually runs as root, in directories that less-trusted local users
may be able to read or write (spec, "Trust on the local disk").  So, here and
nowhere else:

* What we write (staples, their locks and temp files, state records, the
  metrics file) is reached one path component at a time, each directory
  opened with ``O_NOFOLLOW`` relative to the last one's descriptor.  A symlink
  is followed only when root or the running user owns it, so that nobody
  else can have planted it (the idea of the kernel's fs.protected_symlinks).
* The directory that holds such a file must be writable by nobody but root
  or the running user (logrotate refuses "insecure permissions" alike);
  otherwise TrustError names the directory and the fix.
* Every file is opened ``O_NONBLOCK`` and must be a regular file: a FIFO, a
  device or a socket is refused without waiting, and without opening it.
* Locks are 0600: flock needs only read access, so a lock others can open is
  a lock others can hold.
* No existing file is written through: a new temp file (``O_EXCL``,
  ``O_NOFOLLOW``) in the target's directory, written, fsynced, given the old
  file's mode and owner, renamed over the target (a rename replaces a name,
  never writes through a link or a hard link), then the directory fsynced
  (python-atomicwrites' recipe).  On any failure the temp file is removed.
"""
from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator, Protocol

from ocspstaple.errors import StoreError, TrustError

log = logging.getLogger(__name__)

# A staple is a few KiB; anything much larger on disk is not one of ours.
MAX_STAPLE_BYTES = 1 << 20
NEW_FILE_MODE = 0o644
LOCK_MODE = 0o600
TEMP_SUFFIX = ".ocspstaple-tmp"
#: Symlinks followed in one path at most (the kernel's limit is 40).
MAX_LINKS = 40
#: Directory descriptors one FileStore keeps open: far more directories than
#: that are opened per use (a descriptor limit is often 1024).
MAX_CACHED_DIRS = 256

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Store(Protocol):
    """Where staples live; passed in so that the refresh logic owns no I/O."""

    def read(self, path: Path) -> bytes | None: ...

    def lock(self, path: Path, *, timeout: float) -> contextlib.AbstractContextManager[None]: ...

    def write(self, path: Path, data: bytes) -> None: ...


# -- who may be trusted -----------------------------------------------------------

def _trusted(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"gid {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"gid {gid}"


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return what
    return "not a regular file"


class NotRegularError(OSError):
    """A path that is a FIFO, a device, a socket (anything but a regular file
    or a directory): refused without opening it."""

    def __init__(self, mode: int) -> None:
        super().__init__(errno.EINVAL, f"is {_kind(mode)}, not a regular file")


def why(e: OSError) -> str:
    """An OSError in words, naming the directory on the way when that is
    what failed (``No such file or directory: /srv/gone``)."""
    text = e.strerror or str(e)
    # A bare name (of an open relative to a directory descriptor) says nothing
    # the message does not: only a path on the way (walk's) is added.
    return f"{text}: {e.filename}" if isinstance(e.filename, str) and "/" in e.filename else text


def _regular(st: os.stat_result) -> None:
    """OSError unless ``st`` is a regular file (IsADirectoryError for a directory)."""
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    raise NotRegularError(st.st_mode)


def insecure(st: os.stat_result) -> str:
    """Why a directory is not ours alone to write ("" when it is): owned by
    another user, writable by every user, or by a group other than root's."""
    if not _trusted(st.st_uid):
        return f"owned by {_user(st.st_uid)}"
    if st.st_mode & stat.S_IWOTH:
        return "writable by every user"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return f"writable by group {_group(st.st_gid)}"
    return ""


def _refuse_dir(path: str, why: str) -> TrustError:
    owner = "root:root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    return TrustError(f"directory {path} is {why}, so another user could plant or swap files there; refused "
                      f"for staples (fix: chown {owner} {path} && chmod go-w {path}, or keep the staples elsewhere)")


def _refuse_link(path: str, uid: int) -> TrustError:
    return TrustError(f"{path} is a symlink owned by {_user(uid)}; ocspstaple follows no symlink another user "
                      "could have planted (remove it, or have root own it)")


# -- reaching a directory safely ------------------------------------------------------

def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def walk(path: str) -> int:
    """A descriptor of the directory ``path`` names, reached one component at
    a time with O_NOFOLLOW, following only symlinks that root or the running
    user owns.  OSError as open() raises; TrustError for a foreign symlink."""
    here = "/" if path.startswith("/") else "."
    fd = os.open(here, _DIR_FLAGS)
    todo = _components(path)[::-1]
    links = 0
    try:
        while todo:
            name = todo.pop()
            try:
                new = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(e.errno, e.strerror, os.path.join(here, name)) from None
                target = _trusted_link(fd, name, os.path.join(here, name), e)
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                if target.startswith("/"):
                    os.close(fd)
                    fd = -1
                    fd = os.open("/", _DIR_FLAGS)
                    here = "/"
                todo.extend(_components(target)[::-1])
                continue
            os.close(fd)
            fd = new
            here = os.path.normpath(os.path.join(here, name))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def _trusted_link(dfd: int, name: str, shown: str, error: OSError) -> str:
    """The target of the symlink ``name`` in ``dfd``, if root or we own it;
    ``error`` again when ``name`` is not a symlink (a file in the path)."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        raise error
    return _link_target(dfd, name, shown, st)


def _link_target(dfd: int, name: str, shown: str, st: os.stat_result) -> str:
    """The target of the symlink ``name`` in ``dfd`` (``st``: its lstat) when
    root or we own it; TrustError naming ``shown`` for another's."""
    if not _trusted(st.st_uid):
        raise _refuse_link(shown, st.st_uid)
    return os.readlink(name, dir_fd=dfd)


class Dirs:
    """Directory descriptors, reached by walk() and checked once.

    One FileStore keeps them for a run (thousands of staples share a few
    directories); ``cache=False`` opens and checks each directory at every
    use (``serve``, which runs for months while directories may change).
    Safe to share between threads.
    """

    def __init__(self, *, cache: bool = True) -> None:
        self._cache = cache
        self._lock = threading.Lock()
        self._fds: dict[str, int | TrustError] = {}

    @contextlib.contextmanager
    def at(self, directory: str) -> Iterator[int]:
        """The checked descriptor of ``directory`` (TrustError when others may
        write it; OSError when it cannot be reached)."""
        directory = directory or "."
        if self._cache:
            with self._lock:
                got = self._fds.get(directory)
            if isinstance(got, TrustError):
                raise TrustError(str(got))
            if got is not None:
                yield got
                return
        fd = walk(directory)
        why = insecure(os.fstat(fd))
        keep = False
        try:
            if why:
                refused = _refuse_dir(directory, why)
                if self._cache:
                    with self._lock:
                        if len(self._fds) < MAX_CACHED_DIRS:
                            self._fds.setdefault(directory, refused)
                raise refused
            if self._cache:
                with self._lock:
                    if directory not in self._fds and len(self._fds) < MAX_CACHED_DIRS:
                        self._fds[directory] = fd
                        keep = True
            yield fd
        finally:
            if not keep:
                os.close(fd)

    def held(self, directory: str) -> int | None:
        """The checked descriptor of ``directory`` when this run has it
        already (TrustError when it was refused); None: reach it with at().
        Without a context manager: a no-op run asks this for three files of
        every staple."""
        if not self._cache:
            return None
        with self._lock:
            got = self._fds.get(directory or ".")
        if isinstance(got, TrustError):
            raise TrustError(str(got))
        return got

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            if isinstance(fd, int):
                os.close(fd)


_UNCACHED = Dirs(cache=False)


def _file_in(path: Path | str, p: str) -> tuple[str, str]:
    """(directory, name) of ``p``, the file ``path`` names (or a link's target)."""
    head, name = os.path.split(p)
    if not name or name in (".", ".."):
        raise StoreError(f"{path} names a directory, not a file")
    return head, name


@contextlib.contextmanager
def located(path: Path | str, *, follow: bool, dirs: Dirs | None = None) -> Iterator[tuple[int, str, str]]:
    """(directory descriptor, name, directory) of the file ``path`` names; the
    directory checked.  With ``follow``, a symlink at the file itself is
    followed when root or we own it (certbot's live/ links stay links, and
    the file they point to is the one replaced); a foreign one is TrustError.
    Without, the name is taken as it is (a rename replaces a link itself)."""
    dirs = dirs or _UNCACHED
    p = os.fspath(path)
    for _ in range(MAX_LINKS):
        head, name = _file_in(path, p)
        with dirs.at(head) as dfd:
            if follow:
                try:
                    st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode):
                    p = os.path.join(head, _link_target(dfd, name, p, st))  # an absolute target replaces head
                    continue
            yield dfd, name, head or "."
            return
    raise StoreError(f"{path}: too many levels of symbolic links")


def target_file(path: Path | str) -> str:
    """The file a write to ``path`` replaces, as a string: the target of a
    symlink at ``path`` that root or we own (followed as located() does),
    else ``path`` itself.  Directories on the way are not resolved here:
    every open walks them safely."""
    p = os.fspath(path)
    for _ in range(MAX_LINKS):
        try:
            st = os.lstat(p)
        except OSError:
            return p
        if not stat.S_ISLNK(st.st_mode) or not _trusted(st.st_uid):
            return p
        target = os.readlink(p)
        p = target if target.startswith("/") else os.path.join(os.path.dirname(p), target)
    return p


# -- scanning a directory ---------------------------------------------------------

def scan_files(directory: Path, suffix: str) -> list[tuple[Path, str]]:
    """The entries of ``directory`` named ``*suffix``, in name order, each
    with "" or why it is not taken: only a regular file (or a symlink to one)
    owned by root or the running user, link and target alike, is taken.  The
    directory itself must be ours alone (TrustError): its staples are
    written beside the files.  OSError when it cannot be listed."""
    with _UNCACHED.at(os.fspath(directory)) as dfd:
        found = []
        for name in sorted(n for n in os.listdir(dfd) if n.endswith(suffix)):
            try:
                link = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                st = os.stat(name, dir_fd=dfd) if stat.S_ISLNK(link.st_mode) else link
            except OSError as e:
                found.append((directory / name, why(e)))
                continue
            if stat.S_ISDIR(st.st_mode):
                continue  # a directory named *.pem is not a candidate at all
            if not _trusted(link.st_uid) or not _trusted(st.st_uid):
                owner = link.st_uid if not _trusted(link.st_uid) else st.st_uid
                found.append((directory / name, f"owned by {_user(owner)}: --scan takes only files owned by "
                                                "root or the user running ocspstaple"))
            elif not stat.S_ISREG(st.st_mode):
                found.append((directory / name, f"{_kind(st.st_mode)}, not a regular file"))
            else:
                found.append((directory / name, ""))
        return found


# -- reading ----------------------------------------------------------------------

def read_file(path: Path | str, limit: int) -> bytes:
    """Up to ``limit`` bytes of an input (a certificate, an issuer, a config):
    symlinks followed (an input is only read), but only a regular file is
    opened, and without blocking.  OSError as open() raises; NotRegularError
    for a FIFO, device or socket."""
    _regular(os.stat(path))
    fd = os.open(path, _READ_FLAGS)
    return read_fd(_checked_open(fd), limit)


def _checked_open(fd: int) -> int:
    """``fd`` if it is a regular file (it may have been swapped since the
    stat that let us open it); else closed, and OSError."""
    try:
        _regular(os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_owned(path: Path | str, limit: int, *, follow: bool = True,
               dirs: Dirs | None = None) -> tuple[bytes, os.stat_result]:
    """A file we write (a staple, a state record), reached as located()
    reaches it: its directory checked, no foreign symlink followed (none at
    all without ``follow``), only a regular file opened, without blocking.
    The bytes (up to ``limit``) and the file's stat.  OSError as open() raises."""
    fd, info, _ = open_owned(path, follow=follow, dirs=dirs)
    return read_fd(fd, limit), info


def open_owned(path: Path | str, *, follow: bool, dirs: Dirs | None = None) -> tuple[int, os.stat_result, str]:
    """A descriptor of the regular file ``path`` names, reached as located()
    reaches it, its fstat, and the path of the file opened (the target of a
    symlink followed, as target_file() names it).

    located()'s walk without its context managers, and with one stat before
    the open (that refuses a FIFO or a device unopened; a symlink's is the
    one that follows it) and one fstat after (that refuses a file swapped in
    between): a no-op run reads a staple and its state record this way for
    every staple.  OSError as open() raises; TrustError for a foreign link or
    directory."""
    dirs = dirs or _UNCACHED
    p = os.fspath(path)
    for _ in range(MAX_LINKS):
        head, name = _file_in(path, p)
        dfd = dirs.held(head)
        if dfd is not None:
            got = _open_in(dfd, name, p, follow=follow)
        else:
            with dirs.at(head) as dfd:
                got = _open_in(dfd, name, p, follow=follow)
        if isinstance(got, str):  # a symlink of ours: its target, as located() takes it
            p = os.path.join(head, got)
            continue
        try:
            info = os.fstat(got)
            _regular(info)
        except BaseException:
            os.close(got)
            raise
        return got, info, p
    raise StoreError(f"{path}: too many levels of symbolic links")


def _open_in(dfd: int, name: str, shown: str, *, follow: bool) -> int | str:
    """A descriptor of the regular file ``name`` in ``dfd``; with ``follow``,
    the target of a symlink there that root or we own instead (TrustError
    for another's)."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if follow and stat.S_ISLNK(st.st_mode):
        return _link_target(dfd, name, shown, st)
    _regular(st)
    return os.open(name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=dfd)


def read_staple(path: Path, *, dirs: Dirs | None = None) -> bytes | None:
    """Bytes of the staple at ``path``; None when it does not exist."""
    return _read_staple(path, dirs)[0]


def _read_staple(path: Path, dirs: Dirs | None) -> tuple[bytes | None, str | None]:
    """read_staple's bytes, and the file they are from (see open_owned)."""
    try:
        fd, _, target = open_owned(path, follow=True, dirs=dirs)
        return read_fd(fd, MAX_STAPLE_BYTES), target
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        raise StoreError(f"output {path} is a directory") from None
    except NotRegularError as e:
        # Never a staple of ours: refused outright, not replaced.
        raise TrustError(f"output {path} {e.strerror}; refused (remove it, or give another output)") from None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {why(e)}") from None


def read_given(path: Path) -> bytes | None:
    """A staple file named only to be judged (``verify``), read as an input
    is (read_file): from any directory, through any link, but only a regular
    file and without blocking; None when it does not exist."""
    try:
        return read_file(path, MAX_STAPLE_BYTES)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {why(e)}") from None


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``, which is closed.

    With os.read rather than a buffered file object: a run where nothing is
    due reads three small files per staple, thousands of staples.
    """
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


# -- locking ------------------------------------------------------------------------

class FileStore:
    """Staples as files on the local disk.

    Safe to share between threads.  One FileStore serves one run: it keeps
    each directory's checked descriptor (``cache``), and lists each
    directory's leftover temp files once, at the first lock taken in it,
    rather than scanning the directory again for every staple (10,000
    staples in one directory made that scan quadratic).
    """

    def __init__(self, *, cache: bool = True) -> None:
        self.dirs = Dirs(cache=cache)
        self._temps = _TempListing(self.dirs)
        #: output -> the file its last read in this run was from (target_file's
        #: answer, found by the read's own walk); None: not kept (cache=False)
        self._targets: dict[str, str] | None = {} if cache else None

    def read(self, path: Path) -> bytes | None:
        """The current staple's bytes, or None when there is none."""
        data, target = _read_staple(path, self.dirs)
        if self._targets is not None and target is not None:
            self._targets[os.fspath(path)] = target
        return data

    def target(self, path: Path) -> str:
        """The file a write to ``path`` replaces (target_file): as the last
        read of ``path`` in this run found it, without another lstat (a
        no-op run looks beside it for the state record and for temp files)."""
        if self._targets is not None:
            got = self._targets.get(os.fspath(path))
            if got is not None:
                return got
        return target_file(path)

    def lock(self, path: Path, *, timeout: float) -> contextlib.AbstractContextManager[None]:
        return lock_output(path, timeout=timeout, leftovers=self._temps.leftovers, dirs=self.dirs)

    def leftovers(self, path: Path) -> list[Path]:
        """Temp files a killed run left beside ``path`` (as listed once per
        directory per run); taking the lock removes them."""
        return self._temps.leftovers(path, self.target(path))

    def write(self, path: Path, data: bytes) -> None:
        atomic_write(path, data, dirs=self.dirs)

    def close(self) -> None:
        self.dirs.close()


def lock_path(path: Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it.

    Hidden on purpose: HAProxy's ``crt DIR`` loads every file of the directory
    as a certificate except dotfiles and a few suffixes, and refuses to start
    on ``site.pem.ocsp.lock`` (seen with HAProxy 2.6).
    """
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def lock_output(
    path: Path, *, timeout: float, leftovers: Callable[[Path], list[Path]] | None = None,
    dirs: Dirs | None = None,
) -> Iterator[None]:
    """Hold the output's lock file so that concurrent runs take turns on one staple.

    ``leftovers`` finds the temp files to remove (default: stale_temp_files,
    a scan of the directory).

    An exclusive flock(2) on ``.NAME.lock`` (mode 0600) taken by filelock
    (spec, "Writing").  The lock file is checked first, inside its checked
    directory (``_check_lock``: a lock others could open is replaced by a
    fresh 0600 one); then filelock opens it by path, which is safe because
    the directory is one nobody else can write.  filelock's Unix lock without
    its thread-local and singleton machinery and without the soft-lock
    fallback (a lock that is not a flock would not exclude filelock users):
    about 0.1 ms a lock, imported only by a run that takes one.  A lock is
    per open file, so threads of one run exclude each other too; it is not
    reentrant (nothing here takes a lock it holds).  The file stays.
    """
    lock_file = lock_path(path)
    try:
        with located(lock_file, follow=False, dirs=dirs) as (dfd, name, _):
            _check_lock(dfd, name, lock_file)
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot create {lock_file}: {why(e)}") from None
    import filelock  # here: a run where nothing is due takes no lock, and need not import it

    lock = filelock.UnixFileLock(str(lock_file), timeout=timeout, mode=LOCK_MODE, thread_local=False,
                                 is_singleton=False, fallback_to_soft=False, poll_interval=0.01)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StoreError(f"another run held {lock_file} for {timeout:g} s; gave up") from None
    except OSError as e:
        raise StoreError(f"cannot lock {lock_file}: {e.strerror or e}") from None
    try:
        # Whoever holds the lock is the only writer, so a temp file found now
        # was left by a run that died (kill -9, power loss) mid-write.
        stale = (leftovers or stale_temp_files)(path)
        if stale:
            _remove_temps(stale, path, dirs)
        yield
    finally:
        lock.release()


def _check_lock(dfd: int, name: str, shown: Path) -> None:
    """Make the lock ``name`` a regular file of ours, 0600, with one link,
    before filelock opens it by path (the directory is one nobody else can
    write, so the file checked is the file it opens).  A missing lock is
    created 0600 (O_EXCL, O_NOFOLLOW); anything else at its name (a 0644
    lock of an older version, which anyone who can read the directory can
    hold, a symlink, a FIFO) is first replaced by a fresh lock: whoever
    holds the old one holds nothing.  A lock that is fine costs one lstat."""
    for _ in range(3):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                             | os.O_CLOEXEC, LOCK_MODE, dir_fd=dfd)
            except FileExistsError:
                continue  # another run made it meanwhile: look at it
            os.close(fd)
            return
        if _lock_ok(st):
            return
        if stat.S_ISDIR(st.st_mode):
            raise StoreError(f"cannot create {shown}: it is a directory")
        _replace_lock(dfd, name, shown, st)
    raise StoreError(f"cannot create {shown}: it keeps changing")


def _lock_ok(st: os.stat_result) -> bool:
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077
            and st.st_nlink == 1)


def _replace_lock(dfd: int, name: str, shown: Path, old: os.stat_result) -> None:
    why = ("owned by " + _user(old.st_uid) if old.st_uid != os.geteuid() else
           "mode %04o" % stat.S_IMODE(old.st_mode) if stat.S_ISREG(old.st_mode) and old.st_nlink == 1 else
           "a hard link" if stat.S_ISREG(old.st_mode) else _kind(old.st_mode))
    fd, tmp = _temp_file(dfd, f".{name}.")
    os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    log.info("%s: replaced the lock file (it was %s) by a 0600 one that only this user can hold", shown, why)


# -- writing ------------------------------------------------------------------------

def _random_name() -> str:
    return os.urandom(6).hex()


def _temp_file(dfd: int, prefix: str) -> tuple[int, str]:
    """A new, empty, 0600 file in ``dfd`` (O_EXCL, O_NOFOLLOW: nothing planted
    at its random name is ever opened) and its name."""
    for _ in range(100):
        name = f"{prefix}{_random_name()}{TEMP_SUFFIX}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
        except FileExistsError:
            continue
        return fd, name
    raise FileExistsError(errno.EEXIST, "no unused temp file name")


def atomic_write(path: Path, data: bytes, *, temp_prefix: str | None = None, durable: bool = True,
                 follow: bool = True, dirs: Dirs | None = None) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    The temp file is ``.NAME.XXXXXXXXXXXX.ocspstaple-tmp`` beside the target,
    or starts with ``temp_prefix`` (a file written for a staple names its
    temp after the staple, so that the staple's cleanup of dead runs' temp
    files finds it too).  ``follow``: see located() (a state record is
    written with False).  ``durable=False`` skips the fsyncs: still atomic,
    but a power cut may bring back the previous version (fine for a state
    record, never for a staple)."""
    try:
        with located(path, follow=follow, dirs=dirs) as (dfd, name, directory):
            _replace(dfd, name, os.path.join(directory, name), data, temp_prefix=temp_prefix, durable=durable)
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot write {path}: {why(e)}") from None


def _replace(dfd: int, name: str, target: str, data: bytes, *, temp_prefix: str | None, durable: bool) -> None:
    directory = os.path.dirname(target) or "."
    try:
        old: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise StoreError(f"cannot stat {target}: {e.strerror or e}") from None
    if old is not None:
        if stat.S_ISDIR(old.st_mode):
            raise StoreError(f"output {target} is a directory")
        if stat.S_ISLNK(old.st_mode):
            old = None  # not followed (a state record): the rename replaces the link itself
        elif not stat.S_ISREG(old.st_mode):
            raise StoreError(f"{target} is {_kind(old.st_mode)}, not a regular file; refusing to replace it")
    try:
        fd, tmp = _temp_file(dfd, temp_prefix or f".{name}.")
    except OSError as e:
        raise StoreError(f"cannot create a temp file in {directory}: {e.strerror or e}") from None
    try:
        try:
            # os.write, not a file object: fdopen costs three more system
            # calls (fstat, ioctl, lseek), each a hand-off of the GIL.
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
            if durable:
                os.fsync(fd)
            # A temp file is 0600: a TLS server running as another user could
            # not read the staple.  The mode and owner are set on our own new
            # file, never on whatever was at the name.
            os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o7777 if old else NEW_FILE_MODE)
            if old is not None:
                _keep_owner(fd, old)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        if isinstance(e, OSError):
            raise StoreError(f"cannot write {target}: {e.strerror or e}") from None
        raise
    if durable:
        _fsync_dir(dfd, directory)


def _keep_owner(fd: int, old: os.stat_result) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        # Not root: the new file keeps our owner, and the old mode.
        log.debug("cannot keep owner %d:%d; not privileged", old.st_uid, old.st_gid)


class _DirSync:
    """One directory's renames and fsyncs (see _DirSyncs)."""

    __slots__ = ("lock", "renamed", "synced")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one fsync of the directory at a time
        self.renamed = 0  # renames into it so far
        self.synced = 0  # of which an fsync that began after them has completed


class _DirSyncs:
    """Group commit for the fsync that makes a rename durable.

    Thread-safe.  Every writer still returns only once an fsync of its
    directory that began after its rename has completed (spec, "Writing"),
    but writers that rename into one directory while its fsync runs share
    the next one instead of queueing one each: with 8 staples written at
    once, a journalled disk does a fraction of the directory fsyncs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # By the directory's path as written to: one directory reached by
        # two paths gets two groups, each still fsyncing after its renames.
        self._dirs: dict[str, _DirSync] = {}

    def sync(self, dfd: int, directory: str) -> None:
        with self._lock:
            d = self._dirs.get(directory)
            if d is None:
                d = self._dirs[directory] = _DirSync()
            d.renamed += 1
            mine = d.renamed
        with d.lock:
            if d.synced >= mine:
                return  # an fsync that began after this rename has completed
            with self._lock:
                covered = d.renamed  # every rename counted so far is done: this fsync makes them all durable
            try:
                os.fsync(dfd)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOTSUP):
                    log.warning("%s: fsync of the directory failed: %s", directory, e.strerror)
                return  # nothing counts as synced: the next writer does its own
            d.synced = covered


_DIR_SYNCS = _DirSyncs()


def _fsync_dir(dfd: int, directory: str) -> None:
    _DIR_SYNCS.sync(dfd, directory)


# -- temp files a killed run left ---------------------------------------------------

def _temp_names(names: list[str], name: str) -> list[str]:
    """Of ``names``, those a write to ``name`` may have left (see _temp_file)."""
    prefix = "." + name + "."
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(TEMP_SUFFIX)
                  and len(n) >= len(prefix) + len(TEMP_SUFFIX))


def stale_temp_files(path: Path) -> list[Path]:
    """Temp files a killed run may have left beside ``path``'s target."""
    directory, name = os.path.split(target_file(path))
    try:
        with located(os.path.join(directory, name), follow=False) as (dfd, _, _):
            names = os.listdir(dfd)
    except OSError:
        return []
    return [Path(directory, n) for n in _temp_names(names, name)]


def _remove_temps(stale: list[Path], path: Path, dirs: Dirs | None) -> None:
    """Remove leftover temp files (and links at their names, never followed),
    by name in their checked directory."""
    for temp in stale:
        try:
            with located(temp, follow=False, dirs=dirs) as (dfd, name, _):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) or not _trusted(st.st_uid):
                    continue
                os.unlink(name, dir_fd=dfd)
        except (OSError, StoreError):
            continue
        log.info("%s: removed %s left by an interrupted run", path, temp.name)


class _TempListing:
    """Leftover temp files per directory, listed once: at the first lock in it.

    A temp file that a run elsewhere leaves later (killed after this listing)
    is removed by the next run; one of this run's own live temp files, listed
    while another thread was writing, is gone (renamed) by the time its
    output's lock is ours, and unlinking it fails quietly.
    """

    def __init__(self, dirs: Dirs) -> None:
        self._dirs = dirs
        self._lock = threading.Lock()
        self._names: dict[str, list[str]] = {}

    def leftovers(self, path: Path, target: str | None = None) -> list[Path]:
        """``target``: target_file(path), when known."""
        directory, name = os.path.split(target or target_file(path))
        with self._lock:
            names = self._names.get(directory)
        if names is None:
            try:
                with self._dirs.at(directory) as dfd:
                    names = [n for n in os.listdir(dfd) if n.endswith(TEMP_SUFFIX)]
            except (OSError, StoreError):
                names = []
            with self._lock:
                self._names.setdefault(directory, names)
        if not names:
            return []
        return [Path(directory, n) for n in _temp_names(names, name)]
