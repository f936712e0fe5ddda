"""EWS push notifications (facts file section 5): the server side of ``Subscribe``/``PushSubscriptionRequest``.

Each subscription is one task that POSTs ``SendNotification`` to the client's URL (5.2): the item
events of its mailbox as they happen, and a ``StatusEvent`` whenever StatusFrequency minutes pass
without a notification. The client's ``SendNotificationResult`` (5.3) says ``OK`` or ``Unsubscribe``,
the only way to end a push subscription. Anything else is a failed delivery, retried 30 s after the
first attempt and then at doubling offsets (60, 120, ... s) while they fall within the StatusFrequency
window; when the next would not, the subscription expires (5.4). Minutes run at ``Timescale``.

Watermarks count a mailbox's item events, so a resubscribing client may hand one back; events
missed in between are not replayed here. Whether a real server pings at once on subscribe is not
documented (5.4), so the first StatusEvent comes after one StatusFrequency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, NamedTuple
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

from .mailstore import MailItem, MailStore
from .outbound import BackgroundTasks, CallbackClient, CallbackError, PushFault, PushFaultKind, Timescale
from .soap import MESSAGES_NS, SOAP_NS, TYPES_NS

log = logging.getLogger(__name__)

# What a client may subscribe to (5.1); StatusEvent is the server's own and cannot be asked for.
SUBSCRIBABLE_EVENT_TYPES = frozenset(
    {
        "CopiedEvent",
        "CreatedEvent",
        "DeletedEvent",
        "ModifiedEvent",
        "MovedEvent",
        "NewMailEvent",
        "FreeBusyChangedEvent",
    }
)
MIN_STATUS_FREQUENCY, MAX_STATUS_FREQUENCY, DEFAULT_STATUS_FREQUENCY = 1, 1440, 30
# The first retry's offset from the failed attempt; each later one doubles it (5.4).
_FIRST_RETRY_SECONDS = 30.0
# How long the server waits for a SendNotificationResult [UNVERIFIED: not documented]. Not scaled:
# it measures the listener, whose speed does not change with the simulated clock.
_RESULT_TIMEOUT_SECONDS = 10.0
_WATERMARK_VERSION = b"\x01\x00\x00\x00"
# The events an item created in a folder raises; NewMailEvent only where new mail lands.
_ITEM_CREATED_EVENTS = ("CreatedEvent", "NewMailEvent")
_NEW_MAIL_FOLDER = "inbox"


class InvalidWatermarkError(ValueError):
    pass


def encode_watermark(mailbox: str, sequence: int) -> str:
    """A watermark as Exchange's look (``AQAAA...``): a version, the mailbox and the event number."""
    return base64.b64encode(_WATERMARK_VERSION + _mailbox_digest(mailbox) + sequence.to_bytes(8, "little")).decode()


def decode_watermark(watermark: str, mailbox: str, newest: int) -> int:
    """The event number in a watermark issued for ``mailbox``; InvalidWatermarkError otherwise."""
    try:
        raw = base64.b64decode(watermark.strip(), validate=True)
    except ValueError:
        raw = b""
    prefix = _WATERMARK_VERSION + _mailbox_digest(mailbox)
    sequence = int.from_bytes(raw[len(prefix) :], "little") if raw.startswith(prefix) and len(raw) == 28 else -1
    if not 0 <= sequence <= newest:
        raise InvalidWatermarkError(watermark)
    return sequence


def _mailbox_digest(mailbox: str) -> bytes:
    return hashlib.sha256(mailbox.casefold().encode()).digest()[:16]


@dataclass
class PushSubscription:
    """One push subscription as the server keeps it; the counters are what a test asserts on."""

    id: str
    endpoint: str
    mailbox: str
    folders: frozenset[str]  # distinguished folder names; empty when all_folders
    all_folders: bool
    event_types: frozenset[str]
    url: str
    status_frequency: int  # minutes
    created: float  # the loop's clock (time.monotonic() but in a test that moves the loop's clock)
    alive: bool = True
    ended: str | None = None  # unsubscribed, expired, dropped or stopped
    delivered: int = 0  # notifications the client answered with OK or Unsubscribe
    failures: int = 0  # attempts that got no usable answer
    last_result: str | None = None
    watermark: str = ""  # the newest watermark the client acknowledged (PreviousWatermark)

    def watches(self, item: MailItem) -> bool:
        return (
            self.alive
            and item.mailbox.casefold() == self.mailbox.casefold()
            and (self.all_folders or item.folder in self.folders)
        )

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "mailbox": self.mailbox,
            "folders": "all" if self.all_folders else sorted(self.folders),
            "event_types": sorted(self.event_types),
            "url": self.url,
            "status_frequency": self.status_frequency,
            "created": self.created,
            "alive": self.alive,
            "ended": self.ended,
            "delivered": self.delivered,
            "failures": self.failures,
            "last_result": self.last_result,
        }


class PushDelivery(NamedTuple):
    """One POST of a SendNotification (or one that the ``callback_blocked`` fault kept from leaving)."""

    subscription_id: str
    events: tuple[str, ...]  # ("StatusEvent",) or item events such as ("CreatedEvent", "NewMailEvent")
    item_ids: tuple[str, ...]
    attempt: int  # 0 for the first try, then the retry's number
    result: str  # OK, Unsubscribe, or why the delivery failed
    time: float  # the loop's clock, the one deliveries are timed by, when the answer (or failure) came
    sent: float = 0.0  # the loop's clock when the attempt started: retries are due from the first one's

    def state(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class _ItemEvent:
    name: str
    item: MailItem
    due: float  # loop time from which it may be sent: later under the ``delayed`` fault


@dataclass
class _Run:
    """A live subscription's task and its queue of events not yet sent."""

    subscription: PushSubscription
    pending: list[_ItemEvent] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class EwsPushEngine:
    """Every push subscription of both EWS endpoints, and the task that serves each."""

    def __init__(
        self,
        store: MailStore,
        callbacks: CallbackClient,
        timescale: Timescale,
        subscriptions: dict[str, PushSubscription],
        deliveries: list[PushDelivery],
    ) -> None:
        self.subscriptions = subscriptions
        self.deliveries = deliveries
        self.fault = PushFault()
        self._store = store
        self._callbacks = callbacks
        self._timescale = timescale
        self._runs: dict[str, _Run] = {}
        self._tasks = BackgroundTasks("EWS push")
        store.add_observer(self._item_created)

    def state(self) -> dict[str, Any]:
        return {
            "fault": self.fault.state(),
            "subscriptions": {sid: subscription.state() for sid, subscription in self.subscriptions.items()},
        }

    def subscribe(
        self,
        endpoint: str,
        mailbox: str,
        folders: frozenset[str],
        event_types: frozenset[str],
        url: str,
        status_frequency: int,
        watermark: str | None = None,
    ) -> tuple[PushSubscription, str]:
        """Start a subscription; returns it and the watermark to answer with.

        ``folders`` empty means every folder. InvalidWatermarkError for a watermark not issued here.
        """
        newest = self._store.sequence(mailbox)
        start = decode_watermark(watermark, mailbox, newest) if watermark else newest
        subscription = PushSubscription(
            # Real ids on Exchange 2013 and later are base64 blobs, not GUIDs (5.1).
            id=base64.b64encode(secrets.token_bytes(30)).decode(),
            endpoint=endpoint,
            mailbox=mailbox,
            folders=folders,
            all_folders=not folders,
            event_types=event_types,
            url=url,
            status_frequency=status_frequency,
            created=asyncio.get_running_loop().time(),
            watermark=encode_watermark(mailbox, start),
        )
        self.subscriptions[subscription.id] = subscription
        run = _Run(subscription)
        self._runs[subscription.id] = run
        run.task = self._tasks.spawn(self._serve(run), subscription.id)
        log.info("EWS push subscription %s for %s to %s", subscription.id, mailbox, url)
        return subscription, subscription.watermark

    def set_fault(self, kind: PushFaultKind | str, delay_seconds: float | None = None) -> None:
        fault = PushFault.parse(kind, delay_seconds)
        if fault.kind is PushFaultKind.DROP_SUBSCRIPTIONS:
            for subscription_id in list(self._runs):
                self._end(subscription_id, "dropped")
            log.info("EWS push: every subscription silently dropped")
            fault = PushFault()  # a one-off: subscriptions made after it are kept
        self.fault = fault

    async def close(self) -> None:
        for subscription_id in list(self._runs):
            self._end(subscription_id, "stopped")
        await self._tasks.cancel_all()

    def _end(self, subscription_id: str, reason: str) -> None:
        run = self._runs.pop(subscription_id)
        run.subscription.alive, run.subscription.ended = False, reason
        if run.task is not None and run.task is not asyncio.current_task():
            run.task.cancel()

    def _item_created(self, item: MailItem) -> None:
        due = asyncio.get_running_loop().time()
        if self.fault.kind is PushFaultKind.DELAYED:
            due += self.fault.delay_seconds
        names = [name for name in _ITEM_CREATED_EVENTS if name != "NewMailEvent" or item.folder == _NEW_MAIL_FOLDER]
        for run in self._runs.values():
            if run.subscription.watches(item):
                wanted = [_ItemEvent(name, item, due) for name in names if name in run.subscription.event_types]
                run.pending.extend(wanted)
                if wanted:
                    run.wake.set()

    async def _serve(self, run: _Run) -> None:
        subscription = run.subscription
        loop = asyncio.get_running_loop()
        window = self._timescale.seconds(subscription.status_frequency * 60)
        status_due = loop.time() + window
        while True:
            events = await _next_events(run, status_due)
            if not await self._deliver(subscription, events, window):
                return
            status_due = loop.time() + window

    async def _deliver(self, subscription: PushSubscription, events: list[_ItemEvent], window: float) -> bool:
        """Send one notification until the client answers or the window closes; False once the subscription ended."""
        loop = asyncio.get_running_loop()
        newest = encode_watermark(subscription.mailbox, events[-1].item.sequence) if events else subscription.watermark
        body = _send_notification(subscription, events)
        names = tuple(event.name for event in events) or ("StatusEvent",)
        item_ids = tuple(dict.fromkeys(event.item.id for event in events))
        first_attempt = loop.time()
        attempt = 0
        while True:
            sent = loop.time()
            result = await self._post(subscription.url, body)
            self.deliveries.append(PushDelivery(subscription.id, names, item_ids, attempt, result, loop.time(), sent))
            subscription.last_result = result
            if result in ("OK", "Unsubscribe"):
                subscription.delivered += 1
                subscription.watermark = newest
                if result == "Unsubscribe":
                    log.info("EWS push subscription %s: the client unsubscribed", subscription.id)
                    self._end(subscription.id, "unsubscribed")
                    return False
                return True
            subscription.failures += 1
            attempt += 1
            retry_offset = self._timescale.seconds(_FIRST_RETRY_SECONDS * 2 ** (attempt - 1))
            if retry_offset > window:
                log.info("EWS push subscription %s expired: %s", subscription.id, result)
                self._end(subscription.id, "expired")
                return False
            await asyncio.sleep(max(0.0, first_attempt + retry_offset - loop.time()))

    async def _post(self, url: str, body: bytes) -> str:
        if self.fault.kind is PushFaultKind.CALLBACK_BLOCKED:
            return "unreachable: callback_blocked fault"
        try:
            response = await self._callbacks.post(url, body, "text/xml; charset=utf-8", _RESULT_TIMEOUT_SECONDS)
        except CallbackError as error:
            return f"unreachable: {error}"
        if response.status != 200:
            return f"HTTP {response.status}"
        return _subscription_status(response.body) or "no SendNotificationResult in the answer"


async def _next_events(run: _Run, status_due: float) -> list[_ItemEvent]:
    """The item events that are due, as soon as there are some; none once ``status_due`` comes first."""
    loop = asyncio.get_running_loop()
    while True:
        now = loop.time()
        due = [event for event in run.pending if event.due <= now]
        if due:
            run.pending = [event for event in run.pending if event.due > now]
            return due
        if now >= status_due:
            return []
        run.wake.clear()
        wake_at = min([status_due, *(event.due for event in run.pending)])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.wake.wait(), wake_at - now)


def _subscription_status(body: str) -> str | None:
    """``SubscriptionStatus`` of a SendNotificationResult (messages namespace, 5.3), if the body has one."""
    try:
        envelope = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    status = envelope.findtext(
        f"{{{SOAP_NS}}}Body/{{{MESSAGES_NS}}}SendNotificationResult/{{{MESSAGES_NS}}}SubscriptionStatus"
    )
    status = (status or "").strip()
    return status if status in ("OK", "Unsubscribe") else None


def _send_notification(subscription: PushSubscription, events: list[_ItemEvent]) -> bytes:
    """The SOAP request Exchange POSTs to the client (5.2); a StatusEvent when there are no item events."""
    if events:
        event_xml = "".join(_item_event(subscription, event) for event in events)
    else:
        event_xml = f"<t:StatusEvent><t:Watermark>{subscription.watermark}</t:Watermark></t:StatusEvent>"
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Header>'
        f'<t:RequestServerVersion xmlns:t="{TYPES_NS}" xmlns:m="{MESSAGES_NS}" Version="Exchange2010_SP2"/>'
        "</soap:Header><soap:Body>"
        f'<m:SendNotification xmlns:t="{TYPES_NS}" xmlns:m="{MESSAGES_NS}"><m:ResponseMessages>'
        '<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        f"<m:Notification><t:SubscriptionId>{subscription.id}</t:SubscriptionId>"
        f"<t:PreviousWatermark>{subscription.watermark}</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>"
        f"{event_xml}</m:Notification></m:SendNotificationResponseMessage>"
        "</m:ResponseMessages></m:SendNotification></soap:Body></soap:Envelope>"
    ).encode()


def _item_event(subscription: PushSubscription, event: _ItemEvent) -> str:
    item = event.item
    return (
        f"<t:{event.name}><t:Watermark>{encode_watermark(subscription.mailbox, item.sequence)}</t:Watermark>"
        f"<t:TimeStamp>{item.created.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}</t:TimeStamp>"
        f"<t:ItemId Id={quoteattr(item.id)} ChangeKey={quoteattr(item.change_key)}/>"
        f'<t:ParentFolderId Id={quoteattr(folder_id(item.mailbox, item.folder))} ChangeKey="AQAAAA=="/>'
        f"</t:{event.name}>"
    )


def folder_id(mailbox: str, folder: str) -> str:
    """A distinguished folder's id in a mailbox, the same wherever EWS names it."""
    return base64.b64encode(f"{mailbox or 'self'}/{folder}".encode()).decode()
