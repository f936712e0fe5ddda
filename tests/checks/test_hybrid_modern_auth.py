"""On-premises EWS with hybrid modern authentication: an Entra token for the on-premises URL, sent as Bearer.

The simulator's Entra ID issues tokens for the on-prem URLs once they are registered (as service principal
names of Exchange Online, the HMA set-up step), and its on-prem EWS accepts tokens for its own URL only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import requests
import yaml
from check_runner import run

from bems_simulator.server import Simulator
from exporter import report
from exporter.config import Config, load_config
from exporter.results import CheckResult, Reason

pytestmark = pytest.mark.timeout(60)


def hybrid_config(simulator: Simulator, tmp_path: Path) -> Config:
    """The simulator's config with the on-prem EWS target signing in as the Entra app (no Windows account)."""
    path = simulator.write_exporter_config(tmp_path / "hybrid.yml", timeout="10s")
    data = yaml.safe_load(path.read_text())
    for target in data["targets"]:
        if target["name"] == "onprem-ews":
            target["credential"] = "entra-app"
            del target["auth"]
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def check(config: Config, name: str, target: str = "onprem-ews") -> CheckResult:
    return await run(config, config.targets_by_name()[target], name)


async def test_an_entra_token_for_the_onprem_url_signs_in(simulator: Simulator, tmp_path: Path) -> None:
    simulator.enable_hybrid_modern_auth()
    config = hybrid_config(simulator, tmp_path)
    result = await check(config, "auth")
    assert result.success, report.render(config.targets_by_name()["onprem-ews"], [result])
    assert {m.label("method"): m.value for m in result.measurements if m.metric == "bems_auth_success"} == {
        "oauth": 1.0
    }
    resource = simulator.endpoints["onprem-ews"].url  # the origin of the target's url
    assert (simulator.credentials.client_id, f"{resource}/.default") in simulator.entra.token_requests
    token_check = await check(config, "token")  # the token check asks for the same scope, beside the others
    assert token_check.success, token_check.message
    assert any(resource in step.name for step in token_check.steps)


async def test_onprem_without_oauth_on_the_virtual_directory_is_not_offered(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.enable_hybrid_modern_auth()
    simulator.virtual_directory("onprem-ews").oauth = False  # HMA set up in Entra, not on the server
    result = await check(hybrid_config(simulator, tmp_path), "auth")
    assert result.reason == Reason.METHOD_NOT_OFFERED


async def test_an_onprem_url_entra_does_not_know_gets_no_token(simulator: Simulator, tmp_path: Path) -> None:
    simulator.enable_hybrid_modern_auth()
    simulator.entra.hybrid_resources.clear()  # the on-prem URL was never added as an SPN of Exchange Online
    result = await check(hybrid_config(simulator, tmp_path), "auth")
    assert result.reason == Reason.TOKEN
    assert "AADSTS500011" in result.message


async def test_onprem_ews_refuses_a_token_for_another_audience(simulator: Simulator) -> None:
    """An Exchange Online token is not one for the on-prem server: 401, Exchange's wrong-audience diagnostic."""
    simulator.enable_hybrid_modern_auth()
    entra, credentials = simulator.endpoints["entra"].url, simulator.credentials

    def exchange_online_token_to_onprem() -> requests.Response:
        token = requests.post(
            f"{entra}/{credentials.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": credentials.client_id,
                "client_secret": credentials.client_secret,
                "scope": "https://outlook.office365.com/.default",
            },
            verify=str(simulator.ca_file),
            timeout=10,
        ).json()["access_token"]
        return requests.post(
            simulator.endpoints["onprem-ews"].url + "/EWS/Exchange.asmx",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/xml"},
            data=b"<soap/>",
            verify=str(simulator.ca_file),
            timeout=10,
        )

    answer = await asyncio.to_thread(exchange_online_token_to_onprem)
    assert answer.status_code == 401
    assert answer.headers["x-ms-diagnostics"].startswith("2000003;")
    assert "Negotiate" in answer.headers.get("WWW-Authenticate", "")  # IIS's own schemes beside Bearer
