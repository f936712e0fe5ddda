"""The alerting rules, Prometheus and Alertmanager configurations in deploy/, checked with the real tools.

promtool (Debian package prometheus), amtool and alertmanager (package prometheus-alertmanager, whose
binary is called prometheus-alertmanager) are installed by `make tools`; a missing tool is a failure,
never a skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopback import bound_socket, port_of, spawn_with_sockets, stop_process

pytestmark = pytest.mark.timeout(300)  # promtool and Prometheus processes

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# The alert names are a contract: dashboards, routes, inhibitions and runbooks refer to them.
ALERTS = {
    "BEMSExchangeEndpointUnreachable",
    "BEMSExchangeTLSInvalid",
    "BEMSExchangeCertificateExpiring",
    "BEMSExchangeCertificateExpired",
    "BEMSExchangeAuthenticationFailing",
    "BEMSExchangeCredentialSuspended",
    "BEMSExchangeNotExposedToInternet",
    "BEMSExchangeConnectivityNodeUnreachable",
    "BEMSExchangeNtlmOnly",
    "BEMSExchangeTokenAcquisitionFailing",
    "BEMSExchangeEntraCredentialExpiring",
    "BEMSExchangeImpersonationDenied",
    "BEMSExchangeMailboxNotFound",
    "BEMSExchangeGraphAccessDenied",
    "BEMSExchangeGraphPermissionMissing",
    "BEMSExchangeAutodiscoverFailing",
    "BEMSExchangeAutodiscoverUnexpectedEwsUrl",
    "BEMSExchangeEwsDisabled",
    "BEMSExchangeEwsRetirement",
    "BEMSExchangeEwsAppNotAllowed",
    "BEMSExchangeEwsDisabledForMailbox",
    "BEMSExchangeAdminApiNotPermitted",
    "BEMSExchangeMicrosoftIncident",
    "BEMSExchangeServiceHealthNotPermitted",
    "BEMSExchangeNotificationsStalled",
    "BEMSNotificationUrlFailing",
    "BEMSExchangeScenarioNotReady",
    "BEMSExchangeExporterDown",
    "BEMSExchangeResultsStale",
    "BEMSExchangeConfigReloadFailed",
    "BEMSExchangeProbesOverrunning",
    "BEMSExchangeErrorBudgetBurn",
    "BEMSExchangeCheckFailingEverywhere",
    "BEMSExchangeCheckFailingFromVantagePoint",
    "BEMSExchangeRequirementUnmetEverywhere",
    "BEMSExchangeRequirementUnmetFromVantagePoint",
    "BEMSExchangeMaintenanceWindow",
    "BEMSExchangePopulationFailingShare",
    "BEMSExchangePopulationSweepLate",
    "BEMSExchangePopulationSourceFailing",
}
# Alerts whose series carry no scenario: the exporter is down, so bems_scenario_info is gone too.
WITHOUT_SCENARIO = {"BEMSExchangeExporterDown"}
DASHBOARD_UIDS = {
    "bems-overview", "bems-target", "bems-audit", "bems-scenario-onprem", "bems-scenario-online",
    "bems-scenario-hybrid",
}  # fmt: skip
SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}
RULE_FILE_OF_SIDE = {"onprem": "onprem.yml", "online": "online.yml"}


def tool(name: str, *aliases: str) -> str:
    for candidate in (name, *aliases):
        if path := shutil.which(candidate):
            return path
    # `make tools` installs it: a missing tool is a failure, never a skip
    pytest.fail(f"{name} is not installed (run `make tools`)")


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def alerting_rules() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    yield path, rule


def all_rules() -> Iterator[dict[str, Any]]:
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), re.MULTILINE)}


# ---------------------------------------------------------------------------------------- promtool


def test_rule_files_are_the_scenario_files() -> None:
    assert [p.name for p in RULES] == ["bems.yml", "common.yml", "online.yml", "onprem.yml", "vantage.yml"]


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_promtool_checks_rule_file(path: Path) -> None:
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_prometheus_config() -> None:
    result = run(tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULES:  # every rule file is loaded, so checked with the configuration too
        assert f"rules/{path.name}" in result.stdout


def test_prometheus_config_scrapes_the_exporter() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "bems-exchange-exporter"]
    assert all(t.endswith(":10442") for sc in job["static_configs"] for t in sc["targets"])
    assert config["alerting"]["alertmanagers"]
    text = (PROMETHEUS / "prometheus.yml").read_text()
    assert "action: hashmod" in text and "remote_write:" in text  # the commented examples


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(path: Path) -> None:
    result = run(tool("promtool"), "test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert ALERTS - firing == set(), "alerts without a firing test case"
    assert ALERTS - quiet == set(), "alerts without a not-firing test case"


# ---------------------------------------------------------------------------------------- rule contract


def test_alert_names_are_the_contract() -> None:
    assert {rule["alert"] for _, rule in alerting_rules()} == ALERTS


def sources_with_scenario() -> set[str]:
    """The names whose series carry `scenario`: bems_scenario_info, bems_requirement_met, and recording rules
    built on them (transitively). The promtool tests pin the labels themselves."""
    sources = {"bems_scenario_info", "bems_requirement_met"}
    records = {rule["record"]: rule["expr"] for rule in all_rules() if "record" in rule}
    while grown := {r for r, expr in records.items() if r not in sources and any(s in expr for s in sources)}:
        sources |= grown
    return sources


def test_every_alert_is_labelled_annotated_and_delayed() -> None:
    anchors = runbook_anchors()
    with_scenario = sources_with_scenario()
    for path, rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) >= ANNOTATIONS, name
        assert all(rule["annotations"][key].strip() for key in ANNOTATIONS), name
        assert rule.get("for"), f"{name}: one lost probe must not alert, give it a `for`"

        runbook = rule["annotations"]["runbook_url"]
        assert runbook == f"docs/runbooks.md#{name.lower()}", name
        assert runbook.split("#", 1)[1] in anchors, f"{name}: no heading for {runbook} in docs/runbooks.md"

        dashboard = rule["annotations"]["dashboard_url"]  # /d/<uid>/<slug>?var-...; the uid may be templated
        uids = set(re.findall(r"(bems-[\w-]+)/bems-exchange-", dashboard))
        assert dashboard.startswith("/d/") and uids and uids <= DASHBOARD_UIDS, f"{name}: {dashboard}"

        if name not in WITHOUT_SCENARIO:  # the scenario label comes from a join, or the metric has it
            assert any(source in rule["expr"] for source in with_scenario), name
            if "bems_scenario_info" in rule["expr"]:  # several exporters: join on the scrape target
                assert "on (instance, job) group_left (scenario) bems_scenario_info" in rule["expr"], name

        for side, file in RULE_FILE_OF_SIDE.items():  # the scenario files hold their side's alerts only
            if path.name == file:
                assert f'exchange="{side}"' in rule["expr"] or "exchange" not in rule["expr"], name


def test_runbook_anchor_rules() -> None:
    assert github_anchor("EWS disabled in Exchange Online") == "ews-disabled-in-exchange-online"
    assert github_anchor("Autodiscover failing or pointing elsewhere") == "autodiscover-failing-or-pointing-elsewhere"
    assert github_anchor("BEMSExchangeTLSInvalid") == "bemsexchangetlsinvalid"


def test_runbook_links_between_sections_resolve() -> None:
    anchors = runbook_anchors()
    links = set(re.findall(r"\]\(#([^)]+)\)", RUNBOOKS.read_text()))
    assert links - anchors == set()


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(bems_[a-z0-9_]+)`", METRICS_DOC.read_text(), re.MULTILINE))


def test_every_metric_in_the_rules_is_documented() -> None:
    used: set[str] = set()
    for rule in all_rules():
        text = rule["expr"] + "".join(rule.get("annotations", {}).values())  # templates query metrics too
        # bems_* names, not the parts of recording rule names (level:metric:operation)
        used |= set(re.findall(r"(?<![\w:])(bems_[a-z0-9_]+)(?![\w:])", text))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) if m not in documented_metrics() else m for m in used}
    assert used, "no bems_ metric found: the pattern is wrong"
    assert used - documented_metrics() == set()


def test_recording_rules_follow_the_naming_convention() -> None:
    records = [rule["record"] for rule in all_rules() if "record" in rule]
    for window in ("1h", "1d", "30d"):
        assert f"target_check:bems_probe_availability:ratio_rate{window}" in records
    assert all(re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", r) for r in records), records


VANTAGE_KINDS = {"internal", "internet", "connectivity_node"}


def test_the_vantage_labels_are_the_documented_contract() -> None:
    """vantage.yml reads the target labels `vantage` and `vantage_kind` (docs/vantage-points.md); the kinds it
    names are the documented ones, and each kind-restricted requirement is judged by its kind only."""
    text = (PROMETHEUS / "rules" / "vantage.yml").read_text()
    assert set(re.findall(r'vantage_kind="(\w+)"', text)) <= VANTAGE_KINDS
    judged = {rule["record"]: rule["expr"] for rule in all_rules() if "record" in rule}
    requirements = judged["vantage_requirement:bems_requirement_met:judged"]
    assert 'vantage_kind="internet", requirement="internet_exposure"' in requirements
    assert 'vantage_kind="connectivity_node", requirement="connectivity_node_reachable"' in requirements
    doc = (ROOT / "docs" / "vantage-points.md").read_text()
    label_row, kinds_header = re.findall(r"^\| `vantage_kind` \| (.+) \|", doc, re.MULTILINE)
    assert set(re.findall(r"`(\w+)`", label_row.split("|")[0])) == VANTAGE_KINDS
    kinds_rows = re.findall(r"^\| `(\w+)` \| ", doc.split(kinds_header, 1)[1], re.MULTILINE)
    assert set(kinds_rows[:3]) == VANTAGE_KINDS
    assert "`vantage` and `vantage_kind` are reserved" in METRICS_DOC.read_text()


def test_deploy_readme_names_the_files_of_each_scenario() -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    expected = {
        "cloud-bems-onprem-exchange": ["common.yml", "onprem.yml", "bems.yml", "vantage.yml"],
        "onprem-bems-cloud-exchange": ["common.yml", "online.yml", "bems.yml", "vantage.yml"],
        "onprem-bems-hybrid": ["common.yml", "onprem.yml", "online.yml", "bems.yml", "vantage.yml"],
    }
    for scenario, files in expected.items():
        (row,) = [line for line in text.splitlines() if line.startswith(f"| `{scenario}`")]
        assert all(f"`{file}`" in row for file in files), row
        assert all(f"`{file}`" not in row for file in {p.name for p in RULES} - set(files)), row


# ---------------------------------------------------------------------------------------- Alertmanager


def test_amtool_checks_alertmanager_config() -> None:
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "scenario=onprem-bems-hybrid"], "pager"),
        (["severity=critical", "scenario=onprem-bems-hybrid", "exchange=onprem"], "exchange-onprem-pager"),
        (["severity=critical", "scenario=onprem-bems-hybrid", "exchange=online"], "pager"),
        (["severity=critical", "scenario=cloud-bems-onprem-exchange", "exchange=onprem"], "pager"),
        (["severity=critical", "scenario=onprem-bems-cloud-exchange", "exchange=online"], "pager"),
        (["severity=critical", "alertname=BEMSExchangeExporterDown"], "pager"),
        (["severity=warning", "scenario=onprem-bems-hybrid", "exchange=onprem"], "exchange-onprem-tickets"),
        (["severity=warning", "scenario=onprem-bems-hybrid", "exchange=online"], "tickets"),
        (["severity=warning", "scenario=cloud-bems-onprem-exchange"], "tickets"),
        (["severity=warning", "scenario=onprem-bems-cloud-exchange"], "tickets"),
        (["severity=info", "scenario=onprem-bems-hybrid", "exchange=online"], "info"),
        (["alertname=SomethingWithoutSeverity"], "tickets"),
    ],
)
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    result = run(
        tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}", *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_groups_by_alert_and_target() -> None:
    route = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]
    assert route["group_by"] == ["alertname", "target"]


def api(base: str, path: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager with deploy/alertmanager/alertmanager.yml on loopback (nothing is delivered:
    the receivers' webhooks point at a closed loopback port)."""
    with bound_socket() as web:  # Alertmanager 0.25 takes a socket (exporter-toolkit's --web.systemd-socket)
        process = spawn_with_sockets(
            [
                tool("alertmanager", "prometheus-alertmanager"), f"--config.file={ALERTMANAGER_CONFIG}",
                f"--storage.path={tmp_path}", "--web.systemd-socket", "--cluster.listen-address=",
            ],
            {"web": web}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = port_of(web)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/-/ready", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"alertmanager did not start: {process.communicate()[1]}")
                time.sleep(0.1)
        yield base
    finally:
        stop_process(process)


def firing_alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    """An alert as Prometheus posts it: started 10 minutes ago, ending in an hour."""
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, "severity": severity, "job": "bems-exchange-exporter", **labels},
        "annotations": {"summary": name},
        "startsAt": (now - timedelta(minutes=10)).isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
    }


def inhibited_after_posting(alertmanager: str, sent: dict[str, dict[str, Any]], expected: set[str]) -> set[str]:
    """Post the alerts, then the names of those Alertmanager inhibits, once it has them all and the expected
    set is reached (or 10 s have passed: then whatever it inhibits)."""
    api(alertmanager, "/api/v2/alerts", list(sent.values()))

    def key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(labels.items()))

    deadline = time.monotonic() + 10
    while True:
        got = {key(a["labels"]): bool(a["status"]["inhibitedBy"]) for a in api(alertmanager, "/api/v2/alerts")}
        inhibited = {name for name, a in sent.items() if got.get(key(a["labels"]))}
        if (len(got) == len(sent) and inhibited == expected) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(got) == len(sent)
    return inhibited


def test_alertmanager_inhibitions(alertmanager: str) -> None:
    alert = firing_alert
    one = {"instance": "bems-monitor-1:10442"}
    two = {"instance": "bems-monitor-2:10442"}
    sent = {
        # target onprem-ews of exporter 1 is unreachable: its other alerts are inhibited
        "unreachable": alert("BEMSExchangeEndpointUnreachable", "critical", target="onprem-ews", **one),
        "tls": alert("BEMSExchangeTLSInvalid", "critical", target="onprem-ews", **one),
        "auth": alert("BEMSExchangeAuthenticationFailing", "critical", target="onprem-ews", **one),
        "impersonation": alert("BEMSExchangeImpersonationDenied", "critical", target="onprem-ews", **one),
        "push": alert("BEMSExchangeNotificationsStalled", "critical", target="onprem-ews", **one),
        # another target, and the same target name on another exporter, are not
        "other-target": alert("BEMSExchangeImpersonationDenied", "critical", target="onprem-ews-2", **one),
        "other-exporter": alert("BEMSExchangeTLSInvalid", "critical", target="onprem-ews", **two),
        # the critical rule of an alert name silences its warning for the same target, not another's
        "cert-critical": alert("BEMSExchangeCertificateExpiring", "critical", target="online-ews", **two),
        "cert-warning": alert("BEMSExchangeCertificateExpiring", "warning", target="online-ews", **two),
        "cert-warning-other": alert("BEMSExchangeCertificateExpiring", "warning", target="online-graph", **two),
        # exporter 3 is down: everything it still reported is inhibited
        "down": alert("BEMSExchangeExporterDown", "critical", instance="bems-monitor-3:10442"),
        "stale": alert("BEMSExchangeResultsStale", "warning", target="x", instance="bems-monitor-3:10442"),
    }
    expected = {"tls", "auth", "impersonation", "push", "cert-warning", "stale"}
    assert inhibited_after_posting(alertmanager, sent, expected) == expected


def test_alertmanager_quiets_an_exporter_in_its_maintenance_window(alertmanager: str) -> None:
    alert = firing_alert
    one = {"instance": "bems-monitor-1:10442"}
    two = {"instance": "bems-monitor-2:10442"}
    sent = {
        "window": alert("BEMSExchangeMaintenanceWindow", "info", window="patch", **one),
        "unreachable": alert("BEMSExchangeEndpointUnreachable", "critical", target="onprem-ews", **one),
        "cert": alert("BEMSExchangeCertificateExpiring", "warning", target="onprem-ews", **one),
        "scenario": alert("BEMSExchangeScenarioNotReady", "critical", scenario="onprem-bems-hybrid", **one),
        # the exporter's own health still reaches someone during the window
        "stale": alert("BEMSExchangeResultsStale", "warning", target="onprem-ews", **one),
        "reload": alert("BEMSExchangeConfigReloadFailed", "warning", **one),
        # another exporter, outside any window, is not quiet
        "other-exporter": alert("BEMSExchangeEndpointUnreachable", "critical", target="onprem-ews", **two),
    }
    expected = {"unreachable", "cert", "scenario"}
    assert inhibited_after_posting(alertmanager, sent, expected) == expected


def test_alertmanager_lets_the_vantage_alerts_decide_how_loud(alertmanager: str) -> None:
    """Two vantage points (deploy/prometheus/rules/vantage.yml): reachability of onprem-ews fails from both,
    TLS of online-ews from the outside one only, requirement ews_reachable is unmet from both."""
    alert = firing_alert
    inside = {"instance": "inside:10442", "vantage": "bems-host", "vantage_kind": "internal"}
    outside = {"instance": "outside:10442", "vantage": "aws-eu-west-1", "vantage_kind": "internet"}
    hybrid = {"scenario": "onprem-bems-hybrid", "exchange": "onprem"}
    reach = {"target": "onprem-ews", "check": "reachability", **hybrid}
    tls = {"target": "online-ews", "check": "tls", "scenario": "onprem-bems-hybrid", "exchange": "online"}
    sent = {
        "everywhere": alert("BEMSExchangeCheckFailingEverywhere", "critical", **reach),
        "reach-inside": alert("BEMSExchangeCheckFailingFromVantagePoint", "warning", **reach, **inside),
        "reach-outside": alert("BEMSExchangeCheckFailingFromVantagePoint", "warning", **reach, **outside),
        # the vantage points' own per-check alerts: the vantage alerts stand for them
        "unreachable-inside": alert("BEMSExchangeEndpointUnreachable", "critical", **reach, **inside),
        "unreachable-outside": alert("BEMSExchangeEndpointUnreachable", "critical", **reach, **outside),
        # some, not all: the path warning stays, the outside exporter's own TLS page does not
        "tls-outside": alert("BEMSExchangeCheckFailingFromVantagePoint", "warning", **tls, **outside),
        "tls-invalid-outside": alert("BEMSExchangeTLSInvalid", "critical", **tls, **outside),
        # the inside exporter's TLS alert for that target would have no vantage alert behind it
        "tls-invalid-inside": alert("BEMSExchangeTLSInvalid", "critical", **tls, **inside),
        # requirements
        "requirement": alert(
            "BEMSExchangeRequirementUnmetEverywhere", "critical", requirement="ews_reachable", **hybrid
        ),
        "requirement-inside": alert(
            "BEMSExchangeRequirementUnmetFromVantagePoint", "warning", requirement="ews_reachable", **hybrid, **inside
        ),
        "other-requirement-inside": alert(
            "BEMSExchangeRequirementUnmetFromVantagePoint", "warning", requirement="impersonation", **hybrid, **inside
        ),
        # a plain exporter without vantage labels is untouched
        "plain": alert("BEMSExchangeEndpointUnreachable", "critical", target="onprem-ews", instance="plain:10442"),
    }
    expected = {"reach-inside", "reach-outside", "unreachable-inside", "unreachable-outside", "tls-invalid-outside",
                "requirement-inside"}  # fmt: skip
    assert inhibited_after_posting(alertmanager, sent, expected) == expected
