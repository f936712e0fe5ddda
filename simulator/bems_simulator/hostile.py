"""Hostile replies: an EWS or Autodiscover endpoint that answers like an attacker or a broken middlebox.

Each kind is an endpoint fault (``sim.set_fault("onprem-ews", "gzip_bomb")``). TLS is served with the
valid certificate and authentication runs as usual: a 401 (a challenge, or a leg of the NTLM handshake)
passes unchanged, so the hostile reply is what a client gets once it has signed in. The real answer is
still computed (and EWS still records the request); the hostile kind then replaces or mangles it:

- ``entity_expansion``/``xxe``: a SOAP or Autodiscover document with a DOCTYPE that declares "billion
  laughs" entities, or an external entity for ``file:///etc/passwd``;
- ``endless_body``: 200 and a chunked body that never ends; ``huge_content_length``: a Content-Length of
  8 GiB, streamed until the client leaves; ``gzip_bomb``: ``Content-Encoding: gzip`` that inflates
  about a thousandfold (about 4 MiB on the wire for 4 GiB); ``drip``: the real answer, a byte every half second
  (each within any socket read timeout);
- ``redirect_loop``: 302 to the same URL; ``redirect_http``: 302 to ``http://localhost`` (a plain-HTTP
  trap that records what reaches it); ``redirect_foreign``: 302 to the simulator's foreign host;
- ``truncated_xml``, ``invalid_utf8``, ``wrong_namespace``: the real answer cut in half, with bytes
  that are not UTF-8, or with every ``http://schemas.…`` namespace renamed; ``html_200``: an HTML
  error page with status 200; ``connection_reset``: the request is read (and EWS answers it), then the
  connection is reset (TCP RST, as a crashed worker or a middlebox's idle timer does) instead of answering.

``Hostile.requests`` records every request a hostile endpoint saw (with its ``Authorization``),
``Hostile.trap_requests`` what reached the plain-HTTP trap, and ``Hostile.hangups`` when a streamed
reply noticed that the client had gone, so a test can tell how long a client kept reading.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any, NamedTuple

from aiohttp import web

from .serving import serve_app


class HostileKind(StrEnum):
    ENTITY_EXPANSION = "entity_expansion"
    XXE = "xxe"
    ENDLESS_BODY = "endless_body"
    HUGE_CONTENT_LENGTH = "huge_content_length"
    GZIP_BOMB = "gzip_bomb"
    DRIP = "drip"
    REDIRECT_LOOP = "redirect_loop"
    REDIRECT_HTTP = "redirect_http"
    REDIRECT_FOREIGN = "redirect_foreign"
    TRUNCATED_XML = "truncated_xml"
    INVALID_UTF8 = "invalid_utf8"
    WRONG_NAMESPACE = "wrong_namespace"
    HTML_200 = "html_200"
    CONNECTION_RESET = "connection_reset"


class HostileRequest(NamedTuple):
    endpoint: str
    kind: str
    method: str
    path: str  # with the query string
    authorization: str | None  # as sent
    hostile: bool  # False when the request got the real answer instead (a 401 while signing in)
    time: float  # time.monotonic() at arrival

    def state(self) -> dict[str, Any]:
        return {**self._asdict(), "carried_authorization": self.authorization is not None}


class Hangup(NamedTuple):
    endpoint: str
    kind: str
    started: float  # time.monotonic() when the reply's headers went out
    ended: float  # when the reply noticed that the client had closed the connection
    bytes_sent: int


HUGE_CONTENT_LENGTH = 8 * 1024**3
GZIP_BOMB_INFLATED = 4 * 1024**3
DRIP_INTERVAL_SECONDS = 0.5
_STREAM_CHUNK = b"<x>" + b"A" * (64 * 1024 - 7) + b"</x>"
_GZIP_BLOCK = 1024 * 1024
_POLL_SECONDS = 0.02

_SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
_MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
_AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
# Ten levels of tenfold expansion: 10**9 copies of "lol", about 3 GB once expanded.
_LAUGHS = '<!ENTITY lol0 "lol">' + "".join(
    f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
)
_HTML_ERROR_PAGE = (
    b"<html><head><title>Service Unavailable</title></head><body><h1>Service Unavailable</h1>"
    b"<p>The proxy could not reach the server. Reference #18.2f4e1602</p></body></html>"
)


def _document(request: web.Request, doctype: str | None, text: str) -> bytes:
    """A reply shaped like the endpoint's own (Autodiscover POX or an EWS SOAP envelope) around ``text``."""
    if "/autodiscover/" in request.path.lower():
        inner = f'<Autodiscover xmlns="{_AUTODISCOVER_NS}"><Response><Error><Message>{text}</Message></Error>'
        inner += "</Response></Autodiscover>"
        root = "Autodiscover"
    else:
        inner = (
            f'<s:Envelope xmlns:s="{_SOAP_NS}" xmlns:m="{_MESSAGES_NS}"><s:Body><m:GetFolderResponse>'
            '<m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Error">'
            f"<m:MessageText>{text}</m:MessageText><m:ResponseCode>{text}</m:ResponseCode>"
            "</m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"
        )
        root = "s:Envelope"
    declaration = f"<!DOCTYPE {root} [{doctype}]>" if doctype is not None else ""
    return f'<?xml version="1.0" encoding="utf-8"?>{declaration}{inner}'.encode()


@functools.cache
def _gzip_pieces() -> tuple[bytes, bytes]:
    """The gzip header with the first deflated MiB of zeros, and the deflated MiB that repeats after it.

    After a full flush the compressor starts afresh, so every further MiB of zeros deflates to the same
    bytes: the bomb is streamed from these two pieces without ever compressing gigabytes.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(_GZIP_BLOCK)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first, repeated


async def _gzip_bomb_chunks() -> AsyncIterator[bytes]:
    first, repeated = _gzip_pieces()
    block, crc = bytes(_GZIP_BLOCK), 0
    for index in range(GZIP_BOMB_INFLATED // _GZIP_BLOCK):
        crc = zlib.crc32(block, crc)
        yield first if index == 0 else repeated
    # An empty final fixed-Huffman block, then the gzip trailer: CRC-32 and size modulo 2**32.
    yield b"\x03\x00" + struct.pack("<II", crc, GZIP_BOMB_INFLATED & 0xFFFFFFFF)


async def _endless_chunks() -> AsyncIterator[bytes]:
    while True:
        yield _STREAM_CHUNK


class Hostile:
    """The hostile replies of every endpoint of one simulator, and what they saw."""

    def __init__(self) -> None:
        self.foreign_url = ""  # set by the simulator once its foreign host has a port
        self._trap: web.AppRunner | None = None
        self._trap_url = ""
        self.clear_records()

    def clear_records(self) -> None:
        """Forget what every hostile endpoint and the trap saw (the trap keeps listening)."""
        self.requests: list[HostileRequest] = []
        self.trap_requests: list[HostileRequest] = []
        self.hangups: list[Hangup] = []

    @property
    def trap_url(self) -> str:
        if not self._trap_url:
            raise RuntimeError("the plain-HTTP trap is not running")
        return self._trap_url

    async def start(self, sock: socket.socket) -> None:
        """Start the plain-HTTP trap that ``redirect_http`` points at, on a bound loopback socket."""
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._trapped)
        self._trap = await serve_app(app, sock)
        self._trap_url = f"http://localhost:{sock.getsockname()[1]}"

    async def close(self) -> None:
        if self._trap is not None:
            await self._trap.cleanup()
            self._trap = None
            self._trap_url = ""

    def middleware(self, endpoint: str, kind: HostileKind) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def hostile(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            honest = await handler(request)
            signing_in = honest.status == 401
            self.requests.append(
                HostileRequest(
                    endpoint, str(kind), request.method, request.path_qs,
                    request.headers.get("Authorization"), not signing_in, time.monotonic(),
                )
            )  # fmt: skip
            if signing_in:
                return honest
            return await self._reply(endpoint, kind, request, honest)

        return hostile

    async def _trapped(self, request: web.Request) -> web.Response:
        self.trap_requests.append(
            HostileRequest(
                "http-trap", "", request.method, request.path_qs, request.headers.get("Authorization"), False,
                time.monotonic(),
            )
        )  # fmt: skip
        return web.Response(status=404, text="nothing here\n")

    async def _reply(
        self, endpoint: str, kind: HostileKind, request: web.Request, honest: web.StreamResponse
    ) -> web.StreamResponse:
        body = honest.body if isinstance(honest, web.Response) and isinstance(honest.body, bytes) else b""
        body = body or _document(request, None, "NoError")
        xml_headers = {"Content-Type": "text/xml; charset=utf-8"}
        match kind:
            case HostileKind.ENTITY_EXPANSION:
                return web.Response(body=_document(request, _LAUGHS, "&lol9;"), headers=xml_headers)
            case HostileKind.XXE:
                entity = '<!ENTITY xxe SYSTEM "file:///etc/passwd">'
                return web.Response(body=_document(request, entity, "&xxe;"), headers=xml_headers)
            case HostileKind.ENDLESS_BODY:
                return await self._stream(endpoint, kind, request, _endless_chunks(), xml_headers)
            case HostileKind.HUGE_CONTENT_LENGTH:
                return await self._stream(
                    endpoint, kind, request, _endless_chunks(), xml_headers, content_length=HUGE_CONTENT_LENGTH
                )
            case HostileKind.GZIP_BOMB:
                headers = xml_headers | {"Content-Encoding": "gzip"}
                return await self._stream(endpoint, kind, request, _gzip_bomb_chunks(), headers)
            case HostileKind.DRIP:
                return await self._drip(endpoint, kind, request, body, xml_headers)
            case HostileKind.REDIRECT_LOOP:
                return web.Response(status=302, headers={"Location": request.path_qs})
            case HostileKind.REDIRECT_HTTP:
                return web.Response(status=302, headers={"Location": self.trap_url + request.path_qs})
            case HostileKind.REDIRECT_FOREIGN:
                return web.Response(status=302, headers={"Location": self.foreign_url + request.path_qs})
            case HostileKind.TRUNCATED_XML:
                return web.Response(body=body[: len(body) // 2], headers=xml_headers)
            case HostileKind.INVALID_UTF8:
                # Bytes no UTF-8 decoder accepts, as text in front of the first end tag.
                at = max(body.find(b"</"), 0)
                return web.Response(body=body[:at] + b"\xc3\x28\xff\xfe" + body[at:], headers=xml_headers)
            case HostileKind.WRONG_NAMESPACE:
                return web.Response(body=body.replace(b'"http://schemas.', b'"urn:not-exchange:'), headers=xml_headers)
            case HostileKind.HTML_200:
                return web.Response(body=_HTML_ERROR_PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
            case HostileKind.CONNECTION_RESET:
                _reset(request)
                return honest  # never sent: the connection is gone

    async def _stream(
        self,
        endpoint: str,
        kind: HostileKind,
        request: web.Request,
        chunks: AsyncIterator[bytes],
        headers: dict[str, str],
        content_length: int | None = None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        if content_length is not None:
            response.content_length = content_length
        started, sent = time.monotonic(), 0
        await response.prepare(request)
        try:
            async for chunk in chunks:
                if _client_gone(request):
                    break
                await response.write(chunk)  # drains: a client that stops reading stops this loop too
                sent += len(chunk)
                # A write into a dead transport neither raises nor blocks: yield, so that the loop can
                # tell this handler (connection_lost) that the client is gone.
                await asyncio.sleep(0)
            else:
                await response.write_eof()
                return response
        except ConnectionResetError:
            pass
        self.hangups.append(Hangup(endpoint, str(kind), started, time.monotonic(), sent))
        return response

    async def _drip(
        self, endpoint: str, kind: HostileKind, request: web.Request, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        started = time.monotonic()
        await response.prepare(request)
        for sent in range(len(body)):
            next_byte = time.monotonic() + DRIP_INTERVAL_SECONDS
            while time.monotonic() < next_byte:
                if _client_gone(request):
                    self.hangups.append(Hangup(endpoint, str(kind), started, time.monotonic(), sent))
                    return response
                await asyncio.sleep(_POLL_SECONDS)
            try:
                await response.write(body[sent : sent + 1])
            except ConnectionResetError:
                self.hangups.append(Hangup(endpoint, str(kind), started, time.monotonic(), sent))
                return response
        await response.write_eof()
        return response


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST: SO_LINGER 0, then close without the TLS close_notify."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
