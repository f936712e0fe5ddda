"""Checks through an outbound HTTP CONNECT proxy: the simulator's proxy, over real loopback sockets."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from check_runner import run

from bems_simulator import ProxyFault, ProxyRequest, Simulator
from bems_simulator import proxy as proxy_module
from exporter.checks import tls as tls_probe
from exporter.config import PROXY_FROM_ENVIRONMENT, Config, Target, parse_config
from exporter.results import Reason

CHECK_NAMES = ["reachability", "tls"]
PROXY_USERNAME = "svc-bems-proxy"
PROXY_PASSWORD = "pr0xy-s3cret-Value"  # distinctive, so a leak into a result is unmistakable
ENVIRONMENT_PROXY_VARIABLES = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]


def tunnels_of_a_pass(check: str) -> int:
    """The tunnels one passing run of ``check`` opens, from a cold cache of verdicts (tests/conftest.py).

    Before Python 3.13 the tls check judges public trust by one more handshake per chain, through the proxy too.
    """
    return 1 + (1 if check == "tls" and not tls_probe.PRESENTED_CHAIN_IS_PUBLIC else 0)


TUNNELS_OF_PASSING_CHECKS = sum(tunnels_of_a_pass(check) for check in CHECK_NAMES)


# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(autouse=True)
def no_stray_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from an environment without proxy variables; those that need one set it."""
    for variable in ENVIRONMENT_PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def make_config(
    sim_config_file: Path, tmp_path: Path, targets: dict[str, Any] | None = None, **defaults: Any
) -> Config:
    """The simulator's exporter config with extra ``defaults`` keys, per-target keys, and a proxy account."""
    data = yaml.safe_load(sim_config_file.read_text())
    data["defaults"].update(defaults)
    for target in data["targets"]:
        target.update((targets or {}).get(target["name"], {}))
    password_file = tmp_path / "proxy.password"
    password_file.write_text(PROXY_PASSWORD)
    data["credentials"]["proxy-account"] = {"username": PROXY_USERNAME, "password_file": str(password_file)}
    return parse_config(yaml.safe_dump(data), str(sim_config_file))


def target_of(config: Config, name: str = "onprem-ews", **changes: Any) -> Target:
    return config.targets_by_name()[name].model_copy(update=changes)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_checks_pass_through_the_proxy(simulator: Simulator, sim_config_file: Path, tmp_path: Path) -> None:
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url)
    port = simulator.endpoints["onprem-ews"].port
    for check in CHECK_NAMES:
        result = await run(config, target_of(config), check)
        assert result.success, result
        step_names = [step.name for step in result.steps]
        # The exporter resolves only the proxy; the target's name is the proxy's to resolve.
        assert step_names[:3] == [
            "DNS lookup of proxy 127.0.0.1",
            f"TCP connect to proxy 127.0.0.1:{simulator.proxy.port}",
            f"CONNECT localhost:{port} through the proxy",
        ]
    assert simulator.proxy.requests == [ProxyRequest("localhost", port, True)] * TUNNELS_OF_PASSING_CHECKS


async def test_the_proxy_resolves_the_target_name(simulator: Simulator, sim_config_file: Path, tmp_path: Path) -> None:
    # mail.corp.example.test does not resolve here: only the proxy's tunnel can reach it, and the
    # certificate must name it, so a pass shows the TLS check verified the host name end to end.
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url)
    port = simulator.endpoints["onprem-ews"].port
    target = target_of(config, url=f"https://mail.corp.example.test:{port}/EWS/Exchange.asmx")
    for check in CHECK_NAMES:
        assert (await run(config, target, check)).success
    assert {request.host for request in simulator.proxy.requests} == {"mail.corp.example.test"}


@pytest.mark.parametrize(
    ("fault", "message"),
    [("expired", "certificate has expired"), ("untrusted", "unable to get local issuer certificate")],
)
async def test_tls_verifies_the_endpoint_certificate_through_the_tunnel(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, fault: str, message: str
) -> None:
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url)
    await simulator.set_fault("onprem-ews", fault)
    result = await run(config, target_of(config), "tls")
    assert result.reason == Reason.CERTIFICATE, result
    assert message in result.message
    # The tunnel carries TLS to the endpoint untouched: reachability through the proxy still passes.
    assert (await run(config, target_of(config), "reachability")).success


@pytest.mark.parametrize("check", CHECK_NAMES)
async def test_denying_proxy_is_a_proxy_failure(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, check: str
) -> None:
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url)
    await simulator.proxy.set_fault(ProxyFault.DENY)
    result = await run(config, target_of(config), check)
    assert result.reason == Reason.PROXY, result
    port = simulator.endpoints["onprem-ews"].port
    assert f"the proxy refused CONNECT to localhost:{port}: HTTP/1.1 403 Forbidden" in result.message
    assert f"allow CONNECT to localhost:{port}" in result.hint


@pytest.mark.parametrize("check", CHECK_NAMES)
async def test_proxy_not_listening_is_a_proxy_failure(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, check: str
) -> None:
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url)
    await simulator.proxy.set_fault("refuse")
    result = await run(config, target_of(config), check)
    assert result.reason == Reason.PROXY, result
    assert f"connection to 127.0.0.1:{simulator.proxy.port} refused" in result.message
    assert "check that the proxy is running" in result.hint
    # Back on the same port: the configured URL works again.
    await simulator.proxy.set_fault("none")
    assert (await run(config, target_of(config), check)).success


async def test_endpoint_the_proxy_cannot_reach_is_a_proxy_failure(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path
) -> None:
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url)
    await simulator.set_fault("onprem-ews", "refuse")
    result = await run(config, target_of(config), "reachability")
    assert result.reason == Reason.PROXY, result
    assert "502 Bad Gateway" in result.message


@pytest.mark.parametrize("check", CHECK_NAMES)
async def test_proxy_requiring_credentials_without_proxy_credential(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, check: str
) -> None:
    simulator.proxy.require_credentials(PROXY_USERNAME, PROXY_PASSWORD)
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url)
    result = await run(config, target_of(config), check)
    assert result.reason == Reason.PROXY, result
    assert "407 Proxy Authentication Required" in result.message
    assert "proxy_credential" in result.hint
    assert [request.authorized for request in simulator.proxy.requests] == [False]


@pytest.mark.parametrize("check", CHECK_NAMES)
async def test_proxy_credential_is_sent_and_never_shown(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, check: str
) -> None:
    simulator.proxy.require_credentials(PROXY_USERNAME, PROXY_PASSWORD)
    config = make_config(sim_config_file, tmp_path, proxy_url=simulator.proxy_url, proxy_credential="proxy-account")
    result = await run(config, target_of(config), check)
    assert result.success, result
    assert [request.authorized for request in simulator.proxy.requests] == [True] * tunnels_of_a_pass(check)
    assert PROXY_PASSWORD not in repr(result)

    simulator.proxy.require_credentials(PROXY_USERNAME, "another password")
    result = await run(config, target_of(config), check)
    assert result.reason == Reason.PROXY
    assert "407" in result.message
    assert PROXY_PASSWORD not in repr(result)  # message, hint and every step


async def test_environment_proxy_is_ignored_by_default(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ENVIRONMENT_PROXY_VARIABLES:
        monkeypatch.setenv(variable, simulator.proxy_url)
    config = make_config(sim_config_file, tmp_path)
    for check in CHECK_NAMES:
        result = await run(config, target_of(config), check)
        assert result.success, result
        assert not any("proxy" in step.name for step in result.steps)
    assert simulator.proxy.requests == []


@pytest.mark.parametrize(
    ("variable", "with_scheme"), [("HTTPS_PROXY", True), ("https_proxy", True), ("HTTPS_PROXY", False)]
)
async def test_environment_proxy_is_used_when_asked_for(
    simulator: Simulator,
    sim_config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    with_scheme: bool,
) -> None:
    # Without a scheme ("127.0.0.1:3128") as many hosts set it, and as curl and requests accept it.
    monkeypatch.setenv(variable, simulator.proxy_url if with_scheme else simulator.proxy_url.removeprefix("http://"))
    config = make_config(sim_config_file, tmp_path, proxy_url=PROXY_FROM_ENVIRONMENT)
    for check in CHECK_NAMES:
        assert (await run(config, target_of(config), check)).success
    port = simulator.endpoints["onprem-ews"].port
    assert simulator.proxy.requests == [ProxyRequest("localhost", port, True)] * TUNNELS_OF_PASSING_CHECKS


async def test_from_environment_without_a_variable_connects_directly(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path
) -> None:
    config = make_config(sim_config_file, tmp_path, proxy_url=PROXY_FROM_ENVIRONMENT)
    assert (await run(config, target_of(config), "reachability")).success
    assert simulator.proxy.requests == []


async def test_hanging_proxy_times_out_and_its_connection_is_closed(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path
) -> None:
    # A listening socket that nobody accepts from: the TCP connect succeeds, the CONNECT is never answered.
    with socket.create_server(("127.0.0.1", 0)) as hanging_proxy:
        proxy_url = f"http://127.0.0.1:{hanging_proxy.getsockname()[1]}"
        config = make_config(sim_config_file, tmp_path, proxy_url=proxy_url)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            result = await run(config, target_of(config), "reachability")
            await asyncio.sleep(0.05)  # the loop drops its last references to the check's objects
            gc.collect()
        assert result.reason == Reason.TIMEOUT, result
        assert "through the proxy did not finish" in result.message
        assert "the proxy does not answer the CONNECT in time" in result.hint  # not blamed on the endpoint
        # Closed by the exporter, not left to the garbage collector (which warns, and may never come).
        assert not [warning for warning in caught if issubclass(warning.category, ResourceWarning)]
        accepted, _ = hanging_proxy.accept()
        with accepted:
            # Read without blocking the event loop, which runs the transport's close.
            accepted.setblocking(False)
            loop = asyncio.get_running_loop()
            assert (await asyncio.wait_for(loop.sock_recv(accepted, 4096), 1)).startswith(b"CONNECT ")
            assert await asyncio.wait_for(loop.sock_recv(accepted, 4096), 1) == b""


async def test_target_proxy_url_overrides_the_default(
    simulator: Simulator, sim_config_file: Path, tmp_path: Path
) -> None:
    dead_proxy_url = f"http://127.0.0.1:{unused_port()}"
    config = make_config(
        sim_config_file, tmp_path, {"onprem-ews": {"proxy_url": simulator.proxy_url}}, proxy_url=dead_proxy_url
    )
    for check in CHECK_NAMES:
        assert (await run(config, target_of(config, "onprem-ews"), check)).success
        assert (await run(config, target_of(config, "onprem-autodiscover"), check)).reason == Reason.PROXY
    port = simulator.endpoints["onprem-ews"].port
    assert simulator.proxy.requests == [ProxyRequest("localhost", port, True)] * TUNNELS_OF_PASSING_CHECKS


# -- the simulator's proxy on the wire ---------------------------------------------------------


async def exchange(simulator: Simulator, request: bytes) -> bytes:
    """Send raw bytes to the proxy; everything it answers until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", simulator.proxy.port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), timeout=2)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n", b"405 Method Not Allowed"),
        (b"CONNECT localhost HTTP/1.1\r\n\r\n", b"400 Bad Request"),
        (b"CONNECT localhost:99999 HTTP/1.1\r\n\r\n", b"400 Bad Request"),
        (b"hello\r\n\r\n", b"400 Bad Request"),
        (b"CONNECT localhost:443 HTTP/1.1\r\nX-Padding: " + b"x" * 9000, b"431 Request Header Fields Too Large"),
    ],
)
async def test_proxy_rejects_what_is_not_a_bounded_connect(
    simulator: Simulator, request_bytes: bytes, status: bytes
) -> None:
    answer = await exchange(simulator, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b"\r\n")
    if status.startswith(b"405"):
        assert b"\r\nAllow: CONNECT\r\n" in answer


async def test_proxy_asks_for_basic_credentials(simulator: Simulator) -> None:
    simulator.proxy.require_credentials("user", "password")
    answer = await exchange(simulator, b"CONNECT localhost:443 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b'\r\nProxy-Authenticate: Basic realm="BEMS Exchange simulator proxy"\r\n' in answer


async def test_proxy_drops_a_client_that_never_finishes_its_request(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy_module, "HEAD_TIMEOUT_SECONDS", 0.2)
    assert await exchange(simulator, b"CONNECT localhost:443 HTTP/1.1\r\n") == b""
    assert simulator.proxy.requests == []


async def test_refuse_closes_open_tunnels(simulator: Simulator) -> None:
    port = simulator.endpoints["onprem-ews"].port
    reader, writer = await asyncio.open_connection("127.0.0.1", simulator.proxy.port)
    try:
        writer.write(f"CONNECT localhost:{port} HTTP/1.1\r\n\r\n".encode())
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection Established\r\n\r\n"
        await simulator.proxy.set_fault("refuse")
        assert await asyncio.wait_for(reader.read(), timeout=2) == b""
    finally:
        writer.close()


async def test_unknown_proxy_fault_is_rejected(simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="valid faults: none, deny, refuse"):
        await simulator.proxy.set_fault("flaky")
    assert simulator.proxy.fault is ProxyFault.NONE


@pytest.mark.parametrize(
    ("environment", "shown", "problem"),
    [
        pytest.param(f"http://{PROXY_USERNAME}:{PROXY_PASSWORD}@proxy.corp:31x8", "http://proxy.corp:31x8",
                     "has an invalid port", id="invalid-port"),
        pytest.param(f"http://{PROXY_USERNAME}:{PROXY_PASSWORD}@:3128", "http://:3128", "has no host", id="no-host"),
        pytest.param(f"{PROXY_USERNAME}:{PROXY_PASSWORD}@proxy.corp:31x8", "http://proxy.corp:31x8",
                     "has an invalid port", id="without-scheme"),
    ],
)  # fmt: skip
async def test_credentials_in_the_environment_proxy_url_are_never_echoed(
    sim_config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: str, shown: str, problem: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", environment)
    config = make_config(sim_config_file, tmp_path, proxy_url=PROXY_FROM_ENVIRONMENT)
    result = await run(config, target_of(config), "reachability")
    assert result.reason == Reason.PROXY, result
    assert result.message == f"the proxy URL {shown!r} {problem}"
    everything = f"{result.message} {result.hint} {[step.name for step in result.steps]}"
    assert PROXY_PASSWORD not in everything and PROXY_USERNAME not in everything


def test_the_password_of_a_used_environment_proxy_url_is_redacted(
    sim_config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://svc:env%40Proxy-Pass@proxy.corp:3128")
    assert "env@Proxy-Pass" not in make_config(sim_config_file, tmp_path).secrets()  # not used: not registered
    assert "env@Proxy-Pass" in make_config(sim_config_file, tmp_path, proxy_url=PROXY_FROM_ENVIRONMENT).secrets()
