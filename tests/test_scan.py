"""``refresh --scan DIR``: HAProxy combined PEMs, one ``*.pem.ocsp`` per served certificate.

The directory holds what a real certificate directory holds: combined PEMs,
keys, CA certificates, a certificate without an OCSP URL, other files.  Only
the certificates with their issuer in the file get a staple; the others are
skipped, quietly unless -v.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Run, run_cli
from pki import CA, Issued, write_pem
from responder import Reply, Responder

from ocspstaple.certs import find_issuer, load_pair
from ocspstaple.config import Options
from ocspstaple.errors import InputError
from ocspstaple.scan import scan_dir
from ocspstaple.store import lock_path


def refresh(*args: str | Path) -> Run:
    return run_cli("refresh", *args, timeout=30)


def answer_all(responder: Responder, ca: CA, *leaves: Issued) -> None:
    by_serial = {leaf.cert.serial_number: leaf for leaf in leaves}
    responder.reply_for = lambda req: Reply(ca.respond(by_serial[req.serial_number].cert))


def populate(d: Path, ca: CA, responder: Responder) -> dict[str, str]:
    """A certificate directory; returns {file name: why it is skipped ("" for served)}."""
    d.mkdir(exist_ok=True)
    url = (responder.url,)
    site = ca.issue("site.example.test", ocsp_urls=url)
    reordered = ca.issue("reordered.example.test", ocsp_urls=url)
    lonely = ca.issue("lonely.example.test", ocsp_urls=url)
    no_url = ca.issue("nourl.example.test", ocsp_urls=())
    unrelated = CA.root("Unrelated Root")
    answer_all(responder, ca, site, reordered, lonely, no_url)
    # HAProxy's combined PEM: leaf, issuer, key
    write_pem(d / "site.pem", site, ca.cert, site.key_pem)
    # the issuer is not the second certificate
    write_pem(d / "reordered.pem", reordered, unrelated.cert, reordered.key_pem, ca.cert)
    write_pem(d / "lonely.pem", lonely, lonely.key_pem)
    # a chain, but the wrong one: nobody in the file signed the leaf
    write_pem(d / "wrongchain.pem", lonely, unrelated.cert, lonely.key_pem)
    write_pem(d / "key.pem", site.key_pem)
    write_pem(d / "ca.pem", ca.cert)
    write_pem(d / "nourl.pem", no_url, ca.cert, no_url.key_pem)
    (d / "empty.pem").write_bytes(b"")
    write_pem(d / "site.crt", site, ca.cert, site.key_pem)  # not *.pem: not scanned at all
    (d / "README").write_text("certificates live here\n")
    (d / "x.pem").mkdir()
    return {"site.pem": "", "reordered.pem": "", "lonely.pem": "signed the first",
            "wrongchain.pem": "signed the first", "key.pem": "no PEM certificate",
            "ca.pem": "CA certificate", "nourl.pem": "no OCSP responder", "empty.pem": "no PEM certificate"}


def test_scan_staples_only_the_served_certificates(tmp_path: Path, ca: CA, responder: Responder):
    d = tmp_path / "certs"
    expected = populate(d, ca, responder)
    before = set(os.listdir(d))
    run = refresh("--scan", d)
    assert run.code == 0, run.err
    assert run.out == "" and run.err == "", run.err  # skipped files are not news: cron stays quiet
    new = set(os.listdir(d)) - before
    # only dotfiles beside the staples (HAProxy's crt DIR skips those), e.g. the locks
    assert {n for n in new if not n.startswith(".")} == {"site.pem.ocsp", "reordered.pem.ocsp"}
    assert lock_path(d / "site.pem.ocsp").name in new
    assert responder.requests == 2
    assert len(expected) == 8


def test_scan_names_the_skipped_files_with_v(tmp_path: Path, ca: CA, responder: Responder):
    d = tmp_path / "certs"
    expected = populate(d, ca, responder)
    run = refresh("--scan", d, "-v")
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    for name, why in expected.items():
        lines = [line for line in run.lines if line.startswith(f"{d / name}:")]
        if why:
            assert len(lines) == 1 and "skipped" in lines[0] and why in lines[0], (name, run.err)
        else:  # the twin: a served certificate is reported as written, not skipped
            assert len(lines) == 1 and "wrote" in lines[0], (name, run.err)
    for never in ("site.crt", "README", "x.pem"):
        assert f"{d / never}:" not in run.err


def test_scan_dir_in_process(tmp_path: Path, ca: CA, responder: Responder):
    d = tmp_path / "certs"
    populate(d, ca, responder)
    staples = scan_dir(d, options=Options(timeout=3), force=True)
    assert [st.cert.name for st in staples] == ["reordered.pem", "site.pem"]
    assert all(st.output == Path(f"{st.cert}.ocsp") and st.timeout == 3 and st.force for st in staples)


def test_several_scan_directories(tmp_path: Path, ca: CA, responder: Responder):
    one, two = tmp_path / "one", tmp_path / "two"
    populate(one, ca, responder)
    two.mkdir()
    leaf = ca.issue("two.example.test", ocsp_urls=(responder.url,))
    write_pem(two / "two.pem", leaf, ca.cert, leaf.key_pem)
    previous = responder.reply_for
    responder.reply_for = lambda req: (Reply(ca.respond(leaf.cert)) if req.serial_number == leaf.cert.serial_number
                                       else previous(req))
    assert refresh("--scan", one, "--scan", two).code == 0
    assert (one / "site.pem.ocsp").exists() and (two / "two.pem.ocsp").exists()


# -- the issuer anywhere in the file ---------------------------------------------------------

def test_issuer_found_after_an_unrelated_certificate(tmp_path: Path, ca: CA):
    leaf = ca.issue("www.example.test")
    other = CA.root("ocspstaple Test Root")  # same name as the real issuer, another key
    sub = ca.sub_ca("Some Intermediate")
    p = write_pem(tmp_path / "chain.pem", leaf, other.cert, sub.cert, ca.cert)
    pair = load_pair(p, None)
    assert pair.issuer == ca.cert
    assert find_issuer(leaf.cert, [other.cert, sub.cert, ca.cert]) == ca.cert


def test_no_issuer_in_the_file_is_an_input_error(tmp_path: Path, ca: CA):
    """Twin: the same file without the issuer names the wrong one, and refuses."""
    leaf = ca.issue("www.example.test")
    other = CA.root("ocspstaple Test Root")
    p = write_pem(tmp_path / "chain.pem", leaf, other.cert)
    with pytest.raises(InputError, match="did not sign"):
        load_pair(p, None)
    assert find_issuer(leaf.cert, [other.cert]) is None
    with pytest.raises(InputError, match="no issuer certificate"):
        load_pair(write_pem(tmp_path / "alone.pem", leaf), None)


# -- bad input -----------------------------------------------------------------------------------

def test_missing_directory_is_exit_2(tmp_path: Path):
    run = refresh("--scan", tmp_path / "nowhere")
    assert run.code == 2, run.err
    assert "Traceback" not in run.err
    assert len(run.lines) == 1 and str(tmp_path / "nowhere") in run.lines[0], run.err


def test_scan_dir_errors_in_process(tmp_path: Path):
    with pytest.raises(InputError, match="no such directory"):
        scan_dir(tmp_path / "nowhere", options=Options(), force=False)
    f = tmp_path / "file.pem"
    f.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        scan_dir(f, options=Options(), force=False)
    # Twin: an empty directory is no error, just nothing to do.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scan_dir(empty, options=Options(), force=False) == []


@pytest.mark.parametrize("extra", [["--cert", "site.pem"], ["--config", "c.toml"], ["--url", "http://127.0.0.1:9/"]])
def test_scan_with_another_input_is_a_usage_error(tmp_path: Path, extra: list[str]):
    run = refresh("--scan", tmp_path, *extra)
    assert run.code == 2, run.err
    assert "--help" in run.err and "Traceback" not in run.err and len(run.lines) == 1
    assert os.listdir(tmp_path) == []


def test_a_directory_with_nothing_to_staple_is_a_warning(tmp_path: Path, ca: CA, responder: Responder):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "key-only.pem").write_bytes(ca.issue("x.example.test").key_pem)
    r = refresh("--scan", empty)
    assert r.code == 0 and len(r.lines) == 1 and "nothing to do" in r.lines[0] and str(empty) in r.lines[0]
    # twin: a directory with a combined PEM in it gives no such warning
    full = tmp_path / "full"
    full.mkdir()
    populate(full, ca, responder)
    assert "nothing to do" not in refresh("--scan", full).err
