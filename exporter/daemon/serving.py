"""How the exporter's two HTTP servers, the web port and the notification listener, take connections.

The listener must be reachable from the Internet (Exchange and Graph call it back), and the web port often
is from a whole network, so both are built here with the same defences (docs/security.md, "The notification
listener"):

- at most ``max_connections`` open at once per server, counted from ``accept`` to close (TLS handshakes
  included): beyond it the server stops accepting and new connections wait in the kernel's backlog, as Go's
  ``netutil.LimitListener`` does. Each server has its own count, so a listener flood cannot starve
  ``/metrics``, and each stays a small share of the process's file descriptors, so neither can starve the
  checks' own sockets;
- the TLS handshake and the request head within ``head_seconds`` of the connection (or of the previous
  answer on a kept-alive one), which also bounds an idle keep-alive: aiohttp arms its keep-alive timer at
  ``connection_made`` and closes a connection still waiting for a complete head when it fires, so its
  ``keepalive_timeout`` is the header deadline (aiohttp 3.14 has no separate one; its own default is an hour);
- small request-line, header-field and header-count limits, and reads of 16 KiB at a time, so that a
  connection's unfinished or malformed head costs at most about ``2 * max_headers * max_field_size`` bytes;
- TLS 1.2 with AEAD suites only, or TLS 1.3; no ``Server`` header naming Python's and aiohttp's versions;
- accept errors (``EMFILE`` and kin) and aiohttp's line per malformed request logged at most once per
  ``ACCEPT_LOG_SECONDS``, with how many were held back.

A server binds its address itself, or takes a socket already bound and listening (systemd's socket
activation, ``--web.systemd-socket``; a test's): the same defences apply to it, and it stays open when the
server stops, so that the notification listener restarted by a reload serves on it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp.web_response
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ConfigError

log = logging.getLogger(__name__)

HEAD_SECONDS = 5.0
WEB_CONNECTIONS = 64  # Prometheus, a few people, alerting: far fewer at once
LISTENER_CONNECTIONS = 128  # Exchange and Graph: one callback per subscription at a time
# Exchange's and Graph's callbacks carry a dozen short headers: the Internet-facing listener allows less than
# the web port. aiohttp keeps each header twice (raw and decoded) until the head is complete, so an unfinished
# head costs up to 2 * max_headers * max_field_size: 192 KiB here, 24 MiB for a full listener.
LISTENER_HEADS = {"max_field_size": 4096, "max_headers": 24}
# Each server holds at most this share of the soft NOFILE limit, so that the two together leave at least
# three quarters of the descriptors to the checks (and to the log, config and certificate files).
NOFILE_SHARE = 8
ACCEPT_LOG_SECONDS = 10.0
ACCEPT_RETRY_SECONDS = 0.5  # after a failed accept (out of descriptors): the moment a connection takes to end
BACKLOG = 128
READ_BYTES = 16 * 1024  # what a connection reads at a time (see _Counted)
SERVER_HEADER = "bems-exchange-exporter"  # no version: nothing to match against a list of advisories
# Mozilla's "intermediate" TLS 1.2 suites (ssl-config.mozilla.org, guidelines 5.7): ECDHE or DHE key
# exchange with AES-GCM or ChaCha20-Poly1305, no CBC. TLS 1.3's suites are all AEAD and set apart.
AEAD_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
FALLBACK_NOFILE = 1024  # what to assume where the limit cannot be read (Windows has no resource module)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    name: str  # "web" or "listener", in logs
    max_connections: int
    head_seconds: float = HEAD_SECONDS
    max_line_size: int = 4096  # the request line: the exporter's paths and queries are short
    max_field_size: int = 8190  # one header line, aiohttp's and nginx's usual bound (room for a bearer token)
    max_headers: int = 32  # Exchange, Graph and Prometheus send about ten; proxies add a few


def limits_for(name: str, max_connections: int, nofile: int | None = None, **heads: int) -> ServerLimits:
    """``name``'s limits, its connection cap held to its share of the soft NOFILE limit; ``heads`` overrides
    the request-head limits."""
    nofile = soft_nofile() if nofile is None else nofile
    return ServerLimits(name, max(1, min(max_connections, nofile // NOFILE_SHARE)), **heads)


def soft_nofile() -> int:
    try:
        import resource
    except ImportError:
        return FALLBACK_NOFILE
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FALLBACK_NOFILE if soft == resource.RLIM_INFINITY else int(soft)


def limit_process() -> None:
    """At start (POSIX): raise the soft NOFILE limit to the hard one, and disable core dumps, which would
    write the service account's password and the app secret to disk."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as err:  # an unlimited hard limit is beyond the kernel's nr_open
            log.debug("could not raise the NOFILE limit", extra={"fields": {"soft": soft, "hard": hard, "err": err}})
    try:
        # The soft limit is what a dump obeys. The hard one stays, so that a process that calls this (tests run
        # the CLI in-process) can still start children with their own limits; systemd's LimitCORE=0 sets both.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ValueError, OSError) as err:
        log.warning("could not disable core dumps", extra={"fields": {"err": err}})


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 with AEAD suites only, or TLS 1.3, on a server context."""
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # no AEAD suite exists below it
    context.set_ciphers(AEAD_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert_file, key_file)
    return context


TLSSource = ssl.SSLContext | Callable[[], ssl.SSLContext]  # a context, or what gives each connection its own


class RateLimit(logging.Filter):
    """Let through at most one record per ``every`` seconds, saying how many were held back since the last.

    On each server's own logger: failed accepts (out of descriptors under a flood) and aiohttp's line per
    malformed request would otherwise write a line (and a traceback) per connection. A malformed request
    is the client's doing: its traceback is dropped, the message kept."""

    def __init__(self, every: float = ACCEPT_LOG_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every, self._clock = every, clock
        self.held_back = 0
        self._passed_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if self._passed_at is not None and now - self._passed_at < self.every:
            self.held_back += 1
            return False
        if self.held_back:
            record.msg = f"{record.msg} (and {self.held_back} more like it in the last {now - self._passed_at:.0f} s)"
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            record.exc_info, record.exc_text = None, None
        self._passed_at, self.held_back = now, 0
        return True


def server_logger(name: str) -> logging.Logger:
    """The rate-limited logger of server ``name`` (one filter, however often the server restarts)."""
    logger = log.getChild(name)
    if not any(isinstance(f, RateLimit) for f in logger.filters):
        logger.addFilter(RateLimit())
    return logger


class _ReadGate:
    """The transport as aiohttp's protocol sees it: everything passes through, except that its
    ``pause_reading``/``resume_reading`` are recorded, so that the transport reads only when neither aiohttp
    (its flow control) nor ``_Counted`` (one read per turn of the loop) holds it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._holders: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def hold(self, holder: str) -> None:
        if not self._holders and not self._transport.is_closing():
            self._transport.pause_reading()
        self._holders.add(holder)

    def release(self, holder: str) -> None:
        if holder not in self._holders:
            return
        self._holders.discard(holder)
        if not self._holders and not self._transport.is_closing():
            self._transport.resume_reading()

    def pause_reading(self) -> None:
        self.hold("aiohttp")

    def resume_reading(self) -> None:
        self.release("aiohttp")


class _Counted(asyncio.BufferedProtocol):
    """aiohttp's protocol for one connection, giving its slot back when the connection ends, and fed at most
    ``READ_BYTES`` at a time, one read per turn of the event loop: aiohttp keeps the error of a malformed head,
    and with its traceback the chunk read when it was raised, until its handler has answered the error. With
    the transports' 256 KiB reads a header flood pinned some 100 MiB that way; and uvloop (libuv) reads a
    connection until its socket is drained before any task runs, so without the pause after each read the
    handler answered only once a flood of 200 heads of 1 MiB had cost 98 MiB (asyncio's selector loop reads
    once per turn by itself)."""

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner, self._release = inner, release
        self._buffer = bytearray(READ_BYTES)
        self._gate: _ReadGate  # from connection_made, which comes before any read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gate = _ReadGate(cast(asyncio.Transport, transport))
        self._inner.connection_made(self._gate)  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._inner.data_received(bytes(memoryview(self._buffer)[:nbytes]))
        # The next read waits for the next turn, after the tasks this one woke.
        self._gate.hold("turn")
        asyncio.get_running_loop().call_soon(self._gate.release, "turn")

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._release()


class _Slot:
    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


def _bind(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets as ``loop.create_server`` makes them: every address of ``host``, all interfaces
    (IPv4 and IPv6) for None."""
    sockets: list[socket.socket] = []
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix" and sys.platform != "cygwin":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def check_listening(sock: socket.socket) -> socket.socket:
    """``sock`` itself, non-blocking, if it is a TCP socket that listens; else ValueError saying what it is."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        raise ValueError(f"not a TCP socket ({sock.family.name}, {sock.type.name})")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("a TCP socket that does not listen")
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket) -> str:
    """``HOST:PORT`` (``[V6]:PORT``) a socket is bound to, as --web.listen-address spells it."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


Bind = tuple[str | None, int] | socket.socket  # (host, port) to bind, or a socket bound and listening already


class _Acceptor:
    """The accept loops of one server's sockets, sharing its connection cap; quacks as the
    ``asyncio.Server`` aiohttp's sites keep (``sockets``, ``close``). It closes the sockets it ``owns``
    (those it bound), not a handed-over one."""

    def __init__(
        self, sockets: list[socket.socket], protocol: Callable[[], asyncio.Protocol], tls: TLSSource | None,
        limits: ServerLimits, owns: bool = True,
    ) -> None:  # fmt: skip
        self.sockets, self._owns = sockets, owns
        self._protocol, self._tls, self._limits = protocol, tls, limits
        self._slots = asyncio.Semaphore(limits.max_connections)
        self._log = server_logger(limits.name)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops = [self._spawn(self._accept(sock)) for sock in sockets]

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                conn, _address = await loop.sock_accept(sock)
            except OSError as err:
                self._slots.release()
                self._log.warning("cannot accept a connection", extra={"fields": {"err": err.strerror or err}})
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            except BaseException:
                self._slots.release()
                raise
            self._spawn(self._start(conn))

    async def _start(self, conn: socket.socket) -> None:
        slot = _Slot(self._slots)
        context = None
        try:
            context = self._tls() if callable(self._tls) else self._tls
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Counted(self._protocol(), slot.release), conn, ssl=context,
                ssl_handshake_timeout=self._limits.head_seconds if context is not None else None,
            )  # fmt: skip
        except (OSError, TimeoutError) as err:  # a failed or timed-out handshake, a client gone at once
            log.debug("connection ended before its first request", extra={"fields": {"err": err}})
            conn.close()
            slot.release()
        except BaseException:
            conn.close()
            slot.release()
            raise

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for sock in self.sockets if self._owns else ():
            sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


class LimitedSite(web.BaseSite):
    """A TCP site whose connections go through ``_Acceptor``."""

    __slots__ = ("_bind", "_limits", "_tls")

    def __init__(self, runner: web.BaseRunner, bind: Bind, tls: TLSSource | None, limits: ServerLimits) -> None:
        super().__init__(runner)
        self._bind, self._tls, self._limits = bind, tls, limits

    @property
    def name(self) -> str:
        if isinstance(self._bind, socket.socket):
            where = address_of(self._bind)
        else:
            where = f"{self._bind[0] or '0.0.0.0'}:{self.port}"
        return f"{'https' if self._tls else 'http'}://{where}"

    @property
    def port(self) -> int:
        acceptor = self._server
        if acceptor is not None:
            return int(acceptor.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        return int(self._bind.getsockname()[1]) if isinstance(self._bind, socket.socket) else self._bind[1]

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        if isinstance(self._bind, socket.socket):
            acceptor = _Acceptor([check_listening(self._bind)], server, self._tls, self._limits, owns=False)
        else:
            acceptor = _Acceptor(_bind(*self._bind), server, self._tls, self._limits)
        self._server = acceptor  # type: ignore[assignment]

    async def stop(self) -> None:
        acceptor = self._server
        await super().stop()
        if acceptor is not None:
            await acceptor.wait_closed()  # type: ignore[attr-defined]


async def start_server(app: web.Application, bind: Bind, tls: TLSSource | None, limits: ServerLimits) -> web.AppRunner:
    """Serve ``app`` within ``limits`` on ``bind``: ``(host, port)`` to bind, or a listening socket handed over
    (left open when the runner is cleaned up: its owner closes it); ``tls`` a context (hardened here; a
    ``CertificateReloader``'s follows its files), or a callable giving each new connection its context. The
    caller cleans the runner up."""
    if isinstance(tls, ssl.SSLContext):
        harden(tls)
    # aiohttp has no setting for its Server header, and its answers to malformed requests (400, 431) pass no
    # application signal: its module default is the one place every answer takes it from.
    aiohttp.web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, logger=server_logger(limits.name),
        keepalive_timeout=limits.head_seconds,
        max_line_size=limits.max_line_size, max_field_size=limits.max_field_size, max_headers=limits.max_headers,
    )  # fmt: skip
    await runner.setup()
    try:
        await LimitedSite(runner, bind, tls, limits).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner's (first) site listens on: the one the kernel chose for port 0."""
    site = next(iter(runner.sites))
    assert isinstance(site, LimitedSite)
    return site.port


FileStamp = tuple[int, int, int] | None  # (inode, mtime in ns, size); None while the file is missing


class CertificateReloader:
    """A server-side ``SSLContext`` whose certificate follows its files, so a renewal needs no restart.

    Give ``context`` to the listening socket. OpenSSL calls its ``sni_callback`` for every ClientHello, with
    or without SNI; the callback compares the files' stamps with those of the last load and, when one
    changed, builds a fresh context with ``build``. The handshake then takes the certificate chain and the
    client-CA store of the current context. exporter-toolkit reads its files on every handshake; a stat per
    file is the cheap equivalent. A renewal that does not load (a half-written pair, a key of another
    certificate) is logged and the last good certificate is served until the files change again.

    OpenSSL fixes the protocol versions and the client-certificate policy when a connection starts, from
    ``context`` itself: ``update`` (new settings, from a reload) copies them over. Reusable by any server:
    ``build`` raises ``ConfigError``, ``OSError`` or ``ssl.SSLError`` for files it cannot use.
    """

    def __init__(self, build: Callable[[], ssl.SSLContext], files: Sequence[Path], name: str) -> None:
        self.name = name  # what serves the certificate, for the log: "web port", "notification listener"
        self._build, self._files = build, tuple(files)
        self._stamps = self._read_stamps()
        self.context = build()  # raises: a server must not start without a usable certificate
        self.context.sni_callback = self._on_client_hello
        self._current = self.context

    def update(self, build: Callable[[], ssl.SSLContext], files: Sequence[Path]) -> None:
        """New settings: build them now (raising as ``build`` does, and then nothing changes) and use them."""
        stamps = _stamps_of(files)
        fresh = build()
        self._build, self._files, self._stamps, self._current = build, tuple(files), stamps, fresh
        self.context.minimum_version = fresh.minimum_version
        self.context.maximum_version = fresh.maximum_version
        self.context.verify_mode = fresh.verify_mode

    def current(self) -> ssl.SSLContext:
        """The context of the files as they are now, or the last good one if they do not load."""
        stamps = self._read_stamps()
        if stamps != self._stamps:
            self._stamps = stamps  # stamped before building: a change during the build is seen next time
            try:
                self._current = self._build()
            except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
                log_fields = {"server": self.name, "err": str(exc)}
                log.error("cannot load the changed certificate; serving the previous one", extra={"fields": log_fields})
            else:
                log.info("loaded the changed certificate", extra={"fields": {"server": self.name}})
        return self._current

    def _on_client_hello(self, sock: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        # An exception here would only abort this handshake with an "unraisable" traceback: log, serve the old.
        try:
            sock.context = self.current()
        except Exception:
            log.exception("certificate reload failed", extra={"fields": {"server": self.name}})

    def _read_stamps(self) -> tuple[FileStamp, ...]:
        return _stamps_of(self._files)


def _stamps_of(files: Sequence[Path]) -> tuple[FileStamp, ...]:
    stamps: list[FileStamp] = []
    for path in files:
        try:
            # stat follows symlinks: a Kubernetes Secret volume swaps a symlink, which changes the inode.
            status = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((status.st_ino, status.st_mtime_ns, status.st_size))
    return tuple(stamps)
