"""EWS SOAP as the checks speak it: the requests they send and how answers are read.

Written from Microsoft's documented wire format (docs: GetFolder, ExchangeImpersonation, EWS error
channels), independently of the simulator's own implementation.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape

from . import xmlsafe
from .httpclient import HttpResponse, xml_document
from .results import ProbeFailure, Reason

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TYPES_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
ERRORS_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "Accept": "text/xml"}

# Request-level codes that mean "signed in, but not allowed": the account or app lacks the right.
ACCESS_DENIED_CODES = frozenset({"ErrorAccessDenied"})
IMPERSONATION_DENIED_CODES = frozenset({"ErrorImpersonateUserDenied", "ErrorImpersonationDenied"})
MAILBOX_NOT_FOUND_CODES = frozenset({"ErrorNonExistentMailbox"})
THROTTLED_CODES = frozenset({"ErrorServerBusy", "ErrorExceededConnectionCount"})


def get_folder(folder: str = "msgfolderroot", impersonate: str | None = None) -> bytes:
    """A GetFolder request: the cheapest read that proves a signed-in session (and, with
    ``impersonate``, the right to act as that mailbox)."""
    impersonation = (
        "<t:ExchangeImpersonation><t:ConnectingSID>"
        f"<t:PrimarySmtpAddress>{escape(impersonate)}</t:PrimarySmtpAddress>"
        "</t:ConnectingSID></t:ExchangeImpersonation>"
        if impersonate
        else ""
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP_NS}" xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}">'
        f'<s:Header><t:RequestServerVersion Version="Exchange2016"/>{impersonation}</s:Header>'
        "<s:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        f'<m:FolderIds><t:DistinguishedFolderId Id="{escape(folder)}"/></m:FolderIds>'
        "</m:GetFolder></s:Body></s:Envelope>"
    ).encode()


@dataclass(frozen=True, slots=True)
class Answer:
    """What an EWS response said: ``code`` is ``NoError`` on success, else the ResponseCode."""

    code: str
    message: str
    fault: bool  # a request-level SOAP fault (HTTP 500), as opposed to a per-operation error
    backoff_ms: int | None = None  # ErrorServerBusy's BackOffMilliseconds: wait this long before the next call

    @property
    def ok(self) -> bool:
        return self.code == "NoError"


def read(response: HttpResponse) -> Answer:
    """Parse a 200 or 500 EWS answer; ProbeFailure(bad_response) when it is not one."""
    root = xml_document(response, f"{{{SOAP_NS}}}Envelope", "a SOAP envelope")
    fault = root.find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
    if fault is not None:
        code = fault.findtext(f"detail/{{{ERRORS_NS}}}ResponseCode") or xmlsafe.local_name(
            fault.findtext("faultcode") or ""
        )
        backoff = _backoff_ms(fault.find(f"detail/{{{TYPES_NS}}}MessageXml"))
        return Answer(code or "UnknownFault", (fault.findtext("faultstring") or "").strip(), True, backoff)
    message = root.find(f".//{{{MESSAGES_NS}}}ResponseMessages/*")
    if message is None:
        raise ProbeFailure(Reason.BAD_RESPONSE, "a SOAP envelope without a fault or response message")
    code = message.findtext(f"{{{MESSAGES_NS}}}ResponseCode") or "NoError"
    backoff = _backoff_ms(message.find(f"{{{MESSAGES_NS}}}MessageXml"))
    return Answer(code, (message.findtext(f"{{{MESSAGES_NS}}}MessageText") or "").strip(), False, backoff)


def _backoff_ms(message_xml: ET.Element | None) -> int | None:
    # MessageXml is in the types namespace inside a fault and in the messages one in a response message;
    # its Value elements are always types.
    if message_xml is None:
        return None
    for value in message_xml.iter(f"{{{TYPES_NS}}}Value"):
        if value.get("Name") == "BackOffMilliseconds" and (value.text or "").strip().isdigit():
            return int((value.text or "").strip())
    return None


def diagnostics(response: HttpResponse) -> str:
    """Exchange's own explanation of a 401 (``x-ms-diagnostics``), when it gives one."""
    value = response.header("x-ms-diagnostics")
    return f" ({value[:200]})" if value else ""
