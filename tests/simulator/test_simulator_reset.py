"""``Simulator.reset`` (and ``POST /api/v1/reset``): a simulator changed every way there is, then reset, equals
the simulator as it started, on the same ports and with the same CA.

Every route of the admin API takes part: each GET is in the snapshot, each change is made (a new route
fails the test until it is added below), and the Simulator's attributes are split into those that last
from start to stop (listed here, each reset or unchanged by design) and those ``_fresh_state`` rebuilds.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from test_simulator_mailboxes import ALICE, BOB, CAROL, EWS_PATH, GRAPH_SCOPE, Client

from bems_simulator import CertificateAuthority, Simulator
from bems_simulator.admin import build_admin_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

# What a GET route's placeholders stand for in the snapshot.
PLACEHOLDERS = {"mailbox": [ALICE, BOB, CAROL], "protocol": ["ews", "graph"]}
NEW_MAILBOX = "dave@corp.example.test"
# Attributes that outlive a reset: listeners and their ports, credentials, key material, fixed settings.
# A new attribute belongs in Simulator._fresh_state(), or here once reset() puts it back as it was.
DURABLE = {
    "state_dir", "host", "ca_file", "endpoints", "timescale", "_graph_roles", "_admin_port", "_admin_runner",
    "_admin_url", "_credentials", "_proxy", "_certificates", "_entra", "_original_ca", "_trusted_ca",
    "_callbacks", "hostile",
}  # fmt: skip
LATER = (datetime.now(UTC) + timedelta(days=3)).isoformat().replace("+00:00", "Z")
# Every change the admin API offers: (method, route as the router names it, path, body).
ADMIN_CHANGES: list[tuple[str, str, str, Any]] = [
    ("PUT", "/api/v1/endpoints/{name}/fault", "/endpoints/graph/fault", {"fault": "hang"}),
    ("DELETE", "/api/v1/endpoints/{name}/fault", "/endpoints/entra/fault", None),
    ("PUT", "/api/v1/auth/account", "/auth/account", {"fault": "locked"}),
    ("PUT", "/api/v1/auth/endpoints/{name}", "/auth/endpoints/onprem-ews", {"methods": ["ntlm"]}),
    ("PUT", "/api/v1/auth/endpoints/{name}", "/auth/endpoints/onprem-autodiscover", {"client_certificate": "require"}),
    ("POST", "/api/v1/auth/client_certificates", "/auth/client_certificates", {"variant": "mapped"}),
    ("PUT", "/api/v1/auth/kerberos", "/auth/kerberos", {"keytab": "/nonexistent/http.keytab"}),
    ("PUT", "/api/v1/auth/hybrid_modern_auth", "/auth/hybrid_modern_auth", {"enabled": True}),
    ("PATCH", "/api/v1/auth/entra", "/auth/entra", {"throttled": True, "graph_roles": ["Mail.ReadWrite"]}),
    ("PUT", "/api/v1/auth/entra/credentials/{kind}", "/auth/entra/credentials/secret", {"end": LATER}),
    ("PUT", "/api/v1/mailboxes/{mailbox}", f"/mailboxes/{NEW_MAILBOX}", {"exchange": "onprem"}),
    ("DELETE", "/api/v1/mailboxes/{mailbox}", f"/mailboxes/{BOB}", None),
    ("POST", "/api/v1/mailboxes/population", "/mailboxes/population", {"count": 3, "moved_every": 2}),
    ("PATCH", "/api/v1/mailboxes/{mailbox}", f"/mailboxes/{CAROL}", {"app_access": False}),
    ("PATCH", "/api/v1/mailboxes", "/mailboxes", {"impersonation": False}),
    ("PUT", "/api/v1/ews/{name}/throttling", "/ews/onprem-ews/throttling", {"kind": "server_busy_fault"}),
    ("DELETE", "/api/v1/ews/{name}/throttling", "/ews/online-ews/throttling", None),
    ("PUT", "/api/v1/ews/{name}/disabled", "/ews/online-ews/disabled", {"disabled": True}),
    ("PUT", "/api/v1/ews/{name}/allowed_app_ids", "/ews/online-ews/allowed_app_ids", {"app_ids": ["other"]}),
    ("PUT", "/api/v1/ews/{name}/mailboxes/{mailbox}", f"/ews/online-ews/mailboxes/{CAROL}", {"ews_enabled": False}),
    ("PUT", "/api/v1/exchange_admin/fault", "/exchange_admin/fault", {"fault": "throttled", "retry_after": 30}),
    (
        "PUT",
        "/api/v1/autodiscover/{name}/redirects/{mailbox}",
        f"/autodiscover/onprem-autodiscover/redirects/{ALICE}",
        {"kind": "redirect_addr", "target": BOB},
    ),
    (
        "DELETE",
        "/api/v1/autodiscover/{name}/redirects/{mailbox}",
        f"/autodiscover/online-autodiscover/redirects/{CAROL}",
        None,
    ),
    ("PUT", "/api/v1/autodiscover/{name}/ews_url", "/autodiscover/onprem-autodiscover/ews_url", {"url": "https://elsewhere.test/EWS/Exchange.asmx"}),
    ("DELETE", "/api/v1/autodiscover/{name}/ews_url", "/autodiscover/online-autodiscover/ews_url", None),
    ("PATCH", "/api/v1/graph", "/graph", {"throttled": True, "retry_after": 3, "mailbox": CAROL}),
    ("PUT", "/api/v1/graph/mailboxes/{mailbox}", f"/graph/mailboxes/{CAROL}", {"enabled": False}),
    ("PATCH", "/api/v1/graph/service_health", "/graph/service_health", {"page_size": 2}),
    ("PUT", "/api/v1/graph/service_health/services/{service_id}", "/graph/service_health/services/Exchange",
     {"status": "ServiceDegradation"}),
    ("PUT", "/api/v1/graph/service_health/issues/{issue_id}", "/graph/service_health/issues/EX1",
     {"title": "Users can't access email"}),
    ("PUT", "/api/v1/graph/service_health/issues/{issue_id}", "/graph/service_health/issues/EX2",
     {"service": "OrgLiveID", "classification": "Advisory", "title": "Sign-in delays"}),
    ("DELETE", "/api/v1/graph/service_health/issues/{issue_id}", "/graph/service_health/issues/EX1", None),
    ("PUT", "/api/v1/push/{protocol}/fault", "/push/ews/fault", {"kind": "delayed", "delay_seconds": 2}),
    ("DELETE", "/api/v1/push/{protocol}/fault", "/push/graph/fault", None),
    ("PUT", "/api/v1/bems/fault", "/bems/fault", {"fault": "wrong_echo"}),
    ("PUT", "/api/v1/proxy/fault", "/proxy/fault", {"fault": "refuse"}),
    ("DELETE", "/api/v1/proxy/fault", "/proxy/fault", None),
]  # fmt: skip
# These take ids that exist only once the traffic below made them: (method, route, path with {item}/{subscription}).
ADMIN_CHANGES_ON_RECORDS = [
    ("POST", "/api/v1/mailboxes/{mailbox}/items/{item_id}/move", f"/mailboxes/{ALICE}/items/{{item}}/move"),
    ("DELETE", "/api/v1/mailboxes/{mailbox}/items/{item_id}", f"/mailboxes/{CAROL}/items/{{item}}"),
    (
        "POST",
        "/api/v1/push/graph/subscriptions/{subscription_id}/lifecycle",
        "/push/graph/subscriptions/{subscription}/lifecycle",
    ),
]  # fmt: skip


def admin_routes(simulator: Simulator) -> list[tuple[str, str]]:
    app = build_admin_app(simulator)
    return [(route.method, route.resource.canonical) for route in app.router.routes() if route.resource is not None]


async def snapshot(client: Client) -> dict[str, Any]:
    """Every GET of the admin API, and what the simulator holds that the admin API does not show."""
    simulator = client.simulator
    state: dict[str, Any] = {}
    for method, route in admin_routes(simulator):
        if method != "GET":
            continue
        names = re.findall(r"{(\w+)}", route)
        for values in itertools.product(*(PLACEHOLDERS[name] for name in names)):
            path = route
            for name, value in zip(names, values, strict=True):
                path = path.replace(f"{{{name}}}", value)
            reply = await client.request("GET", simulator.admin_url + path)
            state[path] = (reply.status, reply.json())
    proxy = simulator.proxy
    state["proxy"] = (proxy.url, str(proxy.fault), list(proxy.requests), proxy._authorized(""))
    hostile = simulator.hostile
    state["hostile"] = (list(hostile.requests), list(hostile.trap_requests), list(hostile.hangups))
    state["ca_file"] = simulator.ca_file.read_bytes()
    state["admin_url"] = simulator.admin_url
    return state


def ews_envelope(body: str, impersonate: str) -> bytes:
    return (
        "<?xml version='1.0' encoding='utf-8'?><s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'"
        " xmlns:t='http://schemas.microsoft.com/exchange/services/2006/types'"
        " xmlns:m='http://schemas.microsoft.com/exchange/services/2006/messages'>"
        "<s:Header><t:RequestServerVersion Version='Exchange2016'/><t:ExchangeImpersonation><t:ConnectingSID>"
        f"<t:PrimarySmtpAddress>{impersonate}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


CREATE_ITEM = (
    "<m:CreateItem MessageDisposition='SaveOnly'><m:SavedItemFolderId><t:DistinguishedFolderId Id='inbox'/>"
    "</m:SavedItemFolderId><m:Items><t:Message><t:Subject>probe</t:Subject>"
    "<t:Body BodyType='Text'>probe</t:Body></t:Message></m:Items></m:CreateItem>"
)


def subscribe(url: str) -> str:
    return (
        "<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id='inbox'/></t:FolderIds>"
        "<t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes>"
        f"<t:StatusFrequency>1</t:StatusFrequency><t:URL>{url}</t:URL></m:PushSubscriptionRequest></m:Subscribe>"
    )


async def make_traffic(client: Client) -> dict[str, str]:
    """Requests that leave records everywhere: items, subscriptions, request logs, token counts, traffic."""
    simulator = client.simulator
    bems_url = simulator.endpoints["bems"].url + "/notificationClient"
    for body in (CREATE_ITEM, subscribe(bems_url)):
        assert (await client.onprem("onprem-ews", EWS_PATH, ews_envelope(body, ALICE))).status == 200
    simulator.configure_entra(graph_roles=["Mail.Read", "Mail.ReadWrite"])  # Graph's write needs the second
    token = await client.token(GRAPH_SCOPE)
    headers = {"Authorization": f"Bearer {token}"}
    graph = simulator.endpoints["graph"].url + "/v1.0"
    message = {"subject": "probe", "body": {"contentType": "Text", "content": "probe"}}
    messages = f"{graph}/users/{CAROL}/mailFolders/inbox/messages"
    reply = await client.request("POST", messages, json=message, headers=headers)
    assert reply.status == 201, reply.body
    subscription = {
        "changeType": "created",
        "notificationUrl": bems_url,
        "lifecycleNotificationUrl": bems_url,
        "resource": f"users/{CAROL}/mailFolders('inbox')/messages",
        "expirationDateTime": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    reply = await client.request("POST", graph + "/subscriptions", json=subscription, headers=headers)
    assert reply.status == 201, reply.body
    await client.request("GET", simulator.endpoints["foreign"].url + "/anything")
    return {"item": simulator.mailbox_items(ALICE)[0].id, "subscription": reply.json()["id"]}


async def change_everything(client: Client) -> None:
    simulator = client.simulator
    records = await make_traffic(client)
    for method, _, path, body in ADMIN_CHANGES:
        status, answer = await client.admin(method, path, body)
        assert status == 200, (method, path, answer)
    carol_item = simulator.mailbox_items(CAROL)[0].id
    for (method, _, template), item in zip(ADMIN_CHANGES_ON_RECORDS, (records["item"], carol_item, None), strict=True):
        path = template.format(item=item, subscription=records["subscription"])
        body = (
            {"folder": "deleteditems"}
            if path.endswith("/move")
            else {"event": "missed"}
            if "lifecycle" in path
            else None
        )
        status, answer = await client.admin(method, path, body)
        assert status == 200, (method, path, answer)
    # A refused logon, while the account is locked.
    assert (await client.onprem("onprem-ews", EWS_PATH, ews_envelope(CREATE_ITEM, ALICE))).status == 401
    # What only the Python API changes.
    await simulator.set_fault("onprem-autodiscover", "redirect_http")
    await client.onprem("onprem-autodiscover", "/autodiscover/autodiscover.xml", b"<x/>")
    await simulator.rotate_ca()
    simulator.ca_file.write_bytes(CertificateAuthority.create("Someone else's CA").cert_pem)
    simulator.proxy.require_credentials("user", "password")
    await simulator.proxy.set_fault("deny")
    reader, writer = await asyncio.open_connection("127.0.0.1", simulator.proxy.port)
    writer.write(b"CONNECT localhost:1 HTTP/1.1\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 407")
    writer.close()


@pytest_asyncio.fixture(loop_scope="module")  # on the loop of the tests and of the module's simulator
async def client(simulator: Simulator) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(simulator, session)


def push_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task.get_name().startswith(("EWS push", "Graph webhooks"))}


async def test_every_admin_change_is_made_here(simulator: Simulator) -> None:
    changes = {(method, route) for method, route, *_ in ADMIN_CHANGES + ADMIN_CHANGES_ON_RECORDS}
    offered = {(method, route) for method, route in admin_routes(simulator) if method not in ("GET", "HEAD")}
    assert changes == offered - {("POST", "/api/v1/reset")}


@pytest.mark.parametrize("through", ["python", "admin API"])
async def test_a_reset_simulator_equals_a_fresh_one(simulator: Simulator, client: Client, through: str) -> None:
    fresh = await snapshot(client)
    attributes = dict(vars(simulator))
    await change_everything(client)
    changed = await snapshot(client)
    assert {key for key in fresh if changed[key] != fresh[key]} >= {
        f"/api/v1/{path}"
        for path in (
            "endpoints",
            "auth",
            "mailboxes",
            "ews",
            "autodiscover",
            "graph",
            "push",
            "bems",
            "exchange_admin",
            "proxy",
        )
    } | {"proxy", "hostile", "ca_file", "/api/v1/traffic", "/api/v1/ews/requests", "/api/v1/graph/requests"}
    tasks = push_tasks()
    assert tasks

    if through == "python":
        await simulator.reset()
    else:
        status, listing = await client.admin("POST", "/reset")
        assert status == 200
        assert listing == fresh["/api/v1/endpoints"][1]

    assert await snapshot(client) == fresh
    assert all(task.done() for task in tasks)
    assert set(vars(simulator)) == set(attributes)
    kept = {name for name, value in vars(simulator).items() if value is attributes[name]}
    assert kept == DURABLE, "rebuild the new state in Simulator._fresh_state(), or reset it and list it in DURABLE"
    # Healthy again end to end: the original CA verifies every endpoint, the account signs in.
    assert (await client.onprem("onprem-ews", EWS_PATH, ews_envelope(CREATE_ITEM, ALICE))).status == 200


async def test_the_admin_reset_takes_no_body_but_the_empty_object(client: Client) -> None:
    assert (await client.admin("POST", "/reset", {}))[0] == 200
    status, answer = await client.admin("POST", "/reset", {"everything": True})
    assert status == 400
    assert answer == {"error": "everything: unknown key (the body takes none)"}
