"""The ``service_health`` check against the simulator's Graph service announcements: every reason, each way an
issue shows or stays out, paging, the cap, the back-off, and which target asks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from check_runner import run

from bems_simulator.server import Simulator
from exporter.checks import CHECKS
from exporter.checks.resources import Resources
from exporter.checks.service_health import MAX_ISSUE_SERIES
from exporter.config import load_config
from exporter.daemon.runner import execute
from exporter.protocol import service_announcements
from exporter.results import CheckResult, ProbeFailure, Reason

PERMITTED = ["Mail.Read", "User.Read.All", "ServiceHealth.Read.All"]
EXCHANGE = "Exchange Online"


def samples(result: CheckResult, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {m.labels: m.value for m in result.measurements if m.metric == metric}


def status_of(result: CheckResult, service: str) -> str:
    on = [dict(k)["status"] for k, v in samples(result, "bems_m365_service_status").items()
          if v == 1.0 and dict(k)["m365_service"] == service]  # fmt: skip
    assert len(on) == 1, on
    return on[0]


def issues(result: CheckResult) -> set[tuple[str, str, str, str]]:
    return {
        (d["m365_service"], d["id"], d["classification"], d["title"])
        for d in map(dict, samples(result, "bems_m365_issue_info"))
    }


def active(result: CheckResult) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["m365_service"], dict(k)["classification"]): v
        for k, v in samples(result, "bems_m365_active_issues").items()
        if v
    }


Setup = Callable[[Simulator], object]
Issues = set[tuple[str, str, str, str]]
Counts = dict[tuple[str, str], float]
# (id, setup, reason, in the hint, Exchange Online's status, issues exported, active counts)
CASES: list[tuple[str, Setup, Reason | None, str, str | None, Issues, Counts]] = [
    ("operational", lambda sim: None, None, "", "serviceOperational", set(), {}),
    ("exchange-incident", lambda sim: (sim.set_service_status("Exchange", "ServiceInterruption"),
                                       sim.post_service_issue("EX1001", "Exchange", "Incident", "Users can't connect")),
     None, "", "serviceInterruption", {(EXCHANGE, "EX1001", "incident", "Users can't connect")},
     {(EXCHANGE, "incident"): 1.0}),
    ("identity-advisory", lambda sim: sim.post_service_issue("EN2002", "OrgLiveID", "Advisory", "Sign-in delays"),
     None, "", "serviceOperational", {("Identity Service", "EN2002", "advisory", "Sign-in delays")},
     {("Identity Service", "advisory"): 1.0}),
    ("resolved-issue-stays-out", lambda sim: sim.post_service_issue("EX1003", "Exchange", resolved=True),
     None, "", "serviceOperational", set(), {}),
    ("unwatched-service-stays-out", lambda sim: sim.post_service_issue("SP3004", "SharePoint", "Incident", "Lists"),
     None, "", "serviceOperational", set(), {}),
    ("permission-missing", lambda sim: sim.configure_entra(graph_roles=["Mail.Read", "User.Read.All"]),
     Reason.SERVICE_HEALTH_NOT_PERMITTED, "ServiceHealth.Read.All", None, set(), {}),
    ("throttled", lambda sim: sim.set_graph_throttled(True, retry_after=30), Reason.THROTTLED, "", None, set(), {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "reason", "in_hint", "exchange_status", "exported", "counts"), [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)  # fmt: skip
async def test_every_reason(
    simulator: Simulator, sim_config_file: Path, setup: Setup, reason: Reason | None, in_hint: str,
    exchange_status: str | None, exported: Issues, counts: Counts,
) -> None:  # fmt: skip
    simulator.configure_entra(graph_roles=PERMITTED)
    config = load_config(sim_config_file)
    setup(simulator)
    result = await run(config, config.targets_by_name()["online-graph"], "service_health")
    assert (result.success, result.reason) == (reason is None, reason), result.message
    assert in_hint in result.hint
    if exchange_status is not None:
        assert status_of(result, EXCHANGE) == exchange_status
        # The three services BEMS depends on, and only those (SharePoint is the tenant's, not BEMS's).
        assert {dict(k)["m365_service"] for k in samples(result, "bems_m365_service_status")} == {
            EXCHANGE,
            "Identity Service",
            "Microsoft 365 suite",
        }
    assert issues(result) == exported
    assert active(result) == counts


async def test_issues_are_read_across_pages_and_capped(simulator: Simulator, sim_config_file: Path) -> None:
    simulator.configure_entra(graph_roles=PERMITTED)
    simulator.set_service_issue_page_size(7)
    posted = MAX_ISSUE_SERIES + 5
    for n in range(posted):
        simulator.post_service_issue(f"EX{n:04d}", "Exchange", "Incident", f"incident {n}")
    config = load_config(sim_config_file)
    result = await run(config, config.targets_by_name()["online-graph"], "service_health")
    assert result.success, result.message
    assert active(result) == {(EXCHANGE, "incident"): float(posted)}  # every page counted
    assert len(issues(result)) == MAX_ISSUE_SERIES  # the series capped
    paths = [r.path for r in simulator.graph_requests if "serviceAnnouncement/issues" in r.path]
    assert len(paths) == -(-posted // 7)
    assert all("$filter=isResolved%20eq%20false" in p or "isResolved+eq+false" in p for p in paths), paths


async def test_a_429_holds_the_apps_graph_requests(simulator: Simulator, sim_config_file: Path) -> None:
    simulator.configure_entra(graph_roles=PERMITTED)
    config = load_config(sim_config_file)
    target = config.targets_by_name()["online-graph"]
    simulator.set_graph_throttled(True, retry_after=600)
    resources = Resources()
    try:
        first = await execute(CHECKS["service_health"], config, target, resources)
        simulator.set_graph_throttled(False)
        sent = len(simulator.graph_requests)
        second = await execute(CHECKS["service_health"], config, target, resources)
    finally:
        await resources.close()
    assert (first.reason, second.reason) == (Reason.THROTTLED, Reason.THROTTLED)
    assert "not sent" in second.message
    assert len(simulator.graph_requests) == sent


def test_one_target_per_credential_asks(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    graph = config.targets_by_name()["online-graph"]
    twin = graph.model_copy(update={"name": "online-graph-2"})
    config = config.model_copy(update={"targets": (*config.targets, twin)})
    applies = CHECKS["service_health"].applies
    assert [t.name for t in config.targets if applies(config, t)] == [graph.name]


@pytest.mark.parametrize(
    ("link", "followed"),
    [
        pytest.param("https://graph.test:8443/v1.0/admin/serviceAnnouncement/issues?$skip=100", True, id="same-origin"),
        pytest.param("https://attacker.test/v1.0/admin/serviceAnnouncement/issues?$skip=100", False, id="other-host"),
        pytest.param("http://graph.test:8443/v1.0/admin/serviceAnnouncement/issues", False, id="plain-http"),
    ],
)
def test_next_link_stays_on_the_graph_origin(link: str, followed: bool) -> None:
    answer = {"value": [], "@odata.nextLink": link}
    if followed:
        assert service_announcements.next_link(answer, "https://graph.test:8443/v1.0") == link
    else:
        with pytest.raises(ProbeFailure) as failure:
            service_announcements.next_link(answer, "https://graph.test:8443/v1.0")
        assert failure.value.reason == Reason.BAD_RESPONSE


def test_statuses_and_classifications_take_the_references_spelling() -> None:
    # The reference's examples spell the enums in PascalCase ("ServiceOperational", "Incident").
    answer = {"value": [{"id": "Exchange", "service": EXCHANGE, "status": "ServiceOperational"},
                        {"id": "OrgLiveID", "service": "Identity Service", "status": "SomethingNew"},
                        {"id": "SharePoint", "service": "SharePoint", "status": "ServiceDegradation"}]}  # fmt: skip
    assert [(s.id, s.status) for s in service_announcements.read_overviews(answer)] == [
        ("Exchange", "serviceOperational"), ("OrgLiveID", "unknownFutureValue")
    ]  # fmt: skip
    page = {"value": [{"id": "EX1", "service": EXCHANGE, "classification": "Incident", "isResolved": False,
                       "title": "  many\n  spaces " + "x" * 300}]}  # fmt: skip
    (issue,) = service_announcements.read_issues(page, {EXCHANGE})
    assert issue.classification == "incident"
    assert issue.title.startswith("many spaces x")
    assert len(issue.title) == service_announcements.MAX_TITLE_CHARS
