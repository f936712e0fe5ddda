"""The impersonation, autodiscover and graph checks, back-off and the verdict, against the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from check_runner import run
from fake_clock import FakeClock

from bems_simulator.server import Simulator
from exporter import cli
from exporter.checks import CHECKS
from exporter.checks.resources import Resources
from exporter.config import AuthMethod, Config, load_config
from exporter.daemon.runner import execute
from exporter.results import CheckResult, Reason


@pytest.fixture
def config_file(simulator: Simulator, tmp_path: Path) -> Path:
    return simulator.write_exporter_config(tmp_path / "bems.yml", interval="10s", timeout="5s")


async def check(config: Config, target: str, name: str) -> CheckResult:
    return await run(config, config.targets_by_name()[target], name)


def per(result: CheckResult, metric: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(dict(m.labels)[k] for k in keys): m.value for m in result.measurements if m.metric == metric}


async def test_every_mailbox_check_passes(simulator: Simulator, config_file: Path) -> None:
    config = load_config(config_file)
    for target, name in [("onprem-ews", "impersonation"), ("online-ews", "impersonation"),
                         ("onprem-autodiscover", "autodiscover"), ("online-autodiscover", "autodiscover"),
                         ("online-graph", "graph")]:  # fmt: skip
        result = await check(config, target, name)
        assert result.success, result
    onprem = await check(config, "onprem-ews", "impersonation")
    assert per(onprem, "bems_impersonation_success", "mailbox") == {
        ("alice@corp.example.test",): 1.0, ("bob@corp.example.test",): 1.0,
    }  # fmt: skip
    discovered = await check(config, "onprem-autodiscover", "autodiscover")
    assert per(discovered, "bems_autodiscover_success", "protocol") == {("pox",): 1.0, ("soap",): 1.0}
    assert per(discovered, "bems_autodiscover_ews_url_match", "mailbox") == {("alice@corp.example.test",): 1.0}
    urls = per(discovered, "bems_autodiscover_ews_url_info", "url")
    assert list(urls) == [(config.targets_by_name()["onprem-ews"].url,)]
    online = await check(config, "online-autodiscover", "autodiscover")
    assert per(online, "bems_autodiscover_success", "protocol") == {("json",): 1.0}


async def test_one_revoked_mailbox(simulator: Simulator, config_file: Path) -> None:
    simulator.revoke_impersonation("bob@corp.example.test")
    result = await check(load_config(config_file), "onprem-ews", "impersonation")
    assert result.reason == Reason.IMPERSONATION_DENIED
    assert per(result, "bems_impersonation_success", "mailbox") == {
        ("alice@corp.example.test",): 1.0, ("bob@corp.example.test",): 0.0,
    }  # fmt: skip
    assert "1 of 2 failed" in result.message
    assert "-Role:ApplicationImpersonation -User:BEMSAdmin" in result.hint


async def test_removed_mailbox_and_online_denial(simulator: Simulator, config_file: Path) -> None:
    config = load_config(config_file)
    simulator.remove_mailbox("alice@corp.example.test")
    assert (await check(config, "onprem-ews", "impersonation")).reason == Reason.MAILBOX_NOT_FOUND
    simulator.deny_app_access("carol@contoso.test")
    online = await check(config, "online-ews", "impersonation")
    assert online.reason == Reason.FORBIDDEN and "Application EWS.AccessAsApp" in online.hint
    graph = await check(config, "online-graph", "graph")
    assert graph.reason == Reason.FORBIDDEN and "RAOP" in graph.message


async def test_server_busy_back_off_is_honoured(simulator: Simulator, config_file: Path, fake_clock: FakeClock) -> None:
    config = load_config(config_file)
    target = config.targets_by_name()["onprem-ews"]
    simulator.set_ews_throttling("onprem-ews", "server_busy_fault", backoff_ms=1500)
    resources = Resources(fake_clock.monotonic)  # one exporter's memory of the back-off, across checks
    try:
        first = await execute(CHECKS["impersonation"], config, target, resources)
        assert first.reason == Reason.THROTTLED and "back off 1.5 s" in first.message
        sent = len(simulator.ews_requests)
        simulator.set_ews_throttling("onprem-ews", "none")
        for wait in (0.0, 1.3):  # 0 s, then 1.3 s into the 1.5 s asked for (the fake clock adds no real time)
            await fake_clock.advance(wait)
            for name in ("auth", "impersonation"):  # every EWS check of the account holds back
                held = await execute(CHECKS[name], config, target, resources)
                assert held.reason == Reason.THROTTLED and "not sent" in held.message, held
            assert len(simulator.ews_requests) == sent  # nothing went to Exchange meanwhile
        await fake_clock.advance(0.3)
        assert (await execute(CHECKS["impersonation"], config, target, resources)).success
        assert [r for r in simulator.ews_requests[sent:] if r.caller.endswith("BEMSAdmin")]
    finally:
        await resources.close()


def ews_disabled(result: CheckResult) -> list[float]:
    return [m.value for m in result.measurements if m.metric == "bems_ews_disabled"]


@pytest.fixture
def two_online_mailboxes(simulator: Simulator, config_file: Path) -> Config:
    """online-ews with carol and dave; dave will be the one an app policy leaves out."""
    simulator.add_mailbox("dave@contoso.test", "online")
    data = yaml.safe_load(config_file.read_text())
    for target in data["targets"]:
        if target["name"] == "online-ews":
            target["mailboxes"] = ["carol@contoso.test", "dave@contoso.test"]
    config_file.write_text(yaml.safe_dump(data))
    return load_config(config_file)


async def test_one_excluded_mailbox_is_forbidden_not_ews_disabled(
    simulator: Simulator, two_online_mailboxes: Config
) -> None:
    """Exchange Online's bare 403 for one mailbox an application access policy or RBAC scope leaves out
    (field facts) is that mailbox's ``forbidden``; the unimpersonated request still gets a SOAP answer."""
    config = two_online_mailboxes
    simulator.deny_app_access("dave@contoso.test")
    impersonation = await check(config, "online-ews", "impersonation")
    assert impersonation.reason == Reason.FORBIDDEN, impersonation
    assert per(impersonation, "bems_impersonation_success", "mailbox") == {
        ("carol@contoso.test",): 1.0, ("dave@contoso.test",): 0.0,
    }  # fmt: skip
    assert "1 of 2 failed" in impersonation.message and "dave@contoso.test" in impersonation.message
    assert "Application EWS.AccessAsApp" in impersonation.hint and "Remove any tenant-wide" in impersonation.hint
    # The evidence asked for: one app-only request that names no mailbox, answered with its SOAP fault.
    unimpersonated = [r for r in simulator.ews_requests if r.endpoint == "online-ews" and r.impersonated is None]
    assert len(unimpersonated) == 1
    auth = await check(config, "online-ews", "auth")  # signs in as carol: passes, EWS is not disabled
    assert auth.success and ews_disabled(auth) == [0.0], auth
    simulator.deny_app_access("carol@contoso.test")  # now the auth check's own mailbox is left out
    auth = await check(config, "online-ews", "auth")
    assert auth.reason == Reason.FORBIDDEN and ews_disabled(auth) == [0.0], auth
    assert "carol@contoso.test" in auth.message and "Application EWS.AccessAsApp" in auth.hint
    # Every mailbox left out is still no organisation-wide block: the app may be given access again.
    impersonation = await check(config, "online-ews", "impersonation")
    assert impersonation.reason == Reason.FORBIDDEN and "2 of 2 failed" in impersonation.message


@pytest.mark.parametrize("block", ["ews_enabled_false", "app_not_allowed"])
async def test_an_organisation_wide_block_is_ews_disabled_in_both_checks(
    simulator: Simulator, two_online_mailboxes: Config, block: str
) -> None:
    config = two_online_mailboxes
    if block == "ews_enabled_false":
        simulator.set_ews_disabled(True)
    else:
        simulator.set_ews_allowed_app_ids(["99999999-0000-0000-0000-000000000000"])  # EwsAllowedAppIDs without us
    auth = await check(config, "online-ews", "auth")
    assert auth.reason == Reason.EWS_DISABLED and ews_disabled(auth) == [1.0], auth
    assert "2027-04-01" in auth.hint
    impersonation = await check(config, "online-ews", "impersonation")
    assert impersonation.reason == Reason.EWS_DISABLED and "2 of 2 failed" in impersonation.message
    simulator.set_ews_disabled(False)
    simulator.set_ews_allowed_app_ids([config.credentials["entra-app"].client_id])  # allow-listed: EWS works
    auth = await check(config, "online-ews", "auth")
    assert auth.success and ews_disabled(auth) == [0.0], auth
    assert (await check(config, "online-ews", "impersonation")).success


async def test_connection_count_is_throttled(simulator: Simulator, config_file: Path) -> None:
    simulator.set_ews_throttling("onprem-ews", "connection_count")
    assert (await check(load_config(config_file), "onprem-ews", "impersonation")).reason == Reason.THROTTLED


@pytest.mark.parametrize(
    ("kind", "backoff_ms", "held"),
    [
        ("too_many_objects_opened", None, 60.0),
        ("internal_server_transient_error", None, 60.0),
        ("timeout_expired", None, 60.0),
        ("internal_server_error_busy", None, 60.0),
        ("http_503", 30000, 30.0),  # Retry-After: 30
        ("http_503", None, 60.0),
    ],
)
async def test_every_throttling_shape_holds_the_back_off(
    simulator: Simulator, config_file: Path, kind: str, backoff_ms: int | None, held: float
) -> None:
    """exchangelib backs off on each of these (services/common.py, protocol.py); so must the exporter."""
    config = load_config(config_file)
    target = config.targets_by_name()["onprem-ews"]
    simulator.set_ews_throttling("onprem-ews", kind, backoff_ms)
    resources = Resources()
    try:
        first = await execute(CHECKS["impersonation"], config, target, resources)
        assert first.reason == Reason.THROTTLED, first
        remaining = resources.backoff.remaining("bemsadmin", "localhost")
        assert held - 5 < remaining <= held  # seconds, not a race: the check took well under five
        sent = len(simulator.ews_requests)
        simulator.set_ews_throttling("onprem-ews", "none")
        for name in ("auth", "impersonation"):
            again = await execute(CHECKS[name], config, target, resources)
            assert again.reason == Reason.THROTTLED and "not sent" in again.message, again
        assert len(simulator.ews_requests) == sent
    finally:
        await resources.close()


@pytest.mark.parametrize("method", ["basic", "ntlm"])
async def test_a_connection_reset_after_the_request_is_a_network_failure(
    simulator: Simulator, config_file: Path, method: str
) -> None:
    """ECONNRESET once the request was sent is the network's (or the server's) doing, not an exporter bug."""
    config = load_config(config_file)
    target = config.targets_by_name()["onprem-ews"].model_copy(update={"auth": (AuthMethod(method),)})
    await simulator.set_fault("onprem-ews", "connection_reset")
    resources = Resources()
    try:
        for name in ("auth", "impersonation"):
            result = await execute(CHECKS[name], config, target, resources)
            assert result.reason == Reason.UNREACHABLE, result
    finally:
        await resources.close()
    # Reset after signing in: the requests that got the reset instead of an answer carried credentials.
    reset = [r for r in simulator.hostile.requests if r.kind == "connection_reset" and r.hostile]
    assert reset and all(r.authorization for r in reset)


async def test_autodiscover_follows_allowed_redirects(simulator: Simulator, config_file: Path) -> None:
    config = load_config(config_file)
    simulator.set_autodiscover_redirect(
        "onprem-autodiscover", "alice@corp.example.test", "redirect_addr", "bob@corp.example.test"
    )
    result = await check(config, "onprem-autodiscover", "autodiscover")
    assert result.success, result
    # Proof that the redirect is followed: send alice to an address Autodiscover does not know.
    simulator.set_autodiscover_redirect(
        "onprem-autodiscover", "alice@corp.example.test", "redirect_addr", "nobody@corp.example.test"
    )
    followed = await check(config, "onprem-autodiscover", "autodiscover")
    assert followed.reason == Reason.MAILBOX_NOT_FOUND, followed


@pytest.mark.parametrize("kind", ["redirect_url", "http_302"])
async def test_autodiscover_never_follows_to_a_foreign_host(simulator: Simulator, config_file: Path, kind: str) -> None:
    config = load_config(config_file)
    foreign = simulator.endpoints["foreign"].url  # https://127.0.0.1:PORT: not under the target's domain
    simulator.set_autodiscover_redirect("onprem-autodiscover", "alice@corp.example.test", kind,
                                        f"{foreign}/autodiscover/autodiscover.xml")  # fmt: skip
    result = await check(config, "onprem-autodiscover", "autodiscover")
    assert result.reason == Reason.REDIRECT_BLOCKED
    assert simulator.foreign.requests == []  # not a request, let alone credentials


async def test_autodiscover_refuses_plain_http_and_loops(simulator: Simulator, config_file: Path) -> None:
    config = load_config(config_file)
    own = simulator.endpoints["onprem-autodiscover"].url
    simulator.set_autodiscover_redirect(
        "onprem-autodiscover",
        "alice@corp.example.test",
        "http_302",
        own.replace("https://", "http://") + "/autodiscover/autodiscover.xml",
    )
    assert (await check(config, "onprem-autodiscover", "autodiscover")).reason == Reason.REDIRECT_BLOCKED
    simulator.set_autodiscover_redirect("onprem-autodiscover", "alice@corp.example.test", "redirect_url",
                                        own + "/autodiscover/autodiscover.xml")  # fmt: skip
    looped = await check(config, "onprem-autodiscover", "autodiscover")
    assert looped.reason == Reason.REDIRECT_BLOCKED and "loop" in looped.message


async def test_autodiscover_url_mismatch(simulator: Simulator, config_file: Path) -> None:
    simulator.set_autodiscover_ews_url("onprem-autodiscover", "https://old-cas.corp.example.test/EWS/Exchange.asmx")
    result = await check(load_config(config_file), "onprem-autodiscover", "autodiscover")
    assert result.success  # Autodiscover works; what it says is the problem
    assert per(result, "bems_autodiscover_ews_url_match", "mailbox") == {("alice@corp.example.test",): 0.0}


async def test_graph_faults(simulator: Simulator, config_file: Path) -> None:
    config = load_config(config_file)
    simulator.set_graph_mailbox_not_enabled("carol@contoso.test")
    assert (await check(config, "online-graph", "graph")).reason == Reason.MAILBOX_NOT_FOUND
    simulator.set_graph_mailbox_not_enabled("carol@contoso.test", False)
    simulator.set_graph_throttled(True, retry_after=2)
    resources = Resources()
    try:
        target = config.targets_by_name()["online-graph"]
        assert (await execute(CHECKS["graph"], config, target, resources)).reason == Reason.THROTTLED
        simulator.set_graph_throttled(False)
        sent = len(simulator.graph_requests)
        held = await execute(CHECKS["graph"], config, target, resources)
        assert held.reason == Reason.THROTTLED and len(simulator.graph_requests) == sent  # Retry-After honoured
    finally:
        await resources.close()


async def test_graph_back_off_is_per_mailbox(simulator: Simulator, config_file: Path) -> None:
    """Graph limits mail per app and mailbox: carol's 429 holds carol back, dave is still read (item 13)."""
    simulator.add_mailbox("dave@contoso.test", "online")
    data = yaml.safe_load(config_file.read_text())
    graph = next(t for t in data["targets"] if t["name"] == "online-graph")
    graph["mailboxes"] = ["carol@contoso.test", "dave@contoso.test"]
    config_file.write_text(yaml.safe_dump(data))
    config = load_config(config_file)
    simulator.set_graph_throttled(True, retry_after=60, mailbox="carol@contoso.test")
    resources = Resources()
    try:
        target = config.targets_by_name()["online-graph"]
        for _ in range(2):
            result = await execute(CHECKS["graph"], config, target, resources)
            assert result.reason == Reason.THROTTLED and "1 of 2 failed" in result.message, result
            assert per(result, "bems_graph_mailbox_access_success", "mailbox") == {
                ("carol@contoso.test",): 0.0, ("dave@contoso.test",): 1.0,
            }  # fmt: skip
    finally:
        await resources.close()
    inbox_reads = [r.path for r in simulator.graph_requests if r.path.endswith("/mailFolders/inbox")]
    assert inbox_reads == [
        "/v1.0/users/carol@contoso.test/mailFolders/inbox",  # the 429
        "/v1.0/users/dave@contoso.test/mailFolders/inbox",
        "/v1.0/users/dave@contoso.test/mailFolders/inbox",  # carol held back for the Retry-After
    ]


async def test_graph_needs_user_read_all(simulator: Simulator, config_file: Path) -> None:
    """BEMS needs Mail.Read and User.Read.All; with only Mail.Read the inbox reads, the check does not (item 6)."""
    config = load_config(config_file)
    simulator.configure_entra(graph_roles=["Mail.Read"])
    result = await check(config, "online-graph", "graph")
    assert result.reason == Reason.FORBIDDEN and "User.Read.All" in result.message
    assert "User.Read.All" in result.hint and "admin consent" in result.hint
    assert per(result, "bems_graph_permission_granted", "permission") == {("Mail.Read",): 1.0, ("User.Read.All",): 0.0}
    assert per(result, "bems_graph_mailbox_access_success", "mailbox") == {("carol@contoso.test",): 1.0}


async def test_credential_expiry(simulator: Simulator, config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file)
    token = await check(config, "online-ews", "token")
    assert token.success
    assert not per(token, "bems_entra_credential_expiry_timestamp_seconds", "kind")  # unknown, not a failure
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=12)
    simulator.set_app_credential_end("secret", end)
    simulator.configure_entra(graph_roles=["Mail.Read", "User.Read.All", "Application.Read.All"])
    token = await check(config, "online-ews", "token")
    assert per(token, "bems_entra_credential_expiry_timestamp_seconds", "kind") == {("secret",): end.timestamp()}
    cert_config = load_config(simulator.write_exporter_config(tmp_path / "cert.yml", entra_app_auth="certificate"))
    token = await check(cert_config, "online-ews", "token")
    expiry = per(token, "bems_entra_credential_expiry_timestamp_seconds", "kind")
    assert list(expiry) == [("certificate",)] and expiry[("certificate",)] > time.time()


async def test_probe_prints_the_verdict(simulator: Simulator, config_file: Path) -> None:
    simulator.revoke_impersonation()

    def probe() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = cli.main(["--config.file", str(config_file), "probe"])
        return status, out.getvalue()

    status, report = await asyncio.to_thread(probe)
    assert status == 1
    assert "scenario onprem-bems-hybrid: NOT READY" in report
    assert "✗ onprem: impersonation (impersonation_denied)" in report
    # The impersonation check's own hint: it names the account and the mailbox denied.
    assert (
        "hint: grant the role: New-ManagementRoleAssignment -Name:BlackBerryAppImpersonation "
        "-Role:ApplicationImpersonation -User:BEMSAdmin (mind any management scope that excludes "
        "alice@corp.example.test)"
    ) in report
    assert "✓ online: graph_access" in report


async def test_config_check_warns_about_unchecked_requirements(simulator: Simulator, config_file: Path) -> None:
    data = yaml.safe_load(config_file.read_text())
    data["targets"] = [t for t in data["targets"] if t["kind"] != "graph"]
    config_file.write_text(yaml.safe_dump(data))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--config.file", str(config_file), "--config.check"]) == 0
    assert "warning: onprem-bems-hybrid requires online: graph_access, but no target checks it" in out.getvalue()


async def test_autodiscover_stops_after_ten_redirects(simulator: Simulator, config_file: Path) -> None:
    chain = ["alice@corp.example.test"] + [f"hop{i}@corp.example.test" for i in range(1, 12)]
    for here, there in itertools.pairwise(chain):
        simulator.set_autodiscover_redirect("onprem-autodiscover", here, "redirect_addr", there)
    result = await check(load_config(config_file), "onprem-autodiscover", "autodiscover")
    assert result.reason == Reason.REDIRECT_BLOCKED and "more than 10 redirects" in result.message
    # Ten hops are still followed: cut the chain after the tenth and the last address is simply unknown.
    simulator.set_autodiscover_redirect("onprem-autodiscover", chain[10], "none")
    result = await check(load_config(config_file), "onprem-autodiscover", "autodiscover")
    assert result.reason == Reason.MAILBOX_NOT_FOUND, result
