"""Hardening from an operator's seat: reload storms, junk on the callback listener, Entra ID down or slow,
secrets under faults, the web configuration on every endpoint, and a graceful shutdown with work in flight.

Daemons run as subprocesses (``python -m exporter``) in their own session, killed by process group when
the test ends (the ``cli`` fixture); the simulator runs in-process; everything is on 127.0.0.1 with free
ports, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from loopback import port_of, push_listener_config
from samples import parse, value
from test_cli import CLI, EXIT_TIMEOUT, START_TIMEOUT, Proc, basic_auth, eventually, fetch, scrape, start_activated

from bems_simulator.pki import CertificateAuthority
from bems_simulator.server import DEMO_GRAPH_ROLES, Simulator
from exporter.checks import CHECKS, planned_checks
from exporter.checks.push_state import MAX_CALLBACK_BYTES, PushRegistry, Subscription, callback_url
from exporter.checks.resources import Resources
from exporter.config import Config, load_config
from exporter.daemon.app import Exporter
from exporter.daemon.listener import Listener
from exporter.daemon.runner import execute
from exporter.results import Reason
from exporter.web import exposition
from exporter.web.http_app import create_app
from exporter.web.webconfig import load_web_config


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


async def start(cli: CLI, http: aiohttp.ClientSession, config: Path, *args: str, env: dict[str, str] | None = None,
                **sockets: socket.socket) -> tuple[Proc, str]:  # fmt: skip
    """The exporter on a fresh web socket, and on ``sockets`` (``notifications=``) too, by socket activation."""
    if env:
        os.environ.update(env)  # CLI.start copies os.environ; the variables are removed again below
    try:
        proc, port = start_activated(cli, "--config.file", str(config), *args, **sockets)
    finally:
        for name in env or {}:
            os.environ.pop(name, None)
    base = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        outcome = await fetch(http, f"{base}/-/healthy")
        return outcome is not None and outcome[0] == 200

    await eventually(healthy, "/-/healthy to answer 200", START_TIMEOUT, proc)
    return proc, base


# --- 1. reload storms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("last", ["bad", "good"])
async def test_a_reload_storm_keeps_the_last_good_config_without_duplicate_jobs(
    cli: CLI, simulator: Simulator, tmp_path: Path, http: aiohttp.ClientSession, last: str
) -> None:
    config = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")
    full = config.read_text(encoding="utf-8")
    data = yaml.safe_load(full)
    data["targets"] = [t for t in data["targets"] if t["name"] != "online-ews"]
    good = yaml.safe_dump(data, sort_keys=False)
    bad = full.replace("targets:", "targets: [", 1)
    good_file = tmp_path / "good.yml"
    good_file.write_text(good, encoding="utf-8")
    expected_series = {
        (target, check) for target, checks in planned_checks(load_config(good_file)).items() for check in checks
    }
    proc, base = await start(cli, http, config)

    versions = [good, bad] * 25 if last == "bad" else [bad, good] * 25
    started = time.monotonic()
    for text in versions:  # 50 SIGHUPs, half of them with a broken file, within about a second
        write_atomically(config, text)
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.02)
    assert time.monotonic() - started < 2.5

    want = 0 if last == "bad" else 1

    async def settled() -> bool:
        samples = await scrape(http, base)
        series = {
            (dict(labels)["target"], dict(labels)["check"])
            for name, labels in samples
            if name == "bems_probe_interval_seconds"
        }
        return value(samples, "bems_config_last_reload_successful") == want and series == expected_series

    await eventually(settled, f"reload result {want} and the good config's checks", 10, proc)
    await asyncio.sleep(1.0)  # nothing still queued changes the picture afterwards
    samples = await scrape(http, base)
    assert value(samples, "bems_config_last_reload_successful") == want
    interval_series = [labels for name, labels in samples if name == "bems_probe_interval_seconds"]
    assert len(interval_series) == len(expected_series), "a check is scheduled more than once"

    async def the_good_config_runs() -> bool:
        samples = await scrape(http, base)
        probed = {dict(labels)["target"] for name, labels in samples if name == "bems_probe_success"}
        return probed == {target for target, _ in expected_series}

    await eventually(the_good_config_runs, "results of the good config's targets only", 5, proc)
    assert proc.running()
    outcome = await fetch(http, f"{base}/-/healthy")
    assert outcome is not None and outcome[0] == 200

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# --- 2. the listener under junk ------------------------------------------------------------------------------


@pytest.fixture
def push_only_config(tmp_path: Path, listener_socket: socket.socket) -> Config:
    return push_listener_config(tmp_path, listener_socket)


def graph_batch(subscription: str, client_state: str) -> str:
    item = {"subscriptionId": subscription, "clientState": client_state, "changeType": "created",
            "resourceData": {"id": "msg-1"}}  # fmt: skip
    return json.dumps({"value": [item]})


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; what the server answers before it closes (or ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(65536)
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def test_the_listener_rejects_and_counts_junk_and_keeps_answering(
    push_only_config: Config, listener_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = push_only_config
    notifications = config.notifications
    assert notifications is not None
    port = int(notifications.listen_address.rsplit(":", 1)[1])
    registry = PushRegistry()
    registry.configure(config)
    registry.targets["ews"].replace(Subscription("ews-sub", time.time(), url_secret="the-secret"))
    registry.targets["graph"].replace(Subscription("graph-sub", time.time(), client_state="the-state"))
    listener = Listener(registry)
    listener.take_socket(listener_socket)
    await listener.apply(notifications)
    ews_url = callback_url(notifications, config.targets_by_name()["ews"]).replace("https://", "http://")
    graph_url = callback_url(notifications, config.targets_by_name()["graph"]).replace("https://", "http://")
    slow: list[asyncio.StreamWriter] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def post(url: str, body: bytes | str, **kwargs: Any) -> int:
                async with session.post(url, data=body, **kwargs) as response:
                    await response.read()
                    return response.status

            # Slowloris: connections that send headers, then a body a byte at a time, stay open throughout.
            for _ in range(20):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                head = b"POST /monitor/push/graph/graph HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n{"
                writer.write(head)
                await writer.drain()
                slow.append(writer)

            async def dribble() -> None:
                for _ in range(10):
                    for writer in slow:
                        writer.write(b" ")
                    await asyncio.sleep(0.05)

            dribbling = asyncio.create_task(dribble())

            oversize = b"x" * (MAX_CALLBACK_BYTES + 1)
            assert await post(ews_url, oversize) == 413
            assert await post(graph_url, oversize) == 413

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bound still holds
                for _ in range(MAX_CALLBACK_BYTES // 65536 + 2):
                    yield b"y" * 65536

            assert await post(graph_url, chunks()) == 413
            assert await post(ews_url, b"<not xml") == 400
            assert await post(ews_url, b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>') == 400
            assert await post(ews_url, os.urandom(4096)) == 400
            for junk in ("{not json", "[]", '{"value": 3}', '"value"', os.urandom(512)):
                assert await post(graph_url, junk) == 400
            assert await post(graph_url, json.dumps({"value": [1, "two"]})) == 202  # two malformed items
            assert await post(graph_url, graph_batch("someone-elses", "the-state")) == 202
            assert await post(graph_url, graph_batch("graph-sub", "forged")) == 202
            assert await post(graph_url + "/lifecycle", graph_batch("graph-sub", "forged")) == 202
            assert await post(ews_url.replace("/ews/ews", "/ews/nobody"), b"<x/>") == 404
            assert await post(graph_url.replace("/graph/graph", "/graph/ews"), "{}") == 404  # wrong kind
            assert await post(f"http://127.0.0.1:{port}/elsewhere", b"") == 404
            for method in ("GET", "PUT", "DELETE", "PATCH"):
                async with session.request(method, graph_url) as response:
                    assert response.status == 405
            # Not HTTP at all: a 400 and a closed connection, or just a closed connection.
            answer = await raw_exchange(port, os.urandom(2048) + b"\r\n\r\n")
            assert answer == b"" or answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]

            # A valid callback still gets through, with the slow connections still open.
            assert await post(graph_url, graph_batch("graph-sub", "the-state")) == 202
            await dribbling
            ews_ok = (
                '<?xml version="1.0" encoding="utf-8"?><soap:Envelope '
                'xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:SendNotification '
                'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
                'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages>'
                '<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
                "<m:Notification><t:SubscriptionId>ews-sub</t:SubscriptionId>"
                "<t:PreviousWatermark>AA==</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>"
                "<t:StatusEvent><t:Watermark>AA==</t:Watermark></t:StatusEvent></m:Notification>"
                "</m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification>"
                "</soap:Body></soap:Envelope>"
            )
            ews_secret_url = callback_url(notifications, config.targets_by_name()["ews"], secret="the-secret")
            assert await post(ews_secret_url.replace("https://", "http://"), ews_ok) == 200
            assert await post(ews_url, ews_ok.replace("ews-sub", "an-old-life")) == 200  # answered Unsubscribe
    finally:
        for writer in slow:
            writer.close()
        await listener.stop()

    samples = parse(exposition.render(registry.families()).decode())

    def rejected(target: str, reason: str) -> float | None:
        exchange = "onprem" if target == "ews" else "online"
        return value(samples, "bems_push_rejected_total", target=target, exchange=exchange, reason=reason)

    assert rejected("ews", "oversize") == 1
    assert rejected("ews", "malformed") == 3
    assert rejected("ews", "unknown_subscription") == 1
    assert rejected("graph", "oversize") == 2
    assert rejected("graph", "malformed") == 5 + 2
    assert rejected("graph", "unknown_subscription") == 1
    assert rejected("graph", "client_state") == 2
    ews, graph = registry.targets["ews"], registry.targets["graph"]
    assert ews.notifications["status"] == 1 and graph.notifications["created"] == 1  # only the valid ones
    assert graph.current is not None and graph.current.active  # a forged lifecycle event changed nothing
    # A client that goes away mid-body is routine on the Internet: no error, no traceback in the log.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


# --- 3. Entra ID down or slow --------------------------------------------------------------------------------


async def test_entra_down_fails_token_checks_while_cached_tokens_keep_serving(
    simulator: Simulator, sim_config_file: Path
) -> None:
    config = load_config(sim_config_file)
    online_ews = config.targets_by_name()["online-ews"]
    warm = Resources()
    try:
        first = await execute(CHECKS["token"], config, online_ews, warm)
        assert first.success, first
        for fault in ({"token_endpoint_down": True}, {"token_endpoint_down": False, "throttled": True}):
            simulator.configure_entra(**fault)
            # A token issued before the outage serves until it expires: sign-in still works ...
            auth = await execute(CHECKS["auth"], config, online_ews, warm)
            assert auth.success, (fault, auth)
            # ... while an exporter without a cached token cannot get one, and says why.
            cold = Resources()
            try:
                token = await execute(CHECKS["token"], config, online_ews, cold)
            finally:
                await cold.close()
            assert not token.success and token.reason == Reason.TOKEN, (fault, token)
            assert token.message.startswith("no token from Entra ID: "), token.message
            assert len(token.message) > len("no token from Entra ID: ") + 5
    finally:
        await warm.close()


async def test_an_expired_cached_token_is_not_served_while_entra_is_down(
    simulator: Simulator, sim_config_file: Path
) -> None:
    config = load_config(sim_config_file)
    online_ews = config.targets_by_name()["online-ews"]
    # MSAL treats a token within five minutes of its end as expired: this one is never served from the cache.
    simulator.configure_entra(expires_in=60)
    resources = Resources()
    try:
        assert (await execute(CHECKS["token"], config, online_ews, resources)).success
        simulator.configure_entra(token_endpoint_down=True)
        auth = await execute(CHECKS["auth"], config, online_ews, resources)
        token = await execute(CHECKS["token"], config, online_ews, resources)
    finally:
        await resources.close()
    assert not auth.success, auth
    assert token.reason == Reason.TOKEN, token


async def test_a_slow_entra_ends_within_the_check_timeout(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)  # timeout 1s, interval 2s
    online_ews = config.targets_by_name()["online-ews"]
    await simulator.set_fault("entra", "slow", delay_seconds=8)
    budget = min(config.timeout_of(online_ews).total_seconds() * CHECKS["token"].requests(config, online_ews),
                 config.interval_of(online_ews).total_seconds())  # fmt: skip
    resources = Resources()
    try:
        started = time.monotonic()
        result = await execute(CHECKS["token"], config, online_ews, resources)
        elapsed = time.monotonic() - started
    finally:
        await resources.close()
    assert not result.success and result.reason in (Reason.TIMEOUT, Reason.TOKEN), result
    assert elapsed < budget + 0.5, (elapsed, budget)


# --- 4. secrets appear nowhere ---------------------------------------------------------------------------------


async def test_secrets_from_env_and_file_appear_nowhere_under_faults(
    cli: CLI, simulator: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    credentials = simulator.credentials
    password, client_secret = credentials.onprem_password, credentials.client_secret
    config = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    bemsadmin = data["credentials"]["bemsadmin"]
    del bemsadmin["password_file"]
    bemsadmin["password_env"] = "BEMS_OPERATORS_TEST_PASSWORD"  # the password from the environment
    assert "client_secret_file" in data["credentials"]["entra-app"]  # the client secret from a file
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    env = {"BEMS_OPERATORS_TEST_PASSWORD": password}
    proc, base = await start(cli, http, config, "--log.level", "debug", "--log.format", "json", env=env)

    async def probed() -> bool:
        return value(await scrape(http, base), "bems_probe_success", target="onprem-ews", exchange="onprem",
                     check="auth") == 1  # fmt: skip

    await eventually(probed, "onprem-ews auth to pass with the password from the environment", 10, proc)

    simulator.set_account_fault("wrong_password")
    simulator.configure_entra(token_endpoint_down=True)
    await simulator.set_fault("online-ews", "expired")
    foreign = simulator.endpoints["foreign"].url
    simulator.set_autodiscover_redirect("online-autodiscover", "carol@contoso.test", "http_302",
                                        f"{foreign}/autodiscover/autodiscover.xml")  # fmt: skip

    async def failing() -> bool:
        samples = await scrape(http, base)
        auth = value(samples, "bems_probe_success", target="onprem-ews", exchange="onprem", check="auth")
        tls = value(samples, "bems_probe_success", target="online-ews", exchange="online", check="tls")
        redirect = value(samples, "bems_probe_success", target="online-autodiscover", exchange="online",
                         check="autodiscover")  # fmt: skip
        return auth == 0 and tls == 0 and redirect == 0

    await eventually(failing, "the faults to show", 10, proc)
    outputs: list[str] = []
    for path in ("/metrics", "/", "/config", *(f"/probe?target={t['name']}" for t in data["targets"])):
        outcome = await fetch(http, base + path)
        assert outcome is not None and outcome[0] == 200, (path, outcome)
        outputs.append(outcome[1])
    assert "BEMS_OPERATORS_TEST_PASSWORD" in outputs[2]  # /config names where the password comes from

    os.environ["BEMS_OPERATORS_TEST_PASSWORD"] = password
    try:
        report = await cli.run("probe", "--config.file", str(config), "--log.level", "debug", "--log.format", "json",
                               timeout=60)  # fmt: skip
    finally:
        os.environ.pop("BEMS_OPERATORS_TEST_PASSWORD", None)
    assert report.returncode == 1, report.stdout + report.stderr  # the faults fail checks
    assert "✗" in report.stdout

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    for line in proc.stderr.splitlines():
        assert isinstance(json.loads(line), dict), line
    everything = "\n".join([*outputs, proc.stderr, proc.stdout, report.stdout, report.stderr])
    assert "unauthorized" in everything and "certificate" in everything  # the scan saw the failures
    assert "redirect_blocked" in everything and "Entra ID" in everything
    assert simulator.foreign.requests == []  # the hostile redirect got no request, let alone credentials
    basic = base64.b64encode(f"{credentials.onprem_username}:{password}".encode()).decode()
    for secret in (password, client_secret, basic, base64.b64encode(password.encode()).decode()):
        assert secret not in everything
    for text in (proc.stderr, report.stderr):
        assert "Traceback" not in text, text[-3000:]


# --- 5. the web configuration on every endpoint -------------------------------------------------------------


ENDPOINTS = [
    ("GET", "/"),
    ("GET", "/metrics"),
    ("GET", "/config"),
    ("GET", "/probe?target=x"),
    ("GET", "/-/healthy"),
    ("GET", "/-/ready"),
    ("POST", "/-/reload"),
]


def web_config_file(directory: Path, **tls: str) -> tuple[Path, Path]:
    """A web config with TLS (a fresh CA's certificate) and one bcrypt user, prometheus:pw; and the CA file."""
    directory.mkdir(exist_ok=True)
    ca = CertificateAuthority.create("Operators Test CA")
    cert_pem, key_pem = ca.issue(["localhost"], ["127.0.0.1"])
    (directory / "server.crt").write_bytes(cert_pem)
    (directory / "server.key").write_bytes(key_pem)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", **tls},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()},
    }), encoding="utf-8")  # fmt: skip
    return path, directory / "ca.pem"


async def test_web_config_guards_every_endpoint_and_honours_tls(
    cli: CLI, simulator: Simulator, sim_config_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    web_config, ca_file = web_config_file(tmp_path / "web", min_version="TLS13")
    proc, port = start_activated(cli, "--config.file", str(sim_config_file), "--web.config.file", str(web_config))
    https = f"https://127.0.0.1:{port}"
    tls = ssl.create_default_context(cafile=str(ca_file))
    good = basic_auth("prometheus", "pw")

    async def up() -> bool:
        outcome = await fetch(http, f"{https}/-/healthy", ssl=tls, headers=good)
        return outcome is not None and outcome[0] == 200

    await eventually(up, "/-/healthy over HTTPS", START_TIMEOUT, proc)
    refusals = [{}, basic_auth("prometheus", "wrong"), basic_auth("nobody", "pw"), {"Authorization": "Bearer pw"},
                {"Authorization": "Basic !!!"}]  # fmt: skip
    for method, path in ENDPOINTS:
        for headers in refusals:
            outcome = await fetch(http, https + path, method=method, ssl=tls, headers=headers)
            assert outcome is not None and outcome[0] == 401, (method, path, headers, outcome)
            assert outcome[2].get("WWW-Authenticate", "").startswith("Basic "), (method, path)
            assert "bems_" not in outcome[1] and "onprem-ews" not in outcome[1]
        outcome = await fetch(http, https + path, method=method, ssl=tls, headers=good)
        assert outcome is not None, (method, path)
        # Accepted: the handler answers (an unknown target is 404, readiness may still be 503).
        expected = {"/probe?target=x": {404}, "/-/ready": {200, 503}}.get(path, {200})
        assert outcome[0] in expected, (method, path, outcome[0], outcome[1][:300])

    # Plain HTTP on the TLS port gets nothing.
    assert await fetch(http, f"http://127.0.0.1:{port}/metrics", headers=good) is None
    # A client that speaks at most TLS 1.2 cannot connect to a TLS 1.3-only server.
    tls12 = ssl.create_default_context(cafile=str(ca_file))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"{https}/metrics", ssl=tls12, headers=good) as response:
            await response.read()
    tls13 = ssl.create_default_context(cafile=str(ca_file))
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    outcome = await fetch(http, f"{https}/metrics", ssl=tls13, headers=good)
    assert outcome is not None and outcome[0] == 200
    assert proc.running()
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]


async def test_the_bcrypt_cache_verifies_repeated_credentials_once(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted in-process: ``exporter.web.webconfig.checkpw`` (the one bcrypt verification) is wrapped."""
    import exporter.web.webconfig as webconfig

    calls: list[bytes] = []
    real = webconfig.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webconfig, "checkpw", counting)
    web_config = load_web_config(web_config_file(tmp_path / "web")[0])
    exporter = Exporter(str(sim_config_file))
    exporter.load()
    async with TestClient(TestServer(create_app(exporter, web_config), host="127.0.0.1")) as client:
        good = basic_auth("prometheus", "pw")
        statuses = [(await client.get("/-/healthy", headers=good)).status for _ in range(200)]
        assert statuses == [200] * 200
        assert len(calls) == 1
        bad = basic_auth("prometheus", "wrong")
        assert [(await client.get("/-/healthy", headers=bad)).status for _ in range(50)] == [401] * 50
        assert len(calls) == 2  # a wrong password is cached as wrong: a retrying client costs one check too


# --- 6. graceful shutdown -------------------------------------------------------------------------------------


@pytest.fixture
async def push_simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(tmp_path / "sim", minute_seconds=1.0) as sim:
        sim.configure_entra(graph_roles=list(DEMO_GRAPH_ROLES))
        yield sim


async def test_sigterm_with_checks_in_flight_and_a_graph_subscription(
    cli: CLI, push_simulator: Simulator, tmp_path: Path, http: aiohttp.ClientSession, listener_socket: socket.socket
) -> None:
    sim = push_simulator
    config = sim.write_exporter_config(tmp_path / "bems.yml", interval="2s", timeout="1500ms")
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["notifications"] = sim.notifications_block(tmp_path, port_of(listener_socket))
    for target in data["targets"]:
        if target["name"] == "online-graph":
            target["push"] = {"mailbox": "carol@contoso.test", "write_probe": True, "write_interval": "1s",
                              "stall_after": "4s"}  # fmt: skip
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    await sim.set_fault("onprem-ews", "hang")  # accepts connections, never answers
    proc, _ = await start(
        cli, http, config, "--log.level", "debug", "--log.format", "json", notifications=listener_socket
    )
    listener_socket.close()  # the exporter's alone: its exit closes the listener

    def alive() -> list[str]:
        return [sid for sid, subscription in sim.graph_subscriptions.items() if subscription.alive]

    await eventually(lambda: bool(alive()), "a live Graph subscription", 15, proc)
    await eventually(lambda: '"check": "tls"' in proc.stderr or "onprem-ews" in proc.stderr, "checks", 5, proc)
    await asyncio.sleep(1.0)  # the hanging endpoint's checks are now in flight
    subscriptions = alive()

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 5.0
    assert proc.group_is_empty()
    for sid in subscriptions:
        assert sim.graph_subscriptions[sid].alive is False, sid
    entries = [json.loads(line) for line in proc.stderr.splitlines()]
    cancelled = [e for e in entries if e["msg"] == "check cancelled by shutdown"]
    assert cancelled, "no in-flight check was cancelled"
    assert any(e.get("target") == "onprem-ews" for e in cancelled), cancelled
    assert not any(e["level"] == "error" for e in entries), [e for e in entries if e["level"] == "error"]
    assert "Traceback" not in proc.stderr
