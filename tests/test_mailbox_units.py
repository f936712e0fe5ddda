"""Classification of realistic Exchange, Autodiscover and Graph answers, and the scenario verdict.

Unit tests: the answers are the wire samples of the protocol reference, handed to the classifiers
without a network; the live paths are covered against the simulator elsewhere.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from exporter import autodiscover, scenario
from exporter.config import AuthMethod, Config, Exchange, Scenario, load_config
from exporter.httpclient import HttpResponse
from exporter.probes import impersonation, planned_checks
from exporter.probes.base import ProbeContext
from exporter.probes.graph import _judge as judge_graph
from exporter.resources import Resources
from exporter.results import CheckResult, Measurement, ProbeFailure, Reason, Recorder
from exporter.store import ResultStore

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"
ERRORS = "http://schemas.microsoft.com/exchange/services/2006/errors"
MESSAGES = "http://schemas.microsoft.com/exchange/services/2006/messages"


def fault(code: str, text: str, message_xml: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault>'
        f'<faultcode xmlns:a="{TYPES}">a:{code}</faultcode><faultstring xml:lang="en-US">{text}</faultstring>'
        f'<detail><e:ResponseCode xmlns:e="{ERRORS}">{code}</e:ResponseCode><e:Message xmlns:e="{ERRORS}">{text}'
        f"</e:Message>{message_xml}</detail></s:Fault></s:Body></s:Envelope>"
    ).encode()


BACKOFF_XML = f'<t:MessageXml xmlns:t="{TYPES}"><t:Value Name="BackOffMilliseconds">297749</t:Value></t:MessageXml>'
SERVER_BUSY_MESSAGE = (
    f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body>'
    f'<m:GetFolderResponse xmlns:m="{MESSAGES}" xmlns:t="{TYPES}"><m:ResponseMessages>'
    '<m:GetFolderResponseMessage ResponseClass="Error"><m:MessageText>The server cannot service this request right '
    "now. Try again later., This operation exceeds the throttling budget for policy part 'ConcurrentSyncCalls', "
    "policy value '5',  Budget type: 'Ews'.  Suggested backoff time 5000 ms.</m:MessageText>"
    "<m:ResponseCode>ErrorServerBusy</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
    '<m:MessageXml><t:Value Name="BackOffMilliseconds">5000</t:Value></m:MessageXml>'
    "</m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"
).encode()
GET_FOLDER_OK = (
    f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body>'
    f'<m:GetFolderResponse xmlns:m="{MESSAGES}" xmlns:t="{TYPES}"><m:ResponseMessages>'
    '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
    "</m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"
).encode()

CONFIG = """
scenario: onprem-bems-hybrid
credentials:
  bemsadmin: {username: 'CORP\\BEMSAdmin', password: pw-not-used}
  app: {tenant_id: contoso.onmicrosoft.com, client_id: 11111111-2222-3333-4444-555555555555, client_secret: s}
targets:
  - {name: onprem-ews, kind: ews, exchange: onprem, url: 'https://mail.corp.example.com/EWS/Exchange.asmx',
     credential: bemsadmin, auth: [basic, ntlm], mailboxes: [alice@corp.example.com]}
  - {name: onprem-ad, kind: autodiscover, exchange: onprem, url: 'https://autodiscover.corp.example.com/',
     credential: bemsadmin, auth: [ntlm], mailboxes: [alice@corp.example.com]}
  - {name: online-ews, kind: ews, exchange: online, url: 'https://outlook.office365.com/EWS/Exchange.asmx',
     credential: app, mailboxes: [carol@contoso.com]}
  - {name: online-ad, kind: autodiscover, exchange: online, url: 'https://outlook.office365.com/',
     mailboxes: [carol@contoso.com]}
  - {name: graph, kind: graph, exchange: online, credential: app, mailboxes: [carol@contoso.com]}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "c.yml"
    path.write_text(CONFIG)
    return load_config(path)


@pytest.fixture
async def ctx(config: Config):  # type: ignore[no-untyped-def]
    resources = Resources()
    yield ProbeContext(config, Recorder("onprem-ews", "impersonation"), 5.0, resources)
    await resources.close()


def answer(status: int, body: bytes = b"", **headers: str) -> HttpResponse:
    return HttpResponse(status, tuple(headers.items()), body, "https://mail.corp.example.com/EWS/Exchange.asmx")


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            500,
            fault(
                "ErrorImpersonateUserDenied", "The account does not have permission to impersonate the requested user."
            ),
            Reason.IMPERSONATION_DENIED,
        ),
        (
            500,
            fault("ErrorImpersonationDenied", "Impersonation through this server is denied."),
            Reason.IMPERSONATION_DENIED,
        ),
        (
            500,
            fault(
                "ErrorNonExistentMailbox",
                "The SMTP address has no mailbox associated with it.",
                f'<t:MessageXml xmlns:t="{TYPES}"><t:Value Name="SmtpAddress">x</t:Value></t:MessageXml>',
            ),
            Reason.MAILBOX_NOT_FOUND,
        ),
        (
            500,
            fault("ErrorServerBusy", "The server cannot service this request right now. Try again later.", BACKOFF_XML),
            Reason.THROTTLED,
        ),
        (200, SERVER_BUSY_MESSAGE, Reason.THROTTLED),
        (
            500,
            fault(
                "ErrorExceededConnectionCount",
                "You have exceeded the available concurrent connections for your "
                "account.  Try again once your other requests have completed.",
            ),
            Reason.THROTTLED,
        ),
        (500, fault("ErrorSchemaValidation", "The request failed schema validation."), Reason.SOAP_FAULT),
        (401, b"", Reason.UNAUTHORIZED),
        (200, b"<html><body>Outlook Web App</body></html>", Reason.BAD_RESPONSE),
        (503, b"", Reason.BAD_RESPONSE),
    ],
)
async def test_impersonation_answers(ctx: ProbeContext, config: Config, status: int, body: bytes,
                                     reason: Reason) -> None:  # fmt: skip
    target = config.targets_by_name()["onprem-ews"]
    with pytest.raises(ProbeFailure) as caught:
        impersonation.judge(ctx, target, "alice@corp.example.com", AuthMethod.NTLM, answer(status, body))
    assert caught.value.reason == reason, caught.value.message
    if reason == Reason.IMPERSONATION_DENIED:
        assert (
            "New-ManagementRoleAssignment -Name:BlackBerryAppImpersonation -Role:ApplicationImpersonation "
            "-User:BEMSAdmin" in caught.value.hint
        )


async def test_success_and_ews_disabled(ctx: ProbeContext, config: Config) -> None:
    onprem, online = config.targets_by_name()["onprem-ews"], config.targets_by_name()["online-ews"]
    assert "inbox opened" in impersonation.judge(ctx, onprem, "a@b", AuthMethod.BASIC, answer(200, GET_FOLDER_OK))
    with pytest.raises(ProbeFailure) as caught:
        impersonation.judge(ctx, online, "carol@contoso.com", AuthMethod.OAUTH, answer(403))
    assert caught.value.reason == Reason.EWS_DISABLED and "2027-04-01" in caught.value.hint
    with pytest.raises(ProbeFailure) as caught:  # on-premises, a 403 is no retirement
        impersonation.judge(ctx, onprem, "a@b", AuthMethod.BASIC, answer(403))
    assert caught.value.reason == Reason.BAD_RESPONSE


async def test_server_busy_starts_the_back_off(ctx: ProbeContext, config: Config) -> None:
    target = config.targets_by_name()["onprem-ews"]
    with pytest.raises(ProbeFailure):
        impersonation.judge(ctx, target, "a@b", AuthMethod.NTLM, answer(200, SERVER_BUSY_MESSAGE))
    remaining = ctx.resources.backoff.remaining("bemsadmin", "mail.corp.example.com")
    assert 4.5 < remaining <= 5.0
    assert ctx.resources.backoff.remaining("app", "mail.corp.example.com") == 0  # other accounts untouched
    assert ctx.resources.backoff.remaining("bemsadmin", "other.corp.example.com") == 0


def graph_answer(status: int, body: str, **headers: str) -> HttpResponse:
    return HttpResponse(status, tuple(headers.items()), body.encode(), "https://graph.microsoft.com/v1.0/x")


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            403,
            '{"error":{"code":"ErrorAccessDenied","message":"Access to OData is disabled: [RAOP] : Blocked by tenant '
            'configured AppOnly AccessPolicy settings."}}',
            Reason.FORBIDDEN,
        ),
        (
            404,
            '{"error":{"code":"ErrorInvalidUser","message":"The requested user \'x@contoso.com\' is invalid."}}',
            Reason.MAILBOX_NOT_FOUND,
        ),
        (
            404,
            '{"error":{"code":"MailboxNotEnabledForRESTAPI","message":"The mailbox is either inactive, soft-deleted, '
            'or is hosted on-premise."}}',
            Reason.MAILBOX_NOT_FOUND,
        ),
        (
            401,
            '{"error":{"code":"InvalidAuthenticationToken","message":"Access token has expired or is not yet valid."}}',
            Reason.UNAUTHORIZED,
        ),
        (
            429,
            '{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}',
            Reason.THROTTLED,
        ),
        (200, "<html/>", Reason.BAD_RESPONSE),
    ],
)
async def test_graph_answers(ctx: ProbeContext, config: Config, status: int, body: str, reason: Reason) -> None:
    target = config.targets_by_name()["graph"]
    with pytest.raises(ProbeFailure) as caught:
        judge_graph(ctx, target, "https://graph.microsoft.com/v1.0/x", "carol@contoso.com",
                    graph_answer(status, body, **({"Retry-After": "7"} if status == 429 else {})))  # fmt: skip
    assert caught.value.reason == reason
    if status == 429:
        assert 6.5 < ctx.resources.backoff.remaining("app", "graph.microsoft.com") <= 7.0
    ok = graph_answer(200, '{"id":"AAMkAGVmMDEzM","displayName":"Inbox","totalItemCount":60}')
    assert "60 items" in judge_graph(ctx, target, "u", "carol@contoso.com", ok)


POX_SETTINGS = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">
  <Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a">
    <Account><AccountType>email</AccountType><Action>settings</Action>
      <Protocol><Type>EXCH</Type><EwsUrl>https://ex01.corp.example.com/EWS/Exchange.asmx</EwsUrl></Protocol>
      <Protocol><Type>EXPR</Type><EwsUrl>https://mail.corp.example.com/EWS/Exchange.asmx</EwsUrl></Protocol>
    </Account></Response></Autodiscover>"""
POX_REDIRECT_ADDR = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">
  <Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a">
    <Account><Action>redirectAddr</Action><RedirectAddr>elvin@mail.contoso.com</RedirectAddr></Account>
  </Response></Autodiscover>"""
POX_ERROR = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006">
  <Response><Error Time="12:03:32.8803744" Id="2422600485"><ErrorCode>500</ErrorCode>
  <Message>The email address can't be found.</Message><DebugData /></Error></Response></Autodiscover>"""
SOAP_SETTINGS = b"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:a="http://www.w3.org/2005/08/addressing">
<s:Body><GetUserSettingsResponseMessage xmlns="http://schemas.microsoft.com/exchange/2010/Autodiscover">
<Response xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><ErrorCode>NoError</ErrorCode><ErrorMessage/>
<UserResponses><UserResponse><ErrorCode>NoError</ErrorCode><ErrorMessage>No error.</ErrorMessage>
<RedirectTarget i:nil="true"/><UserSettingErrors/><UserSettings>
<UserSetting i:type="StringSetting"><Name>ExternalEwsUrl</Name><Value>https://mail.contoso.com/EWS/Exchange.asmx</Value></UserSetting>
</UserSettings></UserResponse></UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"""


def test_autodiscover_readers() -> None:
    assert autodiscover.read_pox(answer(200, POX_SETTINGS)).ews_url == "https://mail.corp.example.com/EWS/Exchange.asmx"
    assert autodiscover.read_pox(answer(200, POX_REDIRECT_ADDR)).redirect_address == "elvin@mail.contoso.com"
    with pytest.raises(ProbeFailure) as caught:
        autodiscover.read_pox(answer(200, POX_ERROR))
    assert caught.value.reason == Reason.MAILBOX_NOT_FOUND
    assert autodiscover.read_soap(answer(200, SOAP_SETTINGS)).ews_url == "https://mail.contoso.com/EWS/Exchange.asmx"
    redirect = SOAP_SETTINGS.replace(b"<ErrorCode>NoError</ErrorCode><ErrorMessage>No error.", b"<ErrorCode>"
                                     b"RedirectUrl</ErrorCode><ErrorMessage>Redirection URL.", 1)  # fmt: skip
    redirect = redirect.replace(b'<RedirectTarget i:nil="true"/>', b"<RedirectTarget>https://b.contoso.com/x"
                                b"</RedirectTarget>")  # fmt: skip
    # The first ErrorCode is the request's; the user response carries the redirect.
    assert autodiscover.read_soap(answer(200, redirect.replace(b"RedirectUrl</ErrorCode>", b"NoError</ErrorCode>", 1)
                                         )).ews_url  # fmt: skip
    json_answer = b'{"Protocol":"EWS","Url":"https://outlook.office365.com/EWS/Exchange.asmx"}'
    assert autodiscover.read_json(answer(200, json_answer)).ews_url.endswith("/EWS/Exchange.asmx")
    with pytest.raises(ProbeFailure):
        autodiscover.read_json(answer(200, b"{}"))


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("https://autodiscover.corp.example.com/autodiscover/autodiscover.xml", ("corp.example.com",)),
        ("https://corp.example.com/", ("example.com",)),
        ("https://example.com/", ("example.com",)),
        ("https://localhost:8443/", ("localhost",)),
        ("https://10.1.2.3/autodiscover/", ("10.1.2.3",)),
    ],
)
def test_default_redirect_hosts(target: str, allowed: tuple[str, ...]) -> None:
    assert autodiscover.default_allowed_hosts(target) == allowed


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://mail.corp.example.com/autodiscover/autodiscover.xml", True),
        ("https://corp.example.com/autodiscover/autodiscover.xml", True),
        ("http://mail.corp.example.com/autodiscover/autodiscover.xml", False),  # plain HTTP
        ("https://autodiscover.example.com/autodiscover/autodiscover.xml", False),  # the parent's parent: the leak
        ("https://evilcorp.example.com/", False),  # a suffix, not a subdomain
        ("https://autodiscover.com.br/autodiscover/autodiscover.xml", False),
    ],
)
def test_redirect_host_rule(url: str, ok: bool) -> None:
    assert autodiscover.host_allowed(url, ("corp.example.com",)) is ok


# --- the verdict ------------------------------------------------------------------------------------------


def passing_store(config: Config) -> ResultStore:
    store = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    for target, checks in store.checks.items():
        for check in checks:
            measurements = (Measurement("bems_auth_success", 1.0, (("method", "ntlm"),)),) if check == "auth" else ()
            store.record(CheckResult(target, check, True, time.time(), 0.1, measurements=measurements))
    return store


def fail(store: ResultStore, target: str, check: str, reason: Reason) -> None:
    store.record(CheckResult(target, check, False, time.time(), 0.1, reason, "it failed"))


REQUIREMENTS = {
    # requirement -> (exchange side, a (target, check) whose failure breaks it, the reason it fails with)
    ("onprem", "ews_reachable"): ("onprem-ews", "tls", Reason.CERTIFICATE),
    ("onprem", "autodiscover_reachable"): ("onprem-ad", "reachability", Reason.REFUSED),
    ("onprem", "basic_or_windows_auth"): ("onprem-ews", "auth", Reason.UNAUTHORIZED),
    ("onprem", "impersonation"): ("onprem-ews", "impersonation", Reason.IMPERSONATION_DENIED),
    ("online", "ews_reachable"): ("online-ews", "reachability", Reason.TIMEOUT),
    ("online", "autodiscover_reachable"): ("online-ad", "tls", Reason.CERTIFICATE),
    ("online", "modern_auth"): ("online-ews", "token", Reason.TOKEN),
    ("online", "graph_access"): ("graph", "graph", Reason.FORBIDDEN),
}


@pytest.mark.parametrize("scenario_name", list(Scenario))
def test_every_requirement_flips_once(config: Config, scenario_name: Scenario) -> None:
    config = config.model_copy(update={"scenario": scenario_name})
    sides = {side.value for side in scenario.SIDES[scenario_name]}
    assert all(v.met for v in scenario.evaluate(config, passing_store(config)))
    for (side, requirement), (target, check, reason) in REQUIREMENTS.items():
        store = passing_store(config)
        fail(store, target, check, reason)
        verdicts = {(v.exchange.value, v.requirement): v for v in scenario.evaluate(config, store)}
        unmet = {key for key, v in verdicts.items() if not v.met}
        if side not in sides:
            assert (side, requirement) not in verdicts
            continue
        assert (side, requirement) in unmet, (requirement, unmet)
        assert verdicts[(side, requirement)].reason == reason.value
        assert verdicts[(side, requirement)].hint
    # The online impersonation requirement rests on Graph and on EWS impersonation alike.
    if "online" in sides:
        store = passing_store(config)
        fail(store, "online-ews", "impersonation", Reason.IMPERSONATION_DENIED)
        unmet = {(v.exchange.value, v.requirement) for v in scenario.evaluate(config, store) if not v.met}
        assert unmet == {("online", "impersonation")}


def test_one_working_windows_method_is_enough(config: Config) -> None:
    store = passing_store(config)
    store.record(CheckResult("onprem-ews", "auth", False, time.time(), 0.1, Reason.METHOD_NOT_OFFERED, "no basic",
                             measurements=(Measurement("bems_auth_success", 0.0, (("method", "basic"),)),
                                           Measurement("bems_auth_success", 1.0, (("method", "ntlm"),)))))  # fmt: skip
    verdicts = {v.requirement: v for v in scenario.evaluate(config, store) if v.exchange == Exchange.ONPREM}
    assert verdicts["basic_or_windows_auth"].met


def test_unconfigured_and_pending_requirements(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG)
    data["targets"] = [t for t in data["targets"] if t["kind"] != "graph" and t["exchange"] != "onprem"]
    path = tmp_path / "partial.yml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert scenario.unconfigured(config) == [
        "onprem: ews_reachable", "onprem: autodiscover_reachable", "onprem: basic_or_windows_auth",
        "onprem: impersonation", "online: graph_access",
    ]  # fmt: skip
    empty = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    reasons = {v.requirement: v.reason for v in scenario.evaluate(config, empty) if v.exchange == Exchange.ONLINE}
    assert reasons["modern_auth"] == scenario.PENDING
    assert reasons["graph_access"] == scenario.NOT_CONFIGURED
