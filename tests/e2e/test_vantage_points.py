"""End to end: two exporter processes with the same configuration, a real Prometheus scraping them with
different vantage labels (docs/vantage-points.md), and deploy/prometheus/rules/vantage.yml evaluated on
what they report.

The path is broken from one of them only, the way a DMZ host's is: the configuration says
`proxy_url: from_environment` for both, the inside exporter's environment names no proxy (it connects
directly), the outside exporter's names a proxy on a loopback port where nothing listens. Then the
simulated Exchange refuses connections to EWS, so that it fails from both. Every ``for:`` is shortened to
2s; everything listens on 127.0.0.1 and every process is stopped.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from loopback import bound_socket, port_of
from real_prometheus import Processes, eventually, fast_rules, instant_query, tool
from test_cli import CLI

from bems_simulator.server import Simulator

pytestmark = pytest.mark.timeout(300)  # two exporters and a real Prometheus: several evaluation rounds

NO_PROXY = {"HTTPS_PROXY": "", "https_proxy": ""}  # whatever the machine running the tests has set
INSIDE = {"vantage": "bems-host", "vantage_kind": "internal"}
OUTSIDE = {"vantage": "dmz", "vantage_kind": "internet"}


@pytest.fixture
async def vantage_points(simulator: Simulator, cli: CLI, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    config = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")
    document = yaml.safe_load(config.read_text())
    document["defaults"]["proxy_url"] = "from_environment"
    config.write_text(yaml.safe_dump(document, sort_keys=False))

    refusing = socket.socket()  # bound, not listening: the kernel refuses every connection to the proxy
    refusing.bind(("127.0.0.1", 0))
    blackholed_proxy = f"http://127.0.0.1:{port_of(refusing)}"
    ports = []
    for environment in (NO_PROXY, {"HTTPS_PROXY": blackholed_proxy, "https_proxy": blackholed_proxy}):
        with bound_socket() as web:
            cli.start(f"--config.file={config}", environment=environment, sockets={"web": web})
            ports.append(port_of(web))
    inside_port, outside_port = ports

    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in fast_rules(tmp_path)],
        "scrape_configs": [{"job_name": "bems-exchange-exporter", "static_configs": [
            {"targets": [f"127.0.0.1:{inside_port}"], "labels": INSIDE},
            {"targets": [f"127.0.0.1:{outside_port}"], "labels": OUTSIDE},
        ]}],
    }))  # fmt: skip
    processes = Processes()
    try:
        prometheus_port = processes.start_retrying_taken_ports(lambda port: [
            tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
        ], tmp_path / "prometheus.log")  # fmt: skip
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            yield {"http": http, "prometheus": f"http://127.0.0.1:{prometheus_port}", "sim": simulator}
    finally:
        processes.stop()
        refusing.close()


async def query(stack: dict[str, Any], expr: str) -> list[dict[str, Any]]:
    return await instant_query(stack["http"], stack["prometheus"], expr)


def firing(alertname: str, **labels: str) -> str:
    matchers = "".join(f', {key}="{value}"' for key, value in labels.items())
    return f'ALERTS{{alertname="{alertname}", alertstate="firing"{matchers}}}'


def values(samples: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in samples]


async def test_a_path_broken_from_one_vantage_point_warns_and_a_failure_from_both_pages(
    vantage_points: dict[str, Any],
) -> None:
    stack = vantage_points
    reach = {"target": "onprem-ews", "check": "reachability"}

    # The outside exporter cannot reach its proxy; the inside one reaches Exchange directly.
    async def path_warning() -> list[dict[str, Any]]:
        return await query(stack, firing("BEMSExchangeCheckFailingFromVantagePoint", vantage="dmz", **reach))

    [alert] = await eventually(path_warning, "the path warning of the outside vantage point", timeout=90)
    assert alert["metric"]["severity"] == "warning" and alert["metric"]["vantage_kind"] == "internet"
    reason = await query(stack, 'bems_probe_failure_reason{vantage="dmz", target="onprem-ews", check="reachability"}')
    assert [sample["metric"]["reason"] for sample in reason] == ["proxy"]
    inside = await query(stack, 'bems_probe_success{vantage="bems-host", target="onprem-ews", check="reachability"}')
    assert values(inside) == [1]

    counts = 'target_check:bems_probe_{}vantage_points:count{{target="onprem-ews", check="reachability"}}'
    assert values(await query(stack, counts.format(""))) == [2]
    assert values(await query(stack, counts.format("failing_"))) == [1]
    # Of this target's check: the outside vantage point fails every check, so a check that the inside one
    # missed once on a loaded machine (a 1 s timeout) would rightly be "everywhere" for a while.
    assert await query(stack, firing("BEMSExchangeCheckFailingEverywhere", **reach)) == []
    assert await query(stack, firing("BEMSExchangeCheckFailingFromVantagePoint", vantage="bems-host", **reach)) == []

    # The scenario verdict: ews_reachable unmet from the outside only, judged across the two, and left out
    # of the per-exporter BEMSExchangeScenarioNotReady.
    async def requirement_warning() -> list[dict[str, Any]]:
        return await query(
            stack, firing("BEMSExchangeRequirementUnmetFromVantagePoint", vantage="dmz", requirement="ews_reachable")
        )

    await eventually(requirement_warning, "the requirement's path warning", timeout=60)
    assert await query(stack, firing("BEMSExchangeRequirementUnmetEverywhere", requirement="ews_reachable")) == []
    assert await query(stack, firing("BEMSExchangeScenarioNotReady", requirement="ews_reachable")) == []

    # Now Exchange itself refuses: it fails from every vantage point, which pages.
    await stack["sim"].set_fault("onprem-ews", "refuse")

    async def page() -> list[dict[str, Any]]:
        return await query(stack, firing("BEMSExchangeCheckFailingEverywhere", **reach))

    [alert] = await eventually(page, "the critical alert of a check failing everywhere", timeout=90)
    assert alert["metric"]["severity"] == "critical"
    assert {"instance", "vantage", "vantage_kind"}.isdisjoint(alert["metric"]), "one alert for all vantage points"
    assert alert["metric"]["scenario"] == "onprem-bems-hybrid"

    async def requirement_page() -> list[dict[str, Any]]:
        return await query(stack, firing("BEMSExchangeRequirementUnmetEverywhere", requirement="ews_reachable"))

    await eventually(requirement_page, "the critical alert of ews_reachable unmet everywhere", timeout=60)
