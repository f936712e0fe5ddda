"""401 responses in the shape IIS in front of Exchange sends them (facts file sections 6.1 and 7.5)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiohttp import web

# Exchange Online's resource id and Entra's issuer id as they appear in real EXO challenges.
_EXCHANGE_RESOURCE_ID = "00000002-0000-0ff1-ce00-000000000000"
_ENTRA_ISSUER_ID = "00000001-0000-0000-c000-000000000000"
AUTHORIZATION_URI = "https://login.microsoftonline.test/common/oauth2/authorize"

# Until the simulator validates tokens, every token presented is one it "cannot parse".
_UNPARSABLE_TOKEN_DIAGNOSTIC = (
    '2000001;reason="OAuth token submitted with the request can not be parsed.";error_category="invalid_token"'
)


@dataclass(frozen=True)
class Challenge:
    """The ``WWW-Authenticate`` values of a 401, each sent as its own header, in order."""

    www_authenticate: tuple[str, ...]
    # EXO explains a rejected token in x-ms-diagnostics; on-prem IIS sends nothing of the kind.
    rejected_token_diagnostic: str | None = None


def onprem(realm: str) -> Challenge:
    """Integrated Windows auth as two headers (the common IIS capture), plus Basic."""
    return Challenge(("Negotiate", "NTLM", f'Basic realm="{realm}"'))


def exchange_online() -> Challenge:
    bearer = (
        f'Bearer client_id="{_EXCHANGE_RESOURCE_ID}", trusted_issuers="{_ENTRA_ISSUER_ID}@*", '
        'token_types="app_asserted_user_v1 service_asserted_app_v1", '
        f'authorization_uri="{AUTHORIZATION_URI}", error="invalid_token",Basic Realm=""'
    )
    return Challenge((bearer,), rejected_token_diagnostic=_UNPARSABLE_TOKEN_DIAGNOSTIC)


async def unauthorized(request: web.Request, challenge: Challenge) -> web.Response:
    # Read the body first so the connection stays usable: NTLM needs its three legs on one connection.
    await request.read()
    response = web.Response(status=401)
    response.headers["Server"] = "Microsoft-IIS/10.0"
    response.headers["request-id"] = str(uuid.uuid4())
    response.headers["X-Powered-By"] = "ASP.NET"
    for value in challenge.www_authenticate:
        response.headers.add("WWW-Authenticate", value)
    if challenge.rejected_token_diagnostic and "Authorization" in request.headers:
        response.headers["x-ms-diagnostics"] = challenge.rejected_token_diagnostic
    return response
