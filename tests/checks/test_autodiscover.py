"""The autodiscover check: Microsoft's own samples, and every reason it reports, one table row each.

Readers and redirects run as unit tests over a scripted transport (``signin.send`` replaced, so each
row says what each hop answers and what the exporter asked); network and sign-in failures run
against the simulator. Samples: tests/microsoft_samples/README.md.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from check_runner import run

from bems_simulator.endpoint import bind_loopback_socket
from bems_simulator.server import NOMINAL_HOSTS, Simulator
from bems_simulator.serving import serve_app
from exporter.checks import autodiscover as check
from exporter.checks import signin
from exporter.checks.base import ProbeContext
from exporter.checks.resources import Resources
from exporter.config import AuthMethod, AutodiscoverProtocol, Config, Target, load_config
from exporter.protocol import autodiscover_wire as autodiscover
from exporter.protocol.http_client import HttpResponse
from exporter.results import ProbeFailure, Reason, Recorder

# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")

SAMPLES = Path(__file__).parents[1] / "microsoft_samples"
POX_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"


def microsoft_sample(name: str) -> bytes:
    """A sample as the docs print it, with their https:// namespaces put back to the http:// of the wire."""
    text = (SAMPLES / name).read_text()
    return (
        text.replace("https://schemas.microsoft.com/", "http://schemas.microsoft.com/")
        .replace("https://schemas.xmlsoap.org/", "http://schemas.xmlsoap.org/")
        .encode()
    )


def answer(status: int, body: bytes = b"", url: str = "https://autodiscover.corp.example.com/", **headers: str):
    return HttpResponse(status, tuple(headers.items()), body, url)


# --- Item 10: POX as Microsoft answers it --------------------------------------------------------------


def test_microsofts_pox_sample_yields_its_ews_url() -> None:
    """Microsoft's POX response ("How to: Get user settings from Exchange by using Autodiscover"), verbatim.

    After the EXCH and EXPR blocks it has a WEB block whose Internal entry is a Protocol of type EXCH
    with an ASUrl and no EwsUrl. Its EXPR block has no EwsUrl either, so EXCH's is the answer.
    """
    found = autodiscover.read_pox(answer(200, microsoft_sample("pox-settings-response.xml")))
    assert found == autodiscover.Found(ews_url="https://mail.contoso.com/EWS/Exchange.asmx")


def pox_settings(*protocols: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{POX_NS}"><Response xmlns="{OUTLOOK_NS}">'
        f"<Account><AccountType>email</AccountType><Action>settings</Action>{''.join(protocols)}</Account>"
        "</Response></Autodiscover>"
    ).encode()


def block(kind: str, ews_url: str = "", inner: str = "") -> str:
    return f"<Protocol><Type>{kind}</Type>{f'<EwsUrl>{ews_url}</EwsUrl>' if ews_url else ''}{inner}</Protocol>"


INTERNAL_EWS, EXTERNAL_EWS = (
    "https://ex01.corp.example.com/EWS/Exchange.asmx",
    "https://mail.corp.example.com/EWS/Exchange.asmx",
)
WEB = block(
    "WEB",
    inner="<Internal><OWAUrl>https://ex01.corp.example.com/owa/</OWAUrl>"
    f"<Protocol><Type>EXCH</Type><ASUrl>{INTERNAL_EWS}</ASUrl></Protocol></Internal>"
    "<External><OWAUrl>https://mail.corp.example.com/owa/</OWAUrl>"
    f"<Protocol><Type>EXPR</Type><ASUrl>{EXTERNAL_EWS}</ASUrl></Protocol></External>",
)


@pytest.mark.parametrize(
    ("protocols", "ews_url"),
    [
        pytest.param((block("EXCH", INTERNAL_EWS), block("EXPR", EXTERNAL_EWS), WEB), EXTERNAL_EWS,
                     id="expr-is-the-external-url-and-wins"),
        pytest.param((block("EXPR", EXTERNAL_EWS), block("EXCH", INTERNAL_EWS)), EXTERNAL_EWS,
                     id="order-does-not-matter"),
        pytest.param((block("EXCH", INTERNAL_EWS), block("EXPR"), WEB), INTERNAL_EWS, id="exch-when-expr-has-none"),
        pytest.param((WEB, block("EXHTTP", EXTERNAL_EWS)), EXTERNAL_EWS, id="another-top-level-block"),
    ],
)  # fmt: skip
def test_pox_ews_url_comes_from_the_accounts_own_protocol_blocks(protocols: tuple[str, ...], ews_url: str) -> None:
    assert autodiscover.read_pox(answer(200, pox_settings(*protocols))).ews_url == ews_url


def test_pox_web_block_alone_holds_no_ews_url() -> None:
    # Its nested entries' ASUrl is the Availability service's ("Internal (POX)"): not an EWS URL to report.
    with pytest.raises(ProbeFailure) as caught:
        autodiscover.read_pox(answer(200, pox_settings(WEB)))
    assert (caught.value.reason, caught.value.message) == (
        Reason.BAD_RESPONSE,
        "the Autodiscover answer holds no EwsUrl",
    )


# --- SOAP GetUserSettings as Microsoft documents it -------------------------------------------------------


def test_microsofts_get_user_settings_sample_is_read_per_user_response() -> None:
    """The "GetUserSettings operation (SOAP)" response example: NoError, eight settings, none an EWS URL."""
    with pytest.raises(ProbeFailure) as caught:
        autodiscover.read_soap(answer(200, microsoft_sample("soap-get-user-settings-response.xml")))
    assert caught.value.reason == Reason.BAD_RESPONSE
    assert caught.value.message == "GetUserSettings returned neither ExternalEwsUrl nor InternalEwsUrl"


def test_microsofts_how_to_sample_yields_external_ews_url() -> None:
    """The how-to page's SOAP response, with the two typos the page adds repaired (README)."""
    body = microsoft_sample("soap-get-user-settings-response-how-to.xml").decode()
    body = re.sub(r"2010/\s+Autodiscover/Autodiscover", "2010/Autodiscover/Autodiscover", body)
    body = body.rstrip().removesuffix("</s:Envelope") + "</s:Envelope>"
    found = autodiscover.read_soap(answer(200, body.encode()))
    assert found == autodiscover.Found(ews_url="https://mail.contoso.com/EWS/Exchange.asmx")


# --- Every reason, scripted -----------------------------------------------------------------------------

CONFIG = """
scenario: onprem-bems-hybrid
credentials:
  bemsadmin: {username: 'CORP\\BEMSAdmin', password: pw-not-used}
  app: {tenant_id: contoso.onmicrosoft.com, client_id: 11111111-2222-3333-4444-555555555555, client_secret: s}
targets:
  - {name: pox, kind: autodiscover, exchange: onprem, url: 'https://autodiscover.corp.example.com/',
     credential: bemsadmin, auth: [ntlm], protocols: [pox], mailboxes: [alice@corp.example.com],
     allowed_redirect_hosts: [corp.example.com]}
  - {name: soap, kind: autodiscover, exchange: onprem, url: 'https://autodiscover.corp.example.com/',
     credential: bemsadmin, auth: [basic], protocols: [soap], mailboxes: [alice@corp.example.com],
     allowed_redirect_hosts: [corp.example.com]}
  - {name: json, kind: autodiscover, exchange: online, url: 'https://outlook.office365.com/',
     mailboxes: [alice@corp.example.com], allowed_redirect_hosts: [office365.com]}
  - {name: app, kind: autodiscover, exchange: online, url: 'https://autodiscover-s.outlook.com/',
     credential: app, protocols: [soap], mailboxes: [alice@corp.example.com], allowed_redirect_hosts: [outlook.com]}
  - {name: default, kind: autodiscover, exchange: onprem, url: 'https://contoso.co.uk/autodiscover/autodiscover.xml',
     credential: bemsadmin, auth: [basic], protocols: [pox], mailboxes: [alice@corp.example.com]}
  - {name: anonymous, kind: autodiscover, exchange: onprem, url: 'https://autodiscover.corp.example.com/',
     protocols: [pox], mailboxes: [alice@corp.example.com]}
"""
HOST = "https://autodiscover.corp.example.com"
POX_URL, SOAP_URL = HOST + autodiscover.POX_PATH, HOST + autodiscover.SOAP_PATH
ALICE, BOB, EX02 = "alice@corp.example.com", "bob@corp.example.com", "https://ex02.corp.example.com"
INVALID_PROTOCOL = b'{"ErrorCode":"InvalidProtocol","ErrorMessage":"The given protocol value \'xyz\' is invalid."}'
# Exchange Online's 302 for an address it does not know (protocol facts 4.3), without its RedirectCount.
EXO_AGAIN = "https://outlook.office365.com/autodiscover/autodiscover.json?Email=alice%40corp.example.com&Protocol=EWS"
ELSEWHERE = EXO_AGAIN.replace("outlook", "autodiscover-s")
JSON_URL = "https://outlook.office365.com/autodiscover/autodiscover.json/v1.0/alice@corp.example.com?Protocol=EWS"


# An anonymous request's 401 as the Autodiscover virtual directory sends it by default (facts file 6.1).
CHALLENGE = answer(401, **{"WWW-Authenticate": 'Negotiate, NTLM, Basic realm="autodiscover.corp.example.com", Bearer'})
BASIC_ONLY = answer(401, **{"WWW-Authenticate": 'Basic realm="autodiscover.co.uk"'})  # the "switcheroo"


@dataclass
class Transport:
    """Answers the exporter's requests in order, and writes down (url, address asked for, method) of each.

    With ``challenge``, every anonymous request is answered with it instead (and only counted in
    ``anonymous``): a server that challenges for everything, for rows about what comes after the sign-in.
    """

    answers: list[HttpResponse]
    challenge: HttpResponse | None = None
    asked: list[tuple[str, str, AuthMethod | None]] = field(default_factory=list)
    anonymous: list[str] = field(default_factory=list)

    async def send(self, _ctx: ProbeContext, _target: Any, url: str, *, method: AuthMethod | None,
                   body: bytes | None = None, **_: Any) -> HttpResponse:  # fmt: skip
        if method is None and self.challenge is not None:
            self.anonymous.append(url)
            return self.challenge
        address = re.search(rb"<(?:EMailAddress|a:Mailbox)>([^<]*)<", body or b"")
        self.asked.append((url, address.group(1).decode() if address else "", method))
        if not self.answers:
            raise AssertionError(f"an unexpected request to {url}")
        return self.answers.pop(0)


def pox_redirect(action: str, element: str, target: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{POX_NS}"><Response xmlns="{OUTLOOK_NS}">'
        f"<Account><Action>{action}</Action><{element}>{target}</{element}></Account></Response></Autodiscover>"
    ).encode()


def pox_error(code: str, message: str) -> bytes:
    # Facts file 4.1: the error's <Response> has no namespace of its own.
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{POX_NS}"><Response>'
        f'<Error Time="12:03:32.8803744" Id="2422600485"><ErrorCode>{code}</ErrorCode><Message>{message}</Message>'
        "<DebugData /></Error></Response></Autodiscover>"
    ).encode()


def soap(user_response: str, code: str = "NoError") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}"><s:Body>'
        f'<GetUserSettingsResponseMessage xmlns="{AUTODISCOVER_NS}"><Response xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
        f"<ErrorCode>{code}</ErrorCode><ErrorMessage /><UserResponses>{user_response}</UserResponses></Response>"
        "</GetUserSettingsResponseMessage></s:Body></s:Envelope>"
    ).encode()


def user(code: str, message: str = "", target: str = "", settings: dict[str, str] | None = None) -> str:
    redirect = f"<RedirectTarget>{target}</RedirectTarget>" if target else '<RedirectTarget i:nil="true" />'
    values = "".join(
        f'<UserSetting i:type="StringSetting"><Name>{name}</Name><Value>{value}</Value></UserSetting>'
        for name, value in (settings or {}).items()
    )
    return (
        f"<UserResponse><ErrorCode>{code}</ErrorCode><ErrorMessage>{message}</ErrorMessage>{redirect}"
        f"<UserSettingErrors /><UserSettings>{values}</UserSettings></UserResponse>"
    )


POX_OK = pox_settings(block("EXPR", EXTERNAL_EWS))
SOAP_OK = soap(user("NoError", "No error.", settings={"ExternalEwsUrl": EXTERNAL_EWS}))
OK, REDIRECT = (lambda body: answer(200, body)), (lambda location: answer(302, b"", Location=location))


@dataclass(frozen=True)
class Row:
    target: str
    answers: tuple[HttpResponse, ...]
    reason: Reason | None  # None: the row ends with an EWS URL
    message: str  # the EWS URL, or a fragment of the failure's message
    asked: tuple[tuple[str, str], ...] = ()  # (url, address) of each request, when the row is about them


ROWS = {
    # POX errors (facts file 4.1): 500 is the documented unknown address; any other code is not an answer.
    "pox-settings": Row("pox", (OK(POX_OK),), None, EXTERNAL_EWS),
    "pox-unknown-address": Row("pox", (OK(pox_error("500", "The email address can't be found.")),),
                               Reason.MAILBOX_NOT_FOUND, "Autodiscover does not know the address"),
    "pox-invalid-request": Row("pox", (OK(pox_error("600", "Invalid Request")),), Reason.BAD_RESPONSE,
                               "Autodiscover error 600: Invalid Request"),
    "pox-schema-not-provided": Row("pox", (OK(pox_error("601", "Provider is not available.")),),
                                   Reason.BAD_RESPONSE, "Autodiscover error 601"),
    "pox-html": Row("pox", (OK(b"<html><body>Welcome</body></html>"),), Reason.BAD_RESPONSE,
                    "<html>, not an Autodiscover answer"),
    "pox-no-ews-url": Row("pox", (OK(pox_settings(block("EXCH"))),), Reason.BAD_RESPONSE, "holds no EwsUrl"),
    # POX redirects: a new address starts over at the target's own host; a URL is followed if allowed.
    "pox-redirect-addr": Row("pox", (OK(pox_redirect("redirectAddr", "RedirectAddr", "bob@corp.example.com")),
                                     OK(POX_OK)), None, EXTERNAL_EWS,
                             ((POX_URL, ALICE), (POX_URL, BOB))),
    "pox-redirect-addr-to-itself": Row("pox", (OK(pox_redirect("redirectAddr", "RedirectAddr", ALICE.upper())),),
                                       Reason.BAD_RESPONSE, "redirects alice@corp.example.com to itself"),
    "pox-redirect-addr-empty": Row("pox", (OK(pox_redirect("redirectAddr", "RedirectAddr", "")),), Reason.BAD_RESPONSE,
                                   "says redirectAddr but holds no RedirectAddr"),
    "pox-redirect-addr-cycle": Row("pox", (OK(pox_redirect("redirectAddr", "RedirectAddr", "bob@corp.example.com")),
                                           OK(pox_redirect("redirectAddr", "RedirectAddr", "alice@corp.example.com"))),
                                   Reason.REDIRECT_BLOCKED, "redirect loop"),
    "pox-redirect-url": Row("pox", (OK(pox_redirect("redirectUrl", "RedirectUrl", EX02 + "/x.xml")), OK(POX_OK)),
                            None, EXTERNAL_EWS, ((POX_URL, ALICE), (EX02 + "/x.xml", ALICE))),
    "pox-redirect-url-empty": Row("pox", (OK(pox_redirect("redirectUrl", "RedirectUrl", "")),), Reason.BAD_RESPONSE,
                                  "says redirectUrl but holds no RedirectUrl"),
    "pox-redirect-url-foreign": Row("pox", (OK(pox_redirect("redirectUrl", "RedirectUrl", "https://autodiscover.example.com/a.xml")),),
                                    Reason.REDIRECT_BLOCKED, "only https to https://autodiscover.corp.example.com:443, "
                                    "corp.example.com (and subdomains) is allowed"),
    "pox-redirect-url-to-itself": Row("pox", (OK(pox_redirect("redirectUrl", "RedirectUrl", POX_URL)),),
                                      Reason.REDIRECT_BLOCKED, "redirect loop"),
    # HTTP answers, whatever the protocol.
    "http-302-relative": Row("pox", (REDIRECT("/other/autodiscover.xml"), OK(POX_OK)), None, EXTERNAL_EWS,
                             ((POX_URL, ALICE), (HOST + "/other/autodiscover.xml", ALICE))),
    "http-301-to-plain-http": Row("pox", (answer(301, Location="http://autodiscover.corp.example.com/a.xml"),),
                                  Reason.REDIRECT_BLOCKED, "http://autodiscover.corp.example.com/a.xml not followed"),
    "http-307-foreign": Row("pox", (answer(307, Location="https://autodiscover.com.br/a.xml"),),
                            Reason.REDIRECT_BLOCKED, "https://autodiscover.com.br/a.xml not followed"),
    "http-303": Row("soap", (answer(303, Location="/x.svc"), OK(SOAP_OK)), None, EXTERNAL_EWS),
    "http-308": Row("soap", (answer(308, Location="/x.svc"), OK(SOAP_OK)), None, EXTERNAL_EWS),
    # The authority is host and port only: where parsers disagree on the host, nothing is sent.
    "http-302-backslash-userinfo": Row("pox", (REDIRECT("https://evil.test\\@ex02.corp.example.com/a.xml"),),
                                       Reason.REDIRECT_BLOCKED, "not followed"),
    "http-302-userinfo": Row("pox", (REDIRECT("https://bems@ex02.corp.example.com/a.xml"),), Reason.REDIRECT_BLOCKED,
                             "not followed"),
    "http-302-percent-escaped-host": Row("pox", (REDIRECT("https://ex02%2ecorp.example.com/a.xml"),),
                                         Reason.REDIRECT_BLOCKED, "not followed"),
    # By default only the configured origin (issue 15: the parent-domain default allowed all of co.uk).
    "default-sibling-registrant": Row("default", (REDIRECT("https://autodiscover.co.uk/autodiscover/autodiscover.xml"),),
                                      Reason.REDIRECT_BLOCKED, "only https to https://contoso.co.uk:443 is allowed"),
    "default-subdomain": Row("default", (OK(pox_redirect("redirectUrl", "RedirectUrl", "https://mail.contoso.co.uk/a.xml")),),
                             Reason.REDIRECT_BLOCKED, "https://mail.contoso.co.uk/a.xml not followed"),
    "default-other-port": Row("default", (REDIRECT("https://contoso.co.uk:8443/a.xml"),), Reason.REDIRECT_BLOCKED,
                              "https://contoso.co.uk:8443/a.xml not followed"),
    "default-same-origin": Row("default", (REDIRECT("https://CONTOSO.co.uk:443/other.xml"), OK(POX_OK)), None,
                               EXTERNAL_EWS),
    "http-302-without-location": Row("pox", (answer(302),), Reason.BAD_RESPONSE, "HTTP 302 without a Location"),
    "http-401": Row("pox", (answer(401),), Reason.UNAUTHORIZED, "rejected the credentials (HTTP 401)"),
    "http-403": Row("pox", (answer(403),), Reason.FORBIDDEN, "denied access (HTTP 403)"),
    "http-404": Row("pox", (answer(404),), Reason.BAD_RESPONSE, f"HTTP 404 from {POX_URL}"),
    "http-500": Row("soap", (answer(500, b"<html>Server Error</html>"),), Reason.BAD_RESPONSE, "HTTP 500 from"),
    "http-503": Row("json", (answer(503),), Reason.THROTTLED, "HTTP 503"),
    "http-503-retry-after": Row("pox", (answer(503, **{"Retry-After": "120"}),), Reason.THROTTLED, "back off 120.0 s"),
    # SOAP (facts file 4.2; "ErrorCode (SOAP)"): the user response decides, the request's code when there is none.
    "soap-external-url": Row("soap", (OK(SOAP_OK),), None, EXTERNAL_EWS),
    "soap-internal-url-only": Row("soap", (OK(soap(user("NoError", settings={"InternalEwsUrl": INTERNAL_EWS}))),),
                                  None, INTERNAL_EWS),
    "soap-external-before-internal": Row("soap", (OK(soap(user("NoError", settings={
        "InternalEwsUrl": INTERNAL_EWS, "ExternalEwsUrl": EXTERNAL_EWS}))),), None, EXTERNAL_EWS),
    "soap-no-ews-url": Row("soap", (OK(soap(user("NoError", settings={"CasVersion": "15.02.1544.004"}))),),
                           Reason.BAD_RESPONSE, "neither ExternalEwsUrl nor InternalEwsUrl"),
    "soap-invalid-user": Row("soap", (OK(soap(user("InvalidUser", "Invalid user 'alice@corp.example.com'."))),),
                             Reason.MAILBOX_NOT_FOUND, "Invalid user 'alice@corp.example.com'."),
    "soap-server-busy": Row("soap", (OK(soap(user("ServerBusy", "The server is too busy."))),), Reason.THROTTLED,
                            "ServerBusy"),
    "soap-request-server-busy": Row("soap", (OK(soap("", code="ServerBusy")),), Reason.THROTTLED, "ServerBusy"),
    "soap-request-invalid": Row("soap", (OK(soap("", code="InvalidRequest")),), Reason.BAD_RESPONSE,
                                "without a user response (InvalidRequest)"),
    "soap-internal-server-error": Row("soap", (OK(soap(user("InternalServerError", "Oops"))),), Reason.BAD_RESPONSE,
                                      "GetUserSettings error InternalServerError: Oops"),
    "soap-redirect-address": Row("soap", (OK(soap(user("RedirectAddress", "Redirection address.", BOB))), OK(SOAP_OK)),
                                 None, EXTERNAL_EWS, ((SOAP_URL, ALICE), (SOAP_URL, BOB))),
    "soap-redirect-address-nil": Row("soap", (OK(soap(user("RedirectAddress", "Redirection address."))),),
                                     Reason.BAD_RESPONSE, "says RedirectAddress but holds no RedirectTarget"),
    "soap-redirect-url": Row("soap", (OK(soap(user("RedirectUrl", "Redirection URL.", EX02 + "/a.svc"))), OK(SOAP_OK)),
                             None, EXTERNAL_EWS, ((SOAP_URL, ALICE), (EX02 + "/a.svc", ALICE))),
    "soap-not-an-envelope": Row("soap", (OK(POX_OK),), Reason.BAD_RESPONSE, "not a SOAP Autodiscover answer"),
    # v2 JSON (facts file 4.3).
    "json-url": Row("json", (OK(b'{"Protocol":"EWS","Url":"https://outlook.office365.com/EWS/Exchange.asmx"}'),), None,
                    "https://outlook.office365.com/EWS/Exchange.asmx", ((JSON_URL, ""),)),
    "json-invalid-protocol": Row("json", (answer(400, INVALID_PROTOCOL),), Reason.BAD_RESPONSE,
                                 "HTTP 400 from https://outlook.office365.com/autodiscover/autodiscover.json/v1.0/"
                                 "alice@corp.example.com?Protocol=EWS: InvalidProtocol: The given protocol value"),
    "json-unknown-address": Row("json", (REDIRECT(EXO_AGAIN + "&RedirectCount=1"),), Reason.MAILBOX_NOT_FOUND,
                                "Autodiscover v2 does not know alice@corp.example.com"),
    "json-redirect-without-count": Row("json", (REDIRECT(EXO_AGAIN), OK(b'{"Url":"https://x.office365.com/EWS"}')),
                                       None, "https://x.office365.com/EWS"),
    "json-redirect-to-another-host": Row("json", (REDIRECT(ELSEWHERE + "&RedirectCount=1"),
                                                  OK(b'{"Protocol":"EWS","Url":"https://x.office365.com/EWS"}')),
                                         None, "https://x.office365.com/EWS"),
    "json-without-url": Row("json", (OK(b'{"Protocol":"EWS"}'),), Reason.BAD_RESPONSE, "holds no Url"),
    "json-not-json": Row("json", (OK(b"<html></html>"),), Reason.BAD_RESPONSE, "holds no Url"),
}  # fmt: skip


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "c.yml"
    path.write_text(CONFIG)
    return load_config(path)


@pytest_asyncio.fixture(loop_scope="module")
async def context(config: Config) -> AsyncIterator[ProbeContext]:
    resources = Resources()
    yield ProbeContext(config, Recorder("t", "autodiscover"), 5.0, resources)
    await resources.close()


def scripted(monkeypatch: pytest.MonkeyPatch, *answers: HttpResponse) -> Transport:
    transport = Transport(list(answers))
    monkeypatch.setattr(signin, "send", transport.send)
    return transport


def challenged(
    monkeypatch: pytest.MonkeyPatch, context: ProbeContext, target: Target, *answers: HttpResponse
) -> Transport:
    """Scripted answers to what a target sends after signing in, every anonymous request challenged."""
    signs_in = check._method(context.config, target, target.autodiscover_protocols[0]) is not None
    transport = scripted(monkeypatch, *answers)
    transport.challenge = CHALLENGE if signs_in else None
    return transport


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
async def test_every_answer_is_classified(context: ProbeContext, monkeypatch: pytest.MonkeyPatch, row: Row) -> None:
    target = context.config.targets_by_name()[row.target]
    transport = challenged(monkeypatch, context, target, *row.answers)
    discovered = check.discover(context, target, "alice@corp.example.com", target.autodiscover_protocols[0])
    if row.reason is None:
        assert await discovered == row.message
    else:
        with pytest.raises(ProbeFailure) as caught:
            await discovered
        assert caught.value.reason == row.reason
        assert row.message in caught.value.message
    assert transport.answers == [], "every scripted answer was asked for"
    if row.asked:
        assert [(url, address) for url, address, _ in transport.asked] == list(row.asked)


def test_every_reason_the_check_gives_has_a_row() -> None:
    """The classifier's reasons, each pinned above or in CHALLENGED_FIRST; network, sign-in and timeouts run
    against the simulator."""
    assert {row.reason for row in (*ROWS.values(), *CHALLENGED_FIRST.values())} == {
        None, Reason.MAILBOX_NOT_FOUND, Reason.BAD_RESPONSE, Reason.REDIRECT_BLOCKED, Reason.UNAUTHORIZED,
        Reason.FORBIDDEN, Reason.THROTTLED, Reason.METHOD_NOT_OFFERED,
    }  # fmt: skip


@dataclass(frozen=True)
class Asked:
    target: str
    answers: tuple[HttpResponse, ...]
    reason: Reason | None  # None: the row ends with an EWS URL
    asked: tuple[tuple[str, AuthMethod | None], ...]  # (url, method) of every request, anonymous ones included


APP_SOAP = "https://autodiscover-s.outlook.com" + autodiscover.SOAP_PATH
# Credentials go to an origin, the target's own too, only after its own 401 offered the method (issue 15).
CHALLENGED_FIRST = {
    "target-challenges-then-signed-in": Asked("soap", (CHALLENGE, OK(SOAP_OK)), None,
                                              ((SOAP_URL, None), (SOAP_URL, AuthMethod.BASIC))),
    "answered-without-a-challenge": Asked("pox", (OK(POX_OK),), None, ((POX_URL, None),)),
    "refused-without-a-challenge": Asked("pox", (answer(403),), Reason.FORBIDDEN, ((POX_URL, None),)),
    "allowed-redirect-target-challenges-anew": Asked(
        "soap", (CHALLENGE, OK(soap(user("RedirectUrl", "", EX02 + "/a.svc"))), CHALLENGE, OK(SOAP_OK)), None,
        ((SOAP_URL, None), (SOAP_URL, AuthMethod.BASIC), (EX02 + "/a.svc", None), (EX02 + "/a.svc", AuthMethod.BASIC))),
    "anonymous-redirect-is-walked-anonymously": Asked(
        "soap", (REDIRECT(EX02 + "/a.svc"), CHALLENGE, OK(SOAP_OK)), None,
        ((SOAP_URL, None), (EX02 + "/a.svc", None), (EX02 + "/a.svc", AuthMethod.BASIC))),
    "same-origin-is-challenged-once": Asked(
        "soap", (CHALLENGE, REDIRECT("/x.svc"), OK(SOAP_OK)), None,
        ((SOAP_URL, None), (SOAP_URL, AuthMethod.BASIC), (HOST + "/x.svc", AuthMethod.BASIC))),
    "bare-401-offers-no-basic": Asked("soap", (answer(401),), Reason.METHOD_NOT_OFFERED, ((SOAP_URL, None),)),
    "switcheroo-to-basic-gets-no-ntlm": Asked(
        "pox", (CHALLENGE, OK(pox_redirect("redirectUrl", "RedirectUrl", EX02 + "/a.xml")), BASIC_ONLY),
        Reason.METHOD_NOT_OFFERED, ((POX_URL, None), (POX_URL, AuthMethod.NTLM), (EX02 + "/a.xml", None))),
    "switcheroo-to-basic-gets-no-token": Asked(
        "app", (CHALLENGE, OK(soap(user("RedirectUrl", "", "https://eu.outlook.com/a.svc"))), BASIC_ONLY),
        Reason.METHOD_NOT_OFFERED,
        ((APP_SOAP, None), (APP_SOAP, AuthMethod.OAUTH), ("https://eu.outlook.com/a.svc", None))),
    "signed-in-401-is-unauthorized": Asked("soap", (CHALLENGE, answer(401)), Reason.UNAUTHORIZED,
                                           ((SOAP_URL, None), (SOAP_URL, AuthMethod.BASIC))),
}  # fmt: skip


@pytest.mark.parametrize("row", CHALLENGED_FIRST.values(), ids=CHALLENGED_FIRST.keys())
async def test_credentials_only_after_the_origins_own_challenge(
    context: ProbeContext, monkeypatch: pytest.MonkeyPatch, row: Asked
) -> None:
    target = context.config.targets_by_name()[row.target]
    transport = scripted(monkeypatch, *row.answers)
    discovered = check.discover(context, target, ALICE, target.autodiscover_protocols[0])
    if row.reason is None:
        assert await discovered == EXTERNAL_EWS
    else:
        with pytest.raises(ProbeFailure) as caught:
            await discovered
        assert caught.value.reason == row.reason, caught.value
    assert [(url, method) for url, _, method in transport.asked] == list(row.asked)
    assert transport.answers == []


async def test_a_run_asks_each_origin_anonymously_once(context: ProbeContext, monkeypatch: pytest.MonkeyPatch) -> None:
    target = context.config.targets_by_name()["soap"]
    transport = scripted(monkeypatch, CHALLENGE, OK(SOAP_OK), OK(SOAP_OK))
    challenges: check.Challenges = {}
    for mailbox in (ALICE, BOB):
        assert await check.discover(context, target, mailbox, AutodiscoverProtocol.SOAP, challenges) == EXTERNAL_EWS
    assert [method for _, _, method in transport.asked] == [None, AuthMethod.BASIC, AuthMethod.BASIC]


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        pytest.param("https://contoso.co.uk/autodiscover/autodiscover.xml", (), True, id="the-configured-origin"),
        pytest.param("https://Contoso.CO.uk:443/other", (), True, id="the-same-origin-spelt-otherwise"),
        pytest.param("https://autodiscover.co.uk/", (), False, id="a-sibling-under-the-public-suffix"),
        pytest.param("https://mail.contoso.co.uk/", (), False, id="a-subdomain-needs-an-entry"),
        pytest.param("https://contoso.co.uk:8443/", (), False, id="another-port-is-another-origin"),
        pytest.param("https://mail.contoso.co.uk/", ("contoso.co.uk",), True, id="an-entry-allows-its-subdomains"),
        pytest.param("https://mail.contoso.co.uk:8443/", ("contoso.co.uk",), True, id="an-entry-allows-any-port"),
        pytest.param("https://MAIL.contoso.co.uk./", ("contoso.co.uk",), True, id="case-and-trailing-dot"),
        pytest.param("https://evilcontoso.co.uk/", ("contoso.co.uk",), False, id="a-suffix-is-not-a-subdomain"),
        pytest.param("http://mail.contoso.co.uk/", ("contoso.co.uk",), False, id="plain-http"),
        pytest.param("https://evil.test\\@mail.contoso.co.uk/", ("contoso.co.uk",), False, id="backslash-userinfo"),
        pytest.param("https://u:p@mail.contoso.co.uk/", ("contoso.co.uk",), False, id="userinfo"),
        pytest.param("https://mail%2econtoso.co.uk/", ("contoso.co.uk",), False, id="percent-escaped-host"),
        pytest.param("https://10.1.2.3:8443/", ("10.1.2.3",), True, id="an-address-entry"),
        pytest.param("https://4.10.1.2.3/", ("10.1.2.3",), False, id="an-address-has-no-subdomains"),
        pytest.param("https://[2001:db8::1]/", ("2001:db8::1",), True, id="an-ipv6-entry"),
        pytest.param("https://xn--mnchen-3ya.contoso.co.uk/", ("contoso.co.uk",), True, id="an-idn-host"),
        pytest.param("https://münchen.contoso.co.uk/", ("xn--mnchen-3ya.contoso.co.uk",), True, id="an-idn-entry"),
    ],
)  # fmt: skip
def test_redirect_rule(url: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert autodiscover.redirect_allowed(url, "https://contoso.co.uk/autodiscover/autodiscover.xml", allowed) is ok


async def test_ten_redirects_are_followed_and_the_eleventh_is_not(
    context: ProbeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = context.config.targets_by_name()["pox"]
    hops = [OK(pox_redirect("redirectAddr", "RedirectAddr", f"hop{i}@corp.example.com")) for i in range(1, 11)]
    transport = challenged(monkeypatch, context, target, *hops, OK(POX_OK))
    assert await check.discover(context, target, "alice@corp.example.com", AutodiscoverProtocol.POX) == EXTERNAL_EWS
    assert len(transport.asked) == 11
    challenged(
        monkeypatch, context, target, *hops, OK(pox_redirect("redirectAddr", "RedirectAddr", "hop11@corp.example.com"))
    )
    with pytest.raises(ProbeFailure) as caught:
        await check.discover(context, target, "alice@corp.example.com", AutodiscoverProtocol.POX)
    assert (caught.value.reason, caught.value.message) == (Reason.REDIRECT_BLOCKED, "more than 10 redirects")


@pytest.mark.parametrize(
    ("target", "method"),
    [
        pytest.param("pox", AuthMethod.NTLM, id="pox-signs-in-with-the-targets-method"),
        pytest.param("soap", AuthMethod.BASIC, id="soap-likewise"),
        pytest.param("json", None, id="json-is-anonymous"),
        pytest.param("app", AuthMethod.OAUTH, id="an-entra-credential-sends-a-token"),
        pytest.param("anonymous", None, id="no-credential-asks-anonymously"),
    ],
)
async def test_how_each_target_signs_in(
    context: ProbeContext, monkeypatch: pytest.MonkeyPatch, target: str, method: AuthMethod | None
) -> None:
    configured = context.config.targets_by_name()[target]
    transport = challenged(monkeypatch, context, configured, answer(401))
    with pytest.raises(ProbeFailure):
        await check.discover(context, configured, "alice@corp.example.com", configured.autodiscover_protocols[0])
    assert [m for _, _, m in transport.asked] == [method]


@pytest.mark.parametrize(
    ("target", "hint"),
    [
        pytest.param("app", "does not accept an app whose access is granted by RBAC for Applications", id="online-app"),
        pytest.param("pox", "the Autodiscover virtual directory's authentication", id="onprem-account"),
    ],
)
async def test_forbidden_hint_follows_the_sign_in(
    context: ProbeContext, monkeypatch: pytest.MonkeyPatch, target: str, hint: str
) -> None:
    configured = context.config.targets_by_name()[target]
    challenged(monkeypatch, context, configured, answer(403))
    with pytest.raises(ProbeFailure) as caught:
        await check.discover(context, configured, "alice@corp.example.com", configured.autodiscover_protocols[0])
    assert hint in caught.value.hint


# --- Against the simulator: its POX answer, the network and sign-in ---------------------------------------


async def test_simulator_answers_pox_with_microsofts_complete_shape(simulator: Simulator, tmp_path: Path) -> None:
    config = load_config(simulator.write_exporter_config(tmp_path / "bems.yml"))
    target = config.targets_by_name()["onprem-autodiscover"]
    resources = Resources()
    try:
        ctx = ProbeContext(config, Recorder(target.name, "autodiscover"), 5.0, resources)
        method = check._method(config, target, AutodiscoverProtocol.POX)
        response = await check._ask(
            ctx, target, target.url, "alice@corp.example.test", AutodiscoverProtocol.POX, method
        )
    finally:
        await resources.close()
    account = ElementTree.fromstring(response.body).find(f"{{{OUTLOOK_NS}}}Response/{{{OUTLOOK_NS}}}Account")
    assert account is not None
    protocols = account.findall(f"{{{OUTLOOK_NS}}}Protocol")
    assert [p.findtext(f"{{{OUTLOOK_NS}}}Type") for p in protocols] == ["EXCH", "EXPR", "WEB"]
    ews_url = config.targets_by_name()["onprem-ews"].url
    assert [p.findtext(f"{{{OUTLOOK_NS}}}EwsUrl") for p in protocols] == [ews_url, ews_url, None]
    nested = {
        side: protocols[2].find(f"{{{OUTLOOK_NS}}}{side}/{{{OUTLOOK_NS}}}Protocol") for side in ("Internal", "External")
    }
    for side, entry in nested.items():  # the entries that hid EwsUrl from the old reader (item 10)
        assert entry is not None, side
        assert [xml.tag.rpartition("}")[2] for xml in entry] == ["Type", "ASUrl"]
    assert autodiscover.read_pox(response).ews_url == ews_url


async def test_exchange_onlines_v2_answer_for_an_unknown_address(simulator: Simulator, tmp_path: Path) -> None:
    config = load_config(simulator.write_exporter_config(tmp_path / "bems.yml"))
    known = config.targets_by_name()["online-autodiscover"]
    assert (await run(config, known, "autodiscover")).success
    unknown = known.model_copy(update={"mailboxes": ("dave@contoso.test",)})
    result = await run(config, unknown, "autodiscover")
    assert result.reason == Reason.MAILBOX_NOT_FOUND, result


@dataclass(frozen=True)
class Fault:
    apply: Callable[[Simulator], Any]
    reason: Reason


FAULTS = {
    "refused": Fault(lambda sim: sim.set_fault("onprem-autodiscover", "refuse"), Reason.REFUSED),
    "hangs": Fault(lambda sim: sim.set_fault("onprem-autodiscover", "hang"), Reason.TIMEOUT),
    "expired-certificate": Fault(lambda sim: sim.set_fault("onprem-autodiscover", "expired"), Reason.CERTIFICATE),
    "wrong-host-certificate": Fault(lambda sim: sim.set_fault("onprem-autodiscover", "wrong_host"), Reason.CERTIFICATE),
    "untrusted-certificate": Fault(lambda sim: sim.set_fault("onprem-autodiscover", "untrusted"), Reason.CERTIFICATE),
    "not-tls": Fault(lambda sim: sim.set_fault("onprem-autodiscover", "plaintext"), Reason.TLS),
    "wrong-password": Fault(lambda sim: sim.set_account_fault("wrong_password"), Reason.UNAUTHORIZED),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_network_and_sign_in_failures(simulator: Simulator, tmp_path: Path, fault: Fault) -> None:
    config = load_config(simulator.write_exporter_config(tmp_path / "bems.yml", timeout="1s"))
    applied = fault.apply(simulator)
    if asyncio.iscoroutine(applied):
        await applied
    result = await run(config, config.targets_by_name()["onprem-autodiscover"], "autodiscover")
    assert result.reason == fault.reason, result
    assert result.steps and not any(step.ok for step in result.steps)


# --- The trap: a 302 to a stranger's host under the same public suffix (issue 15, item 2) ----------------

TRAP_HOST, SIBLING_HOST = NOMINAL_HOSTS["foreign"], "contoso.co.uk"  # autodiscover.co.uk beside contoso.co.uk


@pytest.fixture
def loopback_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """contoso.co.uk and autodiscover.co.uk resolve to 127.0.0.1, for aiohttp and requests alike (both ask
    socket.getaddrinfo); the connections, TLS and certificate checks are real."""
    resolve = socket.getaddrinfo

    def on_loopback(host: Any, *args: Any, **kwargs: Any) -> Any:
        loopback = isinstance(host, str) and host.lower().rstrip(".") in {TRAP_HOST, SIBLING_HOST}
        return resolve("127.0.0.1" if loopback else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", on_loopback)


class Redirector:
    """contoso.co.uk's Autodiscover, redirecting to the trap: before any sign-in, or after one (a 401 offering
    Basic and Bearer first, then a 302 for any request with credentials), as a hijacked DNS record or a
    compromised front end would."""

    def __init__(self, location: str, challenge_first: bool) -> None:
        self.location, self.challenge_first = location, challenge_first
        self.authorizations: list[str | None] = []
        self.port = 0

    async def answer(self, request: web.Request) -> web.Response:
        await request.read()
        self.authorizations.append(request.headers.get("Authorization"))
        if self.challenge_first and "Authorization" not in request.headers:
            response = web.Response(status=401)
            response.headers.add("WWW-Authenticate", f'Basic realm="{SIBLING_HOST}"')
            response.headers.add("WWW-Authenticate", "Bearer")
            return response
        return web.Response(status=302, headers={"Location": self.location})


@pytest_asyncio.fixture(loop_scope="module")
async def redirector(simulator: Simulator, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Redirector]:
    trap_port = simulator.endpoints["foreign"].port
    redirector = Redirector(f"https://{TRAP_HOST}:{trap_port}{autodiscover.POX_PATH}", request.param)
    cert, key = simulator.issue_certificate([SIBLING_HOST], ["127.0.0.1"])
    (tmp_path / "sibling.pem").write_bytes(cert + key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "sibling.pem")
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", redirector.answer)
    sock = bind_loopback_socket("127.0.0.1", 0)
    redirector.port = sock.getsockname()[1]
    runner = await serve_app(app, sock, context)
    try:
        yield redirector
    finally:
        await runner.cleanup()


SIGN_INS = {
    "basic": {"credential": "bemsadmin", "auth": ["basic"], "exchange": "onprem", "protocols": ["pox"]},
    "ntlm": {"credential": "bemsadmin", "auth": ["ntlm"], "exchange": "onprem", "protocols": ["pox"]},
    "oauth": {"credential": "entra-app", "exchange": "online", "protocols": ["soap"]},
}


def sibling_config(simulator: Simulator, tmp_path: Path, port: int, sign_in: str, allowed: list[str] | None) -> Config:
    written = yaml.safe_load(simulator.write_exporter_config(tmp_path / "sim.yml").read_text())
    target = {"name": "sibling", "kind": "autodiscover", "url": f"https://{SIBLING_HOST}:{port}{autodiscover.POX_PATH}",
              "mailboxes": ["alice@contoso.co.uk"], **SIGN_INS[sign_in]}  # fmt: skip
    if allowed is not None:
        target["allowed_redirect_hosts"] = allowed
    path = tmp_path / "sibling.yml"
    path.write_text(yaml.safe_dump({**written, "targets": [target]}))
    return load_config(path)


@pytest.mark.usefixtures("loopback_names")
@pytest.mark.parametrize(
    ("sign_in", "redirector"),
    [
        pytest.param("basic", False, id="basic-redirect-before-sign-in"),
        pytest.param("basic", True, id="basic-redirect-after-sign-in"),
        # The redirector speaks no NTLM handshake: NTLM is proven by the redirect before the sign-in.
        pytest.param("ntlm", False, id="ntlm-redirect-before-sign-in"),
        pytest.param("oauth", False, id="oauth-redirect-before-sign-in"),
        pytest.param("oauth", True, id="oauth-redirect-after-sign-in"),
    ],
    indirect=["redirector"],
)
async def test_a_sibling_registrant_under_the_public_suffix_gets_nothing(
    simulator: Simulator, tmp_path: Path, redirector: Redirector, sign_in: str
) -> None:
    """The issue's reproduction: contoso.co.uk redirects to autodiscover.co.uk. The old default (the parent
    domain, co.uk) followed, and the trap got the Basic password or the bearer token; now nothing reaches it."""
    config = sibling_config(simulator, tmp_path, redirector.port, sign_in, allowed=None)
    result = await run(config, config.targets[0], "autodiscover")
    assert result.reason == Reason.REDIRECT_BLOCKED, result
    assert simulator.foreign.requests == []  # not a request, let alone an Authorization header
    # contoso.co.uk itself is the configured host: asked anonymously first, signed in once it challenged.
    assert redirector.authorizations[0] is None
    assert len(redirector.authorizations) == (2 if redirector.challenge_first else 1)


@pytest.mark.usefixtures("loopback_names")
@pytest.mark.parametrize("redirector", [False], ids=["redirect-before-sign-in"], indirect=True)
@pytest.mark.parametrize(
    ("sign_in", "reason", "authorized"),
    [
        pytest.param("basic", Reason.UNAUTHORIZED, [False, True], id="basic-after-its-challenge"),
        pytest.param("ntlm", Reason.METHOD_NOT_OFFERED, [False], id="ntlm-never-for-a-basic-challenge"),
        pytest.param("oauth", Reason.METHOD_NOT_OFFERED, [False], id="no-token-for-a-basic-challenge"),
    ],
)
async def test_an_allowed_redirect_target_is_asked_anonymously_first(
    simulator: Simulator, tmp_path: Path, redirector: Redirector, sign_in: str, reason: Reason, authorized: list[bool]
) -> None:
    """Listed in allowed_redirect_hosts, the trap is asked, but anonymously first: Basic goes only after its own
    Basic challenge (the entry says it is trusted), and its "switcheroo" gets neither NTLM nor a token."""
    config = sibling_config(simulator, tmp_path, redirector.port, sign_in, allowed=[TRAP_HOST])
    result = await run(config, config.targets[0], "autodiscover")
    assert result.reason == reason, result
    assert [r.authorization is not None for r in simulator.foreign.requests] == authorized
