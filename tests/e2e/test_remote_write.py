"""The shipped remote_write (deploy/prometheus/remote-write-victoriametrics.yml), end to end: a real Prometheus
scrapes an exporter's /metrics (a fixed page, served by aiohttp), evaluates the shipped audit rules and
remote-writes to a real VictoriaMetrics; the series of the keep-list arrive, the others do not, and the audit
report run against VictoriaMetrics sees the month so far. Everything on 127.0.0.1, stopped at the end; a
missing binary fails (real_prometheus.tool), never skips."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from audit_history import CHECK, WINDOW
from long_term_stores import AUDIT_GROUP, start_listening
from loopback import bound_socket, port_of
from real_prometheus import RULES, Processes, eventually, instant_query, tool

from exporter.cli import main

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
REMOTE_WRITE = ROOT / "deploy" / "prometheus" / "remote-write-victoriametrics.yml"
SCENARIO = "onprem-bems-hybrid"
MET = {"scenario": SCENARIO, "exchange": "onprem", "requirement": "ews_reachable"}
UNMET = {"scenario": SCENARIO, "exchange": "onprem", "requirement": "autodiscover_reachable"}


def exposition(name: str, labels: dict[str, str], value: float) -> str:
    return name + "{" + ",".join(f'{key}="{val}"' for key, val in labels.items()) + "}" + f" {value:g}\n"


# What an exporter serves with one requirement met, one unmet for `refused`, and one series the audit does not
# need (bems_probe_duration_seconds: the keep-list must drop it).
METRICS = "".join([
    exposition("bems_requirement_met", MET, 1),
    exposition("bems_requirement_met", UNMET, 0),
    exposition("bems_requirement_failure_reason", {**UNMET, "reason": "refused"}, 1),
    exposition("bems_scenario_ready", {"scenario": SCENARIO}, 0),
    exposition("bems_scenario_info", {"scenario": SCENARIO}, 1),
    exposition("bems_probe_success", CHECK, 1),
    exposition("bems_probe_duration_seconds", CHECK, 0.02),
    exposition("bems_maintenance_window_active", {"window": WINDOW}, 0),
    exposition("bems_exporter_build_info", {"version": "1.2.3", "revision": "abc", "pythonversion": "3.11.2"}, 1),
])  # fmt: skip
KEPT = ("scenario_exchange_requirement:bems_requirement_met:min1m", "scenario:bems_scenario_ready:min1m",
        "target_check:bems_probe_success:min1m", "instance:bems_maintenance_window_active:max1m",
        "bems_requirement_failure_reason", "bems_maintenance_window_active", "bems_exporter_build_info",
        "bems_scenario_info")  # fmt: skip
DROPPED = ("bems_probe_duration_seconds", "bems_requirement_met", "bems_probe_success")


@pytest.fixture
async def exporter_page() -> AsyncIterator[str]:
    """host:port of a /metrics page with METRICS."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=METRICS, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = bound_socket()
    await web.SockSite(runner, sock).start()
    try:
        yield f"127.0.0.1:{port_of(sock)}"
    finally:
        await runner.cleanup()


def prometheus_config(tmp_path: Path, exporter: str, victoria_metrics: str) -> Path:
    """prometheus.yml scraping `exporter` every second with the audit rules (every second too), and the
    shipped remote_write pointed at `victoria_metrics`, its keep-list as shipped."""
    groups = yaml.safe_load((RULES / "common.yml").read_text())["groups"]
    audit = [{**group, "interval": "1s"} for group in groups if group["name"] == AUDIT_GROUP]
    rules = tmp_path / "audit.yml"
    rules.write_text(yaml.safe_dump({"groups": audit}, sort_keys=False))
    remote_write = yaml.safe_load(REMOTE_WRITE.read_text())["remote_write"]
    assert len(remote_write) == 1 and remote_write[0]["url"].endswith("/api/v1/write")
    remote_write[0]["url"] = f"{victoria_metrics}/api/v1/write"
    remote_write[0]["queue_config"] = {"batch_send_deadline": "1s"}  # seconds, not the default 5 s
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "bems-exchange-exporter", "static_configs": [{"targets": [exporter]}]}],
        "remote_write": remote_write,
    }))  # fmt: skip
    return config


async def test_remote_write_sends_what_the_audit_needs_and_the_report_reads_it(
    exporter_page: str, tmp_path: Path
) -> None:
    processes = Processes()
    try:
        victoria = tool("victoria-metrics")
        # Samples are searchable a second after they arrive (the default hides the last 30 s).
        victoria_metrics = start_listening(
            processes,
            lambda port: [victoria, f"-storageDataPath={tmp_path / 'vm-data'}", f"-httpListenAddr=127.0.0.1:{port}",
                          "-search.latencyOffset=1s", "-search.disableCache"],
            tmp_path / "victoria-metrics.log", "/health",
        )  # fmt: skip
        config = prometheus_config(tmp_path, exporter_page, victoria_metrics)
        prometheus = tool("prometheus")
        start_listening(
            processes,
            lambda port: [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}"],
            tmp_path / "prometheus.log", "/-/ready",
        )  # fmt: skip
        async with aiohttp.ClientSession() as http:

            async def everything_kept_arrived() -> bool:
                found = [await instant_query(http, victoria_metrics, name) for name in KEPT]
                return all(found)

            await eventually(everything_kept_arrived, f"{KEPT} in VictoriaMetrics", timeout=90)
            for name in DROPPED:
                assert await instant_query(http, victoria_metrics, f"count_over_time({name}[1h])") == [], name
        month = datetime.now(UTC).strftime("%Y-%m")
        report = await asyncio.to_thread(main, [
            "report", "--prometheus", victoria_metrics, "--month", month, "--format", "json",
            "--output", str(tmp_path / "report"), "--no-progress",
        ])  # fmt: skip
        assert report == 0
        answer: dict[str, Any] = json.loads((tmp_path / "report" / f"bems-audit-{month}.json").read_text())
    finally:
        processes.stop()
    availability = {(row["kind"], row["name"]): row for row in answer["availability"]}
    assert {key: row["availability"] for key, row in availability.items()} == {
        ("scenario", f"scenario {SCENARIO}"): 0.0,
        ("requirement", "onprem/autodiscover_reachable"): 0.0,
        ("requirement", "onprem/ews_reachable"): 1.0,
        ("check", "ews/reachability"): 1.0,
    }
    assert all(row["known_minutes"] >= 1 for row in availability.values())
    reasons = {(incident["kind"], incident["name"]): incident["reasons"] for incident in answer["incidents"]}
    assert reasons == {
        ("scenario", f"scenario {SCENARIO}"): "onprem/autodiscover_reachable",
        ("requirement", "onprem/autodiscover_reachable"): "refused",
    }
    assert [(version["version"], version["revision"]) for version in answer["versions"]] == [("1.2.3", "abc")]
