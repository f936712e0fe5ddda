"""Who may call what on the web port (issue 15, items 1 and 8): the loopback gate, CSRF, the Host allow-list.

Real sockets on 127.0.0.1 throughout. A peer on another address cannot be made on loopback, so the
``peer`` fixture puts a middleware in front of the app's own that gives the request another peer address,
as aiohttp's socket would; the gate reads nothing else (``X-Forwarded-For`` included). One test connects
from 127.0.0.2 for real, to show the whole 127.0.0.0/8 is loopback.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from samples import parse, value

from exporter.daemon.app import Exporter
from exporter.web.http_app import Access, create_app, is_loopback, parse_allowed_hosts
from exporter.web.webconfig import load_web_config

REMOTE = "192.0.2.10"  # TEST-NET-1 (RFC 5737): never routed, only ever a fake peer here

CONFIG = """
scenario: onprem-bems-hybrid
credentials:
  bemsadmin: {username: 'CORP\\BEMSAdmin', password: not-used-here}
targets:
  - {name: ews, kind: ews, exchange: onprem, url: 'https://mail.corp.example.com/EWS/Exchange.asmx',
     credential: bemsadmin, auth: [ntlm]}
"""


@pytest.fixture
def exporter(tmp_path: Path) -> Exporter:
    """A loaded exporter that never starts its checks: the tests only need its endpoints."""
    path = tmp_path / "bems.yml"
    path.write_text(CONFIG, encoding="utf-8")
    loaded = Exporter(str(path))
    loaded.load()
    return loaded


Serve = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def serve(exporter: Exporter) -> AsyncIterator[Serve]:
    """Starts ``create_app`` on 127.0.0.1; ``peer`` (when given) is the address the app sees the client at."""
    clients: list[TestClient] = []

    async def start(access: Access | None = None, web_config_text: str | None = None, peer: str | None = None):
        web_config = None
        if web_config_text is not None:
            path = exporter_dir(exporter) / "web.yml"
            path.write_text(web_config_text, encoding="utf-8")
            web_config = load_web_config(path)
        app = create_app(exporter, web_config, access)
        if peer is not None:

            @web.middleware
            async def fake_peer(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]):
                return await handler(request.clone(remote=peer))

            app.middlewares.insert(0, fake_peer)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def exporter_dir(exporter: Exporter) -> Path:
    return Path(exporter.config_file).parent


# --- what loopback is ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        pytest.param("127.0.0.1", True, id="ipv4"),
        pytest.param("127.0.0.2", True, id="ipv4-other-loopback"),
        pytest.param("127.255.255.254", True, id="ipv4-end-of-127/8"),
        pytest.param("::1", True, id="ipv6"),
        pytest.param("::ffff:127.0.0.1", True, id="ipv4-mapped"),
        pytest.param("::ffff:127.3.2.1", True, id="ipv4-mapped-other-loopback"),
        pytest.param("128.0.0.1", False, id="ipv4-past-127/8"),
        pytest.param("10.0.0.1", False, id="ipv4-private"),
        pytest.param("::ffff:192.0.2.10", False, id="ipv4-mapped-remote"),
        pytest.param("2001:db8::1", False, id="ipv6-remote"),
        pytest.param("fe80::1%eth0", False, id="ipv6-link-local-with-zone"),
        pytest.param("localhost", False, id="a-name-is-not-a-peer-address"),
        pytest.param("", False, id="empty"),
        pytest.param(None, False, id="unknown"),
    ],
)
def test_loopback_is_127_slash_8_and_ipv6_loopback_mapped_or_not(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback


# --- item 1: /probe, /config and /-/reload answer loopback, others only with authentication or a flag --------

GATED = [
    pytest.param("GET", "/probe?target=nope", "--web.enable-remote-probe", id="probe"),
    pytest.param("GET", "/config", "--web.enable-remote-probe", id="config"),
    pytest.param("POST", "/-/reload", "--web.enable-lifecycle", id="reload-post"),
    pytest.param("PUT", "/-/reload", "--web.enable-lifecycle", id="reload-put"),
]
OPEN = [
    pytest.param("/", id="landing"),
    pytest.param("/metrics", id="metrics"),
    pytest.param("/-/healthy", id="healthy"),
    pytest.param("/-/ready", id="ready"),
]


@pytest.mark.parametrize(("method", "path", "flag"), GATED)
async def test_a_remote_client_is_refused_with_the_flag_named(serve: Serve, method: str, path: str, flag: str) -> None:
    client = await serve(peer=REMOTE)
    # X-Forwarded-For is anyone's to send: it must not make a remote client local.
    response = await client.request(method, path, headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "::1"})
    assert response.status == 403
    text = await response.text()
    assert flag in text and "loopback" in text and "basic_auth_users" in text, text
    assert "bemsadmin" not in text.lower()


@pytest.mark.parametrize(
    ("method", "path", "access", "allowed"),
    [
        pytest.param("GET", "/probe?target=nope", Access(remote_probe=True), True, id="probe-remote-probe"),
        pytest.param("GET", "/config", Access(remote_probe=True), True, id="config-remote-probe"),
        pytest.param("POST", "/-/reload", Access(remote_lifecycle=True), True, id="reload-lifecycle"),
        pytest.param("GET", "/probe?target=nope", Access(remote_lifecycle=True), False, id="probe-lifecycle-only"),
        pytest.param("GET", "/config", Access(remote_lifecycle=True), False, id="config-lifecycle-only"),
        pytest.param("POST", "/-/reload", Access(remote_probe=True), False, id="reload-remote-probe-only"),
    ],
)
async def test_each_flag_opens_its_own_endpoints_to_remote_clients(
    serve: Serve, method: str, path: str, access: Access, allowed: bool
) -> None:
    client = await serve(access, peer=REMOTE)
    response = await client.request(method, path)
    expected = {"/probe?target=nope": 404}.get(path, 200) if allowed else 403  # 404: the handler ran
    assert response.status == expected, await response.text()


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize(("method", "path", "flag"), GATED)
async def test_loopback_clients_are_answered_as_before(
    serve: Serve, peer: str, method: str, path: str, flag: str
) -> None:
    client = await serve(peer=peer)
    response = await client.request(method, path)
    assert response.status == (404 if path.startswith("/probe") else 200), await response.text()


@pytest.mark.parametrize("path", OPEN)
async def test_the_landing_page_metrics_and_health_stay_open_to_remote_clients(serve: Serve, path: str) -> None:
    client = await serve(peer=REMOTE)
    response = await client.get(path)
    assert response.status in ({200, 503} if path == "/-/ready" else {200}), await response.text()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(("method", "path", "flag"), GATED)
async def test_a_web_config_with_basic_auth_opens_the_endpoints_to_authenticated_remote_clients(
    serve: Serve, method: str, path: str, flag: str
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    client = await serve(web_config_text=f"basic_auth_users:\n  prometheus: '{hashed}'\n", peer=REMOTE)
    assert (await client.request(method, path)).status == 401
    response = await client.request(method, path, headers=_basic("prometheus", "pw"))
    assert response.status == (404 if path.startswith("/probe") else 200), await response.text()


async def test_a_web_config_without_authentication_does_not_open_them(serve: Serve) -> None:
    client = await serve(web_config_text="http_server_config:\n  headers: {X-Frame-Options: deny}\n", peer=REMOTE)
    response = await client.get("/config")
    assert response.status == 403
    assert response.headers["X-Frame-Options"] == "deny"  # the refusal carries the configured headers too


async def test_a_real_connection_from_127_0_0_2_is_loopback(serve: Serve) -> None:
    client = await serve()  # no fake peer: the address is the socket's
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(client.make_url("/config")) as response,
    ):
        assert response.status == 200
        assert "bemsadmin" in await response.text()


# --- item 8: no cross-site form, no foreign Origin, and an optional Host allow-list -------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "data", "status"),
    [
        pytest.param("POST", "/-/reload", {}, None, 200, id="curl-x-post"),
        pytest.param("PUT", "/-/reload", {}, None, 200, id="curl-x-put"),
        pytest.param("POST", "/-/reload", {"Content-Type": "application/json"}, b"{}", 200, id="json-body"),
        pytest.param("POST", "/-/reload", {}, {"a": "b"}, 403, id="urlencoded-form"),
        pytest.param("PUT", "/-/reload", {}, {"a": "b"}, 403, id="urlencoded-form-put"),
        pytest.param(
            "POST", "/-/reload", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--", 403, id="multipart"
        ),
        pytest.param("POST", "/-/reload", {"Content-Type": "text/plain"}, b"a=b", 403, id="text-plain-form"),
        pytest.param("POST", "/-/reload", {"Origin": "http://evil.example"}, None, 403, id="foreign-origin"),
        pytest.param("POST", "/-/reload", {"Origin": "null"}, None, 403, id="opaque-origin"),
        pytest.param("GET", "/config", {"Origin": "https://evil.example"}, None, 403, id="config-foreign-origin"),
        pytest.param(
            "GET", "/probe?target=nope", {"Origin": "http://evil.example"}, None, 403, id="probe-foreign-origin"
        ),
    ],
)
async def test_cross_site_requests_to_the_gated_endpoints_are_refused(
    serve: Serve, method: str, path: str, headers: dict[str, str], data: object, status: int
) -> None:
    client = await serve()
    response = await client.request(method, path, headers=headers, data=data)
    assert response.status == status, await response.text()


async def test_a_same_origin_request_is_answered(serve: Serve) -> None:
    client = await serve()
    origin = str(client.make_url("/")).rstrip("/")
    assert (await client.post("/-/reload", headers={"Origin": origin})).status == 200


@pytest.mark.parametrize(
    ("path", "host", "status"),
    [
        pytest.param("/metrics", "exporter.corp.example:10442", 200, id="listed"),
        pytest.param("/metrics", "EXPORTER.corp.example", 200, id="listed-any-case-no-port"),
        pytest.param("/config", "10.1.2.3:10442", 200, id="listed-address"),
        pytest.param("/metrics", "localhost:10442", 200, id="localhost"),
        pytest.param("/metrics", "127.0.0.1:10442", 200, id="ipv4-loopback"),
        pytest.param("/metrics", "[::1]:10442", 200, id="ipv6-loopback"),
        pytest.param("/metrics", "evil.example:10442", 421, id="rebound-metrics"),
        pytest.param("/config", "evil.example", 421, id="rebound-config"),
        pytest.param("/", "exporter.corp.example.evil.example", 421, id="rebound-landing"),
        pytest.param("/nowhere", "evil.example", 421, id="rebound-unknown-path"),
        pytest.param("/-/healthy", "10.9.9.9:10442", 200, id="healthy-any-host"),
        pytest.param("/-/ready", "10.9.9.9:10442", 503, id="ready-any-host"),
    ],
)
async def test_the_host_allow_list_refuses_a_foreign_host(serve: Serve, path: str, host: str, status: int) -> None:
    client = await serve(Access(allowed_hosts=parse_allowed_hosts("exporter.corp.example,10.1.2.3")))
    response = await client.get(path, headers={"Host": host})
    assert response.status == status, await response.text()
    if status == 421:
        assert "--web.allowed-hosts" in await response.text()


async def test_without_an_allow_list_any_host_is_served(serve: Serve) -> None:
    client = await serve()
    assert (await client.get("/metrics", headers={"Host": "evil.example"})).status == 200


@pytest.mark.parametrize(
    ("value", "hosts"),
    [
        pytest.param("a.example,b.example", {"a.example", "b.example"}, id="two"),
        pytest.param(" A.Example , ,10.0.0.5", {"a.example", "10.0.0.5"}, id="spaces-case-empties"),
        pytest.param("[::1],2001:db8::5", {"::1", "2001:db8::5"}, id="ipv6"),
        pytest.param("a.example:10442", None, id="a-port-is-refused"),
        pytest.param(" , ", None, id="nothing"),
    ],
)
def test_allowed_hosts_are_parsed(value: str, hosts: set[str] | None) -> None:
    if hosts is None:
        with pytest.raises(ValueError):
            parse_allowed_hosts(value)
    else:
        assert parse_allowed_hosts(value) == hosts


# --- the web config reloads with the configuration while the app runs (issue 16) -----------------------------


def web_config_with_frame_options(value: str) -> str:
    return f"http_server_config:\n  headers: {{X-Frame-Options: {value}}}\n"


async def test_a_reload_reads_the_web_config_again_and_a_bad_one_keeps_the_last_good(
    serve: Serve, exporter: Exporter
) -> None:
    client = await serve(web_config_text=web_config_with_frame_options("deny"))
    web_yml = exporter_dir(exporter) / "web.yml"

    web_yml.write_text(web_config_with_frame_options("sameorigin"), encoding="utf-8")
    reloaded = await client.post("/-/reload")
    assert reloaded.status == 200, await reloaded.text()
    assert (await client.get("/-/healthy")).headers["X-Frame-Options"] == "sameorigin"  # from the next request on

    web_yml.write_text(web_config_with_frame_options("allow"), encoding="utf-8")  # not a value the toolkit takes
    refused = await client.post("/-/reload")
    assert refused.status == 500
    assert "X-Frame-Options" in await refused.text()
    scrape = await client.get("/metrics")
    assert scrape.headers["X-Frame-Options"] == "sameorigin"  # the last good web config still rules
    samples = parse(await scrape.text())
    assert value(samples, "bems_web_config_last_reload_successful") == 0
    assert value(samples, "bems_config_last_reload_successful") == 1  # the configuration file itself was fine


async def test_a_stopped_app_leaves_the_reload_of_its_web_config(serve: Serve, exporter: Exporter) -> None:
    client = await serve(web_config_text=web_config_with_frame_options("deny"))
    assert len(exporter.reload_hooks) == 1
    await client.close()
    assert exporter.reload_hooks == []
    assert await exporter.reload() is None  # the app's web config file is no longer read
