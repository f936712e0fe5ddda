"""A stand-in for BEMS's own Graph notification URL, ``POST /notificationClient``, behind its reverse proxy.

It answers Graph's validation request (``?validationToken=X``) with 200 ``text/plain`` X, as BEMS
does, so a probe can check that the URL Graph will call is reachable and echoes correctly. Faults
break the echo: ``no_echo`` (200, empty body) and ``wrong_echo`` (200, another token). Anything
else POSTed there is taken as a notification (202). Every request is recorded.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, NamedTuple

from aiohttp import web

from .onprem_auth import parse_choice

NOTIFICATION_PATH = "/notificationClient"


class BemsFault(StrEnum):
    NONE = "none"
    NO_ECHO = "no_echo"
    WRONG_ECHO = "wrong_echo"


class BemsRequest(NamedTuple):
    method: str
    path: str  # with the query string
    validation_token: str | None  # decoded, as the query carried it
    body: str
    answer: str  # what was echoed, for a validation request
    time: float  # time.monotonic() at arrival

    def state(self) -> dict[str, Any]:
        return self._asdict()


class BemsNotificationUrl:
    def __init__(self) -> None:
        self.fault = BemsFault.NONE
        self.requests: list[BemsRequest] = []

    def set_fault(self, fault: BemsFault | str) -> None:
        self.fault = parse_choice(BemsFault, fault, "BEMS fault")

    def state(self) -> dict[str, Any]:
        return {"fault": str(self.fault), "requests": len(self.requests)}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(NOTIFICATION_PATH, self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        body = await request.text()
        token = request.query.get("validationToken")
        answer = self._echo(token) if token is not None else ""
        self.requests.append(BemsRequest(request.method, request.path_qs, token, body, answer, time.monotonic()))
        if token is None:
            return web.Response(status=202)
        return web.Response(text=answer, content_type="text/plain")

    def _echo(self, token: str) -> str:
        match self.fault:
            case BemsFault.NONE:
                return token
            case BemsFault.NO_ECHO:
                return ""
            case BemsFault.WRONG_ECHO:
                return f"not-{token}"
