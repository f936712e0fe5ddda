"""``push``: Exchange actually delivers mailbox events to a subscriber, as BEMS needs.

The exporter subscribes like BEMS does, for the target's probe mailbox, and its listener receives the
callbacks (``exporter.listener``). Each run of this check:

- deletes the probe items done with (best effort: an item already gone, deleted by an admin or moved,
  which gives it a new id, is forgotten; a delete that fails is retried by the next run, and never
  ends the check, which still judges delivery);
- EWS: keeps one push subscription (``Subscribe`` with ``PushSubscriptionRequest``, impersonating the
  probe mailbox). Exchange sends a ``StatusEvent`` every ``status_frequency`` minutes.
- Graph: keeps one subscription to the probe mailbox's inbox messages, renewed well before it expires
  and reauthorized when Graph asks. Graph ends a subscription without a word on expiry or loss (it
  sends ``subscriptionRemoved`` only for removals it initiates), so a 404 on renewal means it is gone
  and a new one is made; without a write probe each run asks Graph whether it still holds it.
- With the write probe (default on for Graph, which sends no keep-alives, off for EWS), every
  ``write_interval`` it creates a small item in the inbox and measures the delay until its notification
  arrives (``bems_push_notification_delay_seconds``).

Nothing within ``stall_after`` (EWS: no keep-alive or event; either: the write probe's notification)
is a stall: the check fails with ``push_stalled`` and subscribes again (the replaced EWS subscription
is answered ``Unsubscribe`` when it next calls; a Graph one is deleted). After a failure the check
passes again only once delivery was seen since: a replacement subscription that has delivered nothing
proves nothing. What success means: EWS, a keep-alive or event within ``stall_after`` (with the write
probe, also its notification); Graph with the write probe, its notification within ``stall_after``;
Graph without it, only that Graph holds the subscription (delivery not verified).
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

from ..config import AuthMethod, Config, Kind, Target
from ..protocol import ews_soap
from ..protocol.entra_tokens import Resource
from ..protocol.graph_wire import graph_error
from ..protocol.http_client import HttpResponse
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext
from .push_state import ProbeItem, PushTarget, Subscription, callback_url
from .resources import Resources

log = logging.getLogger(__name__)
Writer = Callable[[ProbeContext, Target], Awaitable[str]]
Deleter = Callable[[ProbeContext, Target, str], Awaitable[bool]]
GRAPH_LIFETIME = timedelta(minutes=4230)  # within every resource's maximum (Outlook messages: 10,080)
RENEW_WHEN_LEFT = GRAPH_LIFETIME / 2
PROBE_SUBJECT = "bems-exchange-exporter write probe"
STALLED_HINT = (
    "Exchange or Graph is not delivering notifications to the exporter's listener: check that "
    "notifications.public_url reaches the listener from Exchange (firewall, reverse proxy, certificate), "
    "and the health of the Exchange notification service"
)
ITEM_NOT_FOUND = "ErrorItemNotFound"  # EWS ResponseCode (HTTP 200) and Graph error code (HTTP 404) alike


def _applies(config: Config, target: Target) -> bool:
    return target.push is not None and config.notifications is not None


def config_warnings(config: Config) -> list[str]:
    """What ``--config.check`` warns about push: a Graph target without write probe cannot show delivery;
    EWS callbacks to an http:// public URL (accepted, as before, for a TLS-terminating proxy's inside) carry
    their URL secret in clear."""
    warnings = [
        f"graph push target {target.name} has write_probe: false: delivery is not verified "
        "(Graph sends no keep-alives; the push check then shows only that the subscription is held)"
        for target in config.targets
        if target.kind == Kind.GRAPH and target.push is not None and not target.push_write_probe
    ]
    notifications = config.notifications
    plain = [t.name for t in config.targets if t.kind == Kind.EWS and t.push is not None]
    if notifications is not None and notifications.public_url.startswith("http://") and plain:
        warnings.append(
            f"notifications.public_url {notifications.public_url} is http://: Exchange's callbacks for "
            f"{', '.join(plain)} (and the secret in their URL) cross the network in clear; give an https:// URL"
        )
    return warnings


def _stalled(message: str) -> ProbeFailure:
    return ProbeFailure(Reason.PUSH_STALLED, message, STALLED_HINT)


def _stall(target: Target, state: PushTarget) -> str | None:
    """Why the current subscription counts as stalled, if it does."""
    stall = target.push_stall_after.total_seconds()
    probe = state.probe
    if probe is not None and not probe.delivered and state.monotonic() - probe.written_at > stall:
        return f"the write probe's notification did not arrive within {stall:g} s"
    current = state.current
    if target.kind == Kind.EWS and current is not None and current.active:
        silent_for = time.time() - (state.last_notification or current.confirmed_at)
        if silent_for > stall:
            return f"no notification for {silent_for:.0f} s (stall_after {stall:g} s)"
    return None


async def _delete_probe_items(ctx: ProbeContext, target: Target, state: PushTarget, delete: Deleter) -> None:
    """Delete the probe items done with. Not part of the verdict: a failure shows as a failed step, the
    item is kept for the next run, and the check goes on to judge delivery."""
    if not state.to_delete:
        return
    try:
        async with ctx.rec.step(f"delete {len(state.to_delete)} probe item(s)") as detail:
            gone = 0
            for item_id in list(state.to_delete):
                if not await delete(ctx, target, item_id):
                    gone += 1
                    log.info(
                        "probe item already gone (deleted, or moved: a moved item gets a new id): forgotten",
                        extra={"fields": {"target": target.name, "item_id": item_id}},
                    )
                state.to_delete.remove(item_id)
            if gone:
                detail.append(f"{gone} already gone (deleted, or moved: a moved item gets a new id): forgotten")
    except ProbeFailure:
        pass  # the step records why; the next run tries again (stopping at the first failure: one request a run)


async def _ews_send(ctx: ProbeContext, target: Target, body: bytes) -> HttpResponse:
    assert target.push is not None
    mailbox = target.push.mailbox
    return await signin.send(
        ctx, target, target.url, method=signin.method_for(ctx.config, target), body=body,
        headers=ews_soap.SOAP_HEADERS | {"X-AnchorMailbox": mailbox}, scope=Resource.EXCHANGE, follow=True,
    )  # fmt: skip


async def _ews_call(ctx: ProbeContext, target: Target, body: bytes) -> HttpResponse:
    assert target.push is not None
    response = await _ews_send(ctx, target, body)
    try:
        signin.ews_result(ctx, target, response, target.push.mailbox, method=signin.method_for(ctx.config, target))
    except signin.PolicyBlock as block:  # the probe mailbox left out, or all of EWS off: the evidence tells
        raise await signin.OrganisationEvidence(ctx, target).failure(block) from None
    return response


async def _ews_delete(ctx: ProbeContext, target: Target, item_id: str) -> bool:
    """Delete a probe item; False when it is already gone (``DeleteItem`` answers HTTP 200 with the
    ResponseCode ``ErrorItemNotFound``)."""
    assert target.push is not None
    response = await _ews_send(ctx, target, ews_soap.delete_item(item_id, target.push.mailbox))
    if response.status == 200 and ews_soap.read(response).code == ITEM_NOT_FOUND:
        return False
    signin.ews_result(ctx, target, response, target.push.mailbox, method=signin.method_for(ctx.config, target))
    return True


async def _ews(target: Target, ctx: ProbeContext, state: PushTarget) -> None:
    push = target.push
    assert push is not None and ctx.config.notifications is not None
    if state.current is None or not state.current.active:
        async with ctx.rec.step(f"subscribe to {push.mailbox}'s inbox (EWS push)") as detail:
            secret = secrets.token_urlsafe(32)  # Exchange's callbacks prove themselves by knowing it
            url = callback_url(ctx.config.notifications, target, secret=secret)
            response = await _ews_call(
                ctx, target, ews_soap.subscribe_push(url, push.status_frequency or 1, push.mailbox)
            )
            state.replace(Subscription(
                ews_soap.subscription_id(response), time.time(), url_secret=secret,
                watermark=ews_soap.subscription_watermark(response),
            ))  # fmt: skip
            detail.append(f"callbacks to {callback_url(ctx.config.notifications, target, secret='<secret>')}")


async def _ews_write(ctx: ProbeContext, target: Target) -> str:
    assert target.push is not None
    response = await _ews_call(ctx, target, ews_soap.create_probe_item(PROBE_SUBJECT, target.push.mailbox))
    return ews_soap.created_item_id(response)


async def _write_probe(ctx: ProbeContext, target: Target, state: PushTarget, write: Writer) -> None:
    push = target.push
    assert push is not None
    probe = state.probe
    if probe is not None and not probe.delivered:
        return  # still waiting for it (one overdue was a stall, and dropped): one probe at a time
    interval = push.write_interval.total_seconds()
    due = probe is None or state.probe_now or state.monotonic() - probe.written_at >= interval
    if not due:
        return
    async with ctx.rec.step(f"write probe item in {push.mailbox}'s inbox") as detail:
        item_id = await write(ctx, target)
        state.register_probe(ProbeItem(item_id, state.monotonic(), time.time()))
        detail.append("written; its notification is awaited")


def _graph_url(target: Target, path: str) -> str:
    return f"{target.url.rstrip('/')}/{path}"


async def _graph_send(
    ctx: ProbeContext, target: Target, http_method: str, path: str, body: dict[str, Any] | None = None
) -> HttpResponse:
    return await signin.send(
        ctx, target, _graph_url(target, path), method=AuthMethod.OAUTH, scope=Resource.GRAPH, http_method=http_method,
        follow=True, body=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )  # fmt: skip


async def _graph_call(
    ctx: ProbeContext, target: Target, http_method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    assert target.push is not None
    response = await _graph_send(ctx, target, http_method, path, body)
    return signin.graph_answer(ctx, target, _graph_url(target, path), target.push.mailbox, response)


async def _graph_subscription_call(
    ctx: ProbeContext, target: Target, http_method: str, subscription: Subscription, body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A call on ``subscriptions/{id}``; None when Graph answers 404: the subscription is gone (expired,
    or lost: Graph sends no ``subscriptionRemoved`` for those)."""
    assert target.push is not None
    path = f"subscriptions/{quote(subscription.id)}"
    response = await _graph_send(ctx, target, http_method, path, body)
    if response.status == 404:
        return None
    return signin.graph_answer(ctx, target, _graph_url(target, path), target.push.mailbox, response)


async def _graph_delete(ctx: ProbeContext, target: Target, item_id: str) -> bool:
    """Delete a probe message; False when it is already gone (404 ``ErrorItemNotFound``)."""
    assert target.push is not None
    path = f"users/{quote(target.push.mailbox)}/messages/{quote(item_id)}"
    response = await _graph_send(ctx, target, "DELETE", path)
    if response.status == 404 and graph_error(response).code == ITEM_NOT_FOUND:
        return False
    signin.graph_answer(ctx, target, _graph_url(target, path), target.push.mailbox, response)
    return True


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _expiry(answer: dict[str, Any], fallback: datetime) -> float:
    try:
        return datetime.fromisoformat(str(answer["expirationDateTime"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return fallback.timestamp()


def _gone(target: Target, state: PushTarget, subscription: Subscription, during: str) -> None:
    log.info(
        "the Graph subscription is gone (404): subscribing again",
        extra={"fields": {"target": target.name, "during": during}},
    )
    subscription.active = False
    state.replace(None)


async def _graph(target: Target, ctx: ProbeContext, state: PushTarget) -> None:
    push = target.push
    assert push is not None and ctx.config.notifications is not None
    current, now = state.current, datetime.fromtimestamp(time.time(), UTC)
    if current is not None and current.active:
        if current.reauthorize or current.expires_at - now.timestamp() < RENEW_WHEN_LEFT.total_seconds():
            async with ctx.rec.step("renew the Graph subscription") as detail:
                until = now + GRAPH_LIFETIME
                answer = await _graph_subscription_call(
                    ctx, target, "PATCH", current, {"expirationDateTime": _iso(until)}
                )
                if answer is None:
                    _gone(target, state, current, "renewal")
                    detail.append("gone (HTTP 404): subscribing again")
                else:
                    current.expires_at, current.reauthorize = _expiry(answer, until), False
                    detail.append(f"until {_iso(until)}")
        elif not target.push_write_probe:
            async with ctx.rec.step("confirm Graph holds the subscription") as detail:
                if await _graph_subscription_call(ctx, target, "GET", current) is None:
                    _gone(target, state, current, "confirmation")
                    detail.append("gone (HTTP 404): subscribing again")
                else:
                    detail.append("held; delivery is not verified (write_probe: false)")
    if state.current is None or not state.current.active:
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
            detail.append("validated by Graph" + ("" if target.push_write_probe else "; delivery is not verified"))


async def _drop_graph_subscription(ctx: ProbeContext, target: Target, subscription: Subscription) -> None:
    """Delete a stalled subscription before replacing it (best effort: a 404 means it is gone already),
    so that the exporter does not leave subscriptions behind in the mailbox (1,000 per mailbox at most)."""
    try:
        await _graph_subscription_call(ctx, target, "DELETE", subscription)
    except ProbeFailure as failure:
        log.warning(
            "could not delete a stalled Graph subscription; it ends when it expires",
            extra={"fields": {"target": target.name, "err": failure.message}},
        )


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
    graph = target.kind == Kind.GRAPH
    await _delete_probe_items(ctx, target, state, _graph_delete if graph else _ews_delete)
    stalled = _stall(target, state)
    if stalled is not None:
        if graph and state.current is not None and state.current.active:
            await _drop_graph_subscription(ctx, target, state.current)  # Graph may still hold it
        state.delivery_failed()
    await (_graph if graph else _ews)(target, ctx, state)
    if target.push_write_probe:
        await _write_probe(ctx, target, state, _graph_write if graph else _ews_write)
    if stalled is not None:
        raise _stalled(f"{stalled}: subscribed again")
    if not state.seen_since_failure(by_probe=target.push_write_probe):
        assert state.failed_at is not None
        awaited = "a write probe's notification" if target.push_write_probe else "a notification"
        raise _stalled(
            f"{awaited} has not arrived since the stall {time.time() - state.failed_at:.0f} s ago: "
            "the replacement subscription has not shown delivery yet"
        )
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
                await _graph_subscription_call(ctx, target, "DELETE", current)  # None: gone already
            current.active = False
        except (ProbeFailure, TimeoutError) as err:
            log.warning("could not delete a Graph subscription", extra={"fields": {"target": name, "err": str(err)}})


CHECK = Check("push", probe, _applies, (), uses_credential=True, per_mailbox=True)
