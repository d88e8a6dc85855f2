"""The command line: options in, typed values to the core, an exit code out.

Nothing below this module imports click, and only this module configures
logging.  Heavy imports wait until a command runs, so ``--help`` stays quick.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ocspstaple import __version__

EXIT_OK, EXIT_KEPT, EXIT_BAD = 0, 1, 2


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


@main.command()
@click.option("--cert", type=click.Path(path_type=Path, dir_okay=False),
              help="Certificate (PEM); its issuer may follow it in the same file.")
@click.option("--issuer", type=click.Path(path_type=Path, dir_okay=False),
              help="Issuer certificate (PEM). Default: the second certificate in CERT.")
@click.option("--output", type=click.Path(path_type=Path),
              help="Stapling file to write (DER). Default: CERT.ocsp.")
@click.option("--url", help="OCSP responder URL, instead of the one in the certificate.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file listing many certificates (instead of --cert).")
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
@click.option("-v", "--verbose", count=True, help="Say what happened to every certificate (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only, not kept-staple warnings.")
def refresh(
    cert: Path | None,
    issuer: Path | None,
    output: Path | None,
    url: str | None,
    config_path: Path | None,
    force: bool,
    timeout: float | None,
    proxy: str | None,
    refresh_at: float | None,
    default_validity: str | None,
    lock_timeout: float | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Fetch and validate OCSP responses; replace each stapling file only with
    a valid, fresher response.

    \b
    Exit status:
      0  every staple is valid
      1  some refresh failed, but the previous staple is kept and still valid
      2  some staple is missing, expired or revoked, or the input was bad
    """
    if (cert is None) == (config_path is None):
        raise click.UsageError("give either --cert or --config")
    if config_path is not None and (issuer or output or url):
        raise click.UsageError("--issuer, --output and --url go with --cert; put them in the config file")
    _setup_logging(verbose, quiet)

    from ocspstaple.config import Options, load_config, staple_from_options
    from ocspstaple.errors import InputError

    log = logging.getLogger("ocspstaple.cli")
    try:
        validity = _duration(default_validity) if default_validity is not None else None
        options = Options(timeout=timeout, proxy=proxy, refresh_at=refresh_at,
                          default_validity=validity, lock_timeout=lock_timeout)
        if config_path is not None:
            staples = load_config(config_path, cli=options, force=force)
        elif cert is not None:
            staples = [staple_from_options(cert=cert, issuer=issuer, output=output, url=url,
                                           options=options, force=force)]
    except InputError as e:
        log.error("%s", e)
        sys.exit(EXIT_BAD)
    sys.exit(_run(staples))


def _run(staples: list[Any]) -> int:
    import datetime as dt

    from ocspstaple.fetch import HttpTransport
    from ocspstaple.refresh import exit_code, refresh_all
    from ocspstaple.store import FileStore

    transports: dict[tuple[float, str | None], HttpTransport] = {}

    def network(timeout: float, proxy: str | None) -> HttpTransport:
        key = (timeout, proxy)
        if key not in transports:
            transports[key] = HttpTransport(timeout=timeout, proxy=proxy)
        return transports[key]

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    try:
        outcomes = refresh_all(staples, network=network, clock=clock, store=FileStore())
    except KeyboardInterrupt:
        # Writes are atomic: whatever was interrupted left the staple as it was.
        logging.getLogger("ocspstaple.cli").error("interrupted; staples not yet refreshed are left as they were")
        return 130
    finally:
        for t in transports.values():
            t.close()
    return exit_code(outcomes)
