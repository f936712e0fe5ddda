"""Autodiscover: POX (``autodiscover.xml``), SOAP (``autodiscover.svc``) and v2 JSON (``autodiscover.json``).

Facts file section 4. POX and SOAP are authenticated like the side's EWS; v2 JSON is anonymous. POX
and SOAP answer every outcome, an unknown mailbox included, with HTTP 200 and say what went wrong in
the body. Exchange Online answers v2 JSON for an unknown user with a 302 back to itself (4.3); what
Exchange Server does then is unknown, so on-prem every address is answered [UNVERIFIED].

Per mailbox, a redirect can be set: ``redirect_addr`` (POX ``redirectAddr``, SOAP ``RedirectAddress``),
``redirect_url`` (POX ``redirectUrl``, SOAP ``RedirectUrl``) or ``http_302`` (an HTTP 302 on all
three forms, to any URL, ``http://`` included). They apply whether or not the mailbox exists here,
as Exchange redirects addresses it hosts nowhere (a hybrid's cloud mailboxes). A redirect to the
endpoint's own URL makes a loop. The EWS URL reported can be overridden, to disagree with the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from .challenges import with_iis_headers
from .directory import MailboxDirectory, validated_address
from .ews import ServerVersion
from .identity import Authenticator
from .soap import SOAP_NS

POX_PATH = "/autodiscover/autodiscover.xml"
SOAP_PATH = "/autodiscover/autodiscover.svc"
JSON_PATH = "/autodiscover/autodiscover.json"

_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
_ADDRESSING_NS = "http://www.w3.org/2005/08/addressing"
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_GET_USER_SETTINGS_ACTION = (
    "http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettingsResponse"
)
# POX error codes: 500 for an address it cannot find (a capture); 600 for a request it cannot read and
# 601 for a response schema it does not provide are Exchange's documented codes [UNVERIFIED wording].
_UNKNOWN_MAILBOX = (500, "The email address can't be found.")
_INVALID_REQUEST = (600, "Invalid Request")
_SCHEMA_NOT_PROVIDED = (601, "Provider is not available.")
# The schema versions the SOAP service names for itself (the 4.2 fixture's Version element).
_AUTODISCOVER_SCHEMA_VERSION = "Exchange2015"
# Identifiers a settings response carries; fixed, as one organisation's would be.
_DEPLOYMENT_ID = "50817eff-b925-4578-a0db-13bfc635e7a5"
_OAB_ID = "c21c7bc2-53b3-4ddc-ad89-1219b486c37c"
_EWS_SUPPORTED_SCHEMAS = (
    "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, Exchange2013, Exchange2013_SP1"
)


class RedirectKind(StrEnum):
    NONE = "none"
    REDIRECT_ADDR = "redirect_addr"
    REDIRECT_URL = "redirect_url"
    HTTP_302 = "http_302"


@dataclass(frozen=True)
class Redirect:
    kind: RedirectKind
    target: str

    @classmethod
    def parse(cls, kind: Any, target: Any) -> Redirect | None:
        """The redirect ``kind`` and ``target`` describe, None for ``none``; ValueError for a bad pair."""
        try:
            kind = RedirectKind(kind)
        except ValueError:
            raise ValueError(f"unknown redirect kind {kind!r}; valid: {', '.join(RedirectKind)}") from None
        if kind is RedirectKind.NONE:
            if target is not None:
                raise ValueError("a target applies to a redirect kind, not to none")
            return None
        if kind is RedirectKind.REDIRECT_ADDR:
            return cls(kind, validated_address(target))
        return cls(kind, validated_url(target))


def validated_url(url: Any) -> str:
    """``url`` if it is an absolute http(s) URL; ValueError otherwise."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an absolute http:// or https:// URL, not {url!r}")
    return url


class AutodiscoverService:
    """One Autodiscover endpoint's behaviour; it outlives the listeners that a fault change restarts.

    ``own_url`` is the endpoint's base URL; ``ews_url`` the EWS URL it reports unless overridden;
    ``redirects_unknown_json_users`` is Exchange Online's v2 JSON 302 for an unknown user;
    ``microsoft_online`` says, in POX's MicrosoftOnline, whether this is Exchange Online.
    """

    def __init__(
        self,
        own_url: str,
        directory: MailboxDirectory,
        ews_url: str,
        server_version: ServerVersion,
        redirects_unknown_json_users: bool,
        microsoft_online: bool = False,
    ) -> None:
        self._own_url = own_url
        self._directory = directory
        self._default_ews_url = ews_url
        self._ews_url_override: str | None = None
        self._server_version = server_version
        self._redirects_unknown_json_users = redirects_unknown_json_users
        self._microsoft_online = "True" if microsoft_online else "False"
        self._redirects: dict[str, tuple[str, Redirect]] = {}  # casefolded address → (address, redirect)

    @property
    def ews_url(self) -> str:
        return self._ews_url_override or self._default_ews_url

    def set_ews_url(self, url: str | None) -> None:
        """Report ``url`` as the EWS URL from now on; None goes back to the real one."""
        self._ews_url_override = None if url is None else validated_url(url)

    def set_redirect(self, mailbox: str, kind: RedirectKind | str, target: str | None = None) -> None:
        redirect = Redirect.parse(kind, target)
        key = validated_address(mailbox).casefold()
        if redirect is None:
            self._redirects.pop(key, None)
        else:
            self._redirects[key] = (mailbox, redirect)

    def state(self) -> dict[str, Any]:
        return {
            "ews_url": self.ews_url,
            "redirects": {
                address: {"kind": str(redirect.kind), "target": redirect.target}
                for address, redirect in self._redirects.values()
            },
        }

    def add_routes(self, app: web.Application, authenticator: Authenticator) -> None:
        async def pox(request: web.Request) -> web.StreamResponse:
            caller = await authenticator.authenticate(request)
            return caller if isinstance(caller, web.Response) else await self._pox(request)

        async def soap(request: web.Request) -> web.StreamResponse:
            caller = await authenticator.authenticate(request)
            return caller if isinstance(caller, web.Response) else await self._soap(request)

        app.router.add_post(POX_PATH, pox)
        app.router.add_post(SOAP_PATH, soap)
        app.router.add_get(JSON_PATH, self._json)
        app.router.add_get(JSON_PATH + "/v1.0/{mailbox}", self._json)

    def _redirect_of(self, address: str, *kinds: RedirectKind) -> Redirect | None:
        _, redirect = self._redirects.get(address.casefold(), ("", None))
        return redirect if redirect is not None and redirect.kind in kinds else None

    # --- POX (facts file 4.1) ---------------------------------------------------------------------------

    async def _pox(self, request: web.Request) -> web.Response:
        try:
            autodiscover = ElementTree.fromstring(await request.read())
        except ElementTree.ParseError:
            return _pox_error(*_INVALID_REQUEST)
        address = (autodiscover.findtext(f"{{{_REQUEST_NS}}}Request/{{{_REQUEST_NS}}}EMailAddress") or "").strip()
        schema = autodiscover.findtext(f"{{{_REQUEST_NS}}}Request/{{{_REQUEST_NS}}}AcceptableResponseSchema")
        if autodiscover.tag != f"{{{_REQUEST_NS}}}Autodiscover" or not address:
            return _pox_error(*_INVALID_REQUEST)
        # Compared untrimmed: Exchange does not strip whitespace from this element (facts file 4.1).
        if schema != OUTLOOK_RESPONSE_SCHEMA:
            return _pox_error(*_SCHEMA_NOT_PROVIDED)
        redirect = self._redirect_of(address, *RedirectKind)
        if redirect is not None:
            match redirect.kind:
                case RedirectKind.HTTP_302:
                    return _moved(redirect.target)
                case RedirectKind.REDIRECT_ADDR:
                    return _pox_redirect("redirectAddr", "RedirectAddr", redirect.target)
                case RedirectKind.REDIRECT_URL:
                    return _pox_redirect("redirectUrl", "RedirectUrl", redirect.target)
        if address not in self._directory:
            return _pox_error(*_UNKNOWN_MAILBOX)
        return _pox_response(self._pox_settings(address))

    def _pox_settings(self, address: str) -> str:
        """The settings response in full, as Microsoft's sample has it ("Get user settings from Exchange by
        using Autodiscover", office-developer-exchange-docs): the EXCH (internal) and EXPR (external)
        blocks, then the WEB block whose Internal and External entries hold OWAUrl and a Protocol with
        only Type and ASUrl ("Internal (POX)", "External (POX)"). This side publishes one EWS URL, both
        internally and externally, so EXCH and EXPR carry the same EwsUrl.
        """
        ews = urlsplit(self.ews_url)
        base = escape(f"{ews.scheme}://{ews.netloc}")
        server, ews_url, local = escape(ews.hostname or ""), escape(self.ews_url), escape(address.partition("@")[0])
        organisation = "/o=First Organization/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)"
        urls = (
            f"<ASUrl>{ews_url}</ASUrl><EwsUrl>{ews_url}</EwsUrl><EmwsUrl>{ews_url}</EmwsUrl>"
            f"<EcpUrl>{base}/ecp/</EcpUrl><OOFUrl>{ews_url}</OOFUrl><OABUrl>{base}/OAB/{_OAB_ID}/</OABUrl>"
        )
        version = self._server_version
        return (
            f'<Response xmlns="{OUTLOOK_RESPONSE_SCHEMA}">'
            f"<User><DisplayName>{escape(_display_name(address))}</DisplayName>"
            f"<LegacyDN>{organisation}/cn=Recipients/cn={local}</LegacyDN>"
            f"<AutoDiscoverSMTPAddress>{escape(address)}</AutoDiscoverSMTPAddress>"
            f"<DeploymentId>{_DEPLOYMENT_ID}</DeploymentId></User>"
            "<Account><AccountType>email</AccountType><Action>settings</Action>"
            f"<MicrosoftOnline>{self._microsoft_online}</MicrosoftOnline>"
            f"<Protocol><Type>EXCH</Type><Server>{server}</Server>"
            f"<ServerDN>{organisation}/cn=Configuration/cn=Servers/cn={server}</ServerDN>"
            f"<ServerVersion>{_pox_server_version(version)}</ServerVersion>"
            f"<AD>dc.{server}</AD>{urls}<ServerExclusiveConnect>off</ServerExclusiveConnect></Protocol>"
            f"<Protocol><Type>EXPR</Type><Server>{server}</Server><SSL>On</SSL><AuthPackage>Ntlm</AuthPackage>"
            f"{urls}<ServerExclusiveConnect>on</ServerExclusiveConnect>"
            "<CertPrincipalName>None</CertPrincipalName></Protocol>"
            "<Protocol><Type>WEB</Type>"
            f'<Internal><OWAUrl AuthenticationMethod="Basic, Fba">{base}/owa/</OWAUrl>'
            f"<Protocol><Type>EXCH</Type><ASUrl>{ews_url}</ASUrl></Protocol></Internal>"
            f'<External><OWAUrl AuthenticationMethod="Fba">{base}/owa/</OWAUrl>'
            f"<Protocol><Type>EXPR</Type><ASUrl>{ews_url}</ASUrl></Protocol></External></Protocol>"
            "</Account></Response>"
        )

    # --- SOAP GetUserSettings (facts file 4.2) ----------------------------------------------------------

    async def _soap(self, request: web.Request) -> web.Response:
        try:
            envelope = ElementTree.fromstring(await request.read())
        except ElementTree.ParseError:
            envelope = None
        users_request = None
        if envelope is not None and envelope.tag == f"{{{SOAP_NS}}}Envelope":
            users_request = envelope.find(
                f"{{{SOAP_NS}}}Body/{{{AUTODISCOVER_NS}}}GetUserSettingsRequestMessage/{{{AUTODISCOVER_NS}}}Request"
            )
        mailboxes = _texts(users_request, "Users", "User", "Mailbox") if users_request is not None else []
        if users_request is None or not mailboxes or not all(mailboxes):
            # [UNVERIFIED] how Exchange words a request it cannot read; InvalidRequest is in its enum.
            return self._soap_response("InvalidRequest", "The request is invalid.", "")
        # A 302 answers the whole request: the first mailbox that has one decides.
        for mailbox in mailboxes:
            redirect = self._redirect_of(mailbox, RedirectKind.HTTP_302)
            if redirect is not None:
                return _moved(redirect.target)
        settings = _texts(users_request, "RequestedSettings", "Setting")
        user_responses = "".join(self._user_response(mailbox, settings) for mailbox in mailboxes)
        return self._soap_response("NoError", "", user_responses)

    def _user_response(self, mailbox: str, requested: list[str]) -> str:
        redirect = self._redirect_of(mailbox, RedirectKind.REDIRECT_ADDR, RedirectKind.REDIRECT_URL)
        if redirect is not None:
            if redirect.kind is RedirectKind.REDIRECT_ADDR:
                return _user_response("RedirectAddress", "Redirection address.", redirect.target)
            return _user_response("RedirectUrl", "Redirection URL.", redirect.target)
        if mailbox not in self._directory:
            return _user_response("InvalidUser", f"Invalid user '{mailbox}'.")
        version = self._server_version
        available = {
            "AutoDiscoverSMTPAddress": mailbox,
            "UserDisplayName": _display_name(mailbox),
            "ExternalEwsUrl": self.ews_url,
            "InternalEwsUrl": self.ews_url,
            "CasVersion": f"{version.major}.{version.minor:02d}.{version.major_build:04d}.{version.minor_build:03d}",
            "EwsSupportedSchemas": _EWS_SUPPORTED_SCHEMAS,
        }
        settings = "".join(
            f'<UserSetting i:type="StringSetting"><Name>{escape(name)}</Name><Value>{escape(available[name])}</Value>'
            "</UserSetting>"
            for name in requested
            if name in available
        )
        # [UNVERIFIED] the wording of a per-setting error; the code is from Exchange's ErrorCode enum.
        errors = "".join(
            f"<UserSettingError><ErrorCode>InvalidSetting</ErrorCode><ErrorMessage>Invalid setting '{escape(name)}'."
            f"</ErrorMessage><SettingName>{escape(name)}</SettingName></UserSettingError>"
            for name in requested
            if name not in available
        )
        return _user_response("NoError", "No error.", settings=settings, setting_errors=errors)

    def _soap_response(self, error_code: str, error_message: str, user_responses: str) -> web.Response:
        version = self._server_version
        server_version = (
            f'<h:ServerVersionInfo xmlns:h="{AUTODISCOVER_NS}" xmlns:i="{_XSI_NS}">'
            f"<h:MajorVersion>{version.major}</h:MajorVersion><h:MinorVersion>{version.minor}</h:MinorVersion>"
            f"<h:MajorBuildNumber>{version.major_build}</h:MajorBuildNumber>"
            f"<h:MinorBuildNumber>{version.minor_build}</h:MinorBuildNumber>"
            f"<h:Version>{_AUTODISCOVER_SCHEMA_VERSION}</h:Version></h:ServerVersionInfo>"
        )
        text = (
            f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}" xmlns:a="{_ADDRESSING_NS}">'
            f'<s:Header><a:Action s:mustUnderstand="1">{_GET_USER_SETTINGS_ACTION}</a:Action>{server_version}'
            f'</s:Header><s:Body><GetUserSettingsResponseMessage xmlns="{AUTODISCOVER_NS}">'
            f'<Response xmlns:i="{_XSI_NS}"><ErrorCode>{error_code}</ErrorCode>'
            f"<ErrorMessage>{escape(error_message)}</ErrorMessage><UserResponses>{user_responses}</UserResponses>"
            "</Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"
        )
        return with_iis_headers(web.Response(text=text, content_type="text/xml", charset="utf-8"))

    # --- v2 JSON (facts file 4.3) ------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> web.Response:
        mailbox = request.match_info.get("mailbox") or request.query.get("Email", "")
        requested = request.query.get("Protocol", "")
        # Keys are lower-case because clients vary the casing of Protocol (EWS, Ews, ews).
        urls_by_protocol = {
            "ews": ("EWS", self.ews_url),
            "autodiscoverv1": ("AutodiscoverV1", self._own_url + POX_PATH),
        }
        if requested.lower() not in urls_by_protocol:
            supported = ",".join(name for name, _ in urls_by_protocol.values())
            return web.json_response(
                {
                    "ErrorCode": "InvalidProtocol",
                    "ErrorMessage": (
                        f"The given protocol value '{requested}' is invalid. Supported values are '{supported}'"
                    ),
                },
                status=400,
            )
        redirect = self._redirect_of(mailbox, RedirectKind.HTTP_302)
        if redirect is not None:
            return _moved(redirect.target)
        if self._redirects_unknown_json_users and mailbox not in self._directory:
            redirect_count = _redirect_count(request.query.get("RedirectCount")) + 1
            return _moved(
                f"{self._own_url}{JSON_PATH}?Email={quote(mailbox, safe='')}&Protocol={quote(requested, safe='')}"
                f"&RedirectCount={redirect_count}"
            )
        protocol, url = urls_by_protocol[requested.lower()]
        return web.json_response({"Protocol": protocol, "Url": url})


def _texts(parent: ElementTree.Element, *path: str) -> list[str]:
    """The stripped texts of the elements at ``path`` (Autodiscover namespace names) under ``parent``."""
    return [
        (element.text or "").strip()
        for element in parent.iterfind("/".join(f"{{{AUTODISCOVER_NS}}}{name}" for name in path))
    ]


def _pox_server_version(version: ServerVersion) -> str:
    """POX's ServerVersion: hex of 0111, 6 bits major, 6 bits minor, 1, 15 bits build (73C08204 is 15.0.516)."""
    return f"{(0b0111 << 28) | (version.major << 22) | (version.minor << 16) | (1 << 15) | version.major_build:08X}"


def _display_name(address: str) -> str:
    return address.partition("@")[0].title()


def _redirect_count(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def _moved(location: str) -> web.Response:
    """An HTTP 302 with IIS's "Object moved" page, as EXO sends it (facts file 4.3)."""
    body = (
        "<html><head><title>Object moved</title></head>"
        f"<body><h2>Object moved to <a href={quoteattr(location)}>here</a>.</h2></body></html>"
    )
    return with_iis_headers(
        web.Response(status=302, text=body, content_type="text/html", charset="utf-8", headers={"Location": location})
    )


def _user_response(
    error_code: str,
    error_message: str,
    redirect_target: str | None = None,
    settings: str = "",
    setting_errors: str = "",
) -> str:
    target = (
        f"<RedirectTarget>{escape(redirect_target)}</RedirectTarget>"
        if redirect_target
        else '<RedirectTarget i:nil="true"/>'
    )
    return (
        f"<UserResponse><ErrorCode>{error_code}</ErrorCode><ErrorMessage>{escape(error_message)}</ErrorMessage>"
        f"{target}<UserSettingErrors>{setting_errors}</UserSettingErrors><UserSettings>{settings}</UserSettings>"
        "</UserResponse>"
    )


def _pox_redirect(action: str, element: str, target: str) -> web.Response:
    return _pox_response(
        f'<Response xmlns="{OUTLOOK_RESPONSE_SCHEMA}"><Account><Action>{action}</Action>'
        f"<{element}>{escape(target)}</{element}></Account></Response>"
    )


def _pox_error(code: int, message: str) -> web.Response:
    # The error's <Response> has no namespace of its own, unlike a settings response.
    return _pox_response(
        f'<Response><Error Time="{_time_of_day()}" Id="2422600485"><ErrorCode>{code}</ErrorCode>'
        f"<Message>{escape(message)}</Message><DebugData /></Error></Response>"
    )


def _pox_response(response_xml: str) -> web.Response:
    text = f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{_RESPONSE_NS}">{response_xml}</Autodiscover>'
    return with_iis_headers(web.Response(text=text, content_type="text/xml", charset="utf-8"))


def _time_of_day() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f") + "0"
