"""Autodiscover: POX (``autodiscover.xml``, authenticated) and v2 JSON (``autodiscover.json``, anonymous).

Facts file sections 4.1 and 4.3. POX answers every outcome, an unknown mailbox included, with HTTP 200
and says what went wrong in an ``Error`` element.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from functools import partial
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web

from .challenges import with_iis_headers
from .identity import Authenticator

POX_PATH = "/autodiscover/autodiscover.xml"
JSON_PATH = "/autodiscover/autodiscover.json"

_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
# POX error codes: 500 for an address it cannot find (a capture); 600 for a request it cannot read and
# 601 for a response schema it does not provide are Exchange's documented codes [UNVERIFIED wording].
_UNKNOWN_MAILBOX = (500, "The email address can't be found.")
_INVALID_REQUEST = (600, "Invalid Request")
_SCHEMA_NOT_PROVIDED = (601, "Provider is not available.")


def add_pox_routes(
    app: web.Application, authenticator: Authenticator, mailboxes: Collection[str], ews_url: str
) -> None:
    handler = partial(
        _pox_settings,
        authenticator=authenticator,
        mailboxes={mailbox.casefold() for mailbox in mailboxes},
        ews_url=ews_url,
    )
    app.router.add_post(POX_PATH, handler)


async def _pox_settings(
    request: web.Request, authenticator: Authenticator, mailboxes: set[str], ews_url: str
) -> web.Response:
    caller = await authenticator.authenticate(request)
    if isinstance(caller, web.Response):
        return caller
    try:
        autodiscover = ElementTree.fromstring(await request.read())
    except ElementTree.ParseError:
        return _pox_error(*_INVALID_REQUEST)
    address = (autodiscover.findtext(f"{{{_REQUEST_NS}}}Request/{{{_REQUEST_NS}}}EMailAddress") or "").strip()
    schema = autodiscover.findtext(f"{{{_REQUEST_NS}}}Request/{{{_REQUEST_NS}}}AcceptableResponseSchema")
    if autodiscover.tag != f"{{{_REQUEST_NS}}}Autodiscover" or not address:
        return _pox_error(*_INVALID_REQUEST)
    # Compared untrimmed: Exchange does not strip whitespace from this element (facts file 4.1).
    if schema != OUTLOOK_RESPONSE_SCHEMA:
        return _pox_error(*_SCHEMA_NOT_PROVIDED)
    if address.casefold() not in mailboxes:
        return _pox_error(*_UNKNOWN_MAILBOX)
    return _pox_response(
        f'<Response xmlns="{OUTLOOK_RESPONSE_SCHEMA}">'
        f"<User><DisplayName>{escape(address.partition('@')[0].title())}</DisplayName>"
        f"<AutoDiscoverSMTPAddress>{escape(address)}</AutoDiscoverSMTPAddress></User>"
        "<Account><AccountType>email</AccountType><Action>settings</Action>"
        f"<Protocol><Type>EXCH</Type><ASUrl>{escape(ews_url)}</ASUrl><EwsUrl>{escape(ews_url)}</EwsUrl>"
        f"<EmwsUrl>{escape(ews_url)}</EmwsUrl><OOFUrl>{escape(ews_url)}</OOFUrl></Protocol>"
        f"<Protocol><Type>EXPR</Type><EwsUrl>{escape(ews_url)}</EwsUrl></Protocol>"
        "</Account></Response>"
    )


def _pox_error(code: int, message: str) -> web.Response:
    # The error's <Response> has no namespace of its own, unlike a settings response.
    return _pox_response(
        f'<Response><Error Time="{_time_of_day()}" Id="2422600485"><ErrorCode>{code}</ErrorCode>'
        f"<Message>{escape(message)}</Message><DebugData /></Error></Response>"
    )


def _pox_response(response_xml: str) -> web.Response:
    text = f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{_RESPONSE_NS}">{response_xml}</Autodiscover>'
    return with_iis_headers(web.Response(text=text, content_type="text/xml", charset="utf-8"))


def _time_of_day() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f") + "0"


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
