"""The Grafana dashboards (grafana/): generated, conventional, and every panel query runs on a real Prometheus.

The query test starts the Exchange simulator, the exporter and a real Prometheus (Debian package
prometheus, installed by `make tools`; missing is a failure, never a skip) on 127.0.0.1 with the shipped
recording rules, then runs each panel's PromQL with the template variables substituted.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import requests
import yaml
from aiohttp import web
from audit_history import MONTHS, series
from long_term_stores import audit_rules
from loopback import bound_socket, port_of, start_retrying_taken_ports, stop_process

from bems_simulator.server import DEMO_GRAPH_ROLES, Simulator
from exporter.audit.ledger import Month
from exporter.cli import main
from exporter.daemon.app import Exporter
from exporter.web.http_app import create_app

pytestmark = pytest.mark.timeout(300)  # real Prometheus scraping a demo until every panel has data

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

UIDS = {
    "bems-overview", "bems-target", "bems-audit", "bems-scenario-onprem", "bems-scenario-online",
    "bems-scenario-hybrid",
}  # fmt: skip
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = {"datasource", "instance", "exchange", "target", "check", "mailbox"}
SCENARIO_SIDES = {"bems-scenario-onprem": {"onprem"}, "bems-scenario-online": {"online"}}
# Queries on these series must show data in the demo (the simulator probed by the exporter).
MUST_SHOW = (
    "bems_requirement_met", "bems_probe_success", "bems_dns_lookup_seconds", "bems_tcp_connect_seconds",
    "bems_tls_handshake_seconds", "bems_auth_duration_seconds", "bems_impersonation_success", "bems_auth_ntlm_only",
    "target_check:bems_probe_availability:ratio_rate30d",
)  # fmt: skip
# Requirements of another scenario than the demo's (onprem-bems-hybrid): their stats say "not checked" there.
NOT_IN_THE_DEMO = ('requirement="public_certificate"',)  # cloud-bems-onprem-exchange only
# Grafana's variables, as the test sets them: multi-value regex matchers select everything.
# `$__range_s` before `$__range`, its prefix.
SUBSTITUTIONS = {
    "$__rate_interval": "15s", "$__interval": "5s", "$__range_s": "3600", "$__range": "1h",
    # The audit panels' subqueries step through whole minutes, aligned to the clock: in a demo younger than
    # a minute there may be none yet. Live, they step every second (the history test keeps the minute).
    ":1m])": ":1s])",
}  # fmt: skip

Json = dict[str, Any]


def dashboards() -> dict[str, Json]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def panels(board: Json) -> Iterator[Json]:
    """Every panel but rows, including those inside collapsed rows."""
    for item in board["panels"]:
        if item["type"] == "row":
            yield from item.get("panels", [])
        else:
            yield item


def queries(board: Json) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every panel query and every variable query."""
    for panel in panels(board):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["definition"]


def links(board: Json) -> Iterator[str]:
    """Every URL: dashboard links, panel links and field data links."""
    yield from (link["url"] for link in board["links"])
    for panel in panels(board):
        yield from (link["url"] for link in panel["links"])
        yield from (link["url"] for link in panel["fieldConfig"]["defaults"].get("links", []))


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def slug(title: str) -> str:
    """Grafana's URL slug of a dashboard title."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def metric_names(expr: str) -> set[str]:
    """The bems metric and recording rule names in a query (also those inside a `__name__` regex)."""
    names = set(re.findall(r"[a-zA-Z_:][\w:]*", expr))
    return {name for name in names if name.startswith(("bems_", "bems:")) or ":bems_" in name}


def rate_ranges(expr: str) -> Iterator[str]:
    """The argument of every rate(), irate() and increase() call."""
    for match in re.finditer(r"\b(?:rate|irate|increase)\s*\(", expr):
        depth, start = 1, match.end()
        for index in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[index], 0)
            if depth == 0:
                yield expr[start:index]
                break


# ------------------------------------------------------------------------------------------ generation


def test_the_committed_json_is_what_the_builder_writes(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "grafana.build", "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    generated = {path.name: path.read_text() for path in sorted(tmp_path.glob("*.json"))}
    committed = {path.name: path.read_text() for path in DASHBOARD_FILES}
    assert generated == committed, "grafana/dashboards/ is out of date: run `make dashboards` and commit the JSON"


def test_the_uids_are_the_ones_the_alerts_link_to() -> None:
    boards = dashboards()
    assert {board["uid"] for board in boards.values()} == UIDS
    assert all(name == f"{board['uid']}.json" for name, board in boards.items())


def test_every_alert_dashboard_link_resolves() -> None:
    boards = {board["uid"]: board for board in dashboards().values()}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                url = rule["annotations"]["dashboard_url"]  # /d/<uid>/<slug>?var-...; the uid may be templated
                pages = re.findall(r"(bems-[\w-]+)/(bems-exchange-[\w-]+)", url)
                assert pages, f"{rule['alert']}: {url}"
                for uid, page in pages:
                    board = boards[uid]
                    assert page == slug(board["title"]), f"{rule['alert']}: {url}"
                    names = {variable["name"] for variable in board["templating"]["list"]}
                    assert set(re.findall(r"var-(\w+)=", url)) <= names, rule["alert"]


# ------------------------------------------------------------------------------------------ conventions


@pytest.fixture(params=[path.name for path in DASHBOARD_FILES])
def board(request: pytest.FixtureRequest) -> Json:
    return dashboards()[request.param]


def test_dashboard_settings(board: Json) -> None:
    assert board["schemaVersion"] == 39 and board["editable"] is True
    # The audit's range is a calendar month, the previous one (Grafana's relative time `now-1M/M`).
    audit_time = {"from": "now-1M/M", "to": "now-1M/M"}
    assert board["time"] == (audit_time if board["uid"] == "bems-audit" else {"from": "now-6h", "to": "now"})
    assert "__inputs" not in board and "${DS_" not in json.dumps(board)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert set(variables) >= VARIABLES
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE and variable["definition"].startswith("label_values(")


def test_every_panel_uses_the_datasource_variable_and_a_unit(board: Json) -> None:
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"


def test_every_rate_uses_the_rate_interval(board: Json) -> None:
    for title, expr in queries(board):
        for argument in rate_ranges(expr):
            assert argument.rstrip().endswith("[$__rate_interval]"), f"{title}: {expr}"


def test_every_metric_is_documented_or_recorded(board: Json) -> None:
    documented = set(re.findall(r"^\| `(bems_\w+)`", METRICS_DOC.read_text(), re.MULTILINE))
    recorded = {
        rule["record"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for title, expr in queries(board):
        for name in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in recorded or name in documented or base in documented, f"{title}: {name} is undocumented"


def test_links_resolve(board: Json) -> None:
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), re.MULTILINE)}
    titles = {board["uid"]: board["title"] for board in dashboards().values()}
    runbook_links = 0
    for url in links(board):
        if url.startswith("docs/runbooks.md"):
            runbook_links += 1
            anchor = url.partition("#")[2]
            assert not anchor or anchor in anchors, f"no heading for {url} in docs/runbooks.md"
        elif url.startswith("/d/"):
            _, _, uid, page = urlsplit(url).path.split("/")
            assert page == slug(titles[uid]), url
    assert runbook_links, "no runbook link"
    linked = {link["url"].split("/")[2] for link in board["links"] if link["url"].startswith("/d/")}
    assert linked == UIDS - {board["uid"]}, "every dashboard links to the five others"


def test_scenario_dashboards_show_only_their_side(board: Json) -> None:
    sides = SCENARIO_SIDES.get(board["uid"])
    if sides is None:
        return
    requirement_sides = {
        side
        for _, expr in queries(board)
        if "bems_requirement_met" in expr
        for side in re.findall(r'exchange="(\w+)"', expr)
    }
    assert requirement_sides == sides
    assert all(side in sides for _, expr in queries(board) for side in re.findall(r'exchange="(\w+)"', expr))


def test_provisioning_points_at_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [source["type"] for source in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "bems.yml").read_text())["providers"]
    assert [(provider["type"], bool(provider["options"]["path"])) for provider in providers] == [("file", True)]


# ------------------------------------------------------------------------ the queries on a real Prometheus


def promql(expr: str, substitutions: dict[str, str] = SUBSTITUTIONS) -> str:
    """A panel query as Grafana sends it: multi-value variables select everything, intervals are set."""
    expr = re.sub(r'=~"\$\w+"', '=~".*"', expr)
    for variable, value in substitutions.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    label_values = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)  # a variable: the labels of its series
    return f"count by ({label_values[2]}) ({label_values[1]})" if label_values else expr


@pytest.fixture
async def prometheus(simulator: Simulator, tmp_path: Path) -> AsyncIterator[str]:
    """The simulator, probed every second by the exporter, scraped every second by Prometheus with the rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (run `make tools`): the dashboard test needs it")
    # As the demo: delivery checked too (push with write probes, which need Mail.ReadWrite for Graph).
    simulator.configure_entra(graph_roles=list(DEMO_GRAPH_ROLES))
    listener, exporter_socket = bound_socket(), bound_socket()  # the site's server closes the exporter's
    path = simulator.write_exporter_config(
        tmp_path / "bems.yml", interval="1s", timeout="1s", listener_port=port_of(listener)
    )
    exporter = Exporter(str(path))
    exporter.listener.take_socket(listener)
    exporter.load()
    await exporter.start()
    runner = web.AppRunner(create_app(exporter), access_log=None)
    await runner.setup()
    exporter_port = port_of(exporter_socket)
    await web.SockSite(runner, exporter_socket).start()

    rule_files = []
    for source in RULES:  # as shipped, evaluated every second
        data = yaml.safe_load(source.read_text())
        for group in data["groups"]:
            group["interval"] = "1s"
        rule_files.append(tmp_path / source.name)
        rule_files[-1].write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "bems-exchange-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))  # fmt: skip
    process, prometheus_port = start_retrying_taken_ports(lambda port: [
        binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ], tmp_path / "prometheus.log")  # fmt: skip
    try:
        yield f"http://127.0.0.1:{prometheus_port}"
    finally:
        stop_process(process, group=True)
        await runner.cleanup()
        await exporter.stop()
        listener.close()


async def run_queries(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, str, str], Json]:
    """(dashboard, panel, query) → Prometheus' answer, for every query of every dashboard."""
    answers = {}
    for name, board in dashboards().items():
        for title, expr in queries(board):
            async with http.get(f"{url}/api/v1/query", params={"query": promql(expr)}) as response:
                answers[name, title, expr] = await response.json()
    return answers


async def test_every_panel_query_runs_and_the_demo_shows_data(prometheus: str) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 45
        while True:
            try:
                async with http.get(f"{prometheus}/-/ready") as response:
                    ready = response.status == 200
            except aiohttp.ClientError:
                ready = False
            if ready:
                answers = await run_queries(http, prometheus)
                errors = {key: answer for key, answer in answers.items() if answer["status"] != "success"}
                assert not errors, errors
                empty = [
                    key
                    for key, answer in answers.items()
                    if not answer["data"]["result"] and any(name in key[2] for name in MUST_SHOW)
                    and not any(requirement in key[2] for requirement in NOT_IN_THE_DEMO)
                ]  # fmt: skip
                if not empty:
                    break
            assert time.monotonic() < deadline, f"no data after 45 s: {empty if ready else 'Prometheus not ready'}"
            await asyncio.sleep(1)
    assert len(answers) > 100


# ------------------------------------------------------------- the audit dashboard on the backfilled months


def month_substitutions(month: Month) -> dict[str, str]:
    """Grafana's variables for the range of one calendar month (the time picker's `now-1M/M`)."""
    seconds = month.end - month.start
    return {"$__rate_interval": "2m", "$__interval": "1m", "$__range_s": str(seconds), "$__range": f"{seconds}s"}


def audit_answers(url: str, month: Month) -> dict[tuple[str, str], list[Json]]:
    """(panel, query) → the instant result, at the month's last millisecond (Grafana's "to" of `now-1M/M`)."""
    board = dashboards()["bems-audit.json"]
    answers = {}
    for title, expr in queries(board):
        params = {"query": promql(expr, month_substitutions(month)), "time": month.end - 0.001}
        answer = requests.get(f"{url}/api/v1/query", params=params, timeout=120).json()
        assert answer["status"] == "success", (title, expr, answer)
        answers[title, expr] = answer["data"]["result"]
    return answers


def only_value(result: list[Json]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@pytest.mark.timeout(900)  # the session's backfill of two months, then one report
@pytest.mark.parametrize("month", [str(month) for month in MONTHS])
def test_the_audit_dashboard_shows_the_backfilled_months_as_the_report_does(
    audit_stores: dict[str, str], month: str, tmp_path: Path
) -> None:
    in_history = {metric for metric, _, _ in series()} | {rule["record"] for rule in audit_rules()}
    answers = audit_answers(audit_stores["prometheus"], Month.parse(month))
    on_the_history = {key: result for key, result in answers.items() if metric_names(key[1]) <= in_history}
    assert len(on_the_history) >= 8, sorted(on_the_history)  # the panels of the audit rules
    assert all(on_the_history.values()), [key for key, result in on_the_history.items() if not result]

    assert main(["report", "--prometheus", audit_stores["prometheus"], "--month", month, "--format", "json",
                 "--output", str(tmp_path), "--no-progress"]) == 0  # fmt: skip
    report = json.loads((tmp_path / f"bems-audit-{month}.json").read_text())
    rows = {row["kind"]: row for row in report["availability"]}
    shown = {title: only_value(result) for (title, _), result in on_the_history.items() if len(result) == 1}
    # The dashboard's range takes the minute sample at the month's start and not the one at its end (Grafana's
    # "to" is the month's last millisecond): one edge minute may differ from the report, which is exact.
    requirement = rows["requirement"]
    assert abs(shown["Unknown time"] - requirement["unknown_minutes"]) <= 1
    assert abs(shown["Planned downtime"] - requirement["planned_down_minutes"]) <= 1
    unplanned = requirement["down_minutes"] - requirement["planned_down_minutes"]
    assert abs(shown["Unplanned downtime"] - unplanned) <= 1
    edge = 1.5 / requirement["known_minutes"]
    for title, kind in (("Requirements met", "requirement"), ("Scenario ready", "scenario"),
                        ("Availability per check", "check")):  # fmt: skip
        assert shown[title] == pytest.approx(rows[kind]["availability"], abs=edge), title
