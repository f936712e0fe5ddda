"""Microsoft Graph ``/v1.0`` (facts file section 8), app-only, with tokens from the simulated Entra ID.

Served:

- ``GET /v1.0/users/{mailbox}/mailFolders/inbox``: the inbox (8.1); the app needs a ``Mail.*`` read
  role and application access to the mailbox (RBAC for Applications, the same switch as EWS's);
- ``GET /v1.0/users/{mailbox}``: the user object, for an app holding ``User.Read.All`` or a permission
  that includes it (learn.microsoft.com/graph/api/user-get, Permissions); without one Graph answers 403
  ``Authorization_RequestDenied`` "Insufficient privileges to complete the operation." (the shape
  Microsoft Q&A 6019739 and the Graph errors page show). A directory permission: application access
  policies and RBAC for Applications do not apply;
- ``POST /v1.0/users/{mailbox}/mailFolders/{folder}/messages`` (201) and ``DELETE
  /v1.0/users/{mailbox}/messages/{id}`` (204): a message in the shared ``mailstore``, for an app
  holding ``Mail.ReadWrite`` (``Mail.Read`` cannot write);
- ``/v1.0/subscriptions``: change notification subscriptions on messages (8.3), served by ``webhooks``:
  ``POST`` (201, after the validation handshake), ``GET``, ``PATCH /{id}`` (renew, 200), ``DELETE
  /{id}`` (204) and ``POST /{id}/reauthorize`` (204, as documented);
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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import jwt
from aiohttp import web

from .challenges import AUTHORIZATION_URI
from .directory import MailboxDirectory, UnknownMailboxError
from .entra import GRAPH_RESOURCE, AppCredential, CredentialKind, EntraId, iso_utc
from .mailstore import MailItem, MailStore
from .service_health import SERVICE_HEALTH_ROLE, ServiceHealth
from .webhooks import GraphRequestError, GraphSubscription, GraphWebhooks, graph_time, parse_resource

GRAPH_PATH = "/v1.0"
_METADATA_URL = "https://graph.microsoft.com/v1.0/$metadata"
# Graph's own application id, as Graph names it in its Bearer challenge [UNVERIFIED: recollection].
_GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
_ODATA_CONTENT_TYPE = (
    "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"
)
# Application permissions that let an app read mail folders, and ones that let it read app registrations.
_MAIL_READ_ROLES = {"Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite"}
_MAIL_WRITE_ROLES = {"Mail.ReadWrite"}
_APPLICATION_READ_ROLES = {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All"}
_USER_READ_ROLES = {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
_INSUFFICIENT_PRIVILEGES = ("Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
_RAOP_DENIED = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."

_INBOX = re.compile(r"users/(?P<user>[^/]+)/mailFolders(?:/inbox|\('inbox'\))", re.IGNORECASE)
_USER = re.compile(r"users/(?P<user>[^/]+)", re.IGNORECASE)
_APPLICATION_BY_APP_ID = re.compile(r"applications\(appId='(?P<app_id>[^']*)'\)", re.IGNORECASE)
_APPLICATIONS = re.compile(r"applications", re.IGNORECASE)
_APP_ID_FILTER = re.compile(r"\s*appId\s+eq\s+'(?P<app_id>[^']*)'\s*", re.IGNORECASE)
# users/{id}/messages, or the messages of a folder named users/{id}/mailFolders/{name} or mailFolders('{name}').
_MESSAGES = re.compile(
    r"users/(?P<user>[^/]+)/(?:mailFolders(?:/(?P<plain>[^/()']+)|\('(?P<quoted>[^']+)'\))/)?messages",
    re.IGNORECASE,
)
_MESSAGE = re.compile(r"users/(?P<user>[^/]+)/messages/(?P<message_id>[^/]+)", re.IGNORECASE)
_HEALTH_OVERVIEWS = re.compile(r"admin/serviceAnnouncement/healthOverviews", re.IGNORECASE)
_SERVICE_ISSUES = re.compile(r"admin/serviceAnnouncement/issues", re.IGNORECASE)
_SUBSCRIPTIONS = re.compile(r"subscriptions", re.IGNORECASE)
_SUBSCRIPTION = re.compile(r"subscriptions/(?P<subscription_id>[^/]+)", re.IGNORECASE)
_REAUTHORIZE = re.compile(r"subscriptions/(?P<subscription_id>[^/]+)/reauthorize", re.IGNORECASE)
# The well-known folders a message can be created in; without a folder Graph saves it in Drafts.
_MESSAGE_FOLDERS = {"inbox", "drafts", "sentitems", "deleteditems"}
_DEFAULT_MESSAGE_FOLDER = "drafts"

_Handler = Callable[[web.Request, re.Match[str], dict[str, Any]], Awaitable[web.Response]]


class GraphRequest(NamedTuple):
    method: str
    path: str  # with the query string
    app_id: str | None  # the token's app, None when the token was missing or rejected
    time: float  # time.monotonic() at arrival

    def state(self) -> dict[str, Any]:
        return self._asdict()


class GraphService:
    """Graph's behaviour; it outlives the listeners that a fault change restarts."""

    def __init__(
        self,
        entra: EntraId,
        directory: MailboxDirectory,
        requests: list[GraphRequest],
        store: MailStore,
        webhooks: GraphWebhooks,
    ) -> None:
        self.requests = requests
        self.throttled = False  # every request of the app
        self.throttled_mailboxes: set[str] = set()  # requests for these mailboxes only (casefolded)
        self.retry_after_seconds = 1
        self.webhooks = webhooks
        self._entra = entra
        self._directory = directory
        self._store = store
        self._mailboxes_not_enabled: set[str] = set()
        self.service_health = ServiceHealth()
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("GET", _INBOX, self._inbox),
            ("GET", _USER, self._user),
            ("GET", _APPLICATION_BY_APP_ID, self._application),
            ("GET", _APPLICATIONS, self._applications),
            ("GET", _HEALTH_OVERVIEWS, self._health_overviews),
            ("GET", _SERVICE_ISSUES, self._service_issues),
            ("POST", _MESSAGES, self._create_message),
            ("DELETE", _MESSAGE, self._delete_message),
            ("GET", _SUBSCRIPTIONS, self._list_subscriptions),
            ("POST", _SUBSCRIPTIONS, self._create_subscription),
            ("GET", _SUBSCRIPTION, self._get_subscription),
            ("PATCH", _SUBSCRIPTION, self._renew_subscription),
            ("DELETE", _SUBSCRIPTION, self._delete_subscription),
            ("POST", _REAUTHORIZE, self._reauthorize_subscription),
        ]

    def set_throttled(self, throttled: bool, retry_after: int = 1, mailbox: str | None = None) -> None:
        """429 for every request, or (``mailbox``) for those addressing that mailbox only: Graph's mail
        limits are per app and mailbox (learn.microsoft.com/graph/throttling-limits, Outlook service)."""
        if not isinstance(throttled, bool):
            raise ValueError(f"throttled must be true or false, not {throttled!r}")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be a whole number of seconds, 0 or more, not {retry_after!r}")
        if mailbox is not None and mailbox not in self._directory:
            raise UnknownMailboxError(mailbox, list(self._directory))
        self.retry_after_seconds = retry_after
        if mailbox is None:
            self.throttled = throttled
        elif throttled:
            self.throttled_mailboxes.add(mailbox.casefold())
        else:
            self.throttled_mailboxes.discard(mailbox.casefold())

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
            "throttled_mailboxes": sorted(self.throttled_mailboxes),
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
        resource = request.match_info["resource"]
        if self.throttled or _addressed_mailbox(resource) in self.throttled_mailboxes:
            return _error(
                request,
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                headers={"Retry-After": str(self.retry_after_seconds)},
            )
        known_resource = False
        for method, pattern, handler in self._routes:
            if match := pattern.fullmatch(resource):
                known_resource = True
                if method == request.method:
                    try:
                        return await handler(request, match, claims)
                    except GraphRequestError as error:
                        return _error(request, error.status, error.code, error.message)
        if known_resource:
            return _error(
                request, 405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
            )
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

    def _check_mailbox_access(self, user: str, claims: dict[str, Any], needed_roles: set[str]) -> None:
        """GraphRequestError unless the app holds one of ``needed_roles`` and may reach ``user``'s mailbox."""
        if not _roles(claims) & needed_roles:
            raise GraphRequestError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if user not in self._directory:
            raise GraphRequestError(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        if user.casefold() in self._mailboxes_not_enabled:
            raise GraphRequestError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        if not self._directory.is_granted(user):
            raise GraphRequestError(403, "ErrorAccessDenied", _RAOP_DENIED)

    async def _inbox(self, request: web.Request, match: re.Match[str], claims: dict[str, Any]) -> web.Response:
        user = match["user"]
        self._check_mailbox_access(user, claims, _MAIL_READ_ROLES)
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

    async def _user(self, request: web.Request, match: re.Match[str], claims: dict[str, Any]) -> web.Response:
        user = match["user"]
        if not _roles(claims) & _USER_READ_ROLES:
            return _error(request, 403, *_INSUFFICIENT_PRIVILEGES)
        if user not in self._directory:
            return _error(
                request,
                404,
                "Request_ResourceNotFound",
                f"Resource '{user}' does not exist or one of its queried reference-property objects are not present.",
            )
        select = request.query.get("$select")
        context = f"{_METADATA_URL}#users({select})/$entity" if select else f"{_METADATA_URL}#users/$entity"
        return _odata(request, {"@odata.context": context, **_selected(_user_object(user), select)})

    async def _health_overviews(
        self, request: web.Request, _match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        if SERVICE_HEALTH_ROLE not in _roles(claims):
            return _error(request, 403, *_INSUFFICIENT_PRIVILEGES)
        return _odata(request, self.service_health.health_overviews())

    async def _service_issues(
        self, request: web.Request, _match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        if SERVICE_HEALTH_ROLE not in _roles(claims):
            return _error(request, 403, *_INSUFFICIENT_PRIVILEGES)
        page = self.service_health.issue_page(request)
        if page is None:  # [UNVERIFIED wording] only the filter the exporter sends is understood
            return _error(request, 400, "BadRequest", "Invalid filter clause.")
        return _odata(request, page)

    async def _application(self, request: web.Request, match: re.Match[str], claims: dict[str, Any]) -> web.Response:
        app_id = match["app_id"]
        denied = _application_read_denied(request, _roles(claims))
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

    async def _applications(self, request: web.Request, match: re.Match[str], claims: dict[str, Any]) -> web.Response:
        denied = _application_read_denied(request, _roles(claims))
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

    async def _create_message(self, request: web.Request, match: re.Match[str], claims: dict[str, Any]) -> web.Response:
        user = match["user"]
        self._check_mailbox_access(user, claims, _MAIL_WRITE_ROLES)
        folder = (match["plain"] or match["quoted"] or _DEFAULT_MESSAGE_FOLDER).lower()
        if folder not in _MESSAGE_FOLDERS:
            raise GraphRequestError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        message = await _json_object(request)
        body = message.get("body") if isinstance(message.get("body"), dict) else {}
        item = self._store.create(
            user, folder, subject=str(message.get("subject") or ""), body=str(body.get("content") or "")
        )
        return _odata(request, _message_json(user, item), status=201)

    async def _delete_message(self, request: web.Request, match: re.Match[str], claims: dict[str, Any]) -> web.Response:
        user = match["user"]
        self._check_mailbox_access(user, claims, _MAIL_WRITE_ROLES)
        if not self._store.delete(user, match["message_id"]):
            raise GraphRequestError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return _no_content(request)

    async def _list_subscriptions(
        self, request: web.Request, match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        app_id = _app_id(claims)
        subscriptions = [
            subscription.resource_json()
            for subscription in self.webhooks.subscriptions.values()
            if subscription.alive and subscription.app_id == app_id
        ]
        return _odata(request, {"@odata.context": f"{_METADATA_URL}#subscriptions", "value": subscriptions})

    async def _create_subscription(
        self, request: web.Request, match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        body = await _json_object(request)
        self._check_mailbox_access(parse_resource(body.get("resource")).mailbox, claims, _MAIL_READ_ROLES)
        subscription = await self.webhooks.create(_app_id(claims), body)
        return _odata(request, subscription.resource_json(), status=201)

    async def _get_subscription(
        self, request: web.Request, match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        return _odata(request, self._own_subscription(match, claims).resource_json())

    async def _renew_subscription(
        self, request: web.Request, match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        subscription = self._own_subscription(match, claims)
        body = await _json_object(request)
        return _odata(request, self.webhooks.renew(subscription.id, body).resource_json())

    async def _delete_subscription(
        self, request: web.Request, match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        self.webhooks.delete(self._own_subscription(match, claims).id)
        return _no_content(request)

    async def _reauthorize_subscription(
        self, request: web.Request, match: re.Match[str], claims: dict[str, Any]
    ) -> web.Response:
        self._own_subscription(match, claims)
        return _no_content(request)

    def _own_subscription(self, match: re.Match[str], claims: dict[str, Any]) -> GraphSubscription:
        """The caller's live subscription the URL names; another app's is as good as missing."""
        subscription = self.webhooks.find(match["subscription_id"])
        if subscription.app_id != _app_id(claims):
            raise GraphRequestError(404, "ResourceNotFound", "The object was not found.")
        return subscription

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


def _user_object(address: str) -> dict[str, Any]:
    """The default properties of a user, as the ``GET /users/{id}`` sample of the Graph reference lists them."""
    local = address.split("@")[0]
    return {
        "businessPhones": [],
        "displayName": local.capitalize(),
        "givenName": local.capitalize(),
        "jobTitle": None,
        "mail": address,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US",
        "surname": None,
        "userPrincipalName": address,
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{address.casefold()}")),
    }


def _addressed_mailbox(resource: str) -> str | None:
    """The mailbox a Graph resource path is about (``users/{id}/...``), casefolded."""
    head, _, rest = resource.partition("/")
    if head.casefold() != "users":
        return None
    return rest.split("/")[0].casefold() or None


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


def _roles(claims: dict[str, Any]) -> set[str]:
    return set(claims.get("roles", []))


def _app_id(claims: dict[str, Any]) -> str:
    return str(claims.get("appid", ""))


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise GraphRequestError(
            400,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid "
            "JSON format.",
        )
    return body


def _message_json(user: str, item: MailItem) -> dict[str, Any]:
    created = graph_time(item.created)
    return {
        "@odata.context": f"{_METADATA_URL}#users('{user}')/messages/$entity",
        "@odata.etag": f'W/"{item.change_key}"',
        "id": item.id,
        "createdDateTime": created,
        "lastModifiedDateTime": created,
        "changeKey": item.change_key,
        "subject": item.subject,
        "body": {"contentType": "text", "content": item.body},
        "parentFolderId": _folder_id(user, item.folder),
        "isDraft": True,  # a message created over the API is a draft until sent
        "isRead": True,
    }


def _odata(request: web.Request, body: dict[str, Any], status: int = 200) -> web.Response:
    request_id, client_request_id = _request_ids(request)
    headers = {"Content-Type": _ODATA_CONTENT_TYPE, "request-id": request_id, "client-request-id": client_request_id}
    return web.Response(status=status, text=json.dumps(body), headers=headers)


def _no_content(request: web.Request) -> web.Response:
    request_id, client_request_id = _request_ids(request)
    return web.Response(status=204, headers={"request-id": request_id, "client-request-id": client_request_id})


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
