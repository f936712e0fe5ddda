"""The ``certificate`` method: a TLS client certificate that IIS maps to the service account (BEMS 3.9's
certificate-based authentication for on-premises Exchange without hybrid modern authentication).

The simulator's on-prem virtual directories ask for client certificates in the handshake when set to ``require``
and judge them as IIS does, with IIS's 403 substatus codes (learn.microsoft.com/troubleshoot/iis/http-status-code):
403.7 none arrived, 403.12 not mapped, 403.16 untrusted, 403.17 out of its validity.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from check_runner import run
from cryptography.hazmat.primitives import serialization

from bems_simulator.files import write_private_file
from bems_simulator.server import Simulator
from exporter import report
from exporter.checks.auth import _judge_certificate
from exporter.config import Config, ConfigError, load_config, parse_config
from exporter.protocol.http_client import HttpResponse
from exporter.results import CheckResult, ProbeFailure, Reason

pytestmark = pytest.mark.timeout(60)


def certificate_config(simulator: Simulator, tmp_path: Path, variant: str, target: str) -> Config:
    """The simulator's config with ``target`` signing in with a client certificate of ``variant`` only."""
    cert_pem, key_pem = simulator.issue_client_certificate(variant)
    cert_file, key_file = tmp_path / "bemsadmin.crt", tmp_path / "bemsadmin.key"
    cert_file.write_bytes(cert_pem)
    write_private_file(key_file, key_pem)
    path = simulator.write_exporter_config(tmp_path / "certificate.yml", timeout="10s")
    data = yaml.safe_load(path.read_text())
    data["credentials"]["bemsadmin-cert"] = {
        "username": simulator.credentials.onprem_username, "certificate_file": str(cert_file),
        "key_file": str(key_file),
    }  # fmt: skip
    for entry in data["targets"]:
        if entry["name"] == target:
            entry["credential"], entry["auth"] = "bemsadmin-cert", ["certificate"]
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def auth(config: Config, target: str) -> CheckResult:
    return await run(config, config.targets_by_name()[target], "auth")


@pytest.mark.parametrize("target", ["onprem-ews", "onprem-autodiscover"])
async def test_a_mapped_certificate_signs_in(simulator: Simulator, tmp_path: Path, target: str) -> None:
    await simulator.set_client_certificate(target, "require")
    config = certificate_config(simulator, tmp_path, "mapped", target)
    result = await auth(config, target)
    assert result.success, report.render(config.targets_by_name()[target], [result])
    assert [(m.label("method"), m.value) for m in result.measurements if m.metric == "bems_auth_success"] == [
        ("certificate", 1.0)
    ]


@pytest.mark.parametrize(
    ("mode", "variant", "reason", "in_message", "in_hint"),
    [
        pytest.param("ignore", "mapped", Reason.CERTIFICATE_NOT_REQUESTED, "HTTP 401", "sslFlags", id="ignored"),
        pytest.param(
            "require_not_negotiated",
            "mapped",
            Reason.CERTIFICATE_NOT_REQUESTED,
            "403.7",
            "clientcertnegotiation",
            id="not-asked-in-the-handshake",
        ),
        pytest.param("require", "unmapped", Reason.CERTIFICATE_REJECTED, "403.12", "oneToOneMappings", id="unmapped"),
        pytest.param(
            "require", "untrusted", Reason.CERTIFICATE_REJECTED, "403.16", "Trusted Root", id="untrusted-issuer"
        ),
        pytest.param("require", "expired", Reason.CERTIFICATE_EXPIRED, "403.17", "renew", id="expired"),
    ],
)
async def test_each_refusal_has_its_reason_and_hint(
    simulator: Simulator, tmp_path: Path, mode: str, variant: str, reason: Reason, in_message: str, in_hint: str
) -> None:
    await simulator.set_client_certificate("onprem-ews", mode)
    result = await auth(certificate_config(simulator, tmp_path, variant, "onprem-ews"), "onprem-ews")
    assert result.reason == reason, result.message
    assert in_message in result.message
    assert in_hint in result.hint
    assert [(m.label("method"), m.value) for m in result.measurements if m.metric == "bems_auth_success"] == [
        ("certificate", 0.0)
    ]


def test_a_403_without_an_iis_substatus_points_at_the_iis_log() -> None:
    """IIS's custom error page, which remote clients get by default, names no substatus (a pure function: the
    simulator shows IIS's detailed errors)."""
    page = HttpResponse(403, (("Content-Type", "text/html"),), b"<h2>403 - Forbidden: Access is denied.</h2>", "u")
    with pytest.raises(ProbeFailure) as caught:
        _judge_certificate(page)
    assert caught.value.reason == Reason.CERTIFICATE_REJECTED
    assert "sc-substatus" in caught.value.hint


def test_an_encrypted_key_loads_with_its_password_which_stays_secret(simulator: Simulator, tmp_path: Path) -> None:
    cert_pem, key_pem = simulator.issue_client_certificate("mapped")
    password = "key-Passw0rd-never-shown"
    key = serialization.load_pem_private_key(key_pem, None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )  # fmt: skip
    (tmp_path / "c.pem").write_bytes(cert_pem)
    write_private_file(tmp_path / "k.pem", encrypted)
    write_private_file(tmp_path / "k.password", password.encode())
    config_text = textwrap.dedent(f"""
        scenario: cloud-bems-onprem-exchange
        credentials:
          bemsadmin:
            username: 'CORP\\BEMSAdmin'
            certificate_file: {tmp_path / "c.pem"}
            key_file: {tmp_path / "k.pem"}
            key_password_file: {tmp_path / "k.password"}
        targets:
          - {{name: ews, kind: ews, exchange: onprem, url: "https://mail.corp.example.test/EWS/Exchange.asmx",
              credential: bemsadmin, auth: [certificate]}}
    """)
    config = parse_config(config_text, "bems.yml")
    assert password in set(config.secrets())  # redacted from logs
    assert password not in json.dumps(config.redacted())
    write_private_file(tmp_path / "k.password", b"not-the-key-password")
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text, "bems.yml")
    assert caught.value.key == "credentials.bemsadmin.certificate_file"
    assert "not-the-key-password" not in str(caught.value)
