"""Push notifications end to end: the simulator's push engines call the exporter's real listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from check_runner import run
from dns_servers import running_dnsmasq
from fake_clock import FakeClock
from loopback import bound_socket, port_of
from samples import parse, value

from bems_simulator.server import DEMO_GRAPH_ROLES, Simulator
from exporter.checks import CHECKS
from exporter.checks import push as push_check
from exporter.checks import push_state as push_state
from exporter.checks.push_state import PushTarget, callback_url
from exporter.checks.resources import Resources
from exporter.config import Config, load_config
from exporter.daemon.app import Exporter
from exporter.daemon.listener import Listener
from exporter.daemon.runner import execute
from exporter.results import CheckResult, ProbeFailure, Reason
from exporter.web import exposition
from exporter.web.collector import BemsCollector

SCALE = 1.0  # one simulated minute lasts one second: StatusFrequency 1 means a keep-alive a second


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(tmp_path / "sim", minute_seconds=SCALE) as simulator:
        # The write probe creates and deletes messages: Graph wants Mail.ReadWrite for that.
        simulator.configure_entra(graph_roles=list(DEMO_GRAPH_ROLES))
        yield simulator


def push_config(
    sim: Simulator, tmp_path: Path, listener: socket.socket, interval: str = "1s", **push: dict[str, Any]
) -> Path:
    """The simulator's config plus a TLS listener on ``listener``'s port (certificate from the simulator's CA)
    and push blocks."""
    path = sim.write_exporter_config(
        tmp_path / "bems.yml", interval=interval, timeout="1s" if interval == "1s" else "10s"
    )
    data = yaml.safe_load(path.read_text())
    data["notifications"] = sim.notifications_block(tmp_path, port_of(listener))
    for target in data["targets"]:
        if target["name"] in push:
            target["push"] = push[target["name"]]
    data["targets"].append({"name": "bems-url", "kind": "notification_url",
                            "url": sim.endpoints["bems"].url + "/notificationClient"})  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return path


class Started(list[Exporter]):
    """The exporters a test started, stopped after it (and before its fake clock stops); their listeners serve
    on ``listener``, one at a time."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__()
        self.listener = listener


@pytest.fixture
async def started(fake_clock: FakeClock, listener_socket: socket.socket) -> AsyncIterator[Started]:
    exporters = Started(listener_socket)
    yield exporters
    for exporter in exporters:
        await exporter.stop()


async def start(started: Started, path: Path, clock: FakeClock) -> Exporter:
    exporter = Exporter(str(path), monotonic=clock.monotonic)
    exporter.listener.take_socket(started.listener)
    exporter.load()
    await exporter.start()
    started.append(exporter)
    return exporter


STEP = 0.25  # fake seconds between looks at what a test waits for: a quarter of the 1 s check interval


EWS_PUSH = {"mailbox": "alice@corp.example.test", "status_frequency": 1, "stall_after": "3s",
            "write_probe": True, "write_interval": "1s"}  # fmt: skip


async def test_ews_push_keepalives_events_and_stall(
    sim: Simulator, tmp_path: Path, started: Started, fake_clock: FakeClock
) -> None:
    exporter = await start(
        started, push_config(sim, tmp_path, started.listener, **{"onprem-ews": EWS_PUSH}), fake_clock
    )
    state = exporter.resources.push.targets["onprem-ews"]
    await fake_clock.advance_until(
        lambda: state.notifications["status"] >= 2 and state.notifications["created"] >= 1, STEP, limit=10
    )
    await fake_clock.advance_until(lambda: sum(state.delays.counts) >= 1, STEP, limit=10)
    assert 0 <= state.delays.total / sum(state.delays.counts) < 1.0  # loopback: well under a second
    first = state.current
    assert first is not None and first.active
    result = exporter.store.latest.get(("onprem-ews", "push"))
    assert result is not None and result.success, result
    samples = parse(exposition.render(BemsCollector(exporter.store, exporter.status).collect()).decode())
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

    await fake_clock.advance_until(stalled, STEP, limit=8)
    sim.set_push_fault("none")
    assert state.current is not None and state.current.id != first.id  # subscribed again
    await fake_clock.advance_until(lambda: exporter.store.latest[("onprem-ews", "push")].success, STEP, limit=8)


async def test_write_probe_measures_an_injected_delay(
    sim: Simulator, tmp_path: Path, started: Started, fake_clock: FakeClock
) -> None:
    sim.set_push_fault("delayed", delay_seconds=1.5)
    push = EWS_PUSH | {"stall_after": "6s"}
    exporter = await start(started, push_config(sim, tmp_path, started.listener, **{"onprem-ews": push}), fake_clock)
    state = exporter.resources.push.targets["onprem-ews"]
    real_start = time.monotonic()  # time-machine leaves it alone: the real time the test takes
    await fake_clock.advance_until(lambda: sum(state.delays.counts) >= 1, STEP, limit=10)
    real_taken = time.monotonic() - real_start
    observed = state.delays.total / sum(state.delays.counts)
    # The delivery came 1.5 s of loop time after the write; the product's clock moves by the jumps only, so it
    # measures 1.5 s less the real time the machine spent on the way (never more): bounds no load can break.
    assert 1.5 - real_taken <= observed <= 1.5, (observed, real_taken)


async def test_a_restarted_exporter_ends_the_old_subscription(
    sim: Simulator, tmp_path: Path, started: Started, fake_clock: FakeClock
) -> None:
    path = push_config(sim, tmp_path, started.listener, **{"onprem-ews": EWS_PUSH | {"write_probe": False}})
    first = await start(started, path, fake_clock)
    await fake_clock.advance_until(
        lambda: first.resources.push.targets["onprem-ews"].current is not None, STEP, limit=10
    )
    old_id = first.resources.push.targets["onprem-ews"].current.id  # type: ignore[union-attr]
    await first.stop()
    started.remove(first)
    second = await start(started, path, fake_clock)  # the same listener address: the old subscription calls it
    await fake_clock.advance_until(lambda: not sim.ews_subscriptions[old_id].alive, STEP, limit=8)
    assert second.resources.push.targets["onprem-ews"].rejected["unknown_subscription"] >= 1


GRAPH_PUSH = {"mailbox": "carol@contoso.test", "write_probe": True, "write_interval": "1s", "stall_after": "4s"}


async def test_graph_push_validation_delivery_and_cleanup(
    sim: Simulator, tmp_path: Path, started: Started, fake_clock: FakeClock
) -> None:
    exporter = await start(
        started, push_config(sim, tmp_path, started.listener, **{"online-graph": GRAPH_PUSH}), fake_clock
    )
    state = exporter.resources.push.targets["online-graph"]
    await fake_clock.advance_until(
        lambda: state.current is not None and state.notifications["created"] >= 1, STEP, limit=10
    )
    await fake_clock.advance_until(lambda: sum(state.delays.counts) >= 1, STEP, limit=10)
    subscription = sim.graph_subscriptions[state.current.id]  # type: ignore[union-attr]
    assert subscription.alive
    latest = exporter.store.latest
    await fake_clock.advance_until(
        lambda: latest.get(("online-graph", "push")) is not None and latest[("online-graph", "push")].success,
        STEP,
        limit=10,
    )

    expiration = subscription.expiration
    sim.send_lifecycle(subscription.id, "reauthorizationRequired")  # answered by renewing it
    await fake_clock.advance_until(
        lambda: subscription.expiration > expiration and not state.current.reauthorize,  # type: ignore[union-attr]
        STEP,
        limit=8,
    )

    sim.send_lifecycle(subscription.id, "subscriptionRemoved")
    await fake_clock.advance_until(
        lambda: state.current is not None and state.current.id != subscription.id, STEP, limit=8
    )

    current = state.current.id  # type: ignore[union-attr]
    await exporter.stop()
    started.remove(exporter)
    assert not sim.graph_subscriptions[current].alive  # deleted on shutdown


async def test_graph_validation_failure_is_a_subscribe_failure(sim: Simulator, tmp_path: Path) -> None:
    with socket.socket() as refusing:  # bound, not listening: the kernel refuses Graph's validation request
        refusing.bind(("127.0.0.1", 0))
        path = push_config(sim, tmp_path, refusing, **{"online-graph": GRAPH_PUSH})
        config = load_config(path)  # no exporter running: nothing answers Graph's validation request
        result = await run(config, config.targets_by_name()["online-graph"], "push")
    assert not result.success and result.reason == Reason.BAD_RESPONSE, result
    assert "validation" in result.message.lower()


async def test_push_metrics_pass_promtool(
    sim: Simulator, tmp_path: Path, started: Started, fake_clock: FakeClock
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # `make test` installs it: a missing tool is a failure, never a skip
        pytest.fail("promtool is not installed (run `make tools`)")
    exporter = await start(
        started, push_config(sim, tmp_path, started.listener, **{"onprem-ews": EWS_PUSH}), fake_clock
    )
    state = exporter.resources.push.targets["onprem-ews"]
    await fake_clock.advance_until(lambda: sum(state.delays.counts) >= 1, STEP, limit=10)
    text = exposition.render(BemsCollector(exporter.store, exporter.status).collect())
    lint = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint


RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
RULE_METRIC = re.compile(r"(?<![:\w])(bems_[a-z0-9_]+)")


async def test_every_metric_the_rules_use_is_in_real_output(
    sim: Simulator, tmp_path: Path, started: Started, fake_clock: FakeClock
) -> None:
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        for name in RULE_METRIC.findall(str(rule.get("expr", "")) + str(rule.get("annotations", "")))
    }
    assert "bems_impersonation_success" in used
    # An estate that exercises every family: push, the BEMS URL, a certificate credential that may read its own
    # registration, one failing mailbox for the failure series, a name its own resolver does not know, a maintenance
    # window, a Microsoft 365 incident, a population with a failing mailbox (bob), and one whose source fails (its
    # file is missing).
    sim.configure_entra(graph_roles=[*DEMO_GRAPH_ROLES, "Application.Read.All"])
    sim.revoke_impersonation("bob@corp.example.test")
    sim.post_service_issue("EX123456")  # an active Exchange Online incident, for the incident rules' series
    path = push_config(sim, tmp_path, started.listener, **{"onprem-ews": EWS_PUSH})
    # NXDOMAIN at once from a real DNS server: an answer, not a timeout that the fake clock could outrun.
    with running_dnsmasq("--address=/missing.corp.example.test/") as dns:
        data = yaml.safe_load(path.read_text())
        data["maintenance_windows"] = [{"name": "patch-tuesday", "cron": "0 22 * * tue", "duration": "4h"}]
        (tmp_path / "staff.txt").write_text("alice@corp.example.test\nbob@corp.example.test\n")
        data["populations"] = {
            "staff": {"file": {"path": str(tmp_path / "staff.txt")}, "sweep_interval": "4s"},
            "gone": {"file": {"path": str(tmp_path / "missing.txt")}},
        }
        for target in data["targets"]:
            target["population"] = {"onprem-ews": "staff", "online-ews": "gone"}.get(target["name"])
        data["targets"].append({"name": "unresolved", "kind": "autodiscover", "exchange": "onprem",
                                "url": "https://missing.corp.example.test/autodiscover/autodiscover.xml",
                                "dns": {"servers": [dns.server]}})  # fmt: skip
        path.write_text(yaml.safe_dump(data))
        exporter = await start(started, path, fake_clock)
        await fake_clock.advance_until(lambda: exporter.ready(), STEP, limit=15)
        await fake_clock.advance_until(
            lambda: exporter.store.latest.get(("online-ews", "token")) is not None
            and getattr(exporter.store.latest.get(("unresolved", "reachability")), "reason", None) == Reason.DNS
            and bool(exporter.sweeps.sweeps[("onprem-ews", "staff")].state.failing),
            STEP, limit=10,
        )  # fmt: skip
    text = exposition.render(BemsCollector(exporter.store, exporter.status).collect()).decode()
    exported = {re.sub(r"_(bucket|count|sum|total|created)$", "", name) for (name, _labels) in parse(text)}
    missing = {name for name in used if name not in exported and re.sub(r"_total$", "", name) not in exported}
    assert missing == set()


# --- the push check run by hand, on a fake clock -----------------------------------------------------------


@dataclass
class Harness:
    """The push check run by the test (not by a scheduler) with the exporter's real listener."""

    sim: Simulator
    config: Config
    resources: Resources

    def state(self, name: str) -> PushTarget:
        return self.resources.push.targets[name]

    async def check(self, name: str) -> CheckResult:
        return await execute(CHECKS["push"], self.config, self.config.targets_by_name()[name], self.resources)


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness(sim: Simulator, tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[HarnessFactory]:
    opened: list[tuple[Listener, Resources]] = []
    sockets = contextlib.ExitStack()

    async def make(**push: dict[str, Any]) -> Harness:
        sock = sockets.enter_context(bound_socket())
        config = load_config(push_config(sim, tmp_path, sock, interval="60s", **push))
        resources = Resources(fake_clock.monotonic)
        resources.push.configure(config)
        listener = Listener(resources.push)
        listener.take_socket(sock)
        await listener.apply(config.notifications)
        opened.append((listener, resources))
        return Harness(sim, config, resources)

    with sockets:
        yield make
        for listener, resources in opened:
            await listener.stop()
            await resources.close()


EWS_MAILBOX, GRAPH_MAILBOX = EWS_PUSH["mailbox"], GRAPH_PUSH["mailbox"]
# Times are on the fake clock: a minute between writes, two without delivery is a stall.
SLOW = {"write_interval": "60s", "stall_after": "120s"}
TARGET = {"ews": "onprem-ews", "graph": "online-graph"}
PUSH_OF = {"ews": EWS_PUSH | SLOW, "graph": GRAPH_PUSH | SLOW}
MAILBOX_OF = {"ews": EWS_MAILBOX, "graph": GRAPH_MAILBOX}


async def delivered(clock: FakeClock, state: PushTarget) -> None:
    """Until the write probe's notification came: a keep-alive's or a retry's time at most, on the fake clock."""
    await clock.advance_until(lambda: state.probe is not None and state.probe.delivered, STEP, limit=5)


async def measuring(harness: HarnessFactory, clock: FakeClock, protocol: str) -> tuple[Harness, PushTarget]:
    """A ``protocol`` push target on the slow timings whose first check passed and whose first probe came."""
    h = await harness(**{TARGET[protocol]: PUSH_OF[protocol]})
    state = h.state(TARGET[protocol])
    assert (await h.check(TARGET[protocol])).success
    await delivered(clock, state)
    return h, state


@pytest.mark.parametrize("protocol", ["ews", "graph"])
@pytest.mark.parametrize("taken", ["moved", "deleted_by_an_admin"])
async def test_a_probe_item_gone_before_its_delete_is_forgotten_and_delivery_still_measured(
    harness: HarnessFactory, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture, protocol: str, taken: str
) -> None:
    # Item 1 of issue 14: DeleteItem answering ErrorItemNotFound (EWS, HTTP 200) or Graph's 404 used to end
    # every later run with a pass and no step, for ever.
    h, state = await measuring(harness, fake_clock, protocol)
    name, mailbox = TARGET[protocol], MAILBOX_OF[protocol]
    first = state.probe.item_id  # type: ignore[union-attr]
    if taken == "moved":
        h.sim.move_item(mailbox, first, "deleteditems")  # a moved item gets a new id
    else:
        h.sim.delete_item(mailbox, first)
    caplog.set_level(logging.INFO, logger="exporter.checks.push")
    for _ in range(3):
        await fake_clock.advance(61)
        result = await h.check(name)
        assert result.success, result
        assert any(step.name.startswith("write probe item") for step in result.steps), result.steps
        await delivered(fake_clock, state)
    assert first not in state.to_delete
    gone = [r for r in caplog.records if "already gone" in r.getMessage()]
    assert len(gone) == 1 and gone[0].fields["item_id"] == first  # type: ignore[attr-defined]
    assert sum(state.delays.counts) == 4  # delivery measured on every run
    assert [item.id for item in h.sim.mailbox_items(mailbox) if item.folder == "inbox"] == [state.probe.item_id]  # type: ignore[union-attr]


async def test_a_delete_that_fails_is_retried_and_does_not_end_the_check(
    harness: HarnessFactory, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, state = await measuring(harness, fake_clock, "ews")
    first = state.probe.item_id  # type: ignore[union-attr]
    real_delete = push_check._ews_delete

    async def failing_delete(ctx: Any, target: Any, item_id: str) -> bool:
        raise ProbeFailure(Reason.SOAP_FAULT, "ErrorInternalServerError: the store is busy")

    monkeypatch.setattr(push_check, "_ews_delete", failing_delete)
    await fake_clock.advance(61)
    result = await h.check("onprem-ews")
    # Not a delivery failure: the check still judges delivery (a new probe is written and measured).
    assert result.success, result
    (deleting,) = [step for step in result.steps if step.name.startswith("delete")]
    assert not deleting.ok and "store is busy" in deleting.detail
    assert any(step.name.startswith("write probe item") for step in result.steps)
    assert state.to_delete == [first]
    await delivered(fake_clock, state)
    monkeypatch.setattr(push_check, "_ews_delete", real_delete)
    await fake_clock.advance(61)
    assert (await h.check("onprem-ews")).success
    assert first not in [item.id for item in h.sim.mailbox_items(EWS_MAILBOX)]


@pytest.mark.parametrize("write_probe", [False, True], ids=["keepalives", "write_probe"])
async def test_a_dead_listener_keeps_push_failing_until_delivery_returns(
    harness: HarnessFactory, fake_clock: FakeClock, write_probe: bool
) -> None:
    # Item 2 of issue 14: each re-subscription used to count as healthy until stall_after passed again,
    # so push flapped PASS, PASS, FAIL. Exchange's callbacks fail from the start (the listener unreachable).
    h = await harness(**{"onprem-ews": EWS_PUSH | SLOW | {"write_probe": write_probe}})
    state = h.state("onprem-ews")
    h.sim.set_push_fault("callback_blocked")
    verdicts = []
    for _ in range(9):
        result = await h.check("onprem-ews")
        verdicts.append(result.reason or "pass")
        await fake_clock.advance(60)
    first_failure = verdicts.index(Reason.PUSH_STALLED)
    assert verdicts[:first_failure] == ["pass"] * first_failure and first_failure <= 3, verdicts
    assert set(verdicts[first_failure:]) == {Reason.PUSH_STALLED}, verdicts  # no pass after the first failure
    assert len(h.sim.ews_subscriptions) >= 3  # it kept subscribing again

    h.sim.set_push_fault("none")
    await fake_clock.advance(121)
    assert (await h.check("onprem-ews")).reason == Reason.PUSH_STALLED  # stalled again: a new subscription
    if write_probe:
        await delivered(fake_clock, state)
    else:
        await fake_clock.advance_until(
            lambda: state.last_notification is not None, STEP, limit=10
        )  # its first keep-alive
    await fake_clock.advance(1)
    assert (await h.check("onprem-ews")).success


def forged_status(subscription_id: str, previous: str) -> bytes:
    """A StatusEvent as Exchange sends one (exchange-protocol-facts 5.2), made up by someone else."""
    return (
        '<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        '<soap:Body><m:SendNotification xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages>'
        '<m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        f"<m:Notification><t:SubscriptionId>{subscription_id}</t:SubscriptionId>"
        f"<t:PreviousWatermark>{previous}</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>"
        f"<t:StatusEvent><t:Watermark>{previous}</t:Watermark></t:StatusEvent></m:Notification>"
        "</m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap:Body></soap:Envelope>"
    ).encode()


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [("no_secret", "url_secret"), ("wrong_secret", "url_secret"), ("wrong_watermark", "watermark")],
)
async def test_forged_status_events_do_not_keep_a_dead_push_path_green(
    harness: HarnessFactory, fake_clock: FakeClock, forgery: str, reason: str
) -> None:
    # Item 5 of issue 15: with Exchange's callbacks blocked, one forged StatusEvent a check, naming the
    # subscription's id, kept push passing. The forger knows the id and the listener's public URL; for
    # wrong_watermark also the secret in the URL (leaked from a proxy's log, say), but not where the
    # subscription's watermark chain stands.
    h = await harness(**{"onprem-ews": EWS_PUSH | SLOW | {"write_probe": False}})
    state = h.state("onprem-ews")
    h.sim.set_push_fault("callback_blocked")
    notifications = h.config.notifications
    assert notifications is not None
    client = ssl.create_default_context(cafile=str(h.sim.ca_file))
    verdicts = []
    async with aiohttp.ClientSession() as session:
        for _ in range(6):
            result = await h.check("onprem-ews")
            verdicts.append(result.reason or "pass")
            current = state.current
            assert current is not None
            secret = {"no_secret": None, "wrong_secret": "x" * 43, "wrong_watermark": current.url_secret}[forgery]
            url = callback_url(notifications, h.config.targets_by_name()["onprem-ews"], secret=secret)
            stale = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="
            async with session.post(url, data=forged_status(current.id, stale), ssl=client) as response:
                assert response.status in (400, 403)
            await fake_clock.advance(60)
    assert Reason.PUSH_STALLED in verdicts and verdicts[-1] == Reason.PUSH_STALLED, verdicts
    assert not state.notifications and state.last_notification is None  # nothing forged was counted
    assert state.rejected[reason] == 6


async def test_a_graph_subscription_dropped_silently_is_replaced(
    harness: HarnessFactory, fake_clock: FakeClock
) -> None:
    # Item 3 of issue 14: Graph sends nothing when it loses a subscription; the overdue write probe is the
    # stall, and a Graph stall subscribes again (it used to keep the dead subscription for ever).
    h, state = await measuring(harness, fake_clock, "graph")
    old = state.current.id  # type: ignore[union-attr]
    h.sim.set_graph_push_fault("drop_subscriptions")
    await fake_clock.advance(61)
    assert (await h.check("online-graph")).success  # a new probe, awaited
    lost = state.probe.item_id  # type: ignore[union-attr]
    await fake_clock.advance(121)
    result = await h.check("online-graph")
    assert result.reason == Reason.PUSH_STALLED and "subscribed again" in result.message, result
    assert state.current is not None and state.current.id != old and h.sim.graph_subscriptions[state.current.id].alive
    await delivered(fake_clock, state)  # the probe written under the new subscription
    await fake_clock.advance(1)
    assert (await h.check("online-graph")).success
    assert lost not in [item.id for item in h.sim.mailbox_items(GRAPH_MAILBOX)]  # the lost probe's item deleted


@pytest.mark.parametrize("why", ["renewal_due", "reauthorization_asked"])
async def test_a_graph_subscription_gone_at_renewal_is_replaced(
    harness: HarnessFactory, fake_clock: FakeClock, why: str
) -> None:
    # Item 3 of issue 14: a 404 on renewal means the subscription is gone (expired or lost, without any
    # lifecycle notification); it used to be reported as mailbox_not_found on every run, for ever.
    h, state = await measuring(harness, fake_clock, "graph")
    old = state.current
    assert old is not None
    h.sim.set_graph_push_fault("drop_subscriptions")
    if why == "renewal_due":
        await fake_clock.advance(push_check.GRAPH_LIFETIME.total_seconds() / 2 + 60)
    else:
        old.reauthorize = True  # as a reauthorizationRequired lifecycle notification sets it
        await fake_clock.advance(61)
    result = await h.check("online-graph")
    assert result.success, result
    (renewal,) = [step for step in result.steps if step.name == "renew the Graph subscription"]
    assert renewal.ok and "gone" in renewal.detail
    assert state.current is not None and state.current.id != old.id
    assert h.sim.graph_subscriptions[state.current.id].alive
    await delivered(fake_clock, state)


async def test_graph_push_without_write_probe_shows_only_that_the_subscription_is_held(
    harness: HarnessFactory, fake_clock: FakeClock
) -> None:
    # Item 4 of issue 14: Graph sends no keep-alives, so without a write probe the check cannot claim delivery.
    h = await harness(**{"online-graph": PUSH_OF["graph"] | {"write_probe": False}})
    state = h.state("online-graph")
    result = await h.check("online-graph")
    assert result.success and "delivery is not verified" in result.steps[-1].detail, result
    await fake_clock.advance(61)
    result = await h.check("online-graph")
    assert result.success and result.steps[-1].detail == "held; delivery is not verified (write_probe: false)"
    old = state.current.id  # type: ignore[union-attr]
    h.sim.set_graph_push_fault("drop_subscriptions")
    await fake_clock.advance(61)
    result = await h.check("online-graph")
    assert result.success and "gone" in result.steps[0].detail, result
    assert state.current is not None and state.current.id != old and h.sim.graph_subscriptions[state.current.id].alive
    assert h.sim.mailbox_items(GRAPH_MAILBOX) == []  # nothing written


async def test_a_missed_lifecycle_event_makes_the_next_check_measure_at_once(
    harness: HarnessFactory, fake_clock: FakeClock
) -> None:
    # Item 8 of issue 14: "missed" means Graph dropped notifications: the client must resync, so the next
    # check writes a probe without waiting for write_interval.
    h, state = await measuring(harness, fake_clock, "graph")
    first = state.probe.item_id  # type: ignore[union-attr]
    await fake_clock.advance(5)
    assert not any(s.name.startswith("write probe") for s in (await h.check("online-graph")).steps)
    h.sim.send_lifecycle(state.current.id, "missed")  # type: ignore[union-attr]
    await fake_clock.advance_until(lambda: state.notifications["missed"] == 1, STEP, limit=10)
    await fake_clock.advance(5)
    result = await h.check("online-graph")
    assert any(step.name.startswith("write probe") for step in result.steps), result.steps
    assert state.probe is not None and state.probe.item_id != first


@pytest.mark.parametrize(
    ("target", "write_probe", "effective", "warned"),
    [
        ("online-graph", None, True, False),  # Graph's default: its only evidence of delivery
        ("online-graph", True, True, False),
        ("online-graph", False, False, True),  # allowed, but delivery is not verified: warned
        ("onprem-ews", None, False, False),  # EWS's keep-alives show delivery on their own
        ("onprem-ews", True, True, False),
    ],
    ids=["graph-default", "graph-on", "graph-off", "ews-default", "ews-on"],
)
async def test_write_probe_defaults_by_kind_and_a_graph_target_without_it_is_warned_about(
    sim: Simulator,
    tmp_path: Path,
    listener_socket: socket.socket,
    target: str,
    write_probe: bool | None,
    effective: bool,
    warned: bool,
) -> None:
    # Item 4 of issue 14.
    push = {"mailbox": MAILBOX_OF["graph" if "graph" in target else "ews"]}
    if write_probe is not None:
        push["write_probe"] = write_probe
    config = load_config(push_config(sim, tmp_path, listener_socket, **{target: push}))
    assert config.targets_by_name()[target].push_write_probe is effective
    expected = [f"graph push target {target} has write_probe: false: delivery is not verified"] if warned else []
    assert [warning.split(" (")[0] for warning in push_check.config_warnings(config)] == expected


# --- every reason the push and notification_url checks report -------------------------------------------
# push_stalled (silence, an overdue probe, no delivery since a stall) is pinned by the fake-clock tests above.

PUSH_FAILURES = [
    # (target, push mailbox, what breaks, reason, a fragment of the message or hint)
    ("onprem-ews", EWS_MAILBOX, lambda sim: sim.revoke_impersonation(EWS_MAILBOX), Reason.IMPERSONATION_DENIED,
     "ErrorImpersonateUserDenied"),
    ("onprem-ews", "nobody@corp.example.test", lambda sim: None, Reason.MAILBOX_NOT_FOUND, "ErrorNonExistentMailbox"),
    ("onprem-ews", EWS_MAILBOX, lambda sim: sim.set_ews_throttling("onprem-ews", "server_busy_fault"),
     Reason.THROTTLED, "ErrorServerBusy"),
    ("onprem-ews", EWS_MAILBOX, lambda sim: sim.set_account_fault("wrong_password"), Reason.UNAUTHORIZED, "401"),
    ("online-ews", GRAPH_MAILBOX, lambda sim: sim.set_ews_disabled(True), Reason.EWS_DISABLED, "403"),
    ("online-graph", GRAPH_MAILBOX, lambda sim: sim.deny_app_access(GRAPH_MAILBOX), Reason.FORBIDDEN,
     "ErrorAccessDenied"),
    ("online-graph", GRAPH_MAILBOX, lambda sim: sim.set_graph_mailbox_not_enabled(GRAPH_MAILBOX),
     Reason.MAILBOX_NOT_FOUND, "MailboxNotEnabledForRESTAPI"),
    ("online-graph", GRAPH_MAILBOX, lambda sim: sim.set_graph_throttled(True, 30), Reason.THROTTLED, "retry after"),
    ("online-graph", GRAPH_MAILBOX, lambda sim: sim.set_graph_push_fault("callback_blocked"), Reason.BAD_RESPONSE,
     "validation token echoed"),
    ("online-graph", GRAPH_MAILBOX, lambda sim: sim.configure_entra(secret_expired=True), Reason.TOKEN, "no token"),
    ("online-graph", GRAPH_MAILBOX, lambda sim: sim.configure_entra(roles_granted=False), Reason.UNAUTHORIZED,
     "NoPermissionsInAccessToken"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("target", "mailbox", "brk", "reason", "said"),
    PUSH_FAILURES,
    ids=[
        "ews-impersonation_denied", "ews-mailbox_not_found", "ews-throttled", "ews-unauthorized",
        "online-ews-ews_disabled", "graph-forbidden", "graph-mailbox_not_found", "graph-throttled",
        "graph-validation-bad_response", "graph-token", "graph-unauthorized",
    ],
)  # fmt: skip
async def test_push_reports_why_it_cannot_subscribe(
    harness: HarnessFactory, target: str, mailbox: str, brk: Callable[[Simulator], None], reason: Reason, said: str
) -> None:
    h = await harness(**{target: {"mailbox": mailbox}})
    brk(h.sim)
    result = await h.check(target)
    assert result.reason == reason and said in result.message + result.hint, result
    assert h.state(target).current is None  # nothing held


async def _bems_like(sim: Simulator, tmp_path: Path, status: int, content_type: str) -> tuple[str, Any]:
    """A stand-in for BEMS' notification URL on loopback that echoes the token with ``status`` and ``content_type``."""
    import ssl

    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=status, body=request.query.get("validationToken", ""), content_type=content_type)

    cert, key = sim.issue_certificate(["localhost"], ["127.0.0.1"])
    (tmp_path / "bems.pem").write_bytes(cert + key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "bems.pem")
    app = web.Application()
    app.router.add_post("/notificationClient", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = bound_socket()  # the site's server closes it
    await web.SockSite(runner, sock, ssl_context=context).start()
    return f"https://localhost:{port_of(sock)}/notificationClient", runner


@pytest.mark.parametrize(
    ("case", "reason", "said"),
    [
        ("echoed", None, ""),
        ("no_echo", Reason.BAD_RESPONSE, "not echoed"),
        ("wrong_echo", Reason.BAD_RESPONSE, "not echoed"),
        ("http_503", Reason.BAD_RESPONSE, "HTTP 503 instead of 200"),
        ("echo_as_html", Reason.BAD_RESPONSE, "text/html, not text/plain"),
        ("nothing_listens", Reason.REFUSED, ""),
    ],
    ids=["echoed", "no_echo", "wrong_echo", "http_503", "echo_as_html", "nothing_listens"],
)
async def test_notification_url_reasons(
    sim: Simulator, tmp_path: Path, listener_socket: socket.socket, case: str, reason: Reason | None, said: str
) -> None:
    config: Config = load_config(push_config(sim, tmp_path, listener_socket))
    target = config.targets_by_name()["bems-url"]
    assert target.exchange_label == ""
    runner = None
    refusing = socket.socket()  # bound, not listening: the kernel refuses a connection to its port
    refusing.bind(("127.0.0.1", 0))
    if case in ("no_echo", "wrong_echo"):
        sim.set_bems_fault(case)
    elif case in ("http_503", "echo_as_html"):
        url, runner = await _bems_like(sim, tmp_path, 503 if case == "http_503" else 200,
                                       "text/plain" if case == "http_503" else "text/html")  # fmt: skip
        target = target.model_copy(update={"url": url})
    elif case == "nothing_listens":
        target = target.model_copy(update={"url": f"https://127.0.0.1:{port_of(refusing)}/notificationClient"})
    try:
        result = await run(config, target, "notification_url")
    finally:
        refusing.close()
        if runner is not None:
            await runner.cleanup()
    assert result.reason == reason and said in result.message, result
    assert result.measurements[-1].value == (1.0 if reason is None else 0.0)
