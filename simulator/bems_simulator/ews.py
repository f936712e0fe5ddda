"""EWS (``/EWS/Exchange.asmx``) on the on-prem and Exchange Online endpoints.

Once a request is authenticated, ``GetFolder`` for distinguished folders is served (facts file 1.3),
and so are the operations of a push probe: ``Subscribe`` with a ``PushSubscriptionRequest`` (5.1; the
``push`` module then calls the client back), ``CreateItem`` (``SaveOnly``) and ``DeleteItem`` on the
items of ``mailstore``. The service account has no mailbox of its own here, so these three act on the
impersonated mailbox only. Everything else comes back on the channel real EWS uses for it (1.5):
request-level problems (XML that does not parse, an operation this simulator does not know,
impersonation, throttling) as an HTTP 500 SOAP fault, per-folder and per-item problems as
``ResponseClass="Error"`` inside an HTTP 200.

Impersonation (section 2.2): an impersonated address without a mailbox is ``ErrorNonExistentMailbox``,
a mailbox the caller may not reach ``ErrorImpersonateUserDenied`` on-prem (no ApplicationImpersonation)
and a bare HTTP 403 online (no application access: the policy block, field facts). Exchange Online's
app-only tokens act as no user, so it demands the ``ExchangeImpersonation`` header (a 500 fault
without it) and ``X-AnchorMailbox`` (section 2.3; a 503 without it here, one of the answers the docs
warn of).

Each endpoint can be throttled (section 3) in every form exchangelib backs off on: the ErrorServerBusy
fault or response message, ErrorExceededConnectionCount, ErrorTooManyObjectsOpened,
ErrorInternalServerTransientError, ErrorTimeoutExpired, ErrorInternalServerError wrapping ErrorServerBusy,
and HTTP 503. Exchange Online's EWS can be switched off for the organisation as the retirement will
(EWSEnabled false, or an EwsAllowedAppIDs list without the caller's app; section 9: 403, empty body).
These hold for every authenticated request, whatever its operation, and every authenticated request is
recorded. A mailbox the app's application access leaves out gets the same bare 403, but only for
requests that act as that mailbox: an app-only request without ``ExchangeImpersonation`` still gets
its SOAP fault.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple
from urllib.parse import urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from .challenges import with_iis_headers
from .directory import MailboxDirectory
from .identity import Authenticator, Caller
from .mailstore import MailStore
from .push import (
    DEFAULT_STATUS_FREQUENCY,
    MAX_STATUS_FREQUENCY,
    MIN_STATUS_FREQUENCY,
    SUBSCRIBABLE_EVENT_TYPES,
    EwsPushEngine,
    InvalidWatermarkError,
    folder_id,
)
from .soap import ERRORS_NS, MESSAGES_NS, SOAP_NS, TYPES_NS

EWS_PATH = "/EWS/Exchange.asmx"


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
    # exchangelib reaches every folder through "root" (Account.root): a valid DistinguishedFolderIdNameType
    # value, so never a schema error. Its display name and counts [UNVERIFIED].
    "root": _FolderContents("", 0, 18, 0),
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
_IMPERSONATION_DENIED_TEXT = "The account does not have permission to impersonate the requested user."
_SERVER_BUSY_TEXT = "The server cannot service this request right now. Try again later."
_CONNECTION_COUNT_TEXT = (
    "You have exceeded the available concurrent connections for your account.  "
    "Try again once your other requests have completed."
)
# EWSMaxConcurrency's default on Exchange 2013 and later, and in Exchange Online (facts file 3.4).
_MAX_CONCURRENCY = 27
# The budget part and value a plain GetFolder would exceed [UNVERIFIED: the 3.2 capture names
# 'ConcurrentSyncCalls', which only sync operations are charged against].
_BUSY_BUDGET_PART, _BUSY_BUDGET_VALUE = "EwsCutoffBalance", "180000"
# The double spaces are Exchange's own.
_BUDGET_EXCEEDED_TEXT = (
    "This operation exceeds the throttling budget for policy part '{part}', policy value '{value}',  "
    "Budget type: 'Ews'.  Suggested backoff time {backoff_ms} ms."
)
_NO_OWN_MAILBOX_TEXT = (
    "When making a request as an account that does not have a mailbox, you must specify the mailbox "
    "primary SMTP address for any distinguished folder Ids."
)
_ACCESS_DENIED_TEXT = "Access is denied. Check credentials and try again."
_ITEM_NOT_FOUND_TEXT = "The specified object was not found in the store."
# What an error response message of an operation carries after its MessageXml (facts file 1.5).
_EMPTY_RESULTS = {"GetFolder": "<m:Folders/>", "CreateItem": "<m:Items/>"}
# Where CreateItem saves an item when the request names no folder, as Exchange does.
_DEFAULT_SAVE_FOLDER = "drafts"
_MESSAGE_DISPOSITIONS = ("SaveOnly", "SendOnly", "SendAndSaveCopy")
_DELETE_TYPES = ("HardDelete", "SoftDelete", "MoveToDeletedItems")
# A push URL Exchange accepts is shorter than this (ErrorInvalidPushSubscriptionUrl, responsecode.md).
_MAX_PUSH_URL_LENGTH = 2083


class ThrottlingKind(StrEnum):
    NONE = "none"
    SERVER_BUSY_FAULT = "server_busy_fault"  # HTTP 500 ErrorServerBusy fault (facts file 3.1)
    SERVER_BUSY_MESSAGE = "server_busy_message"  # HTTP 200, ErrorServerBusy response message (3.2)
    CONNECTION_COUNT = "connection_count"  # HTTP 500 ErrorExceededConnectionCount fault (3.3)
    # HTTP 200 response messages exchangelib backs off on (services/common.py ``_get_elements``):
    TOO_MANY_OBJECTS_OPENED = "too_many_objects_opened"  # the exchangelib fixture's text (3.3)
    INTERNAL_SERVER_TRANSIENT_ERROR = "internal_server_transient_error"  # code documented, text [UNVERIFIED]
    TIMEOUT_EXPIRED = "timeout_expired"  # code documented, text [UNVERIFIED]
    # "200: an EWS schema response with ErrorInternalServerError, possibly with an inner ErrorServerBusy"
    # (3.4), the inner error in MessageXml as in exchangelib's test_inner_error_parsing (1.5).
    INTERNAL_SERVER_ERROR_BUSY = "internal_server_error_busy"
    # "503: EWS requests are queuing in IIS; the client should delay" (3.4): empty, Retry-After if backoff_ms.
    HTTP_503 = "http_503"


# Exchange suggests no wait for a connection-count error: "the existing connections remain valid" (3.4).
_DEFAULT_BACKOFF_MS = {
    ThrottlingKind.SERVER_BUSY_FAULT: 5000,
    ThrottlingKind.SERVER_BUSY_MESSAGE: 5000,
    ThrottlingKind.CONNECTION_COUNT: 0,
    ThrottlingKind.HTTP_503: None,  # no Retry-After
}
_MESSAGE_THROTTLING = {  # kind -> (ResponseCode, MessageText)
    ThrottlingKind.TOO_MANY_OBJECTS_OPENED: ("ErrorTooManyObjectsOpened", "Too many concurrent connections opened."),
    ThrottlingKind.INTERNAL_SERVER_TRANSIENT_ERROR: (
        "ErrorInternalServerTransientError",
        "An internal server error occurred. Try again later.",
    ),
    ThrottlingKind.TIMEOUT_EXPIRED: ("ErrorTimeoutExpired", "The request timed out."),
    ThrottlingKind.INTERNAL_SERVER_ERROR_BUSY: (
        "ErrorInternalServerError",
        "An internal server error occurred. The operation failed.",
    ),
}


@dataclass(frozen=True)
class Throttling:
    kind: ThrottlingKind = ThrottlingKind.NONE
    backoff_ms: int | None = None

    @classmethod
    def parse(cls, kind: Any, backoff_ms: Any = None) -> Throttling:
        try:
            kind = ThrottlingKind(kind)
        except ValueError:
            raise ValueError(f"unknown throttling kind {kind!r}; valid: {', '.join(ThrottlingKind)}") from None
        if kind not in _DEFAULT_BACKOFF_MS:  # none, and the shapes that carry no back-off
            if backoff_ms is not None:
                raise ValueError(f"backoff_ms applies to {', '.join(_DEFAULT_BACKOFF_MS)}, not to {kind}")
            return cls(kind)
        if backoff_ms is None:
            return cls(kind, _DEFAULT_BACKOFF_MS[kind])
        if isinstance(backoff_ms, bool) or not isinstance(backoff_ms, int) or backoff_ms < 0:
            raise ValueError(f"backoff_ms must be a whole number of milliseconds, 0 or more, not {backoff_ms!r}")
        return cls(kind, backoff_ms)

    def state(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "backoff_ms": self.backoff_ms}


class EwsRequest(NamedTuple):
    """One authenticated EWS request, recorded before anything else is decided about it."""

    endpoint: str
    caller: str  # DOMAIN\user on-prem, the app id for an OAuth token
    operation: str | None  # the SOAP body's first element, None when there is none
    impersonated: str | None  # the address the ExchangeImpersonation header names
    time: float  # the loop's clock at arrival (time.monotonic() but in a test that moves the loop's clock)

    def state(self) -> dict[str, Any]:
        return self._asdict()


class EwsService:
    """One EWS endpoint's behaviour; it outlives the listeners that a fault change restarts."""

    def __init__(
        self,
        endpoint: str,
        directory: MailboxDirectory,
        server_version: ServerVersion,
        requests: list[EwsRequest],
        store: MailStore,
        push: EwsPushEngine,
    ) -> None:
        self.endpoint = endpoint
        self.throttling = Throttling()
        # Exchange Online's organisation-wide switches (facts file 9): EWSEnabled false, and EwsAllowedAppIDs,
        # which admits only the listed app ids when set. Either blocks every request with a bare 403.
        self.disabled = False
        self.allowed_app_ids: frozenset[str] | None = None
        # Get-CASMailbox EwsEnabled by casefolded address (absent: $null): False blocks the app acting as it.
        self.mailbox_ews_enabled: dict[str, bool | None] = {}
        self.directory = directory
        self.server_version = server_version
        self._requests = requests
        self._store = store
        self._push = push
        # Each takes the operation's element and the impersonated mailbox (None without the header).
        self._operations: dict[str, Callable[[ElementTree.Element, str | None], web.Response]] = {
            f"{{{MESSAGES_NS}}}GetFolder": self._get_folder,
            f"{{{MESSAGES_NS}}}Subscribe": self._subscribe,
            f"{{{MESSAGES_NS}}}CreateItem": self._create_item,
            f"{{{MESSAGES_NS}}}DeleteItem": self._delete_item,
        }

    def state(self) -> dict[str, Any]:
        allowed = sorted(self.allowed_app_ids) if self.allowed_app_ids is not None else None
        return {
            "throttling": self.throttling.state(), "disabled": self.disabled, "allowed_app_ids": allowed,
            "mailbox_ews_enabled": dict(sorted(self.mailbox_ews_enabled.items())),
        }  # fmt: skip

    def _blocked_for(self, caller: Caller, impersonated: str | None) -> bool:
        # Both the organisation's and the mailbox's EwsEnabled must allow EWS (MC1015893), with the same 403.
        mailbox_off = impersonated is not None and self.mailbox_ews_enabled.get(impersonated.casefold()) is False
        return (
            self.disabled
            or mailbox_off
            or (caller.app_only and self.allowed_app_ids is not None and caller.name not in self.allowed_app_ids)
        )

    def add_routes(self, app: web.Application, authenticator: Authenticator) -> None:
        async def handler(request: web.Request) -> web.Response:
            return await self._serve(request, authenticator)

        app.router.add_post(EWS_PATH, handler)
        # IIS authenticates a GET like any request; once past that, EWS finds no SOAP request in it.
        app.router.add_get(EWS_PATH, handler)

    async def _serve(self, request: web.Request, authenticator: Authenticator) -> web.Response:
        caller = await authenticator.authenticate(request)
        if isinstance(caller, web.Response):
            return caller
        body = await request.read()
        try:
            envelope = ElementTree.fromstring(body) if body.strip() else None
        except ElementTree.ParseError as error:
            envelope, parse_error = None, error
        else:
            parse_error = None
        operation = _operation(envelope)
        operation_name = _local_name(operation.tag) if operation is not None else None
        impersonated = _impersonated_mailbox(envelope) if envelope is not None else None
        self._requests.append(
            EwsRequest(self.endpoint, caller.name, operation_name, impersonated, asyncio.get_running_loop().time())
        )
        if self._blocked_for(caller, impersonated):
            return with_iis_headers(web.Response(status=403))
        if parse_error is not None:
            line, column = parse_error.position
            return _schema_fault(
                str(parse_error), f"<t:LineNumber>{line}</t:LineNumber><t:LinePosition>{column}</t:LinePosition>"
            )
        if operation is None or operation_name is None:
            return _fault("ErrorInvalidRequest", "The request is invalid.")
        throttled = self._throttled(operation_name)
        if throttled is not None:
            return throttled
        serve_operation = self._operations.get(operation.tag)
        if serve_operation is None:
            return _fault("ErrorInvalidRequest", "The request is invalid.")
        rejection = self._check_impersonation(request, caller, impersonated)
        if rejection is not None:
            return rejection
        return serve_operation(operation, impersonated)

    def _throttled(self, operation_name: str) -> web.Response | None:
        backoff_ms = self.throttling.backoff_ms
        match self.throttling.kind:
            case ThrottlingKind.NONE:
                return None
            case ThrottlingKind.SERVER_BUSY_FAULT:
                return _fault("ErrorServerBusy", _SERVER_BUSY_TEXT, detail_xml=_backoff_value(backoff_ms))
            case ThrottlingKind.SERVER_BUSY_MESSAGE:
                budget = _BUDGET_EXCEEDED_TEXT.format(
                    part=_BUSY_BUDGET_PART, value=_BUSY_BUDGET_VALUE, backoff_ms=backoff_ms
                )
                message = _error_message(
                    operation_name,
                    "ErrorServerBusy",
                    f"{_SERVER_BUSY_TEXT}, {budget}",
                    message_xml=_backoff_value(backoff_ms),
                )
                return self._response(operation_name, message)
            case ThrottlingKind.CONNECTION_COUNT:
                budget = _BUDGET_EXCEEDED_TEXT.format(
                    part="MaxConcurrency", value=_MAX_CONCURRENCY, backoff_ms=backoff_ms
                )
                return _fault(
                    "ErrorExceededConnectionCount",
                    _CONNECTION_COUNT_TEXT,
                    detail_xml=(
                        '<t:Value Name="Policy">MaxConcurrency</t:Value>'
                        f'<t:Value Name="MaxConcurrencyLimit">{_MAX_CONCURRENCY}</t:Value>'
                        f'<t:Value Name="ErrorMessage">{escape(budget)}</t:Value>'
                    ),
                )
            case ThrottlingKind.HTTP_503:
                response = with_iis_headers(web.Response(status=503))
                if backoff_ms is not None:
                    response.headers["Retry-After"] = str(math.ceil(backoff_ms / 1000))
                return response
            case ThrottlingKind.INTERNAL_SERVER_ERROR_BUSY:
                code, text = _MESSAGE_THROTTLING[self.throttling.kind]
                inner = (
                    f'<t:Value Name="InnerErrorMessageText">{escape(_SERVER_BUSY_TEXT)}</t:Value>'
                    '<t:Value Name="InnerErrorResponseCode">ErrorServerBusy</t:Value>'
                    '<t:Value Name="InnerErrorDescriptiveLinkKey">0</t:Value>'
                )
                return self._response(operation_name, _error_message(operation_name, code, text, message_xml=inner))
            case _:
                code, text = _MESSAGE_THROTTLING[self.throttling.kind]
                return self._response(operation_name, _error_message(operation_name, code, text))

    def _check_impersonation(
        self, request: web.Request, caller: Caller, impersonated: str | None
    ) -> web.Response | None:
        if caller.app_only:
            if impersonated is None:
                return _fault(
                    "ErrorInvalidExchangeImpersonationHeaderData",
                    "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
                )
            if not request.headers.get("X-AnchorMailbox"):
                return with_iis_headers(web.Response(status=503))
        if impersonated is None:
            return None
        if impersonated not in self.directory:
            return _fault(
                "ErrorNonExistentMailbox",
                _NO_MAILBOX_TEXT,
                detail_xml=f'<t:Value Name="SmtpAddress">{escape(impersonated)}</t:Value>',
            )
        if not self.directory.is_granted(impersonated):
            if caller.app_only:
                # An application access policy or RBAC for Applications scope that leaves the mailbox out:
                # Exchange Online's bare policy-block 403 (field facts, David-Barrett-MS/PowerShell-EWS-Scripts#62).
                return with_iis_headers(web.Response(status=403))
            return _fault("ErrorImpersonateUserDenied", _IMPERSONATION_DENIED_TEXT)
        return None

    def _get_folder(self, operation: ElementTree.Element, impersonated: str | None) -> web.Response:
        folder_ids = operation.find(f"{{{MESSAGES_NS}}}FolderIds")
        if folder_ids is None or not len(folder_ids):
            return _fault("ErrorInvalidRequest", "The request is invalid.")
        messages = []
        for folder in folder_ids:
            if folder.tag != f"{{{TYPES_NS}}}DistinguishedFolderId":
                messages.append(_error_message("GetFolder", "ErrorInvalidIdMalformed", "Id is malformed."))
                continue
            name = folder.get("Id", "")
            if name not in _DISTINGUISHED_FOLDERS:
                return _unknown_folder_fault(name)
            mailbox = _delegate_mailbox(folder) or ""
            if mailbox and mailbox not in self.directory:
                messages.append(_error_message("GetFolder", "ErrorNonExistentMailbox", _NO_MAILBOX_TEXT))
            else:
                messages.append(_folder_message(name, mailbox))
        return self._response("GetFolder", "".join(messages))

    def _subscribe(self, operation: ElementTree.Element, impersonated: str | None) -> web.Response:
        request = operation.find(f"{{{MESSAGES_NS}}}PushSubscriptionRequest")
        if request is None:  # pull and streaming subscriptions are not simulated
            return _fault("ErrorInvalidRequest", "The request is invalid.")
        folders: set[str] = set()
        delegate_mailbox = None
        if request.get("SubscribeToAllFolders", "").strip().lower() not in ("true", "1"):
            folder_ids = request.find(f"{{{TYPES_NS}}}FolderIds")
            if folder_ids is None or not len(folder_ids):
                return _incomplete_content_fault("PushSubscriptionRequest", "FolderIds")
            for folder in folder_ids:
                if folder.tag != f"{{{TYPES_NS}}}DistinguishedFolderId":
                    return self._response(
                        "Subscribe", _error_message("Subscribe", "ErrorInvalidIdMalformed", "Id is malformed.")
                    )
                name = folder.get("Id", "")
                if name not in _DISTINGUISHED_FOLDERS:
                    return _unknown_folder_fault(name)
                folders.add(name)
                delegate_mailbox = delegate_mailbox or _delegate_mailbox(folder)
        event_types = [(event.text or "").strip() for event in request.iterfind(f"{{{TYPES_NS}}}EventTypes/*")]
        if not event_types:
            return _incomplete_content_fault("EventTypes", "EventType")
        for event_type in event_types:
            if event_type not in SUBSCRIBABLE_EVENT_TYPES:
                return _enumeration_fault("EventType", event_type, "NotificationEventTypeType")
        frequency_text = request.findtext(f"{{{TYPES_NS}}}StatusFrequency")
        status_frequency = _status_frequency(frequency_text)
        if status_frequency is None:
            # Out of 1..1440 fails the schema type itself (SubscriptionStatusFrequencyType).
            return _schema_fault(
                f"The '{TYPES_NS}:StatusFrequency' element is invalid - The value '{frequency_text}' is invalid "
                f"according to its datatype '{TYPES_NS}:SubscriptionStatusFrequencyType'."
            )
        url = request.findtext(f"{{{TYPES_NS}}}URL")
        if url is None:
            return _incomplete_content_fault("PushSubscriptionRequest", "URL")
        if impersonated is None:
            return self._without_own_mailbox("Subscribe", delegate_mailbox)
        if not _valid_push_url(url.strip()):
            # The code is documented (responsecode.md), the message text [UNVERIFIED].
            return self._response(
                "Subscribe",
                _error_message("Subscribe", "ErrorInvalidPushSubscriptionUrl", "The push subscription URL is invalid."),
            )
        # The schema puts Watermark in the types namespace; some clients send it in messages.
        watermark = request.findtext(f"{{{TYPES_NS}}}Watermark") or request.findtext(f"{{{MESSAGES_NS}}}Watermark")
        try:
            subscription, watermark = self._push.subscribe(
                self.endpoint,
                impersonated,
                frozenset(folders),
                frozenset(event_types),
                url.strip(),
                status_frequency,
                watermark.strip() if watermark else None,
            )
        except InvalidWatermarkError:
            # A watermark not issued here "gives an error response" (5.1); code and text [UNVERIFIED].
            return self._response(
                "Subscribe",
                _error_message(
                    "Subscribe",
                    "ErrorInvalidWatermark",
                    "The watermark used for creating this subscription was not found.",
                ),
            )
        return self._response(
            "Subscribe",
            '<m:SubscribeResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f"<m:SubscriptionId>{subscription.id}</m:SubscriptionId><m:Watermark>{watermark}</m:Watermark>"
            "</m:SubscribeResponseMessage>",
        )

    def _create_item(self, operation: ElementTree.Element, impersonated: str | None) -> web.Response:
        disposition = operation.get("MessageDisposition")
        if disposition is not None and disposition not in _MESSAGE_DISPOSITIONS:
            return _enumeration_fault("MessageDisposition", disposition, "MessageDispositionType")
        folder, delegate_mailbox = _DEFAULT_SAVE_FOLDER, None
        saved_folder = operation.find(f"{{{MESSAGES_NS}}}SavedItemFolderId/{{{TYPES_NS}}}DistinguishedFolderId")
        if saved_folder is not None:
            folder, delegate_mailbox = saved_folder.get("Id", ""), _delegate_mailbox(saved_folder)
            if folder not in _DISTINGUISHED_FOLDERS:
                return _unknown_folder_fault(folder)
        items = operation.find(f"{{{MESSAGES_NS}}}Items")
        if items is None or not len(items):
            return _incomplete_content_fault("CreateItem", "Items")
        if any(item.tag != f"{{{TYPES_NS}}}Message" for item in items):
            return _fault("ErrorInvalidRequest", "The request is invalid.")  # only messages are simulated
        if impersonated is None:
            return self._without_own_mailbox("CreateItem", delegate_mailbox)
        if disposition is None:  # [UNVERIFIED text] for a documented code
            message = _error_message("CreateItem", "ErrorMessageDispositionRequired", "MessageDisposition is required.")
            return self._response("CreateItem", message * len(items))
        if disposition != "SaveOnly":  # the simulator delivers no mail
            return _fault("ErrorInvalidRequest", "The request is invalid.")
        messages = []
        for message in items:
            item = self._store.create(
                impersonated,
                folder,
                subject=message.findtext(f"{{{TYPES_NS}}}Subject") or "",
                body=message.findtext(f"{{{TYPES_NS}}}Body") or "",
            )
            messages.append(
                '<m:CreateItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
                f"<m:Items><t:Message><t:ItemId Id={quoteattr(item.id)} ChangeKey={quoteattr(item.change_key)}/>"
                "</t:Message></m:Items></m:CreateItemResponseMessage>"
            )
        return self._response("CreateItem", "".join(messages))

    def _delete_item(self, operation: ElementTree.Element, impersonated: str | None) -> web.Response:
        delete_type = operation.get("DeleteType")
        if delete_type not in _DELETE_TYPES:
            return _enumeration_fault("DeleteType", delete_type or "", "DisposalType")
        item_ids = operation.findall(f"{{{MESSAGES_NS}}}ItemIds/{{{TYPES_NS}}}ItemId")
        if not item_ids:
            return _incomplete_content_fault("DeleteItem", "ItemIds")
        if impersonated is None:
            return self._without_own_mailbox("DeleteItem", None)
        messages = []
        for item_id in item_ids:
            if delete_type == "MoveToDeletedItems":
                found = self._store.move(impersonated, item_id.get("Id", ""), "deleteditems") is not None
            else:
                found = self._store.delete(impersonated, item_id.get("Id", ""))
            messages.append(
                '<m:DeleteItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
                "</m:DeleteItemResponseMessage>"
                if found
                else _error_message("DeleteItem", "ErrorItemNotFound", _ITEM_NOT_FOUND_TEXT)
            )
        return self._response("DeleteItem", "".join(messages))

    def _without_own_mailbox(self, operation_name: str, delegate_mailbox: str | None) -> web.Response:
        """The answer to a mailbox operation sent without impersonation, by an account that has no mailbox."""
        if delegate_mailbox is None:
            message = _error_message(operation_name, "ErrorMissingEmailAddress", _NO_OWN_MAILBOX_TEXT)
        elif operation_name == "Subscribe":
            message = _error_message(
                operation_name,
                "ErrorSubscriptionDelegateAccessNotSupported",
                "Subscriptions are not supported for delegate user access.",
            )
        else:  # delegate access needs FullAccess, which the service account is never given here
            message = _error_message(operation_name, "ErrorAccessDenied", _ACCESS_DENIED_TEXT)
        return self._response(operation_name, message)

    def _response(self, operation_name: str, response_messages: str) -> web.Response:
        """An HTTP 200 answer: the ``ServerVersionInfo`` header and the operation's response messages."""
        return _soap_response(
            f"<s:Header>{self.server_version.header()}</s:Header>"
            '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
            f'<m:{operation_name}Response xmlns:m="{MESSAGES_NS}" xmlns:t="{TYPES_NS}"><m:ResponseMessages>'
            f"{response_messages}</m:ResponseMessages></m:{operation_name}Response></s:Body>",
            status=200,
        )


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _backoff_value(backoff_ms: int | None) -> str:
    return f'<t:Value Name="BackOffMilliseconds">{backoff_ms}</t:Value>'


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


def _delegate_mailbox(distinguished_folder_id: ElementTree.Element) -> str | None:
    """The mailbox a ``DistinguishedFolderId`` names (delegate access), if any."""
    address = distinguished_folder_id.findtext(f"{{{TYPES_NS}}}Mailbox/{{{TYPES_NS}}}EmailAddress")
    return (address or "").strip() or None


def _status_frequency(text: str | None) -> int | None:
    """StatusFrequency in minutes (default 30), or None when the schema type would reject it."""
    if text is None:
        return DEFAULT_STATUS_FREQUENCY
    try:
        minutes = int(text.strip())
    except ValueError:
        return None
    return minutes if MIN_STATUS_FREQUENCY <= minutes <= MAX_STATUS_FREQUENCY else None


def _valid_push_url(url: str) -> bool:
    """Exchange's rule for a push URL: shorter than 2083 characters, http or https, a parsable URI."""
    if not 0 < len(url) < _MAX_PUSH_URL_LENGTH:
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _folder_message(name: str, mailbox: str) -> str:
    folder = _DISTINGUISHED_FOLDERS[name]
    return (
        '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders>'
        f'<t:Folder><t:FolderId Id={quoteattr(folder_id(mailbox, name))} ChangeKey="{_CHANGE_KEY}"/>'
        f"<t:DisplayName>{escape(folder.display_name)}</t:DisplayName>"
        f"<t:TotalCount>{folder.total_count}</t:TotalCount>"
        f"<t:ChildFolderCount>{folder.child_folder_count}</t:ChildFolderCount>"
        f"<t:UnreadCount>{folder.unread_count}</t:UnreadCount></t:Folder>"
        "</m:Folders></m:GetFolderResponseMessage>"
    )


def _error_message(operation_name: str, code: str, text: str, message_xml: str = "") -> str:
    """A ``ResponseClass="Error"`` message; in a response message ``MessageXml`` is in the messages namespace."""
    message_xml = f"<m:MessageXml>{message_xml}</m:MessageXml>" if message_xml else ""
    return (
        f'<m:{operation_name}ResponseMessage ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{message_xml}"
        f"{_EMPTY_RESULTS.get(operation_name, '')}</m:{operation_name}ResponseMessage>"
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


def _schema_fault(violation: str, position_xml: str = "") -> web.Response:
    """``ErrorSchemaValidation``: what Exchange answers a request its XML schema rejects (facts file 10)."""
    return _fault(
        "ErrorSchemaValidation",
        f"The request failed schema validation: {violation}",
        "The request failed schema validation.",
        f"{position_xml}<t:Violation>{escape(violation)}</t:Violation>",
    )


def _enumeration_fault(name: str, value: str, datatype: str) -> web.Response:
    return _schema_fault(
        f"The '{name}' attribute is invalid - The value '{value}' is invalid according to its datatype "
        f"'{TYPES_NS}:{datatype}' - The Enumeration constraint failed."
    )


def _unknown_folder_fault(name: str) -> web.Response:
    # Any other name fails schema validation, as on Exchange.
    return _enumeration_fault("Id", name, "DistinguishedFolderIdNameType")


def _incomplete_content_fault(element: str, expected: str) -> web.Response:
    return _schema_fault(
        f"The element '{element}' has incomplete content. List of possible elements expected: '{expected}'."
    )


def _soap_response(envelope_content: str, status: int) -> web.Response:
    text = f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}">{envelope_content}</s:Envelope>'
    return with_iis_headers(web.Response(status=status, text=text, content_type="text/xml", charset="utf-8"))
