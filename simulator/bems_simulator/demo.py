"""``bems-simulator demo``: the simulator and the exporter probing it, in one process.

The only module of the simulator that imports the exporter (its ``demo`` extra); the exporter never
imports the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from exporter.cli import serve, serving_exporter
from exporter.config import parse_listen_address
from exporter.daemon import activation, serving
from exporter.daemon.app import Exporter
from exporter.logs import setup_logging

from .endpoint import bind_loopback_socket
from .server import DEMO_GRAPH_ROLES, Simulator


def run_demo(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format, args.protocol_debug)
    if not args.log_requests:
        # The simulator logs a line per request it answers and per subscription: they would scroll the
        # URLs and the fault examples off the terminal. Its warnings and errors still show.
        logging.getLogger("bems_simulator").setLevel(logging.WARNING)
    serving.limit_process()
    try:
        web = activation.activated_sockets().web if args.systemd_socket else None
    except activation.ActivationError as err:
        print(f"error: --web.systemd-socket: {err}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_demo(args, web))
    except OSError as err:  # typically the address is in use
        print(f"error: cannot start the demo on {args.listen_address}: {err}", file=sys.stderr)
        return 1


async def _demo(args: argparse.Namespace, web: socket.socket | None) -> int:
    async with Simulator(args.state_dir, admin_port=args.admin_port, graph_roles=DEMO_GRAPH_ROLES) as sim:
        # The listener's socket is bound here and handed over: its port goes into the config first.
        with bind_loopback_socket(sim.host, 0) as listener:
            listener.listen(serving.BACKLOG)
            return await _run(args, sim, web, listener)


async def _run(args: argparse.Namespace, sim: Simulator, web: socket.socket | None, listener: socket.socket) -> int:
    config_file = sim.write_demo_config(args.state_dir / "bems-exchange-exporter.yml", listener.getsockname()[1])
    exporter = Exporter(str(config_file))
    exporter.listener.take_socket(listener)
    exporter.load()
    if web is None:
        host, port = parse_listen_address(args.listen_address)
        base = f"http://{host or 'localhost'}:{port}"
    else:
        base = f"http://{serving.address_of(web)}"
    ready = asyncio.Event()
    server = asyncio.create_task(serve(exporter, web or args.listen_address, None, ready))
    await asyncio.wait([server, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        await server  # raises the bind error
    async with _outside_vantage_point(sim, args.state_dir / "bems-exchange-exporter-outside.yml") as outside:
        print(
            f"""
BEMS Exchange Exporter demo is running (Ctrl-C stops it; --log.requests logs the simulator's requests).
  Landing page:  {base}/
  Metrics:       {base}/metrics
  Config:        {base}/config  (written to {config_file})
  Outside:       {outside}/  (a second vantage point: the same targets through {sim.proxy_url})
  Simulator API: {sim.admin_url}/api/v1/endpoints
Break something and watch the landing page turn red, for example:
  curl -X PUT -d '{{"fault": "expired"}}' {sim.admin_url}/api/v1/endpoints/onprem-ews/fault
Faults: refuse, hang, slow, expired, wrong_host, untrusted, plaintext; DELETE the fault to heal.
Break the path from outside only (its checks fail with reason proxy, the inside stays green):
  curl -X PUT -d '{{"fault": "refuse"}}' {sim.admin_url}/api/v1/proxy/fault
Stop push notifications (and heal with {{"kind": "none"}}):
  curl -X PUT -d '{{"kind": "callback_blocked"}}' {sim.admin_url}/api/v1/push/ews/fault
Heal everything at once (the simulator as it started):
  curl -X POST {sim.admin_url}/api/v1/reset
""",
            flush=True,
        )
        await server
    return 0


@contextlib.asynccontextmanager
async def _outside_vantage_point(sim: Simulator, config_path: Path) -> AsyncIterator[str]:
    """A second exporter in this process, as one in the DMZ or a public cloud would run beside the BEMS host's
    (docs/vantage-points.md): its base URL, on a loopback port of its own. Served without ``serve``, whose
    signal handlers belong to the first exporter; it stops when the first one does."""
    outside = Exporter(str(sim.write_outside_demo_config(config_path)))
    outside.load()
    with bind_loopback_socket(sim.host, 0) as sock:
        sock.listen(serving.BACKLOG)
        async with serving_exporter(outside, sock, None) as address:
            yield f"http://{address}"
