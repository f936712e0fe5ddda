"""``notification_url``: BEMS' External Notification URL answers Graph's validation handshake.

The check sends what Graph sends before it delivers anything (``POST ...?validationToken=X``,
``text/plain``) and requires BEMS to echo ``X`` as Graph does: a 200 with ``text/plain`` and the decoded
token as the body. It tests the path from the Internet through the reverse proxy to BEMS'
``/notificationClient`` without touching a mailbox.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode, urlsplit, urlunsplit

from ..config import Config, Kind, Target
from ..metrics import MetricSpec
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext

SUCCESS = MetricSpec(
    "bems_notification_url_success",
    "1 if the BEMS notification URL echoed the validation token in the last check.",
    per_target=False, labels=("target",),
)  # fmt: skip
HINT = (
    "Graph cannot validate BEMS' notification URL: check the reverse proxy's rule forwarding /notificationClient "
    "to BEMS on port 8443, its certificate, and that BEMS' push notification service runs"
)


def _applies(_config: Config, target: Target) -> bool:
    return target.kind == Kind.NOTIFICATION_URL


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query + urlencode({"validationToken": token}), ""))


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    token = f"bems-exchange-exporter {secrets.token_urlsafe(24)}"  # a space, as Graph's tokens need decoding
    ok = False
    try:
        async with ctx.rec.step(f"validation request to {target.url}") as detail:
            response = await signin.send(
                ctx, target, _with_token(target.url, token), method=None, body=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )  # fmt: skip
            content_type = (response.header("Content-Type") or "").split(";")[0].strip().lower()
            if response.status != 200:
                raise ProbeFailure(Reason.BAD_RESPONSE, f"HTTP {response.status} instead of 200", HINT)
            if response.body.decode("utf-8", "replace") != token:
                raise ProbeFailure(Reason.BAD_RESPONSE, "the validation token was not echoed back", HINT)
            if content_type != "text/plain":
                raise ProbeFailure(
                    Reason.BAD_RESPONSE, f"the echo is {content_type or 'untyped'}, not text/plain", HINT
                )
            detail.append("token echoed as Graph requires")
        ok = True
    finally:
        ctx.rec.measure(SUCCESS, 1.0 if ok else 0.0, target=target.name)
    return ctx.rec.passed()


CHECK = Check("notification_url", probe, _applies, (SUCCESS,))
