"""Autodiscover as the checks speak it: the POX request and how its answer is recognised.

Written from Microsoft's documented wire format, independently of the simulator.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

from .httpclient import HttpResponse, xml_document

POX_PATH = "/autodiscover/autodiscover.xml"
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
POX_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}


def pox_url(target_url: str) -> str:
    """The POX endpoint on the host of an Autodiscover target's URL (any URL on that host)."""
    parts = urlsplit(target_url)
    return urlunsplit((parts.scheme, parts.netloc, POX_PATH, "", ""))


def pox_request(mailbox: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<Autodiscover xmlns="{REQUEST_NS}"><Request>'
        f"<EMailAddress>{escape(mailbox)}</EMailAddress>"
        f"<AcceptableResponseSchema>{RESPONSE_SCHEMA}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode()


def check_pox_answer(response: HttpResponse) -> None:
    """A POX answer, settings or error alike, proves the server processed a signed-in request."""
    xml_document(response, f"{{{AUTODISCOVER_NS}}}Autodiscover", "an Autodiscover answer")
