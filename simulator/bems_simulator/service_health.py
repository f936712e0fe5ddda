"""Microsoft 365 Service Health through Graph: ``/v1.0/admin/serviceAnnouncement/healthOverviews`` and ``issues``.

Shapes from Microsoft's Graph reference (learn.microsoft.com/graph/api/serviceannouncement-list-healthoverviews
and serviceannouncement-list-issues, resources serviceHealth and serviceHealthIssue): a collection
``{"@odata.context", "value": [...]}`` whose serviceHealth objects are ``{"service", "status", "id"}`` (the
reference's example: ``Exchange``/"Exchange Online", ``OrgLiveID``/"Identity Service", ``OSDPPlatform``/
"Microsoft 365 suite"), issues ``{"id", "title", "service", "classification", "status", "isResolved",
"startDateTime", ...}``; the examples spell enum values in PascalCase (``ServiceOperational``, ``Incident``).
Issues are paged: ``@odata.nextLink`` carries ``$skip``, as the reference's example does (default page 100).
Both need the application permission ``ServiceHealth.Read.All``; without it this answers 403
``Authorization_RequestDenied`` [UNVERIFIED: the code Graph's service communications API uses].

Only the ``$filter`` the exporter sends (``isResolved eq false``) is understood; any other is a 400.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

SERVICE_HEALTH_ROLE = "ServiceHealth.Read.All"
_UNRESOLVED_FILTER = re.compile(r"\s*isResolved\s+eq\s+false\s*", re.IGNORECASE)
_CONTEXT = "https://graph.microsoft.com/v1.0/$metadata#admin/serviceAnnouncement/"
# The tenant's subscribed services at the start: id -> service name (the reference's example, and one the
# exporter does not watch).
SERVICES = {
    "Exchange": "Exchange Online",
    "OrgLiveID": "Identity Service",
    "OSDPPlatform": "Microsoft 365 suite",
    "SharePoint": "SharePoint Online",
}
CLASSIFICATIONS = ("Incident", "Advisory")
DEFAULT_PAGE_SIZE = 100


class ServiceHealth:
    """The tenant's service health: each service's status, the issues Microsoft posted, the page size."""

    def __init__(self) -> None:
        self.statuses = dict.fromkeys(SERVICES, "ServiceOperational")
        self.issues: dict[str, dict[str, Any]] = {}
        self.page_size = DEFAULT_PAGE_SIZE

    def state(self) -> dict[str, Any]:
        return {"statuses": dict(self.statuses), "issues": dict(self.issues), "page_size": self.page_size}

    def set_status(self, service_id: str, status: str) -> None:
        """A service's overall status as Microsoft spells it (``ServiceDegradation``...); ValueError for a bad one."""
        if service_id not in SERVICES:
            raise ValueError(f"no service {service_id!r}: the tenant has {', '.join(SERVICES)}")
        if not isinstance(status, str) or not status:
            raise ValueError(f"status must be a status name such as ServiceDegradation, not {status!r}")
        self.statuses[service_id] = status

    def post_issue(
        self, issue_id: str, service_id: str, classification: str, title: str, resolved: bool = False
    ) -> dict[str, Any]:
        """Post (or update) an issue on ``service_id``; ValueError for an unknown service or classification."""
        if service_id not in SERVICES:
            raise ValueError(f"no service {service_id!r}: the tenant has {', '.join(SERVICES)}")
        if classification not in CLASSIFICATIONS:
            raise ValueError(f"classification must be one of {', '.join(CLASSIFICATIONS)}, not {classification!r}")
        if not isinstance(resolved, bool):
            raise ValueError(f"resolved must be true or false, not {resolved!r}")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        issue = {
            "startDateTime": now, "endDateTime": now if resolved else None, "lastModifiedDateTime": now,
            "title": title, "id": issue_id, "impactDescription": title, "classification": classification,
            "origin": "Microsoft", "status": "ServiceRestored" if resolved else "Investigating",
            "service": SERVICES[service_id], "feature": "", "featureGroup": "", "isResolved": resolved,
            "details": [], "posts": [],
        }  # fmt: skip
        self.issues[issue_id] = issue
        return issue

    def remove_issue(self, issue_id: str) -> None:
        if issue_id not in self.issues:
            raise ValueError(f"no issue {issue_id!r}")
        del self.issues[issue_id]

    def set_page_size(self, page_size: int) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a whole number, 1 or more, not {page_size!r}")
        self.page_size = page_size

    def health_overviews(self) -> dict[str, Any]:
        value = [{"service": SERVICES[i], "status": status, "id": i} for i, status in self.statuses.items()]
        return {"@odata.context": _CONTEXT + "healthOverviews", "value": value}

    def issue_page(self, request: web.Request) -> dict[str, Any] | None:
        """One page of ``issues`` for the request's ``$filter`` and ``$skip``; None for a filter not understood."""
        url = request.url
        query_filter = url.query.get("$filter")
        if query_filter is not None and not _UNRESOLVED_FILTER.fullmatch(query_filter):
            return None
        issues = [i for i in self.issues.values() if query_filter is None or not i["isResolved"]]
        given_skip = url.query.get("$skip", "0")
        skip = int(given_skip) if given_skip.isdigit() else 0
        page: dict[str, Any] = {"@odata.context": _CONTEXT + "issues"}
        if skip + self.page_size < len(issues):
            page["@odata.nextLink"] = str(url.update_query({"$skip": str(skip + self.page_size)}))
        page["value"] = issues[skip : skip + self.page_size]
        return page
