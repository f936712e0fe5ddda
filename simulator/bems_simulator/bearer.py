"""Exchange Online's check of OAuth bearer tokens (facts file 7.2 and 7.5), and on-premises Exchange's
with hybrid modern authentication.

A token must be one the simulated Entra ID signed, for the audience (Exchange Online, or the on-premises
server's own URL), unexpired, and must carry application permissions (``roles``). Every rejection is the
same 401 and challenge; Exchange tells the reasons apart in ``x-ms-diagnostics`` only, and sends none
when no token came at all.
"""

from __future__ import annotations

from collections.abc import Callable

import jwt
from aiohttp import web

from . import challenges
from .entra import EXCHANGE_ONLINE_RESOURCE, EntraId
from .identity import Caller

UNPARSABLE_TOKEN = (
    '2000001;reason="OAuth token submitted with the request can not be parsed.";error_category="invalid_token"'
)
WRONG_AUDIENCE = '2000003;reason="The audience claim value is invalid \'aud\'.";error_category="invalid_resource"'
# EXO quotes the app here; the captures elide it as '...'.
NO_PERMISSIONS = (
    '2000008;reason="The token should have valid permissions or linked account associated with partner '
    'application \'{app_id}\'.";error_category="invalid_grant"'
)


def _exchange_online_challenge() -> list[str]:
    return [challenges.EXCHANGE_ONLINE_BEARER]


class ExchangeOnlineAuthenticator:
    """Bearer tokens for ``audience``; ``challenge`` gives the 401's WWW-Authenticate values (an on-premises
    virtual directory's own list, with hybrid modern authentication)."""

    def __init__(
        self,
        entra: EntraId,
        audience: str = EXCHANGE_ONLINE_RESOURCE,
        challenge: Callable[[], list[str]] = _exchange_online_challenge,
    ) -> None:
        self._entra = entra
        self._audience = audience
        self._challenge = challenge

    async def authenticate(self, request: web.Request) -> Caller | web.Response:
        header = request.headers.get("Authorization")
        if header is None:
            return await self._reject(request, diagnostic=None)
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return await self._reject(request, UNPARSABLE_TOKEN)
        try:
            claims = self._entra.decode_access_token(token.strip(), self._audience)
        except jwt.InvalidAudienceError:
            return await self._reject(request, WRONG_AUDIENCE)
        except jwt.PyJWTError:
            # Bad signature, expiry and garbage alike [UNVERIFIED: no capture shows EXO's words for expiry].
            return await self._reject(request, UNPARSABLE_TOKEN)
        app_id = str(claims.get("appid", ""))
        if not claims.get("roles"):
            return await self._reject(request, NO_PERMISSIONS.format(app_id=app_id))
        return Caller(app_id, app_only=True)

    async def _reject(self, request: web.Request, diagnostic: str | None) -> web.Response:
        return await challenges.unauthorized(request, self._challenge(), diagnostic)
