"""The failing mailboxes of population sweeps: the page (searchable, paged), JSON and CSV, each with reason,
since when and remedy; counts and trend on the status page; names of users only for those allowed /config."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.daemon.app import Exporter
from exporter.daemon.sweep import Failing
from exporter.web.http_app import Access, create_app

CONFIG = """
scenario: onprem-bems-hybrid
credentials:
  bemsadmin: {{username: 'CORP\\BEMSAdmin', password: not-used-here}}
targets:
  - {{name: ews, kind: ews, exchange: onprem, url: 'https://mail.corp.example.com/EWS/Exchange.asmx',
     credential: bemsadmin, auth: [ntlm], population: staff}}
populations:
  staff: {{file: {{path: {users}}}}}
"""
FAILING = 120  # more than a page
SINCE = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def exporter(tmp_path: Path) -> Exporter:
    """A loaded exporter whose sweep has found failing mailboxes (its checks never start)."""
    users = tmp_path / "users.txt"
    users.write_text("".join(f"user{n:03d}@corp.example.com\n" for n in range(FAILING + 10)))
    path = tmp_path / "bems.yml"
    path.write_text(CONFIG.format(users=users))
    loaded = Exporter(str(path))
    loaded.load()
    state = loaded.sweeps.sweeps[("ews", "staff")].state
    for n in range(FAILING):
        reason = "moved" if n % 10 == 0 else "impersonation_denied"
        state.failing[f"user{n:03d}@corp.example.com"] = Failing(reason, SINCE, f"denied {n}", f"remedy {n}")
    state.history = [(SINCE, FAILING + 10, 200), (SINCE + 86400, FAILING + 10, FAILING)]
    return loaded


async def _client(exporter: Exporter, peer: str | None = None, access: Access | None = None) -> TestClient:
    app = create_app(exporter, access=access)
    if peer is not None:

        @web.middleware
        async def from_peer(request: web.Request, handler):  # type: ignore[no-untyped-def]
            return await handler(request.clone(remote=peer))

        app.middlewares.insert(0, from_peer)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(exporter: Exporter) -> AsyncIterator[TestClient]:
    started = await _client(exporter)
    yield started
    await started.close()


async def test_json_pages_and_searches(client: TestClient) -> None:
    first = await (await client.get("/populations/failing.json")).json()
    assert (first["total"], first["page"], first["per_page"], len(first["mailboxes"])) == (FAILING, 1, 50, 50)
    assert first["mailboxes"][0] == {
        "target": "ews", "population": "staff", "mailbox": "user000@corp.example.com", "reason": "moved",
        "since": "2026-01-01T00:00:00Z", "message": "denied 0", "remedy": "remedy 0",
    }  # fmt: skip
    last = await (await client.get("/populations/failing.json", params={"page": "3"})).json()
    assert [m["mailbox"] for m in last["mailboxes"]] == [f"user{n:03d}@corp.example.com" for n in range(100, 120)]
    moved = await (await client.get("/populations/failing.json", params={"q": "moved", "per_page": "500"})).json()
    assert moved["total"] == FAILING // 10
    one = await (await client.get("/populations/failing.json", params={"q": "USER042@"})).json()
    assert [m["mailbox"] for m in one["mailboxes"]] == ["user042@corp.example.com"]
    assert (await client.get("/populations/failing.json", params={"page": "x"})).status == 400


async def test_csv_holds_every_failing_mailbox(client: TestClient) -> None:
    response = await client.get("/populations/failing.csv")
    assert response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert len(rows) == FAILING
    assert rows[1] == {
        "target": "ews", "population": "staff", "mailbox": "user001@corp.example.com",
        "reason": "impersonation_denied", "since": "2026-01-01T00:00:00Z", "message": "denied 1", "remedy": "remedy 1",
    }  # fmt: skip


async def test_the_page_is_searchable_and_paged_and_the_status_page_shows_counts_and_trend(client: TestClient) -> None:
    page = await (await client.get("/populations", params={"q": "user04", "per_page": "5"})).text()
    assert "10 failing mailbox(es)" in page and "page 1 of 2" in page and "next →" in page
    assert page.count('<tr data-mailbox="') == 5
    assert "docs/runbooks.md#impersonation-denied" in page
    status = await (await client.get("/")).text()
    assert 'id="populations"' in status and "200</span> → <span" in status
    assert "user000@corp.example.com" not in status  # counts only: the addresses are behind the gate


@pytest.mark.parametrize("path", ["/populations", "/populations/failing.json", "/populations/failing.csv"])
async def test_the_lists_answer_others_only_when_allowed(exporter: Exporter, path: str) -> None:
    refused = await _client(exporter, peer="192.0.2.10")
    allowed = await _client(exporter, peer="192.0.2.10", access=Access(remote_probe=True))
    try:
        assert (await refused.get(path)).status == 403
        assert (await refused.get("/")).status == 200
        assert (await allowed.get(path)).status == 200
    finally:
        await refused.close()
        await allowed.close()
