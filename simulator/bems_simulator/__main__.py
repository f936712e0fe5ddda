"""``bems-simulator`` (``python -m bems_simulator``): ``simulate`` runs the simulated Exchange estate until
SIGTERM or Ctrl+C; ``demo`` runs it and the exporter probing it, in one process (``make demo``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from .server import EXPORTER_LISTENER_PORT, serve

DEMO_LISTEN_ADDRESS = "127.0.0.1:10442"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bems-simulator",
        description="Simulated Exchange on-prem / Exchange Online endpoints on loopback HTTPS, with faults.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    simulate = sub.add_parser("simulate", help="run the Exchange simulator alone")
    demo = sub.add_parser("demo", help="run the Exchange simulator and the exporter probing it")
    for cmd in (simulate, demo):
        cmd.add_argument(
            "--state-dir",
            type=Path,
            default=Path(".demo"),
            help="where the simulator keeps its CA, certificates, secrets and config (default .demo)",
        )
        cmd.add_argument("--admin-port", type=int, default=0, help="simulator admin API port (default: any free one)")
    simulate.add_argument(
        "--config", type=Path, help="where to write the exporter config (default: STATE_DIR/exporter.yml)"
    )
    simulate.add_argument(
        "--exporter-listener-port",
        dest="listener_port",
        type=int,
        default=EXPORTER_LISTENER_PORT,
        help="the port the exporter's notification listener is configured on, on loopback "
        f"(default {EXPORTER_LISTENER_PORT}, the exporter's own)",
    )
    simulate.add_argument(
        "--minute-seconds",
        type=float,
        default=60.0,
        help="how long a simulated minute lasts, for push StatusFrequency and Graph subscription lifetimes",
    )
    demo.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="ADDR",
        default=DEMO_LISTEN_ADDRESS,
        help=f"exporter address (default {DEMO_LISTEN_ADDRESS})",
    )
    demo.add_argument(
        "--web.systemd-socket",
        dest="systemd_socket",
        action="store_true",
        help="serve the exporter on the socket systemd hands over (sd_listen_fds(3); Linux only), not on an address",
    )
    demo.add_argument(
        "--log.requests",
        dest="log_requests",
        action="store_true",
        help="also log the simulator's side: every request it answers, its subscriptions and its faults "
        "(off by default, so the exporter's log and the demo's URLs stay readable)",
    )
    try:
        from exporter.cli import add_log_flags
    except ImportError:  # installed without the `demo` extra: `demo` says so when it runs
        pass
    else:
        add_log_flags(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        try:
            from .demo import run_demo
        except ImportError as err:
            print(f"error: the demo needs the exporter (pip install 'bems-exchange-simulator[demo]'): {err}")
            return 1
        return run_demo(args)
    asyncio.run(
        serve(
            args.state_dir,
            admin_port=args.admin_port,
            config_path=args.config,
            minute_seconds=args.minute_seconds,
            listener_port=args.listener_port,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
