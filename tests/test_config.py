"""The config file and the option precedence: command line > [staple.NAME] > [defaults]."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ocspstaple.config import BadEntry, Options, Staple, load_config, parse_duration, staple_from_options
from ocspstaple.errors import ConfigError, InputError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ocspstaple.toml"
    p.write_text(text)
    return p


def test_full_example(tmp_path):
    cfg = write(tmp_path, """
[defaults]
timeout = 5
refresh_at = 0.6
default_validity = "12h"
lock_timeout = 30

[staple.www]
cert = "certs/www.pem"

[staple.api]
cert = "/etc/ssl/api/cert.pem"
issuer = "/etc/ssl/api/chain.pem"
output = "/var/lib/ocsp/api.der"
url = ["http://ocsp-a.example/", "http://ocsp-b.example/"]
timeout = 20
proxy = "http://proxy.example:3128"
""")
    www, api = load_config(cfg, cli=Options(), force=False)
    assert www == Staple(name=str(tmp_path / "certs/www.pem"), label="www", cert=tmp_path / "certs/www.pem",
                         output=tmp_path / "certs/www.pem.ocsp", timeout=5, refresh_at=0.6,
                         default_validity=dt.timedelta(hours=12), lock_timeout=30)
    assert isinstance(api, Staple) and api.label == "api"
    assert api.issuer == Path("/etc/ssl/api/chain.pem") and api.output == Path("/var/lib/ocsp/api.der")
    assert api.urls == ("http://ocsp-a.example/", "http://ocsp-b.example/")
    assert (api.timeout, api.proxy, api.refresh_at) == (20, "http://proxy.example:3128", 0.6)


def test_command_line_wins(tmp_path):
    cfg = write(tmp_path, """
[defaults]
timeout = 5
[staple.a]
cert = "a.pem"
timeout = 7
""")
    (a,) = load_config(cfg, cli=Options(timeout=2.5), force=True)
    assert isinstance(a, Staple) and a.timeout == 2.5 and a.force
    (a,) = load_config(cfg, cli=Options(), force=False)
    assert isinstance(a, Staple) and a.timeout == 7 and not a.force


def test_builtin_defaults(tmp_path):
    (a,) = load_config(write(tmp_path, '[staple.a]\ncert = "a.pem"\n'), cli=Options(), force=False)
    assert isinstance(a, Staple)
    assert (a.timeout, a.refresh_at, a.default_validity, a.proxy) == (10.0, 0.5, dt.timedelta(days=1), None)


@pytest.mark.parametrize("table, why", [
    ('cert = "a.pem"\ncolour = "blue"', "unknown key"),
    ('issuer = "i.pem"', "missing key cert"),
    ("cert = 3", "expected a non-empty string"),
    ('cert = "a.pem"\ntimeout = "soon"', "expected a number"),
    ('cert = "a.pem"\nrefresh_at = 1.5', "between 0 and 1"),
    ('cert = "a.pem"\nurl = [1]', "list of strings"),
    ('cert = "a.pem"\ndefault_validity = "forever"', "not a duration"),
    ('cert = "a.pem"\nproxy = "socks5://127.0.0.1:1080"', "not an http"),
])
def test_bad_staple_table_is_a_bad_entry_and_the_others_stay(tmp_path, table, why):
    cfg = write(tmp_path, f'[staple.bad]\n{table}\n\n[staple.good]\ncert = "g.pem"\n')
    bad, good = load_config(cfg, cli=Options(), force=False)
    assert isinstance(bad, BadEntry) and why in bad.reason and "[staple.bad]" in bad.reason
    # the log line names the certificate when the table says which one
    assert bad.name == (str(tmp_path / "a.pem") if 'cert = "a.pem"' in table else "[staple.bad]")
    assert isinstance(good, Staple)


@pytest.mark.parametrize("text, why", [
    ("[staple.a\ncert = 1", "config"),
    ('[defaults]\ntimeout = "x"\n[staple.a]\ncert = "a"', "expected a number"),
    ('[defaults]\nspeed = 1\n[staple.a]\ncert = "a"', "unknown key"),
    ('[defaults]\ncert = "a"\n[staple.a]\ncert = "a"', "unknown key"),
    ('[staples.a]\ncert = "a"', "unknown top-level"),
    ("[defaults]\ntimeout = 3\n", "no [staple.NAME] tables"),
    ('staple = "x"', "no [staple.NAME] tables"),
])
def test_broken_config_is_a_config_error(tmp_path, text, why):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(write(tmp_path, text), cli=Options(), force=False)
    assert why in str(e.value)


def test_bad_proxy_on_the_command_line(tmp_path):
    cfg = write(tmp_path, '[staple.a]\ncert = "a.pem"\n')
    with pytest.raises(InputError, match="--proxy"):
        load_config(cfg, cli=Options(proxy="proxy.example:3128"), force=False)
    with pytest.raises(InputError, match="--proxy"):
        staple_from_options(cert=Path("a.pem"), issuer=None, output=None, url=None,
                            options=Options(proxy="proxy.example:3128"), force=False)
    (a,) = load_config(cfg, cli=Options(proxy="http://proxy.example:3128"), force=False)
    assert isinstance(a, Staple) and a.proxy == "http://proxy.example:3128"


def test_unreadable_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml", cli=Options(), force=False)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.toml", cli=Options(), force=False)


@pytest.mark.parametrize("text, seconds", [(90, 90), (1.5, 1.5), ("90s", 90), ("30m", 1800), ("36h", 129600),
                                           ("1d", 86400), ("2.5h", 9000), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text, "x") == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1w", "h", "-5m", 0, True, "1 d 2h", None])
def test_parse_duration_refuses(text):
    with pytest.raises(InputError):
        parse_duration(text, "x")


def test_single_pair_defaults():
    st = staple_from_options(cert=Path("site.pem"), issuer=None, output=None, url=None,
                             options=Options(), force=False)
    assert st.output == Path("site.pem.ocsp") and st.urls == () and st.timeout == 10.0
    st = staple_from_options(cert=Path("site.pem"), issuer=Path("ca.pem"), output=Path("o.der"),
                             url="http://x/", options=Options(timeout=3), force=True)
    assert (st.output, st.urls, st.timeout, st.force) == (Path("o.der"), ("http://x/",), 3, True)


# -- the HAProxy socket and the run-wide settings ([defaults] only) ----------------------------

def test_haproxy_socket_and_run_settings_are_parsed(tmp_path):
    from ocspstaple.config import RunSettings, read_config

    cfg = write(tmp_path, """
[defaults]
haproxy_socket = "/run/haproxy/admin.sock"
deploy_hook = "systemctl reload nginx"
hook_timeout = 30
jobs = 4

[staple.a]
cert = "a.pem"

[staple.b]
cert = "b.pem"
haproxy_socket = "ipv4@127.0.0.1:9999"
""")
    config = read_config(cfg, cli=Options(), force=False)
    a, b = config.staples
    assert isinstance(a, Staple) and isinstance(b, Staple)
    assert a.haproxy_socket == "/run/haproxy/admin.sock" and b.haproxy_socket == "ipv4@127.0.0.1:9999"
    assert config.run == RunSettings(deploy_hook="systemctl reload nginx", hook_timeout=30.0, jobs=4)
    assert type(config.run.hook_timeout) is float and type(config.run.jobs) is int
    # the command line wins over both tables
    a, b = read_config(cfg, cli=Options(haproxy_socket="unix@/tmp/x.sock"), force=False).staples
    assert a.haproxy_socket == b.haproxy_socket == "unix@/tmp/x.sock"  # type: ignore[union-attr]


def test_run_settings_absent_and_overridden(tmp_path):
    """Twin of the parse test: without the keys, nothing is set."""
    from ocspstaple.config import RunSettings, read_config

    config = read_config(write(tmp_path, '[staple.a]\ncert = "a.pem"\n'), cli=Options(), force=False)
    assert config.run == RunSettings(deploy_hook=None, hook_timeout=None, jobs=None)
    (a,) = config.staples
    assert isinstance(a, Staple) and a.haproxy_socket is None
    file = RunSettings(deploy_hook="from-file", hook_timeout=5.0, jobs=3)
    assert RunSettings(jobs=1).over(file) == RunSettings(deploy_hook="from-file", hook_timeout=5.0, jobs=1)
    assert RunSettings().over(file) == file


@pytest.mark.parametrize("line, why", [
    ('deploy_hook = ""', "non-empty string"),
    ("deploy_hook = 5", "non-empty string"),
    ('deploy_hook = ["systemctl", "reload", "nginx"]', "non-empty string"),
    ("hook_timeout = 0", "between 0 and 3600"),
    ("hook_timeout = -1", "between 0 and 3600"),
    ("hook_timeout = 3601", "between 0 and 3600"),
    ('hook_timeout = "30"', "expected a number"),
    ("hook_timeout = true", "expected a number"),
    ("jobs = 0", "1 to 256"),
    ("jobs = 257", "1 to 256"),
    ("jobs = 2.0", "1 to 256"),
    ("jobs = true", "1 to 256"),
    ('jobs = "4"', "1 to 256"),
    ('haproxy_socket = "127.0.0.1:99999"', "out of range"),
    ('haproxy_socket = "127.0.0.1:http"', "HOST:PORT"),
    ('haproxy_socket = ""', "non-empty string"),
    ("haproxy_socket = 9999", "non-empty string"),
])
def test_bad_run_settings_are_config_errors(tmp_path, line, why):
    cfg = write(tmp_path, f'[defaults]\n{line}\n[staple.a]\ncert = "a.pem"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg, cli=Options(), force=False)
    assert why in str(e.value) and line.split()[0] in str(e.value) and "[defaults]" in str(e.value)


@pytest.mark.parametrize("line, why", [
    ('deploy_hook = "systemctl reload nginx"', "unknown key(s) deploy_hook"),
    ("hook_timeout = 5", "unknown key(s) hook_timeout"),
    ("jobs = 2", "unknown key(s) jobs"),
    ('haproxy_socket = "127.0.0.1:0"', "out of range"),
    ("haproxy_socket = 5", "non-empty string"),
])
def test_bad_deploy_keys_in_a_staple_table_spoil_that_staple(tmp_path, line, why):
    cfg = write(tmp_path, f'[staple.bad]\ncert = "a.pem"\n{line}\n[staple.good]\ncert = "b.pem"\n'
                          'haproxy_socket = "/run/haproxy/admin.sock"\n')
    bad, good = load_config(cfg, cli=Options(), force=False)
    assert isinstance(bad, BadEntry) and why in bad.reason and "[staple.bad]" in bad.reason
    assert bad.name == str(tmp_path / "a.pem")
    assert isinstance(good, Staple) and good.haproxy_socket == "/run/haproxy/admin.sock"


def test_bad_haproxy_socket_on_the_command_line(tmp_path):
    cfg = write(tmp_path, '[staple.a]\ncert = "a.pem"\n')
    with pytest.raises(InputError, match="--haproxy-socket"):
        load_config(cfg, cli=Options(haproxy_socket="127.0.0.1:0"), force=False)
    with pytest.raises(InputError, match="--haproxy-socket"):
        staple_from_options(cert=Path("a.pem"), issuer=None, output=None, url=None,
                            options=Options(haproxy_socket="ipv4@nowhere"), force=False)
    st = staple_from_options(cert=Path("a.pem"), issuer=None, output=None, url=None,
                             options=Options(haproxy_socket="127.0.0.1:9999"), force=False)
    assert st.haproxy_socket == "127.0.0.1:9999"
