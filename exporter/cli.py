"""Command line: Prometheus-style flags for the daemon, plus the probe subcommand.

The demo and the simulator are the separate ``bems-simulator`` program (package ``bems_simulator``), which
this package never imports: ``demo`` and ``simulate`` here only say where they went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from aiohttp import web

from . import __version__, report
from .checks import CHECKS, checks_for, planned_checks
from .checks.push import config_warnings as push_warnings
from .checks.push import end_graph_subscriptions
from .checks.resources import Resources
from .config import (
    DEFAULT_CONFIG_FILE,
    Config,
    ConfigError,
    format_duration,
    load_config,
    parse_duration,
    parse_listen_address,
    parse_shard,
)
from .daemon import activation, scenario, serving
from .daemon.app import Exporter
from .daemon.listener import Listener
from .daemon.runner import execute
from .daemon.store import ResultStore
from .logs import FORMATS, LEVELS, replace_secrets, setup_logging
from .web.http_app import ALLOWED_HOSTS_FLAG, LIFECYCLE_FLAG, REMOTE_PROBE_FLAG, Access, create_app, parse_allowed_hosts
from .web.webconfig import LiveWebConfig, load_web_config

DEFAULT_LISTEN_ADDRESS = ":10442"
SYSTEMD_SOCKET_FLAG = "--web.systemd-socket"  # exporter-toolkit's name for it
# The subcommands that left with the simulator, and what to run instead.
MOVED_COMMANDS = {
    "simulate": "bems-simulator simulate",
    "demo": "bems-simulator demo (or make demo)",
}
T = TypeVar("T")
log = logging.getLogger("exporter")


def _common_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Subcommands accept the same flags after their name; SUPPRESS keeps them from resetting the main ones.
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        default=argparse.SUPPRESS if suppress else DEFAULT_CONFIG_FILE,
        help=f"configuration file (default {DEFAULT_CONFIG_FILE})",
    )
    add_log_flags(parser, suppress)


def add_log_flags(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """--log.level, --log.format and --log.protocol-debug, for this program and for ``bems-simulator demo``."""

    def default(value: str) -> str:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=list(LEVELS),
        default=default("info"),
        help="only log messages of this severity or above (default info)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=list(FORMATS),
        default=default("logfmt"),
        help="log line format (default logfmt)",
    )
    parser.add_argument(
        "--log.protocol-debug",
        dest="protocol_debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="let the NTLM, HTTP and MSAL libraries log at --log.level too (their tokens are redacted); "
        "by default they log warnings and errors only",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bems-exchange-exporter",
        description="Checks every Microsoft Exchange prerequisite of BlackBerry BEMS Push Notifications "
        "and exposes the results as Prometheus metrics.",
    )
    _common_flags(parser, suppress=False)
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration, print a summary and exit (0 valid, 1 invalid)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="ADDR",
        default=DEFAULT_LISTEN_ADDRESS,
        help=f"address to serve on (default {DEFAULT_LISTEN_ADDRESS})",
    )
    parser.add_argument(
        SYSTEMD_SOCKET_FLAG,
        dest="systemd_socket",
        action="store_true",
        help="use systemd socket activation listeners instead of port listeners (Linux only): the socket named "
        f"{activation.WEB} (or the first) for the web port, the one named {activation.NOTIFICATIONS} (if any) for "
        "the notification listener",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web configuration: TLS and basic authentication (re-read on reload)",
    )
    parser.add_argument(
        LIFECYCLE_FLAG,
        dest="enable_lifecycle",
        action="store_true",
        help="answer POST/PUT /-/reload from any address, not only loopback (implied by basic_auth_users)",
    )
    parser.add_argument(
        REMOTE_PROBE_FLAG,
        dest="enable_remote_probe",
        action="store_true",
        help="answer /probe and /config from any address, not only loopback (implied by basic_auth_users)",
    )
    parser.add_argument(
        ALLOWED_HOSTS_FLAG,
        dest="allowed_hosts",
        metavar="HOST,...",
        type=_allowed_hosts,
        help="serve only requests whose Host header names one of these (and localhost): DNS rebinding; "
        "/-/healthy and /-/ready answer any Host",
    )
    parser.add_argument(
        "--shard", metavar="i/N", type=_shard,
        help="run shard i (from 0) of N replicas that split the checks by a stable hash (overrides shard:)",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"bems-exchange-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    probe = sub.add_parser("probe", help="run a target's checks once and print a step-by-step report")
    _common_flags(probe, suppress=True)
    probe.add_argument(
        "target",
        nargs="?",
        help="target name from the configuration (default: every target, then the scenario verdict)",
    )
    probe.add_argument("--check", choices=sorted(CHECKS), help="run only this check")

    audit = sub.add_parser("report", help="write the audit report of a calendar month from Prometheus (docs/audit.md)")
    add_log_flags(audit, suppress=True)
    audit.add_argument(
        "--prometheus",
        required=True,
        metavar="URL",
        help="the query API's base URL: Prometheus, VictoriaMetrics, Thanos Query, Mimir "
        "(https://user:password@host/ for basic authentication; never printed)",
    )
    audit.add_argument(
        "--prometheus.bearer-token-file",
        dest="bearer_token_file",
        metavar="FILE",
        help="send the token in this file as Authorization: Bearer",
    )
    audit.add_argument("--alertmanager", metavar="URL", help="list this Alertmanager's silences of the month")
    audit.add_argument("--month", required=True, metavar="YYYY-MM", help="the calendar month (UTC)")
    audit.add_argument("--scenario", help="only this scenario's requirements (default: every one found)")
    audit.add_argument(
        "--format",
        default="html,pdf,csv,json",
        metavar="LIST",
        help="comma-separated: html, pdf, csv, json (default all four)",
    )
    audit.add_argument("--output", default=".", metavar="DIR", help="directory to write into (default .)")
    audit.add_argument(
        "--merge-gap",
        default="5m",
        metavar="DURATION",
        help="merge unmet intervals less than this apart into one incident (default 5m)",
    )
    audit.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")

    for name, instead in MOVED_COMMANDS.items():
        sub.add_parser(name, help=f"moved: run {instead}", add_help=False)
    return parser


def _allowed_hosts(value: str) -> frozenset[str]:
    try:
        return parse_allowed_hosts(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _shard(value: str) -> tuple[int, int]:
    try:
        shard = parse_shard(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    assert shard is not None
    return shard


def config_summary(config: Config, file: str) -> str:
    lines = [f"{file}: valid", f"scenario: {config.scenario.value}", "credentials:"]
    for name, credential in config.credentials.items():
        lines.append(f"  {name}: {credential.kind}")
    lines.append(f"targets ({len(config.targets)}):")
    for target in config.targets:
        checks = ", ".join(c.name for c in checks_for(config, target))
        auth = ", ".join(m.value for m in config.auth_methods_of(target)) or "none"
        lines.append(
            f"  {target.name}: {target.kind.value}, exchange={target.exchange_label}, {target.url}\n"
            f"    every {format_duration(config.interval_of(target))}, timeout "
            f"{format_duration(config.timeout_of(target))}; checks: {checks}; auth: {auth}; "
            f"mailboxes: {len(target.mailboxes)}"
        )
    return "\n".join(lines)


async def _run_probe(config: Config, target_name: str | None, check_name: str | None) -> int:
    targets = config.targets if target_name is None else [config.targets_by_name().get(target_name)]
    if targets == [None]:
        known = ", ".join(config.targets_by_name())
        print(f"unknown target {target_name!r}; configured targets: {known}", file=sys.stderr)
        return 2
    plan = [(t, [c for c in checks_for(config, t) if check_name in (None, c.name)]) for t in targets if t is not None]
    if not any(checks for _, checks in plan):
        print(f"check {check_name!r} does not apply to target {target_name or 'any target'!r}", file=sys.stderr)
        return 2
    replace_secrets(config.secrets())  # the report and the log lines redact them, as the daemon's do
    store = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    resources = Resources()
    resources.push.configure(config)
    listener = Listener(resources.push)  # a push check subscribes: the callbacks need somewhere to go
    try:
        await listener.apply(config.notifications)
        for target, checks in plan:
            results = [await execute(check, config, target, resources) for check in checks]
            for result in results:
                store.record(result)
            if results:
                sys.stdout.write(report.render(target, results))
    finally:
        await end_graph_subscriptions(config, resources)
        await listener.stop()
        await resources.close()
    if target_name is None and check_name is None:
        sys.stdout.write(report.render_verdict(config.scenario.value, scenario.evaluate(config, store)))
    return 0 if all(r.success for r in store.latest.values()) else 1


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .audit import build, document, ledger, query_api

    try:
        month = ledger.Month.parse(args.month)
        formats = [f.strip() for f in args.format.split(",") if f.strip()]
        if unknown_formats := sorted(set(formats) - set(document.FORMATS)):
            raise ValueError(f"--format: unknown {', '.join(unknown_formats)} (known: {', '.join(document.FORMATS)})")
        merge_gap = int(parse_duration(args.merge_gap).total_seconds())
        token = Path(args.bearer_token_file).read_text().strip() if args.bearer_token_file else None
        source = query_api.Store(args.prometheus, bearer_token=token)
        silences = []
        if args.alertmanager:
            alertmanager = query_api.Store(args.alertmanager)
            silences = ledger.silences_in(alertmanager.get_json("/api/v2/silences"), month)
        report = build.build(
            source, month, scenario=args.scenario, merge_gap=merge_gap, silences=silences,
            progress=_progress_bar if args.progress else build.no_progress,
        )  # fmt: skip
        written = document.write(report, formats, Path(args.output))
    except (ValueError, OSError, query_api.StoreError, RuntimeError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in written:
        print(path)
    return 0


def _progress_bar(total: int) -> Callable[[], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc="querying", unit="query", file=sys.stderr, leave=False)

    def tick() -> None:
        bar.update()
        if bar.n >= total:
            bar.close()

    return tick


def _on_signals(loop: asyncio.AbstractEventLoop, reload: Callable[[], None], stop: Callable[[], None]) -> None:
    """SIGHUP reloads, SIGTERM/SIGINT stop. Windows (the BEMS host) has no SIGHUP and its event loop takes
    no signal handlers: there a reload is ``POST /-/reload`` and a stop comes through ``signal.signal``."""
    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
    except (NotImplementedError, AttributeError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop))


@contextlib.asynccontextmanager
async def serving_exporter(
    exporter: Exporter,
    listen: str | socket.socket,
    web_config: LiveWebConfig | None,
    access: Access | None = None,
) -> AsyncIterator[str]:
    """``exporter`` started and its web port served on ``listen`` (an address to bind, or a listening socket:
    systemd's, a test's) until the block ends; yields the address. No signal handling: see ``serve``."""
    bind = listen if isinstance(listen, socket.socket) else parse_listen_address(listen)
    address = serving.address_of(listen) if isinstance(listen, socket.socket) else listen
    await exporter.start()
    context = web_config.ssl_context() if web_config else None
    limits = serving.limits_for("web", serving.WEB_CONNECTIONS)
    runner: web.AppRunner | None = None
    try:
        runner = await serving.start_server(create_app(exporter, web_config, access), bind, context, limits)
        log.info("listening", extra={"fields": {"address": address, "tls": context is not None}})
        yield address
    finally:
        if runner is not None:
            await runner.cleanup()
        await exporter.stop()


async def serve(
    exporter: Exporter,
    listen: str | socket.socket,
    web_config: LiveWebConfig | None,
    ready: asyncio.Event | None = None,
    access: Access | None = None,
) -> None:
    """Serve the exporter until SIGTERM or SIGINT on ``listen``: an address to bind, or a listening socket
    (systemd's, a test's); ``ready`` is set once it listens."""
    async with serving_exporter(exporter, listen, web_config, access):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[object]] = set()

        def reload_on_signal() -> None:
            task = loop.create_task(exporter.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        _on_signals(loop, reload_on_signal, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """``main`` to its end on uvloop's event loop. asyncio's own TLS transport zero-fills a 256 KiB read buffer
    for every connection (``asyncio/sslproto.py``, 3.11 to 3.13), so each kept-alive HTTPS session and each
    callback connection to the listener held about 280 KiB of RSS; uvloop's about 40 KiB (measured:
    docs/performance.md, "Where the memory of the memory step goes, and uvloop"). The checks use only the loop's
    public API, so they run on either; served connections read once per turn on both (serving._ReadGate)."""
    if sys.platform == "win32":  # uvloop is libuv's loop for POSIX systems only
        return asyncio.run(main)
    import uvloop  # not installed on Windows: see the dependency's marker

    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)  # a moved command's flags are not this program's to judge
    if args.command in MOVED_COMMANDS:
        print(
            f"error: {args.command} is not part of the exporter any more: run {MOVED_COMMANDS[args.command]}",
            file=sys.stderr,
        )
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging(args.log_level, args.log_format, args.protocol_debug)
    serving.limit_process()
    try:
        if args.command == "report":
            return _run_report(args)
        if args.command == "probe":
            return run_event_loop(_run_probe(load_config(args.config_file), args.target, args.check))
        if args.config_check:
            config = load_config(args.config_file)
            print(config_summary(config, args.config_file))
            for requirement in scenario.unconfigured(config):
                print(f"warning: {config.scenario.value} requires {requirement}, but no target checks it")
            for warning in [*config.secret_file_warnings(), *push_warnings(config)]:
                print(f"warning: {warning}")
            for unverified in scenario.unverified(config):
                print(f"warning: {config.scenario.value}: {unverified}")
            return 0
        web_config = LiveWebConfig(load_web_config(args.web_config_file)) if args.web_config_file else None
        access = Access(
            remote_lifecycle=args.enable_lifecycle,
            remote_probe=args.enable_remote_probe,
            allowed_hosts=args.allowed_hosts or frozenset(),
        )
        listen: str | socket.socket = args.listen_address
        try:
            parse_listen_address(args.listen_address)
        except ValueError as err:
            raise ValueError(f"--web.listen-address {err}") from None
        sockets = _activated_sockets() if args.systemd_socket else None
        exporter = Exporter(args.config_file, shard=args.shard)
        if sockets is not None:
            listen = sockets.web
            if sockets.notifications is not None:
                exporter.listener.take_socket(sockets.notifications)
        exporter.load()
    except ConfigError as err:
        for issue in err.issues:  # every problem of the file at once, one line each
            print(f"error: {issue}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        run_event_loop(serve(exporter, listen, web_config, access=access))
    except OSError as err:  # typically the address is in use
        address = serving.address_of(listen) if isinstance(listen, socket.socket) else listen
        print(f"error: cannot listen on {address}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


def _activated_sockets() -> activation.ActivatedSockets:
    if not sys.platform.startswith("linux"):
        raise ValueError(f"{SYSTEMD_SOCKET_FLAG}: socket activation is Linux only")
    try:
        return activation.activated_sockets()
    except activation.ActivationError as err:
        raise ValueError(f"{SYSTEMD_SOCKET_FLAG}: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
