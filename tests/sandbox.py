"""A systemd unit's sandbox, rehearsed without systemd as PID 1 (CI, containers).

``Unit`` reads the [Service] settings of a unit file and its drop-ins as
systemd combines them.  ``python sandbox.py SPEC -- COMMAND...``, run as root
inside a fresh mount namespace (``unshare -m --propagation private``), builds
what these settings build and then executes COMMAND in it:

- PrivateTmp=yes: empty /tmp and /var/tmp;
- ReadWritePaths= (a "-" prefix: skipped when missing; otherwise a missing
  path fails, as systemd fails the unit with 226/NAMESPACE) and
  StateDirectory=NAME (/var/lib/NAME, created): bound onto themselves, writable;
- ProtectHome=yes: /home, /root and /run/user empty and read-only;
- ProtectSystem=strict: every other mount read-only, but /proc, /sys and /dev;
- ProtectProc= and ProcSubset=: a new /proc with hidepid= and subset=;
- NoNewPrivileges=yes and CapabilityBoundingSet=: setpriv, which leaves root
  only the listed capabilities at exec;
- UMask=, and systemd's clean environment (PATH only).

What it does not rehearse: system call filters, address families, device
policy and the kernel knobs (those need systemd itself).

A test's own interpreter and checkout (``keep`` in SPEC) stay readable even
under a masked home directory: they stand in for /opt/ocspstaple, which the
unit sees read-only.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
API = ("/proc", "/sys", "/dev")
HOMES = ("/home", "/root", "/run/user")


@dataclass(frozen=True)
class Unit:
    """The [Service] settings of a unit and its drop-ins, in order."""

    settings: dict[str, list[str]]

    @classmethod
    def parse(cls, *texts: str) -> "Unit":
        settings: dict[str, list[str]] = {}
        for text in texts:
            section = ""
            for raw in text.splitlines():
                line = raw.strip()
                if not line or line.startswith(("#", ";")):
                    continue
                if line.startswith("["):
                    section = line
                    continue
                if section != "[Service]" or "=" not in line:
                    continue
                key, value = (s.strip() for s in line.split("=", 1))
                if value == "":
                    settings[key] = []  # an empty assignment resets a list, as in a drop-in
                else:
                    settings.setdefault(key, []).append(value)
        return cls(settings)

    def last(self, key: str, default: str = "") -> str:
        return self.settings.get(key, [default])[-1] if self.settings.get(key) else default

    def words(self, key: str) -> list[str]:
        return [w for value in self.settings.get(key, []) for w in value.split()]

    def exec_start(self) -> list[str]:
        starts = self.settings.get("ExecStart", [])
        assert len(starts) == 1, f"one ExecStart= expected for a oneshot, got {starts}"
        return shlex.split(starts[0].lstrip("-@:+!|"))

    def spec(self, keep: list[str], env: dict[str, str]) -> dict:
        """What sandbox.py builds, as JSON-able data."""
        rw = self.words("ReadWritePaths")
        rw += [f"/var/lib/{name}" for name in self.words("StateDirectory")]
        return {
            "private_tmp": self.last("PrivateTmp") in ("yes", "true", "1"),
            "protect_home": self.last("ProtectHome") in ("yes", "true", "1"),
            "protect_system": self.last("ProtectSystem"),
            "state": [f"/var/lib/{name}" for name in self.words("StateDirectory")],
            "rw": rw,
            "protect_proc": self.last("ProtectProc", "default"),
            "proc_subset": self.last("ProcSubset", "all"),
            "no_new_privs": self.last("NoNewPrivileges") in ("yes", "true", "1"),
            "caps": self.words("CapabilityBoundingSet") if "CapabilityBoundingSet" in self.settings else None,
            "umask": self.last("UMask", "0022"),
            "keep": keep,
            "env": env,
        }


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            points.append(mp.encode().decode("unicode_escape") if "\\" in mp else mp)
    return points


def build(spec: dict) -> None:
    masked = [h for h in HOMES if spec["protect_home"] and os.path.isdir(h)]
    if spec["private_tmp"]:
        masked += ["/tmp", "/var/tmp"]
    # The test's interpreter and checkout (``keep``) under a path the unit
    # masks (a home; /tmp under PrivateTmp, where a CI clone may live) are
    # set aside on /dev/shm, then bound back in over the empty mount.
    stash = {}
    for i, path in enumerate(p for p in spec["keep"] if any(under(p, h) for h in masked)):
        where = f"/dev/shm/.sandbox-keep-{os.getpid()}-{i}"
        os.makedirs(where)
        mount("--bind", path, where)
        stash[path] = where
    if spec["private_tmp"]:
        for d in ("/tmp", "/var/tmp"):
            mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", d)
    writable = []
    for entry in spec["rw"]:
        optional = entry.startswith("-")
        path = entry.lstrip("-+")
        if path in spec["state"]:
            os.makedirs(path, mode=0o755, exist_ok=True)
        if not os.path.lexists(path):
            if optional:
                continue
            sys.exit(f"sandbox: ReadWritePaths={path} does not exist (systemd: 226/NAMESPACE)")
        mount("--bind", path, path)
        writable.append(path)
    for home in masked:
        if home not in ("/tmp", "/var/tmp"):
            mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", home)
    for path, where in stash.items():
        os.makedirs(path, exist_ok=True)
        mount("--bind", where, path)
        subprocess.run(["umount", where], check=True)
        os.rmdir(where)
    if spec["protect_system"] == "strict":
        for mp in mount_points():
            if any(under(mp, top) for top in API) or mp in ("/tmp", "/var/tmp"):
                continue
            if any(under(mp, w) for w in writable):
                continue
            if not os.path.lexists(mp):
                continue  # over-mounted by a parent mount: nothing to reach there
            mount("-o", "remount,bind,ro", mp)
    proc_opts = []
    if spec["protect_proc"] != "default":
        proc_opts.append(f"hidepid={spec['protect_proc']}")
    if spec["proc_subset"] != "all":
        proc_opts.append(f"subset={spec['proc_subset']}")
    if proc_opts:
        mount("-t", "proc", "-o", ",".join(proc_opts), "proc", "/proc")


def setpriv(spec: dict) -> list[str]:
    argv = ["setpriv"]
    if spec["no_new_privs"]:
        argv.append("--no-new-privs")
    if spec["caps"] is not None:
        caps = ",".join(["-all", *("+" + c.lower().removeprefix("cap_") for c in spec["caps"])])
        argv += ["--inh-caps=-all", f"--bounding-set={caps}"]
    return [*argv, "--"]


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    assert argv[1] == "--", argv
    command = argv[2:]
    build(spec)
    os.umask(int(spec["umask"], 8))
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", **spec["env"]}
    full = [*setpriv(spec), "env", "-i", *(f"{k}={v}" for k, v in env.items()), *command]
    os.execvp(full[0], full)


if __name__ == "__main__":
    main(sys.argv[1:])
