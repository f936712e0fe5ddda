"""Responses in the shape IIS in front of Exchange sends them, 401s above all (facts file sections 6.1 and 7.5)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from aiohttp import web

# Exchange Online's resource id and Entra's issuer id as they appear in real EXO challenges.
EXCHANGE_RESOURCE_ID = "00000002-0000-0ff1-ce00-000000000000"
_ENTRA_ISSUER_ID = "00000001-0000-0000-c000-000000000000"
AUTHORIZATION_URI = "https://login.microsoftonline.test/common/oauth2/authorize"

# On-premises Exchange with hybrid modern authentication (OAuth on the virtual directory, the EvoSTS auth
# server) challenges with the same Bearer parameters beside IIS's own schemes.
HYBRID_BEARER = (
    f'Bearer client_id="{EXCHANGE_RESOURCE_ID}", trusted_issuers="{_ENTRA_ISSUER_ID}@*", '
    'token_types="app_asserted_user_v1 service_asserted_app_v1", '
    f'authorization_uri="{AUTHORIZATION_URI}", error="invalid_token"'
)
EXCHANGE_ONLINE_BEARER = f'{HYBRID_BEARER},Basic Realm=""'


async def unauthorized(
    request: web.Request, www_authenticate: Iterable[str], diagnostic: str | None = None
) -> web.Response:
    """An empty 401 with each ``WWW-Authenticate`` value as its own header, in order.

    ``diagnostic`` is EXO's ``x-ms-diagnostics`` explanation of a rejected token; on-prem IIS sends
    nothing of the kind. The connection stays open (no ``Connection: close``): NTLM continues on it.
    """
    # Read the body first so the connection stays usable: NTLM needs its three legs on one connection.
    await request.read()
    response = with_iis_headers(web.Response(status=401))
    for value in www_authenticate:
        response.headers.add("WWW-Authenticate", value)
    if diagnostic:
        response.headers["x-ms-diagnostics"] = diagnostic
    return response


def with_iis_headers(response: web.Response) -> web.Response:
    """Stamp the headers every Exchange response carries, whatever its status."""
    response.headers["Server"] = "Microsoft-IIS/10.0"
    response.headers["request-id"] = str(uuid.uuid4())
    response.headers["X-Powered-By"] = "ASP.NET"
    return response
