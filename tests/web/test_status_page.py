"""The status page shows what /metrics says: the verdict, every check's state and reason, and where to read on."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp.test_utils import TestClient
from samples import parse, value
from status_page_client import Cells, status_page_client  # noqa: F401 (the client fixture)

from bems_simulator.server import Simulator
from exporter.daemon.app import Exporter
from exporter.web.status_page import REASON_RUNBOOK, VERDICT_RUNBOOK

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"


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
    labels = {"target": "onprem-ews", "exchange": "onprem", "check": "tls", "reason": "certificate"}
    # Until a page shows the fault, for its own reason, with everything else green: on a loaded machine any
    # round's check can time out (the 1 s interval leaves it 0.75 s), the faulted tls check's as well as the
    # graph check's, and the page is read again at the next round.
    for _ in range(150):
        cells, page, samples = await page_and_metrics(http)
        cell = cells.cells.get(("onprem-ews", "tls"), {})
        others_ok = (
            cells.requirements.get("online/graph_access") == "ok"
            and cells.cells.get(("onprem-autodiscover", "tls"), {}).get("data-state") == "ok"
        )
        faulted = cell.get("data-state") == "fail" and cell.get("data-reason") == "certificate"
        # /metrics is read just after the page: a round may end between the two, so both must say it.
        in_metrics = value(samples, "bems_probe_failure_reason", **labels) == 1
        if faulted and in_metrics and others_ok and exporter.ready():
            break
        await asyncio.sleep(0.1)
    assert cell["data-reason"] == "certificate"
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


async def test_the_graph_cutover_shows_each_ews_mailbox_and_the_days_left(
    client: tuple[TestClient, Exporter], simulator: Simulator
) -> None:
    http, exporter = client
    carol = "carol@contoso.test"  # the mailbox online-ews checks, which online-graph lists too
    path_ready = {"scenario": "onprem-bems-hybrid", "mailbox": carol}
    simulator.set_graph_mailbox_not_enabled(carol)
    # Until the page and the /metrics read after it both show the fault for its own reason: on a loaded machine
    # a round can time out instead, or end between the two reads.
    for _ in range(60):
        cells, page, samples = await page_and_metrics(http)
        row = re.search(rf'<tr data-mailbox="{re.escape(carol)}" data-state="(\w+)">(.*?)</tr>', page)
        faulted = row is not None and row[1] == "fail" and "mailbox_not_found" in row[2]
        if faulted and value(samples, "bems_graph_path_ready", **path_ready) == 0 and exporter.ready():
            break
        await asyncio.sleep(0.1)
    assert row is not None and row[1] == "fail" and "mailbox_not_found" in row[2]
    assert value(samples, "bems_graph_path_ready", **path_ready) == 0
    assert cells.requirements["online/graph_path_ready"] == "fail"
    # Microsoft's milestones, as the dated table bems_ews_retirement_timestamp_seconds exports them.
    assert re.search(r'data-milestone="disablement" data-days="-?\d+">disablement (in \d+ days|\d+ days ago)', page)
    assert re.search(r'data-milestone="shutdown" data-days="-?\d+">shutdown ', page)

    simulator.set_graph_mailbox_not_enabled(carol, False)
    for _ in range(60):
        _, page, samples = await page_and_metrics(http)
        if f'data-mailbox="{carol}" data-state="ok"' in page and value(samples, "bems_graph_path_ready", **path_ready):
            break
        await asyncio.sleep(0.1)
    assert f'data-mailbox="{carol}" data-state="ok"' in page
    assert value(samples, "bems_graph_path_ready", **path_ready) == 1
