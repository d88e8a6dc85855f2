"""Where every staple stands: `status` (a table or JSON), `check` (a
monitoring plugin) and the Prometheus metrics file of `refresh`.

Everything here reads: the staple on disk (validated with the same rules as
refresh), the certificate, and the state record of the last attempts.
Nothing is fetched and nothing is written but the metrics file.
"""
from __future__ import annotations

import datetime as dt
import enum
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ocspstaple import state
from ocspstaple.certs import describe, load_pair, must_staple
from ocspstaple.config import DEFAULT_MAX_REFRESH_INTERVAL, DEFAULT_REFRESH_AT, BadEntry, Staple
from ocspstaple.errors import InputError, TrustError
from ocspstaple.refresh import inspect_disk
from ocspstaple.store import Store
from ocspstaple.text import one_line, plugin_text, shown
from ocspstaple.validate import CertStatus, VerifiedResponse, check_window, fmt_time, verify

if TYPE_CHECKING:
    from cryptography import x509

    from ocspstaple.certs import Pair
    from ocspstaple.served import Handshake

Clock = Callable[[], dt.datetime]

#: How long a server may go on stapling an older staple than the file's (a
#: reload or push may be on its way): check's --served-grace.
DEFAULT_SERVED_GRACE = dt.timedelta(hours=1)


@dataclass(frozen=True, kw_only=True)
class Served:
    """What one TLS server staples for a certificate, beside the file."""

    address: str
    servername: str | None
    #: why the server could not be asked (not listening, no TLS): UNKNOWN
    error: str = ""
    #: the certificate it presented: "CN=localhost, serial 1A2B"
    presented: str = ""
    #: it presented another certificate than the staple's
    other_cert: bool = False
    #: the served staple, when it passed the same checks as refresh's (the
    #: window apart: see ``usable``)
    staple: VerifiedResponse | None = None
    usable: bool = False
    #: why there is no usable served staple ("none stapled", "not valid: ...")
    problem: str = ""
    #: the same response as the file's (the same thisUpdate)
    same_as_file: bool = False
    #: the file has held a newer staple than the served one since then
    #: (its modification time); None unless the served one is older
    behind_since: dt.datetime | None = None
    #: how to make this server pick up the file, for the "older" verdict
    fix: str = ""

    @property
    def where(self) -> str:
        return self.address + (f" ({self.servername})" if self.servername else "")

    def left(self, now: dt.datetime) -> dt.timedelta | None:
        return None if self.staple is None or not self.usable else self.staple.expires - now

    @property
    def verdict(self) -> str:
        """A short word for the status table and JSON."""
        if self.error:
            return "unreachable"
        if self.other_cert:
            return "other certificate"
        if self.staple is None:
            return "none" if self.problem == NONE_STAPLED else "not valid"
        if not self.usable:
            return "expired"
        if self.staple.status is CertStatus.REVOKED:
            return "revoked"
        if self.same_as_file:
            return "same as file"
        return "older than file" if self.behind_since is not None else "other than file"


NONE_STAPLED = "none stapled"


def _presented(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string() or '(empty subject)'}, serial {cert.serial_number:X}"


def default_servername(cert: x509.Certificate) -> str | None:
    """The SNI name to ask with when none is given: the certificate's first
    DNS name that is not a wildcard (a server picks its certificate by it)."""
    from cryptography import x509 as x

    try:
        names = cert.extensions.get_extension_for_class(x.SubjectAlternativeName).value.get_values_for_type(
            x.DNSName)
    except (x.ExtensionNotFound, ValueError):
        names = []
    return next((n for n in names if not n.startswith("*.")), None)


def reload_fix(st: Staple) -> str:
    """The documented way to make the server load a changed staple file.

    A staple beside HAProxy's crt (``site.pem.ocsp``) or with a stats
    socket is HAProxy's; any other file is nginx's ssl_stapling_file (httpd
    has no stapling file: it fetches through ``serve``, and keeps its cache).
    """
    if st.haproxy_socket or str(st.output) == str(st.cert) + ".ocsp":
        return ("HAProxy loads the .ocsp file only at start: push it with refresh --haproxy-socket "
                "(set ssl ocsp-response) or restart HAProxy")
    return ("nginx reads ssl_stapling_file only at reload: run 'nginx -s reload' or 'systemctl reload nginx' "
            "(refresh --deploy-hook); httpd: restart it or lower SSLStaplingStandardCacheTimeout")


def ask_server(
    address: str, *, servername: str | None, pair: Pair, file: VerifiedResponse | None,
    written: dt.datetime | None, handshake: Handshake, timeout: float, now: dt.datetime,
    default_validity: dt.timedelta, fix: str = "",
) -> Served:
    """One handshake with ``address``, and what its staple is beside the file's.

    ``written``: when the staple file last changed (its modification time)."""
    from ocspstaple.errors import ServedError, ValidationError

    servername = servername or default_servername(pair.cert)
    base = Served(address=address, servername=servername, fix=fix)
    try:
        got = handshake(address=address, servername=servername, timeout=timeout)
    except ServedError as e:
        return replace(base, error=str(e))
    leaf = got.chain[0]
    base = replace(base, presented=_presented(leaf))
    if leaf != pair.cert:
        return replace(base, other_cert=True)
    if got.staple is None:
        return replace(base, problem=NONE_STAPLED)
    try:
        resp = verify(got.staple, pair=pair, default_validity=default_validity)
    except ValidationError as e:
        return replace(base, problem=f"stapled response not valid: {e}")
    try:
        check_window(resp, now=now)
        usable, problem = True, ""
    except ValidationError as e:
        usable, problem = False, f"stapled response not valid: {e}"
    base = replace(base, staple=resp, usable=usable, problem=problem)
    if file is None:
        return base
    if resp.this_update == file.this_update:
        return replace(base, same_as_file=True)
    if resp.this_update < file.this_update:
        # A file written with a response older than it claims (mtime before
        # thisUpdate cannot be) is timed from its thisUpdate.
        since = file.this_update if written is None else max(written, file.this_update)
        return replace(base, behind_since=since)
    return base


@dataclass(frozen=True, kw_only=True)
class Row:
    """One certificate's staple, as status, check and the metrics see it."""

    name: str
    output: Path | None
    subject: str | None = None
    serial: str | None = None
    must_staple: bool | None = None
    #: the valid staple on disk (for a revoked one, also when it has run out)
    staple: VerifiedResponse | None = None
    #: whether that staple is usable now
    usable: bool = False
    problem: str = ""
    refresh_at: float = DEFAULT_REFRESH_AT
    max_refresh_interval: dt.timedelta = DEFAULT_MAX_REFRESH_INTERVAL
    bad_input: bool = False
    record: state.Record = state.Record()
    #: what the staple's TLS servers staple (only when asked to connect)
    served: tuple[Served, ...] = ()

    @property
    def status(self) -> str:
        if self.staple is None:
            return "none"
        return "revoked" if self.staple.status is CertStatus.REVOKED else "good"

    def left(self, now: dt.datetime) -> dt.timedelta | None:
        return None if self.staple is None else self.staple.expires - now

    @property
    def window(self) -> dt.timedelta | None:
        return None if self.staple is None else self.staple.expires - self.staple.this_update

    @property
    def refresh_due(self) -> dt.datetime | None:
        if self.staple is None or not self.usable:
            return None
        return self.staple.refresh_due(self.refresh_at, self.max_refresh_interval)


def _modified(path: Path) -> dt.datetime | None:
    """When the staple file last changed (None when it cannot be told); a
    stat only, which neither blocks nor follows anything into a write."""
    try:
        return dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.timezone.utc)
    except (OSError, ValueError):
        return None


def ask_servers(st: Staple, pair: Pair, file: VerifiedResponse | None, *, handshake: Handshake,
                now: dt.datetime) -> tuple[Served, ...]:
    """What each of ``st.connect`` staples (nothing when it names none)."""
    if not st.connect:
        return ()
    written = _modified(st.output)
    return tuple(ask_server(a, servername=st.servername, pair=pair, file=file, written=written, handshake=handshake,
                            timeout=st.timeout, now=now, default_validity=st.default_validity, fix=reload_fix(st))
                 for a in st.connect)


def examine(
    staples: Sequence[Staple | BadEntry], *, store: Store, clock: Clock, state_dir: Path | None,
    handshake: Handshake | None = None,
) -> list[Row]:
    """A Row per staple, in order; one broken certificate never hides the others.

    With ``handshake``, each staple's ``connect`` servers are asked what they staple."""
    now = clock()
    rows = []
    for st in staples:
        if isinstance(st, BadEntry):
            rows.append(Row(name=st.name, output=None, problem=st.reason, bad_input=True))
            continue
        record = state.load(st.output, state_dir)
        try:
            pair = load_pair(st.cert, st.issuer)
        except InputError as e:
            rows.append(Row(name=st.name, output=st.output, problem=str(e), bad_input=True, record=record))
            continue
        try:
            disk = inspect_disk(store, st, pair, now)
        except TrustError as e:
            rows.append(Row(name=st.name, output=st.output, problem=str(e), bad_input=True, record=record))
            continue
        served = () if handshake is None else ask_servers(st, pair, disk.usable or disk.revoked,
                                                            handshake=handshake, now=now)
        rows.append(Row(
            name=st.name, output=st.output, subject=describe(pair.cert), serial=pair.serial_hex,
            must_staple=must_staple(pair.cert), staple=disk.usable or disk.revoked, usable=disk.usable is not None,
            problem=disk.problem, refresh_at=st.refresh_at, max_refresh_interval=st.max_refresh_interval,
            record=record, served=served,
        ))
    return rows


# -- status: a table and JSON ---------------------------------------------------

def duration(d: dt.timedelta | None) -> str:
    """``3d 4h``, ``5h 12m``, ``40m``; ``expired`` when negative."""
    if d is None:
        return "-"
    seconds = int(d.total_seconds())
    if seconds <= 0:
        return "expired"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def age(d: dt.timedelta) -> str:
    """How long something has lasted: ``duration``, but ``<1m`` (never "expired") for a short while."""
    return "<1m" if d < dt.timedelta(minutes=1) else duration(d)


def _when(t: dt.datetime | None) -> str:
    return "-" if t is None else t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def last_failure(row: Row, now: dt.datetime) -> str:
    """The LAST FAILURE cell: the failing streak, else why there is no staple, else "-"."""
    r = row.record
    if row.bad_input:
        return row.problem
    if not r.consecutive_failures:
        return row.problem or "-"
    since = r.failing_since or r.last_attempt
    age_ = f" for {age(now - since)}" if since else ""
    return f"{r.consecutive_failures} failed{age_}: {r.last_error or r.last_result}"


def _yes_no(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


COLUMNS = ("CERTIFICATE", "STAPLE", "STATUS", "THIS UPDATE", "NEXT UPDATE", "LEFT", "REFRESH DUE",
           "MUST-STAPLE", "LAST FAILURE")


def table(rows: Sequence[Row], now: dt.datetime) -> list[tuple[str, ...]]:
    """The cells of the status table, header first (times in UTC)."""
    out: list[tuple[str, ...]] = [COLUMNS]
    for row in rows:
        s = row.staple
        status = row.status if row.usable or row.staple is None else f"{row.status} (expired)"
        out.append((
            row.name, str(row.output or "-"), status,
            _when(s.this_update if s else None), _when(s.next_update if s else None),
            duration(row.left(now)) if row.usable else "-", _when(row.refresh_due),
            _yes_no(row.must_staple), last_failure(row, now),
        ))
        for sv in row.served:
            t = sv.staple
            note = sv.error or sv.problem or (f"older than the file for {age(now - sv.behind_since)}"
                                              if sv.behind_since is not None else "-")
            out.append((
                f"  served by {sv.where}", sv.presented or "-", sv.verdict,
                _when(t.this_update if t else None), _when(t.next_update if t else None),
                duration(sv.left(now)) if sv.usable else "-", "-", "-", note,
            ))
    return out


def format_table(cells: Sequence[tuple[str, ...]], *, style: Callable[[str, str], str] | None = None) -> str:
    """Aligned columns; ``style(text, status)`` may colour the STATUS cell (for a terminal).

    A cell is one line whatever a file name holds (control characters escaped)."""
    cells = [tuple(one_line(c) for c in r) for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for n, r in enumerate(cells):
        parts = []
        for i, cell in enumerate(r):
            text = cell.ljust(widths[i]) if i < len(r) - 1 else cell
            if style is not None and n and i == 2:
                text = style(text, cell)
            parts.append(text)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _served_json(sv: Served, now: dt.datetime, t: Callable[[dt.datetime | None], str | None]) -> dict[str, object]:
    s, left = sv.staple, sv.left(now)
    return {
        "connect": sv.address,
        "servername": sv.servername,
        "verdict": sv.verdict,
        "presented": sv.presented or None,
        "problem": sv.error or sv.problem or None,
        "status": None if s is None else s.status.value,
        "this_update": t(s.this_update if s else None),
        "next_update": t(s.next_update if s else None),
        "seconds_left": None if left is None else max(0, int(left.total_seconds())),
        "same_as_file": sv.same_as_file,
        "older_than_file_since": t(sv.behind_since),
    }


def to_json(rows: Sequence[Row], now: dt.datetime) -> str:
    """The JSON array of `status --json`: stable keys, ISO 8601 UTC times, null when unknown."""
    def t(v: dt.datetime | None) -> str | None:
        return None if v is None else state.iso(v)

    items = []
    for row in rows:
        s, r = row.staple, row.record
        left = row.left(now)
        items.append({
            "cert": row.name,
            "output": None if row.output is None else str(row.output),
            "subject": row.subject,
            "serial": row.serial,
            "status": row.status,
            "usable": row.usable,
            "problem": row.problem or None,
            "this_update": t(s.this_update if s else None),
            "next_update": t(s.next_update if s else None),
            "expires": t(s.expires if s else None),
            "seconds_left": None if left is None else max(0, int(left.total_seconds())),
            "refresh_due": t(row.refresh_due),
            "revocation_time": t(s.revocation_time if s else None),
            "revocation_reason": s.revocation_reason if s else None,
            "signer": s.signer if s else None,
            "must_staple": row.must_staple,
            "last_attempt": t(r.last_attempt),
            "last_success": t(r.last_success),
            "failing_since": t(r.failing_since),
            "consecutive_failures": r.consecutive_failures,
            "last_error": r.last_error,
            "served": [_served_json(sv, now, t) for sv in row.served],
        })
    return json.dumps(items, indent=2)


# -- check: a Nagios/Icinga plugin ------------------------------------------------

class State(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """Severity order for the overall state: CRITICAL > WARNING > UNKNOWN > OK."""
        return {State.OK: 0, State.UNKNOWN: 1, State.WARNING: 2, State.CRITICAL: 3}[self]


@dataclass(frozen=True)
class Threshold:
    """Time left below which a staple is flagged: a duration, or a fraction of its window."""

    fraction: float | None = None
    fixed: dt.timedelta | None = None

    @classmethod
    def parse(cls, text: str, what: str) -> Threshold:
        from ocspstaple.config import parse_duration

        text = text.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                raise InputError(f"{what}: {shown(text)} is not a percentage such as 40%") from None
            if not 0 < pct < 100:  # also refuses nan
                raise InputError(f"{what}: {shown(text)} must be between 0% and 100%")
            return cls(fraction=pct / 100)
        return cls(fixed=parse_duration(text, what))

    def of(self, window: dt.timedelta) -> dt.timedelta:
        return self.fixed if self.fixed is not None else window * (self.fraction or 0)


def thresholds(*, warning: str, critical: str) -> tuple[Threshold, Threshold]:
    """check's --warning and --critical; the warning must leave more time than
    the critical threshold (10% and 50% would never warn before going critical).

    A share and a duration can only be compared against a staple's window,
    so such a pair is taken as given.
    """
    warn, crit = Threshold.parse(warning, "--warning"), Threshold.parse(critical, "--critical")
    if (warn.fraction is not None and crit.fraction is not None and warn.fraction <= crit.fraction) or (
            warn.fixed is not None and crit.fixed is not None and warn.fixed <= crit.fixed):
        raise InputError(f"--warning {warning.strip()} must leave more than --critical {critical.strip()}: "
                         "a staple is to reach WARNING before CRITICAL")
    return warn, crit


def evaluate(row: Row, now: dt.datetime, *, warning: Threshold, critical: Threshold,
             max_failing: dt.timedelta) -> tuple[State, str]:
    """One staple's state and, unless OK, why."""
    if row.bad_input:
        return State.UNKNOWN, row.problem
    must = " (must-staple)" if row.must_staple else ""
    if row.staple is not None and row.status == "revoked":
        return State.CRITICAL, "certificate revoked"
    if not row.usable or row.staple is None:
        return State.CRITICAL, f"no valid staple{must}: {row.problem}"
    left, window = row.left(now), row.window
    assert left is not None and window is not None
    if left < critical.of(window):
        return State.CRITICAL, f"{duration(left)} left{must}"
    if left < warning.of(window):
        return (State.CRITICAL if row.must_staple else State.WARNING), f"{duration(left)} left{must}"
    r = row.record
    if r.consecutive_failures and r.failing_since and now - r.failing_since > max_failing:
        return State.WARNING, f"refresh failing for {age(now - r.failing_since)}: {r.last_error}"
    due = row.refresh_due
    if due is not None and r.last_attempt is not None and r.last_attempt < due and now - due > max_failing:
        # Refresh has run before (there is a record) but not since the staple
        # fell due: the timer has stopped, and a revocation would not arrive.
        return State.WARNING, (f"refresh due since {_when(due)} UTC, not attempted for "
                               f"{age(now - r.last_attempt)} (is the timer running?)")
    return State.OK, ""


def evaluate_served(row: Row, sv: Served, now: dt.datetime, *, warning: Threshold, critical: Threshold,
                    grace: dt.timedelta) -> tuple[State, str]:
    """What one server staples: its state and, unless OK, why (naming the
    certificate it presented, so that a wrong servername shows)."""
    if sv.error:
        return State.UNKNOWN, f"{sv.where}: {sv.error}"
    if sv.other_cert:
        return State.CRITICAL, (f"{sv.where} presented another certificate: {sv.presented} "
                                f"(not serial {row.serial}; is the servername right?)")
    if sv.staple is None:
        # Without a staple a client asks the CA itself, or gives up quietly;
        # a must-staple certificate is refused by browsers.
        bad = State.CRITICAL if row.must_staple or sv.problem != NONE_STAPLED else State.WARNING
        return bad, f"{sv.where}: {sv.problem} ({sv.presented})"
    if not sv.usable:
        return State.CRITICAL, f"{sv.where}: {sv.problem}"
    if sv.staple.status is CertStatus.REVOKED:
        return State.CRITICAL, f"{sv.where} staples a revocation"
    left, window = sv.staple.expires - now, sv.staple.expires - sv.staple.this_update
    result = State.OK
    if left < critical.of(window):
        result = State.CRITICAL
    elif left < warning.of(window):
        result = State.CRITICAL if row.must_staple else State.WARNING
    if sv.behind_since is not None and now - sv.behind_since > grace and row.staple is not None:
        result = max(result, State.WARNING, key=lambda s: s.rank)
        return result, (f"{sv.where} staples an older response (thisUpdate {fmt_time(sv.staple.this_update)}, "
                        f"{duration(left)} left) than the file's ({fmt_time(row.staple.this_update)}) "
                        f"for {age(now - sv.behind_since)}: {sv.fix}")
    if result is not State.OK:
        return result, f"{sv.where} staples a response with {duration(left)} left"
    return State.OK, ""


def _label(row: Row, sv: Served | None = None) -> str:
    # Quotes and "=" would end the label early (Nagios plugin guidelines).
    text = one_line(str(row.output or row.name) + ("" if sv is None else f"@{sv.address}"))
    return "'" + text.replace("'", "_").replace("=", "_") + "'"


def _perf(label: str, left: dt.timedelta | None, window: dt.timedelta | None, *, warning: Threshold,
          critical: Threshold) -> str:
    if left is None or window is None:
        return f"{label}=0s;;;0"
    # Thresholds as Nagios ranges "N:": alert when the time left falls below N.
    return (f"{label}={max(0, int(left.total_seconds()))}s;"
            f"{int(warning.of(window).total_seconds())}:;{int(critical.of(window).total_seconds())}:;0;"
            f"{int(window.total_seconds())}")


def check_line(rows: Sequence[Row], now: dt.datetime, *, warning: Threshold, critical: Threshold,
               max_failing: dt.timedelta, grace: dt.timedelta = DEFAULT_SERVED_GRACE) -> tuple[State, str]:
    """The plugin's state and its one output line, with perfdata."""
    results = [(row, *evaluate(row, now, warning=warning, critical=critical, max_failing=max_failing))
               for row in rows]
    results += [(row, *evaluate_served(row, sv, now, warning=warning, critical=critical, grace=grace))
                for row in rows for sv in row.served]
    overall = max((s for _, s, _ in results), key=lambda s: s.rank, default=State.UNKNOWN)
    if not rows:
        return State.UNKNOWN, "OCSPSTAPLE UNKNOWN - no certificates to check"
    problems = [f"{row.name}: {why}" for row, s, why in sorted(results, key=lambda x: -x[1].rank)
                if s is not State.OK]
    if problems:
        counts = ", ".join(f"{sum(1 for _, s, _ in results if s is st)} {st.name.lower()}"
                           for st in (State.CRITICAL, State.WARNING, State.UNKNOWN, State.OK)
                           if any(s is st for _, s, _ in results))
        summary = f"{counts}: " + "; ".join(problems)
    else:
        soonest = min(rows, key=lambda r: r.left(now) or dt.timedelta.max)
        summary = f"{len(rows)} staple(s) valid, least left {duration(soonest.left(now))} ({soonest.name})"
        served = [f"{sv.where} staples {'the file' + chr(39) + 's' if sv.same_as_file else 'a valid one'} "
                  f"({sv.presented})" for row in rows for sv in row.served]
        if served:
            summary += "; " + "; ".join(served)
    perf = []
    for row in rows:
        perf.append(_perf(_label(row), row.left(now) if row.usable else None, row.window,
                          warning=warning, critical=critical))
        for sv in row.served:
            s = sv.staple
            perf.append(_perf(_label(row, sv), sv.left(now), None if s is None else s.expires - s.this_update,
                              warning=warning, critical=critical))
    # A file name may hold a newline (a second line is another field for the
    # monitoring system) or "|" (which starts the perfdata).
    return overall, f"OCSPSTAPLE {overall.name} - {plugin_text(summary)} | " + plugin_text(" ".join(perf))


# -- metrics: Prometheus node_exporter textfile ---------------------------------------

METRICS = (
    ("ocspstaple_staple_this_update_timestamp_seconds", "thisUpdate of the valid staple on disk."),
    ("ocspstaple_staple_next_update_timestamp_seconds", "nextUpdate of the valid staple on disk."),
    ("ocspstaple_staple_expiry_timestamp_seconds",
     "When the staple stops being usable (nextUpdate, or the responder certificate's notAfter)."),
    ("ocspstaple_staple_refresh_due_timestamp_seconds",
     "When the staple is due for refresh (refresh-at of its window, at most max-refresh-interval after thisUpdate)."),
    ("ocspstaple_staple_status", "1 for the staple's status: good, revoked, or none (no valid staple)."),
    ("ocspstaple_staple_must_staple", "1 if the certificate is must-staple (RFC 7633)."),
    ("ocspstaple_last_success_timestamp_seconds", "Last time a valid response was fetched."),
    ("ocspstaple_consecutive_failures", "Failed refreshes since the last success."),
    ("ocspstaple_failing_since_timestamp_seconds", "When the current run of failed refreshes began."),
)
#: what a staple's connect servers staple (labels: the staple's, plus connect and servername)
SERVED_METRICS = (
    ("ocspstaple_served_up", "1 if the server answered the handshake with the staple's certificate."),
    ("ocspstaple_served_staple_present", "1 if the server stapled a response that passed the checks."),
    ("ocspstaple_served_this_update_timestamp_seconds", "thisUpdate of the response the server staples."),
    ("ocspstaple_served_next_update_timestamp_seconds", "nextUpdate of the response the server staples."),
    ("ocspstaple_served_matches_file", "1 if the server staples the file's response (the same thisUpdate)."),
)
RUN_METRICS = (
    ("ocspstaple_run_duration_seconds", "Wall time of the last refresh run."),
    ("ocspstaple_run_timestamp_seconds", "When the last refresh run ended."),
    ("ocspstaple_run_exit_code", "Exit status of the last refresh run."),
)


@dataclass(frozen=True)
class MetricStaple:
    name: str
    output: Path | None
    staple: VerifiedResponse | None
    must_staple: bool | None
    record: state.Record
    #: the staple's Row.refresh_due (None without a usable staple)
    refresh_due: dt.datetime | None = None
    #: the certificate file, when the input named one
    cert: Path | None = None
    #: the config's table name ([staple.NAME]) or the certbot lineage's
    label: str = ""
    #: what its connect servers staple
    served: tuple[Served, ...] = ()


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _stable(path: Path) -> str:
    """A path as a label: the same series from any working directory (cron's
    /, an operator's shell in the config's directory).  abspath, not
    realpath: certbot's live/ links move to a new archive/ file at every
    renewal, and the series must not."""
    return os.path.abspath(path)


def _num(v: float) -> str:
    return repr(float(v)) if not math.isinf(v) else "+Inf"


def _served_series(series: dict[str, list[str]], labels: str, sv: Served) -> None:
    up = not sv.error and not sv.other_cert
    series["ocspstaple_served_up"].append(f"{{{labels}}} {int(up)}")
    if not up:
        return
    s = sv.staple
    series["ocspstaple_served_staple_present"].append(f"{{{labels}}} {int(s is not None)}")
    series["ocspstaple_served_matches_file"].append(f"{{{labels}}} {int(sv.same_as_file)}")
    if s is not None:
        _times(series, "served", labels, s)


def _times(series: dict[str, list[str]], kind: str, labels: str, s: VerifiedResponse) -> None:
    """thisUpdate and (when it has one) nextUpdate of a ``kind`` ("staple" or "served") response."""
    series[f"ocspstaple_{kind}_this_update_timestamp_seconds"].append(f"{{{labels}}} {_num(s.this_update.timestamp())}")
    if s.next_update is not None:
        series[f"ocspstaple_{kind}_next_update_timestamp_seconds"].append(
            f"{{{labels}}} {_num(s.next_update.timestamp())}")


def metrics_text(staples: Iterable[MetricStaple], *, duration_s: float, ended: dt.datetime, code: int) -> str:
    """The textfile (newline-terminated), one series per staple and metric."""
    series: dict[str, list[str]] = {name: [] for name, _ in METRICS + SERVED_METRICS}
    for m in staples:
        labels = (f'cert="{_esc(_stable(m.cert) if m.cert is not None else m.name)}",'
                  f'output="{_esc(_stable(m.output) if m.output is not None else "")}",staple="{_esc(m.label)}"')
        s = m.staple
        if s is not None:
            _times(series, "staple", labels, s)
            series["ocspstaple_staple_expiry_timestamp_seconds"].append(f"{{{labels}}} {_num(s.expires.timestamp())}")
        if m.refresh_due is not None:
            series["ocspstaple_staple_refresh_due_timestamp_seconds"].append(
                f"{{{labels}}} {_num(m.refresh_due.timestamp())}")
        current = "none" if s is None else ("revoked" if s.status is CertStatus.REVOKED else "good")
        for st in ("good", "revoked", "none"):
            series["ocspstaple_staple_status"].append(f'{{{labels},status="{st}"}} {int(st == current)}')
        if m.must_staple is not None:
            series["ocspstaple_staple_must_staple"].append(f"{{{labels}}} {int(m.must_staple)}")
        if m.record.last_success is not None:
            series["ocspstaple_last_success_timestamp_seconds"].append(
                f"{{{labels}}} {_num(m.record.last_success.timestamp())}")
        series["ocspstaple_consecutive_failures"].append(f"{{{labels}}} {m.record.consecutive_failures}")
        if m.record.consecutive_failures and m.record.failing_since is not None:
            series["ocspstaple_failing_since_timestamp_seconds"].append(
                f"{{{labels}}} {_num(m.record.failing_since.timestamp())}")
        for sv in m.served:
            _served_series(series, f'{labels},connect="{_esc(sv.address)}",servername="{_esc(sv.servername or "")}"',
                           sv)
    lines = []
    for name, help_text in METRICS + SERVED_METRICS:
        if name not in dict(METRICS) and not series[name]:
            continue  # no connect servers: the served metrics are not announced
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [name + s for s in series[name]]
    run_values = {"ocspstaple_run_duration_seconds": _num(duration_s),
                  "ocspstaple_run_timestamp_seconds": _num(ended.timestamp()),
                  "ocspstaple_run_exit_code": str(code)}
    for name, help_text in RUN_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {run_values[name]}"]
    return "\n".join(lines) + "\n"

