"""The units run the README's hooks inside their own sandbox.

systemd is not PID 1 here (CI, containers), so each unit's file-system
sandbox is rehearsed by tests/sandbox.py: read-only everything per
ProtectSystem=strict, writable binds per the unit's own ReadWritePaths= and
StateDirectory= (parsed from the file, so the test follows the unit and its
drop-ins), a capability bounding set per CapabilityBoundingSet=.

The paths are the real ones (/etc/nginx, /run/nginx.pid, /var/log/nginx,
/etc/haproxy, /etc/letsencrypt ...), on a "machine" the test builds: a mount
namespace whose /etc, /var and /run are overlays, so the host is never
touched.  nginx and HAProxy run on that machine (outside the unit's sandbox,
as their own services would), on 127.0.0.1.

One stand-in: without systemd, `systemctl reload nginx` cannot run, so the
hooks run `nginx -s reload` (what Debian's nginx.service runs for a reload)
inside the sandbox, which needs no more than `nginx -t` does.

Each working case has a twin where the unit lacks what it needs, and fails.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Run
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from pki import CA, DAY, Issued
from responder import Reply, Responder
from sandbox import Unit
from servers import (
    HAProxy,
    Nginx,
    Started,
    binary,
    free_port,
    read_staple,
    s_client,
    started_fixture,
    stop_process,
    wait_stapled,
)
from test_certbot import Lineage, add_version

SYSTEMD = ROOT / "contrib" / "systemd"
SANDBOX = Path(__file__).with_name("sandbox.py")
PROGRAM = "/usr/local/bin/ocspstaple"
STAND_IN = {"systemctl reload nginx": "nginx -s reload"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root (CI runs as root)"),
    pytest.mark.skipif(any(shutil.which(c) is None for c in ("unshare", "nsenter", "setpriv", "mount")),
                       reason="util-linux's unshare, nsenter, setpriv and mount are needed"),
]


def readme_dropin(name: str) -> str:
    """The drop-in the README shows for /etc/systemd/system/ocspstaple.service.d/NAME."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```ini\n(.*?)```", text, re.S):
        if block.startswith(f"# /etc/systemd/system/ocspstaple.service.d/{name}\n"):
            return block
    raise AssertionError(f"the README shows no drop-in {name}")


def stand_in(text: str) -> str:
    for real, local in STAND_IN.items():
        text = text.replace(real, local)
    return text


class Machine:
    """A mount namespace with overlays on /etc, /var, /run and /srv: the real paths, the host untouched.

    Write only below those four (``path`` checks it).
    """

    OVERLAID = ("/etc/", "/var/", "/run/", "/srv/")
    SETUP = """
mount -t tmpfs tmpfs /mnt
for d in etc var run srv; do
    mkdir -p /mnt/$d.upper /mnt/$d.work
    mount -t overlay overlay -o lowerdir=/$d,upperdir=/mnt/$d.upper,workdir=/mnt/$d.work /$d
done
echo ready
exec sleep 600
"""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "--", "sh", "-euc", self.SETUP],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "ready\n", f"the machine's namespace did not come up: {line!r}"

    def path(self, p: str) -> Path:
        assert p.startswith(self.OVERLAID), f"{p} is not on an overlay: it would be the host's"
        return Path(f"/proc/{self.proc.pid}/root{p}")

    def write(self, p: str, data: str | bytes, mode: int = 0o644) -> None:
        target = self.path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)

    def enter(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--", *argv]

    def stop(self) -> None:
        stop_process(self.proc)

    def unit_argv(self, unit: Unit) -> list[str]:
        """The command that runs the unit's ExecStart in the unit's sandbox on
        this machine, with this checkout's program."""
        argv = unit.exec_start()
        assert argv[0] == PROGRAM, argv
        program = [sys.executable, "-m", "ocspstaple"]
        keep = sorted({str(ROOT), sys.prefix, sys.base_prefix})
        spec = unit.spec(keep, {"PYTHONPATH": str(ROOT)})
        return self.enter("unshare", "-m", "--propagation", "private", "--", sys.executable,
                          str(SANDBOX), json.dumps(spec), "--", *program, *(stand_in(a) for a in argv[1:]))

    def run_unit(self, unit: Unit, *, timeout: float = 60) -> Run:
        """The unit's ExecStart in the unit's sandbox on this machine, to its end."""
        p = subprocess.run(self.unit_argv(unit), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return Run(p.returncode, p.stdout, p.stderr)


class MachineNginx(Nginx):
    """nginx as Debian runs it (pid /run/nginx.pid, logs in /var/log/nginx), one server per site."""

    def __init__(self, machine: Machine, directory: Path, sites: dict[str, tuple[str, str, str]]) -> None:
        # sites: name -> (fullchain, key, staple), paths on the machine
        self.ports = {name: free_port() for name in sites}
        super(Nginx, self).__init__("nginx", directory, next(iter(self.ports.values())))
        self.machine = machine
        self.bin = binary("nginx")
        self.log = machine.path("/var/log/nginx/error.log")
        servers = "".join(f"""
    server {{
        listen 127.0.0.1:{self.ports[name]} ssl;
        server_name localhost;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_stapling on;
        ssl_stapling_file {staple};
        location / {{ return 200 "ok\\n"; }}
    }}""" for name, (chain, key, staple) in sites.items())
        machine.write("/etc/nginx/nginx.conf", f"""\
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events {{ worker_connections 64; }}
http {{
    access_log /var/log/nginx/access.log;{servers}
}}
""")
        for log in ("error.log", "access.log"):  # as Debian's package leaves them
            machine.write(f"/var/log/nginx/{log}", "", 0o640)
            shutil.chown(machine.path(f"/var/log/nginx/{log}"), "www-data", "adm")

    def start(self) -> "MachineNginx":
        self._popen(self.machine.enter(self.bin, "-g", "daemon off;"))
        return self


class MachineHAProxy(HAProxy):
    """HAProxy with its admin socket where Debian has it, /run/haproxy/admin.sock."""

    def __init__(self, machine: Machine, directory: Path, crt: str) -> None:
        super(HAProxy, self).__init__("haproxy", directory, free_port())
        self.machine = machine
        self.bin = binary("haproxy")
        machine.write("/etc/haproxy/haproxy.cfg", f"""\
global
    stats socket /run/haproxy/admin.sock mode 660 level admin
    log stderr format raw local0 notice
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend tls
    bind 127.0.0.1:{self.port} ssl crt {crt}
    http-request return status 200 content-type text/plain string ok
""")
        self.machine.path("/run/haproxy").mkdir(exist_ok=True)

    def start(self) -> "MachineHAProxy":
        self.log = self.dir / "stdout.log"
        self._popen(self.machine.enter(self.bin, "-f", "/etc/haproxy/haproxy.cfg", "-db"))
        return self


# -- the world: a CA, a responder answering for every leaf, old staples ---------------

class World:
    def __init__(self, machine: Machine, ca: CA, responder: Responder) -> None:
        self.machine = machine
        self.ca = ca
        self.responder = responder
        self.leaves: dict[int, Issued] = {}
        responder.reply_for = self._answer

    def _answer(self, req) -> Reply:
        leaf = self.leaves.get(req.serial_number) if req is not None else None
        if leaf is None:
            return Reply(b"", status=404)
        return Reply(self.ca.respond(leaf.cert))

    def leaf(self) -> Issued:
        leaf = self.ca.issue("localhost", ocsp_urls=(self.responder.url,))
        self.leaves[leaf.cert.serial_number] = leaf
        return leaf

    def old_staple(self, leaf: Issued) -> bytes:
        """Valid, but past half its life: due for a refresh."""
        this = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - 3 * DAY
        return self.ca.respond(leaf.cert, this_update=this, next_update=this + 4 * DAY)

    def nginx_site(self, name: str) -> tuple[str, str, str]:
        """cert, issuer and key under /etc/ssl/NAME, an old staple at /etc/nginx/ocsp/NAME.der."""
        leaf = self.leaf()
        m = self.machine
        m.write(f"/etc/ssl/{name}/cert.pem", leaf.pem)
        m.write(f"/etc/ssl/{name}/issuer.pem", self.ca.pem)
        m.write(f"/etc/ssl/{name}/fullchain.pem", leaf.pem + self.ca.pem)
        m.write(f"/etc/ssl/{name}/key.pem", leaf.key_pem, 0o600)
        m.write(f"/etc/nginx/ocsp/{name}.der", self.old_staple(leaf))
        return f"/etc/ssl/{name}/fullchain.pem", f"/etc/ssl/{name}/key.pem", f"/etc/nginx/ocsp/{name}.der"


@pytest.fixture
def machine():
    m = Machine()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def world(machine, ca, responder) -> World:
    return World(machine, ca, responder)


@pytest.fixture
def servers():
    yield from started_fixture()


def base_unit(*dropins: str, name: str = "ocspstaple.service") -> Unit:
    return Unit.parse((SYSTEMD / name).read_text(), *dropins)


def without_rw(unit: Unit, path: str) -> Unit:
    """The unit with one ReadWritePaths= entry removed (the twin's unit)."""
    settings = dict(unit.settings)
    words = [w for w in unit.words("ReadWritePaths") if w.lstrip("-") != path]
    assert len(words) < len(unit.words("ReadWritePaths")), f"the unit has no ReadWritePaths={path}"
    settings["ReadWritePaths"] = [" ".join(words)]
    return Unit(settings)


def nginx_and_haproxy(world: World, tmp_path: Path, servers: Started) -> tuple[MachineNginx, MachineHAProxy]:
    m = world.machine
    www = world.nginx_site("www")
    nginx = MachineNginx(m, tmp_path, {"www": www})
    hleaf = world.leaf()
    m.write("/etc/haproxy/certs/site.pem", hleaf.pem + world.ca.pem + hleaf.key_pem, 0o600)
    m.write("/etc/haproxy/certs/site.pem.ocsp", world.old_staple(hleaf))
    (tmp_path / "haproxy").mkdir()
    haproxy = MachineHAProxy(m, tmp_path / "haproxy", "/etc/haproxy/certs/site.pem")
    m.path("/var/lib/prometheus/node-exporter").mkdir(parents=True, exist_ok=True)
    m.write("/etc/ocspstaple.toml", stand_in("""\
[defaults]
deploy_hook = "systemctl reload nginx"
nginx_test = true
state_dir = "/var/lib/ocspstaple"
metrics_file = "/var/lib/prometheus/node-exporter/ocspstaple.prom"

[staple.shop]
cert = "/etc/haproxy/certs/site.pem"
haproxy_socket = "/run/haproxy/admin.sock"

[staple.www]
cert = "/etc/ssl/www/cert.pem"
issuer = "/etc/ssl/www/issuer.pem"
output = "/etc/nginx/ocsp/www.der"
"""))
    servers(nginx)
    servers(haproxy)
    return nginx, haproxy


def test_the_timer_unit_reloads_nginx_after_nginx_t_and_pushes_to_haproxy(world, tmp_path, servers):
    m = world.machine
    nginx, haproxy = nginx_and_haproxy(world, tmp_path, servers)
    old = nginx.workers()
    before = read_staple(m.path("/etc/nginx/ocsp/www.der"))
    run = m.run_unit(base_unit())
    assert run.code == 0, run.err
    nginx.wait_reloaded(old)
    wait_stapled(nginx.ports["www"], read_staple(m.path("/etc/nginx/ocsp/www.der")), timeout=10)
    wait_stapled(haproxy.port, read_staple(m.path("/etc/haproxy/certs/site.pem.ocsp")), timeout=10)
    assert read_staple(m.path("/etc/nginx/ocsp/www.der")).this_update > before.this_update
    # state_dir and metrics_file from the README's config: writable in the sandbox
    assert list(m.path("/var/lib/ocspstaple").glob("*.json")), "no state record"
    assert "ocspstaple_run_exit_code 0" in m.path("/var/lib/prometheus/node-exporter/ocspstaple.prom").read_text()


def test_twin_without_a_writable_nginx_pid_file_nginx_t_fails_and_nothing_reloads(world, tmp_path, servers):
    """The unit of issue 14: `nginx -t` fails on a read-only /run, the hook never runs."""
    m = world.machine
    nginx, _ = nginx_and_haproxy(world, tmp_path, servers)
    before = s_client(nginx.ports["www"])
    run = m.run_unit(without_rw(base_unit(), "/run/nginx.pid"))
    assert run.code == 1, run.err
    assert "/run/nginx.pid" in run.err and "Read-only file system" in run.err, run.err
    assert "Traceback" not in run.err
    assert s_client(nginx.ports["www"]).this_update == before.this_update, "nginx was reloaded anyway"


def test_twin_without_cap_dac_override_nginx_t_cannot_open_nginx_logs(world, tmp_path, servers):
    m = world.machine
    nginx_and_haproxy(world, tmp_path, servers)
    unit = base_unit()
    caps = [c for c in unit.words("CapabilityBoundingSet") if c != "CAP_DAC_OVERRIDE"]
    assert len(caps) < len(unit.words("CapabilityBoundingSet"))
    run = m.run_unit(Unit({**unit.settings, "CapabilityBoundingSet": [" ".join(caps)]}))
    assert run.code == 1, run.err
    assert "/var/log/nginx" in run.err and "Permission denied" in run.err, run.err


def certbot_world(world: World, tmp_path: Path, servers: Started) -> MachineNginx:
    m = world.machine
    base = m.path("/etc/letsencrypt")
    lineage = Lineage("shop.example.test", base, ("cert", "chain", "fullchain", "privkey"))
    leaf = world.leaf()
    add_version(lineage, leaf, world.ca)
    live = "/etc/letsencrypt/live/shop.example.test"
    m.write("/etc/nginx/ocsp/shop.example.test.der", world.old_staple(leaf))
    nginx = MachineNginx(m, tmp_path, {"shop": (f"{live}/fullchain.pem", f"{live}/privkey.pem",
                                                "/etc/nginx/ocsp/shop.example.test.der")})
    servers(nginx)
    return nginx


def test_the_certbot_drop_in_refreshes_every_lineage_and_reloads_nginx(world, tmp_path, servers):
    m = world.machine
    nginx = certbot_world(world, tmp_path, servers)
    old = nginx.workers()
    run = m.run_unit(base_unit(readme_dropin("certbot.conf")))
    assert run.code == 0, run.err
    nginx.wait_reloaded(old)
    wait_stapled(nginx.ports["shop"], read_staple(m.path("/etc/nginx/ocsp/shop.example.test.der")), timeout=10)


def test_an_own_output_directory_needs_the_readme_drop_in(world):
    m = world.machine
    world.nginx_site("own")
    m.path("/srv/tls/ocsp").mkdir(parents=True)
    m.write("/etc/ocspstaple.toml", """\
[staple.own]
cert = "/etc/ssl/own/cert.pem"
issuer = "/etc/ssl/own/issuer.pem"
output = "/srv/tls/ocsp/own.der"
""")
    twin = m.run_unit(base_unit())
    assert twin.code == 2, twin.err
    assert "/srv/tls/ocsp" in twin.err and "Read-only file system" in twin.err, twin.err
    assert not m.path("/srv/tls/ocsp/own.der").exists()
    run = m.run_unit(base_unit(readme_dropin("output.conf")))
    assert run.code == 0, run.err
    assert read_staple(m.path("/srv/tls/ocsp/own.der")).cert_status == "good"



# -- the serve unit ----------------------------------------------------------------------

def serve_unit(port: int, *, exec_start: str | None = None) -> Unit:
    text = (SYSTEMD / "ocspstaple-serve.service").read_text().replace("127.0.0.1:8089", f"127.0.0.1:{port}")
    if exec_start is not None:
        text = re.sub(r"^ExecStart=.*$", f"ExecStart={exec_start}", text, flags=re.M)
    return Unit.parse(text)


def test_the_serve_unit_answers_from_the_staples_in_its_sandbox(world):
    m = world.machine
    cert, _, staple = world.nginx_site("web")
    m.write("/etc/ocspstaple.toml", f'[staple.web]\ncert = "{cert}"\noutput = "{staple}"\n')
    port = free_port()
    proc = subprocess.Popen(m.unit_argv(serve_unit(port)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"listening on http://127.0.0.1:{port}/" in line, line + proc.stderr.read()
        leaf = next(iter(world.leaves.values()))
        req = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, world.ca.cert, hashes.SHA1()).build()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/", body=req.public_bytes(serialization.Encoding.DER),
                     headers={"Content-Type": "application/ocsp-request"})
        answer = conn.getresponse().read()
        conn.close()
        assert answer == m.path(staple).read_bytes()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_twin_the_serve_unit_can_write_nothing(world):
    """The serve unit's sandbox is real: what refresh needs (a writable staple
    directory) it does not grant, and the same refresh fails inside it."""
    m = world.machine
    cert, _, staple = world.nginx_site("web")
    m.write("/etc/ocspstaple.toml", f'[staple.web]\ncert = "{cert}"\noutput = "{staple}"\n')
    unit = serve_unit(free_port(), exec_start=f"{PROGRAM} refresh --config /etc/ocspstaple.toml")
    run = m.run_unit(unit)
    # The staple is still valid: kept (1), and nothing written.
    assert run.code == 1 and "Read-only file system" in run.err, run.err
    assert m.run_unit(base_unit()).code == 0  # the timer's unit refreshes the same staple
