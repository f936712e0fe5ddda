"""The auth and token checks against a simulator that authenticates for real (Basic, NTLM, Entra ID)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from check_runner import configured_target, run
from dns_servers import running_dnsmasq
from fake_clock import FakeClock
from samples import parse, value

from bems_simulator.pki import CertificateAuthority
from bems_simulator.server import NOMINAL_HOSTS, Simulator
from exporter import report
from exporter.checks import CHECKS
from exporter.checks.resources import Resources
from exporter.config import AuthMethod, Config, DnsConfig, load_config
from exporter.daemon.app import Exporter
from exporter.daemon.runner import execute
from exporter.results import CheckResult, Reason
from exporter.web.http_app import create_app

EWS_SCOPE = "https://outlook.office365.com/.default"


def config_of(path: Path, **changes: object) -> Config:
    """The simulator's config, with top-level sections changed (merged one level deep)."""
    data = yaml.safe_load(path.read_text())
    for key, change in changes.items():
        data[key] = {**data.get(key, {}), **change} if isinstance(change, dict) else change
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def check(config: Config, target: str, name: str) -> CheckResult:
    return await run(config, config.targets_by_name()[target], name)


def measured(result: CheckResult, metric: str) -> dict[str, float]:
    return {
        dict(m.labels).get("method", dict(m.labels).get("credential", "")): m.value
        for m in result.measurements
        if m.metric == metric
    }


async def test_every_method_signs_in(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    for target in ("onprem-ews", "onprem-autodiscover", "online-ews"):
        result = await check(config, target, "auth")
        assert result.success, report.render(config.targets_by_name()[target], [result])
    onprem = await check(config, "onprem-ews", "auth")
    assert measured(onprem, "bems_auth_success") == {"basic": 1.0, "ntlm": 1.0}
    assert measured(onprem, "bems_auth_offered") == {"basic": 1.0, "ntlm": 1.0, "negotiate": 1.0, "bearer": 0.0}
    online = await check(config, "online-ews", "auth")
    assert measured(online, "bems_auth_success") == {"oauth": 1.0}
    assert measured(online, "bems_auth_offered")["bearer"] == 1.0


@pytest.mark.parametrize("method", ["basic", "ntlm"])  # aiohttp and requests: the two HTTP transports
async def test_a_target_with_dns_signs_in_at_the_address_its_servers_give(
    simulator: Simulator, sim_config_file: Path, method: str
) -> None:
    # The simulator's certificate names mail.corp.example.test, which only this dnsmasq resolves (to the
    # simulator's loopback address): signing in proves the HTTP check asked it, and kept the name for TLS.
    config = with_auth(sim_config_file, "onprem-ews", [method])
    host, port = NOMINAL_HOSTS["onprem-ews"], simulator.endpoints["onprem-ews"].port
    with running_dnsmasq(f"--address=/{host}/127.0.0.1", "--address=/missing.corp.example.test/") as dns:
        servers = DnsConfig(servers=(dns.server,))
        target = configured_target(config, "onprem-ews", url=f"https://{host}:{port}/EWS/Exchange.asmx", dns=servers)
        result = await run(config, target, "auth")
        assert result.success, report.render(target, [result])
        assert measured(result, "bems_auth_success") == {method: 1.0}
        missing = configured_target(
            config, "onprem-ews", url=f"https://missing.corp.example.test:{port}/EWS/Exchange.asmx", dns=servers
        )
        result = await run(config, missing, "auth")
    assert result.reason == Reason.DNS, report.render(missing, [result])
    assert f"missing.corp.example.test does not resolve at {dns.server}: nxdomain" in result.message


async def test_certificate_credential_signs_in(simulator: Simulator, tmp_path: Path) -> None:
    path = simulator.write_exporter_config(tmp_path / "cert.yml", timeout="5s", entra_app_auth="certificate")
    config = load_config(path)
    assert config.targets_by_name()["online-ews"].credential == "entra-app-cert"
    assert (await check(config, "online-ews", "token")).success
    assert (await check(config, "online-ews", "auth")).success


async def test_wrong_password_is_unauthorized_for_both_methods(simulator: Simulator, sim_config_file: Path) -> None:
    simulator.set_account_fault("wrong_password")
    result = await check(load_config(sim_config_file), "onprem-ews", "auth")
    assert result.reason == Reason.UNAUTHORIZED
    assert measured(result, "bems_auth_success") == {"basic": 0.0, "ntlm": 0.0}
    assert "Get-ADUser" in result.hint


async def test_disabled_basic_is_not_offered_and_never_sent(simulator: Simulator, sim_config_file: Path) -> None:
    simulator.set_auth_methods("onprem-ews", ["negotiate", "ntlm"])
    result = await check(load_config(sim_config_file), "onprem-ews", "auth")
    assert result.reason == Reason.METHOD_NOT_OFFERED
    assert measured(result, "bems_auth_success") == {"basic": 0.0, "ntlm": 1.0}
    assert measured(result, "bems_auth_offered")["basic"] == 0.0
    assert "BasicAuthentication $true" in result.hint


async def test_ntlm_sends_channel_bindings_that_extended_protection_requires(
    simulator: Simulator, sim_config_file: Path
) -> None:
    simulator.set_extended_protection("onprem-ews", "require")
    result = await check(load_config(sim_config_file), "onprem-ews", "auth")
    assert measured(result, "bems_auth_success")["ntlm"] == 1.0, result


@pytest.mark.parametrize(
    ("setting", "code"),
    [
        ({"secret_expired": True}, "AADSTS7000222"),
        ({"token_endpoint_down": True}, "HTTP Error: 503"),
        ({"throttled": True}, "AADSTS90055"),
    ],
)
async def test_entra_failures_are_token_failures(
    simulator: Simulator, sim_config_file: Path, setting: dict[str, bool], code: str
) -> None:
    simulator.configure_entra(**setting)
    config = load_config(sim_config_file)
    token = await check(config, "online-ews", "token")
    assert token.reason == Reason.TOKEN, token
    assert code in token.message or code in token.steps[-1].detail
    assert measured(token, "bems_oauth_token_success") == {"entra-app": 0.0}
    auth = await check(config, "online-ews", "auth")
    assert auth.reason == Reason.TOKEN


async def test_wrong_secret_and_unknown_tenant(simulator: Simulator, sim_config_file: Path) -> None:
    simulator.credentials.client_secret_file.write_text("not-the-secret")
    token = await check(load_config(sim_config_file), "online-ews", "token")
    assert token.reason == Reason.TOKEN and "AADSTS7000215" in token.message
    data = yaml.safe_load(sim_config_file.read_text())
    data["credentials"]["entra-app"]["tenant_id"] = "nosuchtenant.onmicrosoft.com"
    sim_config_file.write_text(yaml.safe_dump(data))
    token = await check(load_config(sim_config_file), "online-ews", "token")
    assert token.reason == Reason.TOKEN and "AADSTS90002" in token.message


async def test_app_without_permission_is_unauthorized_at_exchange(simulator: Simulator, sim_config_file: Path) -> None:
    simulator.configure_entra(roles_granted=False)
    config = load_config(sim_config_file)
    assert (await check(config, "online-ews", "token")).success  # Entra issues tokens without roles
    auth = await check(config, "online-ews", "auth")
    assert auth.reason == Reason.UNAUTHORIZED
    assert "2000008" in auth.message
    assert "full_access_as_app" in auth.hint


async def test_tokens_come_from_the_cache(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    exporter = Exporter(str(sim_config_file))
    exporter.load()  # not started: the checks run by hand below, on the exporter's long-lived resources
    try:
        for _ in range(4):
            results = await exporter.probe_now("online-ews")
            assert results is not None and all(r.success for r in results[1]), results
    finally:
        await exporter.stop()
    client_id = config.credentials["entra-app"].client_id
    assert simulator.entra.token_requests[(client_id, EWS_SCOPE)] == 1


async def test_ntlm_signs_in_once_per_kept_alive_connection(simulator: Simulator, sim_config_file: Path) -> None:
    """BEMS's account is shared: four NTLM checks on long-lived resources cost one handshake, not four."""
    config = config_of(sim_config_file, defaults={"interval": "1m"})
    target = config.targets_by_name()["onprem-ews"].model_copy(update={"auth": (AuthMethod.NTLM,), "mailboxes": ()})
    config = config.model_copy(update={"targets": [target]})
    resources = Resources()
    before = simulator.traffic["onprem-ews"].state()
    try:
        for _ in range(4):
            result = await execute(CHECKS["auth"], config, target, resources)
            assert result.success, report.render(target, [result])
    finally:
        await resources.close()
    after = simulator.traffic["onprem-ews"].state()
    assert after["ntlm_handshakes"] - before["ntlm_handshakes"] == 1
    # One connection for the unauthenticated request that reads the offered methods, one NTLM session.
    assert after["connections"] - before["connections"] == 2


async def test_ntlm_does_not_block_the_event_loop(simulator: Simulator, sim_config_file: Path) -> None:
    """requests-ntlm blocks: the check runs it in a worker thread. The simulator answering it runs on this loop,
    each answer after an asyncio.sleep: were the loop blocked while the check waits, nothing would answer and the
    check would time out. Counted, not timed: a loaded machine slows the loop down, it never blocks it."""
    delay = 0.3
    await simulator.set_fault("onprem-ews", "slow", delay_seconds=delay)
    config = load_config(simulator.write_exporter_config(sim_config_file, timeout="10s"))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        result = await check(config, "onprem-ews", "auth")
    finally:
        ticker.cancel()
    assert result.success, result  # the slow answers, served by this loop, were waited for...
    assert result.duration >= delay
    assert ticks > 0  # ...while the loop ran other tasks too (its 10 ms timers come due before the 300 ms ones)


# --- credentials stay home -------------------------------------------------------------------------------


@dataclass
class Recorder:
    """A small HTTPS server of the test's own that records what reaches it."""

    redirect_to: str | None = None
    delay: float = 0.0
    seen: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.redirect_to:
                raise web.HTTPFound(self.redirect_to)
            if "Authorization" not in request.headers:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="recorder"'})
            return web.Response(body=GET_FOLDER_OK, content_type="text/xml")
        finally:
            self.in_flight -= 1


GET_FOLDER_OK = (
    b'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<s:Body><m:GetFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
    b'<m:ResponseMessages><m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError'
    b"</m:ResponseCode></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"
)


@pytest.fixture
async def recorders(simulator: Simulator, tmp_path: Path) -> AsyncIterator[tuple[dict[str, Recorder], Path]]:
    """Two recording HTTPS servers (different ports: different origins) and a CA bundle trusting them."""
    ca = CertificateAuthority.create("recorder CA")
    cert, key = ca.issue(["localhost"], ["127.0.0.1"])
    (tmp_path / "rec.crt").write_bytes(cert)
    (tmp_path / "rec.key").write_bytes(key)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(simulator.ca_file.read_bytes() + ca.cert_pem)
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "rec.crt", tmp_path / "rec.key")
    found: dict[str, Recorder] = {}
    runners = []
    for name in ("home", "elsewhere"):
        recorder = Recorder()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recorder.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        runners.append(runner)
        recorder.url = f"https://localhost:{runner.addresses[0][1]}"  # type: ignore[attr-defined]
        found[name] = recorder
    try:
        yield found, bundle
    finally:
        for runner in runners:
            await runner.cleanup()


def recorder_config(sim_config_file: Path, bundle: Path, url: str, count: int = 1, **limits: int) -> Config:
    data = yaml.safe_load(sim_config_file.read_text())
    data["defaults"]["tls"]["ca_file"] = str(bundle)
    data["defaults"]["interval"] = "1s"
    if limits:
        data["limits"] = limits
    data["targets"] = [
        {
            "name": f"rec-{i}",
            "kind": "ews",
            "exchange": "onprem",
            "url": f"{url}/EWS/Exchange.asmx",
            "credential": "bemsadmin",
            "auth": ["basic"],
        }
        for i in range(count)
    ]
    sim_config_file.write_text(yaml.safe_dump(data))
    return load_config(sim_config_file)


@pytest.mark.parametrize("where", ["elsewhere", "plain-http"])
async def test_redirects_away_keep_credentials_home(
    recorders: tuple[dict[str, Recorder], Path], sim_config_file: Path, where: str
) -> None:
    servers, bundle = recorders
    home, elsewhere = servers["home"], servers["elsewhere"]
    target = elsewhere.url if where == "elsewhere" else home.url.replace("https://", "http://")
    config = recorder_config(sim_config_file, bundle, home.url)
    # The home server asks for Basic, then redirects the signed-in request elsewhere.
    home.redirect_to = None
    result = await check(config, "rec-0", "auth")
    assert result.success and len(home.seen) == 2
    assert "Authorization" not in home.seen[0]  # Basic only after the server asked for it
    home.seen.clear()
    home.redirect_to = f"{target}/EWS/Exchange.asmx"
    result = await check(config, "rec-0", "auth")
    assert result.reason == Reason.REDIRECT_BLOCKED, result
    assert elsewhere.seen == []  # not one request, let alone credentials


async def test_per_credential_concurrency_is_bounded(
    recorders: tuple[dict[str, Recorder], Path], sim_config_file: Path, fake_clock: FakeClock
) -> None:
    servers, bundle = recorders
    home = servers["home"]
    home.delay = 0.2
    recorder_config(sim_config_file, bundle, home.url, count=8, per_credential_concurrency=2)
    exporter = Exporter(str(sim_config_file))
    exporter.load()
    await exporter.start()
    try:
        await fake_clock.advance(3)
    finally:
        await exporter.stop()
    assert len(home.seen) > 16  # eight targets kept busy...
    assert home.peak == 2  # ...two requests at a time as the shared account


# --- secrets ----------------------------------------------------------------------------------------------


async def test_secrets_appear_nowhere(
    simulator: Simulator, sim_config_file: Path, caplog: pytest.LogCaptureFixture, fake_clock: FakeClock
) -> None:
    from exporter.logs import setup_logging

    setup_logging("debug", "logfmt")
    caplog.set_level(logging.DEBUG)
    config_of(sim_config_file, defaults={"interval": "1s", "timeout": "1s"})
    exporter = Exporter(str(sim_config_file))
    exporter.load()
    await exporter.start()
    outputs: list[str] = []
    try:
        async with TestClient(TestServer(create_app(exporter), host="127.0.0.1")) as client:
            await fake_clock.advance(1.5)
            simulator.set_account_fault("wrong_password")
            simulator.configure_entra(secret_expired=True)
            await simulator.set_fault("online-autodiscover", "expired")
            await fake_clock.advance(1.5)
            for path in ("/metrics", "/config", "/", "/probe?target=onprem-ews", "/probe?target=online-ews"):
                outputs.append(await (await client.get(path)).text())
            samples = parse(outputs[0])
            assert value(samples, "bems_probe_success", target="onprem-ews", exchange="onprem", check="auth") == 0
    finally:
        await exporter.stop()
    for target in exporter.config.targets:
        results = [r for (t, _), r in exporter.store.latest.items() if t == target.name]
        outputs.append(report.render(target, results))
        outputs.extend(repr(r) for r in results)
    outputs.append(caplog.text)
    everything = "\n".join(outputs)
    credentials = simulator.credentials
    secrets = [credentials.onprem_password, credentials.client_secret]
    basic = base64.b64encode(f"{credentials.onprem_username}:{credentials.onprem_password}".encode()).decode()
    for secret in [*secrets, basic]:
        assert secret not in everything
    assert "check failed" in caplog.text and "unauthorized" in everything  # the scan saw the failures


async def test_configured_trust_and_proxies_beat_the_environment(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests and MSAL read these; the exporter must not: ca_file is the whole trust, proxies come from config.
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(CertificateAuthority.create("some other CA").cert_pem)
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(other_ca))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing proxies there
    config = load_config(sim_config_file)
    assert (await check(config, "online-ews", "token")).success
    for target in ("onprem-ews", "online-ews"):
        result = await check(config, target, "auth")
        assert result.success, result


# --- What impersonation signs in with: the configuration's choice, never auth's last run ----------------


def with_auth(path: Path, target: str, methods: list[str]) -> Config:
    data = yaml.safe_load(path.read_text())
    next(t for t in data["targets"] if t["name"] == target)["auth"] = methods
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.parametrize(
    ("configured", "offered", "outcome"),
    [
        pytest.param(["basic", "ntlm"], ["negotiate", "ntlm", "basic"], "basic", id="both-offered-first-listed"),
        pytest.param(["ntlm", "basic"], ["negotiate", "ntlm", "basic"], "ntlm", id="order-is-the-choice"),
        # BEMS set to Basic fails when IIS stops offering it, even though NTLM would have worked
        pytest.param(["basic", "ntlm"], ["negotiate", "ntlm"], Reason.METHOD_NOT_OFFERED, id="first-not-offered"),
        pytest.param(["ntlm", "basic"], ["basic"], Reason.METHOD_NOT_OFFERED, id="ntlm-first-not-offered"),
        pytest.param(["ntlm"], ["negotiate", "ntlm"], "ntlm", id="single-method"),
    ],
)
async def test_impersonation_signs_in_with_the_first_configured_method_whatever_auth_found(
    simulator: Simulator, sim_config_file: Path, configured: list[str], offered: list[str], outcome: str | Reason
) -> None:
    """(configured methods, server offers) -> the method used; the result is the same with or without an
    auth run before it on the same resources, whichever of the methods that run found working."""
    config = with_auth(sim_config_file, "onprem-ews", configured)
    target = config.targets_by_name()["onprem-ews"]
    simulator.set_auth_methods("onprem-ews", offered)
    resources = Resources()
    try:
        alone = await execute(CHECKS["impersonation"], config, target, resources)
        signed_in = await execute(CHECKS["auth"], config, target, resources)
        after_auth = await execute(CHECKS["impersonation"], config, target, resources)
    finally:
        await resources.close()
    assert any(m.value for m in signed_in.measurements if m.metric == "bems_auth_success"), signed_in
    for result in (alone, after_auth):
        if isinstance(outcome, Reason):
            assert (result.success, result.reason) == (False, outcome), result
        else:
            assert result.success, result
            assert all(step.detail.endswith(f"({outcome})") for step in result.steps), result.steps
    assert [(s.ok, s.detail) for s in alone.steps] == [(s.ok, s.detail) for s in after_auth.steps]
