"""Graph change notifications for Outlook messages (facts file 8.3): subscriptions, their handshake and deliveries.

Creating a subscription validates ``notificationUrl`` and ``lifecycleNotificationUrl`` synchronously:
each must answer ``POST ?validationToken=...`` within 10 s with 200, ``text/plain`` and the decoded
token, or the create fails with 400. A message created in a watched folder is then POSTed to
``notificationUrl`` as a change notification, which the listener must accept with a 2xx within 3 s.
Lifecycle notifications go to ``lifecycleNotificationUrl`` on request (``send_lifecycle``). An
expired or silently dropped subscription just ends, without any notification: Graph sends
``subscriptionRemoved`` only for a removal it initiates, not on expiry ("Reduce missing subscriptions
and change notifications", concepts/change-notifications-lifecycle-events.md); a renewal of it then
answers 404.

Lifetimes are Graph's for Outlook messages without resource data: at most 10,080 minutes, and at
least 45 (shorter requests are raised to it). They run on the simulator's ``Timescale``. A failed
change notification is recorded, not retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from .mailstore import MailItem, MailStore
from .outbound import BackgroundTasks, CallbackClient, CallbackError, PushFault, PushFaultKind, Timescale

log = logging.getLogger(__name__)

MAX_LIFETIME = timedelta(minutes=10080)
MIN_LIFETIME = timedelta(minutes=45)
MAX_CLIENT_STATE_LENGTH = 128
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
_CHANGE_TYPES = {"created", "updated", "deleted"}
# Network timeouts, in real seconds whatever the timescale: they measure the listener.
_VALIDATION_TIMEOUT_SECONDS = 10.0
_NOTIFICATION_TIMEOUT_SECONDS = 3.0
_METADATA_URL = "https://graph.microsoft.com/v1.0/$metadata"
_NO_VALIDATION_ANSWER = (
    "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
)
# [UNVERIFIED] Graph's words for an answer that is a 200 but not the token.
_WRONG_VALIDATION_ANSWER = (
    "Subscription validation request failed. Response must exactly match validationToken query parameter."
)
# users/{id}/messages or users/{id}/mailFolders('{folder}')/messages (or .../mailFolders/{folder}/messages).
_MESSAGES_RESOURCE = re.compile(
    r"/?users/(?P<user>[^/]+)/(?:mailFolders(?:\('(?P<quoted>[^']+)'\)|/(?P<plain>[^/]+))/)?messages",
    re.IGNORECASE,
)


class GraphRequestError(Exception):
    """A request Graph refuses: the HTTP status and Graph's error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class WatchedResource(NamedTuple):
    mailbox: str
    folder: str | None  # a well-known folder name in lower case; None watches every folder


def parse_resource(resource: Any) -> WatchedResource:
    """The mailbox and folder a subscription's ``resource`` watches; GraphRequestError if unsupported."""
    match = _MESSAGES_RESOURCE.fullmatch(resource.strip()) if isinstance(resource, str) else None
    if match is None:
        # [UNVERIFIED wording] only Outlook message resources are simulated.
        raise GraphRequestError(400, "InvalidRequest", f"Resource '{resource}' is not supported.")
    folder = match["quoted"] or match["plain"]
    return WatchedResource(match["user"], folder.lower() if folder else None)


def graph_time(moment: datetime) -> str:
    """Graph's form of a time: UTC with seven fractional digits, like ``2016-11-20T18:23:45.9356913Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def user_object_id(mailbox: str) -> str:
    """A user's directory object id, stable per address."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{mailbox.casefold()}"))


@dataclass
class GraphSubscription:
    id: str
    app_id: str
    resource: str
    watched: WatchedResource
    change_types: frozenset[str]
    notification_url: str
    lifecycle_notification_url: str | None
    client_state: str | None
    expiration: datetime
    alive: bool = True
    ended: str | None = None  # deleted, expired, removed (a subscriptionRemoved event) or dropped
    notifications: int = 0  # change notifications the listener accepted
    failures: int = 0  # change and lifecycle notifications it did not

    def watches(self, item: MailItem) -> bool:
        mailbox, folder = self.watched
        return (
            self.alive
            and "created" in self.change_types
            and item.mailbox.casefold() == mailbox.casefold()
            and folder in (None, item.folder)
        )

    def resource_json(self) -> dict[str, Any]:
        """The subscription as Graph returns it (8.3)."""
        return {
            "@odata.context": f"{_METADATA_URL}#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app_id,
            "changeType": ",".join(sorted(self.change_types)),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": graph_time(self.expiration),
            "creatorId": self.app_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "notificationContentType": "application/json",
        }

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "resource": self.resource,
            "change_types": sorted(self.change_types),
            "notification_url": self.notification_url,
            "lifecycle_notification_url": self.lifecycle_notification_url,
            "expiration": graph_time(self.expiration),
            "alive": self.alive,
            "ended": self.ended,
            "notifications": self.notifications,
            "failures": self.failures,
        }


class GraphDelivery(NamedTuple):
    """One POST to a listener, and how it answered."""

    subscription_id: str
    kind: str  # validation, change or lifecycle
    url: str
    payload: str  # the JSON sent, or the validation token
    status: int | None  # None when no answer came
    answer: str  # the response body, or why there was none
    accepted: bool
    time: float  # the loop's clock, the one deliveries are timed by, when the answer (or failure) came

    def state(self) -> dict[str, Any]:
        return self._asdict()


class GraphWebhooks:
    def __init__(
        self,
        store: MailStore,
        callbacks: CallbackClient,
        timescale: Timescale,
        tenant_id: str,
        subscriptions: dict[str, GraphSubscription],
        deliveries: list[GraphDelivery],
    ) -> None:
        self.subscriptions = subscriptions
        self.deliveries = deliveries
        self.fault = PushFault()
        self._callbacks = callbacks
        self._timescale = timescale
        self._tenant_id = tenant_id
        self._expiry_timers: dict[str, asyncio.Task[None]] = {}
        self._tasks = BackgroundTasks("Graph webhooks")
        store.add_observer(self._item_created)

    def state(self) -> dict[str, Any]:
        return {
            "fault": self.fault.state(),
            "subscriptions": {sid: subscription.state() for sid, subscription in self.subscriptions.items()},
        }

    async def create(self, app_id: str, body: dict[str, Any]) -> GraphSubscription:
        """Validate a ``POST /subscriptions`` body, run the handshake, and start the subscription."""
        change_types = frozenset(part.strip() for part in str(body.get("changeType", "")).split(",") if part.strip())
        if not change_types or not change_types <= _CHANGE_TYPES:
            raise GraphRequestError(400, "InvalidRequest", f"Invalid changeType '{body.get('changeType')}'.")
        notification_url = _https_url(body.get("notificationUrl"), "notificationUrl", required=True)
        lifecycle_url = _https_url(body.get("lifecycleNotificationUrl"), "lifecycleNotificationUrl", required=False)
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE_LENGTH
        ):
            raise GraphRequestError(
                400, "InvalidRequest", f"clientState must be a string of at most {MAX_CLIENT_STATE_LENGTH} characters."
            )
        subscription = GraphSubscription(
            id=str(uuid.uuid4()),
            app_id=app_id,
            resource=str(body.get("resource", "")),
            watched=parse_resource(body.get("resource")),
            change_types=change_types,
            notification_url=notification_url,
            lifecycle_notification_url=lifecycle_url,
            client_state=client_state,
            expiration=_granted_expiration(body.get("expirationDateTime")),
        )
        for url in filter(None, (notification_url, lifecycle_url)):
            await self._validate(subscription.id, url)
        self.subscriptions[subscription.id] = subscription
        self._schedule_expiry(subscription)
        log.info("Graph subscription %s on %s to %s", subscription.id, subscription.resource, notification_url)
        return subscription

    def find(self, subscription_id: str) -> GraphSubscription:
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None or not subscription.alive:
            # [UNVERIFIED wording]
            raise GraphRequestError(404, "ResourceNotFound", "The object was not found.")
        return subscription

    def renew(self, subscription_id: str, body: dict[str, Any]) -> GraphSubscription:
        subscription = self.find(subscription_id)
        subscription.expiration = _granted_expiration(body.get("expirationDateTime"))
        self._schedule_expiry(subscription)
        return subscription

    def delete(self, subscription_id: str) -> None:
        self._end(self.find(subscription_id), "deleted")

    def set_fault(self, kind: PushFaultKind | str, delay_seconds: float | None = None) -> None:
        fault = PushFault.parse(kind, delay_seconds)
        if fault.kind is PushFaultKind.DROP_SUBSCRIPTIONS:
            for subscription in self.subscriptions.values():
                if subscription.alive:
                    self._end(subscription, "dropped")
            log.info("Graph: every subscription silently dropped")
            fault = PushFault()  # a one-off: subscriptions made after it are kept
        self.fault = fault

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """Send a lifecycle notification now; ``subscriptionRemoved`` also ends the subscription.

        GraphRequestError for an unknown subscription, ValueError for an unknown event or a
        subscription without a ``lifecycleNotificationUrl``.
        """
        subscription = self.find(subscription_id)
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"unknown lifecycle event {event!r}; valid: {', '.join(LIFECYCLE_EVENTS)}")
        if subscription.lifecycle_notification_url is None:
            raise ValueError(f"subscription {subscription_id} has no lifecycleNotificationUrl")
        self._spawn_lifecycle(subscription, event)
        if event == "subscriptionRemoved":
            self._end(subscription, "removed")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        self._expiry_timers.clear()

    def _end(self, subscription: GraphSubscription, reason: str) -> None:
        subscription.alive, subscription.ended = False, reason
        timer = self._expiry_timers.pop(subscription.id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def _schedule_expiry(self, subscription: GraphSubscription) -> None:
        previous = self._expiry_timers.pop(subscription.id, None)
        if previous is not None:
            previous.cancel()
        self._expiry_timers[subscription.id] = self._tasks.spawn(
            self._expire(subscription), f"expiry {subscription.id}"
        )

    async def _expire(self, subscription: GraphSubscription) -> None:
        lifetime = (subscription.expiration - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(self._timescale.seconds(max(0.0, lifetime)))
        log.info("Graph subscription %s expired", subscription.id)
        self._end(subscription, "expired")  # silently: no lifecycle notification on expiry

    def _spawn_lifecycle(self, subscription: GraphSubscription, event: str) -> None:
        self._tasks.spawn(self._deliver_lifecycle(subscription, event), f"{event} {subscription.id}")

    async def _deliver_lifecycle(self, subscription: GraphSubscription, event: str) -> None:
        assert subscription.lifecycle_notification_url is not None
        payload = {
            "value": [
                {
                    "subscriptionId": subscription.id,
                    "subscriptionExpirationDateTime": graph_time(subscription.expiration),
                    "tenantId": self._tenant_id,
                    "clientState": subscription.client_state,
                    "lifecycleEvent": event,
                }
            ]
        }
        delivery = await self._post_json(subscription, "lifecycle", subscription.lifecycle_notification_url, payload)
        if not delivery.accepted:
            subscription.failures += 1

    def _item_created(self, item: MailItem) -> None:
        for subscription in self.subscriptions.values():
            if subscription.watches(item):
                self._tasks.spawn(self._notify(subscription, item), f"change {subscription.id}")

    async def _notify(self, subscription: GraphSubscription, item: MailItem) -> None:
        if self.fault.kind is PushFaultKind.DELAYED:
            await asyncio.sleep(self.fault.delay_seconds)
        user = f"{user_object_id(item.mailbox)}@{self._tenant_id}"
        payload = {
            "value": [
                {
                    "id": uuid.uuid4().hex,
                    "subscriptionId": subscription.id,
                    "subscriptionExpirationDateTime": graph_time(subscription.expiration),
                    "clientState": subscription.client_state,
                    "changeType": "created",
                    "resource": f"users/{user}/messages/{item.id}",
                    "tenantId": self._tenant_id,
                    "resourceData": {
                        "@odata.type": "#Microsoft.Graph.Message",
                        "@odata.id": f"Users/{user}/Messages/{item.id}",
                        "@odata.etag": f'W/"{item.change_key}"',
                        "id": item.id,
                    },
                }
            ]
        }
        delivery = await self._post_json(subscription, "change", subscription.notification_url, payload)
        if delivery.accepted:
            subscription.notifications += 1
        else:
            subscription.failures += 1

    async def _post_json(
        self, subscription: GraphSubscription, kind: str, url: str, payload: dict[str, Any]
    ) -> GraphDelivery:
        text = json.dumps(payload)
        status, answer = await self._post(url, text.encode(), "application/json; charset=utf-8")
        delivery = GraphDelivery(
            subscription.id,
            kind,
            url,
            text,
            status,
            answer,
            status is not None and 200 <= status < 300,
            asyncio.get_running_loop().time(),
        )
        self.deliveries.append(delivery)
        return delivery

    async def _validate(self, subscription_id: str, url: str) -> None:
        # Real tokens are prose with spaces and colons, so an echo that is not URL-decoded fails.
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        separator = "&" if urlsplit(url).query else "?"
        validation_url = f"{url}{separator}validationToken={quote(token, safe='')}"
        status, answer, content_type = None, "", ""
        try:
            if self.fault.kind is PushFaultKind.CALLBACK_BLOCKED:
                raise CallbackError("callback_blocked fault")
            response = await self._callbacks.post(
                validation_url, b"", "text/plain; charset=utf-8", _VALIDATION_TIMEOUT_SECONDS
            )
            status, answer, content_type = response.status, response.body, response.content_type
        except CallbackError as error:
            answer = f"unreachable: {error}"
        accepted = status == 200 and content_type == "text/plain" and answer == token
        self.deliveries.append(
            GraphDelivery(
                subscription_id, "validation", url, token, status, answer, accepted, asyncio.get_running_loop().time()
            )
        )
        if not accepted:
            message = _WRONG_VALIDATION_ANSWER if status == 200 else _NO_VALIDATION_ANSWER
            raise GraphRequestError(400, "InvalidRequest", message)

    async def _post(self, url: str, body: bytes, content_type: str) -> tuple[int | None, str]:
        if self.fault.kind is PushFaultKind.CALLBACK_BLOCKED:
            return None, "unreachable: callback_blocked fault"
        try:
            response = await self._callbacks.post(url, body, content_type, _NOTIFICATION_TIMEOUT_SECONDS)
        except CallbackError as error:
            return None, f"unreachable: {error}"
        return response.status, response.body


def _https_url(value: Any, name: str, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme.lower() != "https" or not urlsplit(value).hostname:
        # [UNVERIFIED wording] both URLs must be HTTPS (8.3).
        raise GraphRequestError(400, "InvalidRequest", f"The {name} must be an https URL, not '{value}'.")
    return value


def _granted_expiration(value: Any) -> datetime:
    """The expiration Graph grants for a requested ``expirationDateTime``: raised to 45 min, capped at 10,080."""
    try:
        requested = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        requested = None
    if requested is None or requested.tzinfo is None:
        raise GraphRequestError(400, "InvalidRequest", f"expirationDateTime must be a time with a zone, not '{value}'.")
    now = datetime.now(UTC)
    if requested <= now:
        raise GraphRequestError(400, "InvalidRequest", "Subscription expiration must be in the future.")
    return min(max(requested, now + MIN_LIFETIME), now + MAX_LIFETIME)
