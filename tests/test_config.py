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
    assert www == Staple(name=str(tmp_path / "certs/www.pem"), cert=tmp_path / "certs/www.pem",
                         output=tmp_path / "certs/www.pem.ocsp", timeout=5, refresh_at=0.6,
                         default_validity=dt.timedelta(hours=12), lock_timeout=30)
    assert isinstance(api, Staple)
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
