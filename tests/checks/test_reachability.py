"""The reachability check: DNS, the TCP connect and a proxy in the way, each outcome with its reason."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from check_runner import configured_target, run, run_round
from dns_servers import running_dnsmasq

from bems_simulator.server import Simulator
from exporter.checks import planned_checks
from exporter.config import DnsConfig, DnsView, Scenario, Target, load_config
from exporter.daemon import scenario
from exporter.daemon.store import ResultStore
from exporter.protocol import tcp_tls as net
from exporter.results import CheckResult, Reason

# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_unresolvable_host_is_a_dns_failure(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "onprem-ews", url="https://no-such-host.invalid/EWS/Exchange.asmx")
    for check in ("reachability", "tls"):
        result = await run(config, target, check)
        assert result.reason == Reason.DNS, result
        assert "no-such-host.invalid does not resolve" in result.message


def _connect_fails(error: int) -> Callable[..., object]:
    async def open_socket(address: str, port: int) -> object:
        raise OSError(error, os.strerror(error))

    return open_socket


async def _never_connects(address: str, port: int) -> object:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


# How a TCP connect ends, and what the reachability and tls checks then report, directly and through a proxy.
CONNECT_OUTCOMES = [
    pytest.param(
        _connect_fails(errno.ECONNREFUSED),
        Reason.REFUSED,
        "connection to 127.0.0.1:{port} refused",
        "nothing accepts connections on 127.0.0.1:{port}",
        id="refused",
    ),
    pytest.param(
        _connect_fails(errno.ETIMEDOUT),
        Reason.TIMEOUT,
        "connection to 127.0.0.1:{port} timed out",
        "a firewall may be dropping packets to port {port}",
        id="kernel-timeout",
    ),
    pytest.param(
        _connect_fails(errno.EHOSTUNREACH),
        Reason.UNREACHABLE,
        "cannot connect to 127.0.0.1:{port}: No route to host",
        "check routing and firewalls",
        id="host-unreachable",
    ),
    pytest.param(
        _connect_fails(errno.ENETUNREACH),
        Reason.UNREACHABLE,
        "cannot connect to 127.0.0.1:{port}: Network is unreachable",
        "check routing and firewalls",
        id="network-unreachable",
    ),
    pytest.param(
        _never_connects,
        Reason.TIMEOUT,
        "TCP connect to 127.0.0.1:{port} did not finish within 1s",
        "a firewall may be dropping packets to port {port}",
        id="check-timeout",
    ),
]


# Each check alone, and both as the scheduler runs them: one round, tls handed reachability's connect outcome.
@pytest.mark.parametrize("checks", [("reachability",), ("tls",), ("reachability", "tls")], ids="+".join)
@pytest.mark.parametrize(("open_socket", "reason", "message", "hint"), CONNECT_OUTCOMES)
async def test_each_connect_outcome_has_its_reason(
    simulator: Simulator,
    sim_config_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    checks: tuple[str, ...],
    open_socket: Callable[..., object],
    reason: Reason,
    message: str,
    hint: str,
) -> None:
    config = load_config(sim_config_file)
    port = simulator.endpoints["onprem-ews"].port
    target = configured_target(config, "onprem-ews", url=f"https://127.0.0.1:{port}/EWS/Exchange.asmx")
    attempts = []

    async def counted(address: str, port: int) -> object:
        attempts.append((address, port))
        return await open_socket(address, port)  # type: ignore[misc]

    monkeypatch.setattr(net, "_open_socket", counted)
    results = await run_round(config, target, checks) if len(checks) > 1 else [await run(config, target, *checks)]
    assert [result.check for result in results] == list(checks)
    for result in results:
        assert (result.reason, result.message) == (reason, message.format(port=port))
        assert hint.format(port=port) in result.hint
    assert len(attempts) == 1  # a round connects once for both checks


async def test_in_a_round_an_unresolvable_host_fails_both_with_one_lookup(
    simulator: Simulator, sim_config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "onprem-ews", url="https://no-such-host.invalid/EWS/Exchange.asmx")
    lookups = []
    real_resolve = net.resolve

    async def counted(host: str, port: int) -> tuple[list[str], float]:
        lookups.append(host)
        return await real_resolve(host, port)

    monkeypatch.setattr(net, "resolve", counted)
    results = await run_round(config, target, ("reachability", "tls"))
    assert [(r.check, r.reason) for r in results] == [("reachability", Reason.DNS), ("tls", Reason.DNS)]
    assert "no-such-host.invalid does not resolve" in results[1].message
    assert lookups == ["no-such-host.invalid"]


@pytest.mark.parametrize("check", ["reachability", "tls"])
@pytest.mark.parametrize(("open_socket", "reason", "message", "hint"), CONNECT_OUTCOMES[:-1])
async def test_a_proxy_that_cannot_be_connected_to_is_a_proxy_failure(
    simulator: Simulator,
    sim_config_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    check: str,
    open_socket: Callable[..., object],
    reason: Reason,
    message: str,
    hint: str,
) -> None:
    proxy_port = int(simulator.proxy_url.rsplit(":", 1)[1])
    config = load_config(sim_config_file)
    config = config.model_copy(
        update={"defaults": config.defaults.model_copy(update={"proxy_url": f"http://127.0.0.1:{proxy_port}"})}
    )
    monkeypatch.setattr(net, "_open_socket", open_socket)
    result = await run(config, configured_target(config, "onprem-ews"), check)
    assert (result.reason, result.message) == (Reason.PROXY, message.format(port=proxy_port))
    assert result.hint == "check that the proxy is running"


@pytest.mark.parametrize(
    ("os_error", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Reason.REFUSED),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), Reason.TIMEOUT),  # SYNs dropped by a firewall
        (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.UNREACHABLE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Reason.UNREACHABLE),
    ],
    ids=["refused", "etimedout", "ehostunreach", "enetunreach"],
)
def test_a_failed_connect_is_named_by_its_errno(os_error: OSError, reason: Reason) -> None:
    failure = net.connect_failure(os_error, "mail.corp.example.com", 443)
    assert failure.reason == reason
    assert "mail.corp.example.com:443" in failure.message and failure.hint


@pytest.fixture
def split_horizon() -> Iterator[tuple[str, str]]:
    """The same name on two real DNS servers: loopback inside (where the simulator listens), private outside."""
    with (
        running_dnsmasq("--address=/mail.contoso.test/127.0.0.1") as internal,
        running_dnsmasq("--address=/mail.contoso.test/10.20.30.40", "--address=/missing.contoso.test/") as leaking,
    ):
        yield internal.server, leaking.server


def with_dns(target: Target, server: str, view: str) -> Target:
    return target.model_copy(update={"dns": DnsConfig(servers=(server,), view=DnsView(view))})


def labelled(result: CheckResult, metric: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(m.labels), m.value) for m in result.measurements if m.metric == metric]


async def test_a_target_resolves_at_its_own_servers(
    simulator: Simulator, sim_config_file: Path, split_horizon: tuple[str, str]
) -> None:
    config = load_config(sim_config_file)
    port = simulator.endpoints["onprem-ews"].port
    target = configured_target(config, "onprem-ews", url=f"https://mail.contoso.test:{port}/EWS/Exchange.asmx")
    target = with_dns(target, split_horizon[0], "internal")
    result = await run(config, target, "reachability")
    assert result.success, result
    assert labelled(result, "bems_dns_resolver_info") == [({"resolver": "configured", "view": "internal"}, 1.0)]
    assert labelled(result, "bems_dns_answer_addresses") == [({"family": "ipv4", "scope": "loopback"}, 1.0)]
    assert labelled(result, "bems_dns_failure_reason") == []


async def test_a_leaked_private_answer_fails_internet_exposure(
    sim_config_file: Path, split_horizon: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The public view answers 10.20.30.40: the connect is refused here rather than sent to that address.
    monkeypatch.setattr(net, "_open_socket", _connect_fails(errno.ECONNREFUSED))
    config = load_config(sim_config_file).model_copy(update={"scenario": Scenario.CLOUD_BEMS_ONPREM_EXCHANGE})
    target = configured_target(config, "onprem-ews", url="https://mail.contoso.test/EWS/Exchange.asmx")
    target = with_dns(target, split_horizon[1], "internet")
    config = config.model_copy(update={"targets": (target,)})
    result = await run(config, target, "reachability")
    assert result.reason == Reason.REFUSED
    assert labelled(result, "bems_dns_answer_addresses") == [({"family": "ipv4", "scope": "private"}, 1.0)]
    store = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    store.record(result)
    verdict = {v.requirement: v for v in scenario.evaluate(config, store)}["internet_exposure"]
    assert (verdict.met, verdict.reason) == (False, scenario.PRIVATE_ADDRESS)


async def test_a_name_the_servers_do_not_know_is_dns_with_its_rcode(
    sim_config_file: Path, split_horizon: tuple[str, str]
) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "onprem-ews", url="https://ews.missing.contoso.test/EWS/Exchange.asmx")
    target = with_dns(target, split_horizon[1], "internet")
    for check in ("reachability", "tls"):
        result = await run(config, target, check)
        assert result.reason == Reason.DNS, result
        assert result.message.startswith(f"ews.missing.contoso.test does not resolve at {split_horizon[1]}: nxdomain")
    assert labelled(result := await run(config, target, "reachability"), "bems_dns_failure_reason") == [
        ({"rcode": "nxdomain"}, 1.0)
    ]
    assert labelled(result, "bems_dns_answer_addresses") == []
