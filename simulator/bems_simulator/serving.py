"""Serving an aiohttp application of the simulator on a socket it bound itself."""

from __future__ import annotations

import logging
import socket
import ssl

from aiohttp import web

_SHUTDOWN_GRACE_SECONDS = 0.1
# One line per request the simulated endpoints answer (aiohttp's access log format), under the simulator's
# own logger name: ``bems-simulator demo`` keeps it off the terminal unless --log.requests asks for it.
REQUEST_LOG = logging.getLogger("bems_simulator.requests")


async def serve_app(
    app: web.Application,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = _SHUTDOWN_GRACE_SECONDS,
) -> web.AppRunner:
    """Serve ``app`` on a bound socket (TLS when ``ssl_context`` is given); on failure nothing is left open."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=REQUEST_LOG)
    try:
        await runner.setup()
        # IIS accepts a deep queue: a burst of probes must not overflow the simulator's SYN backlog.
        await web.SockSite(runner, sock, ssl_context=ssl_context, backlog=1024).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner
