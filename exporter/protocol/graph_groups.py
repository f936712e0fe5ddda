"""A population from an Entra ID group: its user members at any depth, through Microsoft Graph.

``GET /groups/{id}/transitiveMembers/microsoft.graph.user`` returns the flat list of the group's members
with nested groups expanded, cast to users (learn.microsoft.com/graph/api/group-list-transitivemembers;
application permission GroupMember.Read.All). Graph pages the answer: each page's ``@odata.nextLink`` is
the URL of the next, followed until a page has none (learn.microsoft.com/graph/paging). A 429's
``Retry-After`` is returned to the caller as the back-off to honour.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from ..results import ProbeFailure, Reason
from .http_client import HttpResponse
from .population_sources import SourceError, SourceReason, is_address, unique_addresses

PAGE_SIZE = 999  # the largest $top that directory-object collections accept
MAX_PAGES = 1000  # a million members: past that, a nextLink loop rather than a group
PERMISSION_HINT = "grant the app the GroupMember.Read.All application permission (admin consent) in Entra ID"

# How a failed request reads as a source's state (anything else: the network's, so unreachable).
_TRANSPORT_REASONS = {
    Reason.TIMEOUT: SourceReason.TIMEOUT,
    Reason.TLS: SourceReason.TLS,
    Reason.CERTIFICATE: SourceReason.TLS,
    Reason.TOKEN: SourceReason.TOKEN,
    Reason.BAD_RESPONSE: SourceReason.BAD_RESPONSE,
}

Get = Callable[[str], Awaitable[HttpResponse]]  # a signed-in GET of a Graph URL


def first_page_url(graph_url: str, group_id: str) -> str:
    return (
        f"{graph_url.rstrip('/')}/groups/{quote(group_id, safe='')}/transitiveMembers/microsoft.graph.user"
        f"?$select=mail,userPrincipalName&$top={PAGE_SIZE}"
    )


class GraphThrottled(SourceError):
    def __init__(self, seconds: float) -> None:
        super().__init__(SourceReason.THROTTLED, f"Graph asked to back off for {seconds:g} s (HTTP 429)")
        self.seconds = seconds


def _retry_after(response: HttpResponse) -> float:
    try:
        return max(1.0, float(response.header("Retry-After") or 0))
    except ValueError:
        return 60.0  # an HTTP date or garbage: a minute, as Graph's own guidance waits when it says nothing


def _page(response: HttpResponse, group_id: str) -> dict[str, object]:
    if response.status == 429:
        raise GraphThrottled(_retry_after(response))
    if response.status in (401, 403):
        raise SourceError(SourceReason.FORBIDDEN, f"Graph refused to list group {group_id} (HTTP {response.status})",
                          PERMISSION_HINT)  # fmt: skip
    if response.status == 404:
        raise SourceError(SourceReason.NOT_FOUND, f"Graph has no group {group_id}", "check group_id (the object id)")
    if response.status != 200:
        raise SourceError(SourceReason.BAD_RESPONSE, f"Graph answered HTTP {response.status} for group {group_id}")
    try:
        page = json.loads(response.body)
    except ValueError:
        page = None
    if not isinstance(page, dict) or not isinstance(page.get("value"), list):
        raise SourceError(SourceReason.BAD_RESPONSE, "Graph's answer has no value list")
    return page


async def transitive_members(get: Get, graph_url: str, group_id: str) -> tuple[str, ...]:
    """Every address (``mail``) of the group's users at any depth; users without a mailbox have none."""
    url: str | None = first_page_url(graph_url, group_id)
    found: list[str] = []
    for _ in range(MAX_PAGES):
        if url is None:
            break
        try:
            page = _page(await get(url), group_id)
        except ProbeFailure as failure:
            reason = _TRANSPORT_REASONS.get(failure.reason, SourceReason.UNREACHABLE)
            raise SourceError(reason, failure.message, failure.hint) from None
        found += [str(user["mail"]) for user in page["value"]
                  if isinstance(user, dict) and is_address(str(user.get("mail") or ""))]  # fmt: skip
        next_link = page.get("@odata.nextLink")
        url = next_link if isinstance(next_link, str) else None
        if url is not None and urlsplit(url).netloc != urlsplit(graph_url).netloc:
            # The token goes with the request: never to another host than the configured Graph.
            raise SourceError(SourceReason.BAD_RESPONSE, f"Graph's nextLink leads to another host: {url[:100]}")
    else:
        raise SourceError(SourceReason.BAD_RESPONSE, f"more than {MAX_PAGES} pages: Graph's nextLink does not end")
    if not found:
        raise SourceError(SourceReason.EMPTY, f"group {group_id} has no member with a mailbox")
    return unique_addresses(found)
