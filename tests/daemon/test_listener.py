"""The notification listener and push state, with hand-made callbacks (the simulator's are elsewhere)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loopback import port_of, push_listener_config
from samples import parse, value

from bems_simulator.pki import CertificateAuthority
from exporter.checks.push_state import MAX_CALLBACK_BYTES, ProbeItem, PushRegistry, Subscription, callback_url
from exporter.config import Config, Notifications, NotificationsTLS
from exporter.daemon import serving
from exporter.daemon.listener import Listener
from exporter.web import exposition

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"
MESSAGES = "http://schemas.microsoft.com/exchange/services/2006/messages"


def local(url: str) -> str:
    # The public URL is https (Graph requires it); here a TLS-terminating proxy stands in front, as often.
    return url.replace("https://", "http://")


def send_notification(subscription: str, events: str, previous: str = "AAAAAAAAAAA=") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP}"><soap:Body>'
        f'<m:SendNotification xmlns:t="{TYPES}" xmlns:m="{MESSAGES}"><m:ResponseMessages>'
        '<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        f"<m:Notification><t:SubscriptionId>{subscription}</t:SubscriptionId>"
        f"<t:PreviousWatermark>{previous}</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>"
        f"{events}</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages>"
        "</m:SendNotification></soap:Body></soap:Envelope>"
    ).encode()


def status_event(watermark: str = "AAAAAAAAAAA=") -> str:
    return f"<t:StatusEvent><t:Watermark>{watermark}</t:Watermark></t:StatusEvent>"


STATUS = status_event()


def created(item: str, watermark: str = "AQ==") -> str:
    return (
        f"<t:CreatedEvent><t:Watermark>{watermark}</t:Watermark><t:TimeStamp>2026-11-26T00:00:00Z</t:TimeStamp>"
        f'<t:ItemId Id="{item}" ChangeKey="CQ=="/><t:ParentFolderId Id="AQ" ChangeKey="AQ=="/></t:CreatedEvent>'
    )


@pytest.fixture
def config(tmp_path: Path, listener_socket: socket.socket) -> Config:
    return push_listener_config(tmp_path, listener_socket)


@pytest.fixture
async def listening(
    config: Config, listener_socket: socket.socket
) -> AsyncIterator[tuple[PushRegistry, aiohttp.ClientSession]]:
    registry = PushRegistry()
    registry.configure(config)
    listener = Listener(registry)
    listener.take_socket(listener_socket)
    await listener.apply(config.notifications)
    try:
        async with aiohttp.ClientSession() as session:
            yield registry, session
    finally:
        await listener.stop()


async def test_ews_callbacks(config: Config, listening: tuple[PushRegistry, aiohttp.ClientSession]) -> None:
    registry, http = listening
    state = registry.targets["ews"]
    state.replace(Subscription("current-id", time.time(), url_secret="the-secret", watermark="AAAAAAAAAAA="))
    ews_target = config.targets_by_name()["ews"]
    url = local(callback_url(config.notifications, ews_target, secret="the-secret"))  # type: ignore[arg-type]
    assert url.endswith("/monitor/push/ews/ews/the-secret")

    async def post(body: bytes) -> tuple[int, str]:
        async with http.post(url, data=body, headers={"Content-Type": "text/xml"}) as response:
            return response.status, await response.text()

    status, text = await post(send_notification("current-id", STATUS + created("item-1")))
    assert status == 200 and "<m:SubscriptionStatus>OK</m:SubscriptionStatus>" in text
    assert state.notifications["status"] == 1 and state.notifications["created"] == 1
    assert state.last_notification is not None

    before = dict(state.notifications), state.last_notification
    status, text = await post(send_notification("an-old-life", STATUS))
    assert status == 200 and "<m:SubscriptionStatus>Unsubscribe</m:SubscriptionStatus>" in text
    assert (dict(state.notifications), state.last_notification) == before  # rejected: nothing moved
    assert state.rejected["unknown_subscription"] == 1

    assert (await post(b"<not xml"))[0] == 400
    assert (await post(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'))[0] == 400
    assert state.rejected["malformed"] == 2
    assert (await post(b"x" * (MAX_CALLBACK_BYTES + 10)))[0] == 413
    assert state.rejected["oversize"] == 1
    async with http.post(url.replace("/push/ews/ews", "/push/ews/nobody"), data=STATUS) as response:
        assert response.status == 404
    async with http.get(url) as response:
        assert response.status == 405  # only the callback method
    without_secret = local(callback_url(config.notifications, ews_target))  # type: ignore[arg-type]
    async with http.post(
        without_secret, data=send_notification("current-id", status_event("AQ=="), "AQ==")
    ) as response:
        assert response.status == 403
    assert state.rejected["url_secret"] == 1 and state.notifications["status"] == 1


W0, W1, W2 = "AQAAAAA0", "AQAAAAA1", "AQAAAAA2"


@pytest.mark.parametrize(
    ("secret", "body", "answer", "counted", "rejected"),
    [
        ("right", send_notification("sub", status_event(W1), W1), "OK", {"status": 1}, None),
        ("right", send_notification("sub", created("item-2", W2), W1), "OK", {"created": 1}, None),
        # Exchange retries the last notification when our answer did not reach it: OK, counted once.
        ("right", send_notification("sub", created("item-1", W1), W0), "OK", {}, None),
        (None, send_notification("sub", status_event(W1), W1), 403, {}, "url_secret"),
        ("wrong", send_notification("sub", status_event(W1), W1), 403, {}, "url_secret"),
        ("righ", send_notification("sub", status_event(W1), W1), 403, {}, "url_secret"),
        # The right URL, a chain that does not continue: a notification missed, or replayed, or forged.
        ("right", send_notification("sub", status_event(W2), W2), 400, {}, "watermark"),
        ("right", send_notification("sub", status_event(W0), W0), 400, {}, "watermark"),
        # Another subscription (an earlier life's): whatever its URL, Unsubscribe ends it.
        (None, send_notification("old-sub", status_event(W1), W1), "Unsubscribe", {}, "unknown_subscription"),
    ],
    ids=["status", "event", "retry", "no-secret", "wrong-secret", "secret-prefix", "gap", "replay", "old-life"],
)
def test_ews_callbacks_must_know_the_url_secret_and_continue_the_watermark_chain(
    config: Config, secret: str | None, body: bytes, answer: str | int, counted: dict[str, int], rejected: str | None
) -> None:
    registry = PushRegistry()
    registry.configure(config)
    state = registry.targets["ews"]
    state.replace(Subscription("sub", time.time(), url_secret="right", watermark=W1, previous_watermark=W0))
    status_code, text = registry.ews_callback("ews", secret, body)
    if isinstance(answer, int):
        assert (status_code, text) == (answer, b"")
    else:
        assert status_code == 200 and f"<m:SubscriptionStatus>{answer}</m:SubscriptionStatus>".encode() in text
    assert dict(state.notifications) == counted
    assert dict(state.rejected) == ({rejected: 1} if rejected else {})
    assert (state.last_notification is not None) == bool(counted)


def test_the_first_notification_starts_the_chain_when_subscribe_gave_no_watermark(config: Config) -> None:
    registry = PushRegistry()
    registry.configure(config)
    state = registry.targets["ews"]
    state.replace(Subscription("sub", time.time(), url_secret="right"))
    assert registry.ews_callback("ews", "right", send_notification("sub", status_event(W1), W0))[0] == 200
    assert registry.ews_callback("ews", "right", send_notification("sub", status_event(W2), W2))[0] == 400
    assert registry.ews_callback("ews", "right", send_notification("sub", created("i", W2), W1))[0] == 200
    assert dict(state.notifications) == {"status": 1, "created": 1} and state.rejected["watermark"] == 1


def test_a_deeply_nested_graph_body_is_malformed(config: Config) -> None:
    registry = PushRegistry()
    registry.configure(config)
    registry.targets["graph"].replace(Subscription("sub-1", time.time(), client_state="secret-state"))
    nested = b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # within MAX_CALLBACK_BYTES
    assert len(nested) < MAX_CALLBACK_BYTES
    assert registry.graph_callback("graph", nested, lifecycle=False) == 400
    assert dict(registry.targets["graph"].rejected) == {"malformed": 1}


async def test_graph_validation_and_notifications(
    config: Config, listening: tuple[PushRegistry, aiohttp.ClientSession]
) -> None:
    registry, http = listening
    target = config.targets_by_name()["graph"]
    url = local(callback_url(config.notifications, target))  # type: ignore[arg-type]
    async with http.post(url, params={"validationToken": "Validation: a token & more"}) as response:
        assert response.status == 200 and response.content_type == "text/plain"
        assert await response.text() == "Validation: a token & more"  # decoded, as Graph requires

    state = registry.targets["graph"]
    state.replace(Subscription("sub-1", time.time(), client_state="secret-state"))
    state.register_probe(ProbeItem("msg-1", time.monotonic() - 0.5, time.time()))

    def batch(subscription: str, client_state: str, **extra: object) -> str:
        return json.dumps(
            {
                "value": [
                    {
                        "subscriptionId": subscription,
                        "clientState": client_state,
                        "changeType": "created",
                        "resourceData": {"id": "msg-1"},
                        **extra,
                    }
                ]
            }
        )

    async with http.post(url, data=batch("sub-1", "forged")) as response:
        assert response.status == 202
    assert state.rejected["client_state"] == 1 and not state.notifications and not state.probe.delivered
    async with http.post(url, data=batch("sub-unknown", "secret-state")) as response:
        assert response.status == 202  # acknowledged, ignored
    assert state.rejected["unknown_subscription"] == 1
    async with http.post(url, data=batch("sub-1", "secret-state")) as response:
        assert response.status == 202
    assert state.notifications["created"] == 1 and state.probe.delivered
    assert state.delays.counts != [0] * len(state.delays.counts) and 0.5 <= state.delays.total < 5
    assert state.to_delete == ["msg-1"]

    lifecycle = url + "/lifecycle"
    async with http.post(lifecycle, data=json.dumps({"value": [{"subscriptionId": "sub-1", "clientState":
                         "secret-state", "lifecycleEvent": "subscriptionRemoved"}]})) as response:  # fmt: skip
        assert response.status == 202
    assert state.current is not None and not state.current.active
    assert state.notifications["lifecycle"] == 1


@pytest.mark.parametrize(
    ("event", "kind", "moves_last_notification"),
    [
        ("reauthorizationRequired", "lifecycle", True),
        ("subscriptionRemoved", "lifecycle", True),
        # Graph dropped notifications (change-notifications-lifecycle-events): no sign of delivery.
        ("missed", "missed", False),
    ],
    ids=["reauthorization", "removed", "missed"],
)
async def test_graph_lifecycle_events_are_counted_by_kind(
    config: Config,
    listening: tuple[PushRegistry, aiohttp.ClientSession],
    event: str,
    kind: str,
    moves_last_notification: bool,
) -> None:
    registry, http = listening
    url = local(callback_url(config.notifications, config.targets_by_name()["graph"], lifecycle=True))  # type: ignore[arg-type]
    state = registry.targets["graph"]
    state.replace(Subscription("sub-1", time.time(), client_state="secret-state"))
    body = {"value": [{"subscriptionId": "sub-1", "clientState": "secret-state", "lifecycleEvent": event}]}
    async with http.post(url, data=json.dumps(body)) as response:
        assert response.status == 202
    assert dict(state.notifications) == {kind: 1}
    assert (state.last_notification is not None) == moves_last_notification
    assert state.probe_now == (event == "missed")  # the next check writes a probe at once
    samples = parse(exposition.render(registry.families()).decode())
    labels = {"target": "graph", "exchange": "online"}
    assert value(samples, "bems_push_notifications_total", **labels, kind=kind) == 1
    assert value(samples, "bems_push_notifications_total", **labels, kind="missed") == (event == "missed")


def test_a_notification_may_beat_the_create_answer(config: Config) -> None:
    registry = PushRegistry()
    registry.configure(config)
    state = registry.targets["ews"]
    state.accept("created", "item-9")  # arrives first...
    state.register_probe(ProbeItem("item-9", time.monotonic(), time.time()))  # ...then the create call returns
    assert state.probe is not None and state.probe.delivered
    assert sum(state.delays.counts) == 1


def test_reload_keeps_unchanged_push_state(config: Config) -> None:
    registry = PushRegistry()
    registry.configure(config)
    registry.targets["ews"].replace(Subscription("kept", time.time()))
    registry.configure(config)
    assert registry.targets["ews"].current is not None
    registry.configure(config.model_copy(update={"targets": config.targets[:1]}))
    assert set(registry.targets) == {"ews"}


async def test_a_dripping_body_is_cut_off(
    config: Config, listening: tuple[PushRegistry, aiohttp.ClientSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from exporter.daemon import listener

    monkeypatch.setattr(listener, "BODY_SECONDS", 0.5)
    _registry, http = listening
    url = local(callback_url(config.notifications, config.targets_by_name()["ews"]))  # type: ignore[arg-type]

    async def drip():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"<"
            await asyncio.sleep(0.2)

    started = time.monotonic()
    async with http.post(url, data=drip()) as response:
        assert response.status == 408
    assert time.monotonic() - started < 2.0  # not the 4 s the drip would take


# --- the servers' limits (exporter/serving.py) ---------------------------------------------------------------


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """True once the server closed the connection (EOF, or a reset), False if it is still open at ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


async def _get(port: int, path: str = "/", head: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + head + b"\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def apply(**limits: Any) -> None:
        original = serving.limits_for

        def limits_for(
            name: str, max_connections: int, nofile: int | None = None, **heads: int
        ) -> serving.ServerLimits:
            return dataclasses.replace(original(name, max_connections, nofile, **heads), **limits)

        monkeypatch.setattr(serving, "limits_for", limits_for)

    return apply


async def test_a_full_listener_leaves_the_web_port_answering_and_takes_connections_as_slots_free(
    config: Config, listener_socket: socket.socket, small_limits: Callable[..., None]
) -> None:
    small_limits(max_connections=4, head_seconds=30.0)
    registry = PushRegistry()
    registry.configure(config)
    listener = Listener(registry)
    listener.take_socket(listener_socket)
    await listener.apply(config.notifications)
    metrics = web.Application()

    async def up(_request: web.Request) -> web.Response:
        return web.Response(text="up 1\n")

    metrics.router.add_get("/metrics", up)
    web_runner = await serving.start_server(
        metrics, ("127.0.0.1", 0), None, serving.limits_for("web", serving.WEB_CONNECTIONS)
    )
    port = int(config.notifications.listen_address.rsplit(":", 1)[1])  # type: ignore[union-attr]
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    try:
        # The listener is full: a fifth connection is not accepted (it waits in the backlog)...
        waiting = asyncio.create_task(_get(port, "/monitor/push/ews/ews"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        # ...while the web port, with a count of its own, answers at once.
        assert (await _get(serving.bound_port(web_runner), "/metrics")).endswith(b"up 1\n")
        # One slot freed: the waiting connection is served.
        idle.pop()[1].close()
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.startswith(b"HTTP/1.1 405")  # the callback path answers POST only
        assert all(not reader.at_eof() for reader, _ in idle)  # still held: nothing else made room
    finally:
        for _, writer in idle:
            writer.close()
        await web_runner.cleanup()
        await listener.stop()


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /monitor/push/ews/ews HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing", "an-unfinished-head"],
)
async def test_the_request_head_must_come_within_the_deadline(
    config: Config, listener_socket: socket.socket, small_limits: Callable[..., None], sent: bytes
) -> None:
    small_limits(head_seconds=0.5)  # aiohttp's own keep-alive default holds such a connection for an hour
    registry = PushRegistry()
    registry.configure(config)
    listener = Listener(registry)
    listener.take_socket(listener_socket)
    await listener.apply(config.notifications)
    port = int(config.notifications.listen_address.rsplit(":", 1)[1])  # type: ignore[union-attr]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        assert await _closed_by_server(reader)
        writer.close()
    finally:
        await listener.stop()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"X-Long: " + b"a" * 5000 + b"\r\n", b"400"),  # one field past max_field_size
        (b"".join(b"X-H%d: v\r\n" % i for i in range(30)), b"400"),  # more than max_headers fields
        (b"X-Fine: " + b"a" * 4000 + b"\r\n", b"405"),  # within the limits: the route answers
    ],
    ids=["long-field", "many-fields", "within-limits"],
)
async def test_request_heads_are_bounded(
    listening: tuple[PushRegistry, aiohttp.ClientSession], config: Config, head: bytes, status: bytes
) -> None:
    port = int(config.notifications.listen_address.rsplit(":", 1)[1])  # type: ignore[union-attr]
    answer = await _get(port, "/monitor/push/ews/ews", head)
    assert answer.split(b" ", 2)[1] == status
    # No Python or aiohttp version announced, on the route's answers and aiohttp's own alike.
    server = [line for line in answer.split(b"\r\n") if line.lower().startswith(b"server:")]
    assert server == [b"Server: " + serving.SERVER_HEADER.encode()]


def test_each_server_keeps_to_its_share_of_the_descriptors() -> None:
    assert serving.limits_for("listener", 128, nofile=1_048_576).max_connections == 128
    assert serving.limits_for("listener", 128, nofile=1024).max_connections == 1024 // serving.NOFILE_SHARE
    assert serving.limits_for("web", 64, nofile=256).max_connections == 32
    assert serving.limits_for("web", 64, nofile=4).max_connections == 1


def test_server_log_lines_are_rate_limited_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    logger = logging.getLogger("test.serving.rate")
    limit = serving.RateLimit(every=10.0, clock=lambda: now[0])
    logger.addFilter(limit)
    try:
        with caplog.at_level(logging.WARNING, logger="test.serving.rate"):
            for _ in range(500):
                logger.warning("cannot accept a connection")
            now[0] += 10.0
            logger.warning("cannot accept a connection")
    finally:
        logger.removeFilter(limit)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "cannot accept a connection",
        "cannot accept a connection (and 499 more like it in the last 10 s)",
    ]


def test_limit_process_raises_nofile_and_disables_cores(tmp_path: Path) -> None:
    import resource
    import subprocess
    import sys

    core_hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    assert core_hard != 0, "cores must be allowed here, or the test cannot show that they get disabled"

    def low_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))
        resource.setrlimit(resource.RLIMIT_CORE, (core_hard, core_hard))

    script = (
        "import resource; from exporter.daemon import serving; serving.limit_process(); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_CORE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], preexec_fn=low_limits, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).stdout  # fmt: skip
    assert out.split() == ["(2048,", "2048)", "(0,", f"{core_hard})"]


def _tls_files(tmp_path: Path, ca: CertificateAuthority) -> tuple[Path, Path]:
    cert, key = ca.issue(["localhost"])
    (tmp_path / "listener.crt").write_bytes(cert)
    (tmp_path / "listener.key").write_bytes(key)
    return tmp_path / "listener.crt", tmp_path / "listener.key"


async def _peer_certificate(port: int, context: ssl.SSLContext) -> bytes:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    try:
        sslobj = writer.get_extra_info("ssl_object")
        return sslobj.getpeercert(binary_form=True)
    finally:
        writer.close()


@pytest.fixture
def tls_listener(tmp_path: Path, listener_socket: socket.socket) -> tuple[Notifications, CertificateAuthority]:
    ca = CertificateAuthority.create("listener test CA")
    cert, key = _tls_files(tmp_path, ca)
    port = port_of(listener_socket)
    tls = NotificationsTLS(cert_file=str(cert), key_file=str(key))
    return Notifications(listen_address=f"127.0.0.1:{port}", public_url=f"https://localhost:{port}", tls=tls), ca


async def test_a_renewed_listener_certificate_is_served_without_a_restart(
    tls_listener: tuple[Notifications, CertificateAuthority], listener_socket: socket.socket, tmp_path: Path
) -> None:
    notifications, ca = tls_listener
    listener = Listener(PushRegistry())
    listener.take_socket(listener_socket)
    await listener.apply(notifications)
    port = int(notifications.listen_address.rsplit(":", 1)[1])
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        first = await _peer_certificate(port, client)
        (tmp_path / "listener.crt").write_bytes(b"half written")  # a renewal caught midway: the old pair stays
        assert await _peer_certificate(port, client) == first
        cert, _key = _tls_files(tmp_path, ca)
        renewed = await _peer_certificate(port, client)
        assert renewed != first
        assert renewed == ssl.PEM_cert_to_DER_cert(
            cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        )
    finally:
        await listener.stop()


@pytest.mark.parametrize(
    ("version", "ciphers", "accepted"),
    [
        (ssl.TLSVersion.TLSv1_3, None, True),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256", True),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305", True),
        # CBC with SHA-2, which Python's default server suites accept.
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384", False),
    ],
    ids=["tls13", "tls12-aes-gcm", "tls12-chacha20", "tls12-cbc"],
)
async def test_the_listener_offers_aead_suites_only(
    tls_listener: tuple[Notifications, CertificateAuthority],
    listener_socket: socket.socket,
    version: ssl.TLSVersion,
    ciphers: str | None,
    accepted: bool,
) -> None:
    notifications, ca = tls_listener
    listener = Listener(PushRegistry())
    listener.take_socket(listener_socket)
    await listener.apply(notifications)
    port = int(notifications.listen_address.rsplit(":", 1)[1])
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    client.minimum_version = client.maximum_version = version
    if ciphers:
        client.set_ciphers(ciphers)
    try:
        if accepted:
            assert await _peer_certificate(port, client)
        else:
            with pytest.raises((ssl.SSLError, ConnectionResetError)):  # no shared suite: an alert, or a reset
                await _peer_certificate(port, client)
    finally:
        await listener.stop()


async def test_a_handed_over_socket_outlives_a_restart_and_a_stop(
    config: Config, listener_socket: socket.socket
) -> None:
    # systemd's socket is the only one the listener has: a reload that restarts it must serve on it again, and a
    # stop must not close it (it is systemd's, and the next start takes it again).
    notifications = config.notifications
    assert notifications is not None
    listener = Listener(PushRegistry())
    listener.take_socket(listener_socket)
    port = port_of(listener_socket)
    try:
        await listener.apply(notifications)
        assert (await _get(port, "/monitor/push/ews/ews")).split(b" ", 2)[1] == b"405"
        await listener.apply(notifications.model_copy(update={"public_url": f"https://127.0.0.1:{port}/moved"}))
        assert (await _get(port, "/moved/push/ews/ews")).split(b" ", 2)[1] == b"405"
        await listener.stop()
        assert listener_socket.fileno() != -1
        await listener.apply(notifications)
        assert (await _get(port, "/monitor/push/ews/ews")).split(b" ", 2)[1] == b"405"
    finally:
        await listener.stop()


def test_a_socket_that_does_not_listen_is_refused() -> None:
    with socket.socket() as unbound, pytest.raises(ValueError, match="does not listen"):
        Listener(PushRegistry()).take_socket(unbound)
