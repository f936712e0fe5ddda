"""``impersonation``: the service account (on-premises) or the Entra app (Exchange Online) may act as
each configured mailbox: an EWS ``GetFolder`` of the inbox with the ``ExchangeImpersonation`` header.

On-premises this needs the ``ApplicationImpersonation`` role; in Exchange Online, where that role is
gone, application access for the app: an RBAC for Applications assignment scoped to the mailboxes, or
the tenant-wide ``full_access_as_app`` consent (which defeats any scope).
Denials come back as HTTP 500 SOAP faults (``ErrorImpersonateUserDenied``, ``ErrorNonExistentMailbox``),
and in Exchange Online as a bare HTTP 403 for a mailbox a policy or scope leaves out: ``forbidden`` for
that mailbox, ``ews_disabled`` when the organisation-wide evidence (``signin.OrganisationEvidence``, as in
the auth check) shows that EWS is blocked for every mailbox. Throttling answers start the account's back-off.
"""

from __future__ import annotations

from functools import partial

from ..config import AuthMethod, Config, Kind, Target, WindowsCredential
from ..metrics import MetricSpec
from ..protocol import ews_soap
from ..protocol.entra_tokens import Resource
from ..protocol.http_client import HttpResponse
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext
from .mailboxes import Unit, each, per_mailbox

SUCCESS = MetricSpec(
    "bems_impersonation_success",
    "1 if the account could open the mailbox's inbox through EWS impersonation in the last check.",
    labels=("mailbox",),
)


def _applies(config: Config, target: Target) -> bool:
    return target.kind == Kind.EWS and bool(target.mailboxes) and bool(config.auth_methods_of(target))


def _hint(ctx: ProbeContext, target: Target, reason: Reason, mailbox: str) -> str:
    credential = ctx.config.credentials.get(target.credential or "")
    if reason == Reason.IMPERSONATION_DENIED:
        if isinstance(credential, WindowsCredential):
            user = credential.username.rpartition("\\")[2]
            return (
                "grant the role: New-ManagementRoleAssignment -Name:BlackBerryAppImpersonation "
                f"-Role:ApplicationImpersonation -User:{user} (mind any management scope that excludes {mailbox})"
            )
        return signin.app_access_hint(ctx, target, mailbox)
    if reason == Reason.MAILBOX_NOT_FOUND:
        return f"check the address: Get-Mailbox {mailbox} (a typo, a removed user, or a mailbox on the other side)"
    return ""


async def _impersonate(
    ctx: ProbeContext, target: Target, mailbox: str, method: AuthMethod, evidence: signin.OrganisationEvidence
) -> str:
    body = ews_soap.get_folder("inbox", impersonate=mailbox)
    headers = ews_soap.SOAP_HEADERS | {"X-AnchorMailbox": mailbox}
    response = await signin.send(
        ctx, target, target.url, method=method, body=body, headers=headers, scope=Resource.EXCHANGE, follow=True
    )
    try:
        return judge(ctx, target, mailbox, method, response)
    except signin.PolicyBlock as block:
        raise await evidence.failure(block) from None


def judge(ctx: ProbeContext, target: Target, mailbox: str, method: AuthMethod, response: HttpResponse) -> str:
    """The detail line of a mailbox EWS opened, or the failure its answer shows (PolicyBlock for a bare 403)."""
    try:
        signin.ews_result(ctx, target, response, mailbox, signin.app_access_hint(ctx, target, mailbox), method)
    except ProbeFailure as failure:
        failure.hint = failure.hint or _hint(ctx, target, failure.reason, mailbox)
        raise
    return f"inbox opened as {mailbox} ({method.value})"


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    method = signin.method_for(ctx.config, target)
    evidence = signin.OrganisationEvidence(ctx, target)
    units = [
        Unit(
            f"impersonate {mailbox}",
            {"mailbox": mailbox},
            partial(_impersonate, ctx, target, mailbox, method, evidence),
        )
        for mailbox in target.mailboxes
    ]
    await each(ctx, units, SUCCESS)
    return ctx.rec.passed()


async def sweep_mailbox(ctx: ProbeContext, target: Target, mailbox: str) -> str:
    """One mailbox of a population sweep: the same request and verdict as the scheduled check's."""
    evidence = signin.OrganisationEvidence(ctx, target)
    return await _impersonate(ctx, target, mailbox, signin.method_for(ctx.config, target), evidence)


CHECK = Check(
    "impersonation", probe, _applies, (SUCCESS,), uses_credential=True, requests=per_mailbox, per_mailbox=True,
    sweep=sweep_mailbox,
)  # fmt: skip
