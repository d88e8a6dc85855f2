"""certbot lineages (``refresh --certbot-dir``), RENEWED_LINEAGE, ``--nginx-test``
and the shared-output warning.

The certbot directory is built as certbot builds it: the files of each version
in ``archive/NAME`` (cert1.pem, chain1.pem, fullchain1.pem, privkey1.pem, then
cert2.pem ... after a renewal), and ``live/NAME/*.pem`` as relative symlinks
into ``../../archive/NAME/``, replaced (not rewritten) on renewal.  The CLI
runs as a real process against the real test responder on 127.0.0.1.

Every test that shows something works has a twin beside it showing that the
failure is caught, so that a test cannot pass merely because nothing works.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Run, assert_silent_success, clean_env, one_line, run_cli
from cryptography import x509
from cryptography.x509 import ocsp
from pki import CA, Issued, unsuccessful, write_pem
from responder import Reply, Responder

LIVE_FILES = ("cert", "chain", "fullchain", "privkey")

# The lineages of the `certbot` fixture.
A = "a.example.test"  # OCSP URL -> the test responder; cert.pem + chain.pem
NOURL = "nourl.example.test"  # no OCSP URL: skipped
MUST = "must.example.test"  # must-staple, no OCSP URL: an error
FULL = "full.example.test"  # OCSP URL; only fullchain.pem (and privkey.pem) in live/


# -- a certbot directory ---------------------------------------------------------

@dataclass
class Lineage:
    name: str
    base: Path  # the certbot config dir
    files: tuple[str, ...]
    versions: list[Issued] = field(default_factory=list)

    @property
    def live(self) -> Path:
        return self.base / "live" / self.name

    @property
    def archive(self) -> Path:
        return self.base / "archive" / self.name

    @property
    def leaf(self) -> Issued:
        return self.versions[-1]

    @property
    def serial(self) -> int:
        return self.leaf.cert.serial_number


def _link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (a new link renamed over the old), as certbot does."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def add_version(lineage: Lineage, leaf: Issued, ca: CA) -> None:
    """Write version N of the lineage into archive/ and (re)link live/ to it."""
    lineage.versions.append(leaf)
    n = len(lineage.versions)
    lineage.archive.mkdir(parents=True, exist_ok=True)
    lineage.live.mkdir(parents=True, exist_ok=True)
    write_pem(lineage.archive / f"cert{n}.pem", leaf)
    write_pem(lineage.archive / f"chain{n}.pem", ca.cert)
    write_pem(lineage.archive / f"fullchain{n}.pem", leaf, ca.cert)
    write_pem(lineage.archive / f"privkey{n}.pem", leaf.key_pem)
    (lineage.archive / f"privkey{n}.pem").chmod(0o600)
    for f in lineage.files:
        _link(lineage.live / f"{f}.pem", f"../../archive/{lineage.name}/{f}{n}.pem")
    (lineage.live / "README").write_text("This directory contains your keys and certificates.\n")


def make_lineage(base: Path, name: str, leaf: Issued, ca: CA, files: tuple[str, ...] = LIVE_FILES) -> Lineage:
    lineage = Lineage(name=name, base=base, files=files)
    add_version(lineage, leaf, ca)
    renewal = base / "renewal"
    renewal.mkdir(exist_ok=True)
    (renewal / f"{name}.conf").write_text(f"version = 2.11.0\narchive_dir = {lineage.archive}\n")
    return lineage


@dataclass
class Certbot:
    dir: Path
    out: Path  # --output-dir
    ca: CA
    responder: Responder
    lineages: dict[str, Lineage]

    def __getitem__(self, name: str) -> Lineage:
        return self.lineages[name]

    def staple(self, name: str) -> Path:
        return self.out / f"{name}.der"

    def written(self) -> set[str]:
        """The staple files in the output dir (not the lock and state files beside them)."""
        return {p.name for p in self.out.iterdir() if not p.name.startswith(".")}

    def requests_for(self, name: str, version: int = -1) -> int:
        serial = self[name].versions[version].cert.serial_number
        return sum(serial in seen.serials for seen in self.responder.seen)

    def renew(self, name: str) -> Issued:
        """certbot renew: a new certificate (same OCSP URLs) as version N+1, live/ relinked."""
        old = self[name].leaf.cert
        urls = [d.access_location.value
                for d in old.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value]
        leaf = self.ca.issue(name, ocsp_urls=tuple(urls))
        self.serve(leaf)
        add_version(self[name], leaf, self.ca)
        return leaf

    def serve(self, *leaves: Issued) -> None:
        """The responder answers good for these certificates (besides those already served)."""
        for leaf in leaves:
            self._answers[leaf.cert.serial_number] = leaf

    _answers: dict[int, Issued] = field(default_factory=dict)


@pytest.fixture
def certbot(tmp_path: Path, ca: CA, responder: Responder) -> Certbot:
    base = tmp_path / "letsencrypt"
    (base / "live").mkdir(parents=True)
    (base / "live" / "README").write_text("This directory contains your keys and certificates.\n")
    leaves = {
        A: ca.issue(A, ocsp_urls=(responder.url,)),
        NOURL: ca.issue(NOURL, ocsp_urls=()),
        MUST: ca.issue(MUST, ocsp_urls=(), must_staple=True),
        FULL: ca.issue(FULL, ocsp_urls=(responder.url,)),
    }
    lineages = {name: make_lineage(base, name, leaf, ca, files=("fullchain", "privkey") if name == FULL
                                   else LIVE_FILES)
                for name, leaf in leaves.items()}
    out = tmp_path / "ocsp"
    out.mkdir()
    cb = Certbot(dir=base, out=out, ca=ca, responder=responder, lineages=lineages)
    cb.serve(leaves[A], leaves[FULL])
    # Good for every certificate served, tryLater for any other (a stale cache would say "other").
    responder.reply_for = lambda req: (Reply(ca.respond(cb._answers[req.serial_number].cert))
                                       if req is not None and req.serial_number in cb._answers
                                       else Reply(unsuccessful("tryLater")))
    return cb


# -- helpers ---------------------------------------------------------------------

def env_with(**extra: str) -> dict[str, str]:
    env = clean_env()
    env.pop("RENEWED_LINEAGE", None)
    env.update(extra)
    return env


def refresh(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    return run_cli("refresh", *args, env=env if env is not None else env_with(), timeout=30)


def certbot_refresh(cb: Certbot, *args: str | Path, env: dict[str, str] | None = None) -> Run:
    return refresh("--certbot-dir", cb.dir, "--output-dir", cb.out, *args, env=env)


def names(*lineages: str) -> list[str]:
    return [arg for name in lineages for arg in ("--cert-name", name)]






def staple_serial(path: Path) -> int:
    """The serial of the staple's single SingleResponse."""
    resp = ocsp.load_der_ocsp_response(path.read_bytes())
    assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    singles = list(resp.responses)
    assert len(singles) == 1
    assert singles[0].certificate_status is ocsp.OCSPCertStatus.GOOD
    return singles[0].serial_number


def marker_cmd(path: Path, word: str, code: int = 0) -> str:
    """A shell command that appends ``word`` to ``path`` and exits ``code``."""
    return f"echo {word} >> {shlex.quote(str(path))}; exit {code}"


def words(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- the layout ------------------------------------------------------------------

def test_fixture_is_certbots_layout(certbot: Certbot):
    # The layout the other tests rely on, as certbot makes it: relative links into archive/.
    a = certbot[A]
    for f in LIVE_FILES:
        link = a.live / f"{f}.pem"
        assert link.is_symlink() and os.readlink(link) == f"../../archive/{A}/{f}1.pem"
        assert link.resolve() == (a.archive / f"{f}1.pem").resolve()
    assert sorted(p.name for p in certbot[FULL].live.iterdir()) == ["README", "fullchain.pem", "privkey.pem"]
    assert (certbot.dir / "live" / "README").is_file()


# -- which lineages, which files -------------------------------------------------

def test_every_lineage_with_an_ocsp_url_gets_NAME_der(certbot: Certbot):
    run = certbot_refresh(certbot)
    # The must-staple lineage without an OCSP URL is the run's one error; the
    # lineage without one is skipped quietly; live/README is not a lineage.
    assert run.code == 2, run.err
    one_line(run, str(certbot[MUST].live), "must-staple")
    assert certbot.written() == {f"{A}.der", f"{FULL}.der"}
    assert staple_serial(certbot.staple(A)) == certbot[A].serial
    # The fullchain.pem-only lineage found its issuer inside fullchain.pem.
    assert staple_serial(certbot.staple(FULL)) == certbot[FULL].serial
    assert certbot.responder.requests == 2
    # Twin: without the must-staple lineage all is well and quiet.
    run = certbot_refresh(certbot, *names(A, NOURL, FULL), "--force")
    assert_silent_success(run)
    assert certbot.written() == {f"{A}.der", f"{FULL}.der"}


def test_a_lineage_without_ocsp_url_is_skipped_with_an_info_line(certbot: Certbot):
    assert_silent_success(certbot_refresh(certbot, *names(NOURL)))
    run = certbot_refresh(certbot, *names(NOURL), "-v")
    assert run.code == 0, run.err
    one_line(run, str(certbot[NOURL].live), "skipped", "no OCSP")
    assert certbot.written() == set()
    assert certbot.responder.requests == 0
    # Twin: the must-staple certificate without an OCSP URL is an error, not a skip.
    run = certbot_refresh(certbot, *names(MUST))
    assert run.code == 2
    one_line(run, str(certbot[MUST].live), "must-staple", "no OCSP")
    assert certbot.written() == set()


def test_cert_name_picks_lineages(certbot: Certbot):
    assert_silent_success(certbot_refresh(certbot, *names(FULL)))
    assert certbot.written() == {f"{FULL}.der"}
    assert (certbot.requests_for(A), certbot.requests_for(FULL)) == (0, 1)
    # Twin: another name picks the other lineage, and only it.
    assert_silent_success(certbot_refresh(certbot, *names(A)))
    assert certbot.written() == {f"{A}.der", f"{FULL}.der"}
    assert (certbot.requests_for(A), certbot.requests_for(FULL)) == (1, 1)


def test_an_unknown_cert_name_is_an_error_naming_it(certbot: Certbot):
    run = certbot_refresh(certbot, *names("nosuch.example", A))
    assert run.code == 2
    one_line(run, "'nosuch.example'")
    # One bad name does not stop the others.
    assert certbot.written() == {f"{A}.der"}
    # Twin: live/README is a file, not a lineage, even when asked for by name.
    run = certbot_refresh(certbot, *names("README"))
    assert run.code == 2
    one_line(run, "'README'")


def test_certbot_dir_needs_output_dir(certbot: Certbot):
    run = refresh("--certbot-dir", certbot.dir)
    assert run.code == 2 and "Traceback" not in run.err
    assert "--output-dir" in run.err
    assert certbot.responder.requests == 0
    # --output-dir and --cert-name belong to --certbot-dir.
    run = refresh("--cert", certbot[A].live / "fullchain.pem", "--output-dir", certbot.out)
    assert run.code == 2 and "Traceback" not in run.err and "--certbot-dir" in run.err
    # Twin: with --output-dir it runs.
    assert_silent_success(refresh("--certbot-dir", certbot.dir, "--output-dir", certbot.out, *names(A)))
    assert certbot.written() == {f"{A}.der"}


def test_a_dir_without_live_is_one_line(tmp_path: Path, certbot: Certbot):
    empty = tmp_path / "not-certbot"
    empty.mkdir()
    run = refresh("--certbot-dir", empty, "--output-dir", certbot.out)
    assert run.code == 2
    one_line(run, str(empty), "live/")
    # Twin: the certbot dir has live/.
    assert_silent_success(certbot_refresh(certbot, *names(A)))


def test_an_unreadable_lineage_is_one_line_and_the_others_still_run(certbot: Certbot):
    # Path.exists() raises on errors other than "no such file" (EACCES for a
    # user who may list live/ but not archive/; root sees that one as
    # ENAMETOOLONG): it was a traceback, and no staple was written.
    bad = certbot[NOURL].live / "cert.pem"
    bad.unlink()
    os.symlink("x" * 300, bad)
    run = certbot_refresh(certbot, *names(NOURL, A))
    assert run.code == 2
    one_line(run, str(certbot[NOURL].live), "cannot read")
    # Twin: the readable lineage beside it is stapled all the same.
    assert certbot.written() == {f"{A}.der"}
    assert staple_serial(certbot.staple(A)) == certbot[A].serial


@pytest.mark.skipif(Path("/etc/letsencrypt").exists(), reason="a real /etc/letsencrypt exists here")
def test_certbot_dir_alone_means_etc_letsencrypt(certbot: Certbot):
    # `--certbot-dir` followed by another option takes /etc/letsencrypt (absent here).
    run = refresh("--certbot-dir", "--output-dir", certbot.out)
    assert run.code == 2
    one_line(run, "/etc/letsencrypt", "live/")
    # Twin: with DIR given, that DIR.
    assert_silent_success(refresh("--certbot-dir", certbot.dir, "--output-dir", certbot.out, *names(A)))


# -- renewal: RENEWED_LINEAGE ----------------------------------------------------

def test_renewed_lineage_staples_the_new_certificate_at_once(certbot: Certbot):
    assert_silent_success(certbot_refresh(certbot, *names(A, FULL)))
    assert staple_serial(certbot.staple(A)) == certbot[A].serial
    old = certbot.staple(A).read_bytes()
    first = certbot[A].leaf
    cert2 = certbot.renew(A)
    assert os.readlink(certbot[A].live / "cert.pem") == f"../../archive/{A}/cert2.pem"
    assert cert2.cert.serial_number != first.cert.serial_number

    run = certbot_refresh(certbot, env=env_with(RENEWED_LINEAGE=str(certbot[A].live)))
    assert_silent_success(run)  # only lineage A: not even the must-staple error of the full run
    assert certbot.staple(A).read_bytes() != old
    assert staple_serial(certbot.staple(A)) == cert2.cert.serial_number
    assert certbot.requests_for(A) == 1  # for cert2, once
    assert certbot.requests_for(FULL) == 1  # the first run's only


def test_renewed_lineage_is_not_stapled_with_the_old_certificates_answer(certbot: Certbot):
    # Twin of the above: a responder (or cache) still answering for cert1 only.
    assert_silent_success(certbot_refresh(certbot, *names(A)))
    old = certbot.staple(A).read_bytes()
    first = certbot[A].leaf
    certbot.renew(A)
    certbot.responder.reply_for = lambda req: Reply(certbot.ca.respond(first.cert))
    run = certbot_refresh(certbot, env=env_with(RENEWED_LINEAGE=str(certbot[A].live)))
    assert run.code == 2  # no valid staple for the certificate now in live/
    one_line(run, str(certbot[A].live))
    assert certbot.staple(A).read_bytes() == old


def test_without_renewed_lineage_a_renewed_certificate_is_restapled_anyway(certbot: Certbot):
    # The honest behaviour: the staple on disk is for another certificate, so
    # it is unusable and the hourly run replaces it too; RENEWED_LINEAGE only
    # makes that happen at once, from certbot's deploy hook.
    assert_silent_success(certbot_refresh(certbot, *names(A)))
    cert2 = certbot.renew(A)
    assert_silent_success(certbot_refresh(certbot, *names(A)))
    assert staple_serial(certbot.staple(A)) == cert2.cert.serial_number
    # Twin: once it is for cert2 and fresh, a run fetches nothing.
    before = certbot.responder.requests
    assert_silent_success(certbot_refresh(certbot, *names(A)))
    assert certbot.responder.requests == before


def test_renewed_lineage_forces_that_lineage_only(certbot: Certbot):
    assert_silent_success(certbot_refresh(certbot, *names(A, FULL)))
    assert (certbot.requests_for(A), certbot.requests_for(FULL)) == (1, 1)
    # Both staples fresh: a plain run asks nothing.
    assert_silent_success(certbot_refresh(certbot, *names(A, FULL)))
    assert certbot.responder.requests == 2
    # RENEWED_LINEAGE=A: A is fetched although fresh; FULL is not even looked at,
    # --cert-name notwithstanding (nor the must-staple error of the full run).
    certbot.staple(FULL).unlink()
    renewed = env_with(RENEWED_LINEAGE=str(certbot[A].live))
    assert_silent_success(certbot_refresh(certbot, *names(A, FULL), env=renewed))
    assert (certbot.requests_for(A), certbot.requests_for(FULL)) == (2, 1)
    assert certbot.written() == {f"{A}.der"}
    # Twin: without RENEWED_LINEAGE, FULL (missing) is fetched, and A (fresh) is not.
    assert_silent_success(certbot_refresh(certbot, *names(A, FULL)))
    assert (certbot.requests_for(A), certbot.requests_for(FULL)) == (2, 2)
    assert certbot.written() == {f"{A}.der", f"{FULL}.der"}


def _config(tmp_path: Path, certbot: Certbot, a_cert: Path) -> Path:
    other = certbot.ca.issue("other.example.test", ocsp_urls=(certbot.responder.url,))
    certbot.serve(other)
    write_pem(tmp_path / "other.pem", other, certbot.ca.cert)
    certbot.lineages["other"] = Lineage(name="other", base=tmp_path, files=(), versions=[other])
    cfg = tmp_path / "ocspstaple.toml"
    cfg.write_text(f'[staple.a]\ncert = "{a_cert}"\noutput = "a.der"\n'
                   '[staple.other]\ncert = "other.pem"\noutput = "other.der"\n')
    return cfg


@pytest.mark.parametrize("where", ["live", "archive"])
def test_renewed_lineage_forces_the_configured_staples_in_it(tmp_path: Path, certbot: Certbot, where: str):
    a_cert = (certbot[A].live / "fullchain.pem" if where == "live"
              else certbot[A].archive / "fullchain1.pem")
    cfg = _config(tmp_path, certbot, a_cert)
    assert_silent_success(refresh("--config", cfg))
    assert (certbot.requests_for(A), certbot.requests_for("other")) == (1, 1)
    # Both fresh: nothing is asked without RENEWED_LINEAGE.
    assert_silent_success(refresh("--config", cfg))
    assert certbot.responder.requests == 2
    # With it, the staple whose certificate is in the lineage (through live/ or
    # in the archive/ its links point to) is fetched; the other is not.
    assert_silent_success(refresh("--config", cfg, env=env_with(RENEWED_LINEAGE=str(certbot[A].live))))
    assert (certbot.requests_for(A), certbot.requests_for("other")) == (2, 1)
    # Twin: another lineage renewed forces neither of them.
    assert_silent_success(refresh("--config", cfg, env=env_with(RENEWED_LINEAGE=str(certbot[FULL].live))))
    assert (certbot.requests_for(A), certbot.requests_for("other")) == (2, 1)


def test_renewed_lineage_forces_a_cert_given_on_the_command_line(certbot: Certbot):
    # certbot names a second lineage for the same domain NAME-0001: its archive
    # dir's name starts with NAME's, and it is another lineage all the same.
    sibling = make_lineage(certbot.dir, f"{A}-0001", certbot.ca.issue(A, ocsp_urls=(certbot.responder.url,)),
                           certbot.ca)
    certbot.lineages[sibling.name] = sibling
    certbot.serve(sibling.leaf)
    runs = {name: ("--cert", certbot[name].live / "fullchain.pem", "--output", certbot.out / f"{name}.single.der")
            for name in (A, sibling.name)}
    for args in runs.values():
        assert_silent_success(refresh(*args))
        assert_silent_success(refresh(*args))
    assert (certbot.requests_for(A), certbot.requests_for(sibling.name)) == (1, 1)
    renewed = env_with(RENEWED_LINEAGE=str(certbot[A].live))
    assert_silent_success(refresh(*runs[A], env=renewed))
    assert certbot.requests_for(A) == 2
    # Twin: the sibling lineage's certificate is not in lineage A.
    assert_silent_success(refresh(*runs[sibling.name], env=renewed))
    assert certbot.requests_for(sibling.name) == 1


# -- --nginx-test before the deploy hook ---------------------------------------

def test_a_failing_nginx_test_skips_the_deploy_hook(tmp_path: Path, certbot: Certbot):
    hook = marker_cmd(tmp_path / "hook.txt", "hook")
    run = certbot_refresh(certbot, *names(A), "--nginx-test", "false", "--deploy-hook", hook)
    assert run.code == 1
    line = one_line(run, "'false'", "deploy hook", hook, "not run")
    assert str(certbot.staple(A)) in line  # and the staple is written
    assert words(tmp_path / "hook.txt") == []
    assert staple_serial(certbot.staple(A)) == certbot[A].serial
    # Twin: a passing test lets the hook run.
    certbot.staple(A).unlink()
    assert_silent_success(certbot_refresh(certbot, *names(A), "--nginx-test", "true", "--deploy-hook", hook))
    assert words(tmp_path / "hook.txt") == ["hook"]


def test_nginx_test_and_hook_run_only_when_a_staple_changed(tmp_path: Path, certbot: Certbot):
    log = tmp_path / "order.txt"
    args = ("--nginx-test", marker_cmd(log, "test"), "--deploy-hook", marker_cmd(log, "hook"))
    assert_silent_success(certbot_refresh(certbot, *names(A)))
    # Nothing changed (the staple is fresh): neither the test nor the hook runs.
    assert_silent_success(certbot_refresh(certbot, *names(A), *args))
    assert words(log) == []
    # Twin: a staple changes; the test runs, then the hook.
    certbot.staple(A).unlink()
    assert_silent_success(certbot_refresh(certbot, *names(A), *args))
    assert words(log) == ["test", "hook"]


@pytest.fixture
def stub_nginx(tmp_path: Path):
    """An `nginx` on PATH that records its arguments and exits with the code in nginx.rc."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, rc = tmp_path / "nginx.calls", tmp_path / "nginx.rc"
    rc.write_text("0")
    nginx = bin_dir / "nginx"
    nginx.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\nexit "$(cat {shlex.quote(str(rc))})"\n')
    nginx.chmod(0o755)
    env = env_with(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    return env, calls, rc


def test_config_nginx_test_true_runs_nginx_t_q(tmp_path: Path, certbot: Certbot, stub_nginx):
    env, calls, rc = stub_nginx
    hook_log = tmp_path / "hook.txt"
    cfg = tmp_path / "ocspstaple.toml"
    cfg.write_text(f'[defaults]\nnginx_test = true\ndeploy_hook = {marker_cmd(hook_log, "hook")!r}\n'
                   f'[staple.a]\ncert = "{certbot[A].live / "fullchain.pem"}"\noutput = "a.der"\n')
    assert_silent_success(refresh("--config", cfg, env=env))
    assert calls.read_text().splitlines() == ["-t -q"]
    assert words(hook_log) == ["hook"]
    # Twin: nginx -t fails, so the hook is not run, and the run says so.
    rc.write_text("1")
    (tmp_path / "a.der").unlink()
    run = refresh("--config", cfg, env=env)
    assert run.code == 1
    one_line(run, "'nginx -t -q'", "deploy hook", "not run")
    assert calls.read_text().splitlines() == ["-t -q", "-t -q"]
    assert words(hook_log) == ["hook"]


def test_nginx_test_flag_alone_runs_nginx_t_q(tmp_path: Path, certbot: Certbot, stub_nginx):
    env, calls, rc = stub_nginx
    hook = marker_cmd(tmp_path / "hook.txt", "hook")
    rc.write_text("1")
    run = certbot_refresh(certbot, *names(A), "--nginx-test", "--deploy-hook", hook, env=env)
    assert run.code == 1
    one_line(run, "'nginx -t -q'", "not run")
    assert calls.read_text().splitlines() == ["-t -q"]
    assert words(tmp_path / "hook.txt") == []
    # Twin: without --nginx-test (and no nginx_test in a config) nginx is not run and the hook is.
    certbot.staple(A).unlink()
    assert_silent_success(certbot_refresh(certbot, *names(A), "--deploy-hook", hook, env=env))
    assert calls.read_text().splitlines() == ["-t -q"]
    assert words(tmp_path / "hook.txt") == ["hook"]


# -- two certificates, one output ------------------------------------------------

def test_two_certificates_to_one_output_are_a_config_error(tmp_path: Path, certbot: Certbot):
    a, full = certbot[A].live / "fullchain.pem", certbot[FULL].live / "fullchain.pem"
    cfg = tmp_path / "shared.toml"
    cfg.write_text(f'[staple.a]\ncert = "{a}"\noutput = "shared.der"\n'
                   f'[staple.full]\ncert = "{full}"\noutput = "shared.der"\n')
    run = refresh("--config", cfg)
    # Spec, "Trust on the local disk": an output that is another staple's
    # output is a config error before anything is written; one line each.
    assert run.code == 2 and run.out == "" and "Traceback" not in run.err, run.err
    assert len(run.lines) == 2, run.err
    for line, (mine, other) in zip(run.lines, ((a, full), (full, a)), strict=True):
        assert line.startswith(f"{mine}: ") and f"also the output of {other}" in line, line
        assert "give each its own output" in line
    assert not (tmp_path / "shared.der").exists()
    # Twin: the same certificate written to two outputs is fine, and quiet.
    cfg.write_text(f'[staple.one]\ncert = "{a}"\noutput = "one.der"\n'
                   f'[staple.two]\ncert = "{a}"\noutput = "two.der"\n')
    assert_silent_success(refresh("--config", cfg))
    assert staple_serial(tmp_path / "one.der") == staple_serial(tmp_path / "two.der") == certbot[A].serial


def test_renewed_lineage_not_among_cert_names_is_left_alone(certbot: Certbot):
    """A deploy hook limited to --cert-name FULL does nothing when certbot renewed A."""
    renewed = env_with(RENEWED_LINEAGE=str(certbot[A].live))
    assert_silent_success(certbot_refresh(certbot, *names(FULL), env=renewed))
    assert certbot.responder.requests == 0 and certbot.written() == set()
    # twin: with A among the names, A is fetched
    assert_silent_success(certbot_refresh(certbot, *names(FULL, A), env=renewed))
    assert certbot.written() == {f"{A}.der"}


def test_nginx_test_without_a_deploy_hook_is_a_warning(tmp_path: Path, certbot: Certbot):
    marker = tmp_path / "test.txt"
    run = certbot_refresh(certbot, *names(A), "--nginx-test", marker_cmd(marker, "test"))
    assert run.code == 0 and len(run.lines) == 1 and "no deploy hook" in run.lines[0]
    assert words(marker) == []
    # twin: with a hook, no such warning
    certbot.staple(A).unlink()
    run = certbot_refresh(certbot, *names(A), "--nginx-test", marker_cmd(marker, "test"), "--deploy-hook", "true")
    assert run.code == 0 and run.err == "" and words(marker) == ["test"]
