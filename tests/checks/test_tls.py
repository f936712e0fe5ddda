"""The TLS check against the simulator's real sockets and certificates; reachability is in test_reachability.py."""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import certifi
import pytest
from aiohttp import web
from check_runner import configured_target, run
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bems_simulator.pki import CertificateAuthority
from bems_simulator.server import Simulator
from bems_simulator.tls import INTERMEDIATE_NAME, WRONG_HOSTNAME, CertificateVariant
from exporter.checks import CHECKS
from exporter.checks import tls as tls_probe
from exporter.checks.resources import Resources
from exporter.config import AuthMethod, Config, load_config
from exporter.daemon.runner import execute
from exporter.protocol import tcp_tls as net
from exporter.protocol.dns_lookup import DnsResolvers
from exporter.protocol.http_client import HttpClients
from exporter.results import CheckResult, Reason

# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")


def measurements(result: CheckResult) -> dict[str, float]:
    return {m.metric: m.value for m in result.measurements}


async def test_healthy_endpoint_passes_both_checks(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "onprem-ews")
    reach = await run(config, target, "reachability")
    tls = await run(config, target, "tls")
    assert reach.success and tls.success, (reach, tls)
    assert set(measurements(reach)) == {
        "bems_dns_lookup_seconds", "bems_tcp_connect_seconds", "bems_dns_answer_addresses", "bems_dns_resolver_info"
    }  # fmt: skip
    # The simulator's name is the host resolver's to answer (no dns servers configured): a loopback address.
    labels = {m.metric: dict(m.labels) for m in reach.measurements}
    assert labels["bems_dns_resolver_info"] == {"resolver": "system", "view": ""}
    assert labels["bems_dns_answer_addresses"]["scope"] == "loopback"
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
    result = await run(config, configured_target(config, "onprem-ews"), check)
    assert not result.success
    assert result.reason == reason
    assert message in result.message
    assert result.hint, "every failure tells the operator what to fix"
    # The healthy neighbour is unaffected by the fault.
    assert (await run(config, configured_target(config, "onprem-autodiscover"), check)).success


async def test_hanging_endpoint_passes_reachability_but_times_out_on_time(
    simulator: Simulator, sim_config_file: Path
) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "hang")
    assert (await run(config, configured_target(config, "onprem-ews"), "reachability")).success
    t0 = time.perf_counter()
    result = await run(config, configured_target(config, "onprem-ews"), "tls")
    assert result.reason == Reason.TIMEOUT
    assert 0.9 < time.perf_counter() - t0 < 2.0


async def test_expired_certificate_still_reports_its_expiry(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "expired")
    result = await run(config, configured_target(config, "onprem-ews"), "tls")
    assert result.reason == Reason.CERTIFICATE
    assert measurements(result)["bems_tls_cert_expiry_timestamp_seconds"] < time.time()
    assert "renew the certificate" in result.hint


async def test_wrong_host_hint_names_the_certificate_names(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "wrong_host")
    result = await run(config, configured_target(config, "onprem-ews"), "tls")
    assert "wrong-host.example.test" in result.hint


async def test_system_trust_store_does_not_trust_the_simulator(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    without_ca = config.model_copy(
        update={
            "defaults": config.defaults.model_copy(
                update={"tls": config.defaults.tls.model_copy(update={"ca_file": None})}
            )
        }
    )
    result = await run(without_ca, configured_target(config, "onprem-ews"), "tls")
    assert result.reason == Reason.CERTIFICATE


def presented_chain(simulator: Simulator, fault: str) -> list[x509.Certificate]:
    """What the endpoint presents in ``fault``: the simulator keeps each certificate chain in a file."""
    variant = CertificateVariant(fault.replace("_", "-"))
    return x509.load_pem_x509_certificates((simulator.state_dir / "certs" / f"onprem-ews-{variant}.pem").read_bytes())


def readable_expiry(chain: list[x509.Certificate]) -> float:
    """The earliest notAfter of what the check can read of a presented chain: all of it from Python 3.13 on
    (SSLObject.get_unverified_chain is public there), else the leaf alone."""
    readable = chain if tls_probe.PRESENTED_CHAIN_IS_PUBLIC else chain[:1]
    return min(c.not_valid_after_utc for c in readable).timestamp()


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


# fault, verify message, hint from the presented chain (leaf first), the chain's earliest notAfter
CERTIFICATE_HINTS = [
    pytest.param(
        "expired",
        "certificate has expired",
        lambda where, chain: f"renew the certificate on {where}: it expired on {_utc(chain[0].not_valid_after_utc)}",
        id="expired-leaf",
    ),
    pytest.param(
        "intermediate_expired",
        "certificate has expired",
        lambda where, chain: (
            f"renew the intermediate certificate CN={INTERMEDIATE_NAME} on {where}: "
            f"it expired on {_utc(chain[1].not_valid_after_utc)}"
            if tls_probe.PRESENTED_CHAIN_IS_PUBLIC
            # Before Python 3.13 only the leaf can be read: the check knows an intermediate expired, not which.
            else f"renew the expired intermediate certificate on {where} "
            f"(the certificate is valid until {_utc(chain[0].not_valid_after_utc)})"
        ),
        id="expired-intermediate",
    ),
    pytest.param(
        "not_yet_valid",
        "certificate is not yet valid",
        lambda where, chain: (
            f"the certificate on {where} is valid only from {_utc(chain[0].not_valid_before_utc)}: "
            "check the clocks of this host and of the issuing CA"
        ),
        id="not-yet-valid",
    ),
    pytest.param(
        "wrong_host",
        "Hostname mismatch, certificate is not valid for 'localhost'.",
        lambda where, chain: (
            f"the certificate on {where} is for {WRONG_HOSTNAME}: install one whose subjectAltName includes the host"
        ),
        id="host-mismatch",
    ),
    pytest.param(
        "untrusted",
        "unable to get local issuer certificate",
        lambda where, chain: (
            f"the chain presented on {where} does not lead to a trusted root: install the intermediate "
            "certificates on the server, or point defaults.tls.ca_file at your internal CA"
        ),
        id="untrusted-root",
    ),
]


@pytest.mark.parametrize(("fault", "message", "hint"), CERTIFICATE_HINTS)
async def test_each_certificate_fault_has_its_hint_and_expiry(
    simulator: Simulator,
    sim_config_file: Path,
    fault: str,
    message: str,
    hint: Callable[[str, list[x509.Certificate]], str],
) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", fault)
    target = configured_target(config, "onprem-ews")
    result = await run(config, target, "tls")
    chain = presented_chain(simulator, fault)
    assert (result.reason, result.message) == (Reason.CERTIFICATE, f"certificate rejected: {message}")
    assert result.hint == hint(f"{target.host}:{target.port}", chain)
    assert measurements(result)["bems_tls_cert_expiry_timestamp_seconds"] == readable_expiry(chain)


async def test_an_ip_address_the_certificate_does_not_name(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "wrong_host")
    port = simulator.endpoints["onprem-ews"].port
    result = await run(
        config, configured_target(config, "onprem-ews", url=f"https://127.0.0.1:{port}/EWS/Exchange.asmx"), "tls"
    )
    assert (result.reason, result.message) == (
        Reason.CERTIFICATE,
        "certificate rejected: IP address mismatch, certificate is not valid for '127.0.0.1'.",
    )
    assert result.hint == (
        f"the certificate on 127.0.0.1:{port} is for {WRONG_HOSTNAME}: "
        "install one whose subjectAltName includes the host"
    )


async def test_the_chain_expires_with_its_intermediate(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    await simulator.set_fault("onprem-ews", "intermediate_expires_first")
    result = await run(config, configured_target(config, "onprem-ews"), "tls")
    leaf, intermediate = presented_chain(simulator, "intermediate_expires_first")
    assert result.success, result
    assert intermediate.not_valid_after_utc < leaf.not_valid_after_utc
    assert measurements(result)["bems_tls_cert_expiry_timestamp_seconds"] == readable_expiry([leaf, intermediate])


def with_tls(config: Config, **tls: object) -> Config:
    return config.model_copy(
        update={"defaults": config.defaults.model_copy(update={"tls": config.defaults.tls.model_copy(update=tls)})}
    )


def publicly_trusted(result: CheckResult) -> float | None:
    return measurements(result).get("bems_tls_publicly_trusted")


@pytest.mark.parametrize(
    ("fault", "public_roots", "success", "trusted"),
    [
        # The simulator's CA stands for a public one: the chain verifies against the configured and the public trust.
        pytest.param("none", "simulator", True, 1, id="public-chain"),
        pytest.param("intermediate_expires_first", "simulator", True, 1, id="public-chain-with-intermediate"),
        # An internal CA in ca_file: tls passes where cloud BEMS, which trusts public CAs only, would reject it.
        pytest.param("none", "default", True, 0, id="internal-ca"),
        # What the public roots reject as well: measured from the chain the rejected handshake presented.
        pytest.param("wrong_host", "simulator", False, 0, id="wrong-host"),
        pytest.param("expired", "simulator", False, 0, id="expired"),
        pytest.param("untrusted", "simulator", False, 0, id="unknown-root"),
    ],
)
async def test_public_trust_is_measured_beside_the_configured_trust(
    simulator: Simulator, sim_config_file: Path, fault: str, public_roots: str, success: bool, trusted: int
) -> None:
    config = load_config(sim_config_file)
    if public_roots == "simulator":
        config = with_tls(config, public_ca_file=str(simulator.ca_file))
    await simulator.set_fault("onprem-ews", fault)
    result = await run(config, configured_target(config, "onprem-ews"), "tls")
    assert result.success is success, result
    assert publicly_trusted(result) == trusted
    if success:
        words = "trusted by the public roots" if trusted else "not trusted by the public roots ("
        assert words in result.steps[-1].detail


async def test_the_default_public_roots_are_certifis(simulator: Simulator, sim_config_file: Path) -> None:
    """The public roots are certifi's bundle, not the system store (which may hold an internal CA)."""
    config = load_config(sim_config_file)
    assert tls_probe.public_roots_file(None) == certifi.where()
    assert tls_probe.public_roots_file(str(simulator.ca_file)) == str(simulator.ca_file)
    result = await run(with_tls(config, ca_file=None), configured_target(config, "onprem-ews"), "tls")
    assert (result.reason, publicly_trusted(result)) == (Reason.CERTIFICATE, 0)


async def test_public_trust_costs_at_most_one_handshake_per_chain(
    simulator: Simulator, sim_config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = with_tls(load_config(sim_config_file), public_ca_file=str(simulator.ca_file))
    handshakes = []
    real_handshake = net.tls_handshake

    async def counted(*args: object, **kwargs: object) -> object:
        handshakes.append(args)
        return await real_handshake(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(net, "tls_handshake", counted)  # the verdicts start cold (tests/conftest.py)
    for _ in range(3):
        assert publicly_trusted(await run(config, configured_target(config, "onprem-ews"), "tls")) == 1
    if tls_probe.PRESENTED_CHAIN_IS_PUBLIC:
        assert len(handshakes) == 3
        assert tls_probe._public_distrust.cache_info().misses == 1
    else:  # the leaf alone is readable: one handshake against the public roots judges the chain, once
        assert len(handshakes) == 3 + 1
        assert len(tls_probe._handshake_verdicts) == 1


def test_a_cached_verdict_lasts_until_a_certificate_of_the_chain_changes_validity() -> None:
    authority = CertificateAuthority.create("Test CA")
    now = datetime.now(UTC).replace(microsecond=0)  # certificates hold whole seconds
    issuing = authority.intermediate("Issuing CA", now - timedelta(days=10), now + timedelta(days=5))
    chain_pem, _ = issuing.issue(["localhost"], not_before=now + timedelta(days=1), not_after=now + timedelta(days=90))
    ders = tuple(c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(chain_pem))
    chain = tls_probe._summarise(ders)
    assert chain.next_validity_change(now.timestamp()) == (now + timedelta(days=1)).timestamp()  # the leaf begins
    assert chain.next_validity_change((now + timedelta(days=2)).timestamp()) == (now + timedelta(days=5)).timestamp()
    assert chain.next_validity_change((now + timedelta(days=91)).timestamp()) == float("inf")


async def test_a_ca_rotation_reaches_every_check_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the CA file changes, tls and the checks with long-lived HTTP sessions trust the same content."""
    monkeypatch.setattr(net, "CA_FILE_RECHECK_SECONDS", 0.0)  # the next check sees the change, not one a second later
    # A simulator of its own: the module's shares its CA file's path with the next test, and the exporter
    # looks at a CA file once a second, so it would trust this test's last CA for up to a second after a reset.
    async with Simulator(tmp_path / "sim") as simulator:
        config_file = simulator.write_exporter_config(tmp_path / "bems.yml", interval="2s", timeout="1s")
        await check_every_client_follows_the_ca_file(simulator, load_config(config_file))


async def check_every_client_follows_the_ca_file(simulator: Simulator, config: Config) -> None:
    runs = [("onprem-ews", check) for check in ("tls", "auth")] + [
        ("online-ews", check) for check in ("tls", "token", "auth")
    ]  # onprem auth: Basic over aiohttp and NTLM over requests; online: MSAL's requests and aiohttp
    resources = Resources()
    try:

        async def verdicts() -> dict[tuple[str, str], Reason | None]:
            return {
                (name, check): (await execute(CHECKS[check], config, configured_target(config, name), resources)).reason
                for name, check in runs
            }

        assert set((await verdicts()).values()) == {None}
        await simulator.rotate_ca()  # new certificates from a new CA, and ca_file holds the new CA
        assert set((await verdicts()).values()) == {None}
        # The other way round: the file changes to a CA the servers' certificates do not come from.
        old_ca = simulator.ca_file.read_bytes()
        simulator.ca_file.write_bytes(CertificateAuthority.create("Another CA").cert_pem)
        after_swap = await verdicts()
        assert set(after_swap.values()) <= {Reason.CERTIFICATE, Reason.TOKEN}, after_swap
        assert after_swap[("onprem-ews", "auth")] == after_swap[("onprem-ews", "tls")] == Reason.CERTIFICATE
        simulator.ca_file.write_bytes(old_ca)
        assert set((await verdicts()).values()) == {None}
    finally:
        await resources.close()


async def test_a_session_replaced_by_a_ca_change_ends_its_requests_before_it_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(net, "CA_FILE_RECHECK_SECONDS", 0.0)
    authority = CertificateAuthority.create("Rotation CA")
    chain_pem, key_pem = authority.issue(["localhost"], ["127.0.0.1"])
    (tmp_path / "server.pem").write_bytes(chain_pem + key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "server.pem")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.cert_pem)
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="held")

    async def quick(request: web.Request) -> web.Response:
        return web.Response(text="quick")

    app = web.Application()
    app.router.add_get("/held", held)
    app.router.add_get("/quick", quick)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    clients = HttpClients(DnsResolvers())
    try:
        request = functools.partial(clients.request, "GET", ca_file=str(ca_file), proxy=None, dns=None)
        in_flight = asyncio.create_task(request(f"https://127.0.0.1:{port}/held"))
        await arrived.wait()
        old = clients._sessions[(str(ca_file), None, None)].session
        ca_file.write_bytes(authority.cert_pem + CertificateAuthority.create("Next CA").cert_pem)  # a rotation
        assert (await request(f"https://127.0.0.1:{port}/quick")).body == b"quick"
        assert clients._sessions[(str(ca_file), None, None)].session is not old
        assert not old.closed, "closing it would break the request still running on it"
        release.set()
        assert (await in_flight).body == b"held"
        assert old.closed
    finally:
        await clients.close()
        await runner.cleanup()


@pytest.mark.parametrize("method", ["basic", "ntlm"])  # aiohttp and requests: the two HTTP transports
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("refuse", Reason.REFUSED),
        ("plaintext", Reason.TLS),  # WRONG_VERSION_NUMBER: no TLS on the port, not a broken network
        ("untrusted", Reason.CERTIFICATE),
        ("expired", Reason.CERTIFICATE),
    ],
)
async def test_signed_in_checks_name_network_and_tls_faults_as_the_tls_check_does(
    simulator: Simulator, sim_config_file: Path, method: str, fault: str, reason: Reason
) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "onprem-ews").model_copy(update={"auth": (AuthMethod(method),)})
    await simulator.set_fault("onprem-ews", fault)
    tls = await run(config, target, "tls")
    auth = await run(config, target, "auth")
    assert (tls.reason, auth.reason) == (reason, reason), (tls.message, auth.message)
    assert auth.hint
