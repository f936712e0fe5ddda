"""The simulator's fake Entra ID, judged by MSAL, the client the exporter uses: where they disagree, the
simulator is wrong.

MSAL runs as the exporter runs it (``ConfidentialClientApplication``, ``instance_discovery=False``, the
simulator's CA through a requests session) and blocks, so it runs in a thread while the simulator serves.
Claims are those of the v1 app-only access tokens Exchange Online and Graph receive
(learn.microsoft.com/entra/identity-platform/access-token-claims-reference); error shapes those of the
Entra token endpoint (learn.microsoft.com/entra/identity-platform/reference-error-codes, and
v2-oauth2-client-creds-grant-flow "Error response").
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
import yaml
from check_runner import run
from test_simulator_auth import msal_app

from bems_simulator import Simulator
from exporter.config import load_config
from exporter.results import Reason

# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")

EXO_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
UNKNOWN_APP = "99999999-0000-0000-0000-000000000000"


def acquire(simulator: Simulator, scopes: list[str], **app: Any) -> list[dict[str, Any]]:
    """Every result of one MSAL app acquiring ``scopes`` in turn (blocking)."""
    with msal_app(simulator, **app) as client:
        return [client.acquire_token_for_client([scope]) for scope in scopes]


def certificate(simulator: Simulator) -> dict[str, str]:
    entra = simulator.entra
    return {"private_key": entra.app_private_key_file.read_text(), "thumbprint": entra.app_certificate_thumbprint}


def signing_keys(simulator: Simulator, tenant: str) -> dict[str, Any]:
    """The JWKS a resource finds from the tenant's OpenID configuration, by ``kid``."""
    with requests.Session() as session:
        session.verify = str(simulator.ca_file)
        session.trust_env = False
        base = f"{simulator.endpoints['entra'].url}/{tenant}/v2.0/.well-known/openid-configuration"
        jwks_uri = session.get(base, timeout=10).json()["jwks_uri"]
        return {key["kid"]: jwt.PyJWK(key) for key in session.get(jwks_uri, timeout=10).json()["keys"]}


@pytest.mark.parametrize(
    ("scope", "audience", "roles"),
    [
        pytest.param(
            EXO_SCOPE,
            "https://outlook.office365.com",
            ["full_access_as_app", "Exchange.ManageAsApp"],
            id="exchange-online",
        ),
        pytest.param(GRAPH_SCOPE, "https://graph.microsoft.com", ["Mail.Read", "User.Read.All"], id="graph"),
    ],
)
@pytest.mark.parametrize(("with_certificate", "appidacr"), [(False, "1"), (True, "2")], ids=["secret", "certificate"])
async def test_tokens_carry_the_claims_resources_check(
    simulator: Simulator, scope: str, audience: str, roles: list[str], with_certificate: bool, appidacr: str
) -> None:
    credential = certificate(simulator) if with_certificate else None
    [result] = await asyncio.to_thread(acquire, simulator, [scope], credential=credential)
    assert (result["token_type"], result["token_source"]) == ("Bearer", "identity_provider"), result
    tenant_guid = simulator.credentials.tenant_guid
    keys = await asyncio.to_thread(signing_keys, simulator, simulator.credentials.tenant_id)
    header = jwt.get_unverified_header(result["access_token"])
    # What a resource does: the key named by kid, from the jwks_uri of the tenant's discovery document.
    claims = jwt.decode(
        result["access_token"], keys[header["kid"]], algorithms=["RS256"], audience=audience,
        issuer=f"https://sts.windows.net/{tenant_guid}/",
    )  # fmt: skip
    assert claims["roles"] == roles
    assert claims["tid"] == tenant_guid
    # A v1 token names the app in appid and how it authenticated in appidacr (1 secret, 2 certificate);
    # azp/azpacr are their v2 names and are not in a v1 token.
    assert (claims["appid"], claims["appidacr"]) == (simulator.credentials.client_id, appidacr)
    assert "azp" not in claims
    assert (claims["ver"], claims["idtyp"]) == ("1.0", "app")
    assert claims["oid"] == claims["sub"]  # an app-only token's subject is the service principal
    assert claims["exp"] - claims["iat"] == result["expires_in"]


def _aadsts_body(text: str) -> dict[str, Any]:
    """The JSON error body MSAL quotes in its OIDC discovery failure."""
    return json.loads(text[text.index("{") :])


@pytest.mark.parametrize(
    ("app", "setting", "scope", "error", "code", "description"),
    [
        pytest.param({"credential": "wrong-secret"}, {}, EXO_SCOPE, "invalid_client", 7000215,
                     "Invalid client secret provided.", id="invalid-secret"),
        pytest.param({}, {"secret_expired": True}, EXO_SCOPE, "invalid_client", 7000222,
                     "The provided client secret keys for app '{client_id}' are expired.", id="expired-secret"),
        pytest.param({"client_id": UNKNOWN_APP}, {}, EXO_SCOPE, "unauthorized_client", 700016,
                     f"Application with identifier '{UNKNOWN_APP}' was not found in the directory", id="unknown-app"),
        # A scope of another cloud's resource (a credential with the wrong cloud:) names no service principal
        # of this tenant; the simulator answered it with 70011, the code for a malformed scope.
        pytest.param({}, {}, "https://graph.microsoft.us/.default", "invalid_resource", 500011,
                     "The resource principal named https://graph.microsoft.us was not found in the tenant",
                     id="resource-of-another-cloud"),
        pytest.param({}, {}, "https://outlook.office365.com/EWS.AccessAsUser.All", "invalid_scope", 70011,
                     "The provided value for the input parameter 'scope' is not valid.", id="not-a-default-scope"),
    ],
)  # fmt: skip
async def test_token_endpoint_errors_as_msal_reports_them(
    simulator: Simulator, app: dict[str, Any], setting: dict[str, bool], scope: str, error: str, code: int,
    description: str,
) -> None:  # fmt: skip
    simulator.configure_entra(**setting)
    [result] = await asyncio.to_thread(acquire, simulator, [scope], **app)
    assert "access_token" not in result
    assert (result["error"], result["error_codes"]) == (error, [code])
    first_line, *trace = result["error_description"].split("\r\n")
    assert first_line.startswith(f"AADSTS{code}: " + description.format(client_id=simulator.credentials.client_id))
    assert [line.split(":")[0] for line in trace] == ["Trace ID", "Correlation ID", "Timestamp"]
    assert re.fullmatch(r"[0-9a-f-]{36}", result["trace_id"]) and re.fullmatch(
        r"[0-9a-f-]{36}", result["correlation_id"]
    )
    assert result["error_uri"] == f"https://login.microsoftonline.com/error?code={code}"
    assert sum(simulator.entra.token_requests.values()) == 1


async def test_exporter_with_the_wrong_cloud_gets_no_token(simulator: Simulator, tmp_path: Path) -> None:
    """The simulator is a global tenant: a credential set to ``cloud: usgov`` asks for GCC High scopes."""
    path = simulator.write_exporter_config(tmp_path / "bems.yml")
    data = yaml.safe_load(path.read_text())
    data["credentials"]["entra-app"]["cloud"] = "usgov"  # the explicit (loopback) authority still wins
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    token = await run(config, config.targets_by_name()["online-ews"], "token")
    assert token.reason == Reason.TOKEN and "AADSTS500011" in token.message, token
    assert "The resource principal named https://graph.microsoft.us was not found" in token.message


async def test_unknown_tenant_fails_discovery_as_msal_reports_it(simulator: Simulator) -> None:
    """MSAL fetches the tenant's OpenID configuration in its constructor; Entra answers an unknown tenant
    with 400 invalid_tenant AADSTS90002, which MSAL quotes in the ValueError it chains."""
    with pytest.raises(ValueError, match="Unable to get authority configuration") as caught:
        await asyncio.to_thread(acquire, simulator, [EXO_SCOPE], tenant="fabrikam.example")
    cause = caught.value.__cause__ or caught.value.__context__
    assert cause is not None and "HTTP status: 400" in str(cause)
    body = _aadsts_body(str(cause))
    assert (body["error"], body["error_codes"]) == ("invalid_tenant", [90002])
    assert body["error_description"].startswith("AADSTS90002: Tenant 'fabrikam.example' not found.")
    assert sum(simulator.entra.token_requests.values()) == 0


async def test_msal_serves_its_cache_per_scope(simulator: Simulator) -> None:
    results = await asyncio.to_thread(acquire, simulator, [EXO_SCOPE, GRAPH_SCOPE, EXO_SCOPE, GRAPH_SCOPE])
    assert [r["token_source"] for r in results] == ["identity_provider", "identity_provider", "cache", "cache"]
    assert results[2]["access_token"] == results[0]["access_token"]
    client_id = simulator.credentials.client_id
    assert simulator.entra.token_requests == {(client_id, EXO_SCOPE): 1, (client_id, GRAPH_SCOPE): 1}

    # A cache handed to a new app instance serves it too. MSAL files tokens under the tenant of the token
    # endpoint the discovery document names (authority.py: "Usually a GUID"): Entra names the GUID for
    # the domain alias as well, so an app configured with either alias finds the same token.
    cache = msal.SerializableTokenCache()
    [first] = await asyncio.to_thread(acquire, simulator, [EXO_SCOPE], cache=cache)
    [again] = await asyncio.to_thread(acquire, simulator, [EXO_SCOPE], cache=cache)
    [by_guid] = await asyncio.to_thread(
        acquire, simulator, [EXO_SCOPE], cache=cache, tenant=simulator.credentials.tenant_guid
    )
    assert [r["token_source"] for r in (first, again, by_guid)] == ["identity_provider", "cache", "cache"]
    assert json.loads(cache.serialize())["AccessToken"]
    assert {entry["realm"] for entry in json.loads(cache.serialize())["AccessToken"].values()} == {
        simulator.credentials.tenant_guid
    }
    assert simulator.entra.token_requests[(client_id, EXO_SCOPE)] == 2


async def test_msal_does_not_serve_a_token_about_to_expire(simulator: Simulator) -> None:
    """MSAL skips cached tokens with less than five minutes left: a 200 s token is fetched each time."""
    simulator.configure_entra(expires_in=200)
    results = await asyncio.to_thread(acquire, simulator, [EXO_SCOPE, EXO_SCOPE])
    assert [r["token_source"] for r in results] == ["identity_provider", "identity_provider"]
    assert [r["expires_in"] for r in results] == [200, 200]


async def test_msal_honours_entra_throttling(simulator: Simulator) -> None:
    """A 429 with Retry-After: MSAL answers the retry from its throttling cache, without asking Entra again."""
    simulator.configure_entra(throttled=True, throttled_retry_after_seconds=60)
    results = await asyncio.to_thread(acquire, simulator, [EXO_SCOPE, EXO_SCOPE])
    assert [r.get("error") for r in results] == ["temporarily_unavailable", "temporarily_unavailable"]
    assert sum(simulator.entra.token_requests.values()) == 1
