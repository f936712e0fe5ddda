"""The status page as Chromium renders it: the failing check's reason in the DOM, and a screenshot."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from status_page_client import Cells, status_page_client  # noqa: F401 (the client fixture)

from bems_simulator.server import Simulator
from exporter.daemon.app import Exporter


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

    def shows_the_fault_alone() -> bool:
        tls = exporter.store.latest.get(("onprem-ews", "tls"))
        graph = exporter.store.latest.get(("online-graph", "graph"))
        return (
            exporter.ready() and tls is not None and tls.reason == "certificate" and graph is not None and graph.success
        )

    for _ in range(150):
        if shows_the_fault_alone():
            break
        await asyncio.sleep(0.1)
    # Then no more checks, so that the page Chromium loads seconds later is that state: on a loaded machine a
    # later round of either check can time out (the 1 s interval leaves it 0.75 s).
    exporter.scheduler.shutdown()
    url = str(http.make_url("/"))
    dom = await headless(url, tmp_path / "profile", "--dump-dom")
    cells = Cells()
    cells.feed(dom)
    assert cells.cells[("onprem-ews", "tls")]["data-reason"] == "certificate"  # as rendered by the browser
    assert cells.cells[("online-graph", "graph")]["data-state"] == "ok"
    screenshot = tmp_path / "status.png"
    await headless(url, tmp_path / "profile2", f"--screenshot={screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
