"""The scenario verdict: each requirement flips on the checks it rests on, delivery included, and an unmet
requirement's hint follows the failing check's reason.

Unit tests judge results built in a ResultStore; the end-to-end tests break the simulator's delivery paths
under a running exporter and watch ``bems_scenario_ready``.
"""

from __future__ import annotations

import contextlib
import io
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_clock import FakeClock
from loopback import port_of
from samples import parse, value

from bems_simulator.server import DEMO_GRAPH_ROLES, Simulator
from exporter import cli
from exporter.checks import autodiscover, graph, notification_url, planned_checks, push, reachability
from exporter.config import Config, Exchange, Route, Scenario, load_config
from exporter.daemon import scenario
from exporter.daemon.app import Exporter
from exporter.daemon.store import ResultStore
from exporter.results import CheckResult, Measurement, Reason
from exporter.web import exposition
from exporter.web.collector import BemsCollector

CONFIG = """
scenario: onprem-bems-hybrid
notifications: {public_url: 'https://bems-monitor.corp.example.com/monitor'}
credentials:
  bemsadmin: {username: 'CORP\\BEMSAdmin', password: pw-not-used}
  app: {tenant_id: contoso.onmicrosoft.com, client_id: 11111111-2222-3333-4444-555555555555, client_secret: not-used-x}
targets:
  - {name: onprem-ews, kind: ews, exchange: onprem, url: 'https://mail.corp.example.com/EWS/Exchange.asmx',
     credential: bemsadmin, auth: [basic, ntlm], mailboxes: [alice@corp.example.com],
     push: {mailbox: alice@corp.example.com, write_probe: true}, dns: {servers: ['192.0.2.53'], view: internet}}
  - {name: onprem-ad, kind: autodiscover, exchange: onprem, url: 'https://autodiscover.corp.example.com/',
     credential: bemsadmin, auth: [ntlm], mailboxes: [alice@corp.example.com, bob@corp.example.com],
     dns: {servers: ['192.0.2.53'], view: internet}}
  - {name: online-ews, kind: ews, exchange: online, url: 'https://outlook.office365.com/EWS/Exchange.asmx',
     credential: app, mailboxes: [carol@contoso.com]}
  - {name: online-ad, kind: autodiscover, exchange: online, url: 'https://outlook.office365.com/',
     mailboxes: [carol@contoso.com]}
  - {name: graph, kind: graph, exchange: online, credential: app, mailboxes: [carol@contoso.com],
     push: {mailbox: carol@contoso.com, write_probe: true}}
  - {name: bems-url, kind: notification_url, url: 'https://bems.corp.example.com/notificationClient'}
"""


def load(tmp_path: Path, text: str = CONFIG, **changes: Any) -> Config:
    data = yaml.safe_load(text) | changes
    path = tmp_path / "bems.yml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load(tmp_path)


def answered(scope: str, family: str = "ipv4", count: float = 1.0) -> Measurement:
    return Measurement(reachability.DNS_ANSWER_ADDRESSES.name, count, (("family", family), ("scope", scope)))


def passed(target: str, check: str, config: Config) -> CheckResult:
    """A passing result with the measurements that check's passing run carries."""
    mailboxes = config.targets_by_name()[target].mailboxes
    measurements = {
        "auth": [Measurement("bems_auth_success", 1.0, (("method", "ntlm"),))],
        "autodiscover": [Measurement(autodiscover.URL_MATCH.name, 1.0, (("mailbox", m),)) for m in mailboxes],
        "graph": [Measurement(graph.SUCCESS.name, 1.0, (("mailbox", m),)) for m in mailboxes],
        "tls": [Measurement(scenario.PUBLICLY_TRUSTED, 1.0)],
        "reachability": [answered("public")],
    }.get(check, [])
    return CheckResult(target, check, True, time.time(), 0.1, measurements=tuple(measurements))


def passing_store(config: Config) -> ResultStore:
    store = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    for target, checks in store.checks.items():
        for check in checks:
            store.record(passed(target, check, config))
    return store


def fail(store: ResultStore, target: str, check: str, reason: Reason, hint: str = "") -> None:
    store.record(CheckResult(target, check, False, time.time(), 0.1, reason, "it failed", hint))


def verdicts(config: Config, store: ResultStore) -> dict[tuple[str, str], scenario.Verdict]:
    return {(v.exchange.value, v.requirement): v for v in scenario.evaluate(config, store)}


ONPREM = {"ews_reachable", "autodiscover_reachable", "basic_or_windows_auth", "impersonation", "push_delivery",
          "autodiscover_ews_url"}  # fmt: skip
ONLINE = {"autodiscover_reachable", "modern_auth", "graph_access", "impersonation", "ews_reachable", "push_delivery",
          "autodiscover_ews_url", "notification_url", "graph_path_ready"}  # fmt: skip
EXPECTED = {  # scenario -> the (side, requirement) pairs of the fully configured estate
    Scenario.CLOUD_BEMS_ONPREM_EXCHANGE: {("onprem", r) for r in ONPREM | {"public_certificate", "internet_exposure"}},
    Scenario.ONPREM_BEMS_CLOUD_EXCHANGE: {("online", r) for r in ONLINE},
    Scenario.ONPREM_BEMS_HYBRID: {("onprem", r) for r in ONPREM} | {("online", r) for r in ONLINE},
}
REQUIREMENTS = {
    # requirement -> (a (target, check) whose failure breaks it, the reason it fails with)
    ("onprem", "ews_reachable"): ("onprem-ews", "tls", Reason.CERTIFICATE),
    ("onprem", "autodiscover_reachable"): ("onprem-ad", "reachability", Reason.REFUSED),
    ("onprem", "basic_or_windows_auth"): ("onprem-ews", "auth", Reason.UNAUTHORIZED),
    ("onprem", "impersonation"): ("onprem-ews", "impersonation", Reason.IMPERSONATION_DENIED),
    ("onprem", "push_delivery"): ("onprem-ews", "push", Reason.PUSH_STALLED),
    ("onprem", "autodiscover_ews_url"): ("onprem-ad", "autodiscover", Reason.MAILBOX_NOT_FOUND),
    ("onprem", "public_certificate"): ("onprem-ad", "tls", Reason.CERTIFICATE),
    ("onprem", "internet_exposure"): ("onprem-ews", "reachability", Reason.DNS),
    # route: connectivity_node only (test_the_connectivity_node_route_replaces_internet_exposure)
    ("onprem", "connectivity_node_reachable"): ("onprem-ad", "tls", Reason.TIMEOUT),
    ("online", "ews_reachable"): ("online-ews", "reachability", Reason.TIMEOUT),
    ("online", "autodiscover_reachable"): ("online-ad", "tls", Reason.CERTIFICATE),
    ("online", "modern_auth"): ("online-ews", "token", Reason.TOKEN),
    ("online", "graph_access"): ("graph", "graph", Reason.FORBIDDEN),
    ("online", "graph_path_ready"): ("graph", "graph", Reason.MAILBOX_NOT_FOUND),
    ("online", "impersonation"): ("online-ews", "impersonation", Reason.IMPERSONATION_DENIED),
    ("online", "push_delivery"): ("graph", "push", Reason.PUSH_STALLED),
    ("online", "autodiscover_ews_url"): ("online-ad", "autodiscover", Reason.REDIRECT_BLOCKED),
    ("online", "notification_url"): ("bems-url", "notification_url", Reason.BAD_RESPONSE),
}


def test_the_table_covers_every_requirement() -> None:
    assert set(REQUIREMENTS) == set().union(*EXPECTED.values()) | {("onprem", "connectivity_node_reachable")}
    assert {r for _, r in REQUIREMENTS} == set(scenario.HINTS)


@pytest.mark.parametrize("scenario_name", list(Scenario))
def test_every_requirement_flips_once(config: Config, scenario_name: Scenario) -> None:
    config = config.model_copy(update={"scenario": scenario_name})
    judged = verdicts(config, passing_store(config))
    assert set(judged) == EXPECTED[scenario_name]
    assert all(v.met for v in judged.values())
    for requirement, (target, check, reason) in REQUIREMENTS.items():
        store = passing_store(config)
        fail(store, target, check, reason)
        judged = verdicts(config, store)
        if requirement not in EXPECTED[scenario_name]:
            assert requirement not in judged
            continue
        assert not judged[requirement].met, requirement
        assert judged[requirement].reason == reason.value
        assert judged[requirement].hint
        ready = {s.name: s for s in scenario.families(config, store)}["bems_scenario_ready"].samples[0].value
        assert ready == 0.0, requirement
    # The online impersonation requirement rests on Graph and on EWS impersonation alike.
    if scenario_name != Scenario.CLOUD_BEMS_ONPREM_EXCHANGE:
        store = passing_store(config)
        fail(store, "online-ews", "impersonation", Reason.IMPERSONATION_DENIED)
        assert {key for key, v in verdicts(config, store).items() if not v.met} == {("online", "impersonation")}


@pytest.mark.parametrize(
    ("signed_in", "met"),
    [
        ({"basic": 0.0, "ntlm": 1.0}, True),
        ({"basic": 1.0, "ntlm": 0.0}, True),
        ({"ntlm": 0.0, "kerberos": 1.0}, True),  # Windows authentication with NTLM disabled in the domain
        ({"oauth": 1.0}, True),  # hybrid modern authentication, where configured
        ({"basic": 0.0, "ntlm": 0.0, "kerberos": 0.0}, False),
    ],
    ids=["ntlm", "basic", "kerberos", "modern", "none"],
)
def test_one_method_bems_accepts_is_enough(config: Config, signed_in: dict[str, float], met: bool) -> None:
    store = passing_store(config)
    store.record(CheckResult("onprem-ews", "auth", False, time.time(), 0.1, Reason.UNAUTHORIZED, "one failed",
                             measurements=tuple(Measurement("bems_auth_success", value, (("method", method),))
                                                for method, value in signed_in.items())))  # fmt: skip
    assert verdicts(config, store)[("onprem", "basic_or_windows_auth")].met is met


def measured(target: str, check: str, *measurements: Measurement) -> CheckResult:
    return CheckResult(target, check, True, time.time(), 0.1, measurements=measurements)


def url_match(mailbox: str, match: float) -> Measurement:
    return Measurement(autodiscover.URL_MATCH.name, match, (("mailbox", mailbox),))


@pytest.mark.parametrize(
    ("requirement", "result", "reason"),
    [
        pytest.param(
            "autodiscover_ews_url",
            measured("onprem-ad", "autodiscover", url_match("alice@corp.example.com", 1.0),
                     url_match("bob@corp.example.com", 0.0)),
            scenario.EWS_URL_MISMATCH, id="one-mailbox-gets-another-ews-url",
        ),
        pytest.param(
            "autodiscover_ews_url",
            measured("onprem-ad", "autodiscover", url_match("alice@corp.example.com", 1.0)),
            scenario.NOT_MEASURED, id="a-mailbox-without-a-match-measurement",
        ),
        pytest.param(
            "public_certificate",
            measured("onprem-ad", "tls", Measurement(scenario.PUBLICLY_TRUSTED, 0.0)),
            scenario.NOT_PUBLICLY_TRUSTED, id="internal-ca-on-autodiscover",
        ),
        pytest.param(
            "public_certificate",
            measured("onprem-ews", "tls", Measurement(scenario.PUBLICLY_TRUSTED, 0.0)),
            scenario.NOT_PUBLICLY_TRUSTED, id="internal-ca-on-ews",
        ),
        pytest.param(
            "public_certificate", measured("onprem-ews", "tls"), scenario.NOT_MEASURED, id="tls-without-the-gauge"
        ),
    ],
)  # fmt: skip
def test_a_passing_check_that_measured_short_is_unmet(
    config: Config, requirement: str, result: CheckResult, reason: str
) -> None:
    config = config.model_copy(update={"scenario": Scenario.CLOUD_BEMS_ONPREM_EXCHANGE})
    store = passing_store(config)
    store.record(result)
    judged = verdicts(config, store)
    assert {key for key, v in judged.items() if not v.met} == {("onprem", requirement)}
    verdict = judged[("onprem", requirement)]
    assert (verdict.reason, verdict.hint) == (reason, scenario.HINTS[requirement])
    assert result.target in verdict.detail


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        pytest.param((answered("public"), answered("public", "ipv6", 2)), None, id="public-only"),
        pytest.param((answered("public"), answered("private")), scenario.PRIVATE_ADDRESS, id="rfc1918-leaked"),
        pytest.param((answered("unique_local", "ipv6"),), scenario.PRIVATE_ADDRESS, id="rfc4193-leaked"),
        pytest.param((answered("public"), answered("cgnat")), scenario.NOT_PUBLIC, id="cgnat"),
        pytest.param((answered("loopback"),), scenario.NOT_PUBLIC, id="loopback"),
        pytest.param((answered("link_local"),), scenario.NOT_PUBLIC, id="link-local"),
        pytest.param((answered("reserved"),), scenario.NOT_PUBLIC, id="documentation-range"),
        pytest.param((), scenario.NOT_MEASURED, id="no-answer-measured"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("success", [True, False], ids=["connected", "connect-failed"])
def test_internet_exposure_needs_public_answers(
    config: Config, answers: tuple[Measurement, ...], reason: str | None, success: bool
) -> None:
    config = config.model_copy(update={"scenario": Scenario.CLOUD_BEMS_ONPREM_EXCHANGE})
    store = passing_store(config)
    failure = (None, "") if success else (Reason.TIMEOUT, "connection to mail.corp.example.com:443 timed out")
    store.record(CheckResult("onprem-ad", "reachability", success, time.time(), 0.1, *failure, measurements=answers))
    verdict = verdicts(config, store)[("onprem", "internet_exposure")]
    if success and reason is None:
        assert verdict.met
        return
    # A leaked answer explains a failed connect better than the connect's own reason does.
    measured_short = reason not in (None, scenario.NOT_MEASURED)
    expected = reason if success or measured_short else Reason.TIMEOUT.value
    assert (verdict.met, verdict.reason) == (False, expected)
    assert "onprem-ad" in verdict.detail


def test_internet_exposure_rests_on_internet_view_targets_only(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG) | {"scenario": "cloud-bems-onprem-exchange"}
    for target in data["targets"]:
        if target["name"] == "onprem-ad":
            target["dns"]["view"] = "internal"
    config = load(tmp_path, yaml.safe_dump(data))
    store = passing_store(config)
    # What the internal view answers is no claim about the Internet's: only onprem-ews is judged.
    store.record(measured("onprem-ad", "reachability", answered("private")))
    assert verdicts(config, store)[("onprem", "internet_exposure")].met
    for target in data["targets"]:
        target.pop("dns", None)
    config = load(tmp_path, yaml.safe_dump(data))
    assert "onprem: internet_exposure" in scenario.unconfigured(config)
    verdict = verdicts(config, passing_store(config))[("onprem", "internet_exposure")]
    assert (verdict.met, verdict.reason, verdict.hint) == (
        False,
        scenario.NOT_CONFIGURED,
        scenario.HINTS["internet_exposure"],
    )


def test_the_connectivity_node_route_replaces_internet_exposure(config: Config) -> None:
    config = config.model_copy(
        update={"scenario": Scenario.CLOUD_BEMS_ONPREM_EXCHANGE, "route": Route.CONNECTIVITY_NODE}
    )
    store = passing_store(config)
    store.record(measured("onprem-ews", "reachability", answered("private")))  # inside the LAN: as it should be
    judged = verdicts(config, store)
    assert set(judged) == EXPECTED[Scenario.CLOUD_BEMS_ONPREM_EXCHANGE] - {("onprem", "internet_exposure")} | {
        ("onprem", "connectivity_node_reachable")
    }
    assert all(v.met for v in judged.values())
    for target, check in [("onprem-ews", "reachability"), ("onprem-ad", "tls")]:
        store = passing_store(config)
        fail(store, target, check, Reason.REFUSED)
        verdict = verdicts(config, store)[("onprem", "connectivity_node_reachable")]
        assert (verdict.met, verdict.reason) == (False, "refused")


def test_public_certificate_holds_in_the_cloud_scenario_only(config: Config) -> None:
    # Hybrid and online BEMS run on-premises: an internal CA they trust is fine there.
    store = passing_store(config)
    store.record(measured("onprem-ews", "tls", Measurement(scenario.PUBLICLY_TRUSTED, 0.0)))
    assert all(v.met for v in scenario.evaluate(config, store))
    cloud = config.model_copy(update={"scenario": Scenario.CLOUD_BEMS_ONPREM_EXCHANGE})
    assert not verdicts(cloud, store)[("onprem", "public_certificate")].met


CERTIFICATE_HINT = "renew the certificate or add its issuer to defaults.tls.ca_file"
SIGNIN_HINT = "check the password of CORP\\BEMSAdmin and whether the account is locked"


@pytest.mark.parametrize(
    ("requirement", "target", "check", "reason", "result_hint", "hint"),
    [
        # The check's own hint follows its reason: a certificate problem is not a missing Basic.
        pytest.param("basic_or_windows_auth", "onprem-ews", "auth", Reason.CERTIFICATE, CERTIFICATE_HINT,
                     CERTIFICATE_HINT, id="auth-certificate"),
        pytest.param("basic_or_windows_auth", "onprem-ews", "auth", Reason.UNAUTHORIZED, SIGNIN_HINT, SIGNIN_HINT,
                     id="auth-unauthorized"),
        pytest.param("ews_reachable", "onprem-ews", "tls", Reason.CERTIFICATE, CERTIFICATE_HINT, CERTIFICATE_HINT,
                     id="tls-certificate"),
        pytest.param("push_delivery", "onprem-ews", "push", Reason.PUSH_STALLED, push.STALLED_HINT,
                     push.STALLED_HINT, id="push-stalled"),
        pytest.param("notification_url", "bems-url", "notification_url", Reason.BAD_RESPONSE, notification_url.HINT,
                     notification_url.HINT, id="notification-url-no-echo"),
        # A result without a hint: the requirement's generic one.
        pytest.param("basic_or_windows_auth", "onprem-ews", "auth", Reason.METHOD_NOT_OFFERED, "",
                     scenario.HINTS["basic_or_windows_auth"], id="auth-without-hint"),
        pytest.param("impersonation", "onprem-ews", "impersonation", Reason.TIMEOUT, "",
                     scenario.HINTS["impersonation"], id="impersonation-without-hint"),
    ],
)  # fmt: skip
def test_the_hint_follows_the_failing_check(
    config: Config, requirement: str, target: str, check: str, reason: Reason, result_hint: str, hint: str
) -> None:
    store = passing_store(config)
    fail(store, target, check, reason, result_hint)
    side = "online" if requirement == "notification_url" else "onprem"
    verdict = verdicts(config, store)[(side, requirement)]
    assert (verdict.reason, verdict.hint) == (reason.value, hint)


@pytest.mark.parametrize("state", [scenario.PENDING, scenario.NOT_CONFIGURED])
def test_pending_and_not_configured_get_the_generic_hint(tmp_path: Path, state: str) -> None:
    data = yaml.safe_load(CONFIG)
    if state == scenario.NOT_CONFIGURED:
        data["targets"] = [t for t in data["targets"] if t["kind"] != "graph"]
    config = load(tmp_path, yaml.safe_dump(data))
    store = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    if state == scenario.NOT_CONFIGURED:
        store = passing_store(config)
    verdict = verdicts(config, store)[("online", "graph_access")]
    assert (verdict.reason, verdict.hint) == (state, scenario.HINTS["graph_access"])


def graph_result(target: str, read: dict[str, float], reason: Reason | None = None) -> CheckResult:
    samples = tuple(Measurement(graph.SUCCESS.name, v, (("mailbox", m),)) for m, v in read.items())
    return CheckResult(target, "graph", reason is None, time.time(), 0.1, reason, "it failed" if reason else "",
                       measurements=samples)  # fmt: skip


CAROL, DAVE = "carol@contoso.com", "dave@contoso.com"
# (id, the graph target's mailboxes, its result (None: not run), the push check fails, carol's readiness, reason)
GRAPH_PATH_CASES = [
    ("read-and-delivered", (CAROL,), graph_result("graph", {CAROL: 1.0}), False, True, ""),
    ("read-but-delivery-stalled", (CAROL,), graph_result("graph", {CAROL: 1.0}), True, False, "push_stalled"),
    ("read-though-another-mailbox-fails", (CAROL, DAVE),
     graph_result("graph", {CAROL: 1.0, DAVE: 0.0}, Reason.FORBIDDEN), False, True, ""),
    ("denied", (CAROL,), graph_result("graph", {CAROL: 0.0}, Reason.FORBIDDEN), False, False, "forbidden"),
    ("not-listed-on-graph", (DAVE,), graph_result("graph", {DAVE: 1.0}), False, False, scenario.MAILBOX_NOT_ON_GRAPH),
    ("graph-not-run-yet", (CAROL,), None, False, False, scenario.PENDING),
    ("passed-without-measuring", (CAROL,), graph_result("graph", {}), False, False, scenario.NOT_MEASURED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mailboxes", "result", "push_fails", "ready", "reason"), [c[1:] for c in GRAPH_PATH_CASES],
    ids=[c[0] for c in GRAPH_PATH_CASES],
)  # fmt: skip
def test_graph_path_ready_per_mailbox(
    tmp_path: Path, mailboxes: tuple[str, ...], result: CheckResult | None, push_fails: bool, ready: bool, reason: str
) -> None:
    data = yaml.safe_load(CONFIG)
    for target in data["targets"]:
        if target["name"] == "graph":
            target["mailboxes"] = list(mailboxes)
            target["push"]["mailbox"] = mailboxes[0]
    config = load(tmp_path, yaml.safe_dump(data))
    store = passing_store(config)
    store.latest.pop(("graph", "graph"))
    if result is not None:
        store.record(result)
    if push_fails:
        fail(store, "graph", "push", Reason.PUSH_STALLED)
    judgement = scenario.graph_path(config, store)[CAROL]  # the mailbox online-ews checks
    assert (judgement.met, judgement.reason) == (ready, reason)
    verdict = verdicts(config, store)[("online", "graph_path_ready")]
    assert (verdict.met, verdict.reason) == (ready, reason)
    samples = {s.labels["mailbox"]: s.value for s in scenario_family(config, store, "bems_graph_path_ready")}
    assert samples == {CAROL: 1.0 if ready else 0.0}


def test_graph_path_without_a_push_target_rests_on_access_alone(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG)
    for target in data["targets"]:
        target.pop("push", None) if target["name"] == "graph" else None
    config = load(tmp_path, yaml.safe_dump(data))
    store = passing_store(config)
    assert scenario.graph_path(config, store)[CAROL].met


def scenario_family(config: Config, store: ResultStore, name: str) -> list[Any]:
    return next(f for f in scenario.families(config, store) if f.name == name).samples


def test_unconfigured_and_pending_requirements(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG)
    data["targets"] = [t for t in data["targets"] if t["kind"] not in ("graph", "notification_url")
                       and t.get("exchange") != "onprem"]  # fmt: skip
    config = load(tmp_path, yaml.safe_dump(data))
    assert scenario.unconfigured(config) == [
        "onprem: ews_reachable", "onprem: autodiscover_reachable", "onprem: basic_or_windows_auth",
        "onprem: impersonation", "online: graph_access", "online: graph_path_ready",
    ]  # fmt: skip
    empty = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    reasons = {v.requirement: v.reason for v in scenario.evaluate(config, empty) if v.exchange == Exchange.ONLINE}
    assert reasons["modern_auth"] == scenario.PENDING
    assert reasons["graph_access"] == scenario.NOT_CONFIGURED


def without(*names: str, push_of: tuple[str, ...] = ()) -> str:
    """CONFIG without the targets ``names`` and without the push block of the targets ``push_of``."""
    data = yaml.safe_load(CONFIG)
    data["targets"] = [t for t in data["targets"] if t["name"] not in names]
    for target in data["targets"]:
        if target["name"] in push_of:
            del target["push"]
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    ("text", "absent"),
    [
        pytest.param(CONFIG, set(), id="everything-configured"),
        pytest.param(without(push_of=("onprem-ews",)), {("onprem", "push_delivery")}, id="no-onprem-push"),
        pytest.param(without(push_of=("graph",)), {("online", "push_delivery")}, id="no-online-push"),
        pytest.param(without("bems-url"), {("online", "notification_url")}, id="no-notification-url"),
        # Graph mode without an online EWS target: nothing to compare Autodiscover's EWS URL with, nothing to cut over.
        pytest.param(without("online-ews"), {("online", "autodiscover_ews_url"), ("online", "ews_reachable"),
                                             ("online", "graph_path_ready")}, id="no-online-ews"),
        pytest.param(without("onprem-ad"), {("onprem", "autodiscover_ews_url")}, id="no-onprem-autodiscover"),
    ],
)  # fmt: skip
def test_delivery_requirements_apply_only_where_configured(
    tmp_path: Path, text: str, absent: set[tuple[str, str]]
) -> None:
    config = load(tmp_path, text)
    judged = set(verdicts(config, passing_store(config)))
    assert EXPECTED[Scenario.ONPREM_BEMS_HYBRID] - judged == absent
    warned = {tuple(line.split(": ")[:2]) for line in scenario.unverified(config)}
    # Those were never warnings: EWS is optional online, and so is the cutover from it.
    assert warned == absent - {("online", "ews_reachable"), ("online", "graph_path_ready")}


def test_config_check_warns_that_delivery_is_not_verified(tmp_path: Path) -> None:
    path = tmp_path / "bems.yml"
    path.write_text(without("bems-url", push_of=("onprem-ews", "graph")))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--config.file", str(path), "--config.check"]) == 0
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: onprem-bems-hybrid: onprem: push_delivery: " + scenario.UNVERIFIED["push_delivery"],
        "warning: onprem-bems-hybrid: online: push_delivery: " + scenario.UNVERIFIED["push_delivery"],
        "warning: onprem-bems-hybrid: online: notification_url: " + scenario.UNVERIFIED["notification_url"],
    ]
    path.write_text(CONFIG)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--config.file", str(path), "--config.check"]) == 0
    assert "warning:" not in out.getvalue()


def test_a_shard_judges_delivery_only_where_it_runs_the_push_check(tmp_path: Path) -> None:
    whole = load(tmp_path)
    for index in range(3):
        replica = load(tmp_path, shard=f"{index}/3").sharded()
        judged = set(verdicts(replica, ResultStore(targets=replica.targets_by_name(), checks=planned_checks(replica))))
        planned = planned_checks(replica)
        assert (("onprem", "push_delivery") in judged) == ("push" in planned["onprem-ews"])
        assert (("online", "push_delivery") in judged) == ("push" in planned["graph"])
        # --config.check reads the file, shard and all: its warnings are about the whole configuration.
        assert scenario.unverified(load(tmp_path, shard=f"{index}/3")) == scenario.unverified(whole) == []


# --- against the simulator -----------------------------------------------------------------------------------


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    # One simulated minute a second (EWS keep-alives, retries); the Graph write probe needs Mail.ReadWrite.
    async with Simulator(tmp_path / "sim", minute_seconds=1.0) as simulator:
        simulator.configure_entra(graph_roles=list(DEMO_GRAPH_ROLES))
        yield simulator


@pytest.fixture
async def exporter(
    sim: Simulator, tmp_path: Path, fake_clock: FakeClock, listener_socket: socket.socket
) -> AsyncIterator[Exporter]:
    path = sim.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s",
                                     listener_port=port_of(listener_socket), stall_after="3s")  # fmt: skip
    running = Exporter(str(path), monotonic=fake_clock.monotonic)
    running.listener.take_socket(listener_socket)
    running.load()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def requirements(exporter: Exporter) -> tuple[float | None, dict[str, str]]:
    """bems_scenario_ready, and side/requirement -> reason of every unmet requirement."""
    samples = parse(exposition.render(BemsCollector(exporter.store, exporter.status).collect()).decode())
    unmet = {
        f"{labels['exchange']}/{labels['requirement']}": labels["reason"]
        for name, pairs in samples
        if name == "bems_requirement_failure_reason"
        for labels in [dict(pairs)]
    }
    return value(samples, "bems_scenario_ready", scenario="onprem-bems-hybrid"), unmet


STEP = 0.25  # fake seconds between looks at the verdict: a quarter of the 1 s check interval


@pytest.mark.parametrize(
    ("breaks", "heals", "requirement", "reason"),
    [
        pytest.param(lambda sim: sim.set_push_fault("callback_blocked"), lambda sim: sim.set_push_fault("none"),
                     "onprem/push_delivery", "push_stalled", id="ews-callbacks-blocked"),
        pytest.param(lambda sim: sim.set_bems_fault("no_echo"), lambda sim: sim.set_bems_fault("none"),
                     "online/notification_url", "bad_response", id="bems-url-no-echo"),
        pytest.param(lambda sim: sim.set_autodiscover_ews_url("onprem-autodiscover", "https://elsewhere.example.test"
                                                              "/EWS/Exchange.asmx"),
                     lambda sim: sim.set_autodiscover_ews_url("onprem-autodiscover", None),
                     "onprem/autodiscover_ews_url", scenario.EWS_URL_MISMATCH, id="autodiscover-other-ews-url"),
    ],
)  # fmt: skip
async def test_a_broken_delivery_path_makes_the_scenario_not_ready(
    sim: Simulator, exporter: Exporter, fake_clock: FakeClock, breaks: Any, heals: Any, requirement: str, reason: str
) -> None:
    # Limits in seconds of the fake clock (checks every 1 s, a stall after 3 s), whatever the machine's load.
    await fake_clock.advance_until(lambda: requirements(exporter) == (1.0, {}), STEP, limit=60)  # all ready
    breaks(sim)
    await fake_clock.advance_until(lambda: requirements(exporter) == (0.0, {requirement: reason}), STEP, limit=30)
    heals(sim)
    await fake_clock.advance_until(lambda: requirements(exporter) == (1.0, {}), STEP, limit=60)  # ready again


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_requirement_is_documented() -> None:
    """Requirement ids are a contract: each is in the metrics.md table, and the delivery ones have a runbook."""
    table = {
        requirement
        for line in (DOCS / "metrics.md").read_text().splitlines()
        if line.startswith(("| `onprem`", "| `online`"))
        for requirement in [line.split("|")[2].strip().strip("`")]
    }
    assert set(scenario.HINTS) == table
    headings = set((DOCS / "runbooks.md").read_text().splitlines())
    new = ("push_delivery", "notification_url", "autodiscover_ews_url", "public_certificate", "internet_exposure",
           "connectivity_node_reachable")  # fmt: skip
    assert {f"## Requirement {requirement} unmet" for requirement in new} <= headings
