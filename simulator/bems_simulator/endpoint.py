"""One simulated HTTPS endpoint on a fixed loopback port, and the faults it can be switched into.

Every fault change tears the current listener down (dropping its open connections, as a restarted
server would) and starts the one the new fault needs on the same port, so the change holds for the
very next connection. ``refuse`` leaves the port unbound; the socket is re-bound with SO_REUSEADDR
when another fault is set, which works although the old connections sit in TIME_WAIT.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web

from .hostile import Hostile, HostileKind
from .serving import serve_app
from .tls import LOOPBACK_HOSTNAME, CertificateVariant, ServerCertificates

log = logging.getLogger(__name__)

# How long an in-flight request may finish when its listener is torn down by a fault change.
# Long enough to exceed any reasonable probe timeout, so `slow` without a delay shows up as a timeout.
DEFAULT_SLOW_DELAY_SECONDS = 10.0


class Fault(StrEnum):
    NONE = "none"
    REFUSE = "refuse"
    HANG = "hang"
    SLOW = "slow"
    EXPIRED = "expired"
    WRONG_HOST = "wrong_host"
    UNTRUSTED = "untrusted"
    PLAINTEXT = "plaintext"
    NOT_YET_VALID = "not_yet_valid"
    # Leaf and intermediate presented together, the intermediate expiring first (in 30 days) or expired.
    INTERMEDIATE_EXPIRES_FIRST = "intermediate_expires_first"
    INTERMEDIATE_EXPIRED = "intermediate_expired"
    # Hostile replies after TLS and authentication (hostile.py).
    ENTITY_EXPANSION = HostileKind.ENTITY_EXPANSION.value
    XXE = HostileKind.XXE.value
    ENDLESS_BODY = HostileKind.ENDLESS_BODY.value
    HUGE_CONTENT_LENGTH = HostileKind.HUGE_CONTENT_LENGTH.value
    GZIP_BOMB = HostileKind.GZIP_BOMB.value
    DRIP = HostileKind.DRIP.value
    REDIRECT_LOOP = HostileKind.REDIRECT_LOOP.value
    REDIRECT_HTTP = HostileKind.REDIRECT_HTTP.value
    REDIRECT_FOREIGN = HostileKind.REDIRECT_FOREIGN.value
    TRUNCATED_XML = HostileKind.TRUNCATED_XML.value
    INVALID_UTF8 = HostileKind.INVALID_UTF8.value
    WRONG_NAMESPACE = HostileKind.WRONG_NAMESPACE.value
    HTML_200 = HostileKind.HTML_200.value
    CONNECTION_RESET = HostileKind.CONNECTION_RESET.value

    @classmethod
    def parse(cls, value: str) -> Fault:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown fault {value!r}; valid faults: {', '.join(cls)}") from None


_CERTIFICATE_FOR_FAULT = {
    Fault.NONE: CertificateVariant.VALID,
    Fault.SLOW: CertificateVariant.VALID,
    Fault.EXPIRED: CertificateVariant.EXPIRED,
    Fault.NOT_YET_VALID: CertificateVariant.NOT_YET_VALID,
    Fault.WRONG_HOST: CertificateVariant.WRONG_HOST,
    Fault.UNTRUSTED: CertificateVariant.UNTRUSTED,
    Fault.INTERMEDIATE_EXPIRES_FIRST: CertificateVariant.INTERMEDIATE_EXPIRES_FIRST,
    Fault.INTERMEDIATE_EXPIRED: CertificateVariant.INTERMEDIATE_EXPIRED,
    **{Fault(kind.value): CertificateVariant.VALID for kind in HostileKind},
}


def bind_loopback_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _Listener(Protocol):
    async def stop(self) -> None: ...


class _HttpListener:
    """Serves an aiohttp application over TLS, or over plain HTTP when ``ssl_context`` is None."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @classmethod
    async def start(
        cls, app: web.Application, sock: socket.socket, ssl_context: ssl.SSLContext | None
    ) -> _HttpListener:
        return cls(await serve_app(app, sock, ssl_context))

    async def stop(self) -> None:
        await self._runner.cleanup()


class _SilentProtocol(asyncio.Protocol):
    """Accepts a connection and never sends a byte, so a TLS client waits for its ServerHello."""

    def __init__(self, connections: set[asyncio.BaseTransport]) -> None:
        self._connections = connections
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self._transport)


class _SilentListener:
    def __init__(self, server: asyncio.Server, connections: set[asyncio.BaseTransport]) -> None:
        self._server = server
        self._connections = connections

    @classmethod
    async def start(cls, sock: socket.socket) -> _SilentListener:
        connections: set[asyncio.BaseTransport] = set()
        server = await asyncio.get_running_loop().create_server(lambda: _SilentProtocol(connections), sock=sock)
        return cls(server, connections)

    async def stop(self) -> None:
        self._server.close()
        for transport in list(self._connections):
            transport.close()
        await self._server.wait_closed()


class Endpoint:
    """A named endpoint: its port is fixed for the simulator's life, its fault can change at any time.

    ``build_app`` returns a fresh aiohttp application with the endpoint's protocol routes; it is called
    on each restart because an application cannot outlive the runner that froze it.
    """

    def __init__(
        self,
        name: str,
        nominal_host: str,
        sock: socket.socket,
        build_app: Callable[[], web.Application],
        certificates: ServerCertificates,
        reached_by_address: bool = False,
        hostile: Hostile | None = None,
        asks_client_certificate: Callable[[], bool] = lambda: False,
    ) -> None:
        self._asks_client_certificate = asks_client_certificate  # read at each (re)start, as IIS binds
        self.name = name
        self.nominal_host = nominal_host
        self._host, self.port = sock.getsockname()[:2]
        # Normally reached as localhost; ``reached_by_address`` makes it a host of its own, named by its IP
        # address in its URL and certificate, and not by localhost.
        url_host = self._host if reached_by_address else LOOPBACK_HOSTNAME
        self.url = f"https://{url_host}:{self.port}"
        self._certificate_hostnames = [nominal_host] if reached_by_address else [LOOPBACK_HOSTNAME, nominal_host]
        self.fault = Fault.NONE
        self.delay_seconds = 0.0
        self._unused_socket: socket.socket | None = sock
        self._build_app = build_app
        self._certificates = certificates
        self._listener: _Listener | None = None
        self._hostile = hostile
        # Serialises fault changes: two overlapping restarts would race for the same port.
        self._lock = asyncio.Lock()

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "port": self.port, "fault": str(self.fault), "delay_seconds": self.delay_seconds}

    async def start(self) -> None:
        await self.set_fault(Fault.NONE)

    async def set_fault(self, fault: Fault | str, delay_seconds: float | None = None) -> None:
        fault = Fault.parse(fault)
        delay_seconds = _validated_delay(fault, delay_seconds)
        async with self._lock:
            await self._stop_listener()
            # Truthful should the new listener fail to start: then nothing listens on the port.
            self.fault, self.delay_seconds = Fault.REFUSE, 0.0
            self._listener = await self._start_listener(fault)
            self.fault, self.delay_seconds = fault, delay_seconds
        log.info("endpoint %s: fault %s (delay %.1f s)", self.name, fault, delay_seconds)

    async def close(self) -> None:
        async with self._lock:
            await self._stop_listener()
            if self._unused_socket is not None:
                self._unused_socket.close()
                self._unused_socket = None

    async def _start_listener(self, fault: Fault) -> _Listener | None:
        if fault is Fault.REFUSE:
            return None
        sock = self._unused_socket or bind_loopback_socket(self._host, self.port)
        self._unused_socket = None
        try:
            if fault is Fault.HANG:
                return await _SilentListener.start(sock)
            if fault is Fault.PLAINTEXT:
                ssl_context = None
            else:
                variant = _CERTIFICATE_FOR_FAULT[fault]
                ssl_context = self._certificates.context(
                    self.name, self._certificate_hostnames, variant, self._asks_client_certificate()
                )
            app = self._build_app()
            app.middlewares.append(self._delay_when_slow)
            if fault.value in HostileKind.__members__.values():
                if self._hostile is None:
                    raise ValueError(f"endpoint {self.name} has no hostile replies for the {fault} fault")
                app.middlewares.append(self._hostile.middleware(self.name, HostileKind(fault.value)))
            return await _HttpListener.start(app, sock, ssl_context)
        except BaseException:
            sock.close()
            raise

    async def _stop_listener(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    @web.middleware
    async def _delay_when_slow(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.fault is Fault.SLOW:
            await asyncio.sleep(self.delay_seconds)
        return await handler(request)


def _validated_delay(fault: Fault, delay_seconds: float | None) -> float:
    if fault is not Fault.SLOW:
        if delay_seconds:
            raise ValueError(f"delay_seconds applies only to the {Fault.SLOW} fault, not to {fault}")
        return 0.0
    if delay_seconds is None:
        return DEFAULT_SLOW_DELAY_SECONDS
    if isinstance(delay_seconds, bool) or not isinstance(delay_seconds, int | float):
        raise ValueError(f"delay_seconds must be a number of seconds, not {delay_seconds!r}")
    if not math.isfinite(delay_seconds) or delay_seconds <= 0:
        raise ValueError(f"delay_seconds must be a positive number of seconds, not {delay_seconds!r}")
    return float(delay_seconds)


class UnknownEndpointError(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown endpoint {name!r}; endpoints: {', '.join(known)}")
