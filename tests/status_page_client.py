"""What the status page tests share: an exporter serving its web app on the simulator, and a reader of the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bems_simulator.server import Simulator
from exporter.daemon.app import Exporter
from exporter.web.http_app import create_app


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


@pytest.fixture(name="client")  # imported by the tests that use it, as status_page_client
async def status_page_client(simulator: Simulator, tmp_path: Path) -> AsyncIterator[tuple[TestClient, Exporter]]:
    exporter = Exporter(str(simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")))
    exporter.load()
    await exporter.start()
    try:
        async with TestClient(TestServer(create_app(exporter), host="127.0.0.1")) as client:
            yield client, exporter
    finally:
        await exporter.stop()
