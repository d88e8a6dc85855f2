#!/usr/bin/env python3
"""Benchmark: thousands of certificates in one run, on loopback.

Builds N certificates under a throwaway EC CA, starts a local OCSP responder
on 127.0.0.1 that answers every request after a fixed latency (50 ms), and
measures, for each N:

* a due run over all N through the real CLI (``ocspstaple refresh --config``):
  wall time, requests the responder saw, peak concurrency it saw, peak RSS;
  next to the network bound ``ceil(N / c) * latency`` where ``c`` is the
  effective concurrency against the responder: min(jobs, per-host cap);
* a no-op run over the same N (every staple fresh): wall time (the median of
  5 runs), requests (0); and once more with an empty --state-dir (no
  verdicts to recall: every staple checked in full, as on the first run
  after an upgrade);
* a sequential baseline: a shell loop of ``openssl ocsp`` over the same N
  (for N <= --openssl-max, 1,000 by default);
* optionally (``--wide``) a due run with ``--jobs 32`` over certificates
  spread across 4 responder origins (4 ports, i.e. 4 CAs), where the
  per-host cap no longer binds;
* ``ocspstaple --help`` start-up time;
* ``--fleet`` (alone): 20 edges x 1,000 certificates (``--fleet-edges``,
  ``--fleet-certs``), each edge one ``refresh --config`` with its own outputs
  and state directory, run one after another (each stands for a host of its
  own), first asking the CA directly, then with a relay (``refresh`` against
  the CA, then ``serve`` on 127.0.0.1) first and ``aia`` after: the requests
  the CA saw and each edge's wall time (median, slowest).

Run it with the project's venv::

    .venv/bin/python benchmarks/run.py                 # 100, 1,000, 10,000
    .venv/bin/python benchmarks/run.py --sizes 100,1000 --wide
    .venv/bin/python benchmarks/run.py --fleet         # 20 edges x 1,000, a few minutes

It prints a table and writes the numbers to benchmarks/results.json.
"""
from __future__ import annotations

import argparse
import base64
import compileall
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from ocspstaple.fetch import MAX_PER_HOST  # noqa: E402
from ocspstaple.run import DEFAULT_JOBS  # noqa: E402

UTC = dt.timezone.utc
PEM = serialization.Encoding.PEM
NOOP_REPEAT = 5
#: due runs (each on its own copy of the tree) whose median is reported, for N up to 1,000
DUE_REPEAT = 3


# -- a fast PKI ---------------------------------------------------------------

class Fleet:
    """A CA, N leaf certificates (one shared leaf key: key generation is not
    what is measured) and a precomputed signed OCSP response for each."""

    def __init__(self, n: int, urls: list[str], *, now: dt.datetime) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocspstaple Benchmark CA")])
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(1)
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key())
        self.certs: list[x509.Certificate] = []
        self.urls: list[str] = []
        for i in range(n):
            url = urls[i % len(urls)]
            cn = f"host{i:05d}.bench.test"
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(name)
                .public_key(leaf_key.public_key())
                .serial_number(0x100000 + i)
                .not_valid_before(now - dt.timedelta(days=10))
                .not_valid_after(now + dt.timedelta(days=90))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(aki, critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
                .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]), critical=False)
                .sign(self.ca_key, hashes.SHA256())
            )
            self.certs.append(cert)
            self.urls.append(url)
        this_update = now.replace(microsecond=0) - dt.timedelta(hours=1)
        self.responses: dict[int, bytes] = {}
        for cert in self.certs:
            self.responses[cert.serial_number] = (
                ocsp.OCSPResponseBuilder()
                .add_response(cert=cert, issuer=self.ca, algorithm=hashes.SHA1(),
                              cert_status=ocsp.OCSPCertStatus.GOOD, this_update=this_update,
                              next_update=this_update + dt.timedelta(days=4),
                              revocation_time=None, revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.NAME, self.ca)
                .sign(self.ca_key, hashes.SHA256())
                .public_bytes(serialization.Encoding.DER)
            )

    def write(self, root: Path) -> Path:
        """Write ca.pem, certs/NNNNN.pem, a config with one [staple] per certificate; return the config."""
        (root / "certs").mkdir(parents=True)
        (root / "ca.pem").write_bytes(self.ca.public_bytes(PEM))
        lines = ["[defaults]", "timeout = 10", ""]
        for i, cert in enumerate(self.certs):
            (root / "certs" / f"{i:05d}.pem").write_bytes(cert.public_bytes(PEM))
            lines += [f"[staple.c{i:05d}]", f'cert = "certs/{i:05d}.pem"', 'issuer = "ca.pem"', ""]
        config = root / "ocspstaple.toml"
        config.write_text("\n".join(lines))
        return config


# -- a loopback responder with a fixed latency ----------------------------------

class _Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many clients connect at once; the default backlog is 5


class Responder:
    """Answers each OCSP request (GET or POST) with the precomputed response
    for its serial after ``latency`` seconds.  Counts requests and the
    highest number answered at once."""

    def __init__(self, latency: float, ports: int = 1) -> None:
        self.latency = latency
        self.responses: dict[int, bytes] = {}
        self.lock = threading.Lock()
        self.requests = self.active = self.max_active = 0
        responder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY,
            # Nagle plus the client's delayed ACK add 40 ms to every answer.
            disable_nagle_algorithm = True

            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                raw = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
                responder.answer(self, base64.b64decode(raw))

            def do_POST(self) -> None:
                responder.answer(self, self.rfile.read(int(self.headers.get("Content-Length", "0"))))

        self.servers = [_Server(("127.0.0.1", 0), Handler) for _ in range(ports)]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{s.server_address[1]}/" for s in self.servers]

    def reset(self) -> None:
        with self.lock:
            self.requests = self.max_active = 0

    def answer(self, h: BaseHTTPRequestHandler, der: bytes) -> None:
        with self.lock:
            self.requests += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        # In flight from arrival until the answer is about to be sent (as in
        # tests/responder.py: once it is out, the client's next request may
        # arrive before this thread is back from writing).
        try:
            time.sleep(self.latency)
        finally:
            with self.lock:
                self.active -= 1
        try:
            body = self.responses[ocsp.load_der_ocsp_request(der).serial_number]
            status = 200
        except (ValueError, KeyError):
            body, status = b"\x30\x03\x0a\x01\x06", 200  # unauthorized
        h.send_response(status)
        h.send_header("Content-Type", "application/ocsp-response")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


# -- measuring ------------------------------------------------------------------

def measure(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd``; its wall time, exit code and peak RSS (from wait4, this child only)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read() if p.stderr else b""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 3), "exit": p.returncode, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "stderr": err.decode(errors="replace")[-2000:],
            "stderr_lines": err.count(b"\n")}


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def compile_package() -> None:
    """Byte-compile ocspstaple as an installed copy is (pip and Debian's
    packaging compile at install time).  The CLI here runs from the source
    tree; with PYTHONDONTWRITEBYTECODE set (it is on the VM of the table)
    every run would compile ocspstaple's modules afresh: 0.07 s of CPU a run,
    which no user pays."""
    if not compileall.compile_dir(str(ROOT / "ocspstaple"), quiet=1):
        raise SystemExit("could not byte-compile ocspstaple")


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("ocspstaple")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ocspstaple"]


def openssl_loop(fleet: Fleet, root: Path, n: int) -> dict:
    """The sequential baseline: one `openssl ocsp` process per certificate."""
    listing = root / "openssl-list.txt"
    out = root / "openssl-out"
    out.mkdir(exist_ok=True)
    listing.write_text("".join(f"certs/{i:05d}.pem {fleet.urls[i]} openssl-out/{i:05d}.der\n" for i in range(n)))
    script = ('while read cert url out; do '
              'openssl ocsp -issuer ca.pem -CAfile ca.pem -cert "$cert" -url "$url" -no_nonce '
              '-respout "$out" >/dev/null 2>&1 || exit 1; done < openssl-list.txt')
    r = measure(["sh", "-c", script], cwd=root)
    r["script"] = script
    return r


def openssl_xargs(fleet: Fleet, root: Path, n: int, parallel: int = MAX_PER_HOST) -> dict:
    """The parallel baseline: ``xargs -P 8 openssl ocsp``, 8 at once as our per-host cap."""
    listing = root / "openssl-list.txt"
    out = root / "openssl-out"
    out.mkdir(exist_ok=True)
    listing.write_text("".join(f"certs/{i:05d}.pem {fleet.urls[i]} openssl-out/{i:05d}.der\n" for i in range(n)))
    script = (f'xargs -P {parallel} -L 1 sh -c \'openssl ocsp -issuer ca.pem -CAfile ca.pem -cert "$0" -url "$1" '
              '-no_nonce -respout "$2" >/dev/null 2>&1\' < openssl-list.txt')
    r = measure(["sh", "-c", script], cwd=root)
    r["script"] = script
    return r


class BlackHole:
    """A socket that listens (the kernel completes every handshake) and never answers."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"

    def close(self) -> None:
        self.sock.close()


def bench_dead(n: int, workdir: Path) -> dict:
    """A due run over ``n`` staples whose one responder is down: a black hole
    (accepts, never answers) and a closed port (refused); default options
    (--timeout 10).  Goal: at most 3 x --timeout of wall time each."""
    import socket

    out: dict = {"n": n, "timeout_s": 10.0}
    hole = BlackHole()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    try:
        for kind, url in (("black_hole", hole.url), ("closed_port", closed)):
            root = workdir / f"dead-{kind}"
            config = Fleet(n, [url], now=dt.datetime.now(UTC)).write(root)
            cmd = [*cli(), "refresh", "--config", str(config)]
            r = measure(cmd, env=cli_env())
            r["command"] = " ".join(cmd)
            out[kind] = r
    finally:
        hole.close()
    return out


def due_runs(n: int, configs: list[Path], extra: list[str], responder: Responder) -> dict:
    """A due run over each copy of the tree (every certificate fetched,
    validated, written); the run of median wall time, with every run's wall
    and CPU, and the median CPU per staple.  A due run is measured on a
    copy never run before, so each starts from nothing on disk."""
    runs = []
    for config in configs:
        responder.reset()
        r = measure([*cli(), "refresh", "--config", str(config), *extra], env=cli_env())
        r.update(requests=responder.requests, responder_max_active=responder.max_active,
                 written=sum(1 for i in range(n) if (config.parent / "certs" / f"{i:05d}.pem.ocsp").exists()))
        runs.append(r)
    due = dict(sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2])
    due.update(all_wall_s=[r["wall_s"] for r in runs], all_cpu_s=[r["cpu_s"] for r in runs],
               cpu_ms_per_staple=round(statistics.median(r["cpu_s"] for r in runs) * 1000 / n, 2),
               exit=max(r["exit"] for r in runs), requests=min(r["requests"] for r in runs))
    return due


def copies(n: int) -> int:
    """How many due runs make a median: a run of a few seconds is at the mercy of the VM's neighbours."""
    return DUE_REPEAT if n <= 1000 else 1


def bench_size(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    root = workdir / f"n{n}"
    responder = Responder(args.latency)
    try:
        t0 = time.perf_counter()
        fleet = Fleet(n, responder.urls, now=dt.datetime.now(UTC))
        responder.responses = fleet.responses
        config = fleet.write(root)
        # Every copy is written before anything is measured, and nothing is
        # deleted until the end: ext4 allocates inodes slowly beside many
        # just deleted ones (recently_deleted() in the kernel profile), which
        # charged a due run's CPU for the benchmark's own clean-up.
        spares = [fleet.write(workdir / f"n{n}-copy{k}") for k in range(1, copies(n))]
        build_s = time.perf_counter() - t0
        extra = ["--jobs", str(args.jobs)] if args.jobs else []
        cmd = [*cli(), "refresh", "--config", str(config), *extra]
        jobs = args.jobs or DEFAULT_JOBS
        conc = min(jobs, MAX_PER_HOST)
        row: dict = {"n": n, "build_s": round(build_s, 2), "jobs": jobs, "per_host_cap": MAX_PER_HOST,
                     "effective_concurrency": conc, "latency_s": args.latency,
                     "bound_s": round(math.ceil(n / conc) * args.latency, 3), "command": " ".join(cmd)}

        due = due_runs(n, [config, *spares], extra, responder)
        row["due"] = due
        row["due_vs_bound"] = round(due["wall_s"] / row["bound_s"], 2)

        # Five times, the median: a no-op run is short, and this VM is noisy.
        responder.reset()
        noops = [measure(cmd, env=cli_env()) for _ in range(NOOP_REPEAT)]
        noop = sorted(noops, key=lambda r: r["wall_s"])[len(noops) // 2]
        noop.update(requests=responder.requests, all_wall_s=[r["wall_s"] for r in noops])
        row["noop"] = noop

        # The same, with no verdicts to recall (an empty state directory):
        # every staple checked in full, as on the first run after an upgrade.
        responder.reset()
        cold = measure([*cmd, "--state-dir", str(root / "no-verdicts")], env=cli_env())
        cold.update(requests=responder.requests)
        row["noop_full_checks"] = cold

        if n <= args.openssl_max:
            responder.reset()
            base = openssl_loop(fleet, root, n)
            base.update(requests=responder.requests)
            row["openssl"] = base
            row["speedup_vs_openssl"] = round(base["wall_s"] / due["wall_s"], 1)
            responder.reset()
            par = openssl_xargs(fleet, root, n)
            par.update(requests=responder.requests)
            row["openssl_xargs"] = par
    finally:
        responder.close()

    if args.wide:
        row["wide"] = bench_wide(n, args, workdir)
    if n == args.dead:
        row["dead"] = bench_dead(n, workdir)
    return row


def bench_wide(n: int, args: argparse.Namespace, workdir: Path, origins: int = 4, jobs: int = 32) -> dict:
    """A due run with --jobs 32 over certificates spread across 4 responder origins (median of copies(n))."""
    responder = Responder(args.latency, ports=origins)
    try:
        fleet = Fleet(n, responder.urls, now=dt.datetime.now(UTC))
        responder.responses = fleet.responses
        configs = [fleet.write(workdir / f"wide{n}-copy{k}") for k in range(copies(n))]
        conc = min(jobs, origins * MAX_PER_HOST)
        r = due_runs(n, configs, ["--jobs", str(jobs)], responder)
        r.update(origins=origins, jobs=jobs, effective_concurrency=conc,
                 command=" ".join([*cli(), "refresh", "--config", str(configs[0]), "--jobs", str(jobs)]),
                 bound_s=round(math.ceil(n / conc) * args.latency, 3))
        r["vs_bound"] = round(r["wall_s"] / r["bound_s"], 2)
    finally:
        responder.close()
    return r


def bench_fleet(args: argparse.Namespace, workdir: Path) -> dict:
    """--fleet: CA requests and edge wall times without a relay, then with one."""
    n, edges = args.fleet_certs, args.fleet_edges
    root = workdir / "fleet"
    responder = Responder(args.latency)
    relay_proc = None
    try:
        fleet = Fleet(n, responder.urls, now=dt.datetime.now(UTC))
        responder.responses = fleet.responses
        fleet.write(root / "shared")

        def configs(kind: str, urls: list[str] | None) -> list[Path]:
            out = []
            for k in range(edges if kind != "relay" else 1):
                d = root / kind / f"e{k:02d}"
                d.mkdir(parents=True)
                lines = ["[defaults]", "timeout = 10", 'state_dir = "state"', ""]
                for i in range(n):
                    lines += [f"[staple.c{i:05d}]", f'cert = "{root}/shared/certs/{i:05d}.pem"',
                              f'issuer = "{root}/shared/ca.pem"', f'output = "out/{i:05d}.der"']
                    if urls:
                        lines.append("urls = [" + ", ".join(f'"{u}"' for u in urls) + "]")
                    lines.append("")
                (d / "out").mkdir()
                (d / "edge.toml").write_text("\n".join(lines))
                out.append(d / "edge.toml")
            return out

        def run_edges(paths: list[Path]) -> dict:
            runs = [measure([*cli(), "refresh", "--config", str(c)], env=cli_env()) for c in paths]
            walls = [r["wall_s"] for r in runs]
            return {"edges": len(runs), "exit_codes": sorted({r["exit"] for r in runs}),
                    "edge_wall_median_s": round(statistics.median(walls), 3), "edge_wall_max_s": max(walls),
                    "edges_total_s": round(sum(walls), 2), "ca_requests": responder.requests}

        print(f"fleet: {edges} edges x {n:,} certificates, without a relay ...", file=sys.stderr, flush=True)
        responder.reset()
        direct = run_edges(configs("direct", None))

        print("fleet: with a relay ...", file=sys.stderr, flush=True)
        responder.reset()
        relay_config = configs("relay", None)[0]
        relay_run = measure([*cli(), "refresh", "--config", str(relay_config)], env=cli_env())
        relay_requests = responder.requests
        log = open(root / "serve.log", "wb")
        relay_proc = subprocess.Popen([*cli(), "serve", "--config", str(relay_config), "--listen", "127.0.0.1:0"],
                                      env=cli_env(), stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline and relay_proc.poll() is None:
            text = (root / "serve.log").read_text(errors="replace")
            if "listening on http://127.0.0.1:" in text:
                port = int(text.split("listening on http://127.0.0.1:", 1)[1].split("/", 1)[0])
            else:
                time.sleep(0.1)
        if port is None:
            raise RuntimeError("the relay's serve did not start: " + (root / "serve.log").read_text()[-500:])
        with_relay = run_edges(configs("edges", [f"http://127.0.0.1:{port}/", "aia"]))
        with_relay["ca_requests"] -= relay_requests  # the edges' own; the relay's are below
        return {"edges": edges, "certs": n, "latency_s": args.latency, "without_relay": direct,
                "with_relay": with_relay, "relay_refresh": {"wall_s": relay_run["wall_s"], "exit": relay_run["exit"],
                                                            "ca_requests": relay_requests}}
    finally:
        if relay_proc is not None:
            relay_proc.terminate()
            relay_proc.wait(10)
        responder.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def fleet_table(f: dict) -> str:
    d, r, relay = f["without_relay"], f["with_relay"], f["relay_refresh"]
    rows = ["| fleet | CA requests | edge wall, median (s) | edge wall, slowest (s) | all edges (s) | exit codes |",
            "|---|---|---|---|---|---|",
            f"| {f['edges']} edges x {f['certs']:,}, no relay | {d['ca_requests']:,} | {d['edge_wall_median_s']} | "
            f"{d['edge_wall_max_s']} | {d['edges_total_s']} | {d['exit_codes']} |",
            f"| the same, relay first | {relay['ca_requests'] + r['ca_requests']:,} (relay {relay['ca_requests']:,}, "
            f"edges {r['ca_requests']:,}) | {r['edge_wall_median_s']} | {r['edge_wall_max_s']} | "
            f"{r['edges_total_s']} (+ relay {relay['wall_s']}) | {r['exit_codes']} |"]
    return "\n".join(rows)


def help_time(repeat: int = 7) -> dict:
    runs = [measure([*cli(), "--help"], env=cli_env())["wall_s"] for _ in range(repeat)]
    return {"median_s": round(statistics.median(runs), 3), "min_s": round(min(runs), 3), "runs": runs}


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "openssl": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
            if shutil.which("openssl") else None, "platform": platform.platform()}


def table(rows: list[dict], helpt: dict) -> str:
    head = ("| N | due run (s) | bound (s) | due/bound | requests | peak concurrency | CPU per staple (ms) "
            "| peak RSS (MB) | no-op run (s) | no-op requests | no-op, full checks (s) | openssl loop (s) | speedup "
            "| xargs -P 8 openssl (s) | speedup |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d, z, c, o, x = r["due"], r["noop"], r["noop_full_checks"], r.get("openssl"), r.get("openssl_xargs")
        base = f"| {o['wall_s']:.1f} | {r['speedup_vs_openssl']:.1f}x " if o else "| skipped | - "
        base += f"| {x['wall_s']:.2f} | {x['wall_s'] / d['wall_s']:.2f}x |" if x else "| skipped | - |"
        out.append(
            f"| {r['n']:,} | {d['wall_s']:.2f} | {r['bound_s']:.2f} | {r['due_vs_bound']:.2f}x | {d['requests']:,} "
            f"| {d['responder_max_active']} | {d['cpu_ms_per_staple']:.2f} | {d['peak_rss_mb']:.0f} "
            f"| {z['wall_s']:.2f} | {z['requests']} | {c['wall_s']:.2f} " + base
        )
    wide = [r for r in rows if "wide" in r]
    if wide:
        out += ["", "| N (4 origins, --jobs 32) | due run (s) | bound (s) | due/bound | requests | peak concurrency "
                "| CPU per staple (ms) | peak RSS (MB) | speedup vs openssl loop |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in wide:
            w = r["wide"]
            sp = f"{r['openssl']['wall_s'] / w['wall_s']:.1f}x" if "openssl" in r else "-"
            out.append(f"| {r['n']:,} | {w['wall_s']:.2f} | {w['bound_s']:.2f} | {w['vs_bound']:.2f}x "
                       f"| {w['requests']:,} | {w['responder_max_active']} | {w['cpu_ms_per_staple']:.2f} "
                       f"| {w['peak_rss_mb']:.0f} | {sp} |")
    dead = [r["dead"] for r in rows if "dead" in r]
    if dead:
        out += ["", "| N, one responder down (--timeout 10) | black hole: wall (s) | lines | exit "
                "| closed port: wall (s) | lines | exit |", "|---|---|---|---|---|---|---|"]
        for d in dead:
            b, c = d["black_hole"], d["closed_port"]
            out.append(f"| {d['n']:,} | {b['wall_s']:.2f} | {b['stderr_lines']} | {b['exit']} "
                       f"| {c['wall_s']:.2f} | {c['stderr_lines']} | {c['exit']} |")
    out += ["", f"`ocspstaple --help`: median {helpt['median_s']:.3f} s, min {helpt['min_s']:.3f} s "
            f"over {len(helpt['runs'])} runs"]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="comma-separated N (default: 100,1000,10000)")
    ap.add_argument("--latency", type=float, default=0.05, help="responder latency per request, s (default 0.05)")
    ap.add_argument("--jobs", type=int, default=None, help=f"pass --jobs (default: the CLI's, {DEFAULT_JOBS})")
    ap.add_argument("--openssl-max", type=int, default=1000,
                    help="run the openssl loop only for N up to this (default 1000)")
    ap.add_argument("--wide", action="store_true",
                    help="also a due run with --jobs 32 over 4 responder origins")
    ap.add_argument("--dead", type=int, default=1000,
                    help="at this N, also runs whose responder is down (black hole, closed port); 0: none")
    ap.add_argument("--json", type=Path, default=HERE / "results.json", help="where to write the numbers")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--fleet", action="store_true",
                    help="only the fleet benchmark: edges x certificates, with and without a relay")
    ap.add_argument("--fleet-edges", type=int, default=20, help="edges in --fleet (default 20)")
    ap.add_argument("--fleet-certs", type=int, default=1000, help="certificates per edge in --fleet (default 1000)")
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    compile_package()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ocspstaple-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.fleet:
        f = bench_fleet(args, workdir)
        f["machine"] = machine()
        f["command"] = " ".join([Path(sys.executable).name, *sys.argv])
        out = args.json if args.json != HERE / "results.json" else HERE / "fleet-results.json"
        out.write_text(json.dumps(f, indent=2) + "\n")
        print(fleet_table(f))
        print(f"\nnumbers: {out}")
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        ok = {0} == set(f["without_relay"]["exit_codes"]) == set(f["with_relay"]["exit_codes"])
        return 0 if ok and f["with_relay"]["ca_requests"] == 0 else 1
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"N = {n:,} ...", file=sys.stderr, flush=True)
        rows.append(bench_size(n, args, workdir))
        r = rows[-1]
        print(f"  due {r['due']['wall_s']} s (bound {r['bound_s']} s, exit {r['due']['exit']}, "
              f"{r['due']['requests']} requests), no-op {r['noop']['wall_s']} s "
              f"({r['noop']['requests']} requests)"
              + (f", openssl {r['openssl']['wall_s']} s" if "openssl" in r else ""), file=sys.stderr, flush=True)
        for k in ("due", "noop"):
            if r[k]["exit"] != 0:
                print(f"  {k} run exited {r[k]['exit']}: {r[k]['stderr'][-500:]}", file=sys.stderr)
    helpt = help_time()
    result = {"machine": machine(), "latency_s": args.latency, "per_host_cap": MAX_PER_HOST,
              "default_jobs": DEFAULT_JOBS, "rows": rows, "help": helpt,
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    print(f"\nMachine: {m['nproc']} x {m['cpu']}, Python {m['python']}, {m['openssl']}")
    print(f"Latency {args.latency * 1000:.0f} ms per request; jobs {rows[0]['jobs'] if rows else '-'}, "
          f"per-host cap {MAX_PER_HOST}\n")
    print(table(rows, helpt))
    print(f"\nnumbers: {args.json}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = [r["n"] for r in rows if r["due"]["exit"] != 0 or r["noop"]["exit"] != 0 or r["noop"]["requests"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
