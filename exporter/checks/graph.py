"""``graph``: the Entra app has what BEMS in Graph mode needs, and reads each configured mailbox.

BEMS's Entra app needs the Graph application permissions ``Mail.Read`` and ``User.Read.All`` (BlackBerry
BEMS docs, Graph configuration; ../shared/reference/bems-context.md). The check, in order:

1. the app-only Graph token's ``roles`` claim (the application permissions admin consent granted,
   learn.microsoft.com/entra/identity-platform/access-token-claims-reference) must hold both, or ones that
   include them. The token came from Entra ID over TLS and is not verified again; a token that cannot be
   read (Microsoft reserves the right to make tokens opaque) leaves this to the requests below;
2. each mailbox's inbox, ``GET /users/{mailbox}/mailFolders/inbox``;
3. one user object, ``GET /users/{mailbox}`` of a mailbox whose inbox was read: without ``User.Read.All``
   Graph answers 403 ``Authorization_RequestDenied`` "Insufficient privileges to complete the operation."
   (learn.microsoft.com/graph/api/user-get, Permissions; learn.microsoft.com/graph/resolve-auth-errors).
   The permission is tenant-wide (RBAC for Applications scopes Exchange permissions only), so one user
   tells.

Denials: a permission missing from the token or the user read is ``forbidden`` naming the permission;
403 ``ErrorAccessDenied`` on an inbox (an application access policy or RBAC for Applications scope that
leaves the mailbox out), 404 ``ErrorInvalidUser``/``MailboxNotEnabledForRESTAPI``, 401 for a token
Graph does not accept, 429 (throttled: the ``Retry-After`` is honoured before the next request to that
mailbox, since Graph's mail limits are per app and mailbox).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from functools import partial
from urllib.parse import quote

from ..config import Config, EntraCredential, Kind, Target
from ..metrics import MetricSpec
from ..protocol.entra_tokens import Resource
from ..protocol.graph_wire import graph_error
from ..protocol.http_client import HttpResponse
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext
from .mailboxes import Unit, each, per_mailbox

SUCCESS = MetricSpec(
    "bems_graph_mailbox_access_success",
    "1 if the Entra app could read the mailbox's inbox through Microsoft Graph in the last check.",
    labels=("mailbox",),
)
PERMISSION = MetricSpec(
    "bems_graph_permission_granted",
    "1 if the app's Graph token carries the application permission BEMS needs (permission: Mail.Read, "
    "User.Read.All), or one that includes it; absent when the token cannot be read.",
    labels=("permission",),
)
# What BEMS needs, and the application permissions that include each (Graph permissions reference:
# learn.microsoft.com/graph/permissions-reference; mailFolder get and user get list the alternatives).
NEEDED_PERMISSIONS: dict[str, frozenset[str]] = {
    "Mail.Read": frozenset({"Mail.Read", "Mail.ReadWrite"}),
    "User.Read.All": frozenset(
        {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
    ),
}


def _applies(config: Config, target: Target) -> bool:
    credential = config.credentials.get(target.credential or "")
    return target.kind == Kind.GRAPH and bool(target.mailboxes) and isinstance(credential, EntraCredential)


def _judge(ctx: ProbeContext, target: Target, url: str, mailbox: str, response: HttpResponse) -> str:
    folder = signin.graph_answer(ctx, target, url, mailbox, response)
    if "id" not in folder:
        raise ProbeFailure(Reason.BAD_RESPONSE, "HTTP 200 without a mail folder in the body")
    return f"inbox opened ({folder.get('totalItemCount', '?')} items)"


def _permission_hint(ctx: ProbeContext, target: Target, missing: list[str]) -> str:
    client_id = getattr(ctx.config.credentials.get(target.credential or ""), "client_id", "<app id>")
    return (
        f"grant the Entra app {client_id} the Microsoft Graph application permission {' and '.join(missing)} "
        "(App registrations > API permissions > Application permissions) and grant admin consent: BEMS in Graph "
        "mode needs Mail.Read and User.Read.All. Tokens issued before the consent lack it until they expire"
    )


def token_roles(access_token: str) -> set[str] | None:
    """The ``roles`` claim of a JWT access token, read without verifying it; None if it is no readable JWT."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    roles = claims.get("roles", [])  # Entra leaves the claim out when nothing was consented
    return {str(role) for role in roles} if isinstance(roles, list) else None


async def _check_permissions(ctx: ProbeContext, target: Target) -> None:
    """ProbeFailure(forbidden) naming the needed permissions the Graph token lacks; records the gauges."""
    async with ctx.rec.step("application permissions in the Graph token") as detail:
        roles = token_roles(await signin.token(ctx, target, Resource.GRAPH))
        if roles is None:
            detail.append("token not readable: the requests below tell")
            return
        missing = []
        for permission, including in NEEDED_PERMISSIONS.items():
            granted = bool(roles & including)
            ctx.rec.measure(PERMISSION, 1.0 if granted else 0.0, permission=permission)
            if not granted:
                missing.append(permission)
        detail.append(f"roles: {', '.join(sorted(roles)) or 'none'}")
        if missing:
            raise ProbeFailure(
                Reason.FORBIDDEN,
                f"the app's Graph token lacks the application permission {' and '.join(missing)}",
                _permission_hint(ctx, target, missing),
            )


def _user_url(target: Target, mailbox: str) -> str:
    return f"{target.url.rstrip('/')}/users/{quote(mailbox)}"


async def _read_inbox(ctx: ProbeContext, target: Target, mailbox: str) -> str:
    url = f"{_user_url(target, mailbox)}/mailFolders/inbox"
    return _judge(ctx, target, url, mailbox, await signin.graph_get(ctx, target, url))


def judge_user(ctx: ProbeContext, target: Target, url: str, mailbox: str, response: HttpResponse) -> str:
    code, message = graph_error(response)
    if response.status == 403:
        raise ProbeFailure(
            Reason.FORBIDDEN, f"reading the user object: {code or 'HTTP 403'}: {message}",
            _permission_hint(ctx, target, ["User.Read.All"]),
        )  # fmt: skip
    user = signin.graph_answer(ctx, target, url, mailbox, response)
    if "id" not in user:
        raise ProbeFailure(Reason.BAD_RESPONSE, "HTTP 200 without a user object in the body")
    return f"user object read ({user.get('userPrincipalName') or user['id']})"


async def _read_user(ctx: ProbeContext, target: Target, mailbox: str) -> None:
    url = f"{_user_url(target, mailbox)}?$select=id,userPrincipalName,mail"
    async with ctx.rec.step(f"read the user object of {mailbox}") as detail:
        try:
            async with asyncio.timeout(ctx.timeout):
                response = await signin.graph_get(ctx, target, url)
        except TimeoutError:
            raise ProbeFailure(Reason.TIMEOUT, f"no answer within {ctx.timeout:g}s") from None
        detail.append(judge_user(ctx, target, url, mailbox, response))


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    try:
        await _check_permissions(ctx, target)
    except ProbeFailure as failure:
        if failure.reason != Reason.FORBIDDEN:
            raise  # no token: nothing below could work
        permission_failure: ProbeFailure | None = failure
    else:
        permission_failure = None
    units = [
        Unit(f"read the inbox of {mailbox}", {"mailbox": mailbox}, partial(_read_inbox, ctx, target, mailbox))
        for mailbox in target.mailboxes
    ]
    try:
        await each(ctx, units, SUCCESS)  # the per-mailbox metric still says which inboxes are readable
    except ProbeFailure as failure:
        mailbox_failure: ProbeFailure | None = failure
    else:
        mailbox_failure = None
    if permission_failure is not None:
        raise permission_failure
    readable = [m.label("mailbox") for m in ctx.rec.measurements if m.metric == SUCCESS.name and m.value]
    if readable:  # an app-wide denial outranks a per-mailbox one
        await _read_user(ctx, target, readable[0])
    if mailbox_failure is not None:
        raise mailbox_failure
    return ctx.rec.passed()


def _requests(config: Config, target: Target) -> int:
    return per_mailbox(config, target) + 1  # and the user object


CHECK = Check(
    "graph", probe, _applies, (SUCCESS, PERMISSION), uses_credential=True, requests=_requests, per_mailbox=True,
    sweep=_read_inbox,  # one request a mailbox: the app's permissions are the scheduled check's to judge
)  # fmt: skip
