"""How a served connection is read: one read per turn of the loop, and aiohttp's own flow control kept."""

from __future__ import annotations

import asyncio

from exporter.daemon import serving


class RecordingTransport(asyncio.Transport):
    """A transport that only records whether it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reading, self.closing = True, False

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing


class RecordingProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(data)


def connected() -> tuple[serving._Counted, RecordingProtocol, RecordingTransport]:
    inner, transport = RecordingProtocol(), RecordingTransport()
    protocol = serving._Counted(inner, lambda: None)
    protocol.connection_made(transport)
    return protocol, inner, transport


def feed(protocol: serving._Counted, data: bytes) -> None:
    buffer = protocol.get_buffer(-1)
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))


async def test_the_next_read_waits_for_the_next_turn_of_the_loop() -> None:
    # uvloop reads a socket until it is drained before any task runs: without this, a flood of malformed heads
    # was read whole before aiohttp's handler answered 400 (tests/system/test_fault_matrix.py's header flood).
    protocol, inner, transport = connected()
    feed(protocol, b"POST / HTTP/1.1\r\n")
    assert inner.received == [b"POST / HTTP/1.1\r\n"]
    assert not transport.reading
    await asyncio.sleep(0)
    assert transport.reading


async def test_a_pause_of_aiohttps_outlasts_the_turn() -> None:
    protocol, inner, transport = connected()
    feed(protocol, b"x")
    assert inner.transport is not None
    inner.transport.pause_reading()  # type: ignore[attr-defined]  # aiohttp's flow control: a full queue
    await asyncio.sleep(0)
    assert not transport.reading, "the turn's release must not undo aiohttp's pause"
    inner.transport.resume_reading()  # type: ignore[attr-defined]
    assert transport.reading


async def test_a_closing_connection_is_not_resumed() -> None:
    protocol, _, transport = connected()
    feed(protocol, b"x")
    transport.closing = True
    await asyncio.sleep(0)
    assert not transport.reading
