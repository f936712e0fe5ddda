"""The exporter's own HTTP(S) listener for EWS push and Graph webhook callbacks.

Only the expected paths answer (under the path of ``notifications.public_url``); bodies are read up to
a bound; a Graph validation request is echoed at once, as Graph requires within 10 seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from ..checks.push_state import MAX_CALLBACK_BYTES, PushRegistry
from ..config import Notifications, parse_listen_address
from . import serving
from .serving import CertificateReloader

log = logging.getLogger(__name__)


BODY_SECONDS = 10.0  # Exchange and Graph send a callback at once; Graph itself gives up after 3 s


async def _body(request: web.Request) -> bytes:
    # Up to one byte past the bound: enough to tell an oversize body without reading the rest of it; and
    # within a deadline, so that a client dripping its body cannot hold a connection for ever.
    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_SECONDS):
            while size <= MAX_CALLBACK_BYTES:
                chunk = await request.content.read(MAX_CALLBACK_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except ConnectionResetError:
        # The caller went away mid-body (a slow or broken client): nothing to answer, nothing to log
        # as an error (aiohttp would log a traceback per dropped connection).
        raise web.HTTPBadRequest() from None
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    return b"".join(chunks)


class Listener:
    def __init__(self, registry: PushRegistry) -> None:
        self.registry = registry
        self.settings: Notifications | None = None
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None

    def take_socket(self, sock: socket.socket) -> None:
        """From the next start on, serve on ``sock`` (bound and listening: systemd's ``notifications`` socket,
        or a test's) instead of binding ``listen_address``. It stays open across restarts and stops."""
        self._socket = serving.check_listening(sock)

    def _app(self, prefix: str) -> web.Application:
        app = web.Application(client_max_size=MAX_CALLBACK_BYTES * 2)
        app.router.add_post(prefix + "/push/ews/{target}", self._ews)  # no secret: subscriptions of old versions
        app.router.add_post(prefix + "/push/ews/{target}/{secret}", self._ews)
        app.router.add_post(prefix + "/push/graph/{target}", self._graph)
        app.router.add_post(prefix + "/push/graph/{target}/lifecycle", self._graph_lifecycle)
        return app

    async def _ews(self, request: web.Request) -> web.Response:
        target, secret = request.match_info["target"], request.match_info.get("secret")
        status, body = self.registry.ews_callback(target, secret, await _body(request))
        return web.Response(status=status, body=body, content_type="text/xml", charset="utf-8")

    async def _graph(self, request: web.Request) -> web.Response:
        return await self._graph_common(request, lifecycle=False)

    async def _graph_lifecycle(self, request: web.Request) -> web.Response:
        return await self._graph_common(request, lifecycle=True)

    async def _graph_common(self, request: web.Request, lifecycle: bool) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:  # Graph proves the URL is ours: echo the decoded token as text/plain
            known = request.match_info["target"] in self.registry.targets
            return web.Response(status=200 if known else 404, text=token if known else "", content_type="text/plain")
        status = self.registry.graph_callback(request.match_info["target"], await _body(request), lifecycle)
        return web.Response(status=status)

    async def apply(self, settings: Notifications | None) -> None:
        """Listen as ``settings`` say: (re)start on a change, stop when they are gone."""
        if settings == self.settings and (self._runner is not None or settings is None):
            return
        await self.stop()
        self.settings = settings
        if settings is None:
            return
        bind = self._socket or parse_listen_address(settings.listen_address)
        tls = None
        if settings.tls is not None:  # re-read when the files change: a renewal needs no restart
            cert, key = settings.tls.cert_file, settings.tls.key_file
            files = [Path(cert), Path(key)]
            tls = CertificateReloader(
                partial(serving.server_context, cert, key), files, "notification listener"
            ).context
        app = self._app(urlsplit(settings.public_url).path.rstrip("/"))
        limits = serving.limits_for("listener", serving.LISTENER_CONNECTIONS, **serving.LISTENER_HEADS)
        self._runner = await serving.start_server(app, bind, tls, limits)
        if settings.public_url.startswith("http://"):
            log.warning(
                "notifications.public_url is http://: callbacks, and the secrets in their URLs, cross the network "
                "in clear; give an https:// URL (the listener's tls, or a proxy that terminates TLS)",
                extra={"fields": {"public_url": settings.public_url}},
            )
        address = settings.listen_address if self._socket is None else serving.address_of(self._socket)
        fields = {"address": address, "public_url": settings.public_url}
        log.info("notification listener started", extra={"fields": fields})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
