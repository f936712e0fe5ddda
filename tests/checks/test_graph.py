"""The ``graph`` and ``token`` checks: every reason they report, the back-off Graph asks for, national clouds.

Unit tests: Entra ID and Graph are fakes answering with the wire shapes of Microsoft's documentation
(cited beside each answer); the simulator-backed paths are in test_mailboxes.py and test_auth.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml

from exporter.checks import CHECKS, signin
from exporter.checks.base import ProbeContext
from exporter.checks.resources import Resources
from exporter.config import Config, load_config
from exporter.config.clouds import Cloud, Resource
from exporter.daemon.runner import execute
from exporter.errors import ConfigError
from exporter.protocol.entra_tokens import Token, TokenError
from exporter.protocol.http_client import HttpResponse
from exporter.results import CheckResult, ProbeFailure, Reason, Recorder

APP_ID = "11111111-2222-3333-4444-555555555555"
BEMS_ROLES = ["Mail.Read", "User.Read.All"]


def config_text(cloud: str | None = None, authority: str | None = None, graph_url: str | None = None) -> str:
    credential: dict[str, Any] = {"tenant_id": "contoso.onmicrosoft.com", "client_id": APP_ID, "client_secret": "s"}
    if cloud is not None:
        credential["cloud"] = cloud
    if authority is not None:
        credential["authority"] = authority
    graph: dict[str, Any] = {
        "name": "graph", "kind": "graph", "exchange": "online", "credential": "app",
        "mailboxes": ["carol@contoso.com", "dave@contoso.com"],
    }  # fmt: skip
    if graph_url is not None:
        graph["url"] = graph_url
    return yaml.safe_dump({
        "scenario": "onprem-bems-cloud-exchange",
        "credentials": {"app": credential},
        "targets": [
            {"name": "online-ews", "kind": "ews", "exchange": "online", "credential": "app",
             "url": "https://outlook.office365.com/EWS/Exchange.asmx", "mailboxes": ["carol@contoso.com"]},
            graph,
        ],
    })  # fmt: skip


def load(tmp_path: Path, **keys: str | None) -> Config:
    path = tmp_path / "c.yml"
    path.write_text(config_text(**keys))
    return load_config(path)


def jwt_with(claims: dict[str, Any]) -> str:
    """An unsigned JWT of ``claims``: the checks read the payload, never the signature (Entra's is trusted)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.signature"


def app_token(roles: list[str] | None) -> str:
    """A v1 app-only Graph token's claims (access-token-claims-reference); no ``roles`` when none were consented."""
    claims: dict[str, Any] = {"aud": "https://graph.microsoft.com", "appid": APP_ID, "idtyp": "app", "ver": "1.0"}
    if roles is not None:
        claims["roles"] = roles
    return jwt_with(claims)


@dataclass
class FakeEntra:
    """``EntraApps.acquire`` as the checks call it: records the scopes, hands out one token or fails."""

    access_token: str = field(default_factory=lambda: app_token(BEMS_ROLES))
    error: TokenError | None = None
    scopes: list[str] = field(default_factory=list)

    def acquire(self, name: str, credential: Any, scope: str, **_: Any) -> Token:
        self.scopes.append(scope)
        if self.error is not None:
            raise self.error
        return Token(self.access_token, time.time() + 3599, from_cache=False)

    def close(self) -> None:
        pass


def graph_json(status: int, body: dict[str, Any] | str, **headers: str) -> HttpResponse:
    text = body if isinstance(body, str) else json.dumps(body)
    return HttpResponse(status, (("Content-Type", "application/json"), *headers.items()), text.encode(), "")


def graph_error(status: int, code: str, message: str, **headers: str) -> HttpResponse:
    """Graph's error body (learn.microsoft.com/graph/errors): ``{"error": {"code", "message", "innerError"}}``."""
    return graph_json(status, {"error": {"code": code, "message": message, "innerError": {"request-id": "r"}}},
                      **headers)  # fmt: skip


INBOX = graph_json(200, {"id": "AAMkAGI2", "displayName": "Inbox", "totalItemCount": 2})
USER = graph_json(200, {"id": "48d31887-5fad-4d73-a9f5-3c356e68a038", "userPrincipalName": "carol@contoso.com"})
# Graph's answers to the denials the check must tell apart (field-facts.md; Microsoft Q&A 6019739).
INSUFFICIENT_PRIVILEGES = graph_error(
    403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
)
RAOP = graph_error(403, "ErrorAccessDenied", "Access to OData is disabled: [RAOP] : Blocked by tenant configured "
                   "AppOnly AccessPolicy settings.")  # fmt: skip
Answer = HttpResponse | ProbeFailure | Callable[[], Any]


@dataclass
class FakeGraph:
    """``HttpClients.request``: answers by the path after ``/v1.0/`` (a regex), and records every URL."""

    answers: dict[str, Answer]
    urls: list[str] = field(default_factory=list)

    async def request(self, method: str, url: str, **_: Any) -> HttpResponse:
        self.urls.append(url)
        path = unquote(re.sub(r"^https://[^/]+/v1\.0/", "", url))
        for pattern, answer in self.answers.items():
            if re.fullmatch(pattern, path):
                if isinstance(answer, ProbeFailure):
                    raise answer
                if callable(answer):
                    return await answer()
                return answer
        raise AssertionError(f"unexpected request {method} {url}")

    async def close(self) -> None:
        pass


@pytest.fixture
async def resources() -> AsyncIterator[Resources]:
    resources = Resources()
    yield resources
    await resources.close()


def fake(resources: Resources, entra: FakeEntra, graph: FakeGraph) -> None:
    resources.entra, resources.http = entra, graph  # type: ignore[assignment]


async def never() -> HttpResponse:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def per(result: CheckResult, metric: str, key: str) -> dict[str, float]:
    return {dict(m.labels)[key]: m.value for m in result.measurements if m.metric == metric}


HEALTHY = {r"users/[^/]+/mailFolders/inbox": INBOX, r"users/[^/?]+\?.*": USER}
REFUSED = ProbeFailure(Reason.REFUSED, "connection refused")


@pytest.mark.parametrize(
    ("roles", "answers", "reason", "in_hint", "permissions"),
    [
        pytest.param(BEMS_ROLES, {}, None, "", {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="passes"),
        pytest.param(["Mail.ReadWrite", "Directory.Read.All"], {}, None, "", {"Mail.Read": 1.0, "User.Read.All": 1.0},
                     id="including-permissions-pass"),
        pytest.param(["User.Read.All"], {}, Reason.FORBIDDEN, "permission Mail.Read (", {"Mail.Read": 0.0,
                     "User.Read.All": 1.0}, id="no-mail-read"),
        pytest.param(["Mail.Read"], {}, Reason.FORBIDDEN, "permission User.Read.All (", {"Mail.Read": 1.0,
                     "User.Read.All": 0.0}, id="no-user-read-all"),
        pytest.param(["Mail.Read", "User.ReadBasic.All"], {}, Reason.FORBIDDEN, "User.Read.All", {"Mail.Read": 1.0,
                     "User.Read.All": 0.0}, id="user-readbasic-is-not-enough"),
        pytest.param(None, {}, Reason.FORBIDDEN, "Mail.Read and User.Read.All", {"Mail.Read": 0.0,
                     "User.Read.All": 0.0}, id="nothing-consented"),
        pytest.param("opaque", {r"users/[^/?]+\?.*": INSUFFICIENT_PRIVILEGES}, Reason.FORBIDDEN,
                     "permission User.Read.All (", {}, id="opaque-token-user-object-denied"),
        pytest.param(BEMS_ROLES, {r"users/[^/?]+\?.*": INSUFFICIENT_PRIVILEGES}, Reason.FORBIDDEN, "User.Read.All",
                     {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="user-object-denied"),
        pytest.param(BEMS_ROLES, {r"users/carol@contoso\.com/mailFolders/inbox": RAOP}, Reason.FORBIDDEN,
                     "Test-ApplicationAccessPolicy", {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="mailbox-scoped-out"),
        pytest.param(BEMS_ROLES, {r"users/carol@contoso\.com/mailFolders/inbox": graph_error(
                     404, "ErrorInvalidUser", "The requested user 'carol@contoso.com' is invalid.")},
                     Reason.MAILBOX_NOT_FOUND, "Get-Mailbox", {"Mail.Read": 1.0, "User.Read.All": 1.0},
                     id="unknown-mailbox"),
        pytest.param(BEMS_ROLES, {r"users/carol@contoso\.com/mailFolders/inbox": graph_error(
                     404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted "
                     "on-premise.")}, Reason.MAILBOX_NOT_FOUND, "Exchange Online", {"Mail.Read": 1.0,
                     "User.Read.All": 1.0}, id="mailbox-on-premises"),
        pytest.param(BEMS_ROLES, {r"users/[^/]+/mailFolders/inbox": graph_error(
                     401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")},
                     Reason.UNAUTHORIZED, "admin consent", {"Mail.Read": 1.0, "User.Read.All": 1.0},
                     id="token-refused"),
        pytest.param(BEMS_ROLES, {r"users/carol@contoso\.com/mailFolders/inbox": graph_error(
                     429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.",
                     **{"Retry-After": "7"})}, Reason.THROTTLED, "throttling", {"Mail.Read": 1.0,
                     "User.Read.All": 1.0}, id="mailbox-throttled"),
        pytest.param(BEMS_ROLES, {r"users/[^/?]+\?.*": graph_error(429, "ApplicationThrottled", "Too many requests.",
                     **{"Retry-After": "7"})}, Reason.THROTTLED, "throttling", {"Mail.Read": 1.0,
                     "User.Read.All": 1.0}, id="user-object-throttled"),
        pytest.param(BEMS_ROLES, {r"users/[^/]+/mailFolders/inbox": graph_json(200, "<html/>")},
                     Reason.BAD_RESPONSE, "", {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="inbox-not-json"),
        pytest.param(BEMS_ROLES, {r"users/[^/?]+\?.*": graph_json(200, {"displayName": "Carol"})},
                     Reason.BAD_RESPONSE, "", {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="user-without-id"),
        pytest.param(BEMS_ROLES, {r"users/[^/]+/mailFolders/inbox": graph_json(502, "Bad Gateway")},
                     Reason.BAD_RESPONSE, "", {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="unexpected-status"),
        pytest.param(BEMS_ROLES, {r"users/[^/]+/mailFolders/inbox": never}, Reason.TIMEOUT, "",
                     {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="inbox-timeout"),
        pytest.param(BEMS_ROLES, {r"users/[^/?]+\?.*": never}, Reason.TIMEOUT, "",
                     {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="user-object-timeout"),
        pytest.param(BEMS_ROLES, {r"users/[^/]+/mailFolders/inbox": REFUSED}, Reason.REFUSED, "",
                     {"Mail.Read": 1.0, "User.Read.All": 1.0}, id="network-failure"),
    ],
)  # fmt: skip
async def test_graph_reasons(
    tmp_path: Path, resources: Resources, roles: list[str] | str | None, answers: dict[str, Answer],
    reason: Reason | None, in_hint: str, permissions: dict[str, float],
) -> None:  # fmt: skip
    config = load(tmp_path)
    token = "opaque-not-a-jwt" if roles == "opaque" else app_token(roles)  # type: ignore[arg-type]
    graph = FakeGraph({**answers, **{k: v for k, v in HEALTHY.items() if k not in answers}})
    fake(resources, FakeEntra(token), graph)
    # Only the never-answering fakes run into the timeout.
    target = config.targets_by_name()["graph"].model_copy(update={"timeout": timedelta(milliseconds=500)})
    result = await execute(CHECKS["graph"], config, target, resources)
    assert result.reason == reason, result
    assert in_hint in result.hint
    assert per(result, "bems_graph_permission_granted", "permission") == permissions


async def test_a_missing_permission_outranks_mailbox_denials_and_keeps_the_mailbox_metric(
    tmp_path: Path, resources: Resources
) -> None:
    """Without Mail.Read every inbox is denied; the verdict names the permission, not an access policy."""
    config = load(tmp_path)
    denied = graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    graph = FakeGraph({r"users/[^/]+/mailFolders/inbox": denied})
    fake(resources, FakeEntra(app_token(["User.Read.All"])), graph)
    result = await execute(CHECKS["graph"], config, config.targets_by_name()["graph"], resources)
    assert result.reason == Reason.FORBIDDEN and "Mail.Read" in result.message
    assert "admin consent" in result.hint and "CustomResourceScope" not in result.hint
    assert per(result, "bems_graph_mailbox_access_success", "mailbox") == {
        "carol@contoso.com": 0.0, "dave@contoso.com": 0.0,
    }  # fmt: skip
    assert not any("?$select" in url for url in graph.urls)  # no readable mailbox: no user object read


async def test_user_object_is_read_once_for_a_readable_mailbox(tmp_path: Path, resources: Resources) -> None:
    config = load(tmp_path)
    graph = FakeGraph({r"users/carol@contoso\.com/mailFolders/inbox": RAOP, **HEALTHY})
    fake(resources, FakeEntra(), graph)
    result = await execute(CHECKS["graph"], config, config.targets_by_name()["graph"], resources)
    assert result.reason == Reason.FORBIDDEN and "RAOP" in result.message  # the mailbox's own denial
    assert [url for url in graph.urls if "?$select" in url] == [
        "https://graph.microsoft.com/v1.0/users/dave%40contoso.com?$select=id,userPrincipalName,mail"
    ]
    assert per(result, "bems_graph_mailbox_access_success", "mailbox") == {
        "carol@contoso.com": 0.0, "dave@contoso.com": 1.0,
    }  # fmt: skip


async def test_graph_token_failure(tmp_path: Path, resources: Resources) -> None:
    config = load(tmp_path)
    graph = FakeGraph(dict(HEALTHY))
    fake(resources, FakeEntra(error=TokenError("invalid_client: AADSTS7000222: expired", "AADSTS7000222")), graph)
    result = await execute(CHECKS["graph"], config, config.targets_by_name()["graph"], resources)
    assert result.reason == Reason.TOKEN and "AADSTS7000222" in result.message
    assert graph.urls == []


# --- token ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason", "in_message"),
    [
        pytest.param(None, None, "", id="passes"),
        pytest.param(TokenError("invalid_client: AADSTS7000215: Invalid client secret provided.", "AADSTS7000215"),
                     Reason.TOKEN, "AADSTS7000215", id="wrong-secret"),
        pytest.param(TokenError("Entra ID rejected the authority https://x/t: AADSTS90002: Tenant 't' not found.",
                     "AADSTS90002"), Reason.TOKEN, "AADSTS90002", id="unknown-tenant"),
        pytest.param(TokenError("cannot reach Entra ID: ConnectionError"), Reason.TOKEN, "cannot reach",
                     id="unreachable"),
        pytest.param(TokenError("cannot load the credential: bad PEM"), Reason.TOKEN, "cannot load",
                     id="unloadable-certificate"),
    ],
)  # fmt: skip
async def test_token_reasons(
    tmp_path: Path, resources: Resources, error: TokenError | None, reason: Reason | None, in_message: str
) -> None:
    config = load(tmp_path)
    # The app may not read its own registration: its end dates are unknown, which is no failure.
    graph = FakeGraph({r"applications\(appId='[^']+'\)": INSUFFICIENT_PRIVILEGES})
    fake(resources, FakeEntra(error=error), graph)
    result = await execute(CHECKS["token"], config, config.targets_by_name()["online-ews"], resources)
    assert result.reason == reason, result
    assert in_message in result.message
    assert per(result, "bems_oauth_token_success", "credential") == {"app": 0.0 if error else 1.0}
    if error is not None:
        assert "AADSTS code names the cause" in result.hint


# --- back-off: Exchange's per account and host, Graph's per app and mailbox ------------------------------


@pytest.mark.parametrize(
    ("target", "url", "held", "free"),
    [
        pytest.param("graph", "https://graph.microsoft.com/v1.0/users/carol%40contoso.com/mailFolders/inbox",
                     ["https://graph.microsoft.com/v1.0/users/Carol@Contoso.com/messages/1"],
                     ["https://graph.microsoft.com/v1.0/users/dave%40contoso.com/mailFolders/inbox",
                      "https://graph.microsoft.com/v1.0/subscriptions"], id="graph-mailbox"),
        pytest.param("graph", "https://graph.microsoft.com/v1.0/subscriptions",
                     ["https://graph.microsoft.com/v1.0/users/dave%40contoso.com/mailFolders/inbox",
                      "https://graph.microsoft.com/v1.0/subscriptions/abc"],
                     ["https://graph.microsoft.us/v1.0/subscriptions"], id="graph-app-wide"),
        pytest.param("online-ews", "https://outlook.office365.com/EWS/Exchange.asmx",
                     ["https://outlook.office365.com/autodiscover/autodiscover.json"],
                     ["https://other.example.com/EWS/Exchange.asmx"], id="ews-account-and-host"),
    ],
)  # fmt: skip
async def test_backoff_scope(
    tmp_path: Path, resources: Resources, target: str, url: str, held: list[str], free: list[str]
) -> None:
    config = load(tmp_path)
    ctx = ProbeContext(config, Recorder(target, "graph"), 5.0, resources)
    chosen = config.targets_by_name()[target]
    signin.hold_off(ctx, chosen, url, 30)
    for other in held:
        with pytest.raises(ProbeFailure) as caught:
            signin.check_backoff(ctx, chosen, other)
        assert caught.value.reason == Reason.THROTTLED
    for other in free:
        signin.check_backoff(ctx, chosen, other)


async def test_one_mailbox_throttled_leaves_the_other_alone(tmp_path: Path, resources: Resources) -> None:
    """Graph's 429 for carol holds carol back on the next run; dave is read both times."""
    config = load(tmp_path)
    throttled = graph_error(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.",
                            **{"Retry-After": "60"})  # fmt: skip
    graph = FakeGraph({r"users/carol@contoso\.com/mailFolders/inbox": throttled, **HEALTHY})
    fake(resources, FakeEntra(), graph)
    target = config.targets_by_name()["graph"]
    for _ in range(2):
        result = await execute(CHECKS["graph"], config, target, resources)
        assert result.reason == Reason.THROTTLED and "1 of 2 failed" in result.message
        assert per(result, "bems_graph_mailbox_access_success", "mailbox") == {
            "carol@contoso.com": 0.0, "dave@contoso.com": 1.0,
        }  # fmt: skip
    inbox_reads = [url.split("/users/")[1].split("/")[0] for url in graph.urls if url.endswith("/inbox")]
    assert inbox_reads == ["carol%40contoso.com", "dave%40contoso.com", "dave%40contoso.com"]
    assert "not sent: Graph asked app to back off from carol@contoso.com on graph.microsoft.com" in result.message


# --- national clouds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cloud", "login", "exchange", "graph"),
    [
        pytest.param(None, "https://login.microsoftonline.com", "https://outlook.office365.com",
                     "https://graph.microsoft.com", id="default-global"),
        pytest.param("global", "https://login.microsoftonline.com", "https://outlook.office365.com",
                     "https://graph.microsoft.com", id="global"),
        pytest.param("usgov", "https://login.microsoftonline.us", "https://outlook.office365.us",
                     "https://graph.microsoft.us", id="usgov-gcc-high"),
        pytest.param("dod", "https://login.microsoftonline.us", "https://webmail.apps.mil",
                     "https://dod-graph.microsoft.us", id="dod"),
        pytest.param("china", "https://login.chinacloudapi.cn", "https://partner.outlook.cn",
                     "https://microsoftgraph.chinacloudapi.cn", id="china-21vianet"),
    ],
)  # fmt: skip
async def test_cloud_sets_sign_in_scopes_and_graph(
    tmp_path: Path, resources: Resources, cloud: str | None, login: str, exchange: str, graph: str
) -> None:
    """Microsoft's national cloud table (learn.microsoft.com/graph/deployments, graph/sdks/national-clouds)."""
    config = load(tmp_path, cloud=cloud)
    credential = config.credentials["app"]
    assert (credential.cloud, credential.authority) == (Cloud(cloud or "global"), login)  # type: ignore[union-attr]
    assert config.targets_by_name()["graph"].url == f"{graph}/v1.0"
    entra, fake_graph = FakeEntra(), FakeGraph({**HEALTHY, r"applications\(appId='[^']+'\)": INSUFFICIENT_PRIVILEGES})
    fake(resources, entra, fake_graph)
    assert (await execute(CHECKS["token"], config, config.targets_by_name()["online-ews"], resources)).success
    assert sorted(set(entra.scopes)) == sorted([f"{exchange}/.default", f"{graph}/.default"])
    entra.scopes.clear()
    assert (await execute(CHECKS["graph"], config, config.targets_by_name()["graph"], resources)).success
    assert set(entra.scopes) == {f"{graph}/.default"}
    assert fake_graph.urls and all(url.startswith(f"{graph}/v1.0/") for url in fake_graph.urls)
    ctx = ProbeContext(config, Recorder("online-ews", "auth"), 5.0, resources)
    entra.scopes.clear()
    await signin.token(ctx, config.targets_by_name()["online-ews"], Resource.EXCHANGE)
    assert entra.scopes == [f"{exchange}/.default"]


def test_explicit_authority_and_graph_url_win_over_the_cloud(tmp_path: Path) -> None:
    config = load(tmp_path, cloud="usgov", authority="https://localhost:8443", graph_url="https://localhost:8444/v1.0")
    assert config.credentials["app"].authority == "https://localhost:8443"
    assert config.targets_by_name()["graph"].url == "https://localhost:8444/v1.0"


def test_unknown_cloud_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cloud"):
        load(tmp_path, cloud="germany")
