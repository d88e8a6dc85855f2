"""Helpers for the tests of `status`, `check`, `verify` and the metrics file:
certificates and staples made by the test CA, on disk, and strict parsers for
what the commands print (a table, perfdata, Prometheus' text format).

The parsers are strict on purpose, and each has a test showing that it
rejects what it should: a parser that accepts anything proves nothing.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pki import CA, DAY, Issued, write_pem

from ocspstaple.config import Staple
from ocspstaple.status import MetricStaple, Row

UTC = dt.timezone.utc
WINDOW = 10 * DAY

#: The status table's header, literally: a renamed column must fail a test.
COLUMNS = ("CERTIFICATE", "STAPLE", "STATUS", "THIS UPDATE", "NEXT UPDATE", "LEFT", "REFRESH DUE",
           "MUST-STAPLE", "LAST FAILURE")

#: The documented keys of `status --json`, literally and sorted (README "Watching the staples").
JSON_KEYS = sorted([
    "cert", "consecutive_failures", "expires", "failing_since", "last_attempt", "last_error",
    "last_success", "must_staple", "next_update", "output", "problem", "refresh_due",
    "revocation_reason", "revocation_time", "seconds_left", "served", "serial", "signer", "status", "subject",
    "this_update", "usable",
])

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


@dataclass
class Cert:
    """A leaf certificate (fullchain: leaf + issuer) on disk, and where its staple goes."""

    leaf: Issued
    cert: Path
    output: Path

    @property
    def name(self) -> str:
        return str(self.cert)

    @property
    def record(self) -> Path:
        """Its state record beside the staple."""
        return self.output.with_name(f".{self.output.name}.state.json")

    def staple(self, **kw) -> Staple:
        return Staple(name=str(self.cert), cert=self.cert, output=self.output, **kw)


def make_cert(directory: Path, ca: CA, name: str, *, must_staple: bool = False,
              urls: tuple[str, ...] = ("http://127.0.0.1:9/",)) -> Cert:
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue(f"{name}.example.test", ocsp_urls=urls, must_staple=must_staple)
    cert = write_pem(directory / f"{name}.pem", leaf, ca.cert)
    return Cert(leaf=leaf, cert=cert, output=Path(str(cert) + ".ocsp"))


def put_staple(ca: CA, c: Cert, *, now: dt.datetime, left: dt.timedelta, window: dt.timedelta = WINDOW,
               status: str = "good") -> bytes:
    """A staple signed by ``ca`` with ``left`` of its ``window`` left at ``now``, written to disk."""
    body = ca.respond(c.leaf.cert, status=status, this_update=now - (window - left), next_update=now + left)
    c.output.write_bytes(body)
    return body


def write_record(c: Cert, **fields: object) -> Path:
    """A state record written by hand, in the documented format (version 1)."""
    d: dict[str, object] = {"version": 1, "last_attempt": None, "last_success": None, "failing_since": None,
                            "consecutive_failures": 0, "last_error": None, "last_result": None}
    for k, v in fields.items():
        d[k] = iso(v) if isinstance(v, dt.datetime) else v
    c.record.write_text(json.dumps(d))
    return c.record


def iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> dt.datetime:
    assert ISO_Z.match(text), text
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def write_config(path: Path, certs: list[Cert], extra: str = "") -> Path:
    """A TOML config naming each certificate (table name = the file's stem)."""
    text = extra
    for c in certs:
        text += f'\n[staple.{c.cert.stem}]\ncert = "{c.cert}"\n'
    path.write_text(text)
    return path


def metric_staples(rows: list[Row]) -> list[MetricStaple]:
    return [MetricStaple(name=r.name, output=r.output, staple=r.staple, must_staple=r.must_staple,
                         record=r.record) for r in rows]


# -- the status table -----------------------------------------------------------

def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the status table, by the header's column positions.

    Fails unless every row is aligned to the header: each cell starts exactly
    where its header does, after at least two spaces, and is not blank.
    """
    lines = text.rstrip("\n").split("\n")
    header = lines[0]
    starts, pos = [], 0
    for col in COLUMNS:
        at = header.find(col, pos)
        assert at >= 0, f"no column {col!r} in {header!r}"
        starts.append(at)
        pos = at + len(col)
    assert starts[0] == 0 and header.rstrip() == header
    rows = []
    for line in lines[1:]:
        assert len(line) > starts[-1], f"short row: {line!r}"
        for s in starts[1:]:
            assert line[s - 2:s] == "  " and line[s] != " ", f"cell not aligned at column {s}: {line!r}"
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [len(line)], strict=True)]
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


# -- check's perfdata -------------------------------------------------------------

CHECK_LINE = re.compile(r"^OCSPSTAPLE (?P<state>OK|WARNING|CRITICAL|UNKNOWN) - (?P<text>.*?)(?: \| (?P<perf>.*))?$")
# Thresholds are Nagios ranges "N:" (alert when the time left is below N).
PERF_ITEM = re.compile(
    r"'(?P<label>[^']*)'=(?P<value>\d+)s;(?:(?P<warn>\d+):)?;(?:(?P<crit>\d+):)?;(?P<min>\d*)(?:;(?P<max>\d*))?")


@dataclass
class Perf:
    label: str
    value: int
    warn: int | None
    crit: int | None
    min: int | None
    max: int | None


def parse_check(line: str) -> tuple[str, str, list[Perf]]:
    """(state, text, perfdata) of a plugin line; fails on anything but one well-formed line."""
    assert "\n" not in line.rstrip("\n"), f"more than one line: {line!r}"
    m = CHECK_LINE.match(line.rstrip("\n"))
    assert m, f"not a plugin line: {line!r}"
    perf: list[Perf] = []
    rest = m["perf"] or ""
    while rest:
        p = PERF_ITEM.match(rest)
        assert p, f"bad perfdata at {rest!r}"
        n = {k: int(p[k]) if p[k] else None for k in ("warn", "crit", "min", "max")}
        perf.append(Perf(p["label"], int(p["value"]), n["warn"], n["crit"], n["min"], n["max"]))
        rest = rest[p.end():]
        assert rest == "" or rest.startswith(" "), f"junk after perfdata item: {rest!r}"
        rest = rest[1:]
    return m["state"], m["text"], perf


# -- Prometheus' text format ------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<k>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<v>(?:[^"\\\n]|\\[\\"n])*)"')
_TYPES = {"gauge", "counter", "untyped", "summary", "histogram"}


@dataclass
class Metrics:
    help: dict[str, str]
    types: dict[str, str]
    samples: list[tuple[str, dict[str, str], float]]

    def get(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples
                if n == name and all(lab.get(k) == want for k, want in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        found = self.get(name, **labels)
        assert len(found) == 1, (name, labels, found)
        return found[0][1]


def _unescape(v: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m[1] == "n" else m[1], v)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"bad label set at {text[pos:]!r}"
        assert m["k"] not in out, f"label {m['k']} twice"
        out[m["k"]] = _unescape(m["v"])
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected ',' at {text[pos:]!r}"
            pos += 1
    return out


def parse_prometheus(text: str) -> Metrics:
    """Prometheus' text exposition format, strictly: every sample after its
    family's # TYPE, families contiguous, no duplicate series, a final newline."""
    assert text.endswith("\n"), "not newline-terminated (a truncated file?)"
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    done: set[str] = set()  # families whose samples are over
    current = None
    for line in text[:-1].split("\n"):
        assert line, "blank line"
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            assert name not in helps, f"HELP {name} twice"
            helps[name] = h
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in _TYPES, line
            assert name not in types, f"TYPE {name} twice"
            types[name] = kind
            continue
        assert not line.startswith("#"), f"unexpected comment {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name = m["name"]
        assert name in types, f"sample of {name} before its # TYPE"
        if name != current:
            assert name not in done, f"samples of {name} are not contiguous"
            if current is not None:
                done.add(current)
            current = name
        labels = _labels(m["labels"] or "")
        key = (name, frozenset(labels.items()))
        assert key not in seen, f"duplicate series {line!r}"
        seen.add(key)
        samples.append((name, labels, float(m["value"])))
    return Metrics(helps, types, samples)
