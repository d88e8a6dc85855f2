"""No option value, on the command line or in the config file, ends in a
traceback or an internal error (exit 70).

Every option of every command is taken from the click command objects, so a
new option is covered without a change here.  Each gets hostile values
(nan, inf, -0, 1e400, huge durations, empty, 10 KB, control characters),
first a fixed list for every option, then values hypothesis makes up.  The
runs are in-process (click's CliRunner) and never reach the network: the
certificate's OCSP URL is a loopback port that refuses connections.

What must hold: a documented exit code (never 70), no traceback, errors on
one line each (a refused value is exactly one line), and no raw control
character in what is printed.
"""
from __future__ import annotations

import contextlib
import gc
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pki import CA, write_pem

from ocspstaple import config
from ocspstaple.cli import main

#: What each command may exit with (README "Exit status"; check's are the plugin states).
EXITS = {"refresh": {0, 1, 2}, "serve": {2}, "status": {0, 2}, "check": {0, 1, 2, 3}, "verify": {0, 2}}

HOSTILE = [
    "nan", "NaN", "inf", "-inf", "-0", "-0.0", "1e400", "-1e400", "0", "1e-300",
    "99999999999d", "1000000000d", "99999999999", "", " ", "x" * 10_000, "9" * 400,
    "a\nb", "\nnan", "a\x00b", "\x1b[31mred", "a\rb", "\u2028", "10%", "-5%", "nan%", "1e400%",
    "http://127.0.0.1:1/\n", "127.0.0.1:99999999999999999999", "²", "127.0.0.1:²", "[::1]:²",
]
#: Characters that must never reach the terminal raw (str.splitlines() breaks on all but the first ones)
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass
class World:
    root: Path  # the working directory of every run: nothing to scan in it
    cert: Path  # a fullchain whose OCSP URL refuses connections
    le: Path  # a certbot directory with an empty live/
    baseline: dict[str, int]  # stderr lines of each command's run without a hostile value


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[World]:
    base = tmp_path_factory.mktemp("hostile")
    # A port bound but not listening: every connection to it is refused, at once.
    with socket.socket() as refused:
        refused.bind(("127.0.0.1", 0))
        port = refused.getsockname()[1]
        (base / "pki").mkdir()
        leaf = ca.issue("hostile.example.test", ocsp_urls=(f"http://127.0.0.1:{port}/",))
        cert = write_pem(base / "pki" / "chain.pem", leaf, ca.cert)
        (base / "le" / "live").mkdir(parents=True)
        (base / "run").mkdir()
        w = World(root=base / "run", cert=cert, le=base / "le", baseline={})
        for command in EXITS:
            w.baseline[command] = len(run(w, args_with(w, command, None)).lines)
        yield w
    gc.unfreeze()  # refresh freezes what it allocated, for a one-shot process


@dataclass
class Result:
    code: int
    out: str
    err: str
    exception: BaseException | None

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()


def run(w: World, args: list[str]) -> Result:
    with contextlib.chdir(w.root):
        r = CliRunner().invoke(main, args, catch_exceptions=True, env={"HTTP_PROXY": "", "http_proxy": ""})
    return Result(r.exit_code, r.stdout, r.stderr, r.exception)




def options_of(command: str) -> list[click.Parameter]:
    """Every parameter of a command that takes a value (flags take none)."""
    cmd = main.commands[command]
    return [p for p in cmd.params
            if isinstance(p, click.Argument) or (isinstance(p, click.Option) and not p.is_flag and not p.count
                                                 and "--help" not in p.opts)]


def base_args(w: World, command: str, param: click.Parameter | None) -> list[str]:
    """Options for a run that gets as far as it can without a network: the
    staple's inputs, but not ``param``'s own."""
    name = param.name if param is not None else None
    if name in ("config_path", "scan_dirs", "cert"):
        return []
    if name in ("certbot_dir", "output_dir", "cert_names"):
        return ["--certbot-dir", str(w.le), "--output-dir", "out"]
    if command == "serve":
        # A certificate that cannot be read: nothing to serve, so serve never stays.
        return ["--cert", "missing.pem"] + ([] if name == "listen" else ["--listen", "127.0.0.1:0"])
    return ["--cert", str(w.cert)]


def args_with(w: World, command: str, param: click.Parameter | None, value: str = "") -> list[str]:
    args = [command, *base_args(w, command, param)]
    if isinstance(param, click.Option):
        # --opt=VALUE: a value such as "-0" is the option's, not another option.
        args.append(f"{max(param.opts, key=len)}={value}")
    if command == "verify":
        args += ["--", value if isinstance(param, click.Argument) else "x.ocsp"]
    return args


def assert_well_behaved(w: World, command: str, args: list[str], r: Result, value: str) -> None:
    shown = f"{args!r:.300}"
    assert r.exception is None or isinstance(r.exception, SystemExit), (shown, r.exception)
    assert "Traceback" not in r.out + r.err, (shown, r.err)
    assert r.code != 70, (shown, r.err, r.out)
    assert r.code in EXITS[command], (shown, r.code, r.err, r.out)
    assert not RAW_CONTROL.search(r.err), (shown, r.err)
    if command == "check":
        # A monitoring plugin: exactly one line on stdout, whatever happened.
        assert len(r.out.splitlines()) == 1 and not RAW_CONTROL.search(r.out), (shown, r.out)
        assert r.err == "", (shown, r.err)
        return
    if r.err.startswith("Error: "):  # a refused value: that one line and nothing else
        assert len(r.lines) == 1 and r.code == 2, (shown, r.err)
    else:  # accepted: at most one line more than the same run without it
        assert len(r.lines) <= w.baseline[command] + 1, (shown, r.err)
    assert not RAW_CONTROL.search(r.out), (shown, r.out)
    # A newline in the value must not start a line of its own in the output.
    tail = value.split("\n", 1)[1].strip() if "\n" in value else ""
    if len(tail) >= 2:
        assert not any(line.startswith(tail) for line in (r.err + r.out).splitlines()), (shown, r.err, r.out)


PARAMS = [(c, p.name) for c in EXITS for p in options_of(c)]


def test_every_option_is_enumerated():
    # The enumeration sees the options that broke before (and would see a new one).
    names = {f"{c} {p}" for c, p in PARAMS}
    assert {"refresh default_validity", "refresh refresh_at", "refresh timeout", "refresh lock_timeout",
            "refresh hook_timeout", "refresh jobs", "check max_failing", "check warning", "check critical",
            "verify default_validity", "serve default_validity", "serve listen", "status refresh_at",
            "verify staple_file"} <= names
    assert len(PARAMS) >= 55


@pytest.mark.parametrize(("command", "name"), PARAMS, ids=[f"{c}-{p}" for c, p in PARAMS])
def test_every_option_refuses_hostile_values_in_one_line(world: World, command: str, name: str):
    param = next(p for p in options_of(command) if p.name == name)
    for value in HOSTILE:
        args = args_with(world, command, param, value)
        assert_well_behaved(world, command, args, run(world, args), value)


# Values hypothesis makes up: numbers as text, durations and shares, and
# short strings with control characters.
_NUMBERS = st.floats(allow_nan=True, allow_infinity=True).map(repr)
_TEXT = st.text(st.sampled_from("0123456789.-+eE%smhdnaif:/\n\x00\x1b\t |'\"=²"), max_size=12)
VALUES = st.one_of(_NUMBERS, _TEXT, st.tuples(_NUMBERS, st.sampled_from("smhd%")).map("".join))


@pytest.mark.parametrize("command", list(EXITS))
@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_made_up_values(world: World, command: str, data: st.DataObject):
    param = data.draw(st.sampled_from(options_of(command)), label="option")
    value = data.draw(VALUES, label="value")
    args = args_with(world, command, param, value)
    assert_well_behaved(world, command, args, run(world, args), value)


# -- the config file ---------------------------------------------------------------

TOML_HOSTILE = [
    "nan", "inf", "-inf", "-0.0", "1e400", "0", "-1", "99999999999", "1" + "0" * 400, "true", "[]", "{}",
    '"99999999999d"', '"1000000000d"', '""', '"nan"', '"' + "x" * 10_000 + '"', '"a\\nb"', '"a\\u0000b"',
    '"\\u001b[31m"', '["a\\nb"]',
]
DEFAULT_KEYS = sorted(set(config._OPTION_KEYS) | set(config._RUN_KEYS))
STAPLE_KEYS = sorted(set(config._OPTION_KEYS) | config._STAPLE_KEYS)
CONFIG_CASES = [("defaults", k) for k in DEFAULT_KEYS] + [("staple", k) for k in STAPLE_KEYS]


def config_text(w: World, table: str, key: str, value: str) -> str:
    staple = {"cert": f'"{w.cert}"'}
    if table == "staple":
        staple[key] = value
    lines = ["[defaults]", f"{key} = {value}"] if table == "defaults" else []
    lines += ["[staple.site]"] + [f"{k} = {v}" for k, v in staple.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("table", "key"), CONFIG_CASES, ids=[f"{t}-{k}" for t, k in CONFIG_CASES])
def test_every_config_key_refuses_hostile_values(world: World, table: str, key: str):
    path = world.root / f"{table}-{key}.toml"
    for value in TOML_HOSTILE:
        path.write_text(config_text(world, table, key, value))
        for command in ("refresh", "status", "check"):
            args = [command, "--config", str(path)]
            r = run(world, args)
            assert_well_behaved(world, command, args, r, value)
            if command == "refresh":  # one line: the config error, or the staple's own
                assert len(r.lines) <= 2, (table, key, value[:40], r.err)


def test_the_checks_notice_a_traceback_and_an_internal_error(world: World, monkeypatch):
    # Negative control: a planted crash in option handling is seen (exit 70, not a documented code).
    import ocspstaple.config

    def crash(value: object, what: str) -> object:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(ocspstaple.config, "check_timeout", crash)
    param = next(p for p in options_of("refresh") if p.name == "timeout")
    args = args_with(world, "refresh", param, "5")
    r = run(world, args)
    assert r.code == 70 and r.lines == ["internal error: ZeroDivisionError: planted; please report"]
    with pytest.raises(AssertionError):
        assert_well_behaved(world, "refresh", args, r, "5")
