"""EWS (``/EWS/Exchange.asmx``) on the on-prem and Exchange Online endpoints.

Once a request is authenticated, ``GetFolder`` for distinguished folders is served (facts file 1.3).
Everything else comes back on the channel real EWS uses for it (1.5): request-level problems (XML
that does not parse, an operation this simulator does not know, impersonation) as an HTTP 500 SOAP
fault, per-folder problems as ``ResponseClass="Error"`` inside an HTTP 200.

Exchange Online's app-only tokens act as no user, so it demands the ``ExchangeImpersonation`` header
(a 500 fault without it, section 2.2) and ``X-AnchorMailbox`` (section 2.3; a 503 without it here,
one of the answers the docs warn of).
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from .challenges import with_iis_headers
from .identity import Authenticator, Caller

EWS_PATH = "/EWS/Exchange.asmx"

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
TYPES_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
ERRORS_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"


@dataclass(frozen=True)
class ServerVersion:
    """The ``ServerVersionInfo`` header's attributes (facts file 1.3)."""

    major: int
    minor: int
    major_build: int
    minor_build: int
    schema: str

    def header(self) -> str:
        return (
            f'<h:ServerVersionInfo MajorVersion="{self.major}" MinorVersion="{self.minor}" '
            f'MajorBuildNumber="{self.major_build}" MinorBuildNumber="{self.minor_build}" Version="{self.schema}" '
            f'xmlns:h="{TYPES_NS}" xmlns="{TYPES_NS}" xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
        )


EXCHANGE_2019 = ServerVersion(15, 2, 2562, 29, "V2017_07_11")
EXCHANGE_ONLINE = ServerVersion(15, 20, 8769, 35, "V2018_01_08")


@dataclass(frozen=True)
class _FolderContents:
    display_name: str
    total_count: int
    child_folder_count: int
    unread_count: int


# The distinguished folders a probe asks for; any other name fails schema validation, as on Exchange.
_DISTINGUISHED_FOLDERS = {
    "msgfolderroot": _FolderContents("Top of Information Store", 0, 14, 0),
    "inbox": _FolderContents("Inbox", 2, 0, 2),
    "sentitems": _FolderContents("Sent Items", 0, 0, 0),
    "deleteditems": _FolderContents("Deleted Items", 0, 0, 0),
    "drafts": _FolderContents("Drafts", 0, 0, 0),
    "calendar": _FolderContents("Calendar", 0, 0, 0),
    "contacts": _FolderContents("Contacts", 0, 0, 0),
}
_CHANGE_KEY = "AQAAABYAAABUlHmorID7SqN3OoVflc6XAAAAAACW"
_NO_MAILBOX_TEXT = "The SMTP address has no mailbox associated with it."


def add_routes(
    app: web.Application, authenticator: Authenticator, mailboxes: Collection[str], server_version: ServerVersion
) -> None:
    handler = partial(
        _serve,
        authenticator=authenticator,
        mailboxes={mailbox.casefold() for mailbox in mailboxes},
        server_version=server_version,
    )
    app.router.add_post(EWS_PATH, handler)
    # IIS authenticates a GET like any request; once past that, EWS finds no SOAP request in it.
    app.router.add_get(EWS_PATH, handler)


async def _serve(
    request: web.Request, authenticator: Authenticator, mailboxes: set[str], server_version: ServerVersion
) -> web.Response:
    caller = await authenticator.authenticate(request)
    if isinstance(caller, web.Response):
        return caller
    body = await request.read()
    try:
        envelope = ElementTree.fromstring(body) if body.strip() else None
    except ElementTree.ParseError as error:
        line, column = error.position
        return _fault(
            "ErrorSchemaValidation",
            f"The request failed schema validation: {error}",
            "The request failed schema validation.",
            f"<t:LineNumber>{line}</t:LineNumber><t:LinePosition>{column}</t:LinePosition>"
            f"<t:Violation>{escape(str(error))}</t:Violation>",
        )
    operation = _operation(envelope)
    if operation is None or operation.tag != f"{{{MESSAGES_NS}}}GetFolder":
        return _fault("ErrorInvalidRequest", "The request is invalid.")
    impersonated = _impersonated_mailbox(envelope)
    rejection = _check_impersonation(request, caller, impersonated, mailboxes)
    if rejection is not None:
        return rejection
    return _get_folder(operation, mailboxes, server_version)


def _operation(envelope: ElementTree.Element | None) -> ElementTree.Element | None:
    """The body's first element: EWS dispatches on its name, not on a SOAPAction header."""
    if envelope is None or envelope.tag != f"{{{SOAP_NS}}}Envelope":
        return None
    body = envelope.find(f"{{{SOAP_NS}}}Body")
    return body[0] if body is not None and len(body) else None


def _impersonated_mailbox(envelope: ElementTree.Element) -> str | None:
    """The mailbox an ``ExchangeImpersonation`` header names (any ConnectingSID form), or None."""
    connecting_sid = envelope.find(
        f"{{{SOAP_NS}}}Header/{{{TYPES_NS}}}ExchangeImpersonation/{{{TYPES_NS}}}ConnectingSID"
    )
    if connecting_sid is None or not len(connecting_sid):
        return None
    return (connecting_sid[0].text or "").strip() or None


def _check_impersonation(
    request: web.Request, caller: Caller, impersonated: str | None, mailboxes: set[str]
) -> web.Response | None:
    if caller.app_only:
        if impersonated is None:
            return _fault(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
            )
        if not request.headers.get("X-AnchorMailbox"):
            return with_iis_headers(web.Response(status=503))
    if impersonated is not None and impersonated.casefold() not in mailboxes:
        return _fault(
            "ErrorNonExistentMailbox",
            _NO_MAILBOX_TEXT,
            detail_xml=f'<t:Value Name="SmtpAddress">{escape(impersonated)}</t:Value>',
        )
    return None


def _get_folder(operation: ElementTree.Element, mailboxes: set[str], server_version: ServerVersion) -> web.Response:
    folder_ids = operation.find(f"{{{MESSAGES_NS}}}FolderIds")
    if folder_ids is None or not len(folder_ids):
        return _fault("ErrorInvalidRequest", "The request is invalid.")
    messages = []
    for folder_id in folder_ids:
        if folder_id.tag != f"{{{TYPES_NS}}}DistinguishedFolderId":
            messages.append(_error_message("ErrorInvalidIdMalformed", "Id is malformed."))
            continue
        name = folder_id.get("Id", "")
        if name not in _DISTINGUISHED_FOLDERS:
            violation = (
                f"The 'Id' attribute is invalid - The value '{name}' is invalid according to its datatype "
                f"'{TYPES_NS}:DistinguishedFolderIdNameType' - The Enumeration constraint failed."
            )
            return _fault(
                "ErrorSchemaValidation",
                f"The request failed schema validation: {violation}",
                "The request failed schema validation.",
                f"<t:Violation>{escape(violation)}</t:Violation>",
            )
        mailbox = (folder_id.findtext(f"{{{TYPES_NS}}}Mailbox/{{{TYPES_NS}}}EmailAddress") or "").strip()
        if mailbox and mailbox.casefold() not in mailboxes:
            messages.append(_error_message("ErrorNonExistentMailbox", _NO_MAILBOX_TEXT))
        else:
            messages.append(_folder_message(name, mailbox))
    body = (
        f'<m:GetFolderResponse xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><m:ResponseMessages>'
        f"{''.join(messages)}</m:ResponseMessages></m:GetFolderResponse>"
    )
    return _soap_response(
        f"<s:Header>{server_version.header()}</s:Header>"
        '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"{body}</s:Body>",
        status=200,
    )


def _folder_message(name: str, mailbox: str) -> str:
    folder = _DISTINGUISHED_FOLDERS[name]
    folder_id = base64.b64encode(f"{mailbox or 'self'}/{name}".encode()).decode()
    return (
        '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders>'
        f'<t:Folder><t:FolderId Id={quoteattr(folder_id)} ChangeKey="{_CHANGE_KEY}"/>'
        f"<t:DisplayName>{escape(folder.display_name)}</t:DisplayName>"
        f"<t:TotalCount>{folder.total_count}</t:TotalCount>"
        f"<t:ChildFolderCount>{folder.child_folder_count}</t:ChildFolderCount>"
        f"<t:UnreadCount>{folder.unread_count}</t:UnreadCount></t:Folder>"
        "</m:Folders></m:GetFolderResponseMessage>"
    )


def _error_message(code: str, text: str) -> str:
    return (
        f'<m:GetFolderResponseMessage ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
        "<m:Folders/></m:GetFolderResponseMessage>"
    )


def _fault(code: str, fault_string: str, message: str | None = None, detail_xml: str = "") -> web.Response:
    """A request-level failure: HTTP 500, a SOAP fault and no ``s:Header`` (facts file 1.5)."""
    message_xml = f'<t:MessageXml xmlns:t="{TYPES_NS}">{detail_xml}</t:MessageXml>' if detail_xml else ""
    fault = (
        f'<s:Body><s:Fault><faultcode xmlns:a="{TYPES_NS}">a:{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(fault_string)}</faultstring><detail>'
        f'<e:ResponseCode xmlns:e="{ERRORS_NS}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{ERRORS_NS}">{escape(message or fault_string)}</e:Message>'
        f"{message_xml}</detail></s:Fault></s:Body>"
    )
    return _soap_response(fault, status=500)


def _soap_response(envelope_content: str, status: int) -> web.Response:
    text = f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}">{envelope_content}</s:Envelope>'
    return with_iis_headers(web.Response(status=status, text=text, content_type="text/xml", charset="utf-8"))
