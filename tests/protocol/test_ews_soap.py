"""EWS answers read by namespace, what is not EWS, and the requests the checks send."""

from __future__ import annotations

import pytest
from http_responses import response

from exporter.protocol import ews_soap as ews
from exporter.protocol import safe_xml as xmlsafe
from exporter.results import ProbeFailure, Reason

GET_FOLDER_OK = b"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>
<h:ServerVersionInfo MajorVersion="15" MinorVersion="2" MajorBuildNumber="2562" MinorBuildNumber="29"
 Version="V2017_07_11" xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types"/></s:Header>
<s:Body><m:GetFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
 xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>
<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
<m:Folders><t:Folder><t:FolderId Id="AQMk" ChangeKey="AQAA"/></t:Folder></m:Folders>
</m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse></s:Body></s:Envelope>"""

FAULT = b"""<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">
<s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorImpersonateUserDenied</faultcode>
<faultstring xml:lang="en-US">The account does not have permission to impersonate the requested user.</faultstring>
<detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorImpersonateUserDenied</e:ResponseCode>
<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The account does not have permission to impersonate the requested user.</e:Message>
</detail></s:Fault></s:Body></s:Envelope>"""  # noqa: E501 (a wire sample, kept as sent)

ACCESS_DENIED = GET_FOLDER_OK.replace(b'ResponseClass="Success"', b'ResponseClass="Error"').replace(
    b"<m:ResponseCode>NoError",
    b"<m:MessageText>Access is denied. Check credentials and try again.</m:MessageText>"
    b"<m:ResponseCode>ErrorAccessDenied",
)


def test_ews_answers_are_read_by_namespace() -> None:
    assert ews.read(response(200, GET_FOLDER_OK)) == ews.Answer("NoError", "", False)
    fault = ews.read(response(500, FAULT))
    assert (fault.code, fault.fault) == ("ErrorImpersonateUserDenied", True)
    assert "permission to impersonate" in fault.message
    denied = ews.read(response(200, ACCESS_DENIED))
    assert (denied.code, denied.fault, denied.ok) == ("ErrorAccessDenied", False, False)


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Service Unavailable</body></html>",
        b"<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'><s:Body/></s:Envelope>",
        b"<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'><s:Body>",  # truncated
        b"\xff\xfe not xml",
        b"",
    ],
)
def test_what_is_not_ews_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(ProbeFailure) as caught:
        ews.read(response(200, body))
    assert caught.value.reason == Reason.BAD_RESPONSE


def test_get_folder_impersonation_header() -> None:
    assert b"<t:PrimarySmtpAddress>alice@corp.example.com</t:PrimarySmtpAddress>" in ews.get_folder(
        "inbox", "alice@corp.example.com"
    )
    assert b"ExchangeImpersonation" not in ews.get_folder("inbox")
    xmlsafe.parse(ews.get_folder("inbox", "a@b"))  # well-formed
