"""Microsoft Graph's JSON answers: the object a success carries, and the error envelope of a failure.

Graph answers an error with a standard HTTP status and a JSON body holding one ``error`` object, whose
``code`` is the machine-readable error and ``message`` the text for people; ``innerError`` (request ids, date)
is support detail (Microsoft Graph error responses and resource types: https://learn.microsoft.com/graph/errors):

    {"error": {"code": "ErrorAccessDenied", "message": "Access is denied. Check credentials and try again.",
               "innerError": {"date": "...", "request-id": "...", "client-request-id": "..."}}}

What an error means for a check (which reason, which hint, whether to back off) is the checks' business.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from ..results import ProbeFailure, Reason
from .http_client import HttpResponse

# A server's message ends up in results, logs and the status page: bounded, whatever the server sends.
MAX_MESSAGE_CHARS = 200


class GraphError(NamedTuple):
    code: str  # e.g. ErrorAccessDenied, Authorization_RequestDenied; empty when the body is no error envelope
    message: str


def graph_error(response: HttpResponse) -> GraphError:
    """The ``{"error": {"code", "message"}}`` of a Graph answer, or empty strings for a body that is not one."""
    try:
        error = json.loads(response.body).get("error") or {}
        return GraphError(str(error.get("code", "")), str(error.get("message", ""))[:MAX_MESSAGE_CHARS])
    except (ValueError, AttributeError):  # not JSON, not an object, or an "error" that is not an object
        return GraphError("", "")


def json_object(response: HttpResponse) -> dict[str, Any]:
    """The JSON object of a successful Graph answer, empty for 204 No Content or an empty body; else bad_response."""
    if response.status == 204 or not response.body:
        return {}
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ProbeFailure(Reason.BAD_RESPONSE, f"HTTP {response.status} without a JSON object")
    return answer
