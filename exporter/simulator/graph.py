"""Microsoft Graph ``/v1.0`` (facts file section 8.2)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from .challenges import AUTHORIZATION_URI

GRAPH_PATH = "/v1.0"
# Graph's own application id, as Graph names it in its Bearer challenge [UNVERIFIED: recollection].
_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"


def add_routes(app: web.Application) -> None:
    # Until authentication is simulated, every request is one without a token.
    app.router.add_route("*", GRAPH_PATH + "/{resource:.*}", _token_missing)


async def _token_missing(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    body = {
        "error": {
            "code": "InvalidAuthenticationToken",
            "message": "Access token is empty.",
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": request.headers.get("client-request-id", request_id),
            },
        }
    }
    response = web.json_response(body, status=401)
    response.headers["request-id"] = request_id
    response.headers["WWW-Authenticate"] = (
        f'Bearer realm="", authorization_uri="{AUTHORIZATION_URI}", client_id="{_GRAPH_APP_ID}"'
    )
    return response
