"""Autodiscover: POX (``autodiscover.xml``, authenticated) and v2 JSON (``autodiscover.json``, anonymous).

Facts file sections 4.1 and 4.3.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from . import challenges

POX_PATH = "/autodiscover/autodiscover.xml"
JSON_PATH = "/autodiscover/autodiscover.json"


def add_pox_routes(app: web.Application, challenge: challenges.Challenge) -> None:
    # Until authentication is simulated, every request is an unauthenticated one.
    app.router.add_post(POX_PATH, partial(challenges.unauthorized, challenge=challenge))


def add_json_routes(app: web.Application, ews_url: str, pox_url: str) -> None:
    """Autodiscover v2 in both URL forms clients use: the mailbox in the path or in ``Email=``.

    Every mailbox is answered as existing; the mailbox directory arrives with the EWS work.
    """
    # Keys are lower-case because clients vary the casing of Protocol (EWS, Ews, ews).
    urls_by_protocol = {"ews": ("EWS", ews_url), "autodiscoverv1": ("AutodiscoverV1", pox_url)}
    handler = partial(_protocol_url, urls_by_protocol=urls_by_protocol)
    app.router.add_get(JSON_PATH, handler)
    app.router.add_get(JSON_PATH + "/v1.0/{mailbox}", handler)


async def _protocol_url(request: web.Request, urls_by_protocol: dict[str, tuple[str, str]]) -> web.Response:
    requested = request.query.get("Protocol", "")
    if requested.lower() not in urls_by_protocol:
        supported = ",".join(name for name, _ in urls_by_protocol.values())
        return web.json_response(
            {
                "ErrorCode": "InvalidProtocol",
                "ErrorMessage": (
                    f"The given protocol value '{requested}' is invalid. Supported values are '{supported}'"
                ),
            },
            status=400,
        )
    protocol, url = urls_by_protocol[requested.lower()]
    return web.json_response({"Protocol": protocol, "Url": url})
