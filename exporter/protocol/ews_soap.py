"""EWS SOAP as the checks speak it: the requests they send and how answers are read.

Written from Microsoft's documented wire format (docs: GetFolder, ExchangeImpersonation, EWS error
channels), independently of the simulator's own implementation.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from ..results import ProbeFailure, Reason
from . import safe_xml
from .http_client import HttpResponse, xml_document

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TYPES_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
ERRORS_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "Accept": "text/xml"}

# Request-level codes that mean "signed in, but not allowed": the account or app lacks the right.
ACCESS_DENIED_CODES = frozenset({"ErrorAccessDenied"})
IMPERSONATION_DENIED_CODES = frozenset({"ErrorImpersonateUserDenied", "ErrorImpersonationDenied"})
MAILBOX_NOT_FOUND_CODES = frozenset({"ErrorNonExistentMailbox"})
# The codes exchangelib backs off on (services/common.py ``_get_elements``): Exchange is busy, not the
# request wrong. ErrorExceededConnectionCount is there too: exchangelib then retries at once with fewer
# connections, as Exchange says "the existing connections remain valid" (ews-throttling-in-exchange).
THROTTLED_CODES = frozenset(
    {
        "ErrorServerBusy",
        "ErrorExceededConnectionCount",
        "ErrorTooManyObjectsOpened",
        "ErrorInternalServerTransientError",
        "ErrorTimeoutExpired",
    }
)
# What ErrorInternalServerError may wrap (MessageXml ``InnerErrorResponseCode``), per the HTTP status table of
# ews-throttling-in-exchange: "200: ... ErrorInternalServerError, possibly with an inner ErrorServerBusy".
WRAPPER_CODE = "ErrorInternalServerError"
# The wait when Exchange names none: exchangelib's FaultTolerance.DEFAULT_BACKOFF ("Back off 60 seconds if
# we didn't get an explicit suggested value", protocol.py). It also covers a check interval of a minute, so
# the next check of the account sends nothing either.
DEFAULT_BACKOFF_SECONDS = 60.0


def get_folder(folder: str = "msgfolderroot", impersonate: str | None = None) -> bytes:
    """A GetFolder request: the cheapest read that proves a signed-in session (and, with
    ``impersonate``, the right to act as that mailbox)."""
    return _envelope(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        f'<m:FolderIds><t:DistinguishedFolderId Id="{escape(folder)}"/></m:FolderIds></m:GetFolder>',
        impersonate,
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """What an EWS response said: ``code`` is ``NoError`` on success, else the ResponseCode."""

    code: str
    message: str
    fault: bool  # a request-level SOAP fault (HTTP 500), as opposed to a per-operation error
    backoff_ms: int | None = None  # ErrorServerBusy's BackOffMilliseconds: wait this long before the next call
    inner_code: str | None = None  # MessageXml's InnerErrorResponseCode (ErrorInternalServerError wraps one)

    @property
    def ok(self) -> bool:
        return self.code == "NoError"

    @property
    def throttled(self) -> bool:
        """Exchange asks the account to slow down, in any of the ways exchangelib backs off on."""
        return self.code in THROTTLED_CODES or (self.code == WRAPPER_CODE and self.inner_code in THROTTLED_CODES)

    def backoff_seconds(self) -> float:
        """How long the account must wait: Exchange's BackOffMilliseconds, else DEFAULT_BACKOFF_SECONDS
        (none for a connection count error, whose own text suggests 0 ms)."""
        if self.backoff_ms is not None:
            return self.backoff_ms / 1000
        return 0.0 if self.code == "ErrorExceededConnectionCount" else DEFAULT_BACKOFF_SECONDS


def read(response: HttpResponse) -> Answer:
    """Parse a 200 or 500 EWS answer; ProbeFailure(bad_response) when it is not one."""
    root = xml_document(response, f"{{{SOAP_NS}}}Envelope", "a SOAP envelope")
    fault = root.find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
    if fault is not None:
        code = fault.findtext(f"detail/{{{ERRORS_NS}}}ResponseCode") or safe_xml.local_name(
            fault.findtext("faultcode") or ""
        )
        values = _message_values(fault.find(f"detail/{{{TYPES_NS}}}MessageXml"))
        return Answer(
            code or "UnknownFault", (fault.findtext("faultstring") or "").strip(), True, *_backoff_and_inner(values)
        )
    message = root.find(f".//{{{MESSAGES_NS}}}ResponseMessages/*")
    if message is None:
        raise ProbeFailure(Reason.BAD_RESPONSE, "a SOAP envelope without a fault or response message")
    # Success is NoError in ResponseCode, never its absence. The schema lets the element out
    # (MS-OXWSCDATA 2.2.4.65: minOccurs="0"), but every documented answer carries it, and exchangelib
    # fails any message without one, ResponseClass="Success" included ("Empty ResponseCode in
    # ResponseMessage", services/common.py ``_get_exception``).
    code = (message.findtext(f"{{{MESSAGES_NS}}}ResponseCode") or "").strip()
    if not code:
        raise ProbeFailure(
            Reason.BAD_RESPONSE, f"<{safe_xml.local_name(message.tag)}> without the ResponseCode the schema requires"
        )
    values = _message_values(message.find(f"{{{MESSAGES_NS}}}MessageXml"))
    text = (message.findtext(f"{{{MESSAGES_NS}}}MessageText") or "").strip()
    return Answer(code, text, False, *_backoff_and_inner(values))


def _message_values(message_xml: ET.Element | None) -> dict[str, str]:
    # MessageXml is in the types namespace inside a fault and in the messages one in a response message;
    # its Value elements are always types.
    if message_xml is None:
        return {}
    return {
        str(value.get("Name")): (value.text or "").strip()
        for value in message_xml.iter(f"{{{TYPES_NS}}}Value")
        if value.get("Name")
    }


def _backoff_and_inner(values: dict[str, str]) -> tuple[int | None, str | None]:
    backoff = values.get("BackOffMilliseconds", "")
    return (int(backoff) if backoff.isdigit() else None), (values.get("InnerErrorResponseCode") or None)


def diagnostics(response: HttpResponse) -> str:
    """Exchange's own explanation of a 401 (``x-ms-diagnostics``), when it gives one."""
    value = response.header("x-ms-diagnostics")
    return f" ({value[:200]})" if value else ""


# --- push notifications -----------------------------------------------------------------------------------

EVENT_KINDS = {  # the EWS event element -> the kind label of bems_push_notifications_total
    "StatusEvent": "status",
    "CreatedEvent": "created",
    "NewMailEvent": "new_mail",
    "ModifiedEvent": "changed",
}


def _envelope(body: str, impersonate: str | None) -> bytes:
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
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def subscribe_push(url: str, status_frequency: int, impersonate: str) -> bytes:
    """A push subscription for new and created items in the inbox (element order per the schema)."""
    return _envelope(
        "<m:Subscribe><m:PushSubscriptionRequest>"
        '<t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds>'
        "<t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType></t:EventTypes>"
        f"<t:StatusFrequency>{status_frequency}</t:StatusFrequency><t:URL>{escape(url)}</t:URL>"
        "</m:PushSubscriptionRequest></m:Subscribe>",
        impersonate,
    )


def create_probe_item(subject: str, impersonate: str) -> bytes:
    return _envelope(
        '<m:CreateItem MessageDisposition="SaveOnly"><m:SavedItemFolderId>'
        '<t:DistinguishedFolderId Id="inbox"/></m:SavedItemFolderId><m:Items><t:Message>'
        f'<t:Subject>{escape(subject)}</t:Subject><t:Body BodyType="Text">Written by bems-exchange-exporter to '
        "measure notification delivery; deleted once its notification arrives.</t:Body>"
        "</t:Message></m:Items></m:CreateItem>",
        impersonate,
    )


def delete_item(item_id: str, impersonate: str) -> bytes:
    return _envelope(
        f'<m:DeleteItem DeleteType="HardDelete"><m:ItemIds><t:ItemId Id={quoteattr(item_id)}/>'
        "</m:ItemIds></m:DeleteItem>",
        impersonate,
    )


def first_message(response: HttpResponse) -> ET.Element:
    """The first response message of a successful EWS answer (the caller checked ``read`` first)."""
    root = xml_document(response, f"{{{SOAP_NS}}}Envelope", "a SOAP envelope")
    message = root.find(f".//{{{MESSAGES_NS}}}ResponseMessages/*")
    if message is None:
        raise ProbeFailure(Reason.BAD_RESPONSE, "a SOAP envelope without a response message")
    return message


def subscription_id(response: HttpResponse) -> str:
    subscription = (first_message(response).findtext(f"{{{MESSAGES_NS}}}SubscriptionId") or "").strip()
    if not subscription:
        raise ProbeFailure(Reason.BAD_RESPONSE, "SubscribeResponse without a SubscriptionId")
    return subscription


def subscription_watermark(response: HttpResponse) -> str | None:
    """The Watermark a SubscribeResponse starts the subscription at: the first notification's
    PreviousWatermark (None when the answer has none; the schema lets it out)."""
    return (first_message(response).findtext(f"{{{MESSAGES_NS}}}Watermark") or "").strip() or None


def created_item_id(response: HttpResponse) -> str:
    item = first_message(response).find(f".//{{{TYPES_NS}}}ItemId")
    if item is None or not item.get("Id"):
        raise ProbeFailure(Reason.BAD_RESPONSE, "CreateItemResponse without an ItemId")
    return str(item.get("Id"))


@dataclass(frozen=True, slots=True)
class Notification:
    """One ``Notification`` of a ``SendNotification`` callback: its subscription and its events."""

    subscription_id: str
    events: tuple[tuple[str, str | None], ...]  # (kind, ItemId or None)
    watermark: str | None  # the last event's
    previous_watermark: str | None  # the last one Exchange delivered before this notification


def read_notifications(body: bytes) -> list[Notification]:
    """Parse Exchange's SendNotification callback; UnsafeXML or ValueError when it is not one."""
    root = safe_xml.parse(body)
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise ValueError("not a SOAP envelope")
    found = []
    for notification in root.iter(f"{{{MESSAGES_NS}}}Notification"):
        subscription = (notification.findtext(f"{{{TYPES_NS}}}SubscriptionId") or "").strip()
        if not subscription:
            raise ValueError("a notification without a SubscriptionId")
        events, watermark = [], None
        previous = (notification.findtext(f"{{{TYPES_NS}}}PreviousWatermark") or "").strip() or None
        for event in notification:
            kind = EVENT_KINDS.get(safe_xml.local_name(event.tag))
            if kind is None:
                continue  # SubscriptionId, PreviousWatermark, MoreEvents, and event types not subscribed to
            item = event.find(f"{{{TYPES_NS}}}ItemId")
            events.append((kind, item.get("Id") if item is not None else None))
            watermark = (event.findtext(f"{{{TYPES_NS}}}Watermark") or "").strip() or watermark
        found.append(Notification(subscription, tuple(events), watermark, previous))
    if not found:
        raise ValueError("a SendNotification without notifications")
    return found


def notification_result(keep: bool) -> bytes:
    """Our answer to a callback: ``OK`` keeps the subscription, ``Unsubscribe`` is the only way to end one."""
    status = "OK" if keep else "Unsubscribe"
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        f'<s:Envelope xmlns:s="{SOAP_NS}" xmlns:m="{MESSAGES_NS}"><s:Body><m:SendNotificationResult>'
        f"<m:SubscriptionStatus>{status}</m:SubscriptionStatus></m:SendNotificationResult></s:Body></s:Envelope>"
    ).encode()
