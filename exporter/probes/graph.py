"""``graph``: the Entra app reads each configured mailbox through Microsoft Graph
(``GET /users/{mailbox}/mailFolders/inbox`` with an app-only token), as BEMS in Graph mode does.

Denials: 403 ``ErrorAccessDenied`` (an application access policy or RBAC for Applications scope that
leaves the mailbox out), 404 ``ErrorInvalidUser``/``MailboxNotEnabledForRESTAPI``, 401 for a token
Graph does not accept, 429 (throttled: the ``Retry-After`` is honoured before the next request).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any
from urllib.parse import quote

from .. import signin
from ..config import AuthMethod, Config, EntraCredential, Kind, Target
from ..entra import GRAPH_SCOPE
from ..httpclient import HttpResponse
from ..metrics import MetricSpec
from ..results import CheckResult, ProbeFailure, Reason
from .base import Check, ProbeContext
from .mailboxes import Unit, each, per_mailbox

SUCCESS = MetricSpec(
    "bems_graph_mailbox_access_success",
    "1 if the Entra app could read the mailbox's inbox through Microsoft Graph in the last check.",
    labels=("mailbox",),
)
DEFAULT_RETRY_AFTER = 30.0  # seconds, when a 429 does not say


def _applies(config: Config, target: Target) -> bool:
    credential = config.credentials.get(target.credential or "")
    return target.kind == Kind.GRAPH and bool(target.mailboxes) and isinstance(credential, EntraCredential)


def graph_error(response: HttpResponse) -> tuple[str, str]:
    """Graph's ``{"error": {"code", "message"}}``, or empty strings for a body that is not one."""
    try:
        error = json.loads(response.body).get("error") or {}
        return str(error.get("code", "")), str(error.get("message", ""))[:200]
    except (ValueError, AttributeError):
        return "", ""


def retry_after(response: HttpResponse) -> float:
    value = (response.header("Retry-After") or "").strip()
    return float(value) if value.isdigit() else DEFAULT_RETRY_AFTER


def _judge(ctx: ProbeContext, target: Target, url: str, mailbox: str, response: HttpResponse) -> str:
    folder = json_answer(ctx, target, url, mailbox, response)
    if "id" not in folder:
        raise ProbeFailure(Reason.BAD_RESPONSE, "HTTP 200 without a mail folder in the body")
    return f"inbox opened ({folder.get('totalItemCount', '?')} items)"


def json_answer(ctx: ProbeContext, target: Target, url: str, mailbox: str, response: HttpResponse) -> dict[str, Any]:
    """The JSON object of a 2xx Graph answer (empty for 204), or the failure a Graph error shows."""
    code, message = graph_error(response)
    if 200 <= response.status < 300:
        if response.status == 204 or not response.body:
            return {}
        try:
            answer = json.loads(response.body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ProbeFailure(Reason.BAD_RESPONSE, f"HTTP {response.status} without a JSON object")
        return answer
    if response.status == 429:
        seconds = retry_after(response)
        signin.hold_off(ctx, target, url, seconds)
        raise ProbeFailure(
            Reason.THROTTLED, f"Graph throttles the app: {code or 'HTTP 429'}, retry after {seconds:g} s",
            signin.THROTTLED_HINT,
        )  # fmt: skip
    if response.status == 401:
        raise ProbeFailure(
            Reason.UNAUTHORIZED, f"Graph rejected the token: {code} {message}".strip(),
            "grant the Entra app the Microsoft Graph application permissions Mail.Read and User.Read.All "
            "(with admin consent)",
        )  # fmt: skip
    if response.status == 403:
        client_id = getattr(ctx.config.credentials.get(target.credential or ""), "client_id", "<app id>")
        raise ProbeFailure(
            Reason.FORBIDDEN, f"{code or 'HTTP 403'}: {message}",
            f"the app may not read {mailbox}: New-ManagementRoleAssignment -App {client_id} "
            '-Role "Application Mail.Read" -CustomResourceScope <scope including the mailbox>, or fix the '
            "application access policy (Test-ApplicationAccessPolicy)",
        )  # fmt: skip
    if response.status == 404:
        raise ProbeFailure(
            Reason.MAILBOX_NOT_FOUND, f"{code or 'HTTP 404'}: {message}",
            f"check the address (Get-Mailbox {mailbox}): Graph reads only mailboxes in Exchange Online",
        )  # fmt: skip
    raise ProbeFailure(Reason.BAD_RESPONSE, f"unexpected HTTP {response.status} {code}: {message}".strip(" :"))


async def _read_inbox(ctx: ProbeContext, target: Target, mailbox: str) -> str:
    url = f"{target.url.rstrip('/')}/users/{quote(mailbox)}/mailFolders/inbox"
    response = await signin.send(
        ctx, target, url, method=AuthMethod.OAUTH, headers={"Accept": "application/json"}, scope=GRAPH_SCOPE,
        http_method="GET", follow=True,
    )  # fmt: skip
    return _judge(ctx, target, url, mailbox, response)


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    units = [
        Unit(f"read the inbox of {mailbox}", {"mailbox": mailbox}, partial(_read_inbox, ctx, target, mailbox))
        for mailbox in target.mailboxes
    ]
    await each(ctx, units, SUCCESS.name)
    return ctx.rec.passed()


CHECK = Check("graph", probe, _applies, (SUCCESS,), uses_credential=True, requests=per_mailbox, per_mailbox=True)
