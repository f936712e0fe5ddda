"""An HTTP CONNECT proxy on loopback, standing in for the outbound proxy BEMS hosts often sit behind.

It tunnels bytes both ways and records every CONNECT it is asked for. Every tunnel leads to the
simulator's own loopback address at the requested port, whatever the host name: like a real proxy it
resolves names on the client's behalf (so an endpoint's nominal host works through it), and it can
never relay a test run to the outside world.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import socket
from enum import StrEnum
from typing import NamedTuple

from .endpoint import bind_loopback_socket

log = logging.getLogger(__name__)

# Bounds on what a client may make the proxy hold before the tunnel exists.
MAX_HEAD_BYTES = 8 * 1024
HEAD_TIMEOUT_SECONDS = 5.0
UPSTREAM_CONNECT_TIMEOUT_SECONDS = 5.0
_CHUNK_BYTES = 64 * 1024
REALM = "BEMS Exchange simulator proxy"


class ProxyFault(StrEnum):
    NONE = "none"
    DENY = "deny"  # answers CONNECT with 403 Forbidden (after authentication, as real proxies do)
    REFUSE = "refuse"  # nothing listens on the proxy's port

    @classmethod
    def parse(cls, value: str) -> ProxyFault:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown proxy fault {value!r}; valid faults: {', '.join(cls)}") from None


class ProxyRequest(NamedTuple):
    """One CONNECT as the proxy saw it; ``authorized`` is true when it passed the proxy's authentication
    (always, when no credentials are required)."""

    host: str
    port: int
    authorized: bool


class _Rejected(Exception):
    """Ends a connection with an error response before any tunnel exists."""

    def __init__(self, status: str, *headers: str) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers


class ForwardProxy:
    """The proxy on a fixed loopback port: ``url`` stays valid until ``close()``, through any fault."""

    def __init__(self, sock: socket.socket) -> None:
        self._host, self.port = sock.getsockname()[:2]
        self.url = f"http://{self._host}:{self.port}"
        self.fault = ProxyFault.NONE
        self.requests: list[ProxyRequest] = []
        self._expected_authorization: bytes | None = None
        self._unused_socket: socket.socket | None = sock
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def reset(self) -> None:
        """As started: no fault, no credentials required, no CONNECT recorded; open tunnels are dropped."""
        await self._stop_listening()
        self._expected_authorization = None
        self.requests = []
        await self.set_fault(ProxyFault.NONE)

    def state(self) -> dict[str, object]:
        """What the admin API shows: the URL, the fault, whether credentials are required, every CONNECT."""
        return {
            "url": self.url,
            "fault": self.fault.value,
            "credentials_required": self._expected_authorization is not None,
            "requests": [request._asdict() for request in self.requests],
        }

    def require_credentials(self, username: str, password: str) -> None:
        """From now on, a CONNECT without this Basic ``Proxy-Authorization`` gets 407."""
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._expected_authorization = token.encode("ascii")

    async def start(self) -> None:
        await self.set_fault(ProxyFault.NONE)

    async def set_fault(self, fault: ProxyFault | str) -> None:
        """Switch the proxy to ``fault``; the next connection sees it. ``refuse`` drops open tunnels."""
        fault = ProxyFault.parse(fault)
        if fault is ProxyFault.REFUSE:
            await self._stop_listening()
        elif self._server is None:
            sock = self._unused_socket or bind_loopback_socket(self._host, self.port)
            self._unused_socket = None
            self._server = await asyncio.start_server(self._on_connection, sock=sock, limit=MAX_HEAD_BYTES)
        self.fault = fault
        log.info("proxy: fault %s", fault)

    async def close(self) -> None:
        await self._stop_listening()
        if self._unused_socket is not None:
            self._unused_socket.close()
            self._unused_socket = None

    async def _stop_listening(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A task of our own rather than the one asyncio would make: asyncio logs an error when
        # its task is cancelled, and stopping the proxy cancels every open tunnel.
        task = asyncio.create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            port = await self._read_connect(reader)
            upstream_reader, upstream_writer = await self._dial(port)
            try:
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                await writer.drain()
                await _relay(reader, writer, upstream_reader, upstream_writer)
            finally:
                upstream_writer.close()
        except _Rejected as rejected:
            with contextlib.suppress(OSError):  # the client may be gone already
                await _answer(writer, rejected.status, *rejected.headers)
        except (asyncio.IncompleteReadError, OSError):
            pass  # a client that stalls (TimeoutError is an OSError) or goes away gets nothing more
        finally:
            writer.close()

    async def _read_connect(self, reader: asyncio.StreamReader) -> int:
        """Read and record a CONNECT request; the port to tunnel to, or _Rejected with the answer."""
        async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise _Rejected("431 Request Header Fields Too Large") from None
        host, port, headers = _parse_connect(head)
        authorized = self._authorized(headers.get("proxy-authorization", ""))
        self.requests.append(ProxyRequest(host, port, authorized))
        if not authorized:
            raise _Rejected("407 Proxy Authentication Required", f'Proxy-Authenticate: Basic realm="{REALM}"')
        if self.fault is ProxyFault.DENY:
            raise _Rejected("403 Forbidden")
        return port

    async def _dial(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_SECONDS):
                return await asyncio.open_connection(self._host, port)
        except TimeoutError:
            raise _Rejected("504 Gateway Timeout") from None
        except OSError:
            raise _Rejected("502 Bad Gateway") from None

    def _authorized(self, header: str) -> bool:
        if self._expected_authorization is None:
            return True
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        return hmac.compare_digest(token.strip().encode("ascii", "replace"), self._expected_authorization)


def _parse_connect(head: bytes) -> tuple[str, int, dict[str, str]]:
    """The target host and port, and the headers (names lower-cased), of a CONNECT request."""
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _Rejected("400 Bad Request")
    method, authority, _version = parts
    if method != "CONNECT":
        raise _Rejected("405 Method Not Allowed", "Allow: CONNECT")
    host, _, port_text = authority.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Rejected("400 Bad Request")
    headers = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return host.strip("[]"), int(port_text), headers


async def _answer(writer: asyncio.StreamWriter, status: str, *extra_headers: str) -> None:
    lines = [f"HTTP/1.1 {status}", *extra_headers, "Content-Length: 0", "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # When one side ends, closing the other's writer ends the opposite direction too.
    try:
        while chunk := await reader.read(_CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass  # a reset or a broken pipe ends the tunnel like an orderly close
    finally:
        writer.close()
