"""The ``ews_settings`` check against the simulator's admin API: every reason, the requests' shape, the back-off."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from check_runner import configured_target, run

from bems_simulator.server import Simulator
from exporter.checks import CHECKS
from exporter.checks.ews_settings import EWS_RETIREMENT, app_allowed
from exporter.checks.resources import Resources
from exporter.config import load_config
from exporter.daemon.runner import execute
from exporter.protocol.exchange_admin_api import OrganizationEws
from exporter.results import CheckResult, Reason

MAILBOX = "carol@contoso.test"
BEMS_APP = "11111111-2222-3333-4444-555555555555"
OTHER_APP = "99999999-8888-7777-6666-555555555555"


def values(result: CheckResult, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {m.labels: m.value for m in result.measurements if m.metric == metric}


def state_of(result: CheckResult, metric: str, **labels: str) -> str:
    """The ``state`` label whose sample is 1 among the family's samples with ``labels``."""
    on = [dict(k)["state"] for k, v in values(result, metric).items() if v == 1.0 and labels.items() <= dict(k).items()]
    assert len(on) == 1, on
    return on[0]


Setup = Callable[[Simulator], object]
CASES: list[tuple[str, Setup, Reason | None, str, dict[str, float]]] = [
    ("settings-unset", lambda sim: None, None, "", {"now": 1.0, "after_disablement": 0.0}),
    ("app-allow-listed", lambda sim: sim.set_ews_allowed_app_ids([sim.credentials.client_id]), None, "",
     {"now": 1.0, "after_disablement": 1.0}),
    ("app-missing-from-allow-list", lambda sim: sim.set_ews_allowed_app_ids([OTHER_APP]), Reason.EWS_DISABLED,
     "-EwsAllowedAppIDs", {"now": 0.0, "after_disablement": 0.0}),
    ("organisation-disabled", lambda sim: sim.set_ews_disabled(True), Reason.EWS_DISABLED, "-EwsEnabled $true",
     {"now": 0.0, "after_disablement": 0.0}),
    ("mailbox-disabled", lambda sim: sim.set_mailbox_ews_enabled(MAILBOX, False), Reason.EWS_DISABLED,
     f"Set-CASMailbox {MAILBOX}", {"now": 1.0, "after_disablement": 0.0}),
    ("no-exchange-role", lambda sim: sim.set_exchange_admin_fault("role_missing"), Reason.ADMIN_API_NOT_PERMITTED,
     "View-Only Organization Management", {}),
    ("no-manage-as-app", lambda sim: sim.configure_entra(exchange_roles=["full_access_as_app"]),
     Reason.ADMIN_API_NOT_PERMITTED, "Exchange.ManageAsApp", {}),
    ("throttled", lambda sim: sim.set_exchange_admin_fault("throttled", retry_after=30), Reason.THROTTLED, "", {}),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "reason", "in_hint", "allowed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_every_reason(
    simulator: Simulator, sim_config_file: Path, setup: Setup, reason: Reason | None, in_hint: str,
    allowed: dict[str, float],
) -> None:  # fmt: skip
    config = load_config(sim_config_file)
    setup(simulator)
    result = await run(config, config.targets_by_name()["online-ews"], "ews_settings")
    assert (result.success, result.reason) == (reason is None, reason), result.message
    assert in_hint in result.hint
    assert {dict(k)["stage"]: v for k, v in values(result, "bems_ews_app_allowed").items()} == allowed
    # The dated table is measured whatever the tenant answers: the countdown never depends on the admin API.
    assert values(result, "bems_ews_retirement_timestamp_seconds") == {
        (("milestone", "disablement"),): datetime(2026, 10, 1, tzinfo=UTC).timestamp(),
        (("milestone", "shutdown"),): datetime(2027, 4, 1, tzinfo=UTC).timestamp(),
    }


async def test_settings_are_exported_as_microsoft_reports_them(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    simulator.set_ews_allowed_app_ids([simulator.credentials.client_id])
    simulator.set_mailbox_ews_enabled(MAILBOX, False)
    result = await run(config, config.targets_by_name()["online-ews"], "ews_settings")
    assert state_of(result, "bems_ews_organization_enabled_setting") == "true"
    assert state_of(result, "bems_ews_mailbox_enabled_setting", mailbox=MAILBOX) == "false"
    assert values(result, "bems_ews_mailbox_allowed") == {(("mailbox", MAILBOX),): 0.0}
    assert values(result, "bems_ews_application_access_policy")[(("policy", "none"),)] == 1.0
    # The shapes ExchangeOnlineManagement's REST calls have: the cmdlet, and the anchor mailbox per call.
    sent = [(r.cmdlet, r.anchor) for r in simulator.exchange_admin_requests]
    system_mailbox = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
    assert sent == [
        ("Get-OrganizationConfig", f"UPN:{system_mailbox}@{simulator.credentials.tenant_id}"),
        ("Get-CASMailbox", f"UPN:{MAILBOX}"),
    ]  # fmt: skip


async def test_unknown_mailbox_is_mailbox_not_found(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "online-ews", mailboxes=("nobody@contoso.test",))
    result = await run(config, target, "ews_settings")
    assert result.reason == Reason.MAILBOX_NOT_FOUND


async def test_a_429_holds_every_request_until_retry_after(simulator: Simulator, sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    target = config.targets_by_name()["online-ews"]
    simulator.set_exchange_admin_fault("throttled", retry_after=600)
    resources = Resources()
    try:
        first = await execute(CHECKS["ews_settings"], config, target, resources)
        simulator.set_exchange_admin_fault("none")
        second = await execute(CHECKS["ews_settings"], config, target, resources)
    finally:
        await resources.close()
    assert (first.reason, second.reason) == (Reason.THROTTLED, Reason.THROTTLED)
    assert "not sent" in second.message
    assert len(simulator.exchange_admin_requests) == 1


@pytest.mark.parametrize(
    ("enabled", "app_ids", "now", "after"),
    [
        pytest.param(None, (), True, False, id="unset-becomes-false"),
        pytest.param(None, (BEMS_APP,), True, False, id="list-without-effect-while-unset"),
        pytest.param(True, (), True, False, id="true-empty-list-not-assured"),
        pytest.param(True, (BEMS_APP.upper(),), True, True, id="listed-case-insensitively"),
        pytest.param(True, (OTHER_APP,), False, False, id="true-list-without-bems"),
        pytest.param(False, (BEMS_APP,), False, False, id="false-blocks-all"),
    ],
)
def test_app_allowed_follows_microsofts_rules(
    enabled: bool | None, app_ids: tuple[str, ...], now: bool, after: bool
) -> None:
    org = OrganizationEws.read({"EwsEnabled": enabled, "EwsAllowedAppIDs": list(app_ids)})
    assert app_allowed(org, BEMS_APP) == {"now": now, "after_disablement": after}


def test_the_retirement_table_is_in_date_order() -> None:
    assert [m.day for m in EWS_RETIREMENT] == sorted(m.day for m in EWS_RETIREMENT)
