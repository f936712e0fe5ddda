"""Microsoft 365 Service Health through Graph's service communications API (``/admin/serviceAnnouncement``).

Two reads, each with the application permission ``ServiceHealth.Read.All`` (Microsoft Graph reference,
"List healthOverviews" and "List issues", learn.microsoft.com/graph/api/serviceannouncement-list-healthoverviews
and serviceannouncement-list-issues):

    GET /v1.0/admin/serviceAnnouncement/healthOverviews
    {"@odata.context": "...", "value": [{"service": "Exchange Online", "status": "ServiceOperational",
                                         "id": "Exchange"}, ...]}

    GET /v1.0/admin/serviceAnnouncement/issues?$filter=isResolved eq false
    {"@odata.context": "...", "@odata.nextLink": ".../issues?$skip=100",
     "value": [{"id": "EX226792", "title": "...", "service": "Exchange Online", "classification": "Incident",
                "status": "ServiceRestored", "isResolved": true, "startDateTime": "2020-11-13T21:00:00Z", ...}]}

The resources (serviceHealth, serviceHealthIssue: learn.microsoft.com/graph/api/resources/servicehealth and
servicehealthissue) list the enums: ``status`` one of ``SERVICE_STATUSES``, ``classification`` ``advisory``,
``incident`` or ``unknownFutureValue``; the examples spell them in PascalCase (``ServiceOperational``,
``Incident``), so values are matched without regard to case and exported in the reference's spelling.
Issues are paged, 100 a page, by ``@odata.nextLink``.

Which services BEMS depends on (``WATCHED``): the reference's example names ``Exchange`` (Exchange Online) and
``OrgLiveID`` (shown as "Identity Service": Microsoft Entra sign-in). Microsoft documents no service id for
Microsoft Graph itself; Graph's own incidents are taken to be posted under ``OSDPPlatform`` ("Microsoft 365
suite"), the cross-service entry of the same example [UNVERIFIED: where Microsoft posts a Graph API incident].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ..results import ProbeFailure, Reason

HEALTH_OVERVIEWS_PATH = "/admin/serviceAnnouncement/healthOverviews"
ISSUES_PATH = "/admin/serviceAnnouncement/issues"
UNRESOLVED_FILTER = "isResolved eq false"
PERMISSION = "ServiceHealth.Read.All"

# Service id -> what it stands for in BEMS's path (the module doc says why OSDPPlatform stands for Graph).
WATCHED = {"Exchange": "Exchange Online", "OrgLiveID": "Microsoft Entra (Identity Service)",
           "OSDPPlatform": "Microsoft Graph (Microsoft 365 suite)"}  # fmt: skip
# serviceHealthStatus, in the reference's spelling (learn.microsoft.com/graph/api/resources/servicehealth).
SERVICE_STATUSES = (
    "serviceOperational", "investigating", "restoringService", "verifyingService", "serviceRestored",
    "postIncidentReviewPublished", "serviceDegradation", "serviceInterruption", "extendedRecovery", "falsePositive",
    "investigationSuspended", "resolved", "mitigatedExternal", "mitigated", "resolvedExternal", "confirmed",
    "reported", "unknownFutureValue",
)  # fmt: skip
OPERATIONAL = "serviceOperational"
CLASSIFICATIONS = ("incident", "advisory", "unknownFutureValue")  # serviceHealthClassificationType
MAX_TITLE_CHARS = 120  # a label value: bounded, whatever Microsoft posts


def _spelled(value: Any, known: tuple[str, ...]) -> str:
    """``value`` in the reference's spelling; ``unknownFutureValue`` (Graph's own catch-all) for anything else."""
    text = str(value or "").casefold()
    return next((name for name in known if name.casefold() == text), "unknownFutureValue")


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    id: str
    service: str  # Microsoft's name for it ("Exchange Online"), the m365_service label
    status: str  # one of SERVICE_STATUSES


@dataclass(frozen=True, slots=True)
class Issue:
    id: str
    service: str
    classification: str  # one of CLASSIFICATIONS
    title: str
    start: str  # startDateTime as sent (ISO 8601 sorts by time)


def overviews_url(graph_url: str) -> str:
    return graph_url.rstrip("/") + HEALTH_OVERVIEWS_PATH


def issues_url(graph_url: str) -> str:
    return f"{graph_url.rstrip('/')}{ISSUES_PATH}?$filter={quote(UNRESOLVED_FILTER)}"


def values(answer: dict[str, Any], what: str) -> list[dict[str, Any]]:
    found = answer.get("value")
    if not isinstance(found, list):
        raise ProbeFailure(Reason.BAD_RESPONSE, f"{what}: HTTP 200 without a value collection")
    return [item for item in found if isinstance(item, dict)]


def read_overviews(answer: dict[str, Any]) -> list[ServiceHealth]:
    """The watched services the tenant is subscribed to (others are not BEMS's business)."""
    return [
        ServiceHealth(str(item["id"]), str(item.get("service") or WATCHED[item["id"]]),
                      _spelled(item.get("status"), SERVICE_STATUSES))
        for item in values(answer, "healthOverviews") if item.get("id") in WATCHED
    ]  # fmt: skip


def read_issues(answer: dict[str, Any], services: set[str]) -> list[Issue]:
    """The unresolved issues of ``services`` (names) on one page; the filter is applied again here, so that
    a resolved issue can never show as active whatever the server made of ``$filter``."""
    return [
        Issue(str(item.get("id", "")), str(item["service"]), _spelled(item.get("classification"), CLASSIFICATIONS),
              " ".join(str(item.get("title", "")).split())[:MAX_TITLE_CHARS], str(item.get("startDateTime", "")))
        for item in values(answer, "issues")
        if item.get("isResolved") is not True and item.get("service") in services and item.get("id")
    ]  # fmt: skip


def next_link(answer: dict[str, Any], graph_url: str) -> str | None:
    """The next page's URL, which must stay on the Graph origin the token is for (else ``bad_response``)."""
    link = answer.get("@odata.nextLink")
    if link is None:
        return None
    here, there = urlsplit(graph_url), urlsplit(str(link))
    if (there.scheme, there.netloc) != (here.scheme, here.netloc):
        raise ProbeFailure(
            Reason.BAD_RESPONSE, f"@odata.nextLink points away from {here.scheme}://{here.netloc}: not followed"
        )
    return str(link)
