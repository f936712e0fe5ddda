"""The notification listener and push state, with hand-made callbacks (the simulator's are elsewhere)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from loopback import push_listener_config
from samples import parse, value

from exporter import exposition
from exporter.config import Config
from exporter.listener import Listener, callback_url
from exporter.push import MAX_CALLBACK_BYTES, ProbeItem, PushRegistry, Subscription

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"
MESSAGES = "http://schemas.microsoft.com/exchange/services/2006/messages"


def local(url: str) -> str:
    # The public URL is https (Graph requires it); here a TLS-terminating proxy stands in front, as often.
    return url.replace("https://", "http://")


def send_notification(subscription: str, events: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP}"><soap:Body>'
        f'<m:SendNotification xmlns:t="{TYPES}" xmlns:m="{MESSAGES}"><m:ResponseMessages>'
        '<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        f"<m:Notification><t:SubscriptionId>{subscription}</t:SubscriptionId>"
        "<t:PreviousWatermark>AAAAAAAAAAA=</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>"
        f"{events}</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages>"
        "</m:SendNotification></soap:Body></soap:Envelope>"
    ).encode()


STATUS = "<t:StatusEvent><t:Watermark>AAAAAAAAAAA=</t:Watermark></t:StatusEvent>"


def created(item: str) -> str:
    return (
        f"<t:CreatedEvent><t:Watermark>AQ==</t:Watermark><t:TimeStamp>2026-11-26T00:00:00Z</t:TimeStamp>"
        f'<t:ItemId Id="{item}" ChangeKey="CQ=="/><t:ParentFolderId Id="AQ" ChangeKey="AQ=="/></t:CreatedEvent>'
    )


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return push_listener_config(tmp_path)


@pytest.fixture
async def listening(config: Config) -> AsyncIterator[tuple[PushRegistry, aiohttp.ClientSession]]:
    registry = PushRegistry()
    registry.configure(config)
    listener = Listener(registry)
    await listener.apply(config.notifications)
    try:
        async with aiohttp.ClientSession() as session:
            yield registry, session
    finally:
        await listener.stop()


async def test_ews_callbacks(config: Config, listening: tuple[PushRegistry, aiohttp.ClientSession]) -> None:
    registry, http = listening
    state = registry.targets["ews"]
    state.replace(Subscription("current-id", time.time()))
    url = local(callback_url(config.notifications, config.targets_by_name()["ews"]))  # type: ignore[arg-type]
    assert url.endswith("/monitor/push/ews/ews")

    async def post(body: bytes) -> tuple[int, str]:
        async with http.post(url, data=body, headers={"Content-Type": "text/xml"}) as response:
            return response.status, await response.text()

    status, text = await post(send_notification("current-id", STATUS + created("item-1")))
    assert status == 200 and "<m:SubscriptionStatus>OK</m:SubscriptionStatus>" in text
    assert state.notifications["status"] == 1 and state.notifications["created"] == 1
    assert state.last_notification is not None

    before = dict(state.notifications), state.last_notification
    status, text = await post(send_notification("an-old-life", STATUS))
    assert status == 200 and "<m:SubscriptionStatus>Unsubscribe</m:SubscriptionStatus>" in text
    assert (dict(state.notifications), state.last_notification) == before  # rejected: nothing moved
    assert state.rejected["unknown_subscription"] == 1

    assert (await post(b"<not xml"))[0] == 400
    assert (await post(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'))[0] == 400
    assert state.rejected["malformed"] == 2
    assert (await post(b"x" * (MAX_CALLBACK_BYTES + 10)))[0] == 413
    assert state.rejected["oversize"] == 1
    async with http.post(url.replace("/push/ews/ews", "/push/ews/nobody"), data=STATUS) as response:
        assert response.status == 404
    async with http.get(url) as response:
        assert response.status == 405  # only the callback method


async def test_graph_validation_and_notifications(
    config: Config, listening: tuple[PushRegistry, aiohttp.ClientSession]
) -> None:
    registry, http = listening
    target = config.targets_by_name()["graph"]
    url = local(callback_url(config.notifications, target))  # type: ignore[arg-type]
    async with http.post(url, params={"validationToken": "Validation: a token & more"}) as response:
        assert response.status == 200 and response.content_type == "text/plain"
        assert await response.text() == "Validation: a token & more"  # decoded, as Graph requires

    state = registry.targets["graph"]
    state.replace(Subscription("sub-1", time.time(), client_state="secret-state"))
    state.register_probe(ProbeItem("msg-1", time.monotonic() - 0.5, time.time()))

    def batch(subscription: str, client_state: str, **extra: object) -> str:
        return json.dumps(
            {
                "value": [
                    {
                        "subscriptionId": subscription,
                        "clientState": client_state,
                        "changeType": "created",
                        "resourceData": {"id": "msg-1"},
                        **extra,
                    }
                ]
            }
        )

    async with http.post(url, data=batch("sub-1", "forged")) as response:
        assert response.status == 202
    assert state.rejected["client_state"] == 1 and not state.notifications and not state.probe.delivered
    async with http.post(url, data=batch("sub-unknown", "secret-state")) as response:
        assert response.status == 202  # acknowledged, ignored
    assert state.rejected["unknown_subscription"] == 1
    async with http.post(url, data=batch("sub-1", "secret-state")) as response:
        assert response.status == 202
    assert state.notifications["created"] == 1 and state.probe.delivered
    assert state.delays.counts != [0] * len(state.delays.counts) and 0.5 <= state.delays.total < 5
    assert state.to_delete == ["msg-1"]

    lifecycle = url + "/lifecycle"
    async with http.post(lifecycle, data=json.dumps({"value": [{"subscriptionId": "sub-1", "clientState":
                         "secret-state", "lifecycleEvent": "subscriptionRemoved"}]})) as response:  # fmt: skip
        assert response.status == 202
    assert state.current is not None and not state.current.active
    assert state.notifications["lifecycle"] == 1


@pytest.mark.parametrize(
    ("event", "kind", "moves_last_notification"),
    [
        ("reauthorizationRequired", "lifecycle", True),
        ("subscriptionRemoved", "lifecycle", True),
        # Graph dropped notifications (change-notifications-lifecycle-events): no sign of delivery.
        ("missed", "missed", False),
    ],
    ids=["reauthorization", "removed", "missed"],
)
async def test_graph_lifecycle_events_are_counted_by_kind(
    config: Config,
    listening: tuple[PushRegistry, aiohttp.ClientSession],
    event: str,
    kind: str,
    moves_last_notification: bool,
) -> None:
    registry, http = listening
    url = local(callback_url(config.notifications, config.targets_by_name()["graph"], lifecycle=True))  # type: ignore[arg-type]
    state = registry.targets["graph"]
    state.replace(Subscription("sub-1", time.time(), client_state="secret-state"))
    body = {"value": [{"subscriptionId": "sub-1", "clientState": "secret-state", "lifecycleEvent": event}]}
    async with http.post(url, data=json.dumps(body)) as response:
        assert response.status == 202
    assert dict(state.notifications) == {kind: 1}
    assert (state.last_notification is not None) == moves_last_notification
    assert state.probe_now == (event == "missed")  # the next check writes a probe at once
    samples = parse(exposition.render(registry.families()).decode())
    labels = {"target": "graph", "exchange": "online"}
    assert value(samples, "bems_push_notifications_total", **labels, kind=kind) == 1
    assert value(samples, "bems_push_notifications_total", **labels, kind="missed") == (event == "missed")


def test_a_notification_may_beat_the_create_answer(config: Config) -> None:
    registry = PushRegistry()
    registry.configure(config)
    state = registry.targets["ews"]
    state.accept("created", "item-9")  # arrives first...
    state.register_probe(ProbeItem("item-9", time.monotonic(), time.time()))  # ...then the create call returns
    assert state.probe is not None and state.probe.delivered
    assert sum(state.delays.counts) == 1


def test_reload_keeps_unchanged_push_state(config: Config) -> None:
    registry = PushRegistry()
    registry.configure(config)
    registry.targets["ews"].replace(Subscription("kept", time.time()))
    registry.configure(config)
    assert registry.targets["ews"].current is not None
    registry.configure(config.model_copy(update={"targets": config.targets[:1]}))
    assert set(registry.targets) == {"ews"}


async def test_a_dripping_body_is_cut_off(
    config: Config, listening: tuple[PushRegistry, aiohttp.ClientSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from exporter import listener

    monkeypatch.setattr(listener, "BODY_SECONDS", 0.5)
    _registry, http = listening
    url = local(callback_url(config.notifications, config.targets_by_name()["ews"]))  # type: ignore[arg-type]

    async def drip():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"<"
            await asyncio.sleep(0.2)

    started = time.monotonic()
    async with http.post(url, data=drip()) as response:
        assert response.status == 408
    assert time.monotonic() - started < 2.0  # not the 4 s the drip would take
