"""A stranger's HTTPS host, standing in for an attacker's Autodiscover server (facts file 4.4).

It answers every request with a Basic challenge, the "switcheroo" that talks clients out of NTLM or
OAuth and into sending a password, and records each request and the ``Authorization`` header it
carried, so a test can prove that a redirect to it leaked nothing. Its certificate is issued by the
simulator's trusted CA for the loopback address and for its nominal name ``autodiscover.co.uk``, a
stranger's domain beside any ``contoso.co.uk`` under the public suffix ``co.uk`` (the host is reached as
``https://127.0.0.1:PORT``, a different host from ``localhost``, or by that name where a test makes it
resolve to loopback): TLS succeeds, so only a client's own rules keep it away.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from aiohttp import web

from . import challenges


class ForeignRequest(NamedTuple):
    method: str
    path: str  # with the query string
    authorization: str | None  # the Authorization header as sent: any value here is a leak
    time: float  # time.monotonic() at arrival

    def state(self) -> dict[str, Any]:
        return {**self._asdict(), "carried_authorization": self.authorization is not None}


class ForeignHost:
    def __init__(self, realm: str) -> None:
        self.requests: list[ForeignRequest] = []
        self._realm = realm

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{path:.*}", self._challenge)

    async def _challenge(self, request: web.Request) -> web.Response:
        self.requests.append(
            ForeignRequest(request.method, request.path_qs, request.headers.get("Authorization"), time.monotonic())
        )
        return await challenges.unauthorized(request, [f'Basic realm="{self._realm}"'])
