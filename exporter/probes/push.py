"""``push``: Exchange actually delivers mailbox events to a subscriber, as BEMS needs.

The exporter subscribes like BEMS does, for the target's probe mailbox, and its listener receives the
callbacks (``exporter.listener``). Each run of this check:

- EWS: keeps one push subscription (``Subscribe`` with ``PushSubscriptionRequest``, impersonating the
  probe mailbox). Exchange sends a ``StatusEvent`` every ``status_frequency`` minutes; when nothing
  arrived within ``stall_after``, the check fails with ``push_stalled`` and subscribes again (the
  replaced subscription is answered ``Unsubscribe`` when it next calls).
- Graph: keeps one subscription to the probe mailbox's inbox messages, renewed well before it expires
  and reauthorized when Graph asks. Graph sends no keep-alives: the check passes while the
  subscription is active and the last write probe's notification arrived in time.
- With ``write_probe``, every ``write_interval`` it creates a small item in the inbox and measures the
  delay until its notification arrives (``bems_push_notification_delay_seconds``); the item is deleted
  by the next run. A notification that does not come within ``stall_after`` is ``push_stalled``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from .. import ews, signin
from ..config import AuthMethod, Config, Kind, Target
from ..entra import Resource
from ..httpclient import HttpResponse
from ..listener import callback_url
from ..push import ProbeItem, PushTarget, Subscription
from ..resources import Resources
from ..results import CheckResult, ProbeFailure, Reason
from .base import Check, ProbeContext
from .graph import json_answer

log = logging.getLogger(__name__)
Writer = Callable[[ProbeContext, Target], Awaitable[str]]
GRAPH_LIFETIME = timedelta(minutes=4230)  # within every resource's maximum (Outlook messages: 10,080)
RENEW_WHEN_LEFT = GRAPH_LIFETIME / 2
PROBE_SUBJECT = "bems-exchange-exporter write probe"
STALLED_HINT = (
    "Exchange or Graph is not delivering notifications to the exporter's listener: check that "
    "notifications.public_url reaches the listener from Exchange (firewall, reverse proxy, certificate), "
    "and the health of the Exchange notification service"
)


def _applies(config: Config, target: Target) -> bool:
    return target.push is not None and config.notifications is not None


def _stalled(message: str) -> ProbeFailure:
    return ProbeFailure(Reason.PUSH_STALLED, message, STALLED_HINT)


async def _ews_call(ctx: ProbeContext, target: Target, body: bytes) -> HttpResponse:
    assert target.push is not None
    mailbox = target.push.mailbox
    response = await signin.send(
        ctx, target, target.url, method=signin.method_for(ctx, target), body=body,
        headers=ews.SOAP_HEADERS | {"X-AnchorMailbox": mailbox}, scope=Resource.EXCHANGE, follow=True,
    )  # fmt: skip
    signin.ews_result(ctx, target, response)
    return response


async def _ews(target: Target, ctx: ProbeContext, state: PushTarget) -> None:
    push = target.push
    assert push is not None and ctx.config.notifications is not None
    for item_id in state.to_delete:
        try:  # best effort: a probe item left behind is harmless and the next run tries again
            await _ews_call(ctx, target, ews.delete_item(item_id, push.mailbox))
        except ProbeFailure:
            return
    state.to_delete.clear()
    stall = target.push_stall_after.total_seconds()
    current = state.current
    silent_for = time.time() - (state.last_notification or current.confirmed_at) if current else 0.0
    if current is None or not current.active or silent_for > stall:
        async with ctx.rec.step(f"subscribe to {push.mailbox}'s inbox (EWS push)") as detail:
            url = callback_url(ctx.config.notifications, target)
            response = await _ews_call(ctx, target, ews.subscribe_push(url, push.status_frequency or 1, push.mailbox))
            state.replace(Subscription(ews.subscription_id(response), time.time()))
            detail.append(f"callbacks to {url}")
        if current is not None and current.active:
            raise _stalled(f"no notification for {silent_for:.0f} s (stall_after {stall:g} s): subscribed again")
    if push.write_probe:
        await _write_probe(ctx, target, state, _ews_write)


async def _ews_write(ctx: ProbeContext, target: Target) -> str:
    assert target.push is not None
    response = await _ews_call(ctx, target, ews.create_probe_item(PROBE_SUBJECT, target.push.mailbox))
    return ews.created_item_id(response)


async def _write_probe(ctx: ProbeContext, target: Target, state: PushTarget, write: Writer) -> None:
    push = target.push
    assert push is not None
    probe, stall = state.probe, target.push_stall_after.total_seconds()
    if probe is not None and not probe.delivered:
        waited = time.monotonic() - probe.written_at
        if waited > stall:
            state.probe = None
            raise _stalled(f"the write probe's notification did not arrive within {stall:g} s")
        return  # still waiting for it: one probe at a time
    if probe is not None and time.monotonic() - probe.written_at < push.write_interval.total_seconds():
        return
    async with ctx.rec.step(f"write probe item in {push.mailbox}'s inbox") as detail:
        item_id = await write(ctx, target)
        state.register_probe(ProbeItem(item_id, time.monotonic(), time.time()))
        detail.append("written; its notification is awaited")


async def _graph_call(
    ctx: ProbeContext, target: Target, http_method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    assert target.push is not None
    url = f"{target.url.rstrip('/')}/{path}"
    response = await signin.send(
        ctx, target, url, method=AuthMethod.OAUTH, scope=Resource.GRAPH, http_method=http_method, follow=True,
        body=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )  # fmt: skip
    return json_answer(ctx, target, url, target.push.mailbox, response)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _expiry(answer: dict[str, Any], fallback: datetime) -> float:
    try:
        return datetime.fromisoformat(str(answer["expirationDateTime"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return fallback.timestamp()


async def _graph(target: Target, ctx: ProbeContext, state: PushTarget) -> None:
    push = target.push
    assert push is not None and ctx.config.notifications is not None
    for item_id in state.to_delete:
        try:
            await _graph_call(ctx, target, "DELETE", f"users/{quote(push.mailbox)}/messages/{quote(item_id)}")
        except ProbeFailure:
            return
    state.to_delete.clear()
    current, now = state.current, datetime.now(UTC)
    if current is None or not current.active:
        async with ctx.rec.step(f"subscribe to {push.mailbox}'s inbox (Graph)") as detail:
            client_state, until = secrets.token_urlsafe(32), now + GRAPH_LIFETIME
            answer = await _subscribe_graph(ctx, target, {
                "changeType": "created",
                "notificationUrl": callback_url(ctx.config.notifications, target),
                "lifecycleNotificationUrl": callback_url(ctx.config.notifications, target, lifecycle=True),
                "resource": f"users/{push.mailbox}/mailFolders('inbox')/messages",
                "expirationDateTime": _iso(until),
                "clientState": client_state,
            })  # fmt: skip
            state.replace(Subscription(str(answer.get("id", "")), time.time(), client_state, _expiry(answer, until)))
            detail.append("validated by Graph")
    elif current.reauthorize or current.expires_at - now.timestamp() < RENEW_WHEN_LEFT.total_seconds():
        async with ctx.rec.step("renew the Graph subscription") as detail:
            until = now + GRAPH_LIFETIME
            answer = await _graph_call(ctx, target, "PATCH", f"subscriptions/{quote(current.id)}",
                                       {"expirationDateTime": _iso(until)})  # fmt: skip
            current.expires_at, current.reauthorize = _expiry(answer, until), False
            detail.append(f"until {_iso(until)}")
    if push.write_probe:
        await _write_probe(ctx, target, state, _graph_write)


async def _subscribe_graph(ctx: ProbeContext, target: Target, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return await _graph_call(ctx, target, "POST", "subscriptions", request)
    except ProbeFailure as failure:
        if failure.reason == Reason.BAD_RESPONSE:  # Graph's 400: it could not validate our listener
            failure.hint = (
                f"Graph must reach {request['notificationUrl']} from the Internet over https with a publicly "
                "trusted certificate, and get the validation token echoed within 10 s: check "
                "notifications.public_url, the reverse proxy and the firewall"
            )
        raise


async def _graph_write(ctx: ProbeContext, target: Target) -> str:
    assert target.push is not None
    answer = await _graph_call(
        ctx,
        target,
        "POST",
        f"users/{quote(target.push.mailbox)}/mailFolders/inbox/messages",
        {"subject": PROBE_SUBJECT, "body": {"contentType": "Text", "content": "probe"}},
    )
    if not answer.get("id"):
        raise ProbeFailure(Reason.BAD_RESPONSE, "Graph created the probe message without an id")
    return str(answer["id"])


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    state = ctx.resources.push.state_for(target)
    await (_graph if target.kind == Kind.GRAPH else _ews)(target, ctx, state)
    return ctx.rec.passed()


async def end_graph_subscriptions(config: Config, resources: Resources) -> None:
    """Delete the Graph subscriptions this exporter holds (on shutdown): Graph would otherwise keep
    calling a listener that is gone until they expire. EWS push subscriptions cannot be deleted; they
    end when the next exporter answers their callback with ``Unsubscribe``."""
    for name, state in resources.push.targets.items():
        target, current = config.targets_by_name().get(name), state.current
        if target is None or target.kind != Kind.GRAPH or current is None or not current.active:
            continue
        ctx = ProbeContext.for_target(config, target, CHECK.name, resources)
        try:
            async with asyncio.timeout(ctx.timeout):
                await _graph_call(ctx, target, "DELETE", f"subscriptions/{quote(current.id)}")
            current.active = False
        except (ProbeFailure, TimeoutError) as err:
            log.warning("could not delete a Graph subscription", extra={"fields": {"target": name, "err": str(err)}})


CHECK = Check("push", probe, _applies, (), uses_credential=True, per_mailbox=True)
