"""Microsoft Graph ``/v1.0`` (facts file section 8), app-only, with tokens from the simulated Entra ID.

Served:

- ``GET /v1.0/users/{mailbox}/mailFolders/inbox``: the inbox (8.1); the app needs a ``Mail.*`` read
  role and application access to the mailbox (RBAC for Applications, the same switch as EWS's);
- ``GET /v1.0/applications(appId='{id}')`` and ``GET /v1.0/applications?$filter=appId eq '{id}'``:
  the app registration with its credentials' dates, for an app holding ``Application.Read.All``
  (or a permission that includes it). ``$select`` narrows the properties as Graph does.

Every request is recorded (``GraphService.requests``), authenticated or not. Errors have Graph's
``{"error": {"code", "message", "innerError"}}`` shape (8.2).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import jwt
from aiohttp import web

from .challenges import AUTHORIZATION_URI
from .directory import MailboxDirectory, UnknownMailboxError
from .entra import GRAPH_RESOURCE, AppCredential, CredentialKind, EntraId, iso_utc

GRAPH_PATH = "/v1.0"
_METADATA_URL = "https://graph.microsoft.com/v1.0/$metadata"
# Graph's own application id, as Graph names it in its Bearer challenge [UNVERIFIED: recollection].
_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
_ODATA_CONTENT_TYPE = (
    "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"
)
# Application permissions that let an app read mail folders, and ones that let it read app registrations.
_MAIL_READ_ROLES = {"Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite"}
_APPLICATION_READ_ROLES = {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All"}
_RAOP_DENIED = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."

_INBOX = re.compile(r"users/(?P<user>[^/]+)/mailFolders(?:/inbox|\('inbox'\))", re.IGNORECASE)
_APPLICATION_BY_APP_ID = re.compile(r"applications\(appId='(?P<app_id>[^']*)'\)", re.IGNORECASE)
_APPLICATIONS = re.compile(r"applications", re.IGNORECASE)
_APP_ID_FILTER = re.compile(r"\s*appId\s+eq\s+'(?P<app_id>[^']*)'\s*", re.IGNORECASE)


class GraphRequest(NamedTuple):
    method: str
    path: str  # with the query string
    app_id: str | None  # the token's app, None when the token was missing or rejected
    time: float  # time.monotonic() at arrival

    def state(self) -> dict[str, Any]:
        return self._asdict()


class GraphService:
    """Graph's behaviour; it outlives the listeners that a fault change restarts."""

    def __init__(self, entra: EntraId, directory: MailboxDirectory, requests: list[GraphRequest]) -> None:
        self.requests = requests
        self.throttled = False
        self.retry_after_seconds = 1
        self._entra = entra
        self._directory = directory
        self._mailboxes_not_enabled: set[str] = set()

    def set_throttled(self, throttled: bool, retry_after: int = 1) -> None:
        if not isinstance(throttled, bool):
            raise ValueError(f"throttled must be true or false, not {throttled!r}")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be a whole number of seconds, 0 or more, not {retry_after!r}")
        self.throttled, self.retry_after_seconds = throttled, retry_after

    def set_mailbox_enabled(self, mailbox: str, enabled: bool) -> None:
        """Whether Graph's REST API serves ``mailbox`` (off: inactive, soft-deleted or hosted on-prem)."""
        if mailbox not in self._directory:
            raise UnknownMailboxError(mailbox, list(self._directory))
        if enabled:
            self._mailboxes_not_enabled.discard(mailbox.casefold())
        else:
            self._mailboxes_not_enabled.add(mailbox.casefold())

    def state(self) -> dict[str, Any]:
        return {
            "throttled": self.throttled,
            "retry_after_seconds": self.retry_after_seconds,
            "mailboxes_not_enabled": sorted(self._mailboxes_not_enabled),
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", GRAPH_PATH + "/{resource:.*}", self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        claims = self._verified_claims(request)
        app_id = str(claims.get("appid", "")) if isinstance(claims, dict) else None
        self.requests.append(GraphRequest(request.method, request.path_qs, app_id, time.monotonic()))
        if isinstance(claims, web.Response):
            return claims
        if self.throttled:
            return _error(
                request,
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                headers={"Retry-After": str(self.retry_after_seconds)},
            )
        resource = request.match_info["resource"]
        if request.method != "GET":
            return _error(
                request, 405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
            )
        roles = set(claims.get("roles", []))
        if match := _INBOX.fullmatch(resource):
            return self._inbox(request, match["user"], roles)
        if match := _APPLICATION_BY_APP_ID.fullmatch(resource):
            return self._application(request, match["app_id"], roles)
        if _APPLICATIONS.fullmatch(resource):
            return self._applications(request, roles)
        segment = resource.split("/")[0]
        return _error(request, 400, "BadRequest", f"Resource not found for the segment '{segment}'.")

    def _verified_claims(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The token's claims, or the 401 Graph answers a missing, bad or permission-less token with."""
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized(request, "InvalidAuthenticationToken", "Access token is empty.")
        try:
            claims = self._entra.decode_access_token(token.strip(), GRAPH_RESOURCE)
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            return _unauthorized(request, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        except jwt.DecodeError:  # not a JWT at all, or one whose signature does not verify
            return _unauthorized(
                request, "InvalidAuthenticationToken", "CompactToken parsing failed with error code: 80049217"
            )
        except jwt.PyJWTError:
            # A wrong audience or issuer [UNVERIFIED wording; it is what Graph says for them in the wild].
            return _unauthorized(request, "InvalidAuthenticationToken", "Access token validation failure.")
        if not claims.get("roles"):
            return _unauthorized(
                request,
                "NoPermissionsInAccessToken",
                "The token contains no permissions, or permissions can not be understood.",
            )
        return claims

    def _inbox(self, request: web.Request, user: str, roles: set[str]) -> web.Response:
        if not roles & _MAIL_READ_ROLES:
            return _error(request, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if user not in self._directory:
            return _error(request, 404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        if user.casefold() in self._mailboxes_not_enabled:
            return _error(
                request,
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        if not self._directory.is_granted(user):
            return _error(request, 403, "ErrorAccessDenied", _RAOP_DENIED)
        return _odata(
            request,
            {
                "@odata.context": f"{_METADATA_URL}#users('{user}')/mailFolders/$entity",
                "id": _folder_id(user, "inbox"),
                "displayName": "Inbox",
                "parentFolderId": _folder_id(user, "msgfolderroot"),
                "childFolderCount": 0,
                "unreadItemCount": 2,
                "totalItemCount": 2,
                "sizeInBytes": 53857,
                "isHidden": False,
            },
        )

    def _application(self, request: web.Request, app_id: str, roles: set[str]) -> web.Response:
        denied = _application_read_denied(request, roles)
        if denied is not None:
            return denied
        if app_id.casefold() != self._entra.client_id.casefold():
            return _error(
                request,
                404,
                "Request_ResourceNotFound",
                f"Resource '{app_id}' does not exist or one of its queried reference-property objects are not present.",
            )
        application = _selected(self._application_object(), request.query.get("$select"))
        return _odata(request, {"@odata.context": f"{_METADATA_URL}#applications/$entity", **application})

    def _applications(self, request: web.Request, roles: set[str]) -> web.Response:
        denied = _application_read_denied(request, roles)
        if denied is not None:
            return denied
        applications = [self._application_object()]
        query_filter = request.query.get("$filter")
        if query_filter is not None:
            match = _APP_ID_FILTER.fullmatch(query_filter)
            if match is None:  # [UNVERIFIED wording] only the filter the exporter needs is understood
                return _error(request, 400, "Request_UnsupportedQuery", "Unsupported query.")
            applications = [app for app in applications if app["appId"].casefold() == match["app_id"].casefold()]
        select = request.query.get("$select")
        return _odata(
            request,
            {
                "@odata.context": f"{_METADATA_URL}#applications",
                "value": [_selected(application, select) for application in applications],
            },
        )

    def _application_object(self) -> dict[str, Any]:
        entra = self._entra
        secret = entra.app_credentials[CredentialKind.SECRET]
        certificate = entra.app_credentials[CredentialKind.CERTIFICATE]
        return {
            "id": entra.app_object_id,
            "appId": entra.client_id,
            "displayName": entra.app_display_name,
            "passwordCredentials": [
                {
                    "customKeyIdentifier": None,
                    "displayName": secret.display_name,
                    **_dates(secret),
                    "hint": entra.app_secret_hint,
                    "keyId": secret.key_id,
                    "secretText": None,  # Graph returns the secret only once, when it is created
                }
            ],
            "keyCredentials": [
                {
                    # [UNVERIFIED] the certificate's SHA-1 thumbprint in hex, as the portal sets it.
                    "customKeyIdentifier": entra.app_certificate_thumbprint,
                    "displayName": certificate.display_name,
                    **_dates(certificate),
                    "key": None,  # only with $select=keyCredentials on a single application
                    "keyId": certificate.key_id,
                    "type": "AsymmetricX509Cert",
                    "usage": "Verify",
                }
            ],
        }


def _dates(credential: AppCredential) -> dict[str, str]:
    return {"endDateTime": iso_utc(credential.end), "startDateTime": iso_utc(credential.start)}


def _application_read_denied(request: web.Request, roles: set[str]) -> web.Response | None:
    if roles & _APPLICATION_READ_ROLES:
        return None
    return _error(request, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def _selected(entity: dict[str, Any], select: str | None) -> dict[str, Any]:
    if not select:
        return entity
    wanted = {name.strip().casefold() for name in select.split(",")}
    return {name: value for name, value in entity.items() if name.casefold() in wanted}


def _folder_id(user: str, folder: str) -> str:
    return "AAMkAD" + uuid.uuid5(uuid.NAMESPACE_URL, f"{user.casefold()}/{folder}").hex


def _odata(request: web.Request, body: dict[str, Any]) -> web.Response:
    request_id, client_request_id = _request_ids(request)
    headers = {"Content-Type": _ODATA_CONTENT_TYPE, "request-id": request_id, "client-request-id": client_request_id}
    return web.Response(text=json.dumps(body), headers=headers)


def _error(
    request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    request_id, client_request_id = _request_ids(request)
    inner_error = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
        "client-request-id": client_request_id,
    }
    return web.json_response(
        {"error": {"code": code, "message": message, "innerError": inner_error}},
        status=status,
        headers={**(headers or {}), "request-id": request_id, "client-request-id": client_request_id},
    )


def _unauthorized(request: web.Request, code: str, message: str) -> web.Response:
    challenge = f'Bearer realm="", authorization_uri="{AUTHORIZATION_URI}", client_id="{_GRAPH_APP_ID}"'
    return _error(request, 401, code, message, headers={"WWW-Authenticate": challenge})


def _request_ids(request: web.Request) -> tuple[str, str]:
    """A new ``request-id``, and the client's ``client-request-id`` echoed (the request id when it sent none)."""
    request_id = str(uuid.uuid4())
    return request_id, request.headers.get("client-request-id", request_id)
