"""Memory at scale with mailboxes: 1,000 targets with 5 mailboxes each, every check they get.

The targets cycle through the simulator's own five (on-prem EWS and Autodiscover with the BEMSAdmin
account, Exchange Online EWS and Graph with the Entra app, Exchange Online Autodiscover), each with
five mailboxes of its side that the simulator knows. So every per-mailbox check, every kept-alive
NTLM session and every result is there, as in a large hybrid deployment. The exporter's RSS is read
once the first round is done and again after another interval; the peak is VmHWM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from itertools import cycle, islice
from pathlib import Path

import yaml

from exporter.checks import checks_for
from exporter.config import format_duration, load_config

from .fixtures import RunningSimulator, running_exporter
from .scrape import get, sample_count

MAILBOXES_PER_TARGET = 5
MAILBOX_DOMAINS = {"onprem": "corp.example.test", "online": "contoso.test"}
READY_TIMEOUT_MARGIN_SECONDS = 60.0


@dataclass(frozen=True)
class MemoryMeasurement:
    targets: int
    mailboxes_per_target: int
    interval: timedelta
    jobs: int  # scheduled (target, check) jobs
    samples: int
    body_bytes: int
    failed_checks: int  # results failing at the second reading (the simulator must answer them all)
    rss_after_first_round: int
    rss: int
    peak_rss: int


def _mailboxes(exchange: str) -> list[str]:
    return [f"bench{index}@{MAILBOX_DOMAINS[exchange]}" for index in range(1, MAILBOXES_PER_TARGET + 1)]


def write_mailbox_config(path: Path, simulator: RunningSimulator, targets: int, interval: timedelta) -> Path:
    config = json.loads(json.dumps(simulator.config))  # a deep copy
    config["defaults"]["interval"] = format_duration(interval)
    templates = [target for target in config["targets"] if "exchange" in target]  # not BEMS's notification URL
    config["targets"] = [
        {**template, "name": f"t{index:05d}-{template['name']}", "mailboxes": _mailboxes(template["exchange"])}
        for index, template in enumerate(islice(cycle(templates), targets))
    ]
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _failing(metrics_text: str) -> int:
    return sum(
        1
        for line in metrics_text.splitlines()
        if line.startswith("bems_probe_success{") and line.rsplit(" ", 1)[1] in ("0", "0.0")
    )


def measure_memory(simulator: RunningSimulator, work_dir: Path, targets: int, interval: timedelta) -> MemoryMeasurement:
    for exchange in MAILBOX_DOMAINS:
        for mailbox in _mailboxes(exchange):
            simulator.admin("PUT", f"/mailboxes/{mailbox}", {"exchange": exchange})
    config_file = write_mailbox_config(work_dir / f"memory-{targets}.yml", simulator, targets, interval)
    config = load_config(config_file)
    jobs = sum(len(checks_for(config, target)) for target in config.targets)
    with running_exporter(config_file) as exporter:
        exporter.process.wait_until(
            lambda: get(exporter.base_url, "/-/ready")[0] == 200,
            interval.total_seconds() + READY_TIMEOUT_MARGIN_SECONDS,
            "/-/ready (first round of checks done)",
        )
        rss_after_first_round, _ = exporter.process.memory_bytes()
        exporter.process.sleep(interval.total_seconds())
        rss, peak_rss = exporter.process.memory_bytes()
        status, body = get(exporter.base_url, "/metrics")
    text = body.decode()
    return MemoryMeasurement(
        targets=targets,
        mailboxes_per_target=MAILBOXES_PER_TARGET,
        interval=interval,
        jobs=jobs,
        samples=sample_count(text),
        body_bytes=len(body),
        failed_checks=_failing(text) if status == 200 else -1,
        rss_after_first_round=rss_after_first_round,
        rss=rss,
        peak_rss=peak_rss,
    )
