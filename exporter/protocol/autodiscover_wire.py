"""Autodiscover as the checks speak it: POX, SOAP (GetUserSettings) and v2 JSON requests and answers.

Written from Microsoft's documented wire format, independently of the simulator.
"""

from __future__ import annotations

import ipaddress
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit
from xml.sax.saxutils import escape

from ..results import ProbeFailure, Reason
from . import safe_xml
from .http_client import HttpResponse, origin, plain_authority, xml_document

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


SOAP_PATH = "/autodiscover/autodiscover.svc"
JSON_BASE = "/autodiscover/autodiscover.json"
JSON_PATH = JSON_BASE + "/v1.0/"
SOAP_AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
WSA_NS = "http://www.w3.org/2005/08/addressing"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SOAP_ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
MAX_HOPS = 10  # Microsoft's AutodiscoverMaxRedirections


@dataclass(frozen=True, slots=True)
class Found:
    """Autodiscover's answer: the EWS URL, or where to ask next (another address, another URL)."""

    ews_url: str | None = None
    redirect_address: str | None = None
    redirect_url: str | None = None


def endpoint(protocol: str, target_url: str, mailbox: str) -> str:
    parts = urlsplit(target_url)
    if protocol == "pox":
        path, query = POX_PATH, ""
    elif protocol == "soap":
        path, query = SOAP_PATH, ""
    else:
        path, query = JSON_PATH + quote(mailbox, safe="@"), "Protocol=EWS"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def unknown_to_json(url: str, location: str, mailbox: str) -> bool:
    """Exchange Online's v2 answer for an address it does not know: a 302 back to its own ``autodiscover.json``
    with ``Email`` (the address) and ``RedirectCount`` (protocol facts 4.3, a capture). Followed, it only
    counts up."""
    asked, there = urlsplit(url), urlsplit(location)
    query = parse_qs(there.query)
    return (
        there.netloc.lower() == asked.netloc.lower()
        and there.path.rstrip("/").lower() == JSON_BASE
        and "RedirectCount" in query
        and [address.lower() for address in query.get("Email", [])] == [mailbox.lower()]
    )


def soap_request(mailbox: str, url: str) -> bytes:
    settings = "".join(f"<a:Setting>{name}</a:Setting>" for name in ("ExternalEwsUrl", "InternalEwsUrl"))
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        f'<s:Envelope xmlns:s="{SOAP_ENVELOPE_NS}" xmlns:a="{SOAP_AUTODISCOVER_NS}" xmlns:wsa="{WSA_NS}" '
        f'xmlns:xsi="{XSI_NS}"><s:Header><a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion>'
        f"<wsa:Action>{SOAP_AUTODISCOVER_NS}/Autodiscover/GetUserSettings</wsa:Action>"
        f"<wsa:To>{escape(url)}</wsa:To></s:Header><s:Body><a:GetUserSettingsRequestMessage><a:Request>"
        f"<a:Users><a:User><a:Mailbox>{escape(mailbox)}</a:Mailbox></a:User></a:Users>"
        f"<a:RequestedSettings>{settings}</a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage>"
        "</s:Body></s:Envelope>"
    ).encode()


def _not_found(message: str) -> ProbeFailure:
    return ProbeFailure(Reason.MAILBOX_NOT_FOUND, f"Autodiscover does not know the address: {message[:200]}")


def read_pox(response: HttpResponse) -> Found:
    root = xml_document(response, f"{{{AUTODISCOVER_NS}}}Autodiscover", "an Autodiscover answer")
    error = next((e for e in root.iter() if safe_xml.local_name(e.tag) == "Error"), None)
    if error is not None:
        code = _text(error, "ErrorCode")
        message = _text(error, "Message") or "no message"
        if code == "500":  # "The email address can't be found."
            raise _not_found(message)
        raise ProbeFailure(Reason.BAD_RESPONSE, f"Autodiscover error {code}: {message[:200]}")
    account = next((e for e in root.iter() if safe_xml.local_name(e.tag) == "Account"), None)
    action = _text(account, "Action")
    if action == "redirectAddr":
        return Found(redirect_address=_redirect_target(account, "RedirectAddr", action))
    if action == "redirectUrl":
        return Found(redirect_url=_redirect_target(account, "RedirectUrl", action))
    url = _pox_ews_url(account)
    if not url:
        raise ProbeFailure(Reason.BAD_RESPONSE, "the Autodiscover answer holds no EwsUrl")
    return Found(ews_url=url)


def _pox_ews_url(account: ET.Element | None) -> str:
    """The EWS URL of the Account's own Protocol blocks: EXPR's (external), else EXCH's (internal), else another's.

    Only those blocks carry ``EwsUrl`` ("Protocol (POX)"). The ``WEB`` block's ``Internal`` and ``External``
    children hold Protocol entries of their own with just ``Type`` and ``ASUrl`` ("Internal (POX)",
    "External (POX)"), so they are not read: Microsoft's sample ("Get user settings from Exchange by using
    Autodiscover") ends with such an entry of type EXCH.
    """
    urls: dict[str, str] = {}
    for block in account if account is not None else ():
        url = _text(block, "EwsUrl") if safe_xml.local_name(block.tag) == "Protocol" else ""
        if url:
            urls.setdefault(_text(block, "Type"), url)
    return urls.get("EXPR") or urls.get("EXCH") or next(iter(urls.values()), "")


def _redirect_target(account: ET.Element | None, name: str, action: str) -> str:
    target = _text(account, name)
    if not target:
        raise ProbeFailure(Reason.BAD_RESPONSE, f"the Autodiscover answer says {action} but holds no {name}")
    return target


def read_soap(response: HttpResponse) -> Found:
    """A GetUserSettings answer: the request's ErrorCode under ``Response``, then one per ``UserResponse``.

    Codes are Microsoft's "ErrorCode (SOAP)" enumeration; ``ServerBusy`` means "try again later".
    """
    root = xml_document(response, f"{{{SOAP_ENVELOPE_NS}}}Envelope", "a SOAP Autodiscover answer")
    user = next((e for e in root.iter(f"{{{SOAP_AUTODISCOVER_NS}}}UserResponse")), None)
    if user is None:
        response_element = next(root.iter(f"{{{SOAP_AUTODISCOVER_NS}}}Response"), None)
        code = _text(response_element, "ErrorCode")
        if code == "ServerBusy":
            raise _server_busy(_text(response_element, "ErrorMessage"))
        raise ProbeFailure(Reason.BAD_RESPONSE, f"a GetUserSettings answer without a user response ({code})")
    code = _text(user, "ErrorCode")
    if code == "RedirectAddress":
        return Found(redirect_address=_redirect_target(user, "RedirectTarget", code))
    if code == "RedirectUrl":
        return Found(redirect_url=_redirect_target(user, "RedirectTarget", code))
    if code == "InvalidUser":
        raise _not_found(_text(user, "ErrorMessage"))
    if code == "ServerBusy":
        raise _server_busy(_text(user, "ErrorMessage"))
    if code != "NoError":
        raise ProbeFailure(Reason.BAD_RESPONSE, f"GetUserSettings error {code}: {_text(user, 'ErrorMessage')[:200]}")
    settings = {_text(s, "Name"): _text(s, "Value") for s in user.iter(f"{{{SOAP_AUTODISCOVER_NS}}}UserSetting")}
    url = settings.get("ExternalEwsUrl") or settings.get("InternalEwsUrl")
    if not url:
        raise ProbeFailure(Reason.BAD_RESPONSE, "GetUserSettings returned neither ExternalEwsUrl nor InternalEwsUrl")
    return Found(ews_url=url)


def _server_busy(message: str) -> ProbeFailure:
    return ProbeFailure(Reason.THROTTLED, f"Autodiscover is too busy (ServerBusy): {message[:200]}")


def read_json(response: HttpResponse) -> Found:
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    url = answer.get("Url") if isinstance(answer, dict) else None
    if not isinstance(url, str) or not url:
        raise ProbeFailure(Reason.BAD_RESPONSE, "the Autodiscover v2 answer holds no Url")
    return Found(ews_url=url)


def error_detail(response: HttpResponse) -> str:
    """``: code: message`` of a v2 JSON error body (``{"ErrorCode": ..., "ErrorMessage": ...}``), else nothing."""
    try:
        answer = json.loads(response.body)
    except ValueError:
        return ""
    if not isinstance(answer, dict) or not isinstance(answer.get("ErrorCode"), str):
        return ""
    return f": {answer['ErrorCode']}: {str(answer.get('ErrorMessage', ''))[:200]}"


def _text(element: ET.Element | None, name: str) -> str:
    """Text of the direct child called ``name``, whatever its namespace."""
    if element is None:
        return ""
    child = next((c for c in element if safe_xml.local_name(c.tag) == name), None)
    return (child.text or "").strip() if child is not None else ""


def comparable_host(host: str) -> str:
    """A host as ``allowed_redirect_hosts`` entries are written: lower case, no trailing dot, IDN as A-label."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def redirect_allowed(url: str, home: str, allowed: tuple[str, ...]) -> bool:
    """Whether Autodiscover may ask ``url`` at all: over https, and at the configured origin (``home``,
    the target's URL) or a host of ``allowed`` (an entry, or a subdomain of a name; an IP address only
    as itself), on any port."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not plain_authority(url):
        return False
    if origin(url) == origin(home):
        return True
    host = comparable_host(parts.hostname or "")
    if not host:
        return False
    return any(host == entry or (not _is_address(entry) and host.endswith("." + entry)) for entry in allowed)


def _is_address(entry: str) -> bool:
    try:
        ipaddress.ip_address(entry)
    except ValueError:
        return False
    return True


def allowed_text(home: str, allowed: tuple[str, ...]) -> str:
    """Where redirects may go, for a message: the configured origin, then each entry."""
    scheme, host, port = origin(home)
    return ", ".join([f"{scheme}://{host}:{port}", *(f"{entry} (and subdomains)" if not _is_address(entry)
                                                     else entry for entry in allowed)])  # fmt: skip
