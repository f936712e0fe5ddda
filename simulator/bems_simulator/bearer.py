"""Exchange Online's check of OAuth bearer tokens (facts file 7.2 and 7.5).

A token must be one the simulated Entra ID signed, for Exchange Online, unexpired, and must carry
application permissions (``roles``). Every rejection is the same 401 and Bearer challenge; EXO tells
the reasons apart in ``x-ms-diagnostics`` only, and sends none when no token came at all.
"""

from __future__ import annotations

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


class ExchangeOnlineAuthenticator:
    def __init__(self, entra: EntraId, audience: str = EXCHANGE_ONLINE_RESOURCE) -> None:
        self._entra = entra
        self._audience = audience

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
        return await challenges.unauthorized(request, [challenges.EXCHANGE_ONLINE_BEARER], diagnostic)
