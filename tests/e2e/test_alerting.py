"""End to end: simulator → exporter → a real Prometheus with the shipped rules → a real Alertmanager.

The shipped rules and routing are loaded as they are, with test-only changes: every ``for:`` is
shortened (the production values are minutes), Alertmanager's grouping waits are cut and Prometheus resends
firing alerts every second (not every minute), so that an alert and its changed annotations travel the whole
path in seconds. Everything listens on 127.0.0.1; every process is stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from loopback import bound_socket, port_of
from real_prometheus import Processes, eventually, fast_rules, tool

from bems_simulator.server import DEMO_GRAPH_ROLES, Simulator
from exporter.daemon.app import Exporter
from exporter.web.http_app import create_app

pytestmark = pytest.mark.timeout(300)  # real Prometheus and Alertmanager: evaluation and notification rounds

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def fast_routing(target_dir: Path) -> Path:
    data = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", "1s"), ("group_interval", "1s"), ("repeat_interval", "1h")):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(data["route"])
    path = target_dir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
async def stack(simulator: Simulator, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    prometheus, alertmanager = tool("prometheus"), tool("prometheus-alertmanager", "alertmanager")
    # BEMS's Graph roles and ServiceHealth.Read.All, before the exporter's first token: the app as documented.
    simulator.configure_entra(graph_roles=list(DEMO_GRAPH_ROLES))
    config = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")
    exporter = Exporter(str(config))
    exporter.load()
    await exporter.start()
    runner = web.AppRunner(create_app(exporter), access_log=None)
    await runner.setup()
    exporter_socket, am_socket = bound_socket(), bound_socket()  # the site's server closes the exporter's
    exporter_port, am_port = port_of(exporter_socket), port_of(am_socket)
    await web.SockSite(runner, exporter_socket).start()

    rules = fast_rules(tmp_path)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rules],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "bems-exchange-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))  # fmt: skip
    processes = Processes()
    try:
        with am_socket:
            processes.start([
                alertmanager, f"--config.file={fast_routing(tmp_path)}", f"--storage.path={tmp_path / 'am'}",
                "--web.systemd-socket", "--cluster.listen-address=",
            ], tmp_path / "alertmanager.log", am_socket)  # fmt: skip
        processes.start_retrying_taken_ports(lambda port: [
            prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=1s",
        ], tmp_path / "prometheus.log")  # fmt: skip
        async with aiohttp.ClientSession() as http:
            yield {"http": http, "am": f"http://127.0.0.1:{am_port}", "sim": simulator, "logs": tmp_path}
    finally:
        processes.stop()
        await runner.cleanup()
        await exporter.stop()


async def active_alerts(stack: dict[str, Any], inhibited: bool = False, **labels: str) -> list[dict[str, Any]]:
    """Alerts at Alertmanager matching ``labels``: the active ones, or (``inhibited``) the inhibited ones."""
    params = [("active", str(not inhibited).lower()), ("inhibited", str(inhibited).lower()), ("silenced", "false")]
    params += [("filter", f'{key}="{value}"') for key, value in labels.items()]
    try:
        async with stack["http"].get(f"{stack['am']}/api/v2/alerts", params=params) as response:
            return await response.json() if response.status == 200 else []
    except aiohttp.ClientError:
        return []  # not up yet


async def test_a_revoked_role_reaches_alertmanager_and_resolves(stack: dict[str, Any]) -> None:
    sim: Simulator = stack["sim"]
    sim.revoke_impersonation("bob@corp.example.test")

    async def denied() -> list[dict[str, Any]]:
        return await active_alerts(stack, alertname="BEMSExchangeImpersonationDenied", target="onprem-ews")

    [alert] = await eventually(denied, "the impersonation alert at Alertmanager", timeout=60)
    labels = alert["labels"]
    assert labels["exchange"] == "onprem" and labels["severity"] in ("critical", "warning")
    assert labels.get("scenario") == "onprem-bems-hybrid"
    assert "ApplicationImpersonation" in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("#bemsexchangeimpersonationdenied")

    sim.grant_impersonation("bob@corp.example.test")

    async def resolved() -> bool:
        return not await denied()

    await eventually(resolved, "the impersonation alert resolved", timeout=60)


async def test_an_unreachable_endpoint_inhibits_its_other_alerts(stack: dict[str, Any]) -> None:
    sim: Simulator = stack["sim"]
    await sim.set_fault("onprem-ews", "refuse")

    async def unreachable() -> list[dict[str, Any]]:
        return await active_alerts(stack, alertname="BEMSExchangeEndpointUnreachable", target="onprem-ews")

    await eventually(unreachable, "the unreachable alert at Alertmanager", timeout=60)

    async def tls_inhibited() -> list[dict[str, Any]]:  # the same outage fails TLS too: that alert fires...
        return await active_alerts(stack, inhibited=True, alertname="BEMSExchangeTLSInvalid", target="onprem-ews")

    await eventually(tls_inhibited, "the TLS alert, inhibited", timeout=60)
    names = {alert["labels"]["alertname"] for alert in await active_alerts(stack, target="onprem-ews")}
    assert names == {"BEMSExchangeEndpointUnreachable"}  # ...but only the cause reaches a person


async def test_an_exchange_online_incident_inhibits_the_online_alerts_and_names_itself(stack: dict[str, Any]) -> None:
    sim: Simulator = stack["sim"]
    sim.post_service_issue("EX1001", "Exchange", "Incident", "Users can't access email")

    async def incident() -> list[dict[str, Any]]:
        return await active_alerts(stack, alertname="BEMSExchangeMicrosoftIncident")

    [alert] = await eventually(incident, "Microsoft's incident at Alertmanager", timeout=60)
    assert (alert["labels"]["id"], alert["labels"]["title"]) == ("EX1001", "Users can't access email")
    assert alert["labels"]["m365_service"] == "Exchange Online"

    sim.deny_app_access("carol@contoso.test")  # what an Exchange Online outage looks like from the exporter

    async def denied_inhibited() -> list[dict[str, Any]]:
        return await active_alerts(
            stack, inhibited=True, alertname="BEMSExchangeImpersonationDenied", target="online-ews"
        )

    [inhibited] = await eventually(denied_inhibited, "the online alert, inhibited by the incident", timeout=60)
    assert 'EX1001 "Users can\'t access email"' in inhibited["annotations"]["description"]
    # What reaches a person about Exchange Online is Microsoft's incident, not "fix your configuration".
    reaching = {a["labels"]["alertname"] for a in await active_alerts(stack, exchange="online")}
    assert "BEMSExchangeImpersonationDenied" not in reaching and "BEMSExchangeMicrosoftIncident" in reaching

    sim.remove_service_issue("EX1001")  # Microsoft resolves it; the denial stays: now it is yours

    async def denied_without_incident() -> list[dict[str, Any]]:
        alerts = await active_alerts(stack, alertname="BEMSExchangeImpersonationDenied", target="online-ews")
        return [a for a in alerts if "EX1001" not in a["annotations"]["description"]]

    await eventually(denied_without_incident, "the online alert, active and no longer naming the incident", timeout=60)
