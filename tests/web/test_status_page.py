"""The status page shows what /metrics says: the verdict, every check's state and reason, and where to read on."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from samples import parse, value

from bems_simulator.server import Simulator
from exporter.daemon.app import Exporter
from exporter.web.http_app import create_app
from exporter.web.status_page import REASON_RUNBOOK, VERDICT_RUNBOOK

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"


class Cells(HTMLParser):
    """The data-* attributes of the checks table's cells and of the requirement items."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], dict[str, str]] = {}
        self.requirements: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-check" in data:
            self.cells[(data["data-target"], data["data-check"])] = data
        if tag == "li" and "data-requirement" in data:
            self.requirements[data["data-requirement"]] = data.get("class", "")


@pytest.fixture
async def client(simulator: Simulator, tmp_path: Path) -> AsyncIterator[tuple[TestClient, Exporter]]:
    exporter = Exporter(str(simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")))
    exporter.load()
    await exporter.start()
    try:
        async with TestClient(TestServer(create_app(exporter), host="127.0.0.1")) as client:
            yield client, exporter
    finally:
        await exporter.stop()


async def page_and_metrics(client: TestClient) -> tuple[Cells, str, dict]:  # type: ignore[type-arg]
    page = await (await client.get("/")).text()
    cells = Cells()
    cells.feed(page)
    return cells, page, parse(await (await client.get("/metrics")).text())


async def test_a_fault_turns_its_cell_red_with_the_reason_metrics_give(
    client: tuple[TestClient, Exporter], simulator: Simulator
) -> None:
    http, exporter = client
    await simulator.set_fault("onprem-ews", "expired")
    for _ in range(60):
        cells, page, samples = await page_and_metrics(http)
        cell = cells.cells.get(("onprem-ews", "tls"), {})
        if cell.get("data-state") == "fail" and exporter.ready():
            break
        await asyncio.sleep(0.1)
    assert cell["data-reason"] == "certificate"
    labels = {"target": "onprem-ews", "exchange": "onprem", "check": "tls", "reason": "certificate"}
    assert value(samples, "bems_probe_failure_reason", **labels) == 1  # the page and /metrics agree
    assert "renew the certificate" in cell["title"]
    assert cells.cells[("onprem-autodiscover", "tls")]["data-state"] == "ok"
    assert 'id="verdict">✗ NOT READY' in page
    assert cells.requirements["onprem/ews_reachable"] == "fail"
    # The requirement's remedy is the failing tls check's, which follows its reason (certificate).
    requirement = re.search(r'<li class="fail" data-requirement="onprem/ews_reachable">.*?</li>', page)
    assert requirement is not None and "renew the certificate" in requirement[0]
    assert cells.requirements["online/graph_access"] == "ok"
    assert "docs/runbooks.md#certificate-invalid" in page
    assert '<meta name="viewport"' in page and 'http-equiv="refresh"' in page
    assert not re.search(r'(src|href)="https?://', page)  # no external assets: works offline


def test_every_runbook_anchor_exists() -> None:
    headings = re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    assert {*REASON_RUNBOOK.values(), VERDICT_RUNBOOK} <= anchors


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:  # `make test` installs it: a missing tool is a failure, never a skip
        pytest.fail("chromium is not installed (run `make tools`)")
    return found


async def headless(url: str, profile: Path, *extra: str) -> str:
    """Chromium as the probe of this workplace starts it: headless, sandbox-less as root, no background calls."""
    args = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1100,1500", *extra, url,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                start_new_session=True)  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return out.decode()


@pytest.mark.timeout(300)  # starts Chromium
async def test_in_a_real_browser(client: tuple[TestClient, Exporter], simulator: Simulator, tmp_path: Path) -> None:
    http, exporter = client
    await simulator.set_fault("onprem-ews", "expired")

    async def failing() -> bool:
        result = exporter.store.latest.get(("onprem-ews", "tls"))
        return exporter.ready() and result is not None and not result.success

    for _ in range(100):
        if await failing():
            break
        await asyncio.sleep(0.1)
    url = str(http.make_url("/"))
    dom = await headless(url, tmp_path / "profile", "--dump-dom")
    cells = Cells()
    cells.feed(dom)
    assert cells.cells[("onprem-ews", "tls")]["data-reason"] == "certificate"  # as rendered by the browser
    assert cells.cells[("online-graph", "graph")]["data-state"] == "ok"
    screenshot = tmp_path / "status.png"
    await headless(url, tmp_path / "profile2", f"--screenshot={screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
