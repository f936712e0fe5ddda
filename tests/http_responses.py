"""An HTTP answer as the HTTP clients hand it to the checks, built from a status, a body and headers."""

from __future__ import annotations

from exporter.protocol.http_client import HttpResponse


def response(status: int, body: bytes = b"", **headers: str | list[str]) -> HttpResponse:
    pairs = tuple(
        (name.replace("_", "-"), value)
        for name, values in headers.items()
        for value in (values if isinstance(values, list) else [values])
    )
    return HttpResponse(status, pairs, body, "https://mail.corp.example.com/EWS/Exchange.asmx")
