"""The command line: options in, typed values to the core, an exit code out.

Each command turns its options into typed values (config.Options, Staple,
RunSettings), sets up logging and hands over: ``refresh`` to
ocspstaple.run.execute (the run over many staples), the others to status,
serve and validate; what comes back is an exit code.  Nothing below this
module imports click, and only this module configures logging.  Heavy imports
wait until a command runs (types come from ``TYPE_CHECKING`` imports), so
``--help`` stays quick.
"""
from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

import click

from ocspstaple import __version__
from ocspstaple.text import one_line, plugin_text

if TYPE_CHECKING:
    import datetime as dt
    from types import FrameType

    from ocspstaple.config import BadEntry, Options, RunSettings, Staple
    from ocspstaple.run import Progress
    from ocspstaple.status import Row

EXIT_OK, EXIT_KEPT, EXIT_BAD = 0, 1, 2
#: An internal error (a bug, an exception nobody expected): sysexits.h's
#: EX_SOFTWARE, so that a crash never looks like 1 ("kept"), which the
#: systemd unit counts as success.
EXIT_INTERNAL = 70
#: check's UNKNOWN (Monitoring Plugins), also for its usage and internal errors
PLUGIN_UNKNOWN = 3

F = TypeVar("F", bound=Callable[..., Any])


class _Formatter(logging.Formatter):
    """One line per record, never a traceback unless debugging."""

    def __init__(self, debug: bool) -> None:
        super().__init__("%(message)s")
        self.debug = debug

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's naming)
        # A file name may hold a newline or an escape sequence: still one line.
        return one_line(super().formatMessage(record))

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


def _one_line_usage(e: click.UsageError) -> click.UsageError:
    """click's usage error as one line: click prints the usage and a hint
    on lines of their own; the hint goes to the end of the one line."""
    if e.ctx is None or isinstance(e, click.exceptions.NoArgsIsHelpError):
        return e
    short = click.UsageError(one_line(f"{e.format_message()} (see '{e.ctx.command_path} --help')"))
    short.exit_code = e.exit_code  # type: ignore[misc]
    return short


class _OneLineErrors:
    """For click's commands and groups: errors are one line each; a usage
    error exits 2, an internal error (any exception nobody expected)
    EXIT_INTERNAL."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc, no-any-return]
        except click.UsageError as e:
            self.usage_error(ctx, _one_line_usage(e))
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # a bug in an option's conversion
            self.internal_error(ctx, e)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except click.UsageError as e:
            self.usage_error(ctx, _one_line_usage(e))
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            self.internal_error(ctx, e)

    def usage_error(self, ctx: click.Context, e: click.UsageError) -> NoReturn:
        raise e

    def internal_error(self, ctx: click.Context, e: Exception) -> NoReturn:
        _say_internal(e)
        ctx.exit(EXIT_INTERNAL)


class _Command(_OneLineErrors, click.Command):
    pass


def _internal_words(e: Exception) -> str:
    return one_line(f"internal error: {type(e).__name__}: {e}; please report")


def _say_internal(e: Exception) -> None:
    """One line on stderr; the traceback too with -vv."""
    if logging.getLogger("ocspstaple").isEnabledFor(logging.DEBUG):
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    click.echo(_internal_words(e), err=True)


class _Group(_OneLineErrors, click.Group):
    command_class = _Command


class _PathType(click.Path):
    """click.Path, refusing a NUL (which no file name holds: os.stat raises ValueError)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "\0" in value:
            self.fail("a path cannot hold a NUL character", param, ctx)
        return super().convert(value, param, ctx)


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any, Any]  # generic from click 8.3; not subscriptable before
else:
    _ParamType = click.ParamType


class _Checked(_ParamType):
    """A number or a duration, checked by the same function as the config
    file's value: the command line and the file refuse the same values (nan,
    inf, -0, 1e400, 99999999999d) with the same words."""

    def __init__(self, check: str, metavar: str, *, whole: bool = False, duration: bool = False) -> None:
        self.name = metavar.lower()
        self.check, self.metavar, self.whole, self.duration = check, metavar, whole, duration

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ocspstaple import config
        from ocspstaple.errors import InputError

        if not isinstance(value, str):
            return value  # a default, already of its type
        what = param.opts[-1] if param is not None and param.opts else self.metavar
        try:
            checked = getattr(config, self.check)
            if self.duration:
                return checked(value, what)
            return checked(config.number_text(value, what, whole=self.whole), what)
        except InputError as e:
            raise click.UsageError(str(e), ctx) from None


_SECONDS = _Checked("check_timeout", "SECONDS")
_FRACTION = _Checked("check_fraction", "FRACTION")
_JOBS = _Checked("check_jobs", "N", whole=True)
_DURATION = _Checked("parse_duration", "DURATION", duration=True)
_INTERVAL = _Checked("check_max_refresh_interval", "DURATION", duration=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocspstaple")
def main() -> None:
    """Fetch, validate and atomically write OCSP stapling files for nginx,
    HAProxy and Apache httpd. A staple is never replaced by anything worse."""


def _verdict_options(*, refresh_at: bool) -> Callable[[F], F]:
    """The options that bear on a staple's verdict, the same for every
    command that judges staples (refresh, status, check, serve, verify)."""
    options = [click.option(
        "--default-validity", type=_DURATION, default=None,
        help="How long a response without nextUpdate counts as valid (e.g. 12h, 1d; at most 3650d). "
             "Default: 1d.")]
    if refresh_at:
        options[:0] = [click.option(
            "--refresh-at", type=_FRACTION, default=None,
            help="Fetch once this fraction of the staple's validity has passed (between 0 and 1). Default: 0.5."),
            click.option(
            "--max-refresh-interval", type=_INTERVAL, default=None,
            help="Fetch no later than this after the staple's thisUpdate, whatever its nextUpdate says "
                 "(1h to 365d, e.g. 2d, 36h). Default: 4d.")]

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


#: the years --at accepts: a moment every time computation around it can represent
_AT_YEARS = (1970, 9998)


def _parse_at(text: str, *, now: dt.datetime) -> dt.datetime:
    """``verify --at``: ``now``, or an ISO 8601 date or date and time (UTC
    unless an offset is given); InputError with one line otherwise."""
    import datetime as dt
    import re

    from ocspstaple.errors import InputError

    value = text.strip()
    if value.lower() == "now":
        return now
    bad = InputError(f"--at: {text!r} is not a time such as 2026-11-29T09:00:00Z, 2026-11-29T10:00:00+01:00, "
                     "2026-11-29 or now")
    # A full YYYY-MM-DD first: fromisoformat also takes week dates
    # ("2026-W48") and compact forms, refused here for clarity.
    if not re.match(r"\d{4}-\d{2}-\d{2}(?:$|[T ])", value) or len(value) > 40:
        raise bad
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise bad from None
    outside = InputError(f"--at: {text!r} is outside the years {_AT_YEARS[0]} to {_AT_YEARS[1]}")
    try:
        t = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00
        raise outside from None
    if not _AT_YEARS[0] <= t.year <= _AT_YEARS[1]:
        raise outside
    return t


def _staple_inputs(*, with_url: bool) -> Callable[[F], F]:
    """The options that say which staples a command works on (refresh, serve)."""
    options = [
        click.option("--cert", type=_PathType(path_type=Path, dir_okay=False),
                     help="Certificate (PEM); its issuer may follow it in the same file."),
        click.option("--issuer", type=_PathType(path_type=Path, dir_okay=False),
                     help="Issuer certificate (PEM). Default: the certificate in CERT that signed it."),
        click.option("--output", type=_PathType(path_type=Path),
                     help="Stapling file (DER). Default: CERT.ocsp. Its directory must be writable by no user "
                          "but root (or you); a symlink to it is followed only if root (or you) made it."),
        click.option("--config", "config_path", type=_PathType(path_type=Path, dir_okay=False),
                     help="TOML file listing many certificates (instead of --cert)."),
        click.option("--scan", "scan_dirs", multiple=True, type=_PathType(path_type=Path, file_okay=False),
                     help="Directory of combined PEMs (HAProxy): each *.pem with its issuer inside gets "
                          "*.pem.ocsp. Only files owned by root (or you), in a directory no other user can "
                          "write. Repeatable."),
        click.option("--certbot-dir", type=_PathType(path_type=Path, file_okay=False), is_flag=False,
                     flag_value="/etc/letsencrypt", default=None, metavar="[DIR]",
                     help="certbot's config directory: every lineage in DIR/live is a staple, written to "
                          "--output-dir as NAME.der. DIR defaults to /etc/letsencrypt."),
        click.option("--output-dir", type=_PathType(path_type=Path, file_okay=False),
                     help="With --certbot-dir: where the NAME.der staples go."),
        click.option("--cert-name", "cert_names", multiple=True, metavar="NAME",
                     help="With --certbot-dir: only this lineage. Repeatable."),
    ]
    if with_url:
        options.insert(3, click.option(
            "--url", "urls", multiple=True, metavar="URL",
            help="OCSP responder URL, instead of the ones in the certificate. Repeatable: asked in order, the next "
                 "when one fails or has nothing newer for a due staple; 'aia' stands for the certificate's own "
                 "URLs (--url http://relay:8089/ --url aia)."))

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


_state_dir_option = click.option(
    "--state-dir", type=_PathType(path_type=Path, file_okay=False),
    help="Directory for the records of the last attempts. Default: beside each staple (.NAME.state.json).")


def _gather(inputs: dict[str, Any], *, options: Options, force: bool,
            renewed: Path | None = None) -> tuple[list[Staple | BadEntry], RunSettings]:
    """The staples and run settings the inputs (the options of _staple_inputs)
    name; InputError when they are unusable.

    ``renewed``: the lineage certbot just renewed (its deploy hook): only that
    lineage in certbot mode, and in every mode its staples are fetched at once.
    """
    from dataclasses import replace

    from ocspstaple import certbot
    from ocspstaple.config import RunSettings, Staple, read_config, staple_from_options
    from ocspstaple.scan import scan_dir

    cert, issuer, output, url = (inputs.get(k) for k in ("cert", "issuer", "output", "urls"))
    config_path, scan_dirs, certbot_dir = inputs["config_path"], inputs["scan_dirs"], inputs["certbot_dir"]
    output_dir, cert_names = inputs["output_dir"], inputs["cert_names"]
    log = logging.getLogger("ocspstaple.cli")
    if sum((cert is not None, config_path is not None, bool(scan_dirs), certbot_dir is not None)) != 1:
        raise click.UsageError("give one of --cert, --config, --scan or --certbot-dir")
    if cert is None and (issuer or output or url):
        raise click.UsageError("--issuer, --output and --url go with --cert; put them in the config file")
    if certbot_dir is None and (output_dir or cert_names):
        raise click.UsageError("--output-dir and --cert-name go with --certbot-dir")
    run = RunSettings()
    if config_path is not None:
        config = read_config(config_path, cli=options, force=force)
        staples, run = config.staples, config.run
    elif cert is not None:
        staples = [staple_from_options(cert=cert, issuer=issuer, output=output, url=url, options=options, force=force)]
    elif certbot_dir is not None:
        if output_dir is None:
            raise click.UsageError("--certbot-dir needs --output-dir (where NAME.der goes)")
        names = cert_names
        if renewed is not None:
            # certbot's deploy hook: the renewed lineage only (if it is among --cert-name's).
            names = (renewed.name,) if not cert_names or renewed.name in cert_names else ()
            if not names:
                log.info("%s: renewed, but not among --cert-name %s; nothing to do", renewed, " ".join(cert_names))
                return [], run
        staples = certbot.lineages(certbot_dir, output_dir=output_dir, names=names, options=options, force=force)
    else:
        staples = []
        for d in scan_dirs:
            staples += scan_dir(d, options=options, force=force)
    if renewed is not None:
        # The staple on disk is for the old certificate: fetch for the new one now.
        staples = [replace(st, force=True) if isinstance(st, Staple) and certbot.within(st.cert, renewed) else st
                   for st in staples]
    return staples, run


def _fail_input(e: Exception) -> NoReturn:
    logging.getLogger("ocspstaple.cli").error("%s", e)
    sys.exit(EXIT_BAD)


@main.command()
@_staple_inputs(with_url=True)
@click.option("--force", is_flag=True, help="Fetch even if the staple is not due yet.")
@click.option("--timeout", type=_SECONDS, default=None,
              help="Total seconds allowed for one request to the responder (at most 3600). Default: 10.")
@click.option("--proxy", help="HTTP proxy URL. Default: HTTP_PROXY/http_proxy from the environment.")
@_verdict_options(refresh_at=True)
@click.option("--lock-timeout", type=_SECONDS, default=None,
              help="Seconds to wait for another run holding the output's lock (at most 3600). Default: 60.")
@click.option("--jobs", type=_JOBS, default=None,
              help="Certificates refreshed at once. Default: 16. No responder host gets more than 8 requests "
                   "at a time, whatever --jobs says.")
@click.option("--haproxy-socket", metavar="SOCKET",
              help="HAProxy stats socket (unix path or HOST:PORT) to push each new staple to.")
@click.option("--deploy-hook", metavar="CMD",
              help="Shell command run once after a run that changed a staple (e.g. 'systemctl reload nginx'); "
                   "the changed files are in $OCSPSTAPLE_CHANGED.")
@click.option("--hook-timeout", type=_SECONDS, default=None,
              help="Seconds the deploy hook may take before it is stopped (at most 3600). Default: 60.")
@click.option("--nginx-test", is_flag=False, flag_value="nginx -t -q", default=None, metavar="[CMD]",
              help="Run CMD (default: nginx -t -q) before the deploy hook; if it fails, skip the hook and say so.")
@_state_dir_option
@click.option("--metrics-file", type=_PathType(path_type=Path, dir_okay=False),
              help="Write Prometheus metrics (node_exporter textfile format) here after the run.")
@click.option("-v", "--verbose", count=True, help="Say what happened to every certificate (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only, not kept-staple warnings.")
def refresh(
    force: bool,
    timeout: float | None,
    proxy: str | None,
    refresh_at: float | None,
    max_refresh_interval: dt.timedelta | None,
    default_validity: dt.timedelta | None,
    lock_timeout: float | None,
    jobs: int | None,
    haproxy_socket: str | None,
    deploy_hook: str | None,
    hook_timeout: float | None,
    nginx_test: str | None,
    state_dir: Path | None,
    metrics_file: Path | None,
    verbose: int,
    quiet: bool,
    **inputs: Any,
) -> None:
    """Fetch and validate OCSP responses; replace each stapling file only with
    a valid, fresher response.

    \b
    Exit status:
      0  every staple is valid
      1  some refresh failed, but the previous staple is kept and still valid;
         or a written staple could not be pushed to HAProxy, or the deploy hook failed
      2  some staple is missing, expired or revoked, or the input was bad
      70 internal error (a bug: please report it); staples are left as they were
    """
    _setup_logging(verbose, quiet)

    from ocspstaple.certbot import renewed_lineage
    from ocspstaple.config import Options, RunSettings, check_files
    from ocspstaple.errors import InputError

    try:
        options = Options(timeout=timeout, proxy=proxy, refresh_at=refresh_at,
                          max_refresh_interval=max_refresh_interval, default_validity=default_validity,
                          lock_timeout=lock_timeout, haproxy_socket=haproxy_socket)
        staples, from_file = _gather(inputs, options=options, force=force, renewed=renewed_lineage())
    except InputError as e:
        _fail_input(e)
    run = RunSettings(deploy_hook=deploy_hook, hook_timeout=hook_timeout, jobs=jobs, state_dir=state_dir,
                      metrics_file=metrics_file, nginx_test=nginx_test).over(from_file)
    log = logging.getLogger("ocspstaple.cli")
    try:
        staples = check_files(staples, config=inputs["config_path"], metrics_file=run.metrics_file)
    except InputError as e:
        _fail_input(e)
    if run.nginx_test and not run.deploy_hook:
        log.warning("--nginx-test is set but there is no deploy hook to guard; it is not run")
    # The config's objects live until exit: the cyclic garbage collector need
    # not walk them again and again (0.1-0.2 s of a run over 10,000 staples).
    gc.freeze()
    from ocspstaple.run import execute

    sys.exit(execute(staples, run, progress=_progress(len(staples), quiet=quiet, verbose=verbose)))


def _progress(total: int, *, quiet: bool, verbose: int) -> Progress | None:
    """A progress bar when stderr is a terminal and the run is long; else None."""
    from ocspstaple import progress

    if not progress.wanted(total, sys.stderr, quiet=quiet, verbose=verbose):
        return None
    bar = progress.Progress(total, sys.stderr)
    handler = progress.Handler(sys.stderr, bar)
    root = logging.getLogger("ocspstaple")
    handler.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [handler]
    return bar


@main.command()
@_staple_inputs(with_url=False)
@click.option("--listen", default="127.0.0.1:8089", show_default=True, metavar="HOST:PORT",
              help="Address to answer OCSP requests on (port 0: any free port).")
@_verdict_options(refresh_at=True)
@click.option("-v", "--verbose", count=True, help="Log every certificate loaded (-vv: every request).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
def serve(listen: str, refresh_at: float | None, max_refresh_interval: dt.timedelta | None,
          default_validity: dt.timedelta | None, verbose: int, quiet: bool, **inputs: Any) -> None:
    """Answer OCSP requests from the stapling files, for httpd's SSLStaplingForceURL.

    Serves the validated staple for each certificate that refresh keeps
    fresh (the same --cert, --config or --scan), re-read when the file
    changes; tryLater when there is no valid staple, unauthorized for a
    certificate it does not hold. It never contacts the CA. Runs until
    SIGTERM or SIGINT.

    Also the relay of a fleet (README, "A fleet"): GET answers are cacheable
    (RFC 5019) until the staple's refresh point (--refresh-at,
    --max-refresh-interval, as for refresh), and conditional GETs get 304.

    \b
    Exit status:
      0  stopped by SIGTERM or SIGINT
      2  nothing to serve, the address cannot be had, or the input was bad
      70 internal error (a bug: please report it)
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
        # refresh_at and max_refresh_interval: when a cache's copy of a GET
        # answer runs out (the staple's refresh point, as refresh sees it).
        staples, _ = _gather(inputs, options=Options(refresh_at=refresh_at, max_refresh_interval=max_refresh_interval,
                                                     default_validity=default_validity), force=False)
    except InputError as e:
        _fail_input(e)
    bad = [st for st in staples if not isinstance(st, Staple)]
    for b in bad:
        log.error("%s: %s; not served", b.name, b.reason)
    good = [st for st in staples if isinstance(st, Staple)]

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    try:
        # No directory kept open: serve runs for months while directories may change.
        server = make_server(listen, good, store=FileStore(cache=False), clock=clock)
    except InputError as e:
        _fail_input(e)
    except OSError as e:
        _fail_input(InputError(f"cannot listen on {listen}: {e.strerror or e}"))
    if not server.index.entries:
        server.server_close()
        _fail_input(InputError("no certificate to serve"))

    def stop(signum: int, frame: FrameType | None) -> None:
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


def _connect_options(f: F) -> F:
    """status and check: the TLS servers to ask what they staple."""
    f = click.option("--servername", metavar="NAME",
                     help="With --connect: the SNI name to send. Default: the certificate's first DNS name.")(f)
    return click.option("--connect", "connect", multiple=True, metavar="HOST:PORT",
                        help="Also ask this TLS server what it staples for each certificate, and compare it "
                             "with the file (overrides the config's connect). Repeatable.")(f)


def _connect(connect: tuple[str, ...], servername: str | None) -> dict[str, Any]:
    """Options' connect and servername: None for "not given", so the config's apply."""
    return {"connect": connect or None, "servername": servername}


def _examine(inputs: dict[str, Any], state_dir: Path | None, options: Options) -> list[Row]:
    """The rows of status and check (InputError when the inputs are unusable).

    ``options``: the staple settings given on the command line, as refresh
    takes them, so that both judge a staple as refresh does.
    """
    import datetime as dt

    from ocspstaple.errors import InputError
    from ocspstaple.served import s_client
    from ocspstaple.status import examine
    from ocspstaple.store import FileStore

    staples, run = _gather(inputs, options=options, force=False)
    state_dir = state_dir if state_dir is not None else run.state_dir
    # refresh creates the directory; status and check only read it, and a
    # mistyped one would show every staple as never attempted, in silence.
    if state_dir is not None:
        try:
            found = state_dir.is_dir()
        except OSError as e:  # a name too long, a loop of links
            raise InputError(f"state directory {state_dir}: {e.strerror or e}") from None
        if not found:
            raise InputError(f"state directory {state_dir} does not exist or is not a directory "
                             "(refresh creates it on its first run)")
    return examine(staples, store=FileStore(), clock=lambda: dt.datetime.now(dt.timezone.utc), state_dir=state_dir,
                   handshake=s_client)


@main.command()
@_staple_inputs(with_url=False)
@_verdict_options(refresh_at=True)
@_state_dir_option
@_connect_options
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of the table (times in ISO 8601 UTC).")
def status(refresh_at: float | None, max_refresh_interval: dt.timedelta | None, default_validity: dt.timedelta | None,
           state_dir: Path | None, connect: tuple[str, ...], servername: str | None, as_json: bool,
           **inputs: Any) -> None:
    """Show where every staple stands: status, times, time left, next refresh,
    must-staple, and the last failure with its reason. Fetches nothing.
    Give the same options and config as refresh. With --connect (or the
    config's connect), a line per server shows what it staples beside the file.

    \b
    Exit status:
      0  every staple is valid and good
      2  some staple is missing, expired or revoked, or the input was bad
      70 internal error (a bug: please report it)
    """
    import datetime as dt

    from ocspstaple.config import Options
    from ocspstaple.errors import InputError
    from ocspstaple.status import format_table, table, to_json

    _setup_logging(0, False)
    try:
        rows = _examine(inputs, state_dir, Options(refresh_at=refresh_at, max_refresh_interval=max_refresh_interval,
                                                   default_validity=default_validity, **_connect(connect, servername)))
    except InputError as e:
        _fail_input(e)
    now = dt.datetime.now(dt.timezone.utc)
    if as_json:
        click.echo(to_json(rows, now))
    else:
        colours = {"good": "green", "same": "green", "revoked": "red", "none": "red", "expired": "red",
                   "not": "red", "other": "red", "unreachable": "red"}

        def style(text: str, cell: str) -> str:
            return click.style(text, fg=colours.get(cell.split()[0], "yellow"))

        # click.echo drops the colours when stdout is not a terminal.
        click.echo(format_table(table(rows, now), style=style))
    fine = all(r.usable and r.status == "good" and all(sv.same_as_file for sv in r.served) for r in rows)
    sys.exit(EXIT_OK if fine else EXIT_BAD)


def _unknown(text: str) -> NoReturn:
    """check's UNKNOWN: its one line on stdout, where the monitoring system reads it."""
    click.echo(plugin_text(f"OCSPSTAPLE UNKNOWN - {text}"))
    sys.exit(PLUGIN_UNKNOWN)


class _PluginCommand(_Command):
    """A monitoring plugin: a usage or internal error is UNKNOWN (3), one line on stdout."""

    def usage_error(self, ctx: click.Context, e: click.UsageError) -> NoReturn:
        _unknown(e.format_message())

    def internal_error(self, ctx: click.Context, e: Exception) -> NoReturn:
        if logging.getLogger("ocspstaple").isEnabledFor(logging.DEBUG):
            _say_internal(e)
        _unknown(_internal_words(e))


@main.command(cls=_PluginCommand)
@_staple_inputs(with_url=False)
@_verdict_options(refresh_at=True)
@_state_dir_option
@click.option("-w", "--warning", default="40%", show_default=True, metavar="LEFT",
              help="WARNING when a staple has less than this left: a share of its validity window (40%) "
                   "or a duration (36h).")
@click.option("-c", "--critical", default="20%", show_default=True, metavar="LEFT",
              help="CRITICAL when a staple has less than this left (share or duration); less than --warning.")
@click.option("--max-failing", type=_DURATION, default="6h", show_default=True,
              help="WARNING when refreshes have failed for longer than this.")
@_connect_options
@click.option("--served-grace", type=_DURATION, default="1h", show_default=True,
              help="With --connect: WARNING when a server has stapled an older response than the file for longer "
                   "than this since the file changed (CRITICAL once it has less than --critical left).")
def check(refresh_at: float | None, max_refresh_interval: dt.timedelta | None,
          default_validity: dt.timedelta | None, state_dir: Path | None, warning: str, critical: str,
          max_failing: dt.timedelta, connect: tuple[str, ...], servername: str | None, served_grace: dt.timedelta,
          **inputs: Any) -> None:
    """Monitoring plugin (Nagios/Icinga conventions): one status line with
    perfdata. CRITICAL when a staple is missing, expired or revoked, or has
    less than --critical left (or less than --warning, for a must-staple
    certificate); WARNING when it has less than --warning left or refreshes
    have failed for longer than --max-failing. Give the same config as refresh.

    With --connect (or the config's connect), each server is asked what it
    staples: CRITICAL when its staple is not valid, revoked or for another
    certificate than the one it presented; WARNING when it staples none
    (CRITICAL for must-staple) or an older response than the file for longer
    than --served-grace; UNKNOWN when it cannot be reached.

    \b
    Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for a usage
    error, a config error and an internal error).
    """
    import datetime as dt

    from ocspstaple.config import Options
    from ocspstaple.errors import InputError
    from ocspstaple.status import check_line, thresholds

    _setup_logging(0, True)
    try:
        warn, crit = thresholds(warning=warning, critical=critical)
        rows = _examine(inputs, state_dir, Options(refresh_at=refresh_at, max_refresh_interval=max_refresh_interval,
                                                   default_validity=default_validity, **_connect(connect, servername)))
    except InputError as e:
        _unknown(str(e))
    state, line = check_line(rows, dt.datetime.now(dt.timezone.utc), warning=warn, critical=crit,
                             max_failing=max_failing, grace=served_grace)
    click.echo(line)
    sys.exit(int(state))


@main.command()
@click.argument("staple_file", metavar="FILE", type=_PathType(path_type=Path, dir_okay=False))
@click.option("--cert", type=_PathType(path_type=Path, dir_okay=False), required=True,
              help="Certificate (PEM) the staple should be for.")
@click.option("--issuer", type=_PathType(path_type=Path, dir_okay=False),
              help="Issuer certificate (PEM). Default: the certificate in CERT that signed it.")
@_verdict_options(refresh_at=False)
@click.option("--at", "at", default=None, metavar="TIME",
              help="Judge the staple at this moment instead of now: ISO 8601 such as 2026-11-29T09:00:00Z, "
                   "2026-11-29T10:00:00+01:00 or 2026-11-29 (midnight UTC); a time without an offset is UTC; "
                   "'now'.")
def verify(staple_file: Path, cert: Path, issuer: Path | None, default_validity: dt.timedelta | None,
           at: str | None) -> None:
    """Validate an existing stapling FILE with the same rules as refresh, and
    print what it says (status, times, signer). With --at, judge it at
    that moment ("will this staple still be good tomorrow at 09:00?", or an
    old response at the time it was served).

    \b
    Exit status:
      0  valid, and the certificate is good
      2  not valid (the reason is printed), or valid and revoked
      70 internal error (a bug: please report it)
    """
    import datetime as dt

    from ocspstaple.certs import describe, load_pair
    from ocspstaple.config import DEFAULT_VALIDITY
    from ocspstaple.errors import InputError, StoreError, ValidationError
    from ocspstaple.store import read_given
    from ocspstaple.validate import CertStatus, fmt_time, validate

    _setup_logging(0, False)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        when = now if at is None else _parse_at(at, now=now)
    except InputError as e:
        _fail_input(e)
    try:
        validity = default_validity if default_validity is not None else DEFAULT_VALIDITY
        pair = load_pair(cert, issuer)
        data = read_given(staple_file)
    except (InputError, StoreError) as e:
        _fail_input(InputError(f"{staple_file}: {e}"))
    if data is None:
        _fail_input(InputError(f"{staple_file}: no such file"))
    at_note = "" if at is None else f" at {fmt_time(when)}"
    try:
        r = validate(data, pair=pair, now=when, default_validity=validity)
    except ValidationError as e:
        click.echo(f"{staple_file}: NOT VALID{at_note} for {describe(pair.cert)} (serial {pair.serial_hex}): {e}")
        sys.exit(EXIT_BAD)
    lines = [
        f"{staple_file}: valid{at_note}, certificate {'REVOKED' if r.status is CertStatus.REVOKED else 'good'}",
        f"  certificate:  {describe(pair.cert)} (serial {pair.serial_hex})",
        f"  this update:  {fmt_time(r.this_update)}",
        f"  next update:  {fmt_time(r.next_update) if r.next_update else '(none)'}",
        f"  usable until: {fmt_time(r.expires)}",
        f"  produced at:  {fmt_time(r.produced_at)}",
        f"  signed by:    {r.signer}",
    ]
    if r.status is CertStatus.REVOKED:
        lines.append(f"  revoked at:   {fmt_time(r.revocation_time) if r.revocation_time else '(not given)'}"
                     + (f", reason {r.revocation_reason}" if r.revocation_reason else ""))
    click.echo("\n".join(lines))
    sys.exit(EXIT_BAD if r.status is CertStatus.REVOKED else EXIT_OK)
