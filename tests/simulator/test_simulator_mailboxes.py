"""The simulated Exchange's mailboxes, impersonation, throttling, Autodiscover redirects, Graph and app credentials.

Plain aiohttp clients over loopback, with tokens fetched straight from the simulator's Entra token
endpoint, so every assertion is about what goes over the wire.
"""

from __future__ import annotations

import itertools
import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import aiohttp
import pytest
import pytest_asyncio

from bems_simulator import Simulator
from bems_simulator.directory import UnknownMailboxError

# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")

EWS_PATH = "/EWS/Exchange.asmx"
POX_PATH = "/autodiscover/autodiscover.xml"
SOAP_PATH = "/autodiscover/autodiscover.svc"
JSON_PATH = "/autodiscover/autodiscover.json"
EXO_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ALICE, BOB, CAROL = "alice@corp.example.test", "bob@corp.example.test", "carol@contoso.test"
NOBODY = "nobody@corp.example.test"
NS = {
    "s": "http://schemas.xmlsoap.org/soap/envelope/",
    "t": "http://schemas.microsoft.com/exchange/services/2006/types",
    "m": "http://schemas.microsoft.com/exchange/services/2006/messages",
    "e": "http://schemas.microsoft.com/exchange/services/2006/errors",
    "ad": "http://schemas.microsoft.com/exchange/2010/Autodiscover",
    "pox": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006",
    "poxa": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a",
}


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def xml(self) -> ElementTree.Element:
        return ElementTree.fromstring(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One aiohttp session trusting the simulator's CA; redirects are never followed."""

    def __init__(self, simulator: Simulator, session: aiohttp.ClientSession) -> None:
        self.simulator = simulator
        self._session = session
        self._ssl = ssl.create_default_context(cafile=str(simulator.ca_file))

    def url(self, endpoint: str, path: str) -> str:
        return self.simulator.endpoints[endpoint].url + path

    async def request(self, method: str, url: str, **kwargs: Any) -> Reply:
        ssl_context = self._ssl if url.startswith("https:") else False
        async with self._session.request(method, url, ssl=ssl_context, allow_redirects=False, **kwargs) as response:
            return Reply(response.status, response.headers, await response.read())

    async def token(self, scope: str) -> str:
        credentials = self.simulator.credentials
        form = {
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "scope": scope,
            "grant_type": "client_credentials",
        }
        url = self.url("entra", f"/{credentials.tenant_id}/oauth2/v2.0/token")
        reply = await self.request("POST", url, data=form)
        assert reply.status == 200, reply.body
        return reply.json()["access_token"]

    async def onprem(self, endpoint: str, path: str, body: bytes) -> Reply:
        credentials = self.simulator.credentials
        authorization = aiohttp.encode_basic_auth(credentials.onprem_username, credentials.onprem_password)
        headers = {**_XML, "Authorization": authorization}
        return await self.request("POST", self.url(endpoint, path), data=body, headers=headers)

    async def online(self, endpoint: str, path: str, body: bytes, anchor: str = CAROL) -> Reply:
        headers = {**_XML, "Authorization": f"Bearer {await self.token(EXO_SCOPE)}", "X-AnchorMailbox": anchor}
        return await self.request("POST", self.url(endpoint, path), data=body, headers=headers)

    async def graph(self, path: str, token: str | None = None) -> Reply:
        token = token or await self.token(GRAPH_SCOPE)
        return await self.request(
            "GET", self.url("graph", "/v1.0" + path), headers={"Authorization": f"Bearer {token}"}
        )

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        reply = await self.request(method, self.simulator.admin_url + "/api/v1" + path, json=body)
        return reply.status, reply.json()


_XML = {"Content-Type": "text/xml; charset=utf-8"}


@pytest_asyncio.fixture(loop_scope="module")
async def client(simulator: Simulator) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(simulator, session)


def ews_request(impersonate: str | None, operation: str = "GetFolder") -> bytes:
    impersonation = (
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{impersonate}</t:PrimarySmtpAddress>"
        "</t:ConnectingSID></t:ExchangeImpersonation>"
        if impersonate
        else ""
    )
    body = (
        "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>"
        "<m:FolderIds><t:DistinguishedFolderId Id='inbox'/></m:FolderIds></m:GetFolder>"
        if operation == "GetFolder"
        else f"<m:{operation}/>"
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        f"<s:Envelope xmlns:s='{NS['s']}' xmlns:t='{NS['t']}' xmlns:m='{NS['m']}'>"
        f"<s:Header><t:RequestServerVersion Version='Exchange2016'/>{impersonation}</s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def pox_request(address: str) -> bytes:
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        "<Autodiscover xmlns='http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006'>"
        f"<Request><EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>{NS['poxa']}"
        "</AcceptableResponseSchema></Request></Autodiscover>"
    ).encode()


def soap_request(*mailboxes: str) -> bytes:
    users = "".join(f"<a:User><a:Mailbox>{mailbox}</a:Mailbox></a:User>" for mailbox in mailboxes)
    return (
        f"<?xml version='1.0' encoding='utf-8'?><s:Envelope xmlns:s='{NS['s']}' xmlns:a='{NS['ad']}'>"
        "<s:Header><a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion></s:Header>"
        f"<s:Body><a:GetUserSettingsRequestMessage><a:Request><a:Users>{users}</a:Users><a:RequestedSettings>"
        "<a:Setting>ExternalEwsUrl</a:Setting><a:Setting>InternalEwsUrl</a:Setting><a:Setting>NoSuchSetting</a:Setting>"
        "</a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage></s:Body></s:Envelope>"
    ).encode()


def fault(reply: Reply) -> tuple[str, str, dict[str, str]]:
    """A 500 SOAP fault's response code, message and MessageXml values."""
    assert reply.status == 500
    assert reply.headers["Content-Type"] == "text/xml; charset=utf-8"
    envelope = reply.xml()
    assert envelope.find("s:Header", NS) is None
    detail = envelope.find("s:Body/s:Fault/detail", NS)
    assert detail is not None
    faultcode = envelope.findtext("s:Body/s:Fault/faultcode", namespaces=NS)
    code = detail.findtext("e:ResponseCode", namespaces=NS)
    assert faultcode == f"a:{code}"
    values = {value.get("Name"): value.text for value in detail.iterfind("t:MessageXml/t:Value", NS)}
    return code, detail.findtext("e:Message", namespaces=NS), values


def user_response(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200
    user = reply.xml().find("s:Body/ad:GetUserSettingsResponseMessage/ad:Response/ad:UserResponses/ad:UserResponse", NS)
    assert user is not None
    settings = {
        setting.findtext("ad:Name", namespaces=NS): setting.findtext("ad:Value", namespaces=NS)
        for setting in user.iterfind("ad:UserSettings/ad:UserSetting", NS)
    }
    return {
        "code": user.findtext("ad:ErrorCode", namespaces=NS),
        "message": user.findtext("ad:ErrorMessage", namespaces=NS),
        "target": user.findtext("ad:RedirectTarget", namespaces=NS),
        "settings": settings,
        "errors": [
            error.findtext("ad:SettingName", namespaces=NS) for error in user.iterfind(".//ad:UserSettingError", NS)
        ],
    }


def pox_account(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200
    account = reply.xml().find("pox:Response/poxa:Account", {**NS, "pox": NS["poxa"]})
    assert account is not None
    return {child.tag.rpartition("}")[2]: child.text for child in account if not len(child)} | {
        "EwsUrls": [url.text for url in account.iterfind("poxa:Protocol/poxa:EwsUrl", NS)]
    }


# --- impersonation -----------------------------------------------------------------------------------


async def test_onprem_impersonation_follows_mailboxes_and_rights(client: Client) -> None:
    sim = client.simulator

    async def impersonate(mailbox: str) -> Reply:
        return await client.onprem("onprem-ews", EWS_PATH, ews_request(mailbox))

    reply = await impersonate(ALICE)
    assert reply.status == 200
    assert (
        reply.xml()
        .find("s:Body/m:GetFolderResponse/m:ResponseMessages/m:GetFolderResponseMessage", NS)
        .get("ResponseClass")
        == "Success"
    )

    code, message, values = fault(await impersonate(NOBODY))
    assert (code, message, values) == (
        "ErrorNonExistentMailbox",
        "The SMTP address has no mailbox associated with it.",
        {"SmtpAddress": NOBODY},
    )

    sim.revoke_impersonation(ALICE)
    code, message, _ = fault(await impersonate(ALICE))
    assert (code, message) == (
        "ErrorImpersonateUserDenied",
        "The account does not have permission to impersonate the requested user.",
    )
    assert (await impersonate(BOB)).status == 200
    sim.grant_impersonation(ALICE)
    assert (await impersonate(ALICE)).status == 200

    sim.revoke_impersonation()  # the whole role assignment
    assert fault(await impersonate(BOB))[0] == "ErrorImpersonateUserDenied"
    sim.grant_impersonation(BOB)  # a scoped assignment for one mailbox
    assert (await impersonate(BOB)).status == 200
    assert fault(await impersonate(ALICE))[0] == "ErrorImpersonateUserDenied"
    sim.grant_impersonation()

    sim.remove_mailbox(BOB)
    assert fault(await impersonate(BOB))[0] == "ErrorNonExistentMailbox"
    sim.add_mailbox(BOB)
    assert (await impersonate(BOB)).status == 200

    with pytest.raises(LookupError, match="unknown mailbox"):
        sim.revoke_impersonation(NOBODY)
    with pytest.raises(ValueError, match="SMTP address"):
        sim.add_mailbox("not-an-address")

    records = [r for r in sim.ews_requests if r.endpoint == "onprem-ews"]
    assert len(records) == 10
    assert {(r.caller, r.operation) for r in records} == {("CORP\\BEMSAdmin", "GetFolder")}
    assert [r.impersonated for r in records[:2]] == [ALICE, NOBODY]
    assert all(a.time <= b.time for a, b in itertools.pairwise(records))


async def test_online_app_access_governs_ews_impersonation(client: Client) -> None:
    sim = client.simulator
    assert (await client.online("online-ews", EWS_PATH, ews_request(CAROL))).status == 200

    # A mailbox the app's access leaves out (application access policy, RBAC for Applications scope): the bare
    # policy-block 403 (field facts), while a request that names no mailbox still gets its SOAP fault.
    sim.deny_app_access(CAROL)
    denied = await client.online("online-ews", EWS_PATH, ews_request(CAROL))
    assert (denied.status, denied.body) == (403, b"")
    code, _, _ = fault(await client.online("online-ews", EWS_PATH, ews_request(None)))
    assert code == "ErrorInvalidExchangeImpersonationHeaderData"
    sim.allow_app_access(CAROL)

    code, _, values = fault(await client.online("online-ews", EWS_PATH, ews_request("dave@contoso.test")))
    assert (code, values) == ("ErrorNonExistentMailbox", {"SmtpAddress": "dave@contoso.test"})
    # App-only tokens still need the header.
    code, _, _ = fault(await client.online("online-ews", EWS_PATH, ews_request(None)))
    assert code == "ErrorInvalidExchangeImpersonationHeaderData"

    record = sim.ews_requests[0]
    assert (record.endpoint, record.caller, record.operation, record.impersonated) == (
        "online-ews",
        sim.credentials.client_id,
        "GetFolder",
        CAROL,
    )


async def test_organisation_wide_blocks_answer_every_app_request_with_a_bare_403(client: Client) -> None:
    """EWSEnabled false, or an EwsAllowedAppIDs list without the app (facts file 9): every app-only request
    gets the 403, the one that names no mailbox too."""
    sim = client.simulator
    for block in ("disabled", "allow_list"):
        if block == "disabled":
            sim.set_ews_disabled(True)
        else:
            sim.set_ews_allowed_app_ids(["99999999-0000-0000-0000-000000000000"])
        for impersonate in (CAROL, None):
            reply = await client.online("online-ews", EWS_PATH, ews_request(impersonate))
            assert (reply.status, reply.body) == (403, b""), (block, impersonate)
        sim.set_ews_disabled(False)
        sim.set_ews_allowed_app_ids(None)
    sim.set_ews_allowed_app_ids([sim.credentials.client_id])
    assert (await client.online("online-ews", EWS_PATH, ews_request(CAROL))).status == 200
    assert sim.ews_state()["online-ews"]["allowed_app_ids"] == [sim.credentials.client_id]
    with pytest.raises(ValueError, match="app_ids"):
        sim.set_ews_allowed_app_ids("all")  # type: ignore[arg-type]
    status, state = await client.admin("PUT", "/ews/online-ews/allowed_app_ids", {"app_ids": None})
    assert (status, state["online-ews"]["allowed_app_ids"]) == (200, None)
    assert (await client.admin("PUT", "/ews/onprem-ews/allowed_app_ids", {"app_ids": []}))[0] == 404
    assert (await client.admin("PUT", "/ews/online-ews/allowed_app_ids", {"app_ids": [1]}))[0] == 400


# --- throttling and retirement -----------------------------------------------------------------------


async def test_throttling_shapes_carry_the_back_off(client: Client) -> None:
    sim = client.simulator
    request = ews_request(ALICE)

    sim.set_ews_throttling("onprem-ews", "server_busy_fault", backoff_ms=297749)
    code, message, values = fault(await client.onprem("onprem-ews", EWS_PATH, request))
    assert (code, message, values) == (
        "ErrorServerBusy",
        "The server cannot service this request right now. Try again later.",
        {"BackOffMilliseconds": "297749"},
    )
    # Any operation, not only the ones the simulator serves.
    assert (
        fault(await client.onprem("onprem-ews", EWS_PATH, ews_request(ALICE, "ResolveNames")))[0] == "ErrorServerBusy"
    )

    sim.set_ews_throttling("onprem-ews", "server_busy_message", backoff_ms=5000)
    reply = await client.onprem("onprem-ews", EWS_PATH, request)
    assert reply.status == 200
    envelope = reply.xml()
    assert envelope.find("s:Header/t:ServerVersionInfo", NS) is not None
    message = envelope.find("s:Body/m:GetFolderResponse/m:ResponseMessages/m:GetFolderResponseMessage", NS)
    assert message.get("ResponseClass") == "Error"
    assert message.findtext("m:ResponseCode", namespaces=NS) == "ErrorServerBusy"
    assert message.findtext("m:MessageXml/t:Value[@Name='BackOffMilliseconds']", namespaces=NS) == "5000"
    assert message.findtext("m:MessageText", namespaces=NS).endswith("Suggested backoff time 5000 ms.")
    assert message.find("m:Folders", NS) is not None

    sim.set_ews_throttling("online-ews", "connection_count")
    code, _, values = fault(await client.online("online-ews", EWS_PATH, ews_request(CAROL)))
    assert code == "ErrorExceededConnectionCount"
    assert values["Policy"] == "MaxConcurrency" and values["MaxConcurrencyLimit"] == "27"
    assert values["ErrorMessage"].endswith("Suggested backoff time 0 ms.")

    sim.set_ews_throttling("onprem-ews", "http_503", backoff_ms=2500)
    reply = await client.onprem("onprem-ews", EWS_PATH, request)
    assert (reply.status, reply.headers.get("Retry-After"), reply.body) == (503, "3", b"")
    sim.set_ews_throttling("onprem-ews", "http_503")
    reply = await client.onprem("onprem-ews", EWS_PATH, request)
    assert (reply.status, "Retry-After" in reply.headers) == (503, False)

    sim.set_ews_throttling("onprem-ews", "none")
    sim.set_ews_throttling("online-ews", "none")
    assert (await client.onprem("onprem-ews", EWS_PATH, request)).status == 200
    assert (await client.online("online-ews", EWS_PATH, ews_request(CAROL))).status == 200
    # Every authenticated request was recorded, the throttled ones included.
    assert [r.operation for r in sim.ews_requests] == ["GetFolder", "ResolveNames"] + ["GetFolder"] * 6

    with pytest.raises(ValueError, match="valid: none, server_busy_fault"):
        sim.set_ews_throttling("onprem-ews", "slow")
    with pytest.raises(ValueError, match="backoff_ms"):
        sim.set_ews_throttling("onprem-ews", "server_busy_fault", backoff_ms=-1)
    with pytest.raises(ValueError, match="backoff_ms applies to"):
        sim.set_ews_throttling("onprem-ews", "timeout_expired", backoff_ms=1000)
    with pytest.raises(LookupError, match="unknown endpoint 'graph'"):
        sim.set_ews_throttling("graph", "server_busy_fault")


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [
        ("too_many_objects_opened", "ErrorTooManyObjectsOpened", "Too many concurrent connections opened."),
        ("internal_server_transient_error", "ErrorInternalServerTransientError", "Try again later."),
        ("timeout_expired", "ErrorTimeoutExpired", "The request timed out."),
        ("internal_server_error_busy", "ErrorInternalServerError", "The operation failed."),
    ],
)
async def test_throttling_response_messages(client: Client, kind: str, code: str, text: str) -> None:
    """HTTP 200 with an error response message (facts file 1.5, 3.3, 3.4), the operation's empty results kept."""
    client.simulator.set_ews_throttling("onprem-ews", kind)
    reply = await client.onprem("onprem-ews", EWS_PATH, ews_request(ALICE))
    assert reply.status == 200
    message = reply.xml().find("s:Body/m:GetFolderResponse/m:ResponseMessages/m:GetFolderResponseMessage", NS)
    assert message.get("ResponseClass") == "Error"
    assert message.findtext("m:ResponseCode", namespaces=NS) == code
    assert message.findtext("m:MessageText", namespaces=NS).endswith(text)
    assert message.find("m:Folders", NS) is not None
    inner = {v.get("Name"): v.text for v in message.iterfind("m:MessageXml/t:Value", NS)}
    if kind == "internal_server_error_busy":
        assert inner["InnerErrorResponseCode"] == "ErrorServerBusy"
        assert inner["InnerErrorMessageText"].startswith("The server cannot service this request right now.")
    else:
        assert inner == {}


async def test_disabled_exchange_online_ews_answers_403_with_an_empty_body(client: Client) -> None:
    sim = client.simulator
    sim.set_ews_disabled(True)
    reply = await client.online("online-ews", EWS_PATH, ews_request(CAROL))
    assert (reply.status, reply.body) == (403, b"")
    # Authentication still comes first, and on-prem is not affected.
    unauthenticated = await client.request("POST", client.url("online-ews", EWS_PATH), data=ews_request(CAROL))
    assert unauthenticated.status == 401
    assert (await client.onprem("onprem-ews", EWS_PATH, ews_request(ALICE))).status == 200
    sim.set_ews_disabled(False)
    assert (await client.online("online-ews", EWS_PATH, ews_request(CAROL))).status == 200


# --- Autodiscover ------------------------------------------------------------------------------------


async def test_autodiscover_reports_the_sides_ews_url_in_every_form(client: Client) -> None:
    onprem_ews = client.url("onprem-ews", EWS_PATH)
    online_ews = client.url("online-ews", EWS_PATH)

    assert pox_account(await client.onprem("onprem-autodiscover", POX_PATH, pox_request(ALICE)))["EwsUrls"] == [
        onprem_ews,
        onprem_ews,
    ]
    assert pox_account(await client.online("online-autodiscover", POX_PATH, pox_request(CAROL)))["EwsUrls"] == [
        online_ews,
        online_ews,
    ]

    for reply, url in [
        (await client.onprem("onprem-autodiscover", SOAP_PATH, soap_request(ALICE)), onprem_ews),
        (await client.online("online-autodiscover", SOAP_PATH, soap_request(CAROL)), online_ews),
    ]:
        user = user_response(reply)
        assert user["code"] == "NoError"
        assert user["settings"] == {"ExternalEwsUrl": url, "InternalEwsUrl": url}
        assert user["errors"] == ["NoSuchSetting"]
    user = user_response(await client.onprem("onprem-autodiscover", SOAP_PATH, soap_request(NOBODY)))
    assert (user["code"], user["message"]) == ("InvalidUser", f"Invalid user '{NOBODY}'.")
    unauthenticated = await client.request("POST", client.url("onprem-autodiscover", SOAP_PATH), data=soap_request())
    assert unauthenticated.status == 401

    reply = await client.request("GET", client.url("onprem-autodiscover", f"{JSON_PATH}/v1.0/{ALICE}?Protocol=EWS"))
    assert reply.json() == {"Protocol": "EWS", "Url": onprem_ews}
    reply = await client.request("GET", client.url("online-autodiscover", f"{JSON_PATH}/v1.0/{CAROL}?Protocol=EWS"))
    assert reply.json() == {"Protocol": "EWS", "Url": online_ews}
    # Exchange Online sends an unknown user round again, counting.
    reply = await client.request(
        "GET", client.url("online-autodiscover", f"{JSON_PATH}?Email=dave%40contoso.test&Protocol=EWS&RedirectCount=1")
    )
    assert reply.status == 302
    assert reply.headers["Location"] == client.url(
        "online-autodiscover", f"{JSON_PATH}?Email=dave%40contoso.test&Protocol=EWS&RedirectCount=2"
    )
    assert b"Object moved" in reply.body

    client.simulator.set_autodiscover_ews_url("onprem-autodiscover", "https://mail.elsewhere.test/EWS/Exchange.asmx")
    assert (
        pox_account(await client.onprem("onprem-autodiscover", POX_PATH, pox_request(ALICE)))["EwsUrls"]
        == ["https://mail.elsewhere.test/EWS/Exchange.asmx"] * 2
    )
    reply = await client.onprem("onprem-autodiscover", SOAP_PATH, soap_request(ALICE))
    assert user_response(reply)["settings"]["ExternalEwsUrl"] == "https://mail.elsewhere.test/EWS/Exchange.asmx"
    client.simulator.set_autodiscover_ews_url("onprem-autodiscover", None)
    assert pox_account(await client.onprem("onprem-autodiscover", POX_PATH, pox_request(ALICE)))["EwsUrls"][0] == (
        onprem_ews
    )


async def test_autodiscover_redirects_and_the_foreign_host(client: Client) -> None:
    sim = client.simulator
    foreign = sim.endpoints["foreign"].url
    assert foreign.startswith("https://127.0.0.1:")
    redirect_url = foreign + POX_PATH

    sim.set_autodiscover_redirect("onprem-autodiscover", ALICE, "redirect_addr", "alice@corp.foreign.test")
    account = pox_account(await client.onprem("onprem-autodiscover", POX_PATH, pox_request(ALICE)))
    assert (account["Action"], account["RedirectAddr"]) == ("redirectAddr", "alice@corp.foreign.test")
    user = user_response(await client.onprem("onprem-autodiscover", SOAP_PATH, soap_request(ALICE)))
    assert (user["code"], user["target"]) == ("RedirectAddress", "alice@corp.foreign.test")

    sim.set_autodiscover_redirect("onprem-autodiscover", ALICE, "redirect_url", redirect_url)
    account = pox_account(await client.onprem("onprem-autodiscover", POX_PATH, pox_request(ALICE)))
    assert (account["Action"], account["RedirectUrl"]) == ("redirectUrl", redirect_url)
    user = user_response(await client.onprem("onprem-autodiscover", SOAP_PATH, soap_request(ALICE)))
    assert (user["code"], user["target"]) == ("RedirectUrl", redirect_url)

    # An address hosted nowhere can redirect, to plain HTTP too, on all three forms.
    plain = f"http://127.0.0.1:{sim.endpoints['foreign'].port}{POX_PATH}"
    sim.set_autodiscover_redirect("online-autodiscover", "erin@contoso.test", "http_302", plain)
    for reply in [
        await client.online("online-autodiscover", POX_PATH, pox_request("erin@contoso.test")),
        await client.online("online-autodiscover", SOAP_PATH, soap_request("erin@contoso.test")),
        await client.request(
            "GET", client.url("online-autodiscover", f"{JSON_PATH}/v1.0/erin@contoso.test?Protocol=EWS")
        ),
    ]:
        assert (reply.status, reply.headers["Location"]) == (302, plain)

    # A loop: the endpoint redirects to itself.
    own = client.url("online-autodiscover", POX_PATH)
    sim.set_autodiscover_redirect("online-autodiscover", CAROL, "redirect_url", own)
    assert pox_account(await client.online("online-autodiscover", POX_PATH, pox_request(CAROL)))["RedirectUrl"] == own
    sim.set_autodiscover_redirect("online-autodiscover", CAROL, "none")
    assert pox_account(await client.online("online-autodiscover", POX_PATH, pox_request(CAROL)))["Action"] == "settings"

    # The foreign host challenges for Basic and records whether credentials came.
    reply = await client.request("POST", redirect_url, data=pox_request(ALICE))
    assert (reply.status, reply.headers["WWW-Authenticate"]) == (401, 'Basic realm="autodiscover.co.uk"')
    leaked = aiohttp.encode_basic_auth("CORP\\BEMSAdmin", "leaked")
    await client.request("GET", foreign + "/?x=1", headers={"Authorization": leaked})
    assert [(r.method, r.path, r.authorization is not None) for r in sim.foreign.requests] == [
        ("POST", POX_PATH, False),
        ("GET", "/?x=1", True),
    ]

    with pytest.raises(ValueError, match="http:// or https:// URL"):
        sim.set_autodiscover_redirect("onprem-autodiscover", ALICE, "redirect_url", "ftp://x")
    with pytest.raises(ValueError, match="SMTP address"):
        sim.set_autodiscover_redirect("onprem-autodiscover", ALICE, "redirect_addr", "https://x")
    with pytest.raises(LookupError, match="unknown endpoint"):
        sim.set_autodiscover_redirect("onprem-ews", ALICE, "none")


# --- Graph and the app registration -------------------------------------------------------------------


async def test_graph_mail_folder_and_its_errors(client: Client) -> None:
    sim = client.simulator
    token = await client.token(GRAPH_SCOPE)
    inbox = f"/users/{CAROL}/mailFolders/inbox"

    reply = await client.graph(inbox, token)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json; odata.metadata=minimal")
    body = reply.json()
    assert body["@odata.context"] == f"https://graph.microsoft.com/v1.0/$metadata#users('{CAROL}')/mailFolders/$entity"
    assert (body["displayName"], body["totalItemCount"], body["isHidden"]) == ("Inbox", 2, False)

    async def error(path: str = inbox, bearer: str = token) -> tuple[int, str, str]:
        reply = await client.graph(path, bearer)
        assert reply.headers["request-id"] == reply.json()["error"]["innerError"]["request-id"]
        return reply.status, reply.json()["error"]["code"], reply.json()["error"]["message"]

    sim.deny_app_access(CAROL)
    assert await error() == (
        403,
        "ErrorAccessDenied",
        "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
    )
    sim.allow_app_access(CAROL)
    assert await error("/users/dave@contoso.test/mailFolders/inbox") == (
        404,
        "ErrorInvalidUser",
        "The requested user 'dave@contoso.test' is invalid.",
    )
    sim.set_graph_mailbox_not_enabled(CAROL)
    assert (await error())[:2] == (404, "MailboxNotEnabledForRESTAPI")
    sim.set_graph_mailbox_not_enabled(CAROL, False)

    sim.set_graph_throttled(True, retry_after=3)
    reply = await client.graph(inbox, token)
    assert (reply.status, reply.headers["Retry-After"], reply.json()["error"]["code"]) == (
        429,
        "3",
        "ApplicationThrottled",
    )
    sim.set_graph_throttled(False)
    assert (await client.graph(inbox, token)).status == 200

    # Tokens: missing, for another resource, without roles.
    reply = await client.request("GET", client.url("graph", "/v1.0" + inbox))
    assert (reply.status, reply.json()["error"]["message"]) == (401, "Access token is empty.")
    assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
    assert (await error(bearer=await client.token(EXO_SCOPE)))[:2] == (401, "InvalidAuthenticationToken")
    assert (await error(bearer="garbage"))[:2] == (401, "InvalidAuthenticationToken")
    sim.configure_entra(roles_granted=False)
    assert (await error(bearer=await client.token(GRAPH_SCOPE)))[:2] == (401, "NoPermissionsInAccessToken")

    app_ids = [record.app_id for record in sim.graph_requests]
    assert app_ids[0] == sim.credentials.client_id
    assert app_ids[-4:] == [None, None, None, None]
    assert all(a.time <= b.time for a, b in itertools.pairwise(sim.graph_requests))


async def test_graph_user_object_needs_user_read_all(client: Client) -> None:
    """``GET /users/{id}`` (learn.microsoft.com/graph/api/user-get): application permission User.Read.All or one
    that includes it; without, 403 Authorization_RequestDenied (Microsoft Q&A 6019739 shows the body)."""
    sim = client.simulator
    user = f"/users/{CAROL}"
    sim.configure_entra(graph_roles=["Mail.Read"])
    reply = await client.graph(user, await client.token(GRAPH_SCOPE))
    assert reply.status == 403
    error = reply.json()["error"]
    assert (error["code"], error["message"]) == (
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}

    for roles in (["Mail.Read", "User.Read.All"], ["Directory.Read.All"]):
        sim.configure_entra(graph_roles=roles)
        token = await client.token(GRAPH_SCOPE)
        sim.deny_app_access(CAROL)  # an application access policy scopes mail, not the directory
        reply = await client.graph(user, token)
        assert reply.status == 200, roles
        body = reply.json()
        assert body["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#users/$entity"
        assert (body["userPrincipalName"], body["mail"]) == (CAROL, CAROL) and body["id"]
        selected = (await client.graph(user + "?$select=id,userPrincipalName", token)).json()
        assert set(selected) == {"@odata.context", "id", "userPrincipalName"}
        assert selected["@odata.context"].endswith("#users(id,userPrincipalName)/$entity")
        sim.allow_app_access(CAROL)
    reply = await client.graph("/users/nobody@contoso.test", token)
    assert (reply.status, reply.json()["error"]["code"]) == (404, "Request_ResourceNotFound")


async def test_graph_throttles_one_mailbox(client: Client) -> None:
    """Graph's mail limits are per app and mailbox (learn.microsoft.com/graph/throttling-limits)."""
    sim = client.simulator
    sim.add_mailbox("dave@contoso.test", "online")
    token = await client.token(GRAPH_SCOPE)
    sim.set_graph_throttled(True, retry_after=4, mailbox=CAROL)
    reply = await client.graph(f"/users/{CAROL}/mailFolders/inbox", token)
    assert (reply.status, reply.headers["Retry-After"], reply.json()["error"]["code"]) == (
        429,
        "4",
        "ApplicationThrottled",
    )
    assert (await client.graph(f"/users/{CAROL.upper()}", token)).status == 429
    assert (await client.graph("/users/dave@contoso.test/mailFolders/inbox", token)).status == 200
    with pytest.raises(UnknownMailboxError):
        sim.set_graph_throttled(True, mailbox="nobody@contoso.test")
    sim.set_graph_throttled(False, mailbox=CAROL)
    assert (await client.graph(f"/users/{CAROL}/mailFolders/inbox", token)).status == 200


async def test_application_lookup_needs_application_read_all(client: Client) -> None:
    sim = client.simulator
    client_id = sim.credentials.client_id
    by_app_id = f"/applications(appId='{client_id}')"

    reply = await client.graph(by_app_id)
    assert reply.status == 403
    assert reply.json()["error"]["code"] == "Authorization_RequestDenied"
    assert reply.json()["error"]["message"] == "Insufficient privileges to complete the operation."

    sim.configure_entra(graph_roles=["Mail.Read", "User.Read.All", "Application.Read.All"])
    token = await client.token(GRAPH_SCOPE)
    secret_end = datetime(2030, 1, 31, 12, 0, tzinfo=UTC)
    sim.set_app_credential_end("secret", secret_end)
    reply = await client.graph(by_app_id, token)
    assert reply.status == 200
    application = reply.json()
    assert (application["appId"], application["displayName"]) == (client_id, "BEMS Exchange Exporter")
    [password] = application["passwordCredentials"]
    assert password["endDateTime"] == "2030-01-31T12:00:00Z"
    assert password["hint"] == sim.credentials.client_secret[:3]
    assert sim.credentials.client_secret not in reply.body.decode()
    [key] = application["keyCredentials"]
    assert (key["type"], key["usage"]) == ("AsymmetricX509Cert", "Verify")
    assert {"keyId", "startDateTime", "endDateTime", "customKeyIdentifier"} <= key.keys()

    query = "?$filter=" + quote(f"appId eq '{client_id}'") + "&$select=appId,passwordCredentials,keyCredentials"
    reply = await client.graph("/applications" + query, token)
    [listed] = reply.json()["value"]
    assert set(listed) == {"appId", "passwordCredentials", "keyCredentials"}
    assert listed["passwordCredentials"] == application["passwordCredentials"]
    reply = await client.graph("/applications?$filter=" + quote("appId eq 'someone-else'"), token)
    assert reply.json()["value"] == []
    reply = await client.graph("/applications(appId='someone-else')", token)
    assert (reply.status, reply.json()["error"]["code"]) == (404, "Request_ResourceNotFound")

    with pytest.raises(ValueError, match="valid: secret, certificate"):
        sim.set_app_credential_end("password", secret_end)
    with pytest.raises(ValueError, match="time zone"):
        sim.set_app_credential_end("certificate", datetime(2030, 1, 1))  # naive: no time zone
    with pytest.raises(ValueError, match="must be a list"):
        sim.configure_entra(graph_roles="Mail.Read")


# --- admin API ---------------------------------------------------------------------------------------


async def test_admin_api_switches_every_toggle(client: Client) -> None:
    sim = client.simulator

    assert await client.admin("GET", "/mailboxes") == (
        200,
        {
            "onprem": {ALICE: {"impersonation": True}, BOB: {"impersonation": True}},
            "online": {CAROL: {"app_access": True}},
        },
    )
    status, state = await client.admin("PATCH", f"/mailboxes/{ALICE}", {"impersonation": False})
    assert (status, state["onprem"][ALICE]) == (200, {"impersonation": False})
    status, state = await client.admin("PATCH", "/mailboxes", {"app_access": False})
    assert (status, state["online"][CAROL]) == (200, {"app_access": False})
    assert (await client.admin("PATCH", f"/mailboxes/{CAROL}", {"impersonation": False}))[0] == 404
    assert (await client.admin("PATCH", f"/mailboxes/{ALICE}", {"impersonation": "no"}))[0] == 400
    status, state = await client.admin("PUT", "/mailboxes/dave@contoso.test", {"exchange": "online"})
    assert (status, "dave@contoso.test" in state["online"]) == (200, True)
    assert (await client.admin("PUT", "/mailboxes/erin@contoso.test", {"exchange": "mars"}))[0] == 400
    assert (await client.admin("DELETE", "/mailboxes/dave@contoso.test"))[0] == 200
    assert (await client.admin("DELETE", "/mailboxes/dave@contoso.test"))[0] == 404

    status, state = await client.admin("PUT", "/ews/onprem-ews/throttling", {"kind": "server_busy_message"})
    assert (status, state) == (
        200,
        {
            "onprem-ews": {
                "throttling": {"kind": "server_busy_message", "backoff_ms": 5000},
                "disabled": False,
                "allowed_app_ids": None,
                "mailbox_ews_enabled": {},
            }
        },
    )
    assert (await client.admin("PUT", "/ews/onprem-ews/throttling", {"kind": "busy"}))[0] == 400
    assert (await client.admin("PUT", "/ews/entra/throttling", {"kind": "none"}))[0] == 404
    assert (await client.admin("DELETE", "/ews/onprem-ews/throttling"))[0] == 200
    assert (await client.admin("PUT", "/ews/online-ews/disabled", {"disabled": True}))[1]["online-ews"]["disabled"]
    assert (await client.admin("PUT", "/ews/onprem-ews/disabled", {"disabled": True}))[0] == 404
    assert (await client.admin("PUT", "/ews/online-ews/disabled", {"disabled": "yes"}))[0] == 400
    assert sim.ews_state()["online-ews"]["disabled"] is True
    await client.online("online-ews", EWS_PATH, ews_request(CAROL))
    status, records = await client.admin("GET", "/ews/requests")
    assert (status, [(r["endpoint"], r["impersonated"]) for r in records]) == (200, [("online-ews", CAROL)])

    status, state = await client.admin(
        "PUT", f"/autodiscover/onprem-autodiscover/redirects/{ALICE}", {"kind": "http_302", "target": "http://x.test/"}
    )
    assert (status, state["onprem-autodiscover"]["redirects"]) == (
        200,
        {ALICE: {"kind": "http_302", "target": "http://x.test/"}},
    )
    assert (await client.admin("DELETE", f"/autodiscover/onprem-autodiscover/redirects/{ALICE}"))[1] == {
        "onprem-autodiscover": {"ews_url": client.url("onprem-ews", EWS_PATH), "redirects": {}}
    }
    assert (await client.admin("PUT", "/autodiscover/graph/ews_url", {"url": "https://x.test/"}))[0] == 404
    status, state = await client.admin("PUT", "/autodiscover/online-autodiscover/ews_url", {"url": "https://x.test/"})
    assert (status, state["online-autodiscover"]["ews_url"]) == (200, "https://x.test/")
    assert (await client.admin("DELETE", "/autodiscover/online-autodiscover/ews_url"))[0] == 200
    await client.request("GET", sim.endpoints["foreign"].url + "/")
    assert (await client.admin("GET", "/foreign/requests"))[1][0]["carried_authorization"] is False

    assert await client.admin("PATCH", "/graph", {"throttled": True, "retry_after": 2}) == (
        200,
        {"throttled": True, "throttled_mailboxes": [], "retry_after_seconds": 2, "mailboxes_not_enabled": []},
    )
    status, state = await client.admin("PATCH", "/graph", {"throttled": True, "mailbox": CAROL})
    assert (status, state["throttled_mailboxes"]) == (200, [CAROL])
    assert (await client.admin("PATCH", "/graph", {"throttled": True, "mailbox": "nobody@contoso.test"}))[0] == 404
    status, state = await client.admin("PATCH", "/graph", {"throttled": False, "mailbox": CAROL})
    assert (status, state["throttled_mailboxes"]) == (200, [])
    assert (await client.admin("PUT", f"/graph/mailboxes/{CAROL}", {"enabled": False}))[1]["mailboxes_not_enabled"] == [
        CAROL
    ]
    assert (await client.admin("PUT", f"/graph/mailboxes/{ALICE}", {"enabled": False}))[0] == 404
    await client.graph("/users/x/mailFolders/inbox", token="none")
    assert (await client.admin("GET", "/graph/requests"))[1][0]["app_id"] is None

    status, credential = await client.admin(
        "PUT", "/auth/entra/credentials/certificate", {"end": "2031-05-01T00:00:00Z"}
    )
    assert (status, credential["end"]) == (200, "2031-05-01T00:00:00Z")
    assert (await client.admin("PUT", "/auth/entra/credentials/certificate", {"end": "tomorrow"}))[0] == 400
    assert (await client.admin("PATCH", "/auth/entra", {"graph_roles": ["Application.Read.All"]}))[1][
        "graph_roles"
    ] == ["Application.Read.All"]
    assert (await client.admin("GET", "/auth"))[1]["entra"]["app_credentials"]["certificate"]["end"] == (
        "2031-05-01T00:00:00Z"
    )
