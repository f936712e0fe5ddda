"""Population sweeps against the simulator, on a fake clock: every mailbox once, outcomes and reasons as BEMS
would meet them (a scope that leaves some out, a mailbox moved to Exchange Online), the request budget kept
in every minute of the simulator's own request log, back-offs honoured, and a restart that resumes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from fake_clock import FakeClock

from bems_simulator.server import Simulator
from exporter.checks.resources import Resources
from exporter.config import Config, load_config
from exporter.daemon.runner import Limiter
from exporter.daemon.sweep import WINDOW_SECONDS, Outcome, RequestBudget, Sweeps, population_families, state_path

PEOPLE = [f"user{n:02d}@corp.example.test" for n in range(36)]
SCOPED_OUT = PEOPLE[1:3]  # the management scope of ApplicationImpersonation leaves them out
MOVED = PEOPLE[3]  # migrated to Exchange Online: on-premises Autodiscover redirects it there
GONE = "nobody@corp.example.test"  # in the export, in no mailbox database
BUDGET = 6  # requests a minute: the population cannot be swept at the interval's even pace without waiting
SWEEP_INTERVAL = "4m"


def _write_config(simulator: Simulator, tmp_path: Path, state_directory: Path) -> Config:
    path = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1h", timeout="5s")
    config = yaml.safe_load(path.read_text())
    users = tmp_path / "users.csv"
    users.write_text("Name,PrimarySmtpAddress\n" + "".join(f"u,{m}\n" for m in [*PEOPLE, GONE]))
    config["populations"] = {
        "staff": {"file": {"path": str(users), "column": "PrimarySmtpAddress"}, "sweep_interval": SWEEP_INTERVAL}
    }
    config["sweeps"] = {"state_directory": str(state_directory)}
    config["limits"] = {"per_credential_requests_per_minute": BUDGET}
    for target in config["targets"]:
        if target["name"] == "onprem-ews":
            target["population"] = "staff"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


@pytest.fixture
def population(simulator: Simulator) -> None:
    for mailbox in PEOPLE:
        if mailbox != MOVED:
            simulator.add_mailbox(mailbox)
    for mailbox in SCOPED_OUT:
        simulator.revoke_impersonation(mailbox)
    simulator.set_autodiscover_redirect("onprem-autodiscover", MOVED, "redirect_addr", "user03@contoso.mail.test")


def _swept(simulator: Simulator) -> list[float]:
    """When each population request reached EWS (the loop's clock, which the fake clock moves), the sweep's own
    mailboxes only."""
    wanted = {m.casefold() for m in [*PEOPLE, GONE]}
    return [r.time for r in simulator.ews_requests if (r.impersonated or "").casefold() in wanted]


def _most_in_a_window(times: list[float]) -> int:
    ordered, most, start = sorted(times), 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - WINDOW_SECONDS:
            start += 1
        most = max(most, end - start + 1)
    return most


@contextlib.asynccontextmanager
async def running(config: Config, fake_clock: FakeClock) -> AsyncIterator[Sweeps]:
    """The configuration's sweeps, started, then stopped (their progress written) and their sessions closed."""
    resources = Resources(fake_clock.monotonic)
    sweeps = Sweeps(resources)
    sweeps.apply(config, Limiter(config))
    sweeps.start()
    try:
        yield sweeps
    finally:
        await sweeps.stop()
        await resources.close()


async def _run_until_complete(sweeps: Sweeps, fake_clock: FakeClock, limit_seconds: float) -> float:
    sweep = sweeps.sweeps[("onprem-ews", "staff")]
    waited = 0.0
    while not sweep.state.last_complete:
        assert waited < limit_seconds, f"{len(sweep.state.done)} mailboxes swept after {waited:g} s"
        await fake_clock.advance(5)
        waited += 5
    return waited


async def test_a_sweep_checks_everyone_once_within_the_budget(
    simulator: Simulator, population: None, tmp_path: Path, fake_clock: FakeClock
) -> None:
    config = _write_config(simulator, tmp_path, tmp_path)
    async with running(config, fake_clock) as sweeps:
        waited = await _run_until_complete(sweeps, fake_clock, limit_seconds=20 * 60)
    swept = _swept(simulator)
    mailboxes = len(PEOPLE) + 1
    # One EWS request a mailbox, never more than the budget in any minute, so slower than the even pace.
    assert len(swept) == mailboxes
    assert _most_in_a_window(swept) <= BUDGET
    assert waited >= (mailboxes / BUDGET - 1) * 60
    state = sweeps.sweeps[("onprem-ews", "staff")].state
    failing = {mailbox: (f.reason, f.hint) for mailbox, f in state.failing.items()}
    assert {m: reason for m, (reason, _) in failing.items()} == {
        **dict.fromkeys(SCOPED_OUT, "impersonation_denied"), MOVED: Outcome.MOVED.value, GONE: "mailbox_not_found",
    }  # fmt: skip
    assert "user03@contoso.mail.test" in failing[MOVED][1]
    assert "ApplicationImpersonation" in failing[SCOPED_OUT[0]][1]


async def test_a_restart_resumes_the_sweep_where_it_was(
    simulator: Simulator, population: None, tmp_path: Path, fake_clock: FakeClock
) -> None:
    config = _write_config(simulator, tmp_path, tmp_path)
    async with running(config, fake_clock):
        await fake_clock.advance(120)
    # The exporter stopped: its progress is written.
    saved = json.loads(state_path(str(tmp_path), "onprem-ews", "staff").read_text())
    assert 0 < len(saved["done"]) < len(PEOPLE)
    assert set(saved["failing"]) <= {*SCOPED_OUT, MOVED, GONE}

    async with running(config, fake_clock) as second:
        assert len(second.sweeps[("onprem-ews", "staff")].state.done) == len(saved["done"])
        await _run_until_complete(second, fake_clock, limit_seconds=20 * 60)
    swept = _swept(simulator)
    # Nobody checked twice across the restart, but the one mailbox whose answer the stop cut off.
    assert len(PEOPLE) + 1 <= len(swept) <= len(PEOPLE) + 2
    assert sorted({r.impersonated for r in simulator.ews_requests if r.impersonated in PEOPLE}) == sorted(PEOPLE)


async def test_a_back_off_holds_the_sweep_until_it_ends(
    simulator: Simulator, population: None, tmp_path: Path, fake_clock: FakeClock
) -> None:
    config = _write_config(simulator, tmp_path, tmp_path)
    simulator.set_ews_throttling("onprem-ews", "server_busy_fault", backoff_ms=90_000)
    async with running(config, fake_clock) as sweeps:
        await fake_clock.advance(10)
        throttled_at = len(simulator.ews_requests)
        assert throttled_at == 1  # the first answer asked for 90 s
        simulator.set_ews_throttling("onprem-ews", "none")
        await fake_clock.advance(80)
        assert len(simulator.ews_requests) == throttled_at  # nothing sent while the back-off lasts
        await fake_clock.advance(20)
        assert len(simulator.ews_requests) > throttled_at
        sweep = sweeps.sweeps[("onprem-ews", "staff")]
        assert "throttled" not in {reason for _, reason in sweep.state.done.values()}  # tried again, not failed


async def test_metrics_count_outcomes_without_a_series_per_mailbox(
    simulator: Simulator, population: None, tmp_path: Path, fake_clock: FakeClock
) -> None:
    config = _write_config(simulator, tmp_path, tmp_path)
    async with running(config, fake_clock) as sweeps:
        await _run_until_complete(sweeps, fake_clock, limit_seconds=20 * 60)
    families = {family.name: family for family in population_families(sweeps)}
    samples = [(family.name, sample.labels, sample.value) for family in families.values() for sample in family.samples]
    assert not any("mailbox" in labels for _, labels, _ in samples)
    failing = {
        labels["reason"]: value for name, labels, value in samples if name == "bems_population_failing_mailboxes"
    }
    assert failing == {"impersonation_denied": 2.0, "moved": 1.0, "mailbox_not_found": 1.0}
    values = {name: value for name, labels, value in samples if "reason" not in labels}
    assert values["bems_population_mailboxes"] == len(PEOPLE) + 1
    assert values["bems_population_source_up"] == 1.0
    assert values["bems_population_sweep_last_complete_timestamp_seconds"] > 0


async def test_the_budget_waits_for_the_oldest_request_to_leave_the_window(fake_clock: FakeClock) -> None:
    budget = RequestBudget(3)
    for _ in range(3):
        await budget.take("bemsadmin")
    assert budget.waits == 0
    waiting = asyncio.ensure_future(budget.take("bemsadmin"))
    await fake_clock.advance(59)
    assert not waiting.done()
    await budget.take("another-account")  # budgets are per credential
    await fake_clock.advance(1.5)
    assert waiting.done() and budget.waits == 1


async def test_a_reload_that_changes_the_target_goes_on_with_the_same_sweep(
    simulator: Simulator, population: None, tmp_path: Path, fake_clock: FakeClock
) -> None:
    config = _write_config(simulator, tmp_path, tmp_path)
    async with running(config, fake_clock) as sweeps:
        await fake_clock.advance(60)
        before = sweeps.sweeps[("onprem-ews", "staff")]
        done = dict(before.state.done)
        assert done
        targets = tuple(t.model_copy(update={"timeout": timedelta(seconds=4)}) for t in config.targets)
        sweeps.apply(config.model_copy(update={"targets": targets}), Limiter(config))
        after = sweeps.sweeps[("onprem-ews", "staff")]
        assert after is not before and after.state.done == done
        await fake_clock.advance(5)
        assert before.task is not None and before.task.done()


async def test_online_sweeps_check_application_access_through_ews_and_graph(
    simulator: Simulator, tmp_path: Path, fake_clock: FakeClock
) -> None:
    online = [f"cloud{n:02d}@contoso.test" for n in range(12)]
    for mailbox in online:
        simulator.add_mailbox(mailbox, exchange="online")
    simulator.deny_app_access(online[5])  # the RBAC for Applications scope leaves a new hire out
    path = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1h", timeout="5s")
    config = yaml.safe_load(path.read_text())
    users = tmp_path / "cloud.txt"
    users.write_text("\n".join(online))
    config["populations"] = {"cloud": {"file": {"path": str(users)}, "sweep_interval": "2m"}}
    for target in config["targets"]:
        if target["name"] in ("online-ews", "online-graph"):
            target["population"] = "cloud"
    path.write_text(yaml.safe_dump(config))
    async with running(load_config(path), fake_clock) as sweeps:
        for _ in range(60):
            if all(s.state.last_complete for s in sweeps.sweeps.values()):
                break
            await fake_clock.advance(5)
    verdicts = {key[0]: {m: f.reason for m, f in s.state.failing.items()} for key, s in sweeps.sweeps.items()}
    assert verdicts == {"online-ews": {online[5]: "forbidden"}, "online-graph": {online[5]: "forbidden"}}
    # One Graph request a mailbox (the inbox), and no user-object reads: the sweep's cost is the inbox alone.
    inbox_reads = [r for r in simulator.graph_requests if "/mailFolders/inbox" in r.path]
    assert len(inbox_reads) == len(online)
