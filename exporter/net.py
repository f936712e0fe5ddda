"""Outbound connections shared by the checks: DNS, TCP connect (direct or through an HTTP CONNECT
proxy) and TLS client contexts. Every step is timed and recorded; every failure is a ProbeFailure."""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import os
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .config import WindowsCredential
from .results import ProbeFailure, Reason, Recorder


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    credential: WindowsCredential | None = None

    @classmethod
    def from_url(cls, url: str | None, credential: WindowsCredential | None) -> Proxy | None:
        if not url:
            return None
        # HTTPS_PROXY often omits the scheme ("proxy.corp:3128"); curl and requests read that as http://.
        parts = urlsplit(url if "://" in url else f"http://{url}")
        try:
            port = parts.port or 3128
        except ValueError:  # only from HTTPS_PROXY: configured proxy URLs were validated at load
            raise ProbeFailure(Reason.PROXY, f"the proxy URL {url!r} has an invalid port", "fix HTTPS_PROXY") from None
        if not parts.hostname:
            raise ProbeFailure(Reason.PROXY, f"the proxy URL {url!r} has no host", "fix HTTPS_PROXY")
        return cls(parts.hostname, port, credential)


@dataclass(slots=True)
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    dns_seconds: float
    connect_seconds: float
    address: str

    def close(self) -> None:
        self.writer.close()


def _client_context_uncached(ca_file: str | None, _stamp: tuple[int, int] | None, verify: bool) -> ssl.SSLContext:
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # With a CA file, that file alone is trusted: REQUESTS_CA_BUNDLE / SSL_CERT_FILE must not widen it.
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


_cached_context = functools.lru_cache(maxsize=32)(_client_context_uncached)


def new_client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A context of its own, for a client library that keeps it (and may add to it)."""
    return _client_context_uncached(ca_file, None, True)


def client_ssl_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """A shared client context per CA file; a changed file (mtime or size) gets a new one."""
    stamp = None
    if ca_file:
        try:
            info = os.stat(ca_file)
            stamp = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
    return _cached_context(ca_file, stamp, verify)


async def resolve(host: str, port: int) -> tuple[list[str], float]:
    """Resolve ``host`` to addresses in the resolver's order; the lookup time is measured."""
    t0 = time.perf_counter()
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return [host], 0.0
    except OSError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as err:
        raise ProbeFailure(
            Reason.DNS,
            f"{host} does not resolve: {err.strerror}",
            f"check that the DNS name {host} exists and that this host's resolver can see it",
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return addresses, time.perf_counter() - t0


async def _tcp_connect(
    addresses: list[str], port: int, host: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    last: OSError | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(address, port)
            return reader, writer, address
        except OSError as err:
            last = err
    assert last is not None
    if isinstance(last, ConnectionRefusedError):
        raise ProbeFailure(
            Reason.REFUSED,
            f"connection to {host}:{port} refused",
            f"nothing accepts connections on {host}:{port}: check that the service (IIS) listens on "
            f"port {port} and that firewalls allow it",
        )
    if last.errno in (errno.ETIMEDOUT,):
        raise ProbeFailure(Reason.TIMEOUT, f"connection to {host}:{port} timed out")
    raise ProbeFailure(
        Reason.UNREACHABLE,
        f"cannot connect to {host}:{port}: {last.strerror or last}",
        "check routing and firewalls between this host and the endpoint",
    )


async def _proxy_connect(proxy: Proxy, host: str, port: int, rec: Recorder) -> Connection:
    async with rec.step(
        f"DNS lookup of proxy {proxy.host}", "the resolver does not answer: check /etc/resolv.conf"
    ) as detail:
        try:
            addresses, dns_seconds = await resolve(proxy.host, proxy.port)
        except ProbeFailure as failure:
            raise ProbeFailure(Reason.PROXY, failure.message, "check the proxy_url host name") from None
        detail.append(", ".join(addresses))
    async with rec.step(
        f"TCP connect to proxy {proxy.host}:{proxy.port}",
        f"the proxy {proxy.host}:{proxy.port} does not accept connections in time: is it up, is a firewall dropping?",
    ):
        t0 = time.perf_counter()
        try:
            reader, writer, address = await _tcp_connect(addresses, proxy.port, proxy.host)
        except ProbeFailure as failure:
            raise ProbeFailure(Reason.PROXY, failure.message, "check that the proxy is running") from None
        connect_seconds = time.perf_counter() - t0
    try:
        async with rec.step(
            f"CONNECT {host}:{port} through the proxy",
            f"the proxy does not answer the CONNECT in time: it may be unable to reach {host}:{port}",
        ) as detail:
            detail.append(await _connect_request(reader, writer, proxy, host, port))
    except BaseException:
        # Also on the check's timeout (a cancellation): the caller never gets this connection to close.
        writer.close()
        raise
    return Connection(reader, writer, dns_seconds, connect_seconds, address)


async def _connect_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: Proxy, host: str, port: int
) -> str:
    """Ask the proxy for a tunnel to host:port; its status line, or a ProbeFailure."""
    request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if proxy.credential is not None:
        token = f"{proxy.credential.username}:{proxy.credential.password.get_secret_value()}"
        request += f"Proxy-Authorization: Basic {base64.b64encode(token.encode()).decode()}\r\n"
    writer.write((request + "\r\n").encode())
    try:
        # The reader's 64 KiB limit bounds a proxy that never ends its header.
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as err:
        raise ProbeFailure(
            Reason.PROXY,
            f"the proxy closed the connection or sent junk ({type(err).__name__})",
            "check the proxy's logs",
        ) from None
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")[:200]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].startswith("2"):
        raise ProbeFailure(
            Reason.PROXY,
            f"the proxy refused CONNECT to {host}:{port}: {status_line}",
            f"allow CONNECT to {host}:{port} on the proxy"
            + (" and check proxy_credential" if parts[1:2] == ["407"] else ""),
        )
    return status_line


async def connect(host: str, port: int, proxy: Proxy | None, rec: Recorder) -> Connection:
    """Open a TCP connection to host:port, recording DNS and connect steps."""
    if proxy is not None:
        return await _proxy_connect(proxy, host, port, rec)
    async with rec.step(f"DNS lookup of {host}", "the resolver does not answer: check /etc/resolv.conf") as detail:
        addresses, dns_seconds = await resolve(host, port)
        detail.append(", ".join(addresses))
    async with rec.step(
        f"TCP connect to {host}:{port}",
        f"{host}:{port} does not accept the connection in time: a firewall may be dropping packets to port {port}",
    ) as detail:
        t0 = time.perf_counter()
        reader, writer, address = await _tcp_connect(addresses, port, host)
        connect_seconds = time.perf_counter() - t0
        detail.append(f"connected to {address}")
    return Connection(reader, writer, dns_seconds, connect_seconds, address)
