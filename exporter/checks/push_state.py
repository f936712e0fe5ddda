"""Push-notification state shared by the listener (which receives callbacks) and the ``push`` check
(which subscribes, writes probe items and judges delivery).

Counters, the delivery-delay histogram and whether a subscription is active are exported from this
state at scrape time: a subscription that Graph removes between two checks shows as inactive at once.
Callbacks that are rejected (wrong ``clientState``, unknown subscription, oversize, malformed; for EWS a
wrong or missing secret in the callback URL, or a ``PreviousWatermark`` that does not continue the chain) move
neither the notification counters nor the last-notification time; nor does a Graph ``missed`` lifecycle
event, which says notifications were dropped (it is counted as kind ``missed``).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..config import Config, Kind, Notifications, Target
from ..metrics import TARGET_LABELS, Histogram, MetricSpec
from ..protocol import ews_soap, safe_xml

log = logging.getLogger(__name__)
RECENT_ITEMS = 64
MAX_UNDELETED = 16  # probe items whose delete keeps failing; beyond this the oldest is left in the mailbox
MAX_CALLBACK_BYTES = 256 * 1024  # a SendNotification or a Graph batch is a few KiB
DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
NOTIFICATION_KINDS = ("status", "created", "new_mail", "changed", "lifecycle", "missed")
REJECTION_REASONS = ("client_state", "unknown_subscription", "oversize", "malformed", "url_secret", "watermark")

ACTIVE = MetricSpec(
    "bems_push_subscription_active",
    "1 while a subscription the server confirmed is held and not replaced, dropped or expired.",
    labels=("mailbox",),
)
LAST_NOTIFICATION = MetricSpec(
    "bems_push_last_notification_timestamp_seconds",
    "When the last accepted notification (keep-alive or event) arrived (Unix time).",
    labels=("mailbox",),
)
DELAY = MetricSpec(
    "bems_push_notification_delay_seconds",
    "From the end of the write probe's create request to the arrival of its notification.",
    "histogram",
)
NOTIFICATIONS = MetricSpec("bems_push_notifications_total", "Accepted notifications, by kind.", "counter", ("kind",))
REJECTED = MetricSpec(
    "bems_push_rejected_total", "Callbacks rejected by the listener, by reason.", "counter", ("reason",)
)


def callback_path(kind: str, target: str) -> str:
    return f"/push/{kind}/{target}"


def callback_url(
    notifications: Notifications, target: Target, lifecycle: bool = False, secret: str | None = None
) -> str:
    """The URL a subscription is given. An EWS one ends in the subscription's secret: Exchange's callbacks
    carry nothing else that a forger could not copy (no signature, no client state)."""
    kind = "graph" if target.kind == Kind.GRAPH else "ews"
    tail = "/lifecycle" if lifecycle else f"/{secret}" if secret else ""
    return notifications.public_url + callback_path(kind, target.name) + tail


@dataclass
class Subscription:
    id: str
    confirmed_at: float  # Unix time the server confirmed it
    client_state: str = ""  # Graph: the secret every notification must carry
    expires_at: float = 0.0  # Graph: when the server drops it unless renewed
    active: bool = True
    reauthorize: bool = False  # Graph asked for reauthorization
    url_secret: str = ""  # EWS: the secret in the path of the callback URL given to Subscribe
    # EWS: the last Watermark accepted (at first the one Subscribe answered, None if it gave none) and the
    # PreviousWatermark that came with it: each notification must continue the chain.
    watermark: str | None = None
    previous_watermark: str | None = None


@dataclass
class ProbeItem:
    """A write probe's item: when its create request ended, and whether its notification came."""

    item_id: str
    written_at: float  # PushTarget.monotonic()
    written_unix: float
    delivered: bool = False


@dataclass
class PushTarget:
    target: Target
    current: Subscription | None = None
    last_notification: float | None = None  # Unix time
    probe: ProbeItem | None = None
    to_delete: list[str] = field(default_factory=list)  # probe items done with, deleted by the next check
    delivered_at: float | None = None  # Unix time the last write probe's notification arrived
    # Unix time of the last delivery failure; None once delivery was seen after it (seen_since_failure).
    failed_at: float | None = None
    probe_now: bool = False  # Graph reported missed notifications: the next check writes a probe at once
    notifications: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    delays: Histogram = field(default_factory=lambda: Histogram(DELAY_BUCKETS))
    # Items notified lately, by arrival (monotonic()): a notification can beat the create call's answer.
    recent_items: dict[str, float] = field(default_factory=dict)
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)  # a fake clock in tests

    def accept(self, kind: str, item_id: str | None) -> None:
        self.notifications[kind] += 1
        self.last_notification = time.time()
        if item_id is None:
            return
        probe = self.probe
        if probe is not None and not probe.delivered and item_id == probe.item_id:
            self._delivered(probe, self.monotonic())
            return
        self.recent_items[item_id] = self.monotonic()
        while len(self.recent_items) > RECENT_ITEMS:
            del self.recent_items[next(iter(self.recent_items))]

    def register_probe(self, probe: ProbeItem) -> None:
        self.probe, self.probe_now = probe, False
        arrived = self.recent_items.pop(probe.item_id, None)
        if arrived is not None:
            self._delivered(probe, arrived)

    def _delivered(self, probe: ProbeItem, arrived: float) -> None:
        probe.delivered = True
        self.delivered_at = time.time()
        self.delays.observe(max(0.0, arrived - probe.written_at))
        self.done_with(probe.item_id)

    def done_with(self, item_id: str) -> None:
        """List a probe item for deletion by the next check; bounded, should its deletes keep failing."""
        self.to_delete.append(item_id)
        if len(self.to_delete) > MAX_UNDELETED:
            log.warning(
                "a probe item could not be deleted: left in the probe mailbox",
                extra={"fields": {"target": self.target.name, "item_id": self.to_delete.pop(0)}},
            )

    def replace(self, subscription: Subscription | None) -> None:
        """Hold ``subscription`` from now on. A write probe still awaited was written under the old one,
        whose notifications may never come: it is abandoned (its item deleted), and the next probe measures."""
        self.current = subscription
        self.last_notification = None
        if self.probe is not None and not self.probe.delivered:
            self.done_with(self.probe.item_id)
            self.probe = None

    def delivery_failed(self) -> None:
        """Record a delivery failure (a stall): the check fails until delivery is seen after it."""
        self.failed_at = time.time()
        if self.current is not None:
            self.current.active = False  # stalled: the check subscribes again

    def seen_since_failure(self, by_probe: bool) -> bool:
        """Whether delivery was seen since the last failure (True when there was none): a write probe's
        notification when ``by_probe``, else any notification. Once it was, the failure is over."""
        if self.failed_at is not None:
            seen = self.delivered_at if by_probe else self.last_notification
            if seen is None or seen <= self.failed_at:
                return False
            self.failed_at = None
        return True


def _chain(current: Subscription, notification: ews_soap.Notification) -> str:
    """How ``notification`` relates to ``current``'s watermark chain: ``next`` when its PreviousWatermark is
    the last Watermark accepted ("For push clients, the PreviousWatermark is compared to the local,
    client-side last known watermark. If the values are different, the client has missed an event
    notification", Microsoft's PreviousWatermark reference), ``repeat`` when it is the last notification
    accepted sent again (Exchange retries one whose answer it did not get), else ``broken``. Without a
    watermark yet (Subscribe answered none), the first notification starts the chain."""
    if current.watermark is None or notification.previous_watermark == current.watermark:
        return "next"
    last = notification.watermark or notification.previous_watermark
    if notification.previous_watermark == current.previous_watermark and last == current.watermark:
        return "repeat"
    return "broken"


class PushRegistry:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.targets: dict[str, PushTarget] = {}
        self._monotonic = monotonic  # a test's fake clock moves it

    def configure(self, config: Config) -> None:
        """Keep the state of unchanged push targets; forget removed or changed ones (their EWS
        subscriptions are then unknown, and answered ``Unsubscribe`` when they call)."""
        wanted = {t.name: t for t in config.targets if t.push is not None}
        self.targets = {
            name: self.targets[name] if name in self.targets and self.targets[name].target == target
            else PushTarget(target, monotonic=self._monotonic)
            for name, target in wanted.items()
        }  # fmt: skip

    def state_for(self, target: Target) -> PushTarget:
        """The target's state; a push check run outside the daemon (``probe``, tests) starts one."""
        state = self.targets.get(target.name)
        if state is None or state.target != target:
            state = self.targets[target.name] = PushTarget(target, monotonic=self._monotonic)
        return state

    # -- callbacks (the listener) ---------------------------------------------------------------------

    def ews_callback(self, target_name: str, secret: str | None, body: bytes) -> tuple[int, bytes]:
        """Status and body answering an EWS ``SendNotification`` posted with ``secret`` in its URL (None when
        the URL has none)."""
        state = self.targets.get(target_name)
        if state is None or state.target.kind != Kind.EWS:
            return 404, b""
        if len(body) > MAX_CALLBACK_BYTES:
            state.rejected["oversize"] += 1
            return 413, b""
        try:
            notifications = ews_soap.read_notifications(body)
        except (ValueError, safe_xml.UnsafeXML):
            state.rejected["malformed"] += 1
            return 400, b""
        keep, status = True, 200
        for notification in notifications:
            current = state.current
            if current is None or not current.active or notification.subscription_id != current.id:
                # Not ours (replaced, or from an earlier life): Unsubscribe is the only way to end it.
                state.rejected["unknown_subscription"] += 1
                keep = False
                continue
            if not current.url_secret or not hmac.compare_digest(current.url_secret.encode(), (secret or "").encode()):
                # The right subscription id but not the URL it was given: not Exchange. Nothing it says counts.
                state.rejected["url_secret"] += 1
                return 403, b""
            chain = _chain(current, notification)
            if chain == "broken":  # a notification missed, or a replayed or forged one: nothing it says counts
                state.rejected["watermark"] += 1
                status = 400
                continue
            if chain == "repeat":
                continue  # already counted; answered OK again so that Exchange moves on
            current.previous_watermark = notification.previous_watermark
            current.watermark = notification.watermark or current.watermark
            for kind, item_id in notification.events:
                state.accept(kind, item_id)
        return status, ews_soap.notification_result(keep) if status == 200 else b""

    def graph_callback(self, target_name: str, body: bytes, lifecycle: bool) -> int:
        """Status answering a Graph change or lifecycle notification batch."""
        state = self.targets.get(target_name)
        if state is None or state.target.kind != Kind.GRAPH:
            return 404
        if len(body) > MAX_CALLBACK_BYTES:
            state.rejected["oversize"] += 1
            return 413
        try:
            batch = json.loads(body)["value"]
            if not isinstance(batch, list):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested deeper than the stack
            state.rejected["malformed"] += 1
            return 400
        for item in batch:
            if not isinstance(item, dict):
                state.rejected["malformed"] += 1
                continue
            current = state.current
            if current is None or item.get("subscriptionId") != current.id:
                state.rejected["unknown_subscription"] += 1  # acknowledged and ignored
                continue
            if item.get("clientState") != current.client_state:
                state.rejected["client_state"] += 1
                continue
            if lifecycle:
                self._lifecycle(state, current, str(item.get("lifecycleEvent", "")))
                continue
            change = "created" if item.get("changeType") == "created" else "changed"
            resource = item.get("resourceData") if isinstance(item.get("resourceData"), dict) else {}
            state.accept(change, str(resource.get("id")) if resource.get("id") else None)
        return 202

    @staticmethod
    def _lifecycle(state: PushTarget, current: Subscription, event: str) -> None:
        if event == "missed":
            # Graph dropped change notifications (it names none: the client must resync): no sign of
            # delivery, so the last-notification time stays; the next check measures with a fresh probe.
            state.notifications["missed"] += 1
            state.probe_now = True
            return
        state.notifications["lifecycle"] += 1
        state.last_notification = time.time()
        if event == "subscriptionRemoved":
            current.active = False  # the next check subscribes again
        elif event == "reauthorizationRequired":
            current.reauthorize = True

    # -- metrics ----------------------------------------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        labels = [*TARGET_LABELS, "mailbox"]
        active = GaugeMetricFamily(ACTIVE.name, ACTIVE.help, labels=labels)
        last = GaugeMetricFamily(LAST_NOTIFICATION.name, LAST_NOTIFICATION.help, labels=labels)
        counted = CounterMetricFamily(NOTIFICATIONS.name, NOTIFICATIONS.help, labels=[*TARGET_LABELS, "kind"])
        rejected = CounterMetricFamily(REJECTED.name, REJECTED.help, labels=[*TARGET_LABELS, "reason"])
        delays = HistogramMetricFamily(DELAY.name, DELAY.help, labels=list(TARGET_LABELS))
        for name, state in self.targets.items():
            target, push = state.target, state.target.push
            assert push is not None
            ids = [name, target.exchange_label]
            current = state.current
            active.add_metric([*ids, push.mailbox], 1.0 if current is not None and current.active else 0.0)
            if state.last_notification is not None:
                last.add_metric([*ids, push.mailbox], state.last_notification)
            for kind in NOTIFICATION_KINDS:
                counted.add_metric([*ids, kind], state.notifications[kind])
            for reason in REJECTION_REASONS:
                rejected.add_metric([*ids, reason], state.rejected[reason])
            state.delays.add_to(delays, ids)
        yield from (active, last, counted, rejected, delays)
