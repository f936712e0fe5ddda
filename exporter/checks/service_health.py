"""``service_health``: Microsoft 365 Service Health as Microsoft reports it, to tell Microsoft's incidents from yours.

Through Graph's service communications API (``protocol/service_announcements``, which cites Microsoft's
reference), as BEMS's Entra app with the application permission ``ServiceHealth.Read.All``: the status of
Exchange Online, Microsoft Entra (Identity Service) and what stands for Microsoft Graph, and the issues
(incidents and advisories) Microsoft has not resolved yet. The check passes when it could read them, whatever
they say: an incident is Microsoft's, not a failure of the deployment; the alerts decide what it explains.

Service health is the tenant's, not a target's: the check runs once per Entra credential, on its first
online ``graph`` target (in configuration order), so several Graph targets of one app ask Microsoft once.
A 403 (no ``ServiceHealth.Read.All``) is ``service_health_not_permitted``, with the grant in the hint; a 429
holds the app's Graph requests on that host for ``Retry-After``, as every Graph call does (``signin``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..config import Config, EntraCredential, Exchange, Kind, Target
from ..metrics import MetricSpec
from ..protocol import service_announcements as announcements
from ..protocol.graph_wire import graph_error
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext

MAX_ISSUE_PAGES = 5  # 100 issues a page: more unresolved ones than that is no longer news
MAX_ISSUE_SERIES = 20  # the most recent active issues exported as bems_m365_issue_info

SERVICE_STATUS = MetricSpec(
    "bems_m365_service_status",
    "1 for the Microsoft 365 Service Health status of a service BEMS depends on (m365_service: Microsoft's name for "
    "it; status: serviceHealthStatus), 0 for the other statuses; cached, refreshed every interval.",
    labels=("m365_service", "status"),
)
ACTIVE_ISSUES = MetricSpec(
    "bems_m365_active_issues",
    "Unresolved Microsoft 365 Service Health issues of the service (classification: incident, advisory).",
    labels=("m365_service", "classification"),
)
ISSUE_INFO = MetricSpec(
    "bems_m365_issue_info",
    f"An unresolved Microsoft 365 Service Health issue (id, title) of a service BEMS depends on; the "
    f"{MAX_ISSUE_SERIES} most recent only.",
    "info",
    labels=("m365_service", "id", "classification", "title"),
)

NOT_PERMITTED_HINT = (
    "let the exporter read Microsoft 365 Service Health: grant the Entra app {app} the Microsoft Graph application "
    "permission ServiceHealth.Read.All (App registrations > API permissions > Add a permission > Microsoft Graph > "
    "Application permissions) and grant admin consent, or with the Azure CLI: az ad app permission add --id {app} "
    "--api 00000003-0000-0000-c000-000000000000 --api-permissions 79c261e0-fe76-4144-aad5-bdc68fbe4037=Role, then "
    "az ad app permission admin-consent --id {app}. Nothing of BEMS depends on it"
)


def _credential(config: Config, target: Target) -> EntraCredential | None:
    credential = config.credentials.get(target.credential or "")
    return credential if isinstance(credential, EntraCredential) else None


def _applies(config: Config, target: Target) -> bool:
    def eligible(t: Target) -> bool:
        return t.kind == Kind.GRAPH and t.exchange == Exchange.ONLINE and _credential(config, t) is not None

    first = next((t for t in config.targets if eligible(t) and t.credential == target.credential), None)
    return first is not None and first.name == target.name


async def _read(ctx: ProbeContext, target: Target, url: str, what: str) -> dict[str, Any]:
    try:
        async with asyncio.timeout(ctx.timeout):
            response = await signin.graph_get(ctx, target, url)
    except TimeoutError:
        raise ProbeFailure(Reason.TIMEOUT, f"{what}: no answer within {ctx.timeout:g}s") from None
    if response.status == 403:
        code, message = graph_error(response)
        credential = _credential(ctx.config, target)
        raise ProbeFailure(
            Reason.SERVICE_HEALTH_NOT_PERMITTED,
            f"{what}: Graph refuses the app ({code or 'HTTP 403'}: {message}); it needs {announcements.PERMISSION}",
            NOT_PERMITTED_HINT.format(app=credential.client_id if credential else "<app id>"),
        )
    if response.status == 404:
        raise ProbeFailure(Reason.BAD_RESPONSE, f"{what}: HTTP 404 {' '.join(graph_error(response))}".strip())
    return signin.graph_answer(ctx, target, url, "", response)


async def _overviews(ctx: ProbeContext, target: Target) -> list[announcements.ServiceHealth]:
    async with ctx.rec.step("Microsoft 365 service health (healthOverviews)") as detail:
        answer = await _read(ctx, target, announcements.overviews_url(target.url), "healthOverviews")
        services = announcements.read_overviews(answer)
        detail.append(", ".join(f"{s.service}: {s.status}" for s in services) or "none of the watched services")
    for service in services:
        for status in announcements.SERVICE_STATUSES:
            ctx.rec.measure(
                SERVICE_STATUS, float(status == service.status), m365_service=service.service, status=status
            )
    return services


async def _unresolved_issues(ctx: ProbeContext, target: Target, services: set[str]) -> list[announcements.Issue]:
    async with ctx.rec.step("unresolved service health issues") as detail:
        url: str | None = announcements.issues_url(target.url)
        issues: list[announcements.Issue] = []
        pages = 0
        while url is not None and pages < MAX_ISSUE_PAGES:
            answer = await _read(ctx, target, url, "issues")
            issues += announcements.read_issues(answer, services)
            url, pages = announcements.next_link(answer, target.url), pages + 1
        more = f" (stopped after {pages} pages)" if url is not None else ""
        detail.append(f"{len(issues)} unresolved issues of the watched services{more}")
    return issues


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    services = await _overviews(ctx, target)
    issues = await _unresolved_issues(ctx, target, {s.service for s in services})
    for service in services:
        for classification in announcements.CLASSIFICATIONS:
            count = sum(1 for i in issues if i.service == service.service and i.classification == classification)
            ctx.rec.measure(ACTIVE_ISSUES, float(count), m365_service=service.service, classification=classification)
    for issue in sorted(issues, key=lambda i: (i.start, i.id), reverse=True)[:MAX_ISSUE_SERIES]:
        ctx.rec.measure(
            ISSUE_INFO, 1.0, m365_service=issue.service, id=issue.id, classification=issue.classification,
            title=issue.title,
        )  # fmt: skip
    return ctx.rec.passed()


CHECK = Check(
    "service_health", probe, _applies, (SERVICE_STATUS, ACTIVE_ISSUES, ISSUE_INFO), uses_credential=True,
    requests=lambda _config, _target: 1 + MAX_ISSUE_PAGES,
)  # fmt: skip
