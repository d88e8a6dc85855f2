"""After the refreshes: hand changed staples to the servers.

A HAProxy push per changed staple, then one deploy hook for the whole run.
Neither ever touches a file: a staple written stays written, whatever the
server or the hook does.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Sequence

from ocspstaple.config import Staple
from ocspstaple.errors import DeployError
from ocspstaple.haproxy import push
from ocspstaple.refresh import Outcome, Result
from ocspstaple.validate import CertStatus

log = logging.getLogger(__name__)

#: The environment variable that tells the hook what changed (one path a line).
CHANGED_VAR = "OCSPSTAPLE_CHANGED"
#: After the timeout, how long the hook gets between SIGTERM and SIGKILL.
KILL_GRACE = 2.0


def push_staples(pairs: Sequence[tuple[Staple, Outcome]]) -> int:
    """Push every changed staple that names a HAProxy socket; the number of failures.

    With ``--force`` a valid staple that did not change is pushed too (to
    bring a HAProxy that missed a push up to date), except a good one kept
    while a revocation could not be written.
    """
    failures = 0
    for st, o in pairs:
        if st.haproxy_socket is None or o.staple is None:
            continue
        revocation_unwritten = o.result is Result.REVOKED and o.staple.status is not CertStatus.REVOKED
        if not (o.changed or (st.force and not revocation_unwritten)):
            continue
        try:
            push(st.haproxy_socket, o.staple.der, timeout=st.timeout)
        except DeployError as e:
            failures += 1
            log.error("%s: %s; %s", o.name, e, _still_written(o))
        else:
            log.info("%s: pushed to HAProxy at %s", o.name, st.haproxy_socket)
    return failures


def _still_written(o: Outcome) -> str:
    return f"{o.output} is written" if o.changed else f"{o.output} is unchanged"


def changed_outputs(outcomes: Sequence[Outcome]) -> list[Path]:
    """The output paths written in this run, each once, in order."""
    seen: dict[Path, None] = {}
    for o in outcomes:
        if o.changed and o.output is not None:
            seen.setdefault(o.output, None)
    return list(seen)


def run_hook(command: str, changed: Sequence[Path], *, timeout: float, what: str = "deploy hook") -> None:
    """Run the deploy hook with /bin/sh once; raise DeployError if it fails or hangs.

    The hook runs in its own process group, so that on a timeout whatever it
    started is stopped too.
    """
    env = dict(os.environ)
    env[CHANGED_VAR] = "\n".join(str(p) for p in changed)
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:
        raise DeployError(f"{what} {command!r} could not start: {e.strerror or e}") from None
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise DeployError(f"{what} {command!r} did not finish within {timeout:g} s and was stopped") from None
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"failed with exit status {code}"
        raise DeployError(f"{what} {command!r} {how}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the hook's process group, KILL_GRACE seconds for its shell to
    end, then SIGKILL to whatever is left of the group: a member that ignores
    SIGTERM (or was still starting) must not outlive the shell."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE)

