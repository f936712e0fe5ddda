"""Render one Grafana panel of the demo as a PNG for the README, from a real Prometheus.

Grafana itself cannot run on this project's machines (no package in the registries they reach), so this
draws the panel's own PromQL results with matplotlib in Grafana's dark style and says so in the caption.
It runs the simulator, the exporter and Prometheus on loopback for about a minute and makes onprem-ews
slow halfway. Needs `make tools` and `.venv/bin/pip install '.[docs]'`; run `.venv/bin/python scripts/panel_png.py`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import yaml
from aiohttp import web

from bems_simulator.server import Simulator
from exporter.daemon.app import Exporter
from exporter.web.http_app import create_app

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the servers' sockets as the tests get them
from loopback import bound_socket, port_of, start_retrying_taken_ports  # noqa: E402

DASHBOARD, PANEL = ROOT / "grafana" / "dashboards" / "bems-target.json", "Check duration"
OUTPUT = ROOT / "docs" / "images" / "panel-check-duration.png"
RUN_SECONDS, FAULT_AT = 70, 35


def panel_query() -> str:
    def walk(panels: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        return [p for panel in panels for p in (panel, *walk(panel.get("panels", [])))]

    panel = next(p for p in walk(json.loads(DASHBOARD.read_text())["panels"]) if p.get("title") == PANEL)
    return re.sub(r'=~"\$\w+"', '=~".*"', panel["targets"][0]["expr"])


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch)
        async with Simulator(state / "sim") as simulator:
            exporter = Exporter(str(simulator.write_exporter_config(state / "bems.yml", interval="2s", timeout="2s")))
            exporter.load()
            await exporter.start()
            runner = web.AppRunner(create_app(exporter), access_log=None)
            await runner.setup()
            exporter_socket = bound_socket()  # the site's server closes it
            exporter_port = port_of(exporter_socket)
            await web.SockSite(runner, exporter_socket).start()
            (state / "prometheus.yml").write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "bems-exchange-exporter",
                                    "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
            }))  # fmt: skip
            prometheus, prometheus_port = start_retrying_taken_ports(lambda port: [
                "prometheus", f"--config.file={state / 'prometheus.yml'}", f"--storage.tsdb.path={state / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ], state / "prometheus.log")  # fmt: skip
            try:
                start = time.time()
                await asyncio.sleep(FAULT_AT)
                await simulator.set_fault("onprem-ews", "slow", delay_seconds=0.4)
                await asyncio.sleep(RUN_SECONDS - FAULT_AT)
                params = {"query": panel_query(), "start": start + 5, "end": time.time(), "step": 1}
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{prometheus_port}/api/v1/query_range", params=params) as response,
                ):
                    series = (await response.json())["data"]["result"]
            finally:
                prometheus.terminate()
                prometheus.wait(timeout=10)
                await runner.cleanup()
                await exporter.stop()
    draw(series)


def draw(series: list[dict]) -> None:  # type: ignore[type-arg]
    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 9})
    figure, axes = plt.subplots(figsize=(9, 3.4), dpi=120)
    figure.patch.set_facecolor("#181b1f")
    axes.set_facecolor("#181b1f")
    for item in sorted(series, key=lambda s: (s["metric"]["target"], s["metric"]["check"])):
        times = [mdates.date2num(datetime.fromtimestamp(float(t))) for t, _ in item["values"]]
        values = [float(v) * 1000 for _, v in item["values"]]
        axes.plot(times, values, linewidth=1.3, label=f"{item['metric']['target']} {item['metric']['check']}")
    axes.set_title(f"{PANEL} (ms) — bems-target dashboard query, drawn from Prometheus", color="#d8d9da", loc="left")
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    for spine in axes.spines.values():
        spine.set_color("#2c3235")
    axes.tick_params(colors="#9fa7b3")
    axes.grid(color="#2c3235", linewidth=0.6)
    axes.legend(loc="upper left", fontsize=7, ncols=3, frameon=False, labelcolor="#d8d9da")
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, facecolor=figure.get_facecolor())


if __name__ == "__main__":
    asyncio.run(main())
