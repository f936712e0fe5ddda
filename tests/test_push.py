"""Push notifications end to end: the simulator's push engines call the exporter's real listener."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from checks import run
from loopback import free_port
from samples import parse, value

from exporter import exposition
from exporter.app import Exporter
from exporter.config import Config, load_config
from exporter.results import Reason
from exporter.simulator.server import Simulator

SCALE = 1.0  # one simulated minute lasts one second: StatusFrequency 1 means a keep-alive a second


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(tmp_path / "sim", minute_seconds=SCALE) as simulator:
        # The write probe creates and deletes messages: Graph wants Mail.ReadWrite for that.
        simulator.configure_entra(graph_roles=["Mail.Read", "Mail.ReadWrite", "User.Read.All"])
        yield simulator


def push_config(sim: Simulator, tmp_path: Path, **push: dict[str, Any]) -> Path:
    """The simulator's config plus a TLS listener (certificate from the simulator's CA) and push blocks."""
    path = sim.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")
    data = yaml.safe_load(path.read_text())
    cert, key = sim.issue_certificate(["localhost"], ["127.0.0.1"])
    (tmp_path / "listener.crt").write_bytes(cert)
    (tmp_path / "listener.key").write_bytes(key)
    port = free_port()
    data["notifications"] = {
        "listen_address": f"127.0.0.1:{port}",
        "public_url": f"https://localhost:{port}/monitor",
        "tls": {"cert_file": str(tmp_path / "listener.crt"), "key_file": str(tmp_path / "listener.key")},
    }
    for target in data["targets"]:
        if target["name"] in push:
            target["push"] = push[target["name"]]
    data["targets"].append({"name": "bems-url", "kind": "notification_url",
                            "url": sim.endpoints["bems"].url + "/notificationClient"})  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
async def started() -> AsyncIterator[list[Exporter]]:
    exporters: list[Exporter] = []
    yield exporters
    for exporter in exporters:
        await exporter.stop()


async def start(started: list[Exporter], path: Path) -> Exporter:
    exporter = Exporter(str(path))
    exporter.load()
    await exporter.start()
    started.append(exporter)
    return exporter


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


EWS_PUSH = {"mailbox": "alice@corp.example.test", "status_frequency": 1, "stall_after": "3s",
            "write_probe": True, "write_interval": "1s"}  # fmt: skip


async def test_ews_push_keepalives_events_and_stall(sim: Simulator, tmp_path: Path, started: list[Exporter]) -> None:
    exporter = await start(started, push_config(sim, tmp_path, **{"onprem-ews": EWS_PUSH}))
    state = exporter.resources.push.targets["onprem-ews"]
    await until(lambda: state.notifications["status"] >= 2 and state.notifications["created"] >= 1)
    await until(lambda: sum(state.delays.counts) >= 1)
    assert 0 <= state.delays.total / sum(state.delays.counts) < 1.0  # loopback: well under a second
    first = state.current
    assert first is not None and first.active
    result = exporter.store.latest.get(("onprem-ews", "push"))
    assert result is not None and result.success, result
    samples = parse(exposition.render(exporter.registry.collect()).decode())
    labels = {"target": "onprem-ews", "exchange": "onprem"}
    assert value(samples, "bems_push_subscription_active", **labels, mailbox="alice@corp.example.test") == 1
    assert value(samples, "bems_push_notifications_total", **labels, kind="status") >= 2
    assert value(samples, "bems_push_notification_delay_seconds_count", **labels) >= 1
    assert value(samples, "bems_push_rejected_total", **labels, reason="client_state") == 0
    assert value(samples, "bems_notification_url_success", target="bems-url") in (None, 1.0)

    sim.set_push_fault("drop_subscriptions")  # Exchange silently forgets: nothing more arrives

    def stalled() -> bool:
        latest = exporter.store.latest.get(("onprem-ews", "push"))
        return latest is not None and latest.reason == Reason.PUSH_STALLED

    await until(stalled, timeout=8)
    sim.set_push_fault("none")
    assert state.current is not None and state.current.id != first.id  # subscribed again
    await until(lambda: exporter.store.latest[("onprem-ews", "push")].success, timeout=8)


async def test_write_probe_measures_an_injected_delay(sim: Simulator, tmp_path: Path,
                                                      started: list[Exporter]) -> None:  # fmt: skip
    sim.set_push_fault("delayed", delay_seconds=1.5)
    push = EWS_PUSH | {"stall_after": "6s"}
    exporter = await start(started, push_config(sim, tmp_path, **{"onprem-ews": push}))
    state = exporter.resources.push.targets["onprem-ews"]
    await until(lambda: sum(state.delays.counts) >= 1, timeout=10)
    observed = state.delays.total / sum(state.delays.counts)
    assert 1.3 < observed < 2.5, observed


async def test_a_restarted_exporter_ends_the_old_subscription(sim: Simulator, tmp_path: Path,
                                                              started: list[Exporter]) -> None:  # fmt: skip
    path = push_config(sim, tmp_path, **{"onprem-ews": EWS_PUSH | {"write_probe": False}})
    first = await start(started, path)
    await until(lambda: first.resources.push.targets["onprem-ews"].current is not None)
    old_id = first.resources.push.targets["onprem-ews"].current.id  # type: ignore[union-attr]
    await first.stop()
    started.remove(first)
    second = await start(started, path)  # the same listener address: the old subscription calls it
    await until(lambda: not sim.ews_subscriptions[old_id].alive, timeout=8)
    assert second.resources.push.targets["onprem-ews"].rejected["unknown_subscription"] >= 1


GRAPH_PUSH = {"mailbox": "carol@contoso.test", "write_probe": True, "write_interval": "1s", "stall_after": "4s"}


async def test_graph_push_validation_delivery_and_cleanup(sim: Simulator, tmp_path: Path,
                                                          started: list[Exporter]) -> None:  # fmt: skip
    exporter = await start(started, push_config(sim, tmp_path, **{"online-graph": GRAPH_PUSH}))
    state = exporter.resources.push.targets["online-graph"]
    await until(lambda: state.current is not None and state.notifications["created"] >= 1)
    await until(lambda: sum(state.delays.counts) >= 1)
    subscription = sim.graph_subscriptions[state.current.id]  # type: ignore[union-attr]
    assert subscription.alive
    await until(lambda: exporter.store.latest.get(("online-graph", "push")) is not None
                and exporter.store.latest[("online-graph", "push")].success)  # fmt: skip

    expiration = subscription.expiration
    sim.send_lifecycle(subscription.id, "reauthorizationRequired")  # answered by renewing it
    await until(lambda: subscription.expiration > expiration and not state.current.reauthorize, timeout=8)  # type: ignore[union-attr]

    sim.send_lifecycle(subscription.id, "subscriptionRemoved")
    await until(lambda: state.current is not None and state.current.id != subscription.id, timeout=8)

    current = state.current.id  # type: ignore[union-attr]
    await exporter.stop()
    started.remove(exporter)
    assert not sim.graph_subscriptions[current].alive  # deleted on shutdown


async def test_graph_validation_failure_is_a_subscribe_failure(sim: Simulator, tmp_path: Path) -> None:
    path = push_config(sim, tmp_path, **{"online-graph": GRAPH_PUSH})
    config = load_config(path)  # no exporter running: nothing answers Graph's validation request
    result = await run(config, config.targets_by_name()["online-graph"], "push")
    assert not result.success and result.reason == Reason.BAD_RESPONSE, result
    assert "validation" in result.message.lower()


async def test_notification_url(sim: Simulator, tmp_path: Path) -> None:
    config: Config = load_config(push_config(sim, tmp_path))
    target = config.targets_by_name()["bems-url"]
    assert target.exchange_label == ""
    assert (await run(config, target, "notification_url")).success
    for fault in ("no_echo", "wrong_echo"):
        sim.set_bems_fault(fault)
        result = await run(config, target, "notification_url")
        assert result.reason == Reason.BAD_RESPONSE and "echo" in result.message, result


async def test_push_metrics_pass_promtool(sim: Simulator, tmp_path: Path, started: list[Exporter]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # `make test` installs it: a missing tool is a failure, never a skip
        pytest.fail("promtool is not installed (run `make tools`)")
    exporter = await start(started, push_config(sim, tmp_path, **{"onprem-ews": EWS_PUSH}))
    state = exporter.resources.push.targets["onprem-ews"]
    await until(lambda: sum(state.delays.counts) >= 1)
    text = exposition.render(exporter.registry.collect())
    lint = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint


RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules"
RULE_METRIC = re.compile(r"(?<![:\w])(bems_[a-z0-9_]+)")


async def test_every_metric_the_rules_use_is_in_real_output(sim: Simulator, tmp_path: Path,
                                                            started: list[Exporter]) -> None:  # fmt: skip
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        for name in RULE_METRIC.findall(str(rule.get("expr", "")) + str(rule.get("annotations", "")))
    }
    assert "bems_impersonation_success" in used
    # An estate that exercises every family: push, the BEMS URL, a certificate credential that may read its own
    # registration, and one failing mailbox for the failure series.
    sim.configure_entra(graph_roles=["Mail.Read", "Mail.ReadWrite", "User.Read.All", "Application.Read.All"])
    sim.revoke_impersonation("bob@corp.example.test")
    exporter = await start(started, push_config(sim, tmp_path, **{"onprem-ews": EWS_PUSH}))
    await until(lambda: exporter.ready(), timeout=15)
    await until(lambda: exporter.store.latest.get(("online-ews", "token")) is not None)
    exported = {
        re.sub(r"_(bucket|count|sum|total|created)$", "", name)
        for (name, _labels) in parse(exposition.render(exporter.registry.collect()).decode())
    }
    missing = {name for name in used if name not in exported and re.sub(r"_total$", "", name) not in exported}
    assert missing == set()
