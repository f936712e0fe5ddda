"""The HTTP clients' policy: which redirects are followed, and sessions that send only to their origin."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import certifi
import pytest
import requests
from check_runner import configured_target
from http_responses import response

from bems_simulator.server import Simulator
from exporter.config import load_config
from exporter.protocol import tcp_tls
from exporter.protocol.http_client import ForeignOriginError, _TrustAdapter, redirect_target, requests_session
from exporter.results import ProbeFailure, Reason

HOME = "https://mail.corp.example.com/EWS/Exchange.asmx"


@pytest.mark.parametrize(
    ("location", "followed"),
    [
        ("/EWS/Exchange.asmx?x=1", "https://mail.corp.example.com/EWS/Exchange.asmx?x=1"),
        ("https://mail.corp.example.com:443/owa/", "https://mail.corp.example.com:443/owa/"),
        ("https://MAIL.corp.example.com/EWS/", "https://MAIL.corp.example.com/EWS/"),
    ],
)
def test_same_origin_redirects_are_followed(location: str, followed: str) -> None:
    assert redirect_target(response(302, Location=location), HOME) == followed


@pytest.mark.parametrize(
    "location",
    [
        "http://mail.corp.example.com/EWS/Exchange.asmx",  # plain HTTP on the same host
        "https://evil.example.net/EWS/Exchange.asmx",  # another host
        "https://mail.corp.example.com:8443/EWS/Exchange.asmx",  # another port
        "//evil.example.net/x",  # scheme-relative
        # Same origin to urlsplit, evil.example.net to urllib3 (requests, NTLM): refused, not judged (issue 15).
        "https://evil.example.net\\@mail.corp.example.com/EWS/Exchange.asmx",
        "https://bems@mail.corp.example.com/EWS/Exchange.asmx",  # userinfo
        "https://mail%2ecorp.example.com/EWS/Exchange.asmx",  # a percent-escaped host
    ],
)
def test_other_redirects_are_blocked(location: str) -> None:
    with pytest.raises(ProbeFailure) as caught:
        redirect_target(response(302, Location=location), HOME)
    assert caught.value.reason == Reason.REDIRECT_BLOCKED


def test_not_a_redirect() -> None:
    assert redirect_target(response(200), HOME) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://login.evil.example/tenant/oauth2/v2.0/token",  # another host
        "https://login.example.com:8443/tenant/oauth2/v2.0/token",  # another port
        "http://login.example.com/tenant/oauth2/v2.0/token",  # plain HTTP
    ],
)
def test_requests_sessions_send_only_to_their_origin(url: str) -> None:
    session = requests_session("https://login.example.com/tenant", None, None)
    with pytest.raises(ForeignOriginError, match=re.escape("only https://login.example.com:443 is configured")):
        session.post(url, data={"client_secret": "s3cret"})  # refused before any connection is made


def test_requests_sessions_share_one_context_per_ca_file_content(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(Path(certifi.where()).read_bytes())
    first, second = (requests_session(f"https://mail{n}.corp.example.com/", str(ca_file), None) for n in (1, 2))
    assert session_context(first) is session_context(second)
    assert session_context(requests_session(HOME, None, None)) is not session_context(first)
    end = b"-----END CERTIFICATE-----\n"
    ca_file.write_bytes(end.join(Path(certifi.where()).read_bytes().split(end)[:10]) + end)  # rotated
    tcp_tls._ca_file_stamps.clear()  # rather than wait out CA_FILE_RECHECK_SECONDS
    assert session_context(requests_session(HOME, str(ca_file), None)) is not session_context(first)


async def test_a_request_leaves_the_shared_context_as_every_session_needs_it(simulator: Simulator) -> None:
    """What makes sharing safe: urllib3 loads no CA file or client certificate into the context it is given."""
    url = configured_target(
        load_config(simulator.write_exporter_config(simulator.state_dir / "bems.yml")), "onprem-ews"
    ).url
    session = requests_session(url, str(simulator.ca_file), None)
    context = session_context(session)
    trusted = context.cert_store_stats()
    response = await asyncio.to_thread(session.post, url, data=b"<x/>", timeout=10)
    assert response.status_code == 401  # it got there, over TLS, verified with the context
    assert (context.verify_mode, context.check_hostname, context.cert_store_stats()) == (
        ssl.CERT_REQUIRED,
        True,
        trusted,
    )
    session.close()


def session_context(session: requests.Session) -> ssl.SSLContext:
    adapter = session.get_adapter("https://")
    assert isinstance(adapter, _TrustAdapter)
    return adapter._context
