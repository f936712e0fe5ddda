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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import WindowsCredential
from ..results import ProbeFailure, Reason, Recorder
from . import lookup_threads

RECEIVE_SIZE = 16384  # one TLS record
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux
PROXY_HEAD_LIMIT = 65536  # a proxy whose answer never ends costs at most this much


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
        # HTTPS_PROXY may carry credentials (http://user:password@proxy:3128): never echoed in a message.
        shown = repr(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
        try:
            port = parts.port or 3128
        except ValueError:  # only from HTTPS_PROXY: configured proxy URLs were validated at load
            raise ProbeFailure(Reason.PROXY, f"the proxy URL {shown} has an invalid port", "fix HTTPS_PROXY") from None
        if not parts.hostname:
            raise ProbeFailure(Reason.PROXY, f"the proxy URL {shown} has no host", "fix HTTPS_PROXY")
        return cls(parts.hostname, port, credential)


@dataclass(slots=True)
class Connection:
    """A connected non-blocking socket; ``early`` holds bytes a proxy sent after its CONNECT answer."""

    sock: socket.socket
    dns_seconds: float
    connect_seconds: float
    address: str
    early: bytes = b""

    def close(self) -> None:
        self.sock.close()


CaFileStamp = tuple[int, int, int]  # (mtime, size, inode) of a CA file


def _client_context_uncached(ca_file: str | None, _stamp: CaFileStamp | None, verify: bool) -> ssl.SSLContext:
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # With a CA file, that file alone is trusted: REQUESTS_CA_BUNDLE / SSL_CERT_FILE must not widen it.
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


_cached_context = functools.lru_cache(maxsize=32)(_client_context_uncached)
_cached_requests_context = functools.lru_cache(maxsize=32)(_client_context_uncached)  # a cache apart from the above


def requests_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The context every requests session (NTLM, Kerberos, MSAL) shares, one per CA file content.

    Shared, because a context holds its trust store: with the system's roots one costs 835 KiB of RSS (a
    CA file of one certificate 18 KiB), and WindowsSessions keeps a session per target and origin: with a
    context each, 100 sessions took 80.7 MiB, shared 0.3 MiB. Safe to share: urllib3 sets on it only what
    it sets for every session alike (verify_mode CERT_REQUIRED, ALPN http/1.1) and loads no CA file into it
    (``http_client._TrustAdapter.cert_verify``), and nothing loads a client certificate into it (aiohttp's
    sessions, which may, build their own). Not the ``tls`` check's contexts: those offer no ALPN.
    """
    return _cached_requests_context(ca_file, ca_file_stamp(ca_file), True)


def new_client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A context of its own, for a client library that keeps it (and may add to it).

    Whoever keeps one keeps ``ca_file_stamp(ca_file)`` with it, and builds a new one when the stamp
    changes: every check then trusts the same CA file content at the same time.
    """
    return _client_context_uncached(ca_file, None, True)


CA_FILE_RECHECK_SECONDS = 1.0
_ca_file_stamps: dict[str, tuple[float, CaFileStamp | None]] = {}  # ca_file -> (looked at, stamp)


def ca_file_stamp(ca_file: str | None) -> CaFileStamp | None:
    """The CA file's (mtime, size, inode), looked at no more than once a second: checks run thousands of
    times a minute. The inode changes when a file is replaced by a rename (a Kubernetes secret update)."""
    if ca_file is None:
        return None
    now = time.monotonic()
    seen = _ca_file_stamps.get(ca_file)
    if seen is not None and now - seen[0] < CA_FILE_RECHECK_SECONDS:
        return seen[1]
    try:
        info = os.stat(ca_file)
        stamp: CaFileStamp | None = (info.st_mtime_ns, info.st_size, info.st_ino)
    except OSError:
        stamp = None
    _ca_file_stamps[ca_file] = (now, stamp)
    return stamp


def client_ssl_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """A shared client context per CA file; a changed file (mtime, size or inode) gets a new one within a second."""
    return _cached_context(ca_file, ca_file_stamp(ca_file), verify)


# Resolves (host, port) to addresses in the order to try, and says how long that took: ``resolve`` below,
# or a target's own resolvers (``dns_lookup``).
Lookup = Callable[[str, int], Awaitable[tuple[list[str], float]]]
SYSTEM_RESOLVER_HINT = "the resolver does not answer: check /etc/resolv.conf"


async def resolve(host: str, port: int) -> tuple[list[str], float]:
    """Resolve ``host`` to addresses in the system resolver's order; the lookup time is measured.

    Through ``getaddrinfo``, as every other program on the host: the hosts file, nsswitch.conf,
    host.conf, RFC 6724 ordering and ``AI_ADDRCONFIG`` apply as the operator configured them, so a
    disagreement with DNS reads the same here as in ``getent ahosts``. An IP address is its own answer.
    The call runs on ``lookup_threads``, which hands its answer back more cheaply than the default executor.
    """
    t0 = time.perf_counter()
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return [host], 0.0
    except OSError:
        pass
    try:
        infos = await lookup_threads.getaddrinfo(host, port)
    except socket.gaierror as err:
        raise ProbeFailure(
            Reason.DNS,
            f"{host} does not resolve: {err.strerror}",
            f"check that the DNS name {host} exists and that this host's resolver can see it",
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return addresses, time.perf_counter() - t0


async def _open_socket(address: str, port: int) -> socket.socket:
    """A non-blocking socket connected to address:port; closed again if connecting fails or is cancelled."""
    # Non-blocking from its creation where the platform allows it (one system call less per check).
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _tcp_connect(addresses: list[str], port: int, host: str) -> tuple[socket.socket, str]:
    last: OSError | None = None
    for address in addresses:
        try:
            return await _open_socket(address, port), address
        except OSError as err:
            last = err
    assert last is not None
    raise connect_failure(last, host, port)


def connect_failure(err: OSError, host: str, port: int) -> ProbeFailure:
    """What a failed TCP connect means, for every transport (raw sockets, aiohttp, requests)."""
    if isinstance(err, ConnectionRefusedError):
        return ProbeFailure(
            Reason.REFUSED,
            f"connection to {host}:{port} refused",
            f"nothing accepts connections on {host}:{port}: check that the service (IIS) listens on "
            f"port {port} and that firewalls allow it",
        )
    if err.errno == errno.ETIMEDOUT:  # the kernel gave up on unanswered SYNs: dropped, not rejected
        return ProbeFailure(
            Reason.TIMEOUT,
            f"connection to {host}:{port} timed out",
            f"nothing answered the connection to {host}:{port}: a firewall may be dropping packets to port {port}",
        )
    return ProbeFailure(
        Reason.UNREACHABLE,
        f"cannot connect to {host}:{port}: {err.strerror or err}",
        "check routing and firewalls between this host and the endpoint",
    )


CERTIFICATE_HINT = (
    "the endpoint's certificate is rejected: the tls check of this target says which certificate and why "
    "(expired, another host name, an untrusted issuer)"
)


def tls_failure(err: OSError, where: str) -> ProbeFailure:
    """A handshake that failed before any certificate was judged: plain HTTP on the port, a protocol or
    cipher mismatch, a device that cuts TLS. (Certificate verdicts are the tls check's, with their hints.)"""
    return ProbeFailure(
        Reason.TLS,
        f"TLS handshake failed: {getattr(err, 'reason', None) or err}",
        f"check that {where} speaks TLS 1.2 or later (is it plain HTTP, or a TLS-inspecting device?)",
    )


async def _proxy_connect(proxy: Proxy, host: str, port: int, rec: Recorder) -> Connection:
    async with rec.step(f"DNS lookup of proxy {proxy.host}", SYSTEM_RESOLVER_HINT) as detail:
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
            sock, address = await _tcp_connect(addresses, proxy.port, proxy.host)
        except ProbeFailure as failure:
            raise ProbeFailure(Reason.PROXY, failure.message, "check that the proxy is running") from None
        connect_seconds = time.perf_counter() - t0
    try:
        async with rec.step(
            f"CONNECT {host}:{port} through the proxy",
            f"the proxy does not answer the CONNECT in time: it may be unable to reach {host}:{port}",
        ) as detail:
            status_line, early = await _connect_request(sock, proxy, host, port)
            detail.append(status_line)
    except BaseException:
        # Also on the check's timeout (a cancellation): the caller never gets this connection to close.
        sock.close()
        raise
    return Connection(sock, dns_seconds, connect_seconds, address, early)


async def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The proxy's answer up to its blank line, and whatever came after it."""
    loop = asyncio.get_running_loop()
    received = b""
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > PROXY_HEAD_LIMIT:
            raise ProbeFailure(
                Reason.PROXY, f"the proxy's answer has no end within {PROXY_HEAD_LIMIT} bytes", "check the proxy"
            )
        chunk = await loop.sock_recv(sock, RECEIVE_SIZE)
        if not chunk:
            raise ProbeFailure(Reason.PROXY, "the proxy closed the connection", "check the proxy's logs")
        received += chunk
    return received[: end + 4], received[end + 4 :]


async def _connect_request(sock: socket.socket, proxy: Proxy, host: str, port: int) -> tuple[str, bytes]:
    """Ask the proxy for a tunnel to host:port: its status line and any bytes after its head, or a ProbeFailure."""
    request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if proxy.credential is not None:
        token = f"{proxy.credential.username}:{proxy.credential.password.get_secret_value()}"
        request += f"Proxy-Authorization: Basic {base64.b64encode(token.encode()).decode()}\r\n"
    try:
        await asyncio.get_running_loop().sock_sendall(sock, (request + "\r\n").encode())
        head, early = await _read_head(sock)
    except ConnectionError as err:
        raise ProbeFailure(
            Reason.PROXY, f"the proxy closed the connection ({type(err).__name__})", "check the proxy's logs"
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
    return status_line, early


async def connect(
    host: str,
    port: int,
    proxy: Proxy | None,
    rec: Recorder,
    lookup: Lookup = resolve,
    lookup_hint: str = SYSTEM_RESOLVER_HINT,
) -> Connection:
    """Open a TCP connection to host:port, recording DNS and connect steps.

    ``lookup`` resolves ``host`` for a direct connection (through a proxy, the proxy resolves it);
    ``lookup_hint`` says what to check when it does not finish within the check's timeout.
    """
    if proxy is not None:
        return await _proxy_connect(proxy, host, port, rec)
    async with rec.step(f"DNS lookup of {host}", lookup_hint) as detail:
        addresses, dns_seconds = await lookup(host, port)
        detail.append(", ".join(addresses))
    async with rec.step(
        f"TCP connect to {host}:{port}",
        f"{host}:{port} does not accept the connection in time: a firewall may be dropping packets to port {port}",
    ) as detail:
        t0 = time.perf_counter()
        sock, address = await _tcp_connect(addresses, port, host)
        connect_seconds = time.perf_counter() - t0
        detail.append(f"connected to {address}")
    return Connection(sock, dns_seconds, connect_seconds, address)


async def tls_handshake(conn: Connection, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLObject:
    """A TLS client handshake over ``conn``, driven through memory buffers.

    Cheaper than ``start_tls``'s transport and protocol layers, and works on every event loop
    (sock_recv/sock_sendall exist on the Windows proactor too). The caller's timeout bounds it; the
    caller closes the connection. Verification errors raise ``ssl.SSLCertVerificationError``.
    """
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    if conn.early:
        incoming.write(conn.early)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                await loop.sock_sendall(conn.sock, outgoing.read())
            received = await loop.sock_recv(conn.sock, RECEIVE_SIZE)
            if received:
                incoming.write(received)
            else:
                incoming.write_eof()  # the next do_handshake raises SSLEOFError
    if outgoing.pending:  # the client's Finished: without it the server logs an aborted handshake
        await loop.sock_sendall(conn.sock, outgoing.read())
    return tls
