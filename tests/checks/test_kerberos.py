"""Kerberos sign-in against a real MIT KDC on loopback, the simulator accepting tickets with its keytab.

The realm (tests/kerberos_realm.py) holds the service account with the simulator's password and the
simulator's ``HTTP/localhost`` service principal, whose keys the simulator reads from a keytab.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from check_runner import run
from kerberos_realm import REALM, KerberosRealm

from bems_simulator.server import Simulator
from exporter import report
from exporter.checks import CHECKS
from exporter.checks.resources import Resources
from exporter.config import Config, load_config
from exporter.daemon.runner import execute
from exporter.protocol import kerberos
from exporter.results import CheckResult, Reason

pytestmark = pytest.mark.timeout(120)  # a KDC is created and started per test

ACCOUNT = "BEMSAdmin"
# A service principal nobody registered: a load-balanced namespace whose SPN was never set (setspn -S).
UNREGISTERED_SPN = "HTTP/mail-lb.corp.contoso.test"


@pytest.fixture
async def realm(simulator: Simulator, tmp_path: Path) -> AsyncIterator[KerberosRealm]:
    """The realm with the account (the simulator's password) and the simulator's keys, its KDC running."""
    kdc = KerberosRealm(tmp_path / "realm")
    try:
        kdc.create()
        kdc.add_principal(ACCOUNT, simulator.credentials.onprem_password)
        keytab = tmp_path / "exchange-http.keytab"
        kdc.add_principal("HTTP/localhost", keytab=keytab)
        simulator.enable_kerberos(keytab)
        kdc.start()
        yield kdc
    finally:
        kdc.close()


def kerberos_config(simulator: Simulator, tmp_path: Path, auth: list[str], **target_keys: Any) -> Config:
    """The simulator's config with the on-prem targets signing in with ``auth`` (and ``target_keys``)."""
    path = simulator.write_exporter_config(tmp_path / "kerberos.yml", timeout="10s")
    data = yaml.safe_load(path.read_text())
    for target in data["targets"]:
        if target["name"].startswith("onprem-"):
            target.update({"auth": auth, **target_keys})
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def success_by_method(result: CheckResult) -> dict[str, float]:
    return {m.label("method"): m.value for m in result.measurements if m.metric == "bems_auth_success"}


async def auth(config: Config, target: str = "onprem-ews") -> CheckResult:
    return await run(config, config.targets_by_name()[target], "auth")


@pytest.mark.usefixtures("realm")
@pytest.mark.parametrize("extended_protection", ["none", "allow", "require"])
async def test_kerberos_signs_in_with_channel_binding(
    simulator: Simulator, tmp_path: Path, extended_protection: str
) -> None:
    simulator.set_extended_protection("onprem-ews", extended_protection)
    config = kerberos_config(simulator, tmp_path, ["kerberos"])
    before = simulator.traffic["onprem-ews"].kerberos_handshakes
    result = await auth(config)
    assert result.success, report.render(config.targets_by_name()["onprem-ews"], [result])
    assert success_by_method(result) == {"kerberos": 1.0}
    offered = {m.label("method"): m.value for m in result.measurements if m.metric == "bems_auth_offered"}
    assert offered["negotiate"] == 1.0
    assert simulator.traffic["onprem-ews"].kerberos_handshakes > before  # a ticket, not NTLM, got it in


async def test_tickets_are_reused_across_checks(simulator: Simulator, realm: KerberosRealm, tmp_path: Path) -> None:
    """The KDC's own log: one AS-REQ (the TGT) and one TGS-REQ (the service ticket) for three checks."""
    config = kerberos_config(simulator, tmp_path, ["kerberos"])
    target = config.targets_by_name()["onprem-ews"]
    resources = Resources()
    try:
        for _ in range(3):
            # A new connection each time: the service ticket, not a kept-alive connection, signs in.
            resources.kerberos.close()
            result = await execute(CHECKS["auth"], config, target, resources)
            assert success_by_method(result) == {"kerberos": 1.0}, result.message
    finally:
        await resources.close()
    issued = [line for line in realm.kdc_log().splitlines() if "ISSUE" in line and ACCOUNT in line]
    assert [line.split()[5] for line in issued] == ["AS_REQ", "TGS_REQ"], issued


@pytest.mark.usefixtures("realm")
async def test_kerberos_signs_in_to_autodiscover_with_a_keytab(simulator: Simulator, tmp_path: Path) -> None:
    config = kerberos_config(simulator, tmp_path, ["kerberos"])
    result = await auth(config, "onprem-autodiscover")
    assert result.success, report.render(config.targets_by_name()["onprem-autodiscover"], [result])


async def test_keytab_credential_signs_in(simulator: Simulator, realm: KerberosRealm, tmp_path: Path) -> None:
    keytab = tmp_path / "bemsadmin.keytab"
    realm.kadmin(f"ktadd -k {keytab} {ACCOUNT}")  # new random keys: the password no longer works
    path = simulator.write_exporter_config(tmp_path / "keytab.yml", timeout="10s")
    data = yaml.safe_load(path.read_text())
    data["credentials"]["bemsadmin"] = {"username": f"{ACCOUNT}@{REALM}", "keytab": str(keytab)}
    for target in data["targets"]:
        if target["name"].startswith("onprem-"):
            target["auth"] = ["kerberos"]
    path.write_text(yaml.safe_dump(data))
    result = await auth(load_config(path))
    assert success_by_method(result) == {"kerberos": 1.0}, result.message


def _wrong_password(realm: KerberosRealm, _password: str) -> None:
    realm.kadmin(f'cpw -pw "a-password-the-exporter-does-not-have" {ACCOUNT}')


def _locked_out(realm: KerberosRealm, _password: str) -> None:
    # Active Directory's lockout as an MIT password policy: one bad password, from another client, locks it.
    realm.kadmin("addpol -maxfailure 1 -failurecountinterval 0 -lockoutduration 0 lockout")
    realm.kadmin(f"modprinc -policy lockout {ACCOUNT}")
    context = kerberos.krb5.init_context()
    principal = kerberos.krb5.parse_name_flags(context, ACCOUNT.encode())
    with pytest.raises(kerberos.krb5.Krb5Error):
        kerberos.krb5.get_init_creds_password(
            context, principal, kerberos.krb5.get_init_creds_opt_alloc(context), password=b"a wrong one"
        )


def _kdc_down(realm: KerberosRealm, _password: str) -> None:
    realm.stop()


def _kdc_clock_an_hour_ahead(realm: KerberosRealm, _password: str) -> None:
    realm.stop()
    realm.start(clock_offset="+1h")  # libfaketime: the KDC's clock, not the exporter's, is off


def _no_common_encryption_type(realm: KerberosRealm, password: str) -> None:
    # The account keeps AES keys only; the client permits Camellia only (as RC4-only clients meet AES-only DCs).
    realm.kadmin(f'cpw -e aes256-cts:normal -pw "{password}" {ACCOUNT}')
    text = realm.krb5_conf.read_text()
    realm.krb5_conf.write_text(
        text.replace("[libdefaults]", "[libdefaults]\n    permitted_enctypes = camellia128-cts-cmac")
    )


def _nothing(_realm: KerberosRealm, _password: str) -> None:
    return None


@pytest.mark.parametrize(
    ("break_it", "target_keys", "reason", "hint_says"),
    [
        (_nothing, {"spn": UNREGISTERED_SPN}, Reason.KERBEROS_UNKNOWN_SPN, f"setspn -Q {UNREGISTERED_SPN}"),
        (_kdc_clock_an_hour_ahead, {}, Reason.KERBEROS_CLOCK_SKEW, "synchronise the clocks"),
        (_wrong_password, {}, Reason.KERBEROS_WRONG_PASSWORD, "lockout threshold"),
        (_locked_out, {}, Reason.KERBEROS_ACCOUNT_REVOKED, "Unlock-ADAccount"),
        (_kdc_down, {}, Reason.KERBEROS_KDC_UNREACHABLE, "port 88"),
        (_no_common_encryption_type, {}, Reason.KERBEROS_ENCRYPTION_TYPE, "msDS-SupportedEncryptionTypes"),
    ],
    ids=["unknown-spn", "clock-skew", "wrong-password", "locked-out", "kdc-down", "no-common-etype"],
)
async def test_kerberos_failures_name_their_cause(
    simulator: Simulator, realm: KerberosRealm, tmp_path: Path,
    break_it: Any, target_keys: dict[str, str], reason: Reason, hint_says: str,
) -> None:  # fmt: skip
    break_it(realm, simulator.credentials.onprem_password)
    result = await auth(kerberos_config(simulator, tmp_path, ["kerberos"], **target_keys))
    assert result.reason == reason, result.message
    assert hint_says in result.hint
    assert success_by_method(result) == {"kerberos": 0.0}


async def test_kerberos_works_where_ntlm_is_disabled(
    simulator: Simulator, realm: KerberosRealm, tmp_path: Path
) -> None:
    # The virtual directory keeps only Negotiate:Kerberos (or the domain restricts NTLM).
    simulator.set_ntlm_enabled("onprem-ews", False)
    result = await auth(kerberos_config(simulator, tmp_path, ["ntlm", "kerberos"]))
    assert success_by_method(result) == {"ntlm": 0.0, "kerberos": 1.0}
    assert result.reason == Reason.UNAUTHORIZED  # NTLM inside Negotiate is refused


async def test_ntlm_works_where_kerberos_does_not(simulator: Simulator, realm: KerberosRealm, tmp_path: Path) -> None:
    simulator.enable_kerberos(None)  # Exchange holds no key for the SPN: registered on another account
    result = await auth(kerberos_config(simulator, tmp_path, ["ntlm", "kerberos"]))
    assert success_by_method(result) == {"ntlm": 1.0, "kerberos": 0.0}
    assert result.reason == Reason.UNAUTHORIZED
    assert "setspn -X" in result.hint


@pytest.mark.parametrize("method", ["ntlm", "kerberos"])
@pytest.mark.parametrize(
    ("token_checking", "reason"),
    [
        # "Allow" (Accept): a client without bindings is let in, one with wrong bindings is not: that tells.
        ("allow", Reason.CHANNEL_BINDING_MISMATCH),
        # "Require": the unbound attempt is refused too, so nothing tells the bindings from the account.
        ("require", Reason.UNAUTHORIZED),
    ],
)
async def test_tls_offloading_under_extended_protection(
    simulator: Simulator, realm: KerberosRealm, tmp_path: Path, method: str, token_checking: str, reason: Reason
) -> None:
    simulator.set_extended_protection("onprem-ews", token_checking)
    simulator.set_tls_offloaded("onprem-ews", True)
    config = kerberos_config(simulator, tmp_path, [method])
    target = config.targets_by_name()["onprem-ews"]
    traffic = simulator.traffic["onprem-ews"]
    resources = Resources()
    try:
        handshakes = []
        for _ in range(2):
            before = traffic.ntlm_handshakes + traffic.kerberos_handshakes
            result = await execute(CHECKS["auth"], config, target, resources)
            handshakes.append(traffic.ntlm_handshakes + traffic.kerberos_handshakes - before)
            assert result.reason == reason, result.message
            assert "Extended Protection" in result.hint
            assert success_by_method(result) == {method: 0.0}  # the unbound attempt only diagnosed
    finally:
        await resources.close()
    assert handshakes == [2, 1]  # the unbound attempt once per failure episode, its verdict kept


def test_krb5_error_codes_map_to_causes() -> None:
    """Each cause from its MIT code (krb5_err.et), signed as libkrb5 returns it or unsigned as GSSAPI's minor."""
    base = -1765328384
    table = {
        base + 7: Reason.KERBEROS_UNKNOWN_SPN,
        base + 37: Reason.KERBEROS_CLOCK_SKEW,
        -1765328228: Reason.KERBEROS_KDC_UNREACHABLE,
        -1765328230: Reason.KERBEROS_KDC_UNREACHABLE,
        base + 24: Reason.KERBEROS_WRONG_PASSWORD,
        base + 31: Reason.KERBEROS_WRONG_PASSWORD,
        base + 18: Reason.KERBEROS_ACCOUNT_REVOKED,
        base + 23: Reason.KERBEROS_ACCOUNT_REVOKED,
        base + 14: Reason.KERBEROS_ENCRYPTION_TYPE,
        base + 6: Reason.KERBEROS,
        base + 60: Reason.KERBEROS,  # KRB_ERR_GENERIC: no cause of its own
    }
    for code, reason in table.items():
        assert kerberos.cause_of(code).reason == reason, code
        assert kerberos.cause_of(code + 2**32).reason == reason, code
