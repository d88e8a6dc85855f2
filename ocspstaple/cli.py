"""The command line: options in, typed values to the core, an exit code out.

Nothing below this module imports click, and only this module configures
logging.  Heavy imports wait until a command runs, so ``--help`` stays quick.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from ocspstaple import __version__

EXIT_OK, EXIT_KEPT, EXIT_BAD = 0, 1, 2

F = TypeVar("F", bound=Callable[..., Any])


class _Formatter(logging.Formatter):
    """One line per record, never a traceback unless debugging."""

    def __init__(self, debug: bool) -> None:
        super().__init__("%(message)s")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        if not self.debug:
            record.exc_info = None
            record.exc_text = None
        return super().format(record)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(debug=verbose > 1))
    root = logging.getLogger("ocspstaple")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocspstaple")
def main() -> None:
    """Fetch, validate and atomically write OCSP stapling files for nginx,
    HAProxy and Apache httpd. A staple is never replaced by anything worse."""


def _duration(value: Any) -> Any:
    from ocspstaple.config import parse_duration

    return parse_duration(value, "--default-validity")


def _staple_inputs(*, with_url: bool) -> Callable[[F], F]:
    """The options that say which staples a command works on (refresh, serve)."""
    options = [
        click.option("--cert", type=click.Path(path_type=Path, dir_okay=False),
                     help="Certificate (PEM); its issuer may follow it in the same file."),
        click.option("--issuer", type=click.Path(path_type=Path, dir_okay=False),
                     help="Issuer certificate (PEM). Default: the certificate in CERT that signed it."),
        click.option("--output", type=click.Path(path_type=Path),
                     help="Stapling file (DER). Default: CERT.ocsp."),
        click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                     help="TOML file listing many certificates (instead of --cert)."),
        click.option("--scan", "scan_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
                     help="Directory of combined PEMs (HAProxy): each *.pem with its issuer inside gets "
                          "*.pem.ocsp. Repeatable."),
    ]
    if with_url:
        options.insert(3, click.option("--url", help="OCSP responder URL, instead of the one in the certificate."))

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def _gather(
    *,
    cert: Path | None,
    issuer: Path | None,
    output: Path | None,
    url: str | None,
    config_path: Path | None,
    scan_dirs: tuple[Path, ...],
    options: Any,
    force: bool,
) -> tuple[list[Any], Any]:
    """The staples and run settings the inputs name; InputError when they are unusable."""
    from ocspstaple.config import RunSettings, read_config, staple_from_options
    from ocspstaple.scan import scan_dir

    if sum((cert is not None, config_path is not None, bool(scan_dirs))) != 1:
        raise click.UsageError("give one of --cert, --config or --scan")
    if cert is None and (issuer or output or url):
        raise click.UsageError("--issuer, --output and --url go with --cert; put them in the config file")
    if config_path is not None:
        config = read_config(config_path, cli=options, force=force)
        return config.staples, config.run
    if cert is not None:
        return [staple_from_options(cert=cert, issuer=issuer, output=output, url=url,
                                    options=options, force=force)], RunSettings()
    staples: list[Any] = []
    for d in scan_dirs:
        staples += scan_dir(d, options=options, force=force)
    return staples, RunSettings()


def _fail_input(e: Exception) -> None:
    logging.getLogger("ocspstaple.cli").error("%s", e)
    sys.exit(EXIT_BAD)


@main.command()
@_staple_inputs(with_url=True)
@click.option("--force", is_flag=True, help="Fetch even if the staple is not due yet.")
@click.option("--timeout", type=click.FloatRange(0, 3600, min_open=True), default=None,
              help="Total seconds allowed for one request to the responder. Default: 10.")
@click.option("--proxy", help="HTTP proxy URL. Default: HTTP_PROXY/http_proxy from the environment.")
@click.option("--refresh-at", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Fetch once this fraction of the staple's validity has passed. Default: 0.5.")
@click.option("--default-validity", default=None, metavar="DURATION",
              help="How long a response without nextUpdate counts as valid (e.g. 12h, 1d). Default: 1d.")
@click.option("--lock-timeout", type=click.FloatRange(0, 3600, min_open=True), default=None,
              help="Seconds to wait for another run holding the output's lock. Default: 60.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None,
              help="Certificates refreshed at once. Default: 8.")
@click.option("--haproxy-socket", metavar="SOCKET",
              help="HAProxy stats socket (unix path or HOST:PORT) to push each new staple to.")
@click.option("--deploy-hook", metavar="CMD",
              help="Shell command run once after a run that changed a staple (e.g. 'systemctl reload nginx'); "
                   "the changed files are in $OCSPSTAPLE_CHANGED.")
@click.option("--hook-timeout", type=click.FloatRange(0, 3600, min_open=True), default=None,
              help="Seconds the deploy hook may take before it is stopped. Default: 60.")
@click.option("-v", "--verbose", count=True, help="Say what happened to every certificate (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only, not kept-staple warnings.")
def refresh(
    cert: Path | None,
    issuer: Path | None,
    output: Path | None,
    url: str | None,
    config_path: Path | None,
    scan_dirs: tuple[Path, ...],
    force: bool,
    timeout: float | None,
    proxy: str | None,
    refresh_at: float | None,
    default_validity: str | None,
    lock_timeout: float | None,
    jobs: int | None,
    haproxy_socket: str | None,
    deploy_hook: str | None,
    hook_timeout: float | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Fetch and validate OCSP responses; replace each stapling file only with
    a valid, fresher response.

    \b
    Exit status:
      0  every staple is valid
      1  some refresh failed, but the previous staple is kept and still valid;
         or a written staple could not be pushed to HAProxy, or the deploy hook failed
      2  some staple is missing, expired or revoked, or the input was bad
    """
    _setup_logging(verbose, quiet)

    from ocspstaple.config import Options, RunSettings
    from ocspstaple.errors import InputError

    try:
        validity = _duration(default_validity) if default_validity is not None else None
        options = Options(timeout=timeout, proxy=proxy, refresh_at=refresh_at, default_validity=validity,
                          lock_timeout=lock_timeout, haproxy_socket=haproxy_socket)
        staples, from_file = _gather(cert=cert, issuer=issuer, output=output, url=url, config_path=config_path,
                                     scan_dirs=scan_dirs, options=options, force=force)
    except InputError as e:
        _fail_input(e)
    run = RunSettings(deploy_hook=deploy_hook, hook_timeout=hook_timeout, jobs=jobs).over(from_file)
    sys.exit(_run(staples, run))


def _run(staples: list[Any], run: Any) -> int:
    import datetime as dt

    from ocspstaple.config import DEFAULT_HOOK_TIMEOUT, Staple
    from ocspstaple.deploy import changed_outputs, push_staples, run_hook
    from ocspstaple.errors import DeployError
    from ocspstaple.fetch import HttpTransport
    from ocspstaple.refresh import exit_code, refresh_all
    from ocspstaple.store import FileStore

    log = logging.getLogger("ocspstaple.cli")
    transports: dict[tuple[float, str | None], HttpTransport] = {}

    def network(timeout: float, proxy: str | None) -> HttpTransport:
        key = (timeout, proxy)
        if key not in transports:
            transports[key] = HttpTransport(timeout=timeout, proxy=proxy)
        return transports[key]

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    try:
        outcomes = refresh_all(staples, network=network, clock=clock, store=FileStore(), jobs=run.jobs)
    except KeyboardInterrupt:
        # Writes are atomic: whatever was interrupted left the staple as it was.
        log.error("interrupted; staples not yet refreshed are left as they were")
        return 130
    finally:
        for t in transports.values():
            t.close()
    code = exit_code(outcomes)
    pairs = [(st, o) for st, o in zip(staples, outcomes, strict=True) if isinstance(st, Staple)]
    if push_staples(pairs):
        code = max(code, EXIT_KEPT)
    changed = changed_outputs(outcomes)
    if run.deploy_hook and changed:
        try:
            run_hook(run.deploy_hook, changed, timeout=run.hook_timeout or DEFAULT_HOOK_TIMEOUT)
        except DeployError as e:
            log.error("%s; the %d changed staple(s) are written: %s", e, len(changed),
                      ", ".join(map(str, changed)))
            code = max(code, EXIT_KEPT)
    return code


@main.command()
@_staple_inputs(with_url=False)
@click.option("--listen", default="127.0.0.1:8089", show_default=True, metavar="HOST:PORT",
              help="Address to answer OCSP requests on (port 0: any free port).")
@click.option("--default-validity", default=None, metavar="DURATION",
              help="How long a response without nextUpdate counts as valid. Default: 1d.")
@click.option("-v", "--verbose", count=True, help="Log every certificate loaded (-vv: every request).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
def serve(
    cert: Path | None,
    issuer: Path | None,
    output: Path | None,
    config_path: Path | None,
    scan_dirs: tuple[Path, ...],
    listen: str,
    default_validity: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Answer OCSP requests from the stapling files, for httpd's SSLStaplingForceURL.

    Serves the validated staple for each certificate that refresh keeps
    fresh (the same --cert, --config or --scan), re-read when the file
    changes; tryLater when there is no valid staple, unauthorized for a
    certificate it does not hold. It never contacts the CA. Runs until
    SIGTERM or SIGINT.
    """
    _setup_logging(verbose, quiet)

    import datetime as dt
    import signal

    from ocspstaple.config import Options, Staple
    from ocspstaple.errors import InputError
    from ocspstaple.serve import make_server, served_url
    from ocspstaple.store import FileStore

    log = logging.getLogger("ocspstaple.cli")
    try:
        validity = _duration(default_validity) if default_validity is not None else None
        staples, _ = _gather(cert=cert, issuer=issuer, output=output, url=None, config_path=config_path,
                             scan_dirs=scan_dirs, options=Options(default_validity=validity), force=False)
    except InputError as e:
        _fail_input(e)
    bad = [st for st in staples if not isinstance(st, Staple)]
    for b in bad:
        log.error("%s: %s; not served", b.name, b.reason)
    good = [st for st in staples if isinstance(st, Staple)]

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    try:
        server = make_server(listen, good, store=FileStore(), clock=clock)
    except InputError as e:
        _fail_input(e)
    except OSError as e:
        _fail_input(InputError(f"cannot listen on {listen}: {e.strerror or e}"))
    if not server.index.entries:
        server.server_close()
        _fail_input(InputError("no certificate to serve"))

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if not quiet:
        click.echo(f"ocspstaple serve: listening on {served_url(server)} "
                   f"({len({id(e) for e in server.index.entries.values()})} certificate(s))", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
