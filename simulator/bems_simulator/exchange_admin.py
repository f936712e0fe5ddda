"""Exchange Online's admin REST API, ``POST /adminapi/beta/{tenant}/InvokeCommand``, for the EWS controls.

What ExchangeOnlineManagement v3 and the scripts modelled on it send (GreyCorbel ExoHelper
``Invoke-ExoCommand``): a bearer token for ``https://outlook.office365.com``, ``X-AnchorMailbox``, and
``{"CmdletInput": {"CmdletName": "...", "Parameters": {...}}}``. Answers are OData: ``{"@odata.context",
"adminapi.warnings", "value": [...]}``, errors ``{"error": {"code", "message", "innererror"}}``.

Served cmdlets: ``Get-OrganizationConfig`` (EwsEnabled, EwsApplicationAccessPolicy, EwsAllowList,
EwsBlockList, EwsAllowedAppIDs) and ``Get-CASMailbox -Identity`` (EwsEnabled and the mailbox's own policy);
the values come from the EWS service, whose requests they govern. Any other cmdlet is refused as one the
app may not call.

Faults (``AdminApi.fault``): ``role_missing`` (401 ``Unauthorized`` "User is not allowed to call <cmdlet>",
MicrosoftDocs/office-docs-powershell#7970), ``throttled`` (429 with ``Retry-After``) [UNVERIFIED body];
an app whose token lacks ``Exchange.ManageAsApp`` gets 403 [UNVERIFIED: status and body].
"""

from __future__ import annotations

import asyncio
import json
import uuid
from enum import StrEnum
from typing import Any, NamedTuple

import jwt
from aiohttp import web

from .directory import MailboxDirectory
from .entra import EXCHANGE_ONLINE_RESOURCE, EntraId
from .ews import EwsService

INVOKE_PATH = "/adminapi/beta/{tenant}/InvokeCommand"
MANAGE_AS_APP = "Exchange.ManageAsApp"


class AdminFault(StrEnum):
    NONE = "none"
    ROLE_MISSING = "role_missing"  # the app holds Exchange.ManageAsApp but no Exchange role with the cmdlet
    THROTTLED = "throttled"


class AdminRequest(NamedTuple):
    cmdlet: str | None
    anchor: str | None  # X-AnchorMailbox as sent
    app_id: str | None
    time: float  # the loop's clock at arrival, as EwsRequest's

    def state(self) -> dict[str, Any]:
        return self._asdict()


class AdminApi:
    def __init__(self, entra: EntraId, ews: EwsService, directory: MailboxDirectory, tenants: set[str]) -> None:
        self._entra = entra
        self._ews = ews
        self._directory = directory
        self._tenants = {tenant.casefold() for tenant in tenants}
        self.fault = AdminFault.NONE
        self.retry_after_seconds = 5
        self.requests: list[AdminRequest] = []

    def set_fault(self, fault: AdminFault | str, retry_after: int = 5) -> None:
        """ValueError for an unknown fault or a bad Retry-After."""
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be a whole number of seconds, 0 or more, not {retry_after!r}")
        self.fault = AdminFault(fault)
        self.retry_after_seconds = retry_after

    def state(self) -> dict[str, Any]:
        return {"fault": self.fault.value, "retry_after_seconds": self.retry_after_seconds}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(INVOKE_PATH, self._invoke)

    async def _invoke(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        app_id = str(claims.get("appid", "")) if claims is not None else None
        try:
            cmdlet_input = (await request.json())["CmdletInput"]
            cmdlet, parameters = str(cmdlet_input["CmdletName"]), dict(cmdlet_input.get("Parameters") or {})
        except (ValueError, KeyError, TypeError, AttributeError):
            cmdlet, parameters = None, {}
        anchor = request.headers.get("X-AnchorMailbox")
        self.requests.append(AdminRequest(cmdlet, anchor, app_id, asyncio.get_running_loop().time()))
        if claims is None:
            return _error(401, "Unauthorized", "The access token is missing, expired or not for this resource.")
        if request.match_info["tenant"].casefold() not in self._tenants:
            return _error(404, "NotFound", "The tenant could not be found.")
        if MANAGE_AS_APP not in claims.get("roles", []):
            return _error(403, "Forbidden", f"The application {app_id} lacks the permission {MANAGE_AS_APP}.")
        if self.fault == AdminFault.THROTTLED:
            return _error(429, "TooManyRequests", "Too many requests.", {"Retry-After": str(self.retry_after_seconds)})
        if cmdlet is None:
            return _error(400, "BadRequest", "The request body has no CmdletInput.")
        if self.fault == AdminFault.ROLE_MISSING or cmdlet not in _CMDLETS:
            return _error(401, "Unauthorized", f"User is not allowed to call {cmdlet}")
        return _CMDLETS[cmdlet](self, parameters)

    def _claims(self, request: web.Request) -> dict[str, Any] | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            return self._entra.decode_access_token(token.strip(), EXCHANGE_ONLINE_RESOURCE)
        except jwt.PyJWTError:
            return None

    def _organization_config(self, _parameters: dict[str, Any]) -> web.Response:
        ews = self._ews
        if ews.disabled:
            enabled: bool | None = False
        elif ews.allowed_app_ids is not None:
            enabled = True
        else:
            enabled = None
        return _collection("OrganizationConfig", {
            "Identity": "contoso.onmicrosoft.com",
            "EwsEnabled": enabled,
            "EwsApplicationAccessPolicy": None,
            "EwsAllowList": [],
            "EwsBlockList": [],
            "EwsAllowedAppIDs": sorted(ews.allowed_app_ids or ()),
        })  # fmt: skip

    def _cas_mailbox(self, parameters: dict[str, Any]) -> web.Response:
        identity = str(parameters.get("Identity", ""))
        if identity not in self._directory:
            return _error(
                404, "NotFound", f"The operation couldn't be performed because object '{identity}' couldn't be found."
            )  # [UNVERIFIED wording: Exchange's ManagementObjectNotFoundException text]
        enabled = self._ews.mailbox_ews_enabled.get(identity.casefold())
        return _collection("CASMailbox", {
            "Identity": identity, "PrimarySmtpAddress": identity, "EwsEnabled": enabled,
            "EwsApplicationAccessPolicy": None, "EwsAllowList": None, "EwsBlockList": None,
        })  # fmt: skip


_CMDLETS = {"Get-OrganizationConfig": AdminApi._organization_config, "Get-CASMailbox": AdminApi._cas_mailbox}


def _collection(entity: str, obj: dict[str, Any]) -> web.Response:
    body = {
        "@odata.context": f"https://outlook.office365.com/adminapi/beta/$metadata#{entity}",
        "adminapi.warnings": [],
        "value": [{"@odata.type": f"#Exchange.{entity}", **obj}],
    }
    return web.Response(text=json.dumps(body), content_type="application/json")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    inner = {"message": message, "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"}
    body = {"error": {"code": code, "message": message, "innererror": inner}}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json",
        headers={**(headers or {}), "request-id": str(uuid.uuid4())},
    )  # fmt: skip
