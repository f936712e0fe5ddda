"""A target's reachability and tls run as one round over one TCP connection, each keeping its own result."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from check_runner import configured_target, run, run_round

from bems_simulator.server import Simulator
from exporter import results
from exporter.checks import CHECKS, planned_checks
from exporter.checks.resources import Resources
from exporter.config import load_config
from exporter.daemon.runner import Limiter, execute_round
from exporter.daemon.scheduler import _SEPARATOR, PHASE_SLOT, JobSpec, Scheduler, first_run_offset, job_specs
from exporter.daemon.store import ResultStore
from exporter.protocol import tcp_tls as net

pytestmark = pytest.mark.asyncio(loop_scope="module")


def metric_names(result: object) -> list[str]:
    return sorted({m.metric for m in result.measurements})  # type: ignore[attr-defined]


async def test_a_round_makes_one_connection_and_keeps_both_results(
    simulator: Simulator, sim_config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "onprem-ews")
    alone = {check: await run(config, target, check) for check in ("reachability", "tls")}  # warms every cache
    connections = []
    real_open_socket = net._open_socket

    async def counted(address: str, port: int) -> socket.socket:
        connections.append((address, port))
        return await real_open_socket(address, port)

    monkeypatch.setattr(net, "_open_socket", counted)
    reachability, tls = await run_round(config, target, ("reachability", "tls"))
    assert len(connections) == 1
    assert reachability.success and tls.success, (reachability, tls)
    for result, lone in ((reachability, alone["reachability"]), (tls, alone["tls"])):
        assert (result.check, metric_names(result)) == (lone.check, metric_names(lone))
        assert [step.name for step in result.steps] == [step.name for step in lone.steps]
    # tls reads as if it had connected itself: from the round's start, its connect steps included.
    assert tls.started == reachability.started
    assert tls.duration >= reachability.duration
    assert tls.steps[:2] == reachability.steps


class QueueingLimiter(Limiter):
    """The exporter's own limiter, but every check after the first waits ``wait`` seconds for its slot, on the
    clock the results are timed by (a busy exporter: every slot taken when tls's turn comes)."""

    def __init__(self, config: object, clock: list[float], wait: float) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        self._clock, self._wait, self._calls = clock, wait, 0

    async def run(self, credential: str | None, work: Callable[[], Awaitable[object]]) -> object:  # type: ignore[override]
        if self._calls:
            self._clock[0] += self._wait
        self._calls += 1
        return await super().run(credential, work)


async def test_a_wait_for_the_exporters_own_slot_inside_a_round_is_not_the_endpoints_time(
    simulator: Simulator, sim_config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(sim_config_file)
    target = configured_target(config, "onprem-ews")
    timeout = config.timeout_of(target).total_seconds()
    offset = [0.0]  # the results' clock runs ahead of the real one by this much
    monkeypatch.setattr(
        results, "time", SimpleNamespace(time=time.time, perf_counter=lambda: time.perf_counter() + offset[0])
    )
    resources, round_results = Resources(), []
    try:
        limiter = QueueingLimiter(config, offset, wait=3 * timeout)
        checks = [CHECKS["reachability"], CHECKS["tls"]]
        await execute_round(limiter, checks, config, target, resources, round_results.append)
    finally:
        await resources.close()
    reachability, tls = round_results
    # Counted, the wait left tls no budget: "TLS handshake did not finish within 5s", the endpoint blamed.
    assert tls.success, tls
    assert reachability.duration <= tls.duration < timeout


def test_reachability_and_tls_share_one_job_per_target(sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    for target in config.targets:
        specs = job_specs(config, target)
        planned = planned_checks(config)[target.name]
        assert sorted(check for spec in specs for check in spec.checks) == sorted(planned)
        assert [spec.checks for spec in specs if "tls" in spec.checks] == [("reachability", "tls")]


async def test_an_overrun_of_a_round_counts_for_each_of_its_checks(sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    store = ResultStore()
    scheduler = Scheduler(store, Resources())
    scheduler.apply(config)
    target = config.targets[0]
    job_id = JobSpec(target, "reachability", timedelta()).job_id
    scheduler._on_overrun(JobEvent(EVENT_JOB_MAX_INSTANCES, job_id, "default"))
    assert store.overruns == {(target.name, "reachability"): 1, (target.name, "tls"): 1}
    assert scheduler.job_count == sum(len(checks) for checks in planned_checks(config).values())
    scheduler.shutdown()


@pytest.mark.parametrize("interval", [timedelta(seconds=2), timedelta(minutes=5)])
def test_first_runs_share_wake_ups_on_a_grid_and_spread_over_the_interval(interval: timedelta) -> None:
    offsets = [first_run_offset(f"t{n:04d}{_SEPARATOR}reachability", interval) for n in range(1_000)]
    assert all(timedelta() <= offset < interval for offset in offsets)
    assert all(offset % PHASE_SLOT == timedelta() for offset in offsets)
    slots = interval // PHASE_SLOT
    assert len(set(offsets)) > min(slots, len(offsets)) // 2  # spread over the interval, not bunched
    assert offsets == [first_run_offset(f"t{n:04d}{_SEPARATOR}reachability", interval) for n in range(1_000)]


def test_an_interval_shorter_than_a_slot_keeps_its_own_jitter() -> None:
    interval = PHASE_SLOT / 2
    offsets = {first_run_offset(f"t{n}", interval) for n in range(100)}
    assert all(timedelta() <= offset < interval for offset in offsets)
    assert len(offsets) > 50
