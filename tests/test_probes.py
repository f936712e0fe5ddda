"""The reachability and TLS checks against the simulator's real sockets and certificates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from checks import run

from exporter.config import Config, Target, load_config
from exporter.results import CheckResult, Reason
from exporter.simulator.server import Simulator


def _target(config: Config, name: str, **changes: object) -> Target:
    return config.targets_by_name()[name].model_copy(update=changes)


def measurements(result: CheckResult) -> dict[str, float]:
    return {m.metric: m.value for m in result.measurements}


async def test_healthy_endpoint_passes_both_checks(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    target = _target(config, "onprem-ews")
    reach = await run(config, target, "reachability")
    tls = await run(config, target, "tls")
    assert reach.success and tls.success, (reach, tls)
    assert set(measurements(reach)) == {"bems_dns_lookup_seconds", "bems_tcp_connect_seconds"}
    values = measurements(tls)
    # The simulator's leaf is valid for 90 days, its CA for longer: the chain's earliest notAfter is the leaf's.
    assert 89 * 86400 < values["bems_tls_cert_expiry_timestamp_seconds"] - time.time() < 91 * 86400
    assert ("version", "TLSv1.3") in next(m.labels for m in tls.measurements if m.metric == "bems_tls_version_info")
    assert [s.ok for s in tls.steps] == [True, True, True]


@pytest.mark.parametrize(
    ("fault", "check", "reason", "message"),
    [
        ("refuse", "reachability", Reason.REFUSED, "refused"),
        ("refuse", "tls", Reason.REFUSED, "refused"),
        ("expired", "tls", Reason.CERTIFICATE, "certificate has expired"),
        ("wrong_host", "tls", Reason.CERTIFICATE, "Hostname mismatch"),
        ("untrusted", "tls", Reason.CERTIFICATE, "unable to get local issuer certificate"),
        ("plaintext", "tls", Reason.TLS, "TLS handshake failed"),
        ("hang", "tls", Reason.TIMEOUT, "did not finish within 1s"),
    ],
)
async def test_each_fault_has_its_reason(
    simulator: Simulator, sim_config_file: Path, fault: str, check: str, reason: Reason, message: str
) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", fault)
    result = await run(config, _target(config, "onprem-ews"), check)
    assert not result.success
    assert result.reason == reason
    assert message in result.message
    assert result.hint, "every failure tells the operator what to fix"
    # The healthy neighbour is unaffected by the fault.
    assert (await run(config, _target(config, "onprem-autodiscover"), check)).success


async def test_hanging_endpoint_passes_reachability_but_times_out_on_time(
    simulator: Simulator, sim_config_file: Path
) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "hang")
    assert (await run(config, _target(config, "onprem-ews"), "reachability")).success
    t0 = time.perf_counter()
    result = await run(config, _target(config, "onprem-ews"), "tls")
    assert result.reason == Reason.TIMEOUT
    assert 0.9 < time.perf_counter() - t0 < 2.0


async def test_expired_certificate_still_reports_its_expiry(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "expired")
    result = await run(config, _target(config, "onprem-ews"), "tls")
    assert result.reason == Reason.CERTIFICATE
    assert measurements(result)["bems_tls_cert_expiry_timestamp_seconds"] < time.time()
    assert "renew the certificate" in result.hint


async def test_wrong_host_hint_names_the_certificate_names(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "wrong_host")
    result = await run(config, _target(config, "onprem-ews"), "tls")
    assert "wrong-host.example.test" in result.hint


async def test_unresolvable_host_is_a_dns_failure(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    target = _target(config, "onprem-ews", url="https://no-such-host.invalid/EWS/Exchange.asmx")
    for check in ("reachability", "tls"):
        result = await run(config, target, check)
        assert result.reason == Reason.DNS, result
        assert "no-such-host.invalid does not resolve" in result.message


async def test_system_trust_store_does_not_trust_the_simulator(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    without_ca = config.model_copy(
        update={
            "defaults": config.defaults.model_copy(
                update={"tls": config.defaults.tls.model_copy(update={"ca_file": None})}
            )
        }
    )
    result = await run(without_ca, _target(config, "onprem-ews"), "tls")
    assert result.reason == Reason.CERTIFICATE
