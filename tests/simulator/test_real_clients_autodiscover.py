"""exchangelib, a real SOAP Autodiscover client, against the simulator: where they disagree, the simulator is wrong.

exchangelib is synchronous, so it runs in a worker thread while the simulator serves on the test's loop.
It trusts the simulator's CA through its adapter hook (``BaseProtocol.HTTP_ADAPTER_CLS``) and is
pointed at the simulator's Autodiscover endpoint by its own cache, which maps (domain, credentials)
to an endpoint (exchangelib/autodiscover/discovery.py: ``Autodiscovery.discover``); its DNS steps
would look for corp.example.test on the Internet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests.adapters
from check_runner import run
from exchangelib import NTLM, Configuration, Credentials
from exchangelib.autodiscover import AutodiscoverProtocol, Autodiscovery, autodiscover_cache, cache
from exchangelib.errors import AutoDiscoverCircularRedirect, ErrorNonExistentMailbox
from exchangelib.protocol import BaseProtocol

from bems_simulator.autodiscover import SOAP_PATH
from bems_simulator.server import Simulator
from exporter.config import load_config

DOMAIN = "corp.example.test"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


@pytest.fixture
def exchangelib_trusts(simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """exchangelib verifies against the simulator's CA and keeps its Autodiscover cache in the test's directory."""
    ca_file = str(simulator.ca_file)

    class SimulatorCA(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs["verify"] = ca_file
            return super().send(request, **kwargs)

    monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", SimulatorCA)
    monkeypatch.setattr(cache, "AUTODISCOVER_PERSISTENT_STORAGE", tmp_path / "exchangelib-autodiscover")
    yield
    with autodiscover_cache:
        autodiscover_cache.clear()
        autodiscover_cache.close()


def credentials(simulator: Simulator) -> Credentials:
    return Credentials(simulator.credentials.onprem_username, simulator.credentials.onprem_password)


def endpoint(simulator: Simulator, creds: Credentials) -> AutodiscoverProtocol:
    url = simulator.endpoints["onprem-autodiscover"].url + SOAP_PATH
    return AutodiscoverProtocol(config=Configuration(service_endpoint=url, credentials=creds))


def discover(simulator: Simulator, email: str) -> tuple[Any, Any]:
    """exchangelib's whole Autodiscover (redirects, errors, the EWS protocol it builds), from the simulator's URL."""
    creds = credentials(simulator)
    autodiscover_cache[(DOMAIN, creds)] = endpoint(simulator, creds)
    return Autodiscovery(email=email, credentials=creds).discover()


async def test_exchangelib_finds_the_ews_url_the_simulator_serves(
    simulator: Simulator, exchangelib_trusts: None
) -> None:
    ews_url = simulator.endpoints["onprem-ews"].url + "/EWS/Exchange.asmx"
    response, protocol = await asyncio.to_thread(discover, simulator, ALICE)
    assert response.ews_url == ews_url
    assert protocol.service_endpoint == ews_url
    assert response.autodiscover_smtp_address == ALICE
    assert response.version is not None  # EwsSupportedSchemas names versions exchangelib knows


async def test_exchangelib_negotiates_ntlm_and_reads_every_setting(
    simulator: Simulator, exchangelib_trusts: None
) -> None:
    """exchangelib asks for every setting it knows; what the simulator does not serve must be a harmless error."""

    def ask() -> tuple[Any, Any]:
        protocol = endpoint(simulator, credentials(simulator))
        return protocol.auth_type, protocol.get_user_settings(user=ALICE)

    auth_type, response = await asyncio.to_thread(ask)
    assert auth_type == NTLM  # from the simulator's 401 challenge, as on an on-prem virtual directory
    response.raise_errors()  # no error exchangelib would report
    assert response.user_settings["internal_ews_url"] == response.ews_url


async def test_an_unknown_mailbox_is_one_for_both(
    simulator: Simulator, exchangelib_trusts: None, tmp_path: Path
) -> None:
    with pytest.raises(ErrorNonExistentMailbox, match=r"Invalid user 'nobody@corp\.example\.test'"):
        await asyncio.to_thread(discover, simulator, f"nobody@{DOMAIN}")
    config = load_config(simulator.write_exporter_config(tmp_path / "bems.yml"))
    target = config.targets_by_name()["onprem-autodiscover"].model_copy(update={"mailboxes": (f"nobody@{DOMAIN}",)})
    assert (await run(config, target, "autodiscover")).reason == "mailbox_not_found"


async def test_a_redirect_address_is_followed_by_both(
    simulator: Simulator, exchangelib_trusts: None, tmp_path: Path
) -> None:
    simulator.set_autodiscover_redirect("onprem-autodiscover", ALICE, "redirect_addr", BOB)
    response, _ = await asyncio.to_thread(discover, simulator, ALICE)
    assert response.autodiscover_smtp_address == BOB  # exchangelib started over with the new address
    config = load_config(simulator.write_exporter_config(tmp_path / "bems.yml"))
    result = await run(config, config.targets_by_name()["onprem-autodiscover"], "autodiscover")
    assert result.success, result
    urls = {dict(m.labels)["url"] for m in result.measurements if m.metric == "bems_autodiscover_ews_url_info"}
    assert urls == {response.ews_url}


async def test_a_redirect_address_cycle_stops_both(
    simulator: Simulator, exchangelib_trusts: None, tmp_path: Path
) -> None:
    simulator.set_autodiscover_redirect("onprem-autodiscover", ALICE, "redirect_addr", BOB)
    simulator.set_autodiscover_redirect("onprem-autodiscover", BOB, "redirect_addr", ALICE)
    with pytest.raises(AutoDiscoverCircularRedirect):
        await asyncio.to_thread(discover, simulator, ALICE)
    config = load_config(simulator.write_exporter_config(tmp_path / "bems.yml"))
    result = await run(config, config.targets_by_name()["onprem-autodiscover"], "autodiscover")
    assert result.reason == "redirect_blocked" and "loop" in result.message, result
