"""Who a request comes from, as the protocol handlers need to know it once authentication is done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web


@dataclass(frozen=True)
class Caller:
    name: str  # DOMAIN\user on-prem, the app id for an OAuth token
    # An app-only token (client credentials) acts as no user: EWS then insists on impersonation.
    app_only: bool = False


class Authenticator(Protocol):
    async def authenticate(self, request: web.Request) -> Caller | web.Response:
        """The caller, or the response (a 401) to send instead of serving the request."""
        ...
