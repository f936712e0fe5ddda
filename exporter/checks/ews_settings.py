"""``ews_settings``: the tenant's EWS controls, read before the retirement of EWS in Exchange Online bites.

For each online EWS target, through the Exchange Online admin REST API (``protocol/exchange_admin_api``) as
BEMS's Entra app: ``Get-OrganizationConfig`` (EwsEnabled, EwsApplicationAccessPolicy, EwsAllowList/BlockList,
EwsAllowedAppIDs) and ``Get-CASMailbox -Identity <mailbox>`` for each probe mailbox (EwsEnabled). It needs
the app permission ``Exchange.ManageAsApp`` and a read-only Exchange role; without them the API answers 401
or 403, which is ``admin_api_not_permitted``: the exporter cannot see the settings, EWS itself is not judged.

What the settings mean (Microsoft's rules, cited where they are used):

- since 2025-04-01 EWS is allowed for a mailbox only when neither the organisation's nor the mailbox's
  EwsEnabled is False (Message Center MC1015893, "The way to control EWS usage in Exchange Online is changing");
- with the organisation's EwsEnabled True, only the app ids in EwsAllowedAppIDs may use EWS; False blocks all;
  unset, the list has no effect (Set-OrganizationConfig reference, -EwsAllowedAppIDs, 2026-06). An empty list
  is taken as not enforced yet: Microsoft fills empty lists from observed usage in September 2026 (Exchange
  Team blog) [UNVERIFIED: how an empty list behaves before that];
- at the tenant-by-tenant disablement (``EWS_RETIREMENT``), an unset EwsEnabled becomes False; a tenant keeps
  EWS only with EwsEnabled True and an allow list, so BEMS survives it only when its app id is listed;
- EwsApplicationAccessPolicy with EwsAllowList/EwsBlockList matches user agents, not app ids ("The existing
  EWSAllowList feature has operated based on User Agent rather than App ID", Exchange Team blog on
  EWSAllowedAppIDs): it is exported, not judged against BEMS.

The check fails with ``ews_disabled`` when the settings block BEMS's app now, for the organisation or a probe
mailbox; that BEMS would not survive the disablement is a metric (``bems_ews_app_allowed{stage=
"after_disablement"}``) and an alert, not a failure: EWS still works. Requests are the app's, under the
credential's concurrency limit; a 429 holds the back-off for its ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime

from ..config import AuthMethod, Config, EntraCredential, Exchange, Kind, Target
from ..metrics import MetricSpec
from ..protocol import exchange_admin_api as admin_api
from ..protocol.entra_tokens import Resource
from ..protocol.http_client import HttpResponse
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext
from .mailboxes import per_mailbox


@dataclass(frozen=True, slots=True)
class Milestone:
    name: str  # the ``milestone`` label
    day: date  # from 00:00 UTC
    meaning: str


# Microsoft's published dates, as of 2026-06: the Exchange Team blog "Exchange Online EWS, Your Time is Almost
# Up" (2026-02, cited by learn.microsoft.com how-to-control-access-to-ews-in-exchange, updated 2026-06) and
# Message Center MC1227454. A newer release updates this table when Microsoft moves a date.
EWS_RETIREMENT = (
    Milestone("disablement", date(2026, 10, 1), "tenant-by-tenant: an unset EwsEnabled becomes False; with True "
              "only the app ids in EwsAllowedAppIDs keep EWS"),
    Milestone("shutdown", date(2027, 4, 1), "EWS in Exchange Online is switched off for good; the controls go"),
)  # fmt: skip
DISABLEMENT, SHUTDOWN = EWS_RETIREMENT
STATES = {True: "true", False: "false", None: "unset"}
POLICIES = ("EnforceAllowList", "EnforceBlockList", "none")

RETIREMENT = MetricSpec(
    "bems_ews_retirement_timestamp_seconds",
    "When Microsoft's published EWS retirement milestone takes effect in Exchange Online (milestone: disablement, "
    "shutdown; Unix time, from the exporter's dated table).",
    labels=("milestone",),
)
ORGANIZATION_ENABLED = MetricSpec(
    "bems_ews_organization_enabled_setting",
    "1 for the value of the organisation's EwsEnabled (state: true, false, unset) in the last ews_settings check.",
    labels=("state",),
)
MAILBOX_ENABLED = MetricSpec(
    "bems_ews_mailbox_enabled_setting",
    "1 for the value of the probe mailbox's EwsEnabled (Get-CASMailbox; state: true, false, unset).",
    labels=("mailbox", "state"),
)
ACCESS_POLICY = MetricSpec(
    "bems_ews_application_access_policy",
    "1 for the organisation's EwsApplicationAccessPolicy (policy: EnforceAllowList, EnforceBlockList, none); its "
    "lists match user agents, not app ids.",
    labels=("policy",),
)
APP_ALLOWED = MetricSpec(
    "bems_ews_app_allowed",
    "1 if the organisation's EWS settings admit BEMS's app id (stage: now, after_disablement: once an unset "
    "EwsEnabled becomes False and only EwsAllowedAppIDs keep EWS).",
    labels=("stage",),
)
MAILBOX_ALLOWED = MetricSpec(
    "bems_ews_mailbox_allowed",
    "1 if neither the organisation's nor the mailbox's EwsEnabled is False (both must allow EWS, MC1015893).",
    labels=("mailbox",),
)

NOT_PERMITTED_HINT = (
    "let the exporter read the tenant's EWS settings: grant the Entra app {app} the application permission "
    "Exchange.ManageAsApp (App registrations > API permissions > APIs my organization uses > Office 365 Exchange "
    "Online > Application permissions) with admin consent, and a read-only role: in Exchange Online "
    "New-ServicePrincipal -AppId {app} -ObjectId <enterprise application object id>, then Add-RoleGroupMember "
    '-Identity "View-Only Organization Management" -Member {app} (it holds View-Only Configuration for '
    "Get-OrganizationConfig and View-Only Recipients for Get-CASMailbox), or the Entra role Global Reader. "
    "EWS itself is not affected"
)
APP_NOT_ALLOWED_HINT = (
    "Set-OrganizationConfig -EwsEnabled $true -EwsAllowedAppIDs <the current list>,{app}: with EwsEnabled true "
    "only listed app ids may use EWS, and from {disablement} an unset EwsEnabled becomes false. Move BEMS to "
    "Microsoft Graph before {shutdown}, when EWS goes for good"
)
MAILBOX_HINT = (
    "Set-CASMailbox {mailbox} -EwsEnabled $null (or $true); since April 2025 EWS needs both the organisation's and "
    "the mailbox's EwsEnabled to allow it (MC1015893). Or move the mailbox's BEMS users to Graph"
)


def _applies(config: Config, target: Target) -> bool:
    credential = config.credentials.get(target.credential or "")
    return target.kind == Kind.EWS and target.exchange == Exchange.ONLINE and isinstance(credential, EntraCredential)


def _credential(ctx: ProbeContext, target: Target) -> EntraCredential:
    credential = ctx.config.credentials[target.credential or ""]
    assert isinstance(credential, EntraCredential)
    return credential


def midnight_utc(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def app_allowed(org: admin_api.OrganizationEws, app_id: str) -> dict[str, bool]:
    """Whether the organisation's settings admit ``app_id`` now and after the disablement (module doc)."""
    listed = app_id.lower() in org.allowed_app_ids
    now = org.enabled is not False and (org.enabled is None or not org.allowed_app_ids or listed)
    return {"now": now, "after_disablement": org.enabled is True and listed}


async def _invoke(ctx: ProbeContext, target: Target, cmdlet: str, anchor: str, **parameters: str) -> HttpResponse:
    credential = _credential(ctx, target)
    url = admin_api.invoke_url(target.url, credential.tenant_id)
    body, headers = admin_api.request(cmdlet, anchor, parameters)
    try:
        async with asyncio.timeout(ctx.timeout):
            response = await signin.send(
                ctx, target, url, method=AuthMethod.OAUTH, body=body, headers=headers, scope=Resource.EXCHANGE
            )
    except TimeoutError:
        raise ProbeFailure(Reason.TIMEOUT, f"{cmdlet}: no answer within {ctx.timeout:g}s") from None
    if response.status in (401, 403):
        raise ProbeFailure(
            Reason.ADMIN_API_NOT_PERMITTED,
            f"{cmdlet}: the admin API refuses the app (HTTP {response.status}, {admin_api.error_of(response)})",
            NOT_PERMITTED_HINT.format(app=credential.client_id),
        )
    if response.status == 429:
        given = signin.retry_after(response)
        seconds = signin.GRAPH_DEFAULT_RETRY_AFTER if given is None else given
        signin.hold_off(ctx, target, url, seconds)
        raise ProbeFailure(
            Reason.THROTTLED, f"{cmdlet}: the admin API throttles the app, retry after {seconds:g} s",
            "the exporter reads the settings once per interval: lengthen the target's interval if "
            "other admin tools share the app",
        )  # fmt: skip
    if response.status == 404 and cmdlet == admin_api.CAS_MAILBOX:
        raise ProbeFailure(
            Reason.MAILBOX_NOT_FOUND,
            f"{cmdlet} -Identity {parameters.get('Identity')}: {admin_api.error_of(response)}",
            "check the address (Get-EXOMailbox <address>): the mailbox must be in Exchange Online",
        )  # fmt: skip
    if response.status != 200:
        raise ProbeFailure(Reason.BAD_RESPONSE, f"{cmdlet}: unexpected {admin_api.error_of(response)}")
    return response


async def _organization(ctx: ProbeContext, target: Target) -> admin_api.OrganizationEws:
    tenant = _credential(ctx, target).tenant_id
    async with ctx.rec.step(f"{admin_api.ORGANIZATION_CONFIG} (EWS settings)") as detail:
        response = await _invoke(ctx, target, admin_api.ORGANIZATION_CONFIG, admin_api.system_anchor(tenant))
        org = admin_api.OrganizationEws.read(admin_api.first_object(response, admin_api.ORGANIZATION_CONFIG))
        detail.append(
            f"EwsEnabled {STATES[org.enabled]}, EwsAllowedAppIDs {len(org.allowed_app_ids)} app ids, "
            f"EwsApplicationAccessPolicy {org.access_policy or 'none'}"
        )
    for state in STATES.values():
        ctx.rec.measure(ORGANIZATION_ENABLED, 1.0 if STATES[org.enabled] == state else 0.0, state=state)
    for policy in POLICIES:
        ctx.rec.measure(ACCESS_POLICY, 1.0 if (org.access_policy or "none") == policy else 0.0, policy=policy)
    return org


async def _mailbox(ctx: ProbeContext, target: Target, org: admin_api.OrganizationEws, mailbox: str) -> str | None:
    """The mailbox's measurements; a failure message when EWS is blocked for it, None when allowed."""
    async with ctx.rec.step(f"{admin_api.CAS_MAILBOX} {mailbox} (EwsEnabled)") as detail:
        response = await _invoke(ctx, target, admin_api.CAS_MAILBOX, mailbox, Identity=mailbox)
        enabled = admin_api.tristate(admin_api.first_object(response, admin_api.CAS_MAILBOX).get("EwsEnabled"))
        detail.append(f"EwsEnabled {STATES[enabled]}")
    for state in STATES.values():
        ctx.rec.measure(MAILBOX_ENABLED, 1.0 if STATES[enabled] == state else 0.0, mailbox=mailbox, state=state)
    allowed = org.enabled is not False and enabled is not False
    ctx.rec.measure(MAILBOX_ALLOWED, 1.0 if allowed else 0.0, mailbox=mailbox)
    return None if allowed or org.enabled is False else mailbox


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    for milestone in EWS_RETIREMENT:
        ctx.rec.measure(RETIREMENT, midnight_utc(milestone.day), milestone=milestone.name)
    app_id = _credential(ctx, target).client_id
    org = await _organization(ctx, target)
    allowed = app_allowed(org, app_id)
    for stage, admitted in allowed.items():
        ctx.rec.measure(APP_ALLOWED, 1.0 if admitted else 0.0, stage=stage)
    blocked = [m for mailbox in target.mailboxes if (m := await _mailbox(ctx, target, org, mailbox)) is not None]
    dates = {"disablement": DISABLEMENT.day.isoformat(), "shutdown": SHUTDOWN.day.isoformat()}
    if not allowed["now"]:
        why = "EwsEnabled is false" if org.enabled is False else f"EwsAllowedAppIDs does not list the app {app_id}"
        raise ProbeFailure(
            Reason.EWS_DISABLED, f"the organisation's settings block BEMS's EWS: {why}",
            APP_NOT_ALLOWED_HINT.format(app=app_id, **dates),
        )  # fmt: skip
    if blocked:
        raise ProbeFailure(
            Reason.EWS_DISABLED,
            f"EwsEnabled is false for {len(blocked)} of {len(target.mailboxes)} probe mailboxes: {', '.join(blocked)}",
            MAILBOX_HINT.format(mailbox=blocked[0]),
        )
    return ctx.rec.passed()


def _requests(config: Config, target: Target) -> int:
    return per_mailbox(config, target) + 1  # and the organisation's settings


CHECK = Check(
    "ews_settings", probe, _applies,
    (RETIREMENT, ORGANIZATION_ENABLED, MAILBOX_ENABLED, ACCESS_POLICY, APP_ALLOWED, MAILBOX_ALLOWED),
    uses_credential=True, requests=_requests, per_mailbox=True,
)  # fmt: skip
