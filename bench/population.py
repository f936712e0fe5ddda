"""``python -m bench.population``: a population of 50,000 mailboxes swept against the simulator.

The simulator generates the users (``POST /api/v1/mailboxes/population``: 1 in 50 outside the impersonation
scope, 1 in 100 moved to Exchange Online); the exporter reads them from a file and sweeps them through the
on-premises EWS target with NTLM, at a budget that lets the sweep finish within its interval. First a small
population (the baseline), then the large one, each in a fresh exporter process. Figures:

- requests per mailbox at the simulator's EWS and Autodiscover endpoints (its traffic counters), with the
  connections and NTLM handshakes they took: one request a mailbox on a kept-alive connection is the goal;
- the exporter's CPU per mailbox (``/proc/PID/stat``, over the sweep only);
- its RSS per 10,000 mailboxes (the difference between the two populations);
- ``/metrics``: its size with each population (the same: no series per mailbox).

It asserts nothing; it prints markdown for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .fixtures import RunningSimulator, running_exporter, running_simulator
from .processes import BenchError
from .scrape import get, sample_count

SCOPED_OUT_EVERY, MOVED_EVERY = 50, 100
ENDPOINTS = ("onprem-ews", "onprem-autodiscover")
COMPLETE = "bems_population_sweep_last_complete_timestamp_seconds"


@dataclass(frozen=True)
class SweepMeasurement:
    mailboxes: int
    sweep_interval_seconds: int
    budget_per_minute: int
    sweep_seconds: float
    requests: dict[str, int]  # per endpoint
    connections: int
    ntlm_handshakes: int
    cpu_seconds: float
    rss_bytes: int
    metrics_bytes: int
    metrics_samples: int
    failing: int

    @property
    def requests_per_mailbox(self) -> float:
        return sum(self.requests.values()) / self.mailboxes

    @property
    def cpu_ms_per_mailbox(self) -> float:
        return 1000 * self.cpu_seconds / self.mailboxes


def _traffic(simulator: RunningSimulator) -> dict[str, dict[str, int]]:
    traffic = simulator.admin("GET", "/traffic")
    return {name: traffic.get(name, {"requests": 0, "connections": 0, "ntlm_handshakes": 0}) for name in ENDPOINTS}


def _config(simulator: RunningSimulator, work_dir: Path, users: Path, interval: int, budget: int) -> Path:
    config = json.loads(json.dumps(simulator.config))  # a deep copy
    config["defaults"]["interval"] = "1h"  # the scheduled checks stay out of the way of the sweep's figures
    config["targets"] = [t for t in config["targets"] if t["name"] in ENDPOINTS]
    for target in config["targets"]:
        target["auth"] = ["ntlm"]
        if target["name"] == "onprem-ews":
            target["population"] = "bench"
    config["populations"] = {"bench": {"file": {"path": str(users)}, "sweep_interval": f"{interval}s"}}
    config["limits"] = {"per_credential_requests_per_minute": budget}
    path = work_dir / f"population-{users.stem}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _value(metrics: str, name: str) -> float:
    return max((float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{")),
               default=0.0)  # fmt: skip


def measure_sweep(
    simulator: RunningSimulator, work_dir: Path, first: int, mailboxes: int, interval: int, budget: int
) -> SweepMeasurement:
    """Sweep ``mailboxes`` generated users (numbered from ``first``) once, in a fresh exporter."""
    users = work_dir / f"users-{mailboxes}.txt"
    users.write_text("".join(f"user{n:06d}@corp.example.test\n" for n in range(first, first + mailboxes)))
    config_file = _config(simulator, work_dir, users, interval, budget)
    before = _traffic(simulator)
    with running_exporter(config_file) as exporter:
        cpu_start, started = exporter.process.cpu_seconds(), time.monotonic()
        metrics = ""

        def complete() -> bool:
            nonlocal metrics
            status, body = get(exporter.base_url, "/metrics")
            metrics = body.decode() if status == 200 else ""
            return _value(metrics, COMPLETE) > 0

        exporter.process.wait_until(complete, interval * 2 + 60, "the sweep complete")
        sweep_seconds = time.monotonic() - started
        cpu = exporter.process.cpu_seconds() - cpu_start
        rss, _ = exporter.process.memory_bytes()
        failing = int(sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("bems_population_failing_mailboxes{")))  # fmt: skip
    after = _traffic(simulator)
    return SweepMeasurement(
        mailboxes=mailboxes, sweep_interval_seconds=interval, budget_per_minute=budget, sweep_seconds=sweep_seconds,
        requests={name: after[name]["requests"] - before[name]["requests"] for name in ENDPOINTS},
        connections=sum(after[name]["connections"] - before[name]["connections"] for name in ENDPOINTS),
        ntlm_handshakes=sum(after[name]["ntlm_handshakes"] - before[name]["ntlm_handshakes"] for name in ENDPOINTS),
        cpu_seconds=cpu, rss_bytes=rss, metrics_bytes=len(metrics.encode()), metrics_samples=sample_count(metrics),
        failing=failing,
    )  # fmt: skip


def render(small: SweepMeasurement, large: SweepMeasurement) -> str:
    rss_per_10k = (large.rss_bytes - small.rss_bytes) / ((large.mailboxes - small.mailboxes) / 10_000)
    rows = [
        "| population | sweep_interval | budget /min | sweep took | requests /mailbox (EWS + Autodiscover) "
        "| connections | NTLM handshakes | CPU /mailbox | exporter RSS | /metrics | failing |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in (small, large):
        rows.append(
            f"| {m.mailboxes:,} | {m.sweep_interval_seconds} s | {m.budget_per_minute:,} | {m.sweep_seconds:.0f} s "
            f"| {m.requests_per_mailbox:.3f} ({m.requests['onprem-ews']:,} + {m.requests['onprem-autodiscover']:,}) "
            f"| {m.connections} | {m.ntlm_handshakes} | {m.cpu_ms_per_mailbox:.2f} ms | {m.rss_bytes / 2**20:.0f} MiB "
            f"| {m.metrics_bytes:,} bytes, {m.metrics_samples} samples | {m.failing:,} |"
        )
    rows.append("")
    rows.append(f"RSS per 10,000 mailboxes: {rss_per_10k / 2**20:.1f} MiB.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.population", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mailboxes", type=int, default=50_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--interval", type=int, default=600, help="the large sweep's sweep_interval, seconds")
    args = parser.parse_args(argv)
    # Enough for one request a mailbox and Autodiscover for the moved ones, with a tenth to spare.
    budget = int((args.mailboxes * (1 + 1 / MOVED_EVERY)) / (args.interval / 60) * 1.1) + 1
    try:
        with tempfile.TemporaryDirectory(prefix="bems-bench-population-") as work:
            work_dir = Path(work)
            with running_simulator(work_dir / "simulator") as simulator:
                total = args.baseline + args.mailboxes
                generated = {"count": total, "scoped_out_every": SCOPED_OUT_EVERY, "moved_every": MOVED_EVERY}
                simulator.admin("POST", "/mailboxes/population", generated)
                print(f"bench: baseline sweep of {args.baseline:,}", file=sys.stderr, flush=True)
                small = measure_sweep(simulator, work_dir, 1, args.baseline, 60, budget)
                print(f"bench: sweep of {args.mailboxes:,} in {args.interval} s", file=sys.stderr, flush=True)
                large = measure_sweep(simulator, work_dir, args.baseline + 1, args.mailboxes, args.interval, budget)
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    print(render(small, large))
    return 0


if __name__ == "__main__":
    sys.exit(main())
