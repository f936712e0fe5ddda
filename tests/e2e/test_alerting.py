"""End to end: simulator → exporter → a real Prometheus with the shipped rules → a real Alertmanager.

The shipped rules and routing are loaded as they are, with two test-only changes: every ``for:`` is
shortened (the production values are minutes) and Alertmanager's grouping waits are cut, so that an
alert travels the whole path in seconds. Everything listens on 127.0.0.1; every process is stopped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from loopback import free_port

from bems_simulator.server import Simulator
from exporter.daemon.app import Exporter
from exporter.web.http_app import create_app

pytestmark = pytest.mark.timeout(300)  # real Prometheus and Alertmanager: evaluation and notification rounds

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"{' or '.join(names)} is not installed (run `make tools`): the end-to-end test needs it")


def fast_rules(target_dir: Path) -> list[Path]:
    """The shipped rule files with every ``for:`` shortened to 2s."""
    files = []
    for source in sorted(RULES.glob("*.yml")):
        data = yaml.safe_load(source.read_text())
        for group in data["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "2s"
        path = target_dir / source.name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        files.append(path)
    return files


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


class Processes:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


async def eventually(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        outcome = await check()
        if outcome:
            return outcome
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        await asyncio.sleep(0.5)


@pytest.fixture
async def stack(simulator: Simulator, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    prometheus, alertmanager = tool("prometheus"), tool("prometheus-alertmanager", "alertmanager")
    config = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")
    exporter = Exporter(str(config))
    exporter.load()
    await exporter.start()
    runner = web.AppRunner(create_app(exporter), access_log=None)
    await runner.setup()
    exporter_port, prometheus_port, am_port = free_port(), free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", exporter_port).start()

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
        processes.start([
            alertmanager, f"--config.file={fast_routing(tmp_path)}", f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        ], tmp_path / "alertmanager.log")  # fmt: skip
        processes.start([
            prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
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
