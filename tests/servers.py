"""Real TLS servers (nginx, HAProxy, Apache httpd) and `ocspstaple serve` for
the end-to-end tests, each started in the foreground in its own temp dir, on a
free 127.0.0.1 port, and stopped by PID at fixture teardown.

Also: what a TLS client sees stapled (`openssl s_client -status`), and what a
stapling file holds (cryptography), so that the two can be compared.

What the servers do that shapes this module (docs/servers.md):
- nginx reads `ssl_stapling_file` only at start and at `nginx -s reload`; a
  reload is asynchronous (new workers start, old ones drain), so after a
  reload we wait until every old worker has gone before asking s_client.
- HAProxy loads `CRT.ocsp` at start and takes `set ssl ocsp-response` on its
  stats socket at run time.
- httpd has no stapling file: mod_ssl asks a responder itself, here
  `ocspstaple serve` by SSLStaplingForceURL, and caches the answer.
Readiness is a TCP connect to the TLS port (fine for these three servers; never
do that to an `openssl ocsp` responder).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ROOT, clean_env
from cryptography.x509 import ocsp
from pki import CA, Issued, write_pem

UTC = dt.timezone.utc
APACHE_MODULES = Path("/usr/lib/apache2/modules")
START_TIMEOUT = 15.0


def binary(name: str) -> str:
    """The server's executable (Debian puts them in /usr/sbin), or skip."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed (contrib/ci/deps.sh installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one process we started, by its PID: signal, wait, then kill.

    The servers are started in a session of their own (their PID is the
    process group's id), so when the master had to be killed, its workers
    are killed with it by that group id.
    """
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before listening:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s:\n{tail(log)}")


def listening_sockets(pid: int) -> set[str]:
    """The TCP addresses (host:port) the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    found = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            if family == 4:
                host = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1])
            else:
                raw = bytes.fromhex(addr)
                host = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found.add(f"{host}:{int(port, 16)}")
    return found


def children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


# -- what a client sees, what a file holds ------------------------------------------

@dataclass
class Stapled:
    """The OCSP part of `openssl s_client -status` output."""

    response_status: str | None  # "successful", ... ; None: no response sent
    cert_status: str | None  # "good", "revoked", "unknown"
    this_update: dt.datetime | None
    output: str

    def __str__(self) -> str:
        return f"{self.response_status}/{self.cert_status}/{self.this_update}"


def _openssl_time(text: str) -> dt.datetime:
    # ASN1_TIME_print: "Nov 27 03:05:00 2026 GMT" (the day may be space-padded)
    return dt.datetime.strptime(" ".join(text.split()), "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)


def s_client(port: int, servername: str = "localhost") -> Stapled:
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername, "-status"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )
    out = p.stdout + p.stderr
    assert "CONNECTED" in out and "-----BEGIN CERTIFICATE-----" in out, f"no TLS handshake on {port}:\n{out}"
    if "OCSP response: no response sent" in out:
        return Stapled(None, None, None, out)
    status = re.search(r"OCSP Response Status: (\w+)", out)
    assert status, f"s_client printed no OCSP part:\n{out}"
    cert_status = re.search(r"Cert Status: (\w+)", out)
    this_update = re.search(r"This Update: (.+)", out)
    return Stapled(
        status.group(1),
        cert_status.group(1) if cert_status else None,
        _openssl_time(this_update.group(1)) if this_update else None,
        out,
    )


@dataclass
class StapleFile:
    cert_status: str
    this_update: dt.datetime
    der: bytes


def read_staple(path: Path) -> StapleFile:
    der = path.read_bytes()
    r = ocsp.load_der_ocsp_response(der)
    assert r.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, r.response_status
    status = {
        ocsp.OCSPCertStatus.GOOD: "good",
        ocsp.OCSPCertStatus.REVOKED: "revoked",
        ocsp.OCSPCertStatus.UNKNOWN: "unknown",
    }[r.certificate_status]
    return StapleFile(status, r.this_update_utc, der)


def stapled_matches(seen: Stapled, staple: StapleFile) -> bool:
    return (seen.response_status == "successful" and seen.this_update == staple.this_update
            and seen.cert_status == staple.cert_status)


def wait_stapled(port: int, staple: StapleFile, timeout: float) -> Stapled:
    """Ask s_client until the server staples ``staple`` (or fail with the last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = s_client(port)
        if stapled_matches(seen, staple):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(
                f"port {port} staples {seen}, not the file's {staple.cert_status}/{staple.this_update}\n{seen.output}")
        time.sleep(0.25)


# -- the site: a leaf for "localhost" with its key, on disk ----------------------------

@dataclass
class TLSSite:
    leaf: Issued
    dir: Path
    fullchain: Path  # leaf + issuer
    key: Path
    issuer: Path
    combined: Path  # HAProxy's crt: leaf + issuer + key
    staple: Path  # where the tests let ocspstaple write (per server)


def make_tls_site(directory: Path, ca: CA, ocsp_url: str, cn: str = "localhost") -> TLSSite:
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue(cn, ocsp_urls=(ocsp_url,))
    fullchain = write_pem(directory / "fullchain.pem", leaf, ca.cert)
    key = directory / "key.pem"
    key.write_bytes(leaf.key_pem)
    key.chmod(0o600)
    issuer = write_pem(directory / "issuer.pem", ca.cert)
    combined = write_pem(directory / "site.pem", leaf, ca.cert, leaf.key_pem)
    return TLSSite(leaf, directory, fullchain, key, issuer, combined, directory / "site.der")


def run_as_root() -> bool:
    return os.geteuid() == 0


# -- the servers ------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    dir: Path
    port: int
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.dir / "error.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _popen(self, argv: list[str]) -> None:
        out = open(self.dir / "stdout.log", "ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir, env=clean_env(), start_new_session=True)
        finally:
            out.close()
        try:
            wait_for_port(self.port, self.proc, self.dir / "stdout.log")
        except BaseException:
            self.stop()
            raise
        self.assert_loopback_only()

    def assert_loopback_only(self) -> None:
        pids = [self.pid, *children(self.pid)]
        addrs = set().union(*(listening_sockets(p) for p in pids))
        assert addrs, f"{self.name} listens nowhere?"
        bad = [a for a in addrs if not a.startswith("127.0.0.1:")]
        assert not bad, f"{self.name} listens beyond loopback: {bad}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def diagnostics(self) -> str:
        return f"--- {self.name} log ---\n{tail(self.log)}\n--- stdout ---\n{tail(self.dir / 'stdout.log')}"


class Nginx(Server):
    """nginx in the foreground (daemon off), one worker, stapling ``staple``."""

    def __init__(self, directory: Path, site: TLSSite) -> None:
        super().__init__("nginx", directory, free_port())
        self.site = site
        self.bin = binary("nginx")
        self.conf = directory / "nginx.conf"
        self.conf.write_text(f"""\
{"user root;" if run_as_root() else ""}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {self.log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name localhost;
        ssl_certificate {site.fullchain};
        ssl_certificate_key {site.key};
        ssl_stapling on;
        ssl_stapling_file {site.staple};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")

    @property
    def command(self) -> list[str]:
        return [self.bin, "-p", str(self.dir), "-e", str(self.log), "-c", str(self.conf)]

    @property
    def reload_command(self) -> str:
        """The shell command a deploy hook runs to reload this nginx."""
        return " ".join([*self.command, "-s", "reload"])

    def start(self) -> "Nginx":
        self._popen([*self.command, "-g", "daemon off;"])
        return self

    def workers(self) -> set[int]:
        return children(self.pid)

    def wait_reloaded(self, old_workers: set[int], timeout: float = 10.0) -> None:
        """A reload is done when none of ``old_workers`` is left and a new one runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.workers()
            if now and not (now & old_workers):
                return
            assert self.alive(), self.diagnostics()
            time.sleep(0.05)
        raise AssertionError(f"nginx did not reload (workers {old_workers} -> {self.workers()}):\n"
                             + self.diagnostics())

    def reload(self) -> None:
        old = self.workers()
        p = subprocess.run([*self.command, "-s", "reload"], capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        self.wait_reloaded(old)


class HAProxy(Server):
    """haproxy -db, serving the combined PEM (its ``.ocsp`` loaded at start),
    with admin stats sockets on a unix path and on 127.0.0.1:TCP."""

    def __init__(self, directory: Path, crt: Path) -> None:
        super().__init__("haproxy", directory, free_port())
        self.bin = binary("haproxy")
        self.crt = crt
        self.socket = directory / "admin.sock"
        self.stats_port = free_port()
        self.conf = directory / "haproxy.cfg"
        self.conf.write_text(f"""\
global
    stats socket {self.socket} mode 600 level admin
    stats socket ipv4@127.0.0.1:{self.stats_port} level admin
    log stderr format raw local0 notice

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 5s
    timeout server 5s

frontend tls
    bind 127.0.0.1:{self.port} ssl crt {crt}
    http-request return status 200 content-type text/plain string ok
""")

    @property
    def tcp_socket(self) -> str:
        return f"127.0.0.1:{self.stats_port}"

    def start(self) -> "HAProxy":
        self.log = self.dir / "stdout.log"  # -db: HAProxy's alerts and warnings go to stderr
        self._popen([self.bin, "-f", str(self.conf), "-db"])
        return self


class Apache(Server):
    """Stock apache2 with mod_ssl stapling, its OCSP requests forced to ``ocsp_url``."""

    MODULES = ("mpm_event", "authz_core", "socache_shmcb", "ssl")

    def __init__(self, directory: Path, site: TLSSite, ocsp_url: str, *, cache_timeout: int = 1,
                 return_errors: bool = False) -> None:
        super().__init__("httpd", directory, free_port())
        self.bin = binary("apache2")
        self.site = site
        self.ocsp_url = ocsp_url
        self.cache_timeout = cache_timeout
        self.conf = directory / "httpd.conf"
        run = directory / "run"
        run.mkdir(exist_ok=True)
        loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in self.MODULES)
        user = "User www-data\nGroup www-data\n" if run_as_root() else ""
        self.conf.write_text(f"""\
ServerRoot {directory}
{loads}
{user}ServerName localhost
PidFile {directory}/httpd.pid
DefaultRuntimeDir {run}
ErrorLog {self.log}
LogLevel warn ssl:info
Listen 127.0.0.1:{self.port}
DocumentRoot {directory}
StartServers 1
ServerLimit 1
ThreadsPerChild 8
MaxRequestWorkers 8
MinSpareThreads 1
MaxSpareThreads 8
SSLSessionCache none

SSLStaplingCache shmcb:{run}/stapling(65536)
<VirtualHost 127.0.0.1:{self.port}>
    ServerName localhost
    SSLEngine on
    SSLCertificateFile {site.fullchain}
    SSLCertificateKeyFile {site.key}
    SSLUseStapling on
    SSLStaplingForceURL {ocsp_url}
    SSLStaplingReturnResponderErrors {"on" if return_errors else "off"}
    SSLStaplingFakeTryLater off
    SSLStaplingStandardCacheTimeout {cache_timeout}
    SSLStaplingErrorCacheTimeout {cache_timeout}
    SSLStaplingResponderTimeout 5
</VirtualHost>
""")

    def start(self) -> "Apache":
        if not (APACHE_MODULES / "mod_ssl.so").exists():
            pytest.skip("mod_ssl is not installed")
        self._popen([self.bin, "-f", str(self.conf), "-DFOREGROUND"])
        return self


class Serve:
    """`ocspstaple serve --listen 127.0.0.1:0 ARGS`, its port read from its stderr."""

    LISTENING = re.compile(r"ocspstaple serve: listening on http://127\.0\.0\.1:(\d+)/")

    def __init__(self, directory: Path, *args: str | Path) -> None:
        self.dir = directory
        self.args = [str(a) for a in args]
        self.log = directory / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = START_TIMEOUT) -> "Serve":
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ocspstaple", "serve", "--listen", "127.0.0.1:0", *self.args],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=clean_env(), cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.LISTENING.search(self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                addrs = listening_sockets(self.proc.pid)
                assert addrs == {f"127.0.0.1:{self.port}"}, f"ocspstaple serve listens on {addrs}"
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"ocspstaple serve did not say it listens:\n{tail(self.log)}")

    def requests(self) -> int:
        """OCSP requests answered so far, as logged with -vv (one "<client> POST|GET: ..." line each)."""
        return len(re.findall(r"^.*\b(?:POST|GET): ", self.log.read_text(errors="replace"), re.M))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc)
        return self.proc.returncode


# -- every process a test started is stopped at teardown, whatever the test did -------

class Started:
    """What a test started; stopped in reverse order at teardown, by PID."""

    def __init__(self) -> None:
        self.items: list[Server | Serve] = []

    def __call__(self, item):  # type: ignore[no-untyped-def]
        self.items.append(item)
        return item.start()

    def stop_all(self) -> None:
        for item in reversed(self.items):
            item.stop()


def started_fixture() -> Iterator[Started]:
    """The body of the ``started`` fixture: ``yield from started_fixture()``."""
    s = Started()
    try:
        yield s
    finally:
        s.stop_all()
