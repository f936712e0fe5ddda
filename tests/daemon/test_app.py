"""The exporter as a whole, in-process: scheduling, /metrics, /probe, reloads and readiness."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from fake_clock import FakeClock
from samples import Samples, parse, targets_in, value

from bems_simulator.server import Simulator
from exporter.checks import planned_checks
from exporter.daemon.app import Exporter, revision
from exporter.daemon.runner import run_limit
from exporter.web.collector import BemsCollector
from exporter.web.http_app import create_app


@pytest.fixture
def config_file(simulator: Simulator, tmp_path: Path) -> Path:
    return simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")


@pytest.fixture
async def exporter(config_file: Path) -> AsyncIterator[Exporter]:
    exporter = Exporter(str(config_file))
    exporter.load()
    await exporter.start()
    yield exporter
    await exporter.stop()


@pytest.fixture
async def client(exporter: Exporter) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(exporter), host="127.0.0.1")) as client:
        yield client


async def scrape(client: TestClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    return parse(await response.text())


def planned_jobs(exporter: Exporter) -> int:
    return sum(len(checks) for checks in planned_checks(exporter.config).values())


async def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_first_round_makes_the_exporter_ready(client: TestClient) -> None:
    assert (await client.get("/-/healthy")).status == 200

    async def is_ready() -> bool:
        return (await client.get("/-/ready")).status == 200

    # First runs are spread over at most one interval (1s); the bound is only how long a loaded machine may take.
    await wait_for(is_ready, timeout=30.0)
    samples = await scrape(client)
    for target in ("onprem-ews", "onprem-autodiscover", "online-ews", "online-autodiscover", "online-graph"):
        exchange = "onprem" if target.startswith("onprem") else "online"
        for check in ("reachability", "tls"):
            assert value(samples, "bems_probe_success", target=target, exchange=exchange, check=check) == 1.0
        assert value(samples, "bems_tls_version_info", target=target, exchange=exchange, version="TLSv1.3") == 1
    assert value(samples, "bems_scenario_info", scenario="onprem-bems-hybrid") == 1
    assert value(samples, "bems_scenario_ready", scenario="onprem-bems-hybrid") == 1
    met = {dict(labels)["requirement"] + "@" + dict(labels)["exchange"]: v
           for (name, labels), v in samples.items() if name == "bems_requirement_met"}  # fmt: skip
    assert met == {f"{r}@onprem": 1.0 for r in ("ews_reachable", "autodiscover_reachable", "basic_or_windows_auth",
                                                "impersonation", "autodiscover_ews_url")} | {
        f"{r}@online": 1.0 for r in ("autodiscover_reachable", "modern_auth", "graph_access", "impersonation",
                                     "ews_reachable", "autodiscover_ews_url", "graph_path_ready")}  # fmt: skip
    assert value(samples, "bems_graph_path_ready", scenario="onprem-bems-hybrid", mailbox="carol@contoso.test") == 1
    assert value(samples, "bems_config_last_reload_successful") == 1


async def test_failure_reason_present_only_while_failing(
    client: TestClient, exporter: Exporter, simulator: Simulator
) -> None:
    labels = {"target": "onprem-ews", "exchange": "onprem", "check": "tls"}
    await simulator.set_fault("onprem-ews", "expired")

    async def failing() -> bool:
        return value(await scrape(client), "bems_probe_failure_reason", **labels, reason="certificate") == 1

    await wait_for(failing, timeout=30)  # a bound for a loaded machine, not a measurement
    samples = await scrape(client)
    assert value(samples, "bems_probe_success", **labels) == 0
    assert value(samples, "bems_probe_failures_total", **labels, reason="certificate") >= 1
    assert (
        value(samples, "bems_tls_cert_expiry_timestamp_seconds", target="onprem-ews", exchange="onprem") < time.time()
    )

    await simulator.clear_fault("onprem-ews")

    async def passing() -> bool:
        return value(await scrape(client), "bems_probe_success", **labels) == 1

    await wait_for(passing, timeout=30)
    samples = await scrape(client)
    # The tls check's reason is gone with its failure. (The endpoint's other checks may still carry a reason from
    # the moment the fault was swapped, when the simulator rebuilt the endpoint under them, until they run again.)
    tls_series = {("target", "onprem-ews"), ("check", "tls")}
    assert not [k for k in samples if k[0] == "bems_probe_failure_reason" and tls_series <= k[1]]
    assert value(samples, "bems_probe_failures_total", **labels, reason="certificate") >= 1  # counters stay


async def test_hanging_endpoint_does_not_delay_healthy_targets(
    exporter: Exporter, simulator: Simulator, fake_clock: FakeClock
) -> None:
    await simulator.set_fault("online-ews", "hang")
    await fake_clock.advance(4.5)
    healthy = [exporter.store.runs[(t, "tls")] for t in ("onprem-ews", "onprem-autodiscover", "online-graph")]
    # 1s interval over 4.5s: 4 or 5 runs each, whatever the hanging neighbour does.
    assert all(count >= 4 for count in healthy), healthy
    hung = exporter.store.latest[("online-ews", "tls")]
    assert hung.reason is not None and hung.reason.value == "timeout"
    assert exporter.scheduler.lag.counts[-1] == 0  # no run started more than 10s late
    late = sum(exporter.scheduler.lag.counts[7:])  # buckets above 0.5s
    assert late == 0, exporter.scheduler.lag.counts


async def test_probe_endpoint_runs_now_and_leaves_scheduled_results_alone(config_file: Path) -> None:
    exporter = Exporter(str(config_file))
    exporter.load()  # not started: any result in the store would have come from /probe
    async with TestClient(TestServer(create_app(exporter), host="127.0.0.1")) as client:
        await _probe_endpoint(client, exporter)


async def _probe_endpoint(client: TestClient, exporter: Exporter) -> None:
    response = await client.get("/probe", params={"target": "online-graph"})
    assert response.status == 200
    samples = parse(await response.text())
    assert targets_in(samples) == {"online-graph"}
    assert value(samples, "bems_probe_success", target="online-graph", exchange="online", check="tls") == 1
    assert not any(name == "bems_exporter_build_info" for name, _ in samples)
    assert exporter.store.latest == {} and not exporter.store.runs
    scheduled = parse(await (await client.get("/metrics")).text())
    assert not [key for key in scheduled if key[0] == "bems_probe_success"]

    missing = await client.get("/probe", params={"target": "nope"})
    assert missing.status == 404
    assert "unknown target 'nope'" in await missing.text()
    assert (await client.get("/probe")).status == 400


async def test_reload_applies_good_files_and_keeps_running_on_bad_ones(
    client: TestClient, exporter: Exporter, config_file: Path
) -> None:
    async def ready() -> bool:
        return exporter.ready()

    await wait_for(ready)
    original = config_file.read_text()
    data = yaml.safe_load(original)
    data["targets"] = [t for t in data["targets"] if t["name"] != "online-ews"]
    config_file.write_text(yaml.safe_dump(data))

    response = await client.post("/-/reload")
    assert response.status == 200, await response.text()
    samples = await scrape(client)
    assert "online-ews" not in targets_in(samples)  # gone at once, not after a staleness delay
    assert exporter.scheduler.job_count == planned_jobs(exporter)

    config_file.write_text(original.replace("kind: ews", "kind: owa", 1))
    response = await client.post("/-/reload")
    assert response.status == 500
    assert "targets[0].kind" in await response.text()
    samples = await scrape(client)
    assert value(samples, "bems_config_last_reload_successful") == 0
    assert targets_in(samples) == {"onprem-ews", "onprem-autodiscover", "online-autodiscover", "online-graph"}
    assert exporter.scheduler.job_count == planned_jobs(exporter)  # the last good config still runs
    assert (await client.get("/-/reload")).status == 405


async def test_config_page_is_redacted(client: TestClient, simulator: Simulator) -> None:
    response = await client.get("/config")
    text = await response.text()
    assert response.status == 200
    assert "onprem-ews" in text
    for secret in (simulator.credentials.onprem_password, simulator.credentials.client_secret):
        assert secret not in text
    assert "<secret from file:" in text


async def test_landing_page_lists_targets_and_links(client: TestClient, exporter: Exporter) -> None:
    async def ready() -> bool:
        return exporter.ready()

    await wait_for(ready)
    page = await (await client.get("/")).text()
    for needle in (
        "onprem-ews",
        "online-graph",
        'href="metrics"',
        'href="config"',
        "onprem-bems-hybrid",
        'data-target="onprem-ews" data-check="tls" data-state="ok"',
    ):
        assert needle in page


@pytest.mark.parametrize(
    ("interval", "limit"), [(1, 0.75), (2, 1.5), (4, 3.0), (15, 14.0), (60, 59.0)], ids=lambda v: f"{v}s"
)
def test_a_run_ends_before_its_next_is_due(interval: float, limit: float) -> None:
    """With the timeout equal to the interval (the config allows it), a run against a server that never answers
    still ends before the next one is due, leaving a quarter of the interval (a second at most) for the
    scheduler's lateness: else APScheduler skips every other run as an overrun, halving the results and
    paging the exporter's owner for Exchange's fault. A figure, not a race: a loaded machine cannot break it."""
    assert run_limit(timedelta(seconds=interval)) == limit


async def test_runs_that_cannot_start_in_time_count_as_overruns(
    simulator: Simulator, config_file: Path, fake_clock: FakeClock
) -> None:
    data = yaml.safe_load(config_file.read_text())
    data["limits"] = {"global_concurrency": 1}  # one check at a time, and one of them hangs for its timeout
    config_file.write_text(yaml.safe_dump(data))
    await simulator.set_fault("online-ews", "hang")
    exporter = Exporter(str(config_file))
    exporter.load()
    await exporter.start()
    try:
        await fake_clock.advance(3.5)
    finally:
        await exporter.stop()
    assert sum(exporter.store.overruns.values()) > 0
    assert exporter.store.overruns.keys() <= {
        (t, c) for t, checks in planned_checks(exporter.config).items() for c in checks
    }


async def test_fast_exposition_matches_prometheus_client(client: TestClient, exporter: Exporter) -> None:
    """The collector's own lines, and the writer, against prometheus_client's families and encoder."""
    from prometheus_client import generate_latest
    from reference_families import reference_families

    from exporter.web import exposition

    async def ready() -> bool:
        return exporter.ready()

    await wait_for(ready)
    exporter.scheduler.shutdown()  # one snapshot for both renderings
    families = list(BemsCollector(exporter.store, exporter.status).collect())
    ours = exposition.render(families).decode()

    class Families:
        def __init__(self, families: list[Any]) -> None:
            self.families = families

        def collect(self) -> list[Any]:
            return self.families

    reference = list(reference_families(exporter.store, exporter.config))
    reference_names = {family.name for family in reference}
    others = [family for family in families if family.name not in reference_names]  # verdict, push, lag: plain
    theirs = generate_latest(Families(reference + others)).decode()  # type: ignore[arg-type]
    assert parse(ours) == parse(theirs)
    assert sorted(line for line in ours.splitlines() if line.startswith("#")) == sorted(
        line for line in theirs.splitlines() if line.startswith("#")
    )
    # The collector's families stay valid for prometheus_client's encoders too.
    assert parse(generate_latest(Families(families)).decode()) == parse(ours)  # type: ignore[arg-type]
    assert exposition.render([]) == b""


def test_build_info_names_the_commit_of_the_checkout_it_runs_from() -> None:
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short=12", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert revision() == head
