"""Push notifications from the simulated Exchange: EWS push subscriptions, Graph webhooks, the fake BEMS URL.

A tiny aiohttp listener on loopback stands in for the exporter's: plain HTTP for EWS, HTTPS with a
certificate from ``Simulator.issue_certificate`` for Graph. A simulated minute lasts one second
here (``minute_seconds=1.0``), so StatusFrequency 1 pings every second and the first EWS retry
comes half a second after a failure. Those seconds are on the fake clock (the simulator's delivery runs on the
loop's clock): the tests move it, and wait for nothing.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote
from xml.etree import ElementTree

import aiohttp
import pytest
from aiohttp import web
from fake_clock import FakeClock

from bems_simulator import Simulator

EWS_PATH = "/EWS/Exchange.asmx"
ALICE, CAROL = "alice@corp.example.test", "carol@contoso.test"
NS = {
    "s": "http://schemas.xmlsoap.org/soap/envelope/",
    "soap": "http://schemas.xmlsoap.org/soap/envelope/",
    "t": "http://schemas.microsoft.com/exchange/services/2006/types",
    "m": "http://schemas.microsoft.com/exchange/services/2006/messages",
    "e": "http://schemas.microsoft.com/exchange/services/2006/errors",
}
MINUTE_SECONDS = 1.0
STEP = 0.05  # fake seconds between looks at what a test waits for: a tenth of the first retry's delay


def send_notification_result(status: str) -> bytes:
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        f"<s:Envelope xmlns:s='{NS['s']}' xmlns:m='{NS['m']}' xmlns:t='{NS['t']}'><s:Body>"
        f"<m:SendNotificationResult><m:SubscriptionStatus>{status}</m:SubscriptionStatus>"
        "</m:SendNotificationResult></s:Body></s:Envelope>"
    ).encode()


class Received:
    def __init__(self, request: web.Request, body: bytes) -> None:
        self.path_qs = request.path_qs
        self.query = request.query
        self.content_type = request.headers.get("Content-Type", "")
        self.authorization = request.headers.get("Authorization")
        self.body = body
        self.time = asyncio.get_running_loop().time()  # the clock the simulator times its deliveries by

    def xml(self) -> ElementTree.Element:
        return ElementTree.fromstring(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[Received], Awaitable[web.StreamResponse]]


class Listener:
    """An aiohttp server on 127.0.0.1 that records every request and answers with ``self.answer``."""

    def __init__(self, answer: Answer, clock: FakeClock) -> None:
        self.answer = answer
        self._clock = clock
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, ssl_context: ssl.SSLContext | None = None, host_name: str = "127.0.0.1") -> Listener:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://{host_name}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Move the fake clock until ``count`` requests arrived in all (within ``timeout`` fake seconds);
        returns every one received so far."""
        await self._clock.advance_until(lambda: len(self.received) >= count, STEP, limit=timeout)
        return self.received

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        received = Received(request, await request.read())
        self.received.append(received)
        return await self.answer(received)


async def answer_ok(received: Received) -> web.Response:
    return web.Response(body=send_notification_result("OK"), content_type="text/xml", charset="utf-8")


async def echo_validation(received: Received) -> web.Response:
    """A Graph listener: echo a validation token as text/plain, accept notifications with 202."""
    if "validationToken" in received.query:
        return web.Response(text=received.query["validationToken"], content_type="text/plain")
    return web.Response(status=202)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(tmp_path / "state", minute_seconds=MINUTE_SECONDS) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def listener(fake_clock: FakeClock) -> AsyncIterator[Listener]:
    server = await Listener(answer_ok, fake_clock).start()
    yield server
    await server.stop()


# --- EWS -------------------------------------------------------------------------------------------


def ews_envelope(body: str, impersonate: str | None = ALICE) -> bytes:
    impersonation = (
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{impersonate}</t:PrimarySmtpAddress>"
        "</t:ConnectingSID></t:ExchangeImpersonation>"
        if impersonate
        else ""
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        f"<s:Envelope xmlns:s='{NS['s']}' xmlns:t='{NS['t']}' xmlns:m='{NS['m']}'>"
        f"<s:Header><t:RequestServerVersion Version='Exchange2016'/>{impersonation}</s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def subscribe_body(url: str, frequency: Any = 1, folders: str = "<t:DistinguishedFolderId Id='inbox'/>") -> str:
    return (
        "<m:Subscribe><m:PushSubscriptionRequest>"
        f"<t:FolderIds>{folders}</t:FolderIds>"
        "<t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType></t:EventTypes>"
        f"<t:StatusFrequency>{frequency}</t:StatusFrequency><t:URL>{url}</t:URL>"
        "</m:PushSubscriptionRequest></m:Subscribe>"
    )


CREATE_ITEM = (
    "<m:CreateItem MessageDisposition='SaveOnly'><m:SavedItemFolderId><t:DistinguishedFolderId Id='inbox'/>"
    "</m:SavedItemFolderId><m:Items><t:Message><t:Subject>BEMS probe</t:Subject>"
    "<t:Body BodyType='Text'>probe</t:Body></t:Message></m:Items></m:CreateItem>"
)


def delete_item(item_id: str) -> str:
    return f"<m:DeleteItem DeleteType='HardDelete'><m:ItemIds><t:ItemId Id='{item_id}'/></m:ItemIds></m:DeleteItem>"


async def onprem_ews(sim: Simulator, session: aiohttp.ClientSession, body: bytes) -> tuple[int, ElementTree.Element]:
    credentials = sim.credentials
    headers = {
        "Content-Type": "text/xml; charset=utf-8",
        "Authorization": aiohttp.encode_basic_auth(credentials.onprem_username, credentials.onprem_password),
    }
    context = ssl.create_default_context(cafile=str(sim.ca_file))
    url = sim.endpoints["onprem-ews"].url + EWS_PATH
    async with session.post(url, data=body, headers=headers, ssl=context) as response:
        return response.status, ElementTree.fromstring(await response.read())


async def token(sim: Simulator, session: aiohttp.ClientSession, scope: str) -> str:
    credentials = sim.credentials
    form = {
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
        "scope": scope,
        "grant_type": "client_credentials",
    }
    url = sim.endpoints["entra"].url + f"/{credentials.tenant_id}/oauth2/v2.0/token"
    context = ssl.create_default_context(cafile=str(sim.ca_file))
    async with session.post(url, data=form, ssl=context) as response:
        assert response.status == 200
        return (await response.json())["access_token"]


def response_message(envelope: ElementTree.Element, operation: str) -> ElementTree.Element:
    message = envelope.find(f"s:Body/m:{operation}Response/m:ResponseMessages/m:{operation}ResponseMessage", NS)
    assert message is not None, ElementTree.tostring(envelope)
    return message


async def subscribe(sim: Simulator, session: aiohttp.ClientSession, url: str, frequency: int = 1) -> str:
    status, envelope = await onprem_ews(sim, session, ews_envelope(subscribe_body(url, frequency)))
    message = response_message(envelope, "Subscribe")
    assert (status, message.get("ResponseClass")) == (200, "Success")
    return message.findtext("m:SubscriptionId", namespaces=NS) or ""


def notification(received: Received) -> ElementTree.Element:
    assert received.content_type == "text/xml; charset=utf-8"
    assert received.authorization is None
    found = received.xml().find(
        "soap:Body/m:SendNotification/m:ResponseMessages/m:SendNotificationResponseMessage/m:Notification", NS
    )
    assert found is not None
    return found


def event_names(received: Received) -> list[str]:
    return [child.tag.rpartition("}")[2] for child in notification(received)][3:]


async def test_subscribe_then_status_pings_at_the_status_frequency(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener
) -> None:
    asked = asyncio.get_running_loop().time()  # before the subscription exists: its pings come later than this
    status, envelope = await onprem_ews(sim, session, ews_envelope(subscribe_body(listener.url + "/ews")))
    message = response_message(envelope, "Subscribe")
    subscription_id = message.findtext("m:SubscriptionId", namespaces=NS)
    watermark = message.findtext("m:Watermark", namespaces=NS)
    assert (status, message.findtext("m:ResponseCode", namespaces=NS)) == (200, "NoError")
    assert subscription_id and watermark and watermark.startswith("AQAAA")

    pings = await listener.wait_for(2, timeout=4)
    for ping in pings:
        found = notification(ping)
        assert found.findtext("t:SubscriptionId", namespaces=NS) == subscription_id
        assert found.findtext("t:PreviousWatermark", namespaces=NS) == watermark
        assert found.findtext("t:MoreEvents", namespaces=NS) == "false"
        assert found.findtext("t:StatusEvent/t:Watermark", namespaces=NS) == watermark
    # Lower bounds only: a loaded machine delivers late, never early.
    assert pings[0].time - asked >= 1.0
    assert pings[1].time - asked >= 2.0
    state = sim.ews_subscriptions[subscription_id]
    assert (state.mailbox, state.url, state.status_frequency, state.alive) == (ALICE, listener.url + "/ews", 1, True)
    assert state.delivered >= 2 and state.failures == 0 and state.last_result == "OK"
    assert sim.ews_push_deliveries[0].events == ("StatusEvent",)


async def test_notifications_chain_their_watermarks_as_exchange_does(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener
) -> None:
    # Each Notification's PreviousWatermark is "the watermark of the latest event that was successfully
    # communicated to the client" and a push client compares it with its last known one (Microsoft's
    # PreviousWatermark reference); a failed delivery is sent again unchanged. Read with exchangelib's parser.
    from exchangelib.properties import StatusEvent
    from exchangelib.services import SendNotification

    failed_once: list[bool] = []

    async def fail_the_first_item_event(received: Received) -> web.Response:
        if event_names(received) != ["StatusEvent"] and not failed_once:
            failed_once.append(True)
            return web.Response(status=500)
        return await answer_ok(received)

    listener.answer = fail_the_first_item_event
    _, envelope = await onprem_ews(sim, session, ews_envelope(subscribe_body(listener.url + "/ews")))
    subscribed_at = response_message(envelope, "Subscribe").findtext("m:Watermark", namespaces=NS)
    await listener.wait_for(1, timeout=4)  # a StatusEvent
    await onprem_ews(sim, session, ews_envelope(CREATE_ITEM))
    received = await listener.wait_for(4, timeout=6)  # the item events, their retry, a StatusEvent
    parsed = [next(iter(SendNotification(protocol=None).parse(r.body))) for r in received[:4]]
    ping, pushed, retried, next_ping = parsed
    assert ping.previous_watermark == subscribed_at
    assert [type(e) for e in ping.events] == [StatusEvent] and ping.events[0].watermark == subscribed_at
    assert pushed.previous_watermark == ping.events[-1].watermark
    assert all(event.watermark != pushed.previous_watermark for event in pushed.events)
    assert retried.previous_watermark == pushed.previous_watermark  # sent again as it was
    assert [e.watermark for e in retried.events] == [e.watermark for e in pushed.events]
    assert next_ping.previous_watermark == pushed.events[-1].watermark == next_ping.events[0].watermark


async def test_create_item_raises_created_and_new_mail_events(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener
) -> None:
    subscription_id = await subscribe(sim, session, listener.url, frequency=30)
    status, envelope = await onprem_ews(sim, session, ews_envelope(CREATE_ITEM))
    message = response_message(envelope, "CreateItem")
    item = message.find("m:Items/t:Message/t:ItemId", NS)
    assert (status, message.get("ResponseClass"), item is not None) == (200, "Success", True)
    assert item is not None
    item_id = item.get("Id")
    assert [i.id for i in sim.mailbox_items(ALICE)] == [item_id]
    assert sim.mailbox_items(ALICE)[0].subject == "BEMS probe"

    (pushed,) = await listener.wait_for(1, timeout=2)
    assert event_names(pushed) == ["CreatedEvent", "NewMailEvent"]
    found = notification(pushed)
    for name in ("CreatedEvent", "NewMailEvent"):
        event = found.find(f"t:{name}", NS)
        assert event is not None
        assert event.find("t:ItemId", NS).get("Id") == item_id  # type: ignore[union-attr]
        assert event.find("t:ItemId", NS).get("ChangeKey") == item.get("ChangeKey")  # type: ignore[union-attr]
        assert event.find("t:ParentFolderId", NS) is not None
        assert event.findtext("t:TimeStamp", namespaces=NS).endswith("Z")  # type: ignore[union-attr]
        assert event.findtext("t:Watermark", namespaces=NS) != found.findtext("t:PreviousWatermark", namespaces=NS)
    assert sim.ews_push_deliveries[-1].item_ids == (item_id,)
    assert sim.ews_subscriptions[subscription_id].delivered == 1

    status, envelope = await onprem_ews(sim, session, ews_envelope(delete_item(item_id or "")))
    assert response_message(envelope, "DeleteItem").findtext("m:ResponseCode", namespaces=NS) == "NoError"
    assert sim.mailbox_items(ALICE) == []
    status, envelope = await onprem_ews(sim, session, ews_envelope(delete_item(item_id or "")))
    message = response_message(envelope, "DeleteItem")
    assert (message.get("ResponseClass"), message.findtext("m:ResponseCode", namespaces=NS)) == (
        "Error",
        "ErrorItemNotFound",
    )


def delete_code(envelope: ElementTree.Element) -> tuple[str | None, str | None]:
    message = response_message(envelope, "DeleteItem")
    return message.get("ResponseClass"), message.findtext("m:ResponseCode", namespaces=NS)


@pytest.mark.parametrize("move", ["admin_move", "move_to_deleted_items"])
async def test_a_moved_item_gets_a_new_id_and_its_old_one_is_not_found(
    sim: Simulator, session: aiohttp.ClientSession, move: str
) -> None:
    # Outlook item ids change on a move (learn.microsoft.com/graph/outlook-immutable-id); DeleteItem of
    # an id that names nothing answers HTTP 200 with ResponseClass Error and ErrorItemNotFound.
    _, created = await onprem_ews(sim, session, ews_envelope(CREATE_ITEM))
    old_id = created.find(".//t:ItemId", NS).get("Id")  # type: ignore[union-attr]
    if move == "admin_move":
        moved = sim.move_item(ALICE, old_id or "", "deleteditems")
    else:
        soft = delete_item(old_id or "").replace("HardDelete", "MoveToDeletedItems")
        assert delete_code((await onprem_ews(sim, session, ews_envelope(soft)))[1]) == ("Success", "NoError")
        (moved,) = sim.mailbox_items(ALICE)
    assert moved.id != old_id and moved.folder == "deleteditems"
    assert [item.id for item in sim.mailbox_items(ALICE)] == [moved.id]
    status, envelope = await onprem_ews(sim, session, ews_envelope(delete_item(old_id or "")))
    assert (status, delete_code(envelope)) == (200, ("Error", "ErrorItemNotFound"))
    status, envelope = await onprem_ews(sim, session, ews_envelope(delete_item(moved.id)))
    assert (status, delete_code(envelope)) == (200, ("Success", "NoError"))
    with pytest.raises(ValueError, match="holds no item"):
        sim.move_item(ALICE, moved.id, "inbox")


async def test_online_subscribe_and_create_item_with_an_app_token(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener
) -> None:
    headers = {
        "Content-Type": "text/xml; charset=utf-8",
        "Authorization": f"Bearer {await token(sim, session, 'https://outlook.office365.com/.default')}",
        "X-AnchorMailbox": CAROL,
    }
    context = ssl.create_default_context(cafile=str(sim.ca_file))
    url = sim.endpoints["online-ews"].url + EWS_PATH
    for body in (subscribe_body(listener.url, 30), CREATE_ITEM):
        async with session.post(url, data=ews_envelope(body, CAROL), headers=headers, ssl=context) as response:
            assert response.status == 200
    (pushed,) = await listener.wait_for(1, timeout=2)
    assert event_names(pushed) == ["CreatedEvent", "NewMailEvent"]
    assert [state.endpoint for state in sim.ews_subscriptions.values()] == ["online-ews"]


async def test_subscribe_validation(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async def fault_code(body: str, impersonate: str | None = ALICE) -> str | None:
        status, envelope = await onprem_ews(sim, session, ews_envelope(body, impersonate))
        assert status == 500
        return envelope.findtext("s:Body/s:Fault/detail/e:ResponseCode", namespaces=NS)

    async def message_code(body: str, impersonate: str | None = ALICE) -> str | None:
        status, envelope = await onprem_ews(sim, session, ews_envelope(body, impersonate))
        assert status == 200
        return response_message(envelope, "Subscribe").findtext("m:ResponseCode", namespaces=NS)

    assert await fault_code(subscribe_body("http://127.0.0.1:1/", frequency=0)) == "ErrorSchemaValidation"
    assert await fault_code(subscribe_body("http://127.0.0.1:1/", frequency=1441)) == "ErrorSchemaValidation"
    assert await fault_code(subscribe_body("http://127.0.0.1:1/", folders="<t:DistinguishedFolderId Id='x'/>")) == (
        "ErrorSchemaValidation"
    )
    assert await message_code(subscribe_body("ftp://127.0.0.1/")) == "ErrorInvalidPushSubscriptionUrl"
    assert await message_code(subscribe_body("not a url")) == "ErrorInvalidPushSubscriptionUrl"
    all_folders = subscribe_body("http://127.0.0.1:1/").replace(
        "<m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id='inbox'/></t:FolderIds>",
        "<m:PushSubscriptionRequest SubscribeToAllFolders='true'>",
    )
    assert await message_code(all_folders) == "NoError"
    delegate = "<t:DistinguishedFolderId Id='inbox'><t:Mailbox><t:EmailAddress>alice@corp.example.test</t:EmailAddress>"
    delegate += "</t:Mailbox></t:DistinguishedFolderId>"
    assert await message_code(subscribe_body("http://127.0.0.1:1/", folders=delegate), impersonate=None) == (
        "ErrorSubscriptionDelegateAccessNotSupported"
    )
    # Authorised exactly like GetFolder: the impersonation right, and a mailbox that exists.
    sim.revoke_impersonation(ALICE)
    assert await fault_code(subscribe_body("http://127.0.0.1:1/")) == "ErrorImpersonateUserDenied"
    assert await fault_code(subscribe_body("http://127.0.0.1:1/"), "nobody@corp.example.test") == (
        "ErrorNonExistentMailbox"
    )


async def test_unsubscribe_reply_ends_the_subscription(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener, fake_clock: FakeClock
) -> None:
    async def unsubscribe(received: Received) -> web.Response:
        return web.Response(body=send_notification_result("Unsubscribe"), content_type="text/xml")

    listener.answer = unsubscribe
    subscription_id = await subscribe(sim, session, listener.url)
    await listener.wait_for(1, timeout=2)
    await fake_clock.advance(1.5)
    assert len(listener.received) == 1
    state = sim.ews_subscriptions[subscription_id]
    assert (state.alive, state.ended, state.last_result, state.failures) == (False, "unsubscribed", "Unsubscribe", 0)


async def test_listener_down_retries_with_doubling_then_expires(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener, fake_clock: FakeClock
) -> None:
    url = listener.url
    await listener.stop()  # connection refused from now on
    subscription_id = await subscribe(sim, session, url, frequency=2)
    state = sim.ews_subscriptions[subscription_id]
    await fake_clock.advance_until(lambda: not state.alive, STEP, limit=6)
    # The first ping after 2 s, retries 30, 60 and 120 simulated seconds after it; 240 is past the window.
    attempts = [delivery for delivery in sim.ews_push_deliveries if delivery.subscription_id == subscription_id]
    assert [attempt.attempt for attempt in attempts] == [0, 1, 2, 3]
    # Each retry is sent when due, counted from the first attempt's start, whatever the refused connects took
    # (a lower bound only: a loaded machine sends late, never early). Immediate or evenly spaced retries fail it.
    offsets = [attempt.sent - attempts[0].sent for attempt in attempts]
    assert offsets == sorted(offsets)
    # 1 µs: asyncio may run a timer a clock resolution early, and the clock's sums round.
    assert all(offset >= due - 1e-6 for offset, due in zip(offsets, [0, 0.5, 1.0, 2.0], strict=True)), offsets
    assert all(attempt.result.startswith("unreachable") for attempt in attempts)
    assert (state.alive, state.ended, state.failures, state.delivered) == (False, "expired", 4, 0)


async def test_non_ok_answers_are_failed_deliveries(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener, fake_clock: FakeClock
) -> None:
    answers = iter([web.Response(status=500), web.Response(text="<nonsense/>", content_type="text/xml")])

    async def flaky(received: Received) -> web.Response:
        return next(answers, None) or await answer_ok(received)

    listener.answer = flaky
    subscription_id = await subscribe(sim, session, listener.url)
    await listener.wait_for(3, timeout=4)
    await fake_clock.advance(0.1)
    results = [d.result for d in sim.ews_push_deliveries if d.subscription_id == subscription_id]
    assert results[:3] == ["HTTP 500", "no SendNotificationResult in the answer", "OK"]
    assert sim.ews_subscriptions[subscription_id].alive


async def test_push_faults(
    sim: Simulator, session: aiohttp.ClientSession, listener: Listener, fake_clock: FakeClock
) -> None:
    # delayed: item events leave late.
    sim.set_push_fault("delayed", delay_seconds=0.6)
    await subscribe(sim, session, listener.url, frequency=30)
    created = asyncio.get_running_loop().time()
    await onprem_ews(sim, session, ews_envelope(CREATE_ITEM))
    (pushed,) = await listener.wait_for(1, timeout=10)
    # At least the injected delay; no upper bound, which only a quiet machine would keep.
    assert pushed.time - created >= 0.6

    # drop_subscriptions: silently forgotten, no more pushes; later subscriptions live.
    sim.set_push_fault("drop_subscriptions")
    assert sim.ews_push.state()["fault"]["kind"] == "none"
    assert [s.ended for s in sim.ews_subscriptions.values()] == ["dropped"]
    await onprem_ews(sim, session, ews_envelope(CREATE_ITEM))
    await fake_clock.advance(0.3)
    assert len(listener.received) == 1

    # callback_blocked: every delivery fails, so retries and then expiry.
    sim.set_push_fault("callback_blocked")
    blocked_id = await subscribe(sim, session, listener.url, frequency=1)
    await fake_clock.advance(2.3)
    blocked = sim.ews_subscriptions[blocked_id]
    assert (blocked.alive, blocked.ended, blocked.failures) == (False, "expired", 3)
    assert len(listener.received) == 1

    with pytest.raises(ValueError, match="unknown push fault"):
        sim.set_push_fault("lost")
    with pytest.raises(ValueError, match="delay_seconds"):
        sim.set_push_fault("delayed")
    sim.set_push_fault("none")


# --- Graph -----------------------------------------------------------------------------------------


GRAPH_SCOPE = "https://graph.microsoft.com/.default"
INBOX_MESSAGES = f"users/{CAROL}/mailFolders('inbox')/messages"


class Graph:
    """Graph calls with a token holding Mail.Read and Mail.ReadWrite."""

    def __init__(self, sim: Simulator, session: aiohttp.ClientSession) -> None:
        self.sim, self.session = sim, session
        self.context = ssl.create_default_context(cafile=str(sim.ca_file))
        self.token = ""

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if not self.token:
            self.sim.configure_entra(graph_roles=["Mail.Read", "Mail.ReadWrite"])
            self.token = await token(self.sim, self.session, GRAPH_SCOPE)
        url = self.sim.endpoints["graph"].url + "/v1.0/" + path
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, url, json=body, headers=headers, ssl=self.context) as response:
            raw = await response.read()
            return response.status, json.loads(raw) if raw else None

    async def subscribe(self, url: str, minutes: float = 60, **extra: Any) -> tuple[int, Any]:
        body = {
            "changeType": "created",
            "notificationUrl": url + "/notify",
            "lifecycleNotificationUrl": url + "/lifecycle",
            "resource": INBOX_MESSAGES,
            "expirationDateTime": (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(),
            "clientState": "probe-state",
            **extra,
        }
        return await self.request("POST", "subscriptions", body)

    async def create_message(self) -> tuple[int, Any]:
        message = {"subject": "BEMS probe", "body": {"contentType": "Text", "content": "probe"}}
        return await self.request("POST", f"users/{CAROL}/mailFolders/inbox/messages", message)


async def https_listener(sim: Simulator, tmp_path: Path, answer: Answer, clock: FakeClock) -> Listener:
    cert_pem, key_pem = sim.issue_certificate(["localhost"])
    chain = tmp_path / "listener.pem"
    chain.write_bytes(cert_pem + key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain)
    return await Listener(answer, clock).start(context, host_name="localhost")


@pytest.fixture
async def graph_listener(sim: Simulator, tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[Listener]:
    server = await https_listener(sim, tmp_path, echo_validation, fake_clock)
    yield server
    await server.stop()


@pytest.fixture
def graph(sim: Simulator, session: aiohttp.ClientSession) -> Graph:
    return Graph(sim, session)


def of_kind(sim: Simulator, kind: str) -> list[Any]:
    return [delivery for delivery in sim.graph_push_deliveries if delivery.kind == kind]


async def test_graph_subscription_lifecycle_and_change_notification(
    sim: Simulator, graph: Graph, graph_listener: Listener, fake_clock: FakeClock
) -> None:
    status, created = await graph.subscribe(graph_listener.url, minutes=20000)
    assert status == 201, created
    subscription_id = created["id"]
    assert created["changeType"] == "created" and created["clientState"] == "probe-state"
    assert created["notificationUrl"] == graph_listener.url + "/notify"
    assert created["resource"] == INBOX_MESSAGES
    expiration = datetime.fromisoformat(created["expirationDateTime"])
    assert expiration <= datetime.now(UTC) + timedelta(minutes=10080)  # capped
    # The synchronous handshake, on both URLs, with a URL-encoded token echoed decoded.
    validations = graph_listener.received[:2]
    assert [v.path_qs.split("?")[0] for v in validations] == ["/notify", "/lifecycle"]
    assert all(v.content_type.startswith("text/plain") for v in validations)
    assert "validationToken=Validation:%20Testing%20client" in validations[0].path_qs
    assert [(d.accepted, d.status) for d in of_kind(sim, "validation")] == [(True, 200), (True, 200)]

    status, message = await graph.create_message()
    assert status == 201 and message["subject"] == "BEMS probe"
    (_, _, change) = await graph_listener.wait_for(3, timeout=2)
    assert change.path_qs == "/notify"
    (notified,) = change.json()["value"]
    assert notified["subscriptionId"] == subscription_id
    assert notified["clientState"] == "probe-state"
    assert notified["changeType"] == "created"
    assert notified["tenantId"] == sim.credentials.tenant_guid
    assert notified["resourceData"]["id"] == message["id"]
    assert notified["resource"].endswith(f"/messages/{message['id']}")
    assert notified["subscriptionExpirationDateTime"] == created["expirationDateTime"]
    await fake_clock.advance(0.05)
    assert [(d.status, d.accepted) for d in of_kind(sim, "change")] == [(202, True)]
    assert sim.graph_subscriptions[subscription_id].notifications == 1

    assert (await graph.request("DELETE", f"users/{CAROL}/messages/{message['id']}"))[0] == 204
    assert sim.mailbox_items(CAROL) == []
    status, error = await graph.request("DELETE", f"users/{CAROL}/messages/{message['id']}")
    assert (status, error["error"]["code"]) == (404, "ErrorItemNotFound")

    later = (datetime.now(UTC) + timedelta(minutes=120)).isoformat()
    status, renewed = await graph.request("PATCH", f"subscriptions/{subscription_id}", {"expirationDateTime": later})
    assert status == 200
    assert datetime.fromisoformat(renewed["expirationDateTime"]) == datetime.fromisoformat(later)
    assert (await graph.request("POST", f"subscriptions/{subscription_id}/reauthorize"))[0] == 204
    assert (await graph.request("GET", "subscriptions"))[1]["value"][0]["id"] == subscription_id
    assert (await graph.request("DELETE", f"subscriptions/{subscription_id}"))[0] == 204
    assert sim.graph_subscriptions[subscription_id].ended == "deleted"
    status, error = await graph.request("DELETE", f"subscriptions/{subscription_id}")
    assert (status, error["error"]["code"]) == (404, "ResourceNotFound")
    assert (await graph.request("PATCH", f"subscriptions/{subscription_id}", {"expirationDateTime": later}))[0] == 404


async def test_graph_subscription_refusals(sim: Simulator, graph: Graph, tmp_path: Path, fake_clock: FakeClock) -> None:
    async def encoded_echo(received: Received) -> web.Response:
        token = received.path_qs.split("validationToken=")[1]  # still URL-encoded: wrong
        return web.Response(text=token, content_type="text/plain")

    wrong = await https_listener(sim, tmp_path, encoded_echo, fake_clock)
    try:
        status, error = await graph.subscribe(wrong.url)
    finally:
        await wrong.stop()
    assert (status, error["error"]["code"]) == (400, "InvalidRequest")
    assert error["error"]["message"].startswith("Subscription validation request failed.")
    assert sim.graph_subscriptions == {}

    status, error = await graph.subscribe("http://localhost:1")
    assert (status, error["error"]["code"]) == (400, "InvalidRequest")
    status, error = await graph.subscribe("https://localhost:1", clientState="x" * 129)
    assert (status, error["error"]["code"]) == (400, "InvalidRequest")
    status, error = await graph.subscribe("https://localhost:1")  # nobody listens
    assert (status, error["error"]["message"]) == (
        400,
        "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
    )

    sim.configure_entra(graph_roles=["Mail.Read"])
    graph.token = await token(sim, graph.session, GRAPH_SCOPE)
    status, error = await graph.create_message()
    assert (status, error["error"]["code"]) == (403, "ErrorAccessDenied")  # Mail.Read cannot write


async def test_graph_subscription_expiry_is_silent_and_its_renewal_answers_404(
    tmp_path: Path, session: aiohttp.ClientSession, fake_clock: FakeClock
) -> None:
    # Graph sends subscriptionRemoved only for removals it initiates, not on expiry (learn.microsoft.com
    # /graph/change-notifications-lifecycle-events): an expired subscription just ends, and renewing it
    # answers 404. 45 simulated minutes (Graph's shortest lifetime) in 0.9 s.
    async with Simulator(tmp_path / "fast", minute_seconds=0.02) as sim:
        listener = await https_listener(sim, tmp_path, echo_validation, fake_clock)
        graph = Graph(sim, session)
        try:
            status, created = await graph.subscribe(listener.url, minutes=1)
            assert status == 201
            granted = datetime.fromisoformat(created["expirationDateTime"]) - datetime.now(UTC)
            assert granted.total_seconds() == pytest.approx(45 * 60, abs=5)
            subscription = sim.graph_subscriptions[created["id"]]
            await fake_clock.advance_until(lambda: not subscription.alive, STEP, limit=5)
            await fake_clock.advance(0.3)  # a lifecycle notification, were one sent, would have arrived by now
        finally:
            await listener.stop()
        assert subscription.ended == "expired"
        assert [r.path_qs.split("?")[0] for r in listener.received] == ["/notify", "/lifecycle"]  # validations only
        later = (datetime.now(UTC) + timedelta(minutes=120)).isoformat()
        status, error = await graph.request("PATCH", f"subscriptions/{created['id']}", {"expirationDateTime": later})
        assert (status, error["error"]["code"]) == (404, "ResourceNotFound")


async def test_graph_lifecycle_events_and_faults(
    sim: Simulator, graph: Graph, graph_listener: Listener, fake_clock: FakeClock
) -> None:
    subscription_id = (await graph.subscribe(graph_listener.url))[1]["id"]
    for event in ("reauthorizationRequired", "missed"):
        sim.send_lifecycle(subscription_id, event)
    received = await graph_listener.wait_for(4, timeout=2)
    assert sorted(r.json()["value"][0]["lifecycleEvent"] for r in received[2:]) == ["missed", "reauthorizationRequired"]
    with pytest.raises(ValueError, match="unknown lifecycle event"):
        sim.send_lifecycle(subscription_id, "bored")

    sim.set_graph_push_fault("delayed", delay_seconds=0.5)
    created = asyncio.get_running_loop().time()
    await graph.create_message()
    change = (await graph_listener.wait_for(5, timeout=10))[4]
    assert change.time - created >= 0.5  # at least the injected delay

    sim.set_graph_push_fault("callback_blocked")
    await graph.create_message()
    await fake_clock.advance(0.2)
    assert len(graph_listener.received) == 5
    assert of_kind(sim, "change")[-1].accepted is False
    assert (await graph.subscribe(graph_listener.url))[0] == 400  # the handshake cannot reach it either

    sim.set_graph_push_fault("drop_subscriptions")
    assert sim.graph_subscriptions[subscription_id].ended == "dropped"
    await graph.create_message()
    await fake_clock.advance(0.2)
    assert len(graph_listener.received) == 5
    assert (await graph.request("GET", f"subscriptions/{subscription_id}"))[0] == 404

    sim.send_lifecycle((await graph.subscribe(graph_listener.url))[1]["id"], "subscriptionRemoved")
    removed = (await graph_listener.wait_for(8, timeout=2))[7]
    assert removed.json()["value"][0]["lifecycleEvent"] == "subscriptionRemoved"
    with pytest.raises(ValueError, match="no live Graph subscription"):
        sim.send_lifecycle(subscription_id, "missed")


# --- BEMS's notification URL ------------------------------------------------------------------------


async def test_bems_notification_url_echoes_unless_faulted(
    sim: Simulator, graph: Graph, session: aiohttp.ClientSession
) -> None:
    url = sim.endpoints["bems"].url + "/notificationClient"
    context = ssl.create_default_context(cafile=str(sim.ca_file))
    token_text = "Validation: Testing client application reachability"

    async def validate() -> tuple[int, str, str]:
        async with session.post(f"{url}?validationToken={quote(token_text)}", ssl=context) as response:
            return response.status, response.content_type, await response.text()

    assert await validate() == (200, "text/plain", token_text)
    sim.set_bems_fault("no_echo")
    assert await validate() == (200, "text/plain", "")
    sim.set_bems_fault("wrong_echo")
    status, _, body = await validate()
    assert status == 200 and body not in ("", token_text)
    assert [unquote(r.path.split("=")[1]) == r.validation_token for r in sim.bems.requests] == [True] * 3
    with pytest.raises(ValueError):
        sim.set_bems_fault("garbled")

    # Graph's own handshake against it: the subscription stands or falls with the echo.
    body = {"notificationUrl": url, "lifecycleNotificationUrl": url}
    assert (await graph.subscribe(sim.endpoints["bems"].url, **body))[0] == 400
    sim.set_bems_fault("none")
    assert (await graph.subscribe(sim.endpoints["bems"].url, **body))[0] == 201


async def test_admin_api_for_push_and_bems(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async def admin(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with session.request(method, sim.admin_url + "/api/v1" + path, json=body) as response:
            return response.status, await response.json()

    status, state = await admin("PUT", "/push/ews/fault", {"kind": "delayed", "delay_seconds": 2})
    assert (status, state["ews"]["fault"]) == (200, {"kind": "delayed", "delay_seconds": 2.0})
    assert (await admin("PUT", "/push/graph/fault", {"kind": "callback_blocked"}))[1]["graph"]["fault"]["kind"] == (
        "callback_blocked"
    )
    assert (await admin("PUT", "/push/ews/fault", {"kind": "delayed"}))[0] == 400
    assert (await admin("PUT", "/push/smtp/fault", {"kind": "none"}))[0] == 404
    assert (await admin("DELETE", "/push/graph/fault"))[1]["graph"]["fault"]["kind"] == "none"
    assert await admin("GET", "/push/ews/deliveries") == (200, [])
    assert (await admin("POST", "/push/graph/subscriptions/nope/lifecycle", {"event": "missed"}))[0] == 400
    assert await admin("PUT", "/bems/fault", {"fault": "no_echo"}) == (200, {"fault": "no_echo", "requests": 0})
    assert (await admin("PUT", "/bems/fault", {"fault": "loud"}))[0] == 400
    assert await admin("GET", "/bems/requests") == (200, [])
    assert await admin("GET", f"/mailboxes/{ALICE}/items") == (200, [])
    first, second = (sim.mail.create(ALICE, "inbox", "probe", "probe") for _ in range(2))
    status, moved = await admin("POST", f"/mailboxes/{ALICE}/items/{first.id}/move", {"folder": "deleteditems"})
    assert status == 200 and moved["id"] != first.id and moved["folder"] == "deleteditems"
    assert (await admin("POST", f"/mailboxes/{ALICE}/items/{first.id}/move", {"folder": "inbox"}))[0] == 400
    assert (await admin("POST", f"/mailboxes/{ALICE}/items/{moved['id']}/move", {}))[0] == 400
    status, left = await admin("DELETE", f"/mailboxes/{ALICE}/items/{second.id}")
    assert (status, [item["id"] for item in left]) == (200, [moved["id"]])
    assert (await admin("DELETE", f"/mailboxes/{ALICE}/items/{second.id}"))[0] == 400
