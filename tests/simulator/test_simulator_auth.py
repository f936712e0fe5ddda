"""The simulator's authentication, driven by the real client libraries the exporter uses.

Blocking clients (requests, requests-ntlm, msal, http.client) run in threads so the in-process
simulator keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import ssl
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
import spnego
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from requests_ntlm import HttpNtlmAuth
from spnego.channel_bindings import GssChannelBindings

from bems_simulator import Simulator
from bems_simulator.pki import create_signing_certificate

# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")

EWS_PATH = "/EWS/Exchange.asmx"
POX_PATH = "/autodiscover/autodiscover.xml"
EXO_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


def get_folder(folder: str = "msgfolderroot", impersonate: str | None = None, mailbox: str | None = None) -> bytes:
    header = (
        "<soap:Header><t:RequestServerVersion Version='Exchange2016'/>"
        + (
            f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{impersonate}"
            "</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
            if impersonate
            else ""
        )
        + "</soap:Header>"
    )
    mailbox_xml = f"<t:Mailbox><t:EmailAddress>{mailbox}</t:EmailAddress></t:Mailbox>" if mailbox else ""
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        "<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'"
        " xmlns:t='http://schemas.microsoft.com/exchange/services/2006/types'"
        " xmlns:m='http://schemas.microsoft.com/exchange/services/2006/messages'>"
        f"{header}<soap:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>"
        f"<m:FolderIds><t:DistinguishedFolderId Id='{folder}'>{mailbox_xml}</t:DistinguishedFolderId></m:FolderIds>"
        "</m:GetFolder></soap:Body></soap:Envelope>"
    ).encode()


def pox_request(address: str) -> bytes:
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        "<Autodiscover xmlns='http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006'>"
        f"<Request><EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>"
        "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
        "</AcceptableResponseSchema></Request></Autodiscover>"
    ).encode()


@pytest.fixture
def simulator(simulator: Simulator) -> Iterator[Simulator]:
    assert "NTLM_USER_FILE" not in os.environ
    yield simulator
    # The acceptor's credential file is set around each NTLM step only, never left behind.
    assert "NTLM_USER_FILE" not in os.environ


def url(simulator: Simulator, endpoint: str, path: str) -> str:
    return simulator.endpoints[endpoint].url + path


def post(simulator: Simulator, endpoint: str, path: str, body: bytes, **kwargs: Any) -> requests.Response:
    headers = {"Content-Type": "text/xml; charset=utf-8", **kwargs.pop("headers", {})}
    return requests.post(
        url(simulator, endpoint, path), data=body, headers=headers, verify=simulator.ca_file, timeout=10, **kwargs
    )


def ntlm(simulator: Simulator, **kwargs: Any) -> HttpNtlmAuth:
    return HttpNtlmAuth(simulator.credentials.onprem_username, simulator.credentials.onprem_password, **kwargs)


def basic(simulator: Simulator) -> tuple[str, str]:
    return simulator.credentials.onprem_username, simulator.credentials.onprem_password


def assert_iis_challenge(response: requests.Response, *schemes: str) -> None:
    assert response.status_code == 401
    assert response.headers["Content-Length"] == "0"
    assert response.headers.get("Connection", "").lower() != "close"
    assert [value.split()[0] for value in response.raw.headers.getlist("WWW-Authenticate")] == list(schemes)


# --- on-prem: Basic, NTLM, Negotiate, Extended Protection ---------------------------------------------


async def test_basic_and_ntlm_get_real_responses_on_both_onprem_endpoints(simulator: Simulator) -> None:
    for auth in [basic(simulator), ntlm(simulator)]:
        response = await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=auth)
        assert response.status_code == 200, response.headers
        assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
        assert 'MajorVersion="15" MinorVersion="2"' in response.text
        assert '<m:GetFolderResponseMessage ResponseClass="Success">' in response.text
        assert "<t:DisplayName>Top of Information Store</t:DisplayName>" in response.text

        response = await asyncio.to_thread(
            post, simulator, "onprem-autodiscover", POX_PATH, pox_request("alice@corp.example.test"), auth=auth
        )
        assert response.status_code == 200
        assert f"<EwsUrl>{url(simulator, 'onprem-ews', EWS_PATH)}</EwsUrl>" in response.text


async def test_wrong_credentials_get_the_iis_challenge(simulator: Simulator) -> None:
    wrong = (simulator.credentials.onprem_username, "not-the-password")
    for auth in [wrong, HttpNtlmAuth(*wrong)]:
        response = await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=auth)
        assert_iis_challenge(response, "Negotiate", "NTLM", "Basic")


class RawConnection:
    """One kept-alive HTTPS connection, to hand-drive an NTLM handshake leg by leg."""

    def __init__(self, simulator: Simulator, endpoint: str) -> None:
        context = ssl.create_default_context(cafile=str(simulator.ca_file))
        self._connection = http.client.HTTPSConnection("localhost", simulator.endpoints[endpoint].port, context=context)
        self._connection.connect()
        self.path = EWS_PATH if endpoint.endswith("ews") else POX_PATH

    def send(self, authorization: str | None, body: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers = {"Content-Type": "text/xml", **({"Authorization": authorization} if authorization else {})}
        self._connection.request("POST", self.path, body=body, headers=headers)
        response = self._connection.getresponse()
        return response.status, response.headers, response.read()

    def channel_bindings(self) -> GssChannelBindings:
        certificate = x509.load_der_x509_certificate(self._connection.sock.getpeercert(binary_form=True))
        return GssChannelBindings(application_data=b"tls-server-end-point:" + certificate.fingerprint(hashes.SHA256()))

    def close(self) -> None:
        self._connection.close()


def handshake(
    simulator: Simulator,
    scheme: str = "NTLM",
    protocol: str = "ntlm",
    bindings: str = "right",
    reconnect_before_authenticate: bool = False,
) -> list[int]:
    """Drive NTLM by hand; returns the statuses of: AUTHENTICATE, and a follow-up without Authorization."""
    connection = RawConnection(simulator, "onprem-ews")
    try:
        channel_bindings = {
            "right": connection.channel_bindings(),
            "wrong": GssChannelBindings(application_data=b"tls-server-end-point:" + bytes(32)),
            "none": None,
        }[bindings]
        client = spnego.client(*basic(simulator), service="http", protocol=protocol, channel_bindings=channel_bindings)
        status, headers, _ = connection.send(f"{scheme} {base64.b64encode(client.step()).decode()}", get_folder())
        assert status == 401
        [challenge] = headers.get_all("WWW-Authenticate")
        assert challenge.startswith(f"{scheme} ")
        authenticate = client.step(base64.b64decode(challenge.split()[1]))
        if reconnect_before_authenticate:
            connection.close()
            connection = RawConnection(simulator, "onprem-ews")
        status, _, body = connection.send(f"{scheme} {base64.b64encode(authenticate).decode()}", get_folder())
        statuses = [status]
        if status == 200:
            assert b"GetFolderResponse" in body
            statuses.append(connection.send(None, get_folder())[0])
        return statuses
    finally:
        connection.close()


async def test_ntlm_handshake_belongs_to_its_connection(simulator: Simulator) -> None:
    # Type 1, Type 2, Type 3 on one kept-alive connection; it then stays authenticated.
    assert await asyncio.to_thread(handshake, simulator) == [200, 200]
    # A new connection between CHALLENGE and AUTHENTICATE fails, as on IIS.
    assert await asyncio.to_thread(handshake, simulator, reconnect_before_authenticate=True) == [401]


async def test_negotiate_carries_raw_and_spnego_wrapped_ntlm(simulator: Simulator) -> None:
    assert await asyncio.to_thread(handshake, simulator, scheme="Negotiate", protocol="ntlm") == [200, 200]
    assert await asyncio.to_thread(handshake, simulator, scheme="Negotiate", protocol="negotiate") == [200, 200]


async def test_extended_protection_modes(simulator: Simulator) -> None:
    # Defaults from Exchange's recommended settings: Allow on EWS, off on Autodiscover.
    assert simulator.virtual_directory("onprem-ews").state()["extended_protection"] == "allow"
    assert simulator.virtual_directory("onprem-autodiscover").state()["extended_protection"] == "none"

    expected = {
        "none": {"right": 200, "wrong": 200, "none": 200},
        "allow": {"right": 200, "wrong": 401, "none": 200},
        "require": {"right": 200, "wrong": 401, "none": 401},
    }
    for mode, by_bindings in expected.items():
        simulator.set_extended_protection("onprem-ews", mode)
        for bindings, status in by_bindings.items():
            statuses = await asyncio.to_thread(handshake, simulator, bindings=bindings)
            assert statuses[0] == status, (mode, bindings)

    # requests-ntlm computes the bindings from the certificate on its own.
    simulator.set_extended_protection("onprem-ews", "require")
    response = await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=ntlm(simulator))
    assert response.status_code == 200
    response = await asyncio.to_thread(
        post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=ntlm(simulator, send_cbt=False)
    )
    assert response.status_code == 401


async def test_account_faults_reject_basic_and_ntlm(simulator: Simulator) -> None:
    for fault in ["wrong_password", "locked"]:
        simulator.set_account_fault(fault)
        for auth in [basic(simulator), ntlm(simulator)]:
            response = await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=auth)
            assert_iis_challenge(response, "Negotiate", "NTLM", "Basic")
    simulator.set_account_fault("none")
    response = await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=ntlm(simulator))
    assert response.status_code == 200
    with pytest.raises(ValueError, match="valid: none, wrong_password, locked"):
        simulator.set_account_fault("expired")


async def test_basic_disabled_on_the_virtual_directory(simulator: Simulator) -> None:
    simulator.set_auth_methods("onprem-ews", ["ntlm", "negotiate"])
    response = await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=basic(simulator))
    assert_iis_challenge(response, "Negotiate", "NTLM")
    response = await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, get_folder(), auth=ntlm(simulator))
    assert response.status_code == 200


# --- EWS and Autodiscover answers -----------------------------------------------------------------------


async def test_ews_error_channels(simulator: Simulator) -> None:
    auth = basic(simulator)

    async def ews(body: bytes) -> requests.Response:
        return await asyncio.to_thread(post, simulator, "onprem-ews", EWS_PATH, body, auth=auth)

    response = await ews(b"<not-xml")
    assert response.status_code == 500
    assert "<faultcode xmlns:a=" in response.text and "a:ErrorSchemaValidation</faultcode>" in response.text
    assert "s:Header" not in response.text

    response = await ews(get_folder().replace(b"GetFolder", b"FindPeople"))
    assert response.status_code == 500
    assert "<e:ResponseCode" in response.text and ">ErrorInvalidRequest</e:ResponseCode>" in response.text

    response = await ews(get_folder("nosuchfolder"))
    assert response.status_code == 500
    assert "DistinguishedFolderIdNameType" in response.text

    response = await ews(get_folder("inbox", mailbox="nobody@corp.example.test"))
    assert response.status_code == 200
    assert '<m:GetFolderResponseMessage ResponseClass="Error">' in response.text
    assert "<m:ResponseCode>ErrorNonExistentMailbox</m:ResponseCode>" in response.text

    response = await ews(get_folder("inbox", impersonate="nobody@corp.example.test"))
    assert response.status_code == 500
    assert "a:ErrorNonExistentMailbox" in response.text

    response = await ews(get_folder("inbox", mailbox="bob@corp.example.test"))
    assert response.status_code == 200
    assert "<t:DisplayName>Inbox</t:DisplayName>" in response.text


async def test_pox_autodiscover_unknown_mailbox(simulator: Simulator) -> None:
    response = await asyncio.to_thread(
        post, simulator, "onprem-autodiscover", POX_PATH, pox_request("nobody@corp.example.test"), auth=basic(simulator)
    )
    assert response.status_code == 200
    assert "<ErrorCode>500</ErrorCode><Message>The email address can't be found.</Message>" in response.text


# --- Entra ID and Exchange Online -----------------------------------------------------------------------


@contextmanager
def msal_app(
    simulator: Simulator,
    credential: Any = None,
    tenant: str | None = None,
    client_id: str | None = None,
    cache: msal.TokenCache | None = None,
) -> Iterator[msal.ConfidentialClientApplication]:
    """An MSAL app for the simulator's Entra ID, as the exporter builds one; blocking (discovery happens in
    the constructor)."""
    credentials = simulator.credentials
    # Not msal's verify=: requests lets REQUESTS_CA_BUNDLE from the environment override a session's verify.
    with requests.Session() as session:
        session.verify = str(simulator.ca_file)
        session.trust_env = False
        yield msal.ConfidentialClientApplication(
            client_id or credentials.client_id,
            client_credential=credential if credential is not None else credentials.client_secret,
            authority=f"{simulator.endpoints['entra'].url}/{tenant or credentials.tenant_id}",
            instance_discovery=False,
            http_client=session,
            token_cache=cache,
        )


def acquire(simulator: Simulator, scope: str = EXO_SCOPE, times: int = 1, **kwargs: Any) -> dict[str, Any]:
    """The result of the last of ``times`` acquisitions by one MSAL app."""
    with msal_app(simulator, **kwargs) as app:
        for _ in range(times):
            result = app.acquire_token_for_client([scope])
        return result


def online_ews(
    simulator: Simulator, token: str, body: bytes, anchor: str | None = "carol@contoso.test"
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", **({"X-AnchorMailbox": anchor} if anchor else {})}
    return post(simulator, "online-ews", EWS_PATH, body, headers=headers)


async def test_client_secret_token_works_on_exchange_online(simulator: Simulator) -> None:
    # MSAL serves the second request from its cache: the token endpoint sees one request.
    result = await asyncio.to_thread(acquire, simulator, times=2)
    assert simulator.entra.token_requests[(simulator.credentials.client_id, EXO_SCOPE)] == 1
    assert (result["token_type"], result["token_source"]) == ("Bearer", "cache")
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://outlook.office365.com"
    assert claims["roles"] == ["full_access_as_app", "Exchange.ManageAsApp"]
    assert claims["tid"] == simulator.credentials.tenant_guid
    assert claims["appid"] == simulator.credentials.client_id
    assert claims["exp"] - claims["iat"] == 3599

    token = result["access_token"]
    response = await asyncio.to_thread(
        online_ews, simulator, token, get_folder("inbox", impersonate="carol@contoso.test")
    )
    assert response.status_code == 200
    assert 'MinorVersion="20"' in response.text and "<t:DisplayName>Inbox</t:DisplayName>" in response.text

    # App-only tokens need the impersonation header (a 500 fault) and X-AnchorMailbox.
    response = await asyncio.to_thread(online_ews, simulator, token, get_folder("inbox"))
    assert response.status_code == 500
    assert "ExchangeImpersonation SOAP header must be present for this type of OAuth token." in response.text
    response = await asyncio.to_thread(
        online_ews, simulator, token, get_folder("inbox", impersonate="carol@contoso.test"), anchor=None
    )
    assert response.status_code == 503


async def test_certificate_credential_and_guid_tenant(simulator: Simulator) -> None:
    entra = simulator.entra
    assert stat.S_IMODE(entra.app_private_key_file.stat().st_mode) == 0o600
    private_key = entra.app_private_key_file.read_text()
    certificate = entra.app_certificate_file.read_text()
    for credential in [
        {"private_key": private_key, "thumbprint": entra.app_certificate_thumbprint},  # RS256 with x5t
        {"private_key": private_key, "public_certificate": certificate},  # PS256 with x5t#S256
    ]:
        result = await asyncio.to_thread(
            acquire, simulator, GRAPH_SCOPE, credential=credential, tenant=simulator.credentials.tenant_guid
        )
        assert "access_token" in result, result
        claims = jwt.decode(result["access_token"], options={"verify_signature": False})
        assert claims["aud"] == "https://graph.microsoft.com"
        assert claims["roles"] == ["Mail.Read", "User.Read.All"]

    # A certificate Entra does not know for the app.
    other_certificate, other_pem = create_signing_certificate("someone else")
    result = await asyncio.to_thread(
        acquire,
        simulator,
        credential={"private_key": other_pem.decode(), "public_certificate": other_certificate.decode()},
    )
    assert result["error"] == "invalid_client" and result["error_codes"] == [700027]


async def test_entra_errors(simulator: Simulator) -> None:
    credentials = simulator.credentials

    result = await asyncio.to_thread(acquire, simulator, credential="wrong-secret")
    assert (result["error"], result["error_codes"]) == ("invalid_client", [7000215])
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.\r\nTrace ID: ")

    simulator.configure_entra(secret_expired=True)
    result = await asyncio.to_thread(acquire, simulator)
    assert (result["error"], result["error_codes"]) == ("invalid_client", [7000222])
    simulator.configure_entra(secret_expired=False)

    token_url = f"{simulator.endpoints['entra'].url}/{credentials.tenant_id}/oauth2/v2.0/token"
    form = {"client_id": credentials.client_id, "scope": EXO_SCOPE, "grant_type": "client_credentials"}

    def token_request(url: str = token_url, **changes: str) -> requests.Response:
        data = {**form, "client_secret": credentials.client_secret, **changes}
        return requests.post(url, data=data, verify=simulator.ca_file, timeout=10)

    response = await asyncio.to_thread(token_request, client_id="99999999-0000-0000-0000-000000000000")
    assert response.status_code == 400
    assert (response.json()["error"], response.json()["error_codes"]) == ("unauthorized_client", [700016])

    response = await asyncio.to_thread(token_request, token_url.replace(credentials.tenant_id, "fabrikam.example"))
    assert response.status_code == 400
    assert (response.json()["error"], response.json()["error_codes"]) == ("invalid_request", [90002])

    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        await asyncio.to_thread(acquire, simulator, tenant="fabrikam.example")
    response = await asyncio.to_thread(
        requests.get,
        f"{simulator.endpoints['entra'].url}/fabrikam.example/v2.0/.well-known/openid-configuration",
        verify=simulator.ca_file,
        timeout=10,
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_tenant")

    simulator.configure_entra(token_endpoint_down=True)
    assert (await asyncio.to_thread(token_request)).status_code == 503
    simulator.configure_entra(token_endpoint_down=False, throttled=True, throttled_retry_after_seconds=7)
    response = await asyncio.to_thread(token_request)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    simulator.configure_entra(throttled=False)

    simulator.configure_entra(expires_in=600)
    assert (await asyncio.to_thread(token_request)).json()["expires_in"] == 600
    with pytest.raises(ValueError, match="must be a bool"):
        simulator.configure_entra(throttled="yes")
    with pytest.raises(ValueError, match="unknown Entra setting"):
        simulator.configure_entra(lifetime=5)

    # Every POST counts, whatever its outcome (MSAL's wrong and expired secret calls included).
    assert sum(simulator.entra.token_requests.values()) == 7


async def test_exchange_online_rejects_tokens_with_diagnostics(simulator: Simulator) -> None:
    body = get_folder("inbox", impersonate="carol@contoso.test")

    async def diagnostic(token: str) -> str:
        response = await asyncio.to_thread(online_ews, simulator, token, body)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith(
            'Bearer client_id="00000002-0000-0ff1-ce00-000000000000"'
        )
        return response.headers["x-ms-diagnostics"]

    assert (await diagnostic("not-a-jwt")).startswith("2000001;")
    graph_token = (await asyncio.to_thread(acquire, simulator, GRAPH_SCOPE))["access_token"]
    assert (await diagnostic(graph_token)).startswith("2000003;")
    # Signed by someone else: a key of our own making, with the right claims.
    claims = jwt.decode(graph_token, options={"verify_signature": False}) | {"aud": "https://outlook.office365.com"}
    forged = jwt.encode(claims, simulator.entra.app_private_key_file.read_bytes(), algorithm="RS256")
    assert (await diagnostic(forged)).startswith("2000001;")

    simulator.configure_entra(roles_granted=False)
    unconsented = (await asyncio.to_thread(acquire, simulator))["access_token"]
    assert "roles" not in jwt.decode(unconsented, options={"verify_signature": False})
    assert (await diagnostic(unconsented)).startswith("2000008;")


# --- control surfaces ----------------------------------------------------------------------------------


async def test_admin_api_switches_auth_faults(simulator: Simulator) -> None:
    api = simulator.admin_url + "/api/v1/auth"

    def call(method: str, path: str = "", body: Any = None) -> tuple[int, Any]:
        response = requests.request(method, api + path, json=body, timeout=10)
        return response.status_code, response.json()

    status, state = await asyncio.to_thread(call, "GET")
    assert status == 200
    assert state["account"] == {"username": "CORP\\BEMSAdmin", "fault": "none"}
    assert state["endpoints"]["onprem-ews"] == {
        "methods": ["negotiate", "ntlm", "basic"],
        "extended_protection": "allow",
        "ntlm_enabled": True,
        "tls_offloaded": False,
        "oauth": False,
        "client_certificate": "ignore",
    }
    assert state["entra"]["app_certificate_file"] == str(simulator.entra.app_certificate_file)

    assert await asyncio.to_thread(call, "PUT", "/account", {"fault": "locked"}) == (
        200,
        {"username": "CORP\\BEMSAdmin", "fault": "locked"},
    )
    status, body = await asyncio.to_thread(
        call, "PUT", "/endpoints/onprem-autodiscover", {"methods": ["basic"], "extended_protection": "require"}
    )
    assert (status, body) == (
        200,
        {"onprem-autodiscover": {
            "methods": ["basic"], "extended_protection": "require", "ntlm_enabled": True, "tls_offloaded": False,
            "oauth": False, "client_certificate": "ignore",
        }},
    )  # fmt: skip
    status, body = await asyncio.to_thread(
        call, "PUT", "/endpoints/onprem-ews", {"ntlm_enabled": False, "tls_offloaded": True}
    )
    assert status == 200 and body["onprem-ews"]["ntlm_enabled"] is False and body["onprem-ews"]["tls_offloaded"]
    assert simulator.virtual_directory("onprem-ews").www_authenticate() == [
        "Negotiate",
        'Basic realm="mail.corp.example.test"',
    ]
    status, body = await asyncio.to_thread(call, "PATCH", "/entra", {"throttled": True})
    assert status == 200 and body["throttled"] is True

    assert (await asyncio.to_thread(call, "PUT", "/endpoints/graph", {"methods": ["basic"]}))[0] == 404
    assert (await asyncio.to_thread(call, "PUT", "/endpoints/onprem-ews", {"methods": ["kerberos"]}))[0] == 400
    assert (await asyncio.to_thread(call, "PUT", "/account", {"fault": "sleepy"}))[0] == 400
    assert (await asyncio.to_thread(call, "PATCH", "/entra", {"expires_in": -1}))[0] == 400
    assert simulator.virtual_directory("onprem-ews").state()["methods"] == ["negotiate", "ntlm", "basic"]


async def test_exporter_config_with_the_certificate_credential(simulator: Simulator, tmp_path: Path) -> None:
    path = simulator.write_exporter_config(tmp_path / "exporter.yml", entra_app_auth="certificate")
    config = yaml.safe_load(path.read_text())
    assert config["credentials"]["entra-app-cert"] == {
        "tenant_id": "contoso.onmicrosoft.com",
        "client_id": simulator.credentials.client_id,
        "certificate_file": str(simulator.entra.app_certificate_file),
        "private_key_file": str(simulator.entra.app_private_key_file),
        "authority": simulator.endpoints["entra"].url,
    }
    assert "entra-app" not in config["credentials"]
    online = [target for target in config["targets"] if target.get("credential", "").startswith("entra")]
    assert {target["credential"] for target in online} == {"entra-app-cert"}
    # The thumbprint the app registration shows is the certificate file's SHA-1.
    certificate = x509.load_pem_x509_certificate(simulator.entra.app_certificate_file.read_bytes())
    assert simulator.entra.app_certificate_thumbprint == certificate.fingerprint(hashes.SHA1()).hex().upper()


async def test_traffic_counts_requests_connections_and_ntlm_handshakes(simulator: Simulator) -> None:
    """The benchmark's requests-on-the-wire figures: three requests on one kept-alive NTLM session, one on another."""

    def traffic() -> dict[str, int]:
        return requests.get(simulator.admin_url + "/api/v1/traffic", timeout=10).json()["onprem-ews"]

    def sign_in(session: requests.Session) -> None:
        response = session.post(
            url(simulator, "onprem-ews", EWS_PATH), data=get_folder(), auth=ntlm(simulator), verify=simulator.ca_file
        )
        assert response.status_code == 200

    def sessions() -> None:
        with requests.Session() as session:
            for _ in range(3):
                sign_in(session)
        with requests.Session() as session:
            sign_in(session)

    before = await asyncio.to_thread(traffic)
    await asyncio.to_thread(sessions)
    after = await asyncio.to_thread(traffic)
    assert after["connections"] - before["connections"] == 2
    assert after["ntlm_handshakes"] - before["ntlm_handshakes"] == 2
    # A handshake is three requests (anonymous, NEGOTIATE, AUTHENTICATE); later ones on its connection are one each.
    assert after["requests"] - before["requests"] == (3 + 1 + 1) + 3


async def test_admin_api_sets_client_certificates_kerberos_and_hybrid_modern_auth(
    simulator: Simulator, tmp_path: Path
) -> None:
    api = simulator.admin_url + "/api/v1/auth"

    def call(method: str, path: str, body: Any) -> tuple[int, Any]:
        response = requests.request(method, api + path, json=body, timeout=10)
        return response.status_code, response.json()

    status, body = await asyncio.to_thread(call, "PUT", "/endpoints/onprem-ews", {"client_certificate": "require"})
    assert (status, body["onprem-ews"]["client_certificate"]) == (200, "require")
    status, issued = await asyncio.to_thread(call, "POST", "/client_certificates", {"variant": "mapped"})
    assert status == 200
    (tmp_path / "c.pem").write_text(issued["certificate_pem"])
    (tmp_path / "k.pem").write_text(issued["key_pem"])

    def get_folder(cert: tuple[str, str] | None) -> int:
        return requests.post(
            simulator.endpoints["onprem-ews"].url + "/EWS/Exchange.asmx", data=b"<soap/>", cert=cert,
            headers={"Content-Type": "text/xml"}, verify=str(simulator.ca_file), timeout=10,
        ).status_code  # fmt: skip

    assert await asyncio.to_thread(get_folder, None) == 403  # 403.7: no certificate
    # Signed in with the certificate: EWS itself answers, with a SOAP fault for the empty envelope.
    assert await asyncio.to_thread(get_folder, (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))) == 500

    assert await asyncio.to_thread(call, "PUT", "/kerberos", {"keytab": str(tmp_path / "http.keytab")}) == (
        200,
        {"keytab": str(tmp_path / "http.keytab")},
    )
    status, endpoints = await asyncio.to_thread(call, "PUT", "/hybrid_modern_auth", {"enabled": True})
    assert status == 200 and endpoints["onprem-autodiscover"]["oauth"] is True
    assert simulator.endpoints["onprem-ews"].url in simulator.entra.hybrid_resources
    assert (await asyncio.to_thread(call, "PUT", "/endpoints/onprem-ews", {"client_certificate": "sometimes"}))[
        0
    ] == 400
    assert (await asyncio.to_thread(call, "POST", "/client_certificates", {"variant": "stolen"}))[0] == 400
