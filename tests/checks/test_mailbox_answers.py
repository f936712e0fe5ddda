"""Classification of realistic Exchange, Autodiscover and Graph answers (the verdict: test_scenario.py).

Unit tests: the answers are the wire samples of the protocol reference, handed to the classifiers
without a network; the live paths are covered against the simulator elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from exporter.checks import auth, impersonation, signin
from exporter.checks.base import ProbeContext
from exporter.checks.graph import _judge as judge_graph
from exporter.checks.resources import Resources
from exporter.config import AuthMethod, Config, load_config
from exporter.protocol import autodiscover_wire as autodiscover
from exporter.protocol import ews_soap as ews
from exporter.protocol.http_client import HttpResponse
from exporter.results import ProbeFailure, Reason, Recorder

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


def message(code: str | None, text: str = "", message_xml: str = "", response_class: str = "Error") -> bytes:
    """A GetFolder answer (HTTP 200) with one response message: ``code`` None leaves ResponseCode out."""
    code_xml = f"<m:ResponseCode>{code}</m:ResponseCode>" if code is not None else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body>'
        f'<m:GetFolderResponse xmlns:m="{MESSAGES}" xmlns:t="{TYPES}"><m:ResponseMessages>'
        f'<m:GetFolderResponseMessage ResponseClass="{response_class}"><m:MessageText>{text}</m:MessageText>'
        f"{code_xml}<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{message_xml}"
        "</m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"
    ).encode()


# ErrorInternalServerError wrapping ErrorServerBusy: the inner error as exchangelib's test_inner_error_parsing
# carries it (facts file 1.5), the wrapping per ews-throttling-in-exchange's status table (3.4).
INNER_SERVER_BUSY = (
    '<m:MessageXml><t:Value Name="InnerErrorMessageText">The server cannot service this request right now. '
    'Try again later.</t:Value><t:Value Name="InnerErrorResponseCode">ErrorServerBusy</t:Value>'
    '<t:Value Name="InnerErrorDescriptiveLinkKey">0</t:Value></m:MessageXml>'
)
INNER_QUOTA = INNER_SERVER_BUSY.replace(">ErrorServerBusy<", ">ErrorQuotaExceededOnDelete<")

# Every answer an EWS mailbox call can get and the reason it ends in: the impersonation and push checks'
# classifier (signin.ews_result). Wire shapes: /work/shared/reference/exchange-protocol-facts.md sections 1-3.
EWS_ANSWERS = [
    pytest.param(
        500,
        fault("ErrorImpersonateUserDenied", "The account does not have permission to impersonate the requested user."),
        Reason.IMPERSONATION_DENIED,
        id="impersonate-user-denied",
    ),
    pytest.param(
        500,
        fault("ErrorImpersonationDenied", "Impersonation through this server is denied."),
        Reason.IMPERSONATION_DENIED,
        id="impersonation-denied",
    ),
    pytest.param(
        200,
        message("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
        Reason.IMPERSONATION_DENIED,
        id="access-denied-message",
    ),
    pytest.param(
        500,
        fault(
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
            f'<t:MessageXml xmlns:t="{TYPES}"><t:Value Name="SmtpAddress">x</t:Value></t:MessageXml>',
        ),
        Reason.MAILBOX_NOT_FOUND,
        id="non-existent-mailbox",
    ),
    pytest.param(
        500,
        fault("ErrorServerBusy", "The server cannot service this request right now. Try again later.", BACKOFF_XML),
        Reason.THROTTLED,
        id="server-busy-fault",
    ),
    pytest.param(200, SERVER_BUSY_MESSAGE, Reason.THROTTLED, id="server-busy-message"),
    pytest.param(
        500,
        fault(
            "ErrorExceededConnectionCount",
            "You have exceeded the available concurrent connections for your "
            "account.  Try again once your other requests have completed.",
        ),
        Reason.THROTTLED,
        id="connection-count",
    ),
    pytest.param(
        200,
        message("ErrorTooManyObjectsOpened", "Too many concurrent connections opened."),
        Reason.THROTTLED,
        id="too-many-objects-opened",
    ),
    pytest.param(
        200, message("ErrorInternalServerTransientError", "Try again."), Reason.THROTTLED, id="transient-error"
    ),
    pytest.param(200, message("ErrorTimeoutExpired", "The request timed out."), Reason.THROTTLED, id="timeout-expired"),
    pytest.param(
        200,
        message("ErrorInternalServerError", "An internal server error occurred.", INNER_SERVER_BUSY),
        Reason.THROTTLED,
        id="internal-error-wrapping-server-busy",
    ),
    pytest.param(
        200,
        message("ErrorInternalServerError", "An internal server error occurred.", INNER_QUOTA),
        Reason.SOAP_FAULT,
        id="internal-error-wrapping-another",
    ),
    pytest.param(503, b"", Reason.THROTTLED, id="http-503"),
    pytest.param(
        500, fault("ErrorSchemaValidation", "The request failed schema validation."), Reason.SOAP_FAULT, id="schema"
    ),
    pytest.param(
        500,
        fault(
            "ErrorInvalidExchangeImpersonationHeaderData",
            "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
        ),
        Reason.SOAP_FAULT,
        id="impersonation-header-missing",
    ),
    # IIS answers rejected credentials with its challenges again; one without NTLM's means it is not offered.
    pytest.param(answer(401, **{"WWW-Authenticate": "Negotiate, NTLM"}), b"", Reason.UNAUTHORIZED, id="http-401"),
    pytest.param(
        answer(401, **{"WWW-Authenticate": 'Basic realm="x"'}),
        b"",
        Reason.METHOD_NOT_OFFERED,
        id="http-401-ntlm-not-offered",
    ),
    pytest.param(answer(401), b"", Reason.METHOD_NOT_OFFERED, id="http-401-without-a-challenge"),
    pytest.param(403, b"", Reason.BAD_RESPONSE, id="onprem-403"),  # on-premises a 403 is no policy block
    pytest.param(404, b"", Reason.BAD_RESPONSE, id="http-404"),
    pytest.param(200, b"<html><body>Outlook Web App</body></html>", Reason.BAD_RESPONSE, id="html"),
    pytest.param(200, message(None, response_class="Success"), Reason.BAD_RESPONSE, id="no-response-code"),
]


@pytest.mark.parametrize(("status", "body", "reason"), EWS_ANSWERS)
async def test_impersonation_answers(ctx: ProbeContext, config: Config, status: int | HttpResponse, body: bytes,
                                     reason: Reason) -> None:  # fmt: skip
    target = config.targets_by_name()["onprem-ews"]
    response = status if isinstance(status, HttpResponse) else answer(status, body)
    with pytest.raises(ProbeFailure) as caught:
        impersonation.judge(ctx, target, "alice@corp.example.com", AuthMethod.NTLM, response)
    assert caught.value.reason == reason, caught.value.message
    if reason == Reason.METHOD_NOT_OFFERED:
        assert "-WindowsAuthentication $true" in caught.value.hint
    if reason == Reason.IMPERSONATION_DENIED:
        assert (
            "New-ManagementRoleAssignment -Name:BlackBerryAppImpersonation -Role:ApplicationImpersonation "
            "-User:BEMSAdmin" in caught.value.hint
        )
    if reason == Reason.THROTTLED:
        assert caught.value.hint == signin.THROTTLED_HINT


def test_a_message_without_response_code_is_no_success() -> None:
    """MS-OXWSCDATA lets ResponseCode out, but Success is NoError in it; exchangelib fails such a message."""
    with pytest.raises(ProbeFailure) as caught:
        ews.read(answer(200, message(None, response_class="Success")))
    assert caught.value.reason == Reason.BAD_RESPONSE and "ResponseCode" in caught.value.message
    assert ews.read(answer(200, message("NoError", response_class="Success"))).ok


async def test_success_and_policy_blocks(ctx: ProbeContext, config: Config) -> None:
    onprem, online = config.targets_by_name()["onprem-ews"], config.targets_by_name()["online-ews"]
    assert "inbox opened" in impersonation.judge(ctx, onprem, "a@b", AuthMethod.BASIC, answer(200, GET_FOLDER_OK))
    # Exchange Online's bare 403 is one mailbox's policy block until organisation-wide evidence says more.
    with pytest.raises(signin.PolicyBlock) as caught:
        impersonation.judge(ctx, online, "carol@contoso.com", AuthMethod.OAUTH, answer(403))
    assert caught.value.reason == Reason.FORBIDDEN and caught.value.mailbox == "carol@contoso.com"
    assert "carol@contoso.com" in caught.value.message
    assert_rbac_for_applications_hint(caught.value.hint, "carol@contoso.com")
    with pytest.raises(ProbeFailure) as caught:  # a 403 with a body is no policy block
        impersonation.judge(ctx, online, "carol@contoso.com", AuthMethod.OAUTH, answer(403, b"<html>Forbidden</html>"))
    assert caught.value.reason == Reason.BAD_RESPONSE


def assert_rbac_for_applications_hint(hint: str, mailbox: str) -> None:
    """Microsoft's RBAC for Applications guidance: a scoped assignment, and no unscoped consent beside it
    (learn.microsoft.com/exchange/permissions-exo/application-rbac, graph/auth-limit-mailbox-access)."""
    client_id = "11111111-2222-3333-4444-555555555555"
    assert f'New-ManagementRoleAssignment -App {client_id} -Role "Application EWS.AccessAsApp"' in hint
    assert "-CustomResourceScope" in hint
    assert f"Test-ServicePrincipalAuthorization -Identity {client_id} -Resource {mailbox}" in hint
    assert "Remove any tenant-wide full_access_as_app consent" in hint
    assert "grant full_access_as_app" not in hint and "grant\nfull_access_as_app" not in hint


async def test_online_impersonation_denial_follows_rbac_for_applications(ctx: ProbeContext, config: Config) -> None:
    online = config.targets_by_name()["online-ews"]
    denied = fault(
        "ErrorImpersonateUserDenied", "The account does not have permission to impersonate the requested user."
    )
    with pytest.raises(ProbeFailure) as caught:
        impersonation.judge(ctx, online, "carol@contoso.com", AuthMethod.OAUTH, answer(500, denied))
    assert caught.value.reason == Reason.IMPERSONATION_DENIED
    assert_rbac_for_applications_hint(caught.value.hint, "carol@contoso.com")


@pytest.fixture
async def frozen_ctx(config: Config):  # type: ignore[no-untyped-def]
    """A context whose back-off clock stands still, so the time it holds is exact (no timed assertion)."""
    resources = Resources(monotonic=lambda: 1000.0)
    yield ProbeContext(config, Recorder("onprem-ews", "impersonation"), 5.0, resources)
    await resources.close()


@pytest.mark.parametrize(
    ("status", "body", "headers", "seconds"),
    [
        pytest.param(500, fault("ErrorServerBusy", "busy", BACKOFF_XML), {}, 297.749, id="server-busy-fault"),
        pytest.param(200, SERVER_BUSY_MESSAGE, {}, 5.0, id="server-busy-message"),
        pytest.param(
            500, fault("ErrorServerBusy", "busy"), {}, ews.DEFAULT_BACKOFF_SECONDS, id="server-busy-without-backoff"
        ),
        pytest.param(
            200, message("ErrorTooManyObjectsOpened", "Too many"), {}, ews.DEFAULT_BACKOFF_SECONDS, id="too-many"
        ),
        pytest.param(
            200, message("ErrorInternalServerTransientError"), {}, ews.DEFAULT_BACKOFF_SECONDS, id="transient"
        ),
        pytest.param(200, message("ErrorTimeoutExpired"), {}, ews.DEFAULT_BACKOFF_SECONDS, id="timeout-expired"),
        pytest.param(
            200,
            message("ErrorInternalServerError", "", INNER_SERVER_BUSY),
            {},
            ews.DEFAULT_BACKOFF_SECONDS,
            id="wrapped-server-busy",
        ),
        pytest.param(500, fault("ErrorExceededConnectionCount", "too many"), {}, 0.0, id="connection-count"),
        pytest.param(503, b"", {"Retry-After": "7"}, 7.0, id="503-retry-after"),
        pytest.param(503, b"", {}, ews.DEFAULT_BACKOFF_SECONDS, id="503-without-retry-after"),
        pytest.param(503, b"", {"Retry-After": "soon"}, ews.DEFAULT_BACKOFF_SECONDS, id="503-unreadable"),
    ],
)
async def test_throttling_holds_the_accounts_back_off(
    frozen_ctx: ProbeContext, config: Config, status: int, body: bytes, headers: dict[str, str], seconds: float
) -> None:
    ctx = frozen_ctx
    target = config.targets_by_name()["onprem-ews"]
    with pytest.raises(ProbeFailure) as caught:
        impersonation.judge(ctx, target, "a@b", AuthMethod.NTLM, answer(status, body, **headers))
    assert caught.value.reason == Reason.THROTTLED
    assert ctx.resources.backoff.remaining("bemsadmin", "mail.corp.example.com") == pytest.approx(seconds)
    assert ctx.resources.backoff.remaining("app", "mail.corp.example.com") == 0  # other accounts untouched
    assert ctx.resources.backoff.remaining("bemsadmin", "other.corp.example.com") == 0
    if seconds:
        with pytest.raises(ProbeFailure) as held:  # the next call of the account sends nothing meanwhile
            signin.check_backoff(ctx, target, target.url)
        assert held.value.reason == Reason.THROTTLED


def test_retry_after_as_an_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    seconds = signin.retry_after(answer(503, **{"Retry-After": format_datetime(later, usegmt=True)}))
    assert seconds is not None and 100 < seconds <= 120
    assert signin.retry_after(answer(503)) is None


# --- the auth check's reading of a signed-in answer --------------------------------------------------------

AUTH_ANSWERS = [
    pytest.param("onprem-ews", 401, b"", Reason.UNAUTHORIZED, id="http-401"),
    pytest.param("onprem-ews", 403, b"", Reason.FORBIDDEN, id="onprem-403"),
    pytest.param("online-ews", 403, b"<html>Forbidden</html>", Reason.FORBIDDEN, id="online-403-with-body"),
    pytest.param("online-ews", 403, b"", Reason.FORBIDDEN, id="online-policy-block"),
    pytest.param(
        "onprem-ews", 200, message("ErrorAccessDenied", "Access is denied."), Reason.FORBIDDEN, id="access-denied"
    ),
    pytest.param("onprem-ews", 503, b"", Reason.THROTTLED, id="http-503"),
    pytest.param("onprem-ews", 200, SERVER_BUSY_MESSAGE, Reason.THROTTLED, id="server-busy"),
    pytest.param("onprem-ews", 200, message("ErrorTimeoutExpired"), Reason.THROTTLED, id="timeout-expired"),
    pytest.param("onprem-ews", 404, b"", Reason.BAD_RESPONSE, id="http-404"),
    pytest.param("onprem-ews", 200, b"<html/>", Reason.BAD_RESPONSE, id="html"),
    pytest.param("onprem-ews", 200, message(None, response_class="Success"), Reason.BAD_RESPONSE, id="no-code"),
    pytest.param("onprem-ad", 500, b"", Reason.BAD_RESPONSE, id="autodiscover-500"),
]


@pytest.mark.parametrize(("target", "status", "body", "reason"), AUTH_ANSWERS)
async def test_auth_answers(ctx: ProbeContext, config: Config, target: str, status: int, body: bytes,
                            reason: Reason) -> None:  # fmt: skip
    chosen = config.targets_by_name()[target]
    with pytest.raises(ProbeFailure) as caught:
        auth._judge(ctx, chosen, chosen.url, answer(status, body))
    assert caught.value.reason == reason, caught.value.message


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(GET_FOLDER_OK, "EWS answered NoError", id="no-error"),
        # A fault that is not about access still proves the sign-in.
        pytest.param(fault("ErrorSchemaValidation", "schema"), "ErrorSchemaValidation (a SOAP fault", id="fault"),
    ],
)
async def test_auth_signed_in(ctx: ProbeContext, config: Config, body: bytes, detail: str) -> None:
    target = config.targets_by_name()["onprem-ews"]
    assert detail in auth._judge(ctx, target, target.url, answer(200 if body is GET_FOLDER_OK else 500, body))


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
