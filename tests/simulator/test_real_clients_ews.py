"""The simulator's EWS judged by a real client: exchangelib, as a BEMS-like application would drive it.

exchangelib is synchronous: every call runs in a worker thread while the simulator serves on the event
loop. It trusts the simulator's CA through its documented hook, ``BaseProtocol.HTTP_ADAPTER_CLS``. Where
exchangelib and the simulator disagree, the simulator is wrong.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import requests.adapters
from aiohttp import web
from exchangelib import IMPERSONATION, NTLM, Account, Build, Configuration, Credentials, Message, Version
from exchangelib.errors import ErrorImpersonateUserDenied, ErrorServerBusy
from exchangelib.protocol import BaseProtocol, close_connections
from exchangelib.services import SendNotification

from bems_simulator.server import Simulator

ALICE, BOB = "alice@corp.example.test", "bob@corp.example.test"


@pytest.fixture
def trust_simulator(simulator: Simulator) -> Iterator[None]:
    """exchangelib's sessions verify against the simulator's CA (and nothing else)."""

    class SimulatorTrust(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn, url, verify, cert):  # type: ignore[no-untyped-def]
            super().cert_verify(conn, url, str(simulator.ca_file), cert)

    saved = BaseProtocol.HTTP_ADAPTER_CLS
    BaseProtocol.HTTP_ADAPTER_CLS = SimulatorTrust
    try:
        yield
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = saved
        close_connections()  # exchangelib caches protocols (and their sessions) per endpoint


def account(simulator: Simulator, mailbox: str) -> Account:
    """The service account acting as ``mailbox`` over NTLM with impersonation, as BEMS does on-premises.

    The version is given, so exchangelib guesses none (its guess would probe with other operations).
    """
    credentials = simulator.credentials
    config = Configuration(
        service_endpoint=simulator.endpoints["onprem-ews"].url + "/EWS/Exchange.asmx",
        credentials=Credentials(credentials.onprem_username, credentials.onprem_password),
        auth_type=NTLM,
        version=Version(build=Build(15, 2, 2562, 29)),
    )
    return Account(primary_smtp_address=mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)


async def test_ntlm_impersonation_reads_the_inbox(simulator: Simulator, trust_simulator: None) -> None:
    def read() -> tuple[int, str]:
        inbox = account(simulator, ALICE).inbox  # GetFolder of root, then of the inbox
        return inbox.total_count, inbox.name

    total, name = await asyncio.to_thread(read)
    assert (total, name) == (2, "Inbox")
    request = simulator.ews_requests[-1]
    assert (request.operation, request.impersonated, request.caller) == ("GetFolder", ALICE, "CORP\\BEMSAdmin")
    assert simulator.traffic["onprem-ews"].state()["ntlm_handshakes"] >= 1


async def test_impersonation_denied_raises_exchangelibs_error(simulator: Simulator, trust_simulator: None) -> None:
    simulator.revoke_impersonation(BOB)
    with pytest.raises(ErrorImpersonateUserDenied, match="permission to impersonate"):
        await asyncio.to_thread(lambda: account(simulator, BOB).inbox)


@pytest.mark.parametrize(("kind", "back_off"), [("server_busy_fault", 1.5), ("server_busy_message", 2.0)])
async def test_server_busy_carries_its_back_off(
    simulator: Simulator, trust_simulator: None, kind: str, back_off: float
) -> None:
    """exchangelib's default retry policy fails fast: the ErrorServerBusy it raises carries BackOffMilliseconds."""
    simulator.set_ews_throttling("onprem-ews", kind, backoff_ms=int(back_off * 1000))
    with pytest.raises(ErrorServerBusy) as caught:
        await asyncio.to_thread(lambda: account(simulator, ALICE).inbox)
    if kind == "server_busy_fault":
        assert caught.value.back_off == back_off
    else:  # exchangelib reads BackOffMilliseconds from faults only; the response message's text still says it
        assert f"Suggested backoff time {int(back_off * 1000)} ms" in str(caught.value)


@pytest.fixture
async def listener(simulator: Simulator, tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.Queue[bytes]]]:
    """An HTTPS push listener with a certificate the simulator trusts; it answers with exchangelib's OK."""
    cert, key = simulator.issue_certificate(["localhost"], ["127.0.0.1"])
    (tmp_path / "listener.crt").write_bytes(cert)
    (tmp_path / "listener.key").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "listener.crt", tmp_path / "listener.key")
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def notified(request: web.Request) -> web.Response:
        await received.put(await request.read())
        return web.Response(body=SendNotification(protocol=None).ok_payload(), content_type="text/xml")

    app = web.Application()
    app.router.add_post("/ews/notify", notified)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://localhost:{runner.addresses[0][1]}/ews/notify", received
    finally:
        await runner.cleanup()


async def test_push_subscription_and_send_notification_parse(
    simulator: Simulator, trust_simulator: None, listener: tuple[str, asyncio.Queue[bytes]]
) -> None:
    """subscribe_to_push, then a message saved into the inbox: exchangelib parses the CreatedEvent callback."""
    url, received = listener
    alice = account(simulator, ALICE)

    def subscribe() -> tuple[str, str]:
        return alice.inbox.subscribe_to_push(url, event_types=["NewMailEvent", "CreatedEvent"], status_frequency=1)

    subscription_id, watermark = await asyncio.to_thread(subscribe)
    assert subscription_id in simulator.ews_subscriptions and watermark
    message = Message(account=alice, folder=alice.inbox, subject="probe")
    await asyncio.to_thread(message.save)  # CreateItem, SaveOnly, into the inbox
    assert message.id and [item.subject for item in simulator.mailbox_items(ALICE)] == ["probe"]
    events = []
    while not any(type(event).__name__ == "CreatedEvent" for event in events):
        body = await asyncio.wait_for(received.get(), timeout=10)
        notifications = list(SendNotification(protocol=None).parse(body))
        assert [n.subscription_id for n in notifications] == [subscription_id]
        events.extend(notifications[0].events)
    created = next(event for event in events if type(event).__name__ == "CreatedEvent")
    assert created.item_id.id == message.id
