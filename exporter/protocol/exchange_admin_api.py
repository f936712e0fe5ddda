"""The Exchange Online admin REST API: read-only cmdlets through ``InvokeCommand``, as the EXO v3 module runs them.

The v3 module runs cmdlets such as ``Get-OrganizationConfig`` over REST, not remote PowerShell; app-only
scripts and scanners call the same endpoint (GreyCorbel ExoHelper ``Invoke-ExoCommand``, CIPP
``New-ExoRequest``, Prowler, ScubaGear):

    POST https://outlook.office365.com/adminapi/beta/{tenant}/InvokeCommand
    Authorization: Bearer <app-only token for https://outlook.office365.com/.default>
    X-AnchorMailbox: UPN:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@{tenant domain}
    X-CmdletName: Get-OrganizationConfig
    {"CmdletInput": {"CmdletName": "Get-OrganizationConfig", "Parameters": {}}}

and answers an OData collection, ``{"@odata.context": ..., "value": [{...the cmdlet's object...}]}``, or an
OData error envelope, ``{"error": {"code": "Unauthorized", "message": "User is not allowed to call
Get-Mailbox", "innererror": {...}}}`` (HTTP 401 for an app without an Exchange role that holds the cmdlet,
MicrosoftDocs/office-docs-powershell#7970). The anchor mailbox is the one the module itself uses in
app-only sessions (ExoHelper ``New-ExoConnection``: "use same static anchor mailbox as
ExchangeOnlineManagement module uses"). The token is the one EWS uses: ``Exchange.ManageAsApp`` is an
application permission of the same resource (Office 365 Exchange Online), so the ``.default`` scope carries
it once consented (learn.microsoft.com/powershell/exchange/app-only-auth-powershell-v2).

Property names are the cmdlets' own (``EwsEnabled``, ``EwsApplicationAccessPolicy``, ``EwsAllowList``,
``EwsBlockList``, ``EwsAllowedAppIDs``: Set-OrganizationConfig and Set-CASMailbox reference). That the
REST answer renders multivalued properties as JSON arrays of strings and ``$null`` as JSON ``null`` is
what the scripts above read [UNVERIFIED against a captured answer].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ..results import ProbeFailure, Reason
from .graph_wire import graph_error
from .http_client import HttpResponse

# The organisation's arbitration mailbox the module anchors app-only admin calls to (see the module doc).
SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
INVOKE_PATH = "/adminapi/beta/{tenant}/InvokeCommand"
ORGANIZATION_CONFIG = "Get-OrganizationConfig"
CAS_MAILBOX = "Get-CASMailbox"


def invoke_url(ews_url: str, tenant: str) -> str:
    """``InvokeCommand`` on the Exchange Online host that serves ``ews_url`` (the cloud's own host)."""
    parts = urlsplit(ews_url)
    return f"{parts.scheme}://{parts.netloc}" + INVOKE_PATH.format(tenant=quote(tenant, safe=""))


def request(cmdlet: str, anchor: str, parameters: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one cmdlet call; ``anchor`` routes it (a mailbox's UPN, or the system mailbox)."""
    body = json.dumps({"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters or {}}}).encode()
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CmdletName": cmdlet,
        "X-AnchorMailbox": f"UPN:{anchor}",
    }
    return body, headers


def system_anchor(tenant: str) -> str:
    return f"{SYSTEM_MAILBOX}@{tenant}"


def error_of(response: HttpResponse) -> str:
    """``code: message`` of an OData error answer (the envelope Graph uses too), or the bare status."""
    code, message = graph_error(response)
    return f"{code}: {message}" if code else f"HTTP {response.status}"


def first_object(response: HttpResponse, cmdlet: str) -> dict[str, Any]:
    """The single object a 200 answer of ``cmdlet`` carries in ``value``; ``bad_response`` for anything else."""
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    values = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(values, list) or not values or not isinstance(values[0], dict):
        raise ProbeFailure(Reason.BAD_RESPONSE, f"{cmdlet}: HTTP {response.status} without an object in value")
    return values[0]


def tristate(value: Any) -> bool | None:
    """A cmdlet's ``$true``/``$false``/``$null`` (unset), which the REST answer gives as JSON true/false/null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(item).strip() for item in value if str(item).strip())
    if isinstance(value, str) and value.strip():  # a comma-joined string, as Set-OrganizationConfig takes it
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return ()


@dataclass(frozen=True, slots=True)
class OrganizationEws:
    """The organisation's EWS controls (Get-OrganizationConfig)."""

    enabled: bool | None  # EwsEnabled; None: never set
    access_policy: str | None  # EwsApplicationAccessPolicy: EnforceAllowList, EnforceBlockList, or None
    allow_list: tuple[str, ...]  # EwsAllowList: user agent patterns, not app ids
    block_list: tuple[str, ...]  # EwsBlockList: user agent patterns
    allowed_app_ids: tuple[str, ...]  # EwsAllowedAppIDs: Entra application ids

    @classmethod
    def read(cls, config: dict[str, Any]) -> OrganizationEws:
        policy = config.get("EwsApplicationAccessPolicy")
        return cls(
            tristate(config.get("EwsEnabled")),
            str(policy) if isinstance(policy, str) and policy else None,
            string_list(config.get("EwsAllowList")),
            string_list(config.get("EwsBlockList")),
            tuple(app_id.lower() for app_id in string_list(config.get("EwsAllowedAppIDs"))),
        )
