"""Graph's JSON answers read off the wire: the error envelope and the object a success carries.

The error shape is Microsoft's (Microsoft Graph error responses and resource types,
https://learn.microsoft.com/graph/errors): ``{"error": {"code", "message", "innerError"}}``.
"""

from __future__ import annotations

import pytest
from http_responses import response

from exporter.protocol.graph_wire import MAX_MESSAGE_CHARS, GraphError, graph_error, json_object
from exporter.results import ProbeFailure, Reason

DENIED = (
    b'{"error": {"code": "ErrorAccessDenied", "message": "Access is denied. Check credentials and try again.",'
    b' "innerError": {"date": "2024-05-02T09:12:30", "request-id": "8d8b1c6e", "client-request-id": "8d8b1c6e"}}}'
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(DENIED, GraphError("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
                     id="microsoft-envelope"),
        pytest.param(b'{"error": {"code": "Authorization_RequestDenied"}}',
                     GraphError("Authorization_RequestDenied", ""), id="code-only"),
        pytest.param(b'{"error": {"code": "x", "message": "' + b"m" * 500 + b'"}}',
                     GraphError("x", "m" * MAX_MESSAGE_CHARS), id="message-bounded"),
        pytest.param(b"", GraphError("", ""), id="empty-body"),
        pytest.param(b"<html>Service Unavailable</html>", GraphError("", ""), id="not-json"),
        pytest.param(b"[1, 2]", GraphError("", ""), id="json-array"),
        pytest.param(b'{"error": "invalid_grant"}', GraphError("", ""), id="error-not-an-object"),
        pytest.param(b'{"value": []}', GraphError("", ""), id="no-error-member"),
    ],
)  # fmt: skip
def test_graph_error_reads_the_envelope_or_nothing(body: bytes, expected: GraphError) -> None:
    assert graph_error(response(403, body)) == expected


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(200, b'{"id": "AAMkAGI2", "totalItemCount": 2}', {"id": "AAMkAGI2", "totalItemCount": 2},
                     id="object"),
        pytest.param(201, b'{"id": "sub-1"}', {"id": "sub-1"}, id="created"),
        pytest.param(204, b"", {}, id="no-content"),
        pytest.param(202, b"", {}, id="accepted-empty-body"),
    ],
)  # fmt: skip
def test_json_object_of_a_success(status: int, body: bytes, expected: dict[str, object]) -> None:
    assert json_object(response(status, body)) == expected


@pytest.mark.parametrize(
    "body",
    [pytest.param(b"<html/>", id="not-json"), pytest.param(b'["a"]', id="array"), pytest.param(b"null", id="null")],
)
def test_a_success_without_a_json_object_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(ProbeFailure) as failure:
        json_object(response(200, body))
    assert failure.value.reason == Reason.BAD_RESPONSE
    assert "HTTP 200 without a JSON object" in str(failure.value)
