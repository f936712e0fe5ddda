"""Which sign-in methods a 401 challenge offers, read from real Exchange challenges."""

from __future__ import annotations

import pytest
from http_responses import response

from exporter.checks.signin import offered_methods


@pytest.mark.parametrize(
    ("headers", "offered"),
    [
        (["Negotiate", "NTLM"], {"negotiate", "ntlm"}),  # IIS: one header per scheme
        (["Negotiate, NTLM"], {"negotiate", "ntlm"}),  # combined forms seen in captures
        (["Negotiate,NTLM"], {"negotiate", "ntlm"}),
        (["Negotiate", "NTLM", 'Basic realm="mail.corp.example.com"'], {"negotiate", "ntlm", "basic"}),
        # Exchange Online's challenge: parameters with commas inside quotes, then empty Basic realms.
        (
            [
                'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", trusted_issuers="00000001-0000-0000-c000-'
                '000000000000@*", token_types="app_asserted_user_v1 service_asserted_app_v1", authorization_uri="https://'
                'login.windows.net/common/oauth2/authorize", error="invalid_token",Basic Realm="",Basic Realm=""'
            ],
            {"bearer", "basic"},
        ),
        # Hybrid modern auth on-premises: everything in one value.
        (
            [
                'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", trusted_issuers="00000004-0000-0ff1-ce00-'
                '000000000000@contoso.com", token_types="app_asserted_user_v1 service_asserted_app_v1", '
                'error="invalid_token",Negotiate,NTLM,Basic realm="autodiscover.contoso.com"'
            ],
            {"bearer", "negotiate", "ntlm", "basic"},
        ),
    ],
)
def test_offered_methods_from_real_challenges(headers: list[str], offered: set[str]) -> None:
    assert offered_methods(response(401, WWW_Authenticate=headers)) == offered


def test_only_a_401_offers_methods() -> None:
    assert offered_methods(response(200, WWW_Authenticate="Basic realm=x")) == set()
