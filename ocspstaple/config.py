"""Settings for each staple, from the command line or a TOML config file.

A config file has an optional ``[defaults]`` table and one ``[staple.NAME]``
table per certificate; command-line options override both.  Relative paths
are relative to the config file's directory.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from ocspstaple.errors import ConfigError, InputError
from ocspstaple.served import check_address, check_servername
from ocspstaple.store import read_file
from ocspstaple.text import shown
from ocspstaple.urls import check_url

DEFAULT_TIMEOUT = 10.0
DEFAULT_REFRESH_AT = 0.5
DEFAULT_VALIDITY = dt.timedelta(days=1)
#: validate.MAX_REFRESH_INTERVAL: the CA/Browser Forum has CAs publish a new response by then
DEFAULT_MAX_REFRESH_INTERVAL = dt.timedelta(days=4)
#: the bounds of --max-refresh-interval: more often than hourly is the timer's
#: business (and --force's); more than a year is no cap at all
MAX_REFRESH_INTERVAL_RANGE = (dt.timedelta(hours=1), dt.timedelta(days=365))
DEFAULT_LOCK_TIMEOUT = 60.0
DEFAULT_HOOK_TIMEOUT = 60.0
NGINX_TEST = "nginx -t -q"
MAX_CONFIG_BYTES = 64 << 20
#: In a staple's URL list (``--url aia``, ``urls = [..., "aia"]``): the
#: certificate's own AIA OCSP URLs, at that place in the order.
AIA = "aia"


T = TypeVar("T", "Options", "RunSettings")


def _over(top: T, base: T) -> T:
    """``top``'s fields, with ``base``'s where ``top`` has None."""
    return replace(base, **{k: v for k, v in vars(top).items() if v is not None})


@dataclass(frozen=True, kw_only=True)
class Options:
    """Settings shared by every staple; None means "not given here"."""

    timeout: float | None = None
    proxy: str | None = None
    refresh_at: float | None = None
    max_refresh_interval: dt.timedelta | None = None
    default_validity: dt.timedelta | None = None
    lock_timeout: float | None = None
    haproxy_socket: str | None = None
    #: TLS servers (HOST:PORT) whose served staple check and status compare with the file
    connect: tuple[str, ...] | None = None
    #: the SNI name sent to them
    servername: str | None = None

    def over(self, base: Options) -> Options:
        """These options, with ``base`` filling in what is not given."""
        return _over(self, base)


@dataclass(frozen=True, kw_only=True)
class Staple:
    """Everything needed to refresh one stapling file."""

    name: str
    #: the config's table name ([staple.NAME]), or the certbot lineage's; "" when none
    label: str = ""
    cert: Path
    issuer: Path | None = None
    output: Path
    urls: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    proxy: str | None = None
    refresh_at: float = DEFAULT_REFRESH_AT
    #: refresh no later than this after thisUpdate, whatever nextUpdate says
    max_refresh_interval: dt.timedelta = DEFAULT_MAX_REFRESH_INTERVAL
    default_validity: dt.timedelta = DEFAULT_VALIDITY
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    #: HAProxy stats socket (unix path or HOST:PORT) to push a new staple to
    haproxy_socket: str | None = None
    #: TLS servers (HOST:PORT) that staple this file, for check, status and the metrics
    connect: tuple[str, ...] = ()
    #: the SNI name sent to them; None: the certificate's first DNS name
    servername: str | None = None
    force: bool = False


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Settings of a whole run rather than of one staple ([defaults] only)."""

    deploy_hook: str | None = None
    hook_timeout: float | None = None
    jobs: int | None = None
    #: where state records go (None: beside each staple)
    state_dir: Path | None = None
    #: Prometheus textfile to write after each run
    metrics_file: Path | None = None
    #: a command that must succeed before the deploy hook runs (``nginx -t -q``)
    nginx_test: str | None = None

    def over(self, base: RunSettings) -> RunSettings:
        """These settings, with ``base`` filling in what is not given."""
        return _over(self, base)


@dataclass(frozen=True)
class Config:
    """A config file, read: its staples and its run-wide settings."""

    staples: list[Staple | BadEntry]
    run: RunSettings


@dataclass(frozen=True, kw_only=True)
class BadEntry:
    """A config table that could not be turned into a Staple."""

    name: str
    reason: str
    #: as Staple.label
    label: str = ""


def staple_from_options(
    *,
    cert: Path,
    issuer: Path | None,
    output: Path | None,
    url: str | Sequence[str] | None,
    options: Options,
    force: bool,
) -> Staple:
    """The single staple of ``refresh --cert ...``; ``url``: one or several
    (--url, repeatable; ``aia`` stands for the certificate's own)."""
    _check_cli(options)
    out = check_output_name(_file(output, "--output") if output is not None else Path(str(cert) + ".ocsp"),
                            str(cert))
    given = [u for u in ((url,) if isinstance(url, str) else url or ()) if u]  # --url "": as if not given
    base = Staple(name=str(cert), cert=cert, issuer=issuer, output=out,
                  urls=url_list(given, "--url"), force=force)
    return _with_options(base, options)


def _check_cli(options: Options) -> None:
    # click checks the numbers; the proxy URL and the socket are checked here, once.
    if options.proxy is not None:
        check_url(options.proxy, "--proxy")
    if options.haproxy_socket is not None:
        check_socket(options.haproxy_socket, "--haproxy-socket")
    for address in options.connect or ():
        check_address(address, "--connect")
    if options.servername is not None:
        check_servername(options.servername, "--servername")


def _file(path: Path, what: str) -> Path:
    """An output path that can name a file: "." or "/" cannot (the lock and
    temp files are named after the output's name)."""
    if path.name in ("", ".", ".."):
        raise InputError(f"{what} {path}: names a directory, not a file")
    return path


def check_socket(value: str, what: str) -> str:
    """A HAProxy stats socket: a unix socket path, or HOST:PORT for a TCP socket."""
    from ocspstaple.haproxy import parse_address

    parse_address(value, what)
    return value


def _with_options(st: Staple, options: Options) -> Staple:
    return replace(st, **_given(options))


def _given(options: Options) -> dict[str, Any]:
    return {k: v for k, v in vars(options).items() if v is not None}


#: The longest duration accepted anywhere (--default-validity, check's
#: thresholds and --max-failing, the config file): far beyond any OCSP
#: response's window, and far inside what datetime can add to today
#: (99999999999d overflowed it with a traceback).
MAX_DURATION = dt.timedelta(days=3650)
#: The longest wait accepted (--timeout, --lock-timeout, --hook-timeout)
MAX_SECONDS = 3600
MAX_JOBS = 256

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, what: str) -> dt.timedelta:
    """A duration: seconds as a number, or a string such as ``90s``, ``30m``,
    ``36h``, ``1d``; positive and at most MAX_DURATION.

    The command line and the config file both come here, so they accept and
    refuse the same durations with the same words.
    """
    if isinstance(value, str):
        # ASCII digits only: str.isdigit() and \d take other scripts' digits too.
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", value, re.ASCII)
        if not m:
            raise InputError(f"{what}: {shown(value)} is not a duration such as 90s, 30m, 36h or 1d")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]  # a huge number of digits is inf, not an error
    else:
        seconds = _finite(value, what)
    if not seconds > 0:
        raise InputError(f"{what}: must be positive, got {shown(value)}")
    if seconds > MAX_DURATION.total_seconds():
        raise InputError(f"{what}: {shown(value)} is longer than {MAX_DURATION.days}d")
    return dt.timedelta(seconds=seconds)


def check_max_refresh_interval(value: object, what: str = "--max-refresh-interval") -> dt.timedelta:
    """A duration from one hour to 365 days (``4d``, ``36h``)."""
    interval = parse_duration(value, what)
    low, high = MAX_REFRESH_INTERVAL_RANGE
    if not low <= interval <= high:
        raise InputError(f"{what}: {shown(value)} must be from 1h to 365d")
    return interval


def _finite(value: object, what: str) -> float:
    """A finite number from the config file (an int or a float, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what}: expected a number, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise InputError(f"{what}: expected a finite number, got {shown(value)}")
    return number


def number_text(text: str, what: str, *, whole: bool = False) -> int | float:
    """A number from the command line, for the same checks as the config
    file's: ``nan``, ``inf`` or ``1e400`` are refused by those checks, not
    taken as numbers of their own kind."""
    try:
        return int(text, 10) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise InputError(f"{what}: expected {kind}, got {shown(text)}") from None


def check_fraction(value: object, what: str = "refresh-at") -> float:
    """A fraction strictly between 0 and 1 (--refresh-at, refresh_at)."""
    number = _finite(value, what)
    if not 0.0 < number < 1.0:
        raise InputError(f"{what}: must be between 0 and 1 (exclusive), got {shown(value)}")
    return number


def check_timeout(value: object, what: str = "timeout") -> float:
    """Seconds to wait: more than 0, at most MAX_SECONDS."""
    number = _finite(value, what)
    if not 0.0 < number <= MAX_SECONDS:
        raise InputError(f"{what}: must be between 0 and {MAX_SECONDS} seconds, got {shown(value)}")
    return number


def check_jobs(value: object, what: str) -> int:
    """How many staples at once: a whole number from 1 to MAX_JOBS."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOBS:
        raise InputError(f"{what}: expected a whole number from 1 to {MAX_JOBS}, got {shown(value)}")
    return value


def _str(v: object, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise InputError(f"{where}: expected a non-empty string, got {shown(v)}")
    return v


def _path(v: object, where: str) -> str:
    """A path's text; no file name holds a NUL (Python would raise ValueError at its first use)."""
    text = _str(v, where)
    if "\0" in text:
        raise InputError(f"{where}: a path cannot hold a NUL character, got {shown(v)}")
    return text


def _addresses(v: object, where: str) -> tuple[str, ...]:
    """``connect``: one HOST:PORT or a list of them."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise InputError(f"{where}: expected HOST:PORT or a list of them, got {shown(v)}")
    return tuple(check_address(_str(a, where), where) for a in items)


# key -> (converter(value, where) -> converted)
_OPTION_KEYS: Mapping[str, Any] = {
    "timeout": check_timeout,
    "proxy": lambda v, where: check_url(_str(v, where), where),
    "refresh_at": check_fraction,
    "max_refresh_interval": check_max_refresh_interval,
    "default_validity": parse_duration,
    "lock_timeout": check_timeout,
    "haproxy_socket": lambda v, where: check_socket(_str(v, where), where),
    "connect": _addresses,
    "servername": lambda v, where: check_servername(_str(v, where), where),
}
_RUN_KEYS: Mapping[str, Any] = {
    "deploy_hook": _str,
    "hook_timeout": check_timeout,
    "jobs": check_jobs,
    "state_dir": lambda v, where: Path(_path(v, where)),
    "metrics_file": lambda v, where: Path(_path(v, where)),
    "nginx_test": lambda v, where: NGINX_TEST if v is True else (None if v is False else _str(v, where)),
}
_STAPLE_KEYS = {"cert", "issuer", "output", "url", "urls"}


def load_config(path: Path, *, cli: Options, force: bool) -> list[Staple | BadEntry]:
    """The staples of a TOML config (see read_config)."""
    return read_config(path, cli=cli, force=force).staples


def read_config(path: Path, *, cli: Options, force: bool) -> Config:
    """Read a TOML config; a broken file raises ConfigError, a broken staple
    table becomes a BadEntry so that the others still run."""
    _check_cli(cli)
    try:
        raw = read_file(path, MAX_CONFIG_BYTES + 1)  # a regular file, opened without blocking
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: {e}") from None
    unknown = set(doc) - {"defaults", "staple"}
    if unknown:
        raise ConfigError(f"config {path}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                          "(expected [defaults] and [staple.NAME] tables)")
    defaults = doc.get("defaults", {})
    staples = doc.get("staple", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"config {path}: [defaults] must be a table")
    if not isinstance(staples, dict) or not staples:
        raise ConfigError(f"config {path}: no [staple.NAME] tables")
    where = f"config {path} [defaults]"
    try:
        file_defaults = _options(defaults, where, allowed=set(_RUN_KEYS))
        run = RunSettings(**{k: conv(defaults[k], f"{where} {k}") for k, conv in _RUN_KEYS.items() if k in defaults})
    except InputError as e:
        raise ConfigError(str(e)) from None
    root = path.parent
    run = replace(run, state_dir=root / run.state_dir if run.state_dir else None,
                  metrics_file=root / run.metrics_file if run.metrics_file else None)
    out: list[Staple | BadEntry] = []
    # What a table without settings of its own gets, worked out once: a
    # config may have thousands of tables.
    common = _given(cli.over(file_defaults))
    paths = _Paths(root)
    for name, table in staples.items():
        try:
            out.append(_staple(name, table, root=paths, cli=cli, defaults=file_defaults, common=common,
                               force=force, where=f"[staple.{name}]"))
        except InputError as e:
            # Name the certificate when the table says which one it is.
            cert = table.get("cert") if isinstance(table, dict) else None
            label = str(root / cert) if isinstance(cert, str) and cert else f"[staple.{name}]"
            out.append(BadEntry(name=label, reason=str(e), label=name))
    return Config(staples=out, run=run)


def _options(table: Mapping[str, Any], where: str, *, allowed: set[str]) -> Options:
    unknown = set(table) - set(_OPTION_KEYS) - allowed
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    return Options(**{k: conv(table[k], f"{where} {k}") for k, conv in _OPTION_KEYS.items() if k in table})


class _Paths:
    """Paths relative to a config's directory; one Path object per distinct
    string (thousands of tables name the same issuer file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def __truediv__(self, rel: str) -> Path:
        p = self._made.get(rel)
        if p is None:
            p = self._made[rel] = self.root / rel
        return p


def _staple(
    name: str, table: object, *, root: _Paths, cli: Options, defaults: Options, common: dict[str, Any], force: bool,
    where: str,
) -> Staple:
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a table")
    opts = _options(table, where, allowed=_STAPLE_KEYS) if table.keys() - _STAPLE_KEYS else None
    if "cert" not in table:
        raise InputError(f"{where}: missing key cert")
    cert = root / _path(table["cert"], f"{where} cert")
    issuer = root / _path(table["issuer"], f"{where} issuer") if "issuer" in table else None
    output = (_file(root / _path(table["output"], f"{where} output"), f"{where} output") if "output" in table
              else Path(str(cert) + ".ocsp"))
    check_output_name(output, f"{where} output")
    if "url" in table and "urls" in table:
        raise InputError(f"{where}: give url or urls, not both")
    key = "urls" if "urls" in table else "url"
    url = table.get(key, [])
    urls = url_list([url] if isinstance(url, str) else url, f"{where} {key}")
    # The command line wins over the staple's table, which wins over [defaults].
    given = common if opts is None else _given(cli.over(opts.over(defaults)))
    return Staple(name=str(cert), label=name, cert=cert, issuer=issuer, output=output, urls=urls, force=force,
                  **given)



def url_list(urls: object, where: str) -> tuple[str, ...]:
    """The responder URLs to ask, in order: each an http(s) URL or ``aia``
    (any case; the certificate's own AIA URLs go there).  Each URL is checked
    when the staple is refreshed (refresh._urls), so that one bad URL is a
    bad input of that staple alone, as it always was."""
    if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
        raise InputError(f"{where}: expected a string or a list of strings")
    return tuple(AIA if u.lower() == AIA else u for u in urls)


def check_files(staples: Sequence[Staple | BadEntry], *, config: Path | None = None,
                metrics_file: Path | None = None) -> list[Staple | BadEntry]:
    """No input is ever an output (spec, "Trust on the local disk"): each
    staple whose output is the same file as a certificate or issuer (of any
    staple), the config file, or the output of another certificate, becomes
    a BadEntry, before anything is written; a metrics file that is any of
    those files is an InputError for the whole run.

    "The same file" is the same device and inode (a symlink or a hard link
    to the certificate is the certificate), or, for files not there yet, the
    same path once the directories' links are resolved.  The same
    certificate configured twice with one output is one staple, not a clash.
    """
    ids = _FileIds()
    # Each staple with its certificate's and its output's key: each path looked up once.
    found = [(st, ids.of(st.cert), ids.of(st.output)) for st in staples if isinstance(st, Staple)]
    taken: dict[tuple[object, ...], str] = {}
    for st, cert, _ in found:
        taken.setdefault(cert, f"the certificate {st.cert}")
        if st.issuer is not None:
            taken.setdefault(ids.of(st.issuer), f"the issuer {st.issuer}")
    if config is not None:
        taken.setdefault(ids.of(config), f"the config file {config}")
    writers: dict[tuple[object, ...], dict[tuple[object, ...], str]] = {}
    for st, cert, output in found:
        writers.setdefault(output, {}).setdefault(cert, str(st.cert))
    if metrics_file is not None:
        key = ids.of(metrics_file)
        clash = taken.get(key) or (f"the output of {', '.join(writers[key].values())}" if key in writers else None)
        if clash is not None:
            raise InputError(f"the metrics file {metrics_file} is the same file as {clash}: writing it would "
                             "destroy that; give another metrics file")
    out: list[Staple | BadEntry] = []
    keys = iter(found)
    for entry in staples:
        if isinstance(entry, BadEntry):
            out.append(entry)
            continue
        _, cert, key = next(keys)
        clash = taken.get(key)
        others = [c for c_key, c in writers[key].items() if c_key != cert]
        if clash is not None:
            out.append(BadEntry(name=entry.name, reason=f"output {entry.output} is the same file as {clash}: "
                                                        "writing the staple would destroy it; give another output"))
        elif others:
            out.append(BadEntry(name=entry.name, reason=f"output {entry.output} is also the output of "
                                                        f"{', '.join(others)}: each run would replace one "
                                                        "certificate's staple with another's; give each its own "
                                                        "output"))
        else:
            out.append(entry)
    return out


class _FileIds:
    """What makes two paths the same file, each path looked up once."""

    def __init__(self) -> None:
        #: by the path's text: a str hashes and compares in C, a Path in Python
        self._ids: dict[str, tuple[object, ...]] = {}
        self._dirs: dict[str, str] = {}
        self._cwd = os.getcwd()

    def of(self, path: Path) -> tuple[object, ...]:
        text = str(path)
        got = self._ids.get(text)
        if got is None:
            try:
                st = os.stat(text)
                got = ("file", st.st_dev, st.st_ino)
            except OSError:  # not there (yet): its path, the directory's links resolved once
                head, tail = os.path.split(os.path.normpath(os.path.join(self._cwd, text)))
                if head not in self._dirs:
                    self._dirs[head] = os.path.realpath(head)
                got = ("path", os.path.join(self._dirs[head], tail))
            self._ids[text] = got
        return got


#: A control character: below 0x20, or DEL
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def check_output_name(output: Path, where: str) -> Path:
    """An output path without control characters: a deploy hook gets the
    changed staples one path a line ($OCSPSTAPLE_CHANGED), and a newline in
    a name (a certbot lineage may have one) would make two entries of one."""
    text = str(output)
    if _CONTROL.search(text):
        raise InputError(f"{where}: the output {text!r} holds a control character (a newline?): "
                         "$OCSPSTAPLE_CHANGED lists one path a line; give an output without one")
    return output
