"""The POX Autodiscover request and the URL it is sent to."""

from __future__ import annotations

from exporter.protocol import autodiscover_wire as autodiscover


def test_pox_request_and_url() -> None:
    assert autodiscover.pox_url("https://autodiscover.corp.example.com/anything?q") == (
        "https://autodiscover.corp.example.com/autodiscover/autodiscover.xml"
    )
    assert b"<EMailAddress>a&amp;b@corp.example.com</EMailAddress>" in autodiscover.pox_request("a&b@corp.example.com")
