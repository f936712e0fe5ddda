"""What the simulator's push engines share: calls out to a client's listener, their faults, their tasks, their clock.

Exchange and Graph call the client back, so here the simulator is the HTTP client. HTTPS listeners
are verified against the system's trust store plus the simulator's own CA, so a test can give its
listener a certificate from ``Simulator.issue_certificate``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timescale:
    """How long a simulated minute lasts: 60 s for real, a second or less in tests.

    It scales what the protocols measure in minutes and the waits derived from them (EWS status
    pings and retries, Graph expiry), never network timeouts, which are about the listener's speed.
    """

    minute_seconds: float = 60.0

    def __post_init__(self) -> None:
        valid = isinstance(self.minute_seconds, int | float) and not isinstance(self.minute_seconds, bool)
        if not valid or not math.isfinite(self.minute_seconds) or self.minute_seconds <= 0:
            raise ValueError(f"minute_seconds must be a positive number of seconds, not {self.minute_seconds!r}")

    def seconds(self, simulated_seconds: float) -> float:
        """Real seconds for a duration the protocol states in seconds."""
        return simulated_seconds * self.minute_seconds / 60.0


class PushFaultKind(StrEnum):
    NONE = "none"
    CALLBACK_BLOCKED = "callback_blocked"  # nothing reaches the listener: every delivery fails
    DELAYED = "delayed"  # change notifications leave ``delay_seconds`` late
    DROP_SUBSCRIPTIONS = "drop_subscriptions"  # a one-off: the server silently forgets every subscription


@dataclass(frozen=True)
class PushFault:
    kind: PushFaultKind = PushFaultKind.NONE
    delay_seconds: float = 0.0

    @classmethod
    def parse(cls, kind: Any, delay_seconds: Any = None) -> PushFault:
        try:
            kind = PushFaultKind(kind)
        except ValueError:
            raise ValueError(f"unknown push fault {kind!r}; valid: {', '.join(PushFaultKind)}") from None
        if kind is not PushFaultKind.DELAYED:
            if delay_seconds is not None:
                raise ValueError(f"delay_seconds applies to the {PushFaultKind.DELAYED} fault only, not to {kind}")
            return cls(kind)
        valid = isinstance(delay_seconds, int | float) and not isinstance(delay_seconds, bool)
        if not valid or not math.isfinite(delay_seconds) or delay_seconds <= 0:
            raise ValueError(f"the delayed fault needs delay_seconds, a positive number, not {delay_seconds!r}")
        return cls(kind, float(delay_seconds))

    def state(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "delay_seconds": self.delay_seconds}


@dataclass(frozen=True)
class CallbackResponse:
    status: int
    content_type: str  # without parameters, lower case
    body: str


class CallbackError(Exception):
    """The listener could not be reached or did not answer in time; the message says how."""


class CallbackClient:
    """One HTTP client session for every call-back, opened on first use and closed with the simulator."""

    def __init__(self, ca_file: Path) -> None:
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, content_type: str, timeout_seconds: float) -> CallbackResponse:
        session = self._open_session()
        try:
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                return CallbackResponse(response.status, response.content_type.lower(), text)
        except TimeoutError:
            raise CallbackError(f"no answer within {timeout_seconds:g} s") from None
        except aiohttp.ClientConnectorCertificateError as error:
            raise CallbackError(f"TLS verification failed: {error.certificate_error}") from None
        except (aiohttp.ClientError, ValueError) as error:  # ValueError: a URL aiohttp cannot use
            raise CallbackError(f"{type(error).__name__}: {error}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=str(self._ca_file))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return self._session


class BackgroundTasks:
    """The tasks a push engine runs on its own, so that closing it cancels every one of them."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=f"{self._owner}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())
