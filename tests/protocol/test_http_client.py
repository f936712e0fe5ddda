"""The HTTP clients' policy: which redirects are followed, and sessions that send only to their origin."""

from __future__ import annotations

import re

import pytest
from http_responses import response

from exporter.protocol.http_client import ForeignOriginError, redirect_target, requests_session
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
