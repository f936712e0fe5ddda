"""The Exchange simulator, exercised over real loopback sockets the way the exporter's probes see it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bems_simulator import CertificateAuthority, Endpoint, Fault, Simulator, UnknownEndpointError

ENDPOINT_NAMES = [
    "onprem-ews",
    "onprem-autodiscover",
    "online-ews",
    "online-autodiscover",
    "graph",
    "entra",
    "bems",
    "foreign",
]
# The stranger's host is reached by address, not as localhost, and has no landing page.
EXCHANGE_ENDPOINT_NAMES = ENDPOINT_NAMES[:-1]
REPO_ROOT = Path(__file__).resolve().parents[2]


# One simulator for the module, reset before each test (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")


def trusting(simulator: Simulator) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(simulator.ca_file))


async def handshake(endpoint: Endpoint, context: ssl.SSLContext, timeout: float = 2.0) -> dict[str, Any]:
    """A verified TLS handshake for host name "localhost"; returns the peer certificate."""
    # 127.0.0.1 explicitly: where "localhost" also resolves to ::1, a refusal would surface as a
    # generic multi-address OSError instead of ConnectionRefusedError.
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", endpoint.port, ssl=context, server_hostname="localhost"),
        timeout,
    )
    try:
        return writer.get_extra_info("peercert")
    finally:
        writer.close()
        await writer.wait_closed()


async def request(
    method: str, url: str, context: ssl.SSLContext | None = None, **kwargs: Any
) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, ssl=context or False, **kwargs) as response,
    ):
        return response.status, response.headers, await response.read()


async def test_every_endpoint_completes_a_verified_handshake(simulator: Simulator) -> None:
    assert sorted(simulator.endpoints) == sorted(ENDPOINT_NAMES)
    context = trusting(simulator)
    for name in EXCHANGE_ENDPOINT_NAMES:
        endpoint = simulator.endpoints[name]
        assert endpoint.name == name
        assert endpoint.url == f"https://localhost:{endpoint.port}"
        assert endpoint.fault is Fault.NONE
        peer = await handshake(endpoint, context)
        alternative_names = set(peer["subjectAltName"])
        assert {("DNS", "localhost"), ("DNS", endpoint.nominal_host), ("IP Address", "127.0.0.1")} <= (
            alternative_names
        )
    foreign = simulator.endpoints["foreign"]
    assert foreign.url == f"https://127.0.0.1:{foreign.port}"
    _, writer = await asyncio.open_connection("127.0.0.1", foreign.port, ssl=context, server_hostname="127.0.0.1")
    try:
        alternative_names = set(writer.get_extra_info("peercert")["subjectAltName"])
    finally:
        writer.close()
        await writer.wait_closed()
    assert alternative_names == {("DNS", "autodiscover.co.uk"), ("IP Address", "127.0.0.1")}


async def test_landing_page_names_the_endpoint(simulator: Simulator) -> None:
    for name in EXCHANGE_ENDPOINT_NAMES:
        status, _, body = await request("GET", simulator.endpoints[name].url + "/", trusting(simulator))
        assert status == 200
        assert name in body.decode()


@pytest.mark.parametrize(
    ("fault", "verify_message"),
    [
        ("expired", "certificate has expired"),
        ("not_yet_valid", "certificate is not yet valid"),
        ("intermediate_expired", "certificate has expired"),
        ("wrong_host", "Hostname mismatch, certificate is not valid for 'localhost'."),
        ("untrusted", "unable to get local issuer certificate"),
    ],
)
async def test_certificate_faults_fail_verification_until_cleared(
    simulator: Simulator, fault: str, verify_message: str
) -> None:
    endpoint = simulator.endpoints["onprem-ews"]
    await simulator.set_fault("onprem-ews", fault)
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        await handshake(endpoint, trusting(simulator))
    assert failure.value.verify_message == verify_message

    await simulator.clear_fault("onprem-ews")
    await handshake(endpoint, trusting(simulator))


async def test_refuse_closes_the_port_and_clearing_rebinds_it(simulator: Simulator) -> None:
    endpoint = simulator.endpoints["online-ews"]
    port = endpoint.port
    await handshake(endpoint, trusting(simulator))  # leaves a TIME_WAIT behind, as real traffic would

    await simulator.set_fault("online-ews", Fault.REFUSE)
    with pytest.raises(ConnectionRefusedError):
        await handshake(endpoint, trusting(simulator))

    await simulator.clear_fault("online-ews")
    assert endpoint.port == port
    await handshake(endpoint, trusting(simulator))


async def test_hang_accepts_but_never_answers_the_handshake(simulator: Simulator) -> None:
    endpoint = simulator.endpoints["graph"]
    await simulator.set_fault("graph", "hang")
    with pytest.raises(TimeoutError):
        await handshake(endpoint, trusting(simulator), timeout=0.5)

    await simulator.clear_fault("graph")
    await handshake(endpoint, trusting(simulator))


async def test_plaintext_breaks_the_tls_handshake_but_serves_http(simulator: Simulator) -> None:
    endpoint = simulator.endpoints["entra"]
    await simulator.set_fault("entra", "plaintext")
    with pytest.raises(ssl.SSLError) as failure:
        await handshake(endpoint, trusting(simulator))
    assert not isinstance(failure.value, ssl.SSLCertVerificationError)
    status, _, _ = await request("GET", f"http://127.0.0.1:{endpoint.port}/")
    assert status == 200


async def test_slow_delays_every_response_but_not_the_handshake(simulator: Simulator) -> None:
    endpoint = simulator.endpoints["onprem-autodiscover"]
    await simulator.set_fault("onprem-autodiscover", "slow", delay_seconds=0.4)
    assert endpoint.delay_seconds == 0.4

    started = time.monotonic()
    await handshake(endpoint, trusting(simulator))
    assert time.monotonic() - started < 0.4

    started = time.monotonic()
    status, _, _ = await request("GET", endpoint.url + "/", trusting(simulator))
    assert status == 200
    assert time.monotonic() - started >= 0.4

    await simulator.clear_fault("onprem-autodiscover")
    assert endpoint.delay_seconds == 0.0


async def test_set_fault_rejects_bad_input(simulator: Simulator) -> None:
    with pytest.raises(UnknownEndpointError, match="unknown endpoint 'owa'"):
        await simulator.set_fault("owa", "hang")
    with pytest.raises(ValueError, match="valid faults: none, refuse, hang, slow"):
        await simulator.set_fault("graph", "flaky")
    with pytest.raises(ValueError, match="only to the slow fault"):
        await simulator.set_fault("graph", "hang", delay_seconds=1)
    with pytest.raises(ValueError, match="positive number"):
        await simulator.set_fault("graph", "slow", delay_seconds=-1)
    assert simulator.endpoints["graph"].fault is Fault.NONE


async def test_admin_api(simulator: Simulator) -> None:
    api = simulator.admin_url + "/api/v1/endpoints"

    status, _, body = await request("GET", api)
    assert status == 200
    listing = json.loads(body)
    assert sorted(listing) == sorted(ENDPOINT_NAMES)
    assert listing["graph"] == {
        "url": simulator.endpoints["graph"].url,
        "port": simulator.endpoints["graph"].port,
        "fault": "none",
        "delay_seconds": 0.0,
    }

    status, _, body = await request("PUT", api + "/graph/fault", json={"fault": "slow", "delay_seconds": 2.5})
    assert status == 200
    assert json.loads(body)["graph"]["fault"] == "slow"
    assert json.loads(body)["graph"]["delay_seconds"] == 2.5
    assert simulator.endpoints["graph"].fault is Fault.SLOW

    status, _, body = await request("DELETE", api + "/graph/fault")
    assert status == 200
    assert json.loads(body)["graph"]["fault"] == "none"

    status, _, body = await request("PUT", api + "/owa/fault", json={"fault": "hang"})
    assert status == 404
    status, _, body = await request("PUT", api + "/graph/fault", json={"fault": "flaky"})
    assert status == 400
    valid_faults = "valid faults: none, refuse, hang, slow, expired, wrong_host, untrusted, plaintext"
    assert valid_faults in json.loads(body)["error"]
    status, _, _ = await request("PUT", api + "/graph/fault", data=b"not json")
    assert status == 400
    status, _, _ = await request("PUT", api + "/graph/fault", json={"delay_seconds": 1})
    assert status == 400


@pytest.mark.parametrize(
    ("method", "path", "body", "error"),
    [
        pytest.param(
            "PUT",
            "/endpoints/graph/fault",
            {"fault": "slow", "delay": 2},
            "delay: unknown key (the body takes: fault, delay_seconds)",
            id="endpoint-fault-unknown-key",
        ),
        pytest.param(
            "PUT",
            "/endpoints/graph/fault",
            {"fault": "slow", "delay_seconds": "2"},
            "delay_seconds: must be a number, not '2'",
            id="endpoint-fault-wrong-type",
        ),
        pytest.param(
            "PUT",
            "/endpoints/graph/fault",
            {"delay_seconds": 2},
            "fault: required key is missing",
            id="endpoint-fault-missing-key",
        ),
        pytest.param(
            "PATCH",
            "/auth/entra",
            {"secret_expired": True, "expires": 60},
            "expires: unknown key",
            id="entra-unknown-key",
        ),
        pytest.param(
            "PATCH",
            "/auth/entra",
            {"throttled": 1},
            "throttled: must be true or false, not 1",
            id="entra-wrong-type",
        ),
        pytest.param(
            "PATCH",
            "/auth/entra",
            {"expires_in": 0},
            "expires_in: must be greater than 0, not 0",
            id="entra-not-positive",
        ),
        pytest.param(
            "PUT",
            "/ews/onprem-ews/throttling",
            {"kind": "server_busy_fault", "backoff": 2000},
            "backoff: unknown key (the body takes: kind, backoff_ms)",
            id="ews-throttling-unknown-key",
        ),
        pytest.param(
            "PUT",
            "/ews/onprem-ews/throttling",
            {"kind": "server_busy_fault", "backoff_ms": 2.5},
            "backoff_ms: must be a whole number, not 2.5",
            id="ews-throttling-wrong-type",
        ),
        pytest.param(
            "PUT",
            "/ews/onprem-ews/throttling",
            {"backoff_ms": 2000},
            "kind: required key is missing",
            id="ews-throttling-missing-key",
        ),
        pytest.param(
            "PUT",
            "/ews/online-ews/allowed_app_ids",
            {},
            "app_ids: required key is missing",
            id="allowed-app-ids-missing-key",
        ),
        pytest.param(
            "PATCH",
            "/mailboxes",
            {"impersonation": "no"},
            "impersonation: must be true or false, not 'no'",
            id="rights-wrong-type",
        ),
        pytest.param(
            "PUT",
            "/push/ews/fault",
            {"kind": "delayed", "delay_seconds": 1, "seconds": 1},
            "seconds: unknown key",
            id="push-fault-unknown-key",
        ),
        pytest.param(
            "PUT",
            "/proxy/fault",
            {"fault": "slow"},
            "unknown proxy fault 'slow'; valid faults: none, deny, refuse",
            id="proxy-fault-unknown",
        ),
        pytest.param("PUT", "/proxy/fault", {"kind": "refuse"}, "fault: required key is missing", id="proxy-fault-key"),
        pytest.param(
            "PUT",
            "/bems/fault",
            ["no_echo"],
            'the body must be a JSON object like {"fault": "no_echo"}',
            id="not-an-object",
        ),
    ],
)
async def test_admin_api_refuses_a_bad_body_naming_the_key_and_why(
    simulator: Simulator, method: str, path: str, body: Any, error: str
) -> None:
    api = simulator.admin_url + "/api/v1"
    state_url = api + "/" + path.split("/")[1]  # the GET of the resource the body would have changed
    _, _, before = await request("GET", state_url)
    status, _, reply = await request(method, api + path, json=body)
    assert status == 400
    assert json.loads(reply)["error"].startswith(error)
    assert (await request("GET", state_url))[2] == before  # nothing changed


async def test_401_challenges(simulator: Simulator) -> None:
    context = trusting(simulator)
    urls = {name: endpoint.url for name, endpoint in simulator.endpoints.items()}

    for url, realm in [
        (urls["onprem-ews"] + "/EWS/Exchange.asmx", "mail.corp.example.test"),
        (urls["onprem-autodiscover"] + "/autodiscover/autodiscover.xml", "autodiscover.corp.example.test"),
    ]:
        status, headers, body = await request("POST", url, context, data=b"<soap/>")
        assert status == 401
        assert body == b""
        assert headers.getall("WWW-Authenticate") == ["Negotiate", "NTLM", f'Basic realm="{realm}"']
        assert headers.get("Connection", "").lower() != "close"  # NTLM continues on this connection

    for url in [
        urls["online-ews"] + "/EWS/Exchange.asmx",
        urls["online-autodiscover"] + "/autodiscover/autodiscover.xml",
    ]:
        status, headers, _ = await request("POST", url, context, data=b"<soap/>")
        assert status == 401
        [challenge] = headers.getall("WWW-Authenticate")
        assert challenge.startswith('Bearer client_id="00000002-0000-0ff1-ce00-000000000000"')
        assert challenge.endswith(',Basic Realm=""')
        assert "x-ms-diagnostics" not in headers

    status, headers, _ = await request(
        "POST", urls["online-ews"] + "/EWS/Exchange.asmx", context, headers={"Authorization": "Bearer x"}
    )
    assert status == 401
    assert headers["x-ms-diagnostics"].startswith("2000001;")

    status, headers, body = await request(
        "GET", urls["graph"] + "/v1.0/users/carol@contoso.test/mailFolders/inbox", context
    )
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    assert json.loads(body)["error"]["code"] == "InvalidAuthenticationToken"


async def test_autodiscover_v2_points_at_online_ews(simulator: Simulator) -> None:
    base = simulator.endpoints["online-autodiscover"].url + "/autodiscover/autodiscover.json"
    status, _, body = await request("GET", base + "/v1.0/carol@contoso.test?Protocol=Ews", trusting(simulator))
    assert status == 200
    assert json.loads(body) == {
        "Protocol": "EWS",
        "Url": simulator.endpoints["online-ews"].url + "/EWS/Exchange.asmx",
    }
    status, _, body = await request("GET", base + "?Email=carol@contoso.test&Protocol=xyz", trusting(simulator))
    assert status == 400
    assert json.loads(body)["ErrorCode"] == "InvalidProtocol"


async def test_exporter_config_and_secrets(simulator: Simulator, tmp_path: Path) -> None:
    path = simulator.write_exporter_config(tmp_path / "exporter.yml", interval="30s", timeout="3s")
    config = yaml.safe_load(path.read_text())
    state_dir = simulator.state_dir
    ports = {name: endpoint.port for name, endpoint in simulator.endpoints.items()}

    assert config["scenario"] == "onprem-bems-hybrid"
    assert config["defaults"] == {
        "interval": "30s",
        "timeout": "3s",
        "tls": {"ca_file": str(state_dir / "ca.pem")},
    }
    assert config["credentials"] == {
        "bemsadmin": {"username": "CORP\\BEMSAdmin", "password_file": str(state_dir / "bemsadmin.password")},
        "entra-app": {
            "tenant_id": "contoso.onmicrosoft.com",
            "client_id": "11111111-2222-3333-4444-555555555555",
            "client_secret_file": str(state_dir / "entra-app.secret"),
            "authority": f"https://localhost:{ports['entra']}",
        },
    }
    targets = {target.pop("name"): target for target in config["targets"]}
    assert targets == {
        "onprem-ews": {
            "kind": "ews",
            "exchange": "onprem",
            "url": f"https://localhost:{ports['onprem-ews']}/EWS/Exchange.asmx",
            "credential": "bemsadmin",
            "auth": ["basic", "ntlm"],
            "mailboxes": ["alice@corp.example.test", "bob@corp.example.test"],
        },
        "onprem-autodiscover": {
            "kind": "autodiscover",
            "exchange": "onprem",
            "url": f"https://localhost:{ports['onprem-autodiscover']}/autodiscover/autodiscover.xml",
            "credential": "bemsadmin",
            "auth": ["basic", "ntlm"],
            "mailboxes": ["alice@corp.example.test"],
        },
        "online-ews": {
            "kind": "ews",
            "exchange": "online",
            "url": f"https://localhost:{ports['online-ews']}/EWS/Exchange.asmx",
            "credential": "entra-app",
            "mailboxes": ["carol@contoso.test"],
        },
        "online-autodiscover": {
            "kind": "autodiscover",
            "exchange": "online",
            "url": f"https://localhost:{ports['online-autodiscover']}/autodiscover/autodiscover.json",
            "mailboxes": ["carol@contoso.test"],
        },
        "online-graph": {
            "kind": "graph",
            "exchange": "online",
            "url": f"https://localhost:{ports['graph']}/v1.0",
            "credential": "entra-app",
            "mailboxes": ["carol@contoso.test"],
        },
    }

    credentials = simulator.credentials
    for secret_file, secret in [
        (credentials.onprem_password_file, credentials.onprem_password),
        (credentials.client_secret_file, credentials.client_secret),
    ]:
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert secret_file.read_text() == secret


async def test_secrets_survive_a_restart(tmp_path: Path) -> None:
    async with Simulator(tmp_path) as first:
        password, client_secret = first.credentials.onprem_password, first.credentials.client_secret
    async with Simulator(tmp_path) as second:
        assert second.credentials.onprem_password == password
        assert second.credentials.client_secret == client_secret
    assert password != client_secret


def test_only_loopback_addresses_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="IPv4 loopback only"):
        Simulator(tmp_path, host="0.0.0.0")


async def test_a_chain_with_an_intermediate_verifies_strictly(simulator: Simulator) -> None:
    """The leaf comes with its intermediate, as real servers send it; the client knows only the root."""
    await simulator.set_fault("onprem-ews", "intermediate_expires_first")
    context = trusting(simulator)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    peer = await handshake(simulator.endpoints["onprem-ews"], context)
    assert ("DNS", "localhost") in set(peer["subjectAltName"])


async def test_a_rotated_ca_issues_every_later_certificate(simulator: Simulator) -> None:
    old_context = trusting(simulator)
    await simulator.rotate_ca()
    for name in EXCHANGE_ENDPOINT_NAMES:
        await handshake(simulator.endpoints[name], trusting(simulator))
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(simulator.endpoints[name], old_context)


def test_issued_certificates_carry_what_strict_verification_needs() -> None:
    authority = CertificateAuthority.create("Test CA")
    now = datetime.now(UTC)
    cert_pem, key_pem = authority.issue(
        ["localhost", "mail.corp.example.test"], ["127.0.0.1"], now - timedelta(hours=1), now + timedelta(days=1)
    )
    certificate = x509.load_pem_x509_certificate(cert_pem)
    extensions = certificate.extensions

    assert b"PRIVATE KEY" in key_pem
    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    alternative_names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alternative_names.get_values_for_type(x509.DNSName) == ["localhost", "mail.corp.example.test"]
    authority_key_id = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ca_key_id = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert authority_key_id == ca_key_id.digest
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc == timedelta(days=1, hours=1)


# A loop of its own: on the module's shared loop the child process never got as far as its ready file.
@pytest.mark.asyncio(loop_scope="function")
async def test_command_line_runs_until_sigterm(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bems_simulator",
        "simulate",
        "--state-dir",
        str(state_dir),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "simulator")])},
    )
    ready_file = state_dir / "simulator.json"
    try:
        # No deadline of its own: a loaded machine may take many seconds to start Python and generate the keys;
        # the test's timeout bounds it, and a child that dies is reported at once.
        while not ready_file.exists():
            assert process.returncode is None, f"the simulator exited with {process.returncode} before it was ready"
            await asyncio.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        assert sorted(ready["endpoints"]) == sorted(ENDPOINT_NAMES)
        assert Path(ready["config_file"]) == state_dir / "exporter.yml"
        # The exporter is another process: its listener is written on the exporter's own default port.
        notifications = yaml.safe_load(Path(ready["config_file"]).read_text())["notifications"]
        assert notifications["listen_address"] == "127.0.0.1:10443", notifications
        status, _, _ = await request("GET", ready["admin_url"] + "/api/v1/endpoints")
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 0
    assert "admin API" in stdout.decode()
    assert not ready_file.exists()
