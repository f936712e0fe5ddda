"""/probe cannot lock out the BEMS account (issue 15, item 1): one run per check at a time and per interval,
and a credential answered 401 too often is not sent but once per retry interval.

The proof is the simulator's own log of failed logons (what Active Directory counts towards its lockout
threshold): after a password change, 16 clients looping on /probe cost no more failed logons than the
configured bound, computed from the interval and ``limits.suspend_after_unauthorized``, whatever the
number of clients.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
import requests
import yaml
from aiohttp.test_utils import TestClient, TestServer
from fake_clock import FakeClock
from samples import parse, value

from bems_simulator.server import Simulator
from exporter.checks import CHECKS, Check, ProbeContext, checks_for
from exporter.checks.resources import Resources
from exporter.checks.signin import check_suspension
from exporter.config import Config, Target, load_config
from exporter.daemon.app import Exporter
from exporter.daemon.scheduler import JobSpec, Scheduler
from exporter.daemon.store import ResultStore
from exporter.protocol.suspension import Suspensions
from exporter.results import CheckResult, ProbeFailure, Reason
from exporter.web.http_app import PROBE_CACHED_HEADER, create_app

INTERVAL = 3.0
CLIENTS = 16
FLOOD_SECONDS = 8.0  # on the fake clock
STEP = 0.25  # fake seconds between the clients' rounds of /probe, and between looks at what a test waits for


def signing_in_jobs(config: Config, credential: str) -> int:
    """Scheduled (target, check) jobs that sign in as ``credential``."""
    return sum(
        1
        for target in config.targets
        if target.credential == credential
        for check in checks_for(config, target)
        if check.uses_credential
    )


# --- the simulator counts failed logons ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "method", "failed"),
    [
        ("none", "basic", 0),
        ("none", "ntlm", 0),
        ("wrong_password", "basic", 1),
        ("wrong_password", "ntlm", 1),
        ("locked", "basic", 1),
        ("locked", "ntlm", 1),
    ],
    ids=lambda v: str(v),
)
async def test_simulator_logs_each_failed_logon(simulator: Simulator, fault: str, method: str, failed: int) -> None:
    from requests_ntlm import HttpNtlmAuth

    credentials = simulator.credentials
    simulator.set_account_fault(fault)
    auth = (
        HttpNtlmAuth(credentials.onprem_username, credentials.onprem_password)
        if method == "ntlm"
        else (credentials.onprem_username, credentials.onprem_password)
    )
    url = simulator.endpoints["onprem-ews"].url + "/EWS/Exchange.asmx"

    def post() -> int:
        with requests.Session() as session:  # a fresh connection: no NTLM handshake carried over
            return session.post(url, data=b"<x/>", auth=auth, verify=str(simulator.ca_file), timeout=10).status_code

    await asyncio.to_thread(post)
    logons = simulator.failed_logons()
    assert len(logons) == failed
    assert all(logon.method.value == method for logon in logons)
    state = await asyncio.to_thread(
        lambda: requests.get(simulator.admin_url + "/api/v1/auth/account/failed_logons", timeout=10).json()
    )
    assert state["count"] == failed and [entry["method"] for entry in state["logons"]] == [method] * failed


async def test_simulator_does_not_count_another_users_basic_logon(simulator: Simulator) -> None:
    url = simulator.endpoints["onprem-ews"].url + "/EWS/Exchange.asmx"

    def post() -> int:
        return requests.post(
            url, data=b"<x/>", auth=("CORP\\someone", "guess"), verify=str(simulator.ca_file), timeout=10
        ).status_code

    assert await asyncio.to_thread(post) == 401
    assert simulator.failed_logons() == []


# --- the flood, against a running exporter ---------------------------------------------------------------


async def test_probe_flood_after_a_password_change_costs_a_bounded_number_of_failed_logons(
    simulator: Simulator, tmp_path: Path, fake_clock: FakeClock
) -> None:
    config_file = simulator.write_exporter_config(tmp_path / "bems.yml", interval=f"{INTERVAL:g}s", timeout="3s")
    data = yaml.safe_load(config_file.read_text())
    data["limits"] = {"suspended_retry_interval": f"{INTERVAL:g}s"}  # as short as the checks' interval
    config_file.write_text(yaml.safe_dump(data))
    simulator.set_account_fault("wrong_password")  # changed in AD; the exporter still has the old password
    exporter = Exporter(str(config_file), monotonic=fake_clock.monotonic)
    exporter.load()
    config = exporter.config
    await exporter.start()
    cached: list[str | None] = []
    try:
        async with TestClient(TestServer(create_app(exporter), host="127.0.0.1")) as client:
            started = fake_clock.monotonic()

            async def probe_both_targets() -> None:
                for target in ("onprem-ews", "onprem-autodiscover"):
                    response = await client.get("/probe", params={"target": target})
                    assert response.status == 200
                    await response.read()
                    cached.append(response.headers.get(PROBE_CACHED_HEADER))

            # Every client probes, all at once, every STEP seconds of the product's clock: the elapsed time
            # the bound allows for is the fake clock's, not what a loaded machine takes.
            while fake_clock.monotonic() - started < FLOOD_SECONDS:
                await asyncio.gather(*(probe_both_targets() for _ in range(CLIENTS)))
                await fake_clock.advance(STEP)
            elapsed = fake_clock.monotonic() - started
            failed = len(simulator.failed_logons())
            samples = parse(await (await client.get("/metrics")).text())
            auth = exporter.store.latest.get(("onprem-ews", "auth"))
    finally:
        await exporter.stop()

    # N in a row before the suspension, plus what was already in flight (one per concurrent check of the
    # credential), then one sign-in per retry interval (+1 for one in flight at either end of the flood). No
    # term depends on the number of clients, nor on how many checks sign in with the credential.
    threshold = config.limits.suspend_after_unauthorized
    in_flight = config.limits.per_credential_concurrency
    trials = math.floor(elapsed / config.limits.suspended_retry_interval.total_seconds()) + 2
    bound = threshold + in_flight - 1 + trials
    assert signing_in_jobs(config, "bemsadmin") > 1, "the bound must not grow with the checks: have several"
    assert threshold <= failed <= bound, (failed, bound, elapsed)
    assert any(age is not None for age in cached), "no /probe answer was marked as cached"
    assert value(samples, "bems_credential_suspended", credential="bemsadmin") == 1
    assert auth is not None and auth.reason == Reason.UNAUTHORIZED


async def test_a_fixed_password_is_noticed_at_the_next_scheduled_run(
    simulator: Simulator, tmp_path: Path, fake_clock: FakeClock
) -> None:
    config_file = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")
    data = yaml.safe_load(config_file.read_text())
    data["limits"] = {"suspended_retry_interval": "1s"}
    config_file.write_text(yaml.safe_dump(data))
    simulator.set_account_fault("wrong_password")
    exporter = Exporter(str(config_file), monotonic=fake_clock.monotonic)
    exporter.load()
    await exporter.start()
    try:
        suspensions = exporter.resources.suspensions
        await fake_clock.advance_until(lambda: suspensions.suspended("bemsadmin"), STEP, limit=30)
        simulator.set_account_fault("none")  # the password is set back in AD; nobody touches the exporter

        def recovered() -> bool:
            auth = exporter.store.latest.get(("onprem-ews", "auth"))
            return not suspensions.suspended("bemsadmin") and auth is not None and auth.success

        await fake_clock.advance_until(recovered, STEP, limit=30)
    finally:
        await exporter.stop()


# --- the suspension, unit by unit ------------------------------------------------------------------------


def windows_config(tmp_path: Path, password: str = "old", threshold: int | None = None) -> Config:
    data: dict[str, object] = {
        "scenario": "onprem-bems-hybrid",
        "credentials": {"bemsadmin": {"username": "CORP\\BEMSAdmin", "password": password}},
        "targets": [
            {"name": "ews", "kind": "ews", "exchange": "onprem", "url": "https://mail.contoso.test/EWS/Exchange.asmx",
             "credential": "bemsadmin", "auth": ["basic"], "mailboxes": ["alice@contoso.test"]},
        ],
    }  # fmt: skip
    if threshold is not None:
        data["limits"] = {"suspend_after_unauthorized": threshold}
    path = tmp_path / "bems.yml"
    path.write_text(yaml.safe_dump(data))
    return load_config(str(path))


@pytest.mark.parametrize(
    ("answers", "suspended"),
    [
        ([], False),
        ([401, 401], False),
        ([401, 401, 401], True),
        ([401, 401, 401, 401], True),
        ([401, 401, 200, 401, 401], False),
        ([401, 401, 401, 200], False),
        ([401, 401, 401, 500], False),  # a SOAP fault after signing in: the password worked
    ],
    ids=["none", "two", "three", "four", "reset-by-success", "lifted-by-success", "lifted-by-non-401"],
)
def test_three_401s_in_a_row_suspend_the_credential(tmp_path: Path, answers: list[int], suspended: bool) -> None:
    suspensions = Suspensions()
    suspensions.configure(windows_config(tmp_path))
    for status in answers:
        suspensions.observe("bemsadmin", unauthorized=status == 401)
    assert suspensions.suspended("bemsadmin") is suspended


def test_the_threshold_is_configurable(tmp_path: Path) -> None:
    suspensions = Suspensions()
    suspensions.configure(windows_config(tmp_path, threshold=1))
    suspensions.observe("bemsadmin", unauthorized=True)
    assert suspensions.suspended("bemsadmin")


@pytest.mark.parametrize(
    ("password", "suspended"), [("old", True), ("new", False)], ids=["same-password", "changed-password"]
)
def test_a_reload_that_changes_the_password_lifts_the_suspension(
    tmp_path: Path, password: str, suspended: bool
) -> None:
    suspensions = Suspensions()
    suspensions.configure(windows_config(tmp_path))
    for _ in range(3):
        suspensions.observe("bemsadmin", unauthorized=True)
    suspensions.configure(windows_config(tmp_path, password=password))
    assert suspensions.suspended("bemsadmin") is suspended


def test_a_suspended_credential_is_tried_once_per_retry_interval_then_not_sent(tmp_path: Path) -> None:
    config = windows_config(tmp_path)  # interval 60 s (the default), suspended_retry_interval 5 m (the default)
    now = [1000.0]
    resources = Resources(lambda: now[0])
    resources.suspensions.configure(config)
    for _ in range(3):
        resources.suspensions.observe("bemsadmin", unauthorized=True)
    for offset, sent in [(0, True), (1, False), (299, False), (300, True), (301, False), (600, True)]:
        now[0] = 1000.0 + offset
        ctx = ProbeContext.for_target(config, config.targets[0], "auth", resources)
        if sent:
            check_suspension(ctx, "bemsadmin")
            continue
        with pytest.raises(ProbeFailure) as refused:
            check_suspension(ctx, "bemsadmin")
        assert refused.value.reason == Reason.UNAUTHORIZED
        assert refused.value.message.startswith("not sent: bemsadmin is suspended after 3 sign-ins in a row")
        assert "one sign-in every 300 s still tries it" in refused.value.message
        assert "reload" in refused.value.hint
        assert "old" not in refused.value.message


@pytest.mark.parametrize(
    ("interval", "retry", "expected"),
    [("60s", None, 300.0), ("60s", "30s", 60.0), ("10m", None, 600.0), ("1s", "1s", 1.0)],
    ids=["default", "never-faster-than-the-checks", "checks-slower-than-the-default", "short"],
)
def test_the_retry_interval_is_the_configured_one_or_the_checks_interval(
    tmp_path: Path, interval: str, retry: str | None, expected: float
) -> None:
    path = tmp_path / "retry.yml"
    data = {
        "scenario": "onprem-bems-hybrid",
        "defaults": {"interval": interval, "timeout": "1s"},
        "credentials": {"bemsadmin": {"username": "CORP\\BEMSAdmin", "password": "old"}},
        "targets": [
            {"name": "ews", "kind": "ews", "exchange": "onprem", "url": "https://mail.contoso.test/EWS/Exchange.asmx",
             "credential": "bemsadmin", "auth": ["basic"]},
        ],
    }  # fmt: skip
    if retry is not None:
        data["limits"] = {"suspended_retry_interval": retry}
    path.write_text(yaml.safe_dump(data))
    suspensions = Suspensions()
    suspensions.configure(load_config(str(path)))
    assert suspensions.retry_seconds("bemsadmin") == expected


def test_a_credential_in_good_standing_is_always_sent(tmp_path: Path) -> None:
    config = windows_config(tmp_path)
    resources = Resources()
    resources.suspensions.configure(config)
    for _ in range(5):
        check_suspension(ProbeContext.for_target(config, config.targets[0], "auth", resources), "bemsadmin")


# --- one run at a time, one per interval -----------------------------------------------------------------


class CountingCheck:
    """A check that takes a while and counts its runs (a stand-in for a sign-in)."""

    def __init__(self, name: str = "auth") -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.check = Check(name, self._probe, lambda _config, _target: True)

    async def _probe(self, target: Target, ctx: ProbeContext) -> CheckResult:
        self.runs += 1
        await self.release.wait()
        return ctx.rec.passed()


@pytest.fixture
def clock(fake_clock: FakeClock) -> FakeClock:
    """The shared fake clock, frozen: nothing runs on the loop here, and ages are compared exactly."""
    fake_clock.freeze()
    return fake_clock


def scheduler_for(config: Config) -> Scheduler:
    scheduler = Scheduler(ResultStore(), Resources())
    scheduler.apply(config)
    return scheduler


async def test_concurrent_probes_share_one_run(tmp_path: Path, clock: FakeClock) -> None:
    config = windows_config(tmp_path)
    scheduler, counting = scheduler_for(config), CountingCheck()
    target = config.targets[0]
    calls = [asyncio.ensure_future(scheduler.on_demand(target, counting.check)) for _ in range(CLIENTS)]
    await asyncio.sleep(0)
    counting.release.set()
    answers = await asyncio.gather(*calls)
    assert counting.runs == 1
    assert len({id(result) for result, _ in answers}) == 1
    assert all(age is None for _, age in answers)  # a shared run is this call's run, not a cached one
    scheduler.shutdown()


@pytest.mark.parametrize(
    ("later", "runs", "age"),
    [(0.0, 1, 0.0), (2.5, 1, 2.5), (59.9, 1, 59.9), (60.0, 2, None), (300.0, 2, None)],
    ids=["at-once", "seconds-later", "just-within-the-interval", "one-interval-later", "long-after"],
)
async def test_a_probe_within_the_interval_reuses_the_last_run(
    tmp_path: Path, clock: FakeClock, later: float, runs: int, age: float | None
) -> None:
    config = windows_config(tmp_path)  # the default interval: 60 s
    scheduler, counting = scheduler_for(config), CountingCheck()
    counting.release.set()
    target = config.targets[0]
    first, _ = await scheduler.on_demand(target, counting.check)
    await clock.advance(later)
    again, cached_age = await scheduler.on_demand(target, counting.check)
    assert counting.runs == runs
    assert cached_age == (pytest.approx(age) if age is not None else None)
    assert (again is first) is (age is not None)
    scheduler.shutdown()


async def test_a_probe_reuses_the_scheduled_result(tmp_path: Path, clock: FakeClock) -> None:
    config = windows_config(tmp_path)
    scheduler, counting = scheduler_for(config), CountingCheck()
    target = config.targets[0]
    scheduled = CheckResult(target.name, "auth", True, started=time.time() - 10, duration=0.1)
    scheduler.store.record(scheduled)
    result, age = await scheduler.on_demand(target, counting.check)
    assert (result, age, counting.runs) == (scheduled, 10.0, 0)
    scheduler.shutdown()


@pytest.mark.parametrize(
    ("since_probe", "runs", "adopted"),
    [(5.0, 0, True), (59.0, 0, True), (61.0, 1, False)],
    ids=["soon-after-a-probe", "within-the-interval", "after-the-interval"],
)
async def test_a_scheduled_run_adopts_a_recent_probe_run(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, since_probe: float, runs: int, adopted: bool
) -> None:
    config = windows_config(tmp_path)
    scheduler, counting = scheduler_for(config), CountingCheck()
    counting.release.set()
    monkeypatch.setitem(CHECKS, "auth", counting.check)
    target = config.targets[0]
    probed, _ = await scheduler.on_demand(target, counting.check)
    await clock.advance(since_probe)
    result = await scheduler._scheduled_result(JobSpec(target, "auth", config.interval_of(target)))
    assert counting.runs == 1 + runs
    assert (result is probed) is adopted
    scheduler.shutdown()
