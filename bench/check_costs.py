"""CPU and requests on the wire per check, for the checks that sign in: each in a fresh process.

Every case runs ``bench.check_cpu`` against one of the simulator's own targets (changed as the case
says), with the simulator's traffic counters and token request counts read before and after. A check
run is what the scheduler does once per interval per target, on the same long-lived resources, so
the figures show what one more run costs the exporter and the customer's Exchange: after the first
run, no new connection, no new NTLM handshake and no new token until the token nears its expiry.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter.config import load_config

from .fixtures import RunningSimulator
from .processes import BenchError

CHECK_CPU_TIMEOUT_SECONDS = 600.0
REPOSITORY = Path(__file__).resolve().parent.parent  # where ``python -m bench.check_cpu`` finds the package
ONPREM_MAILBOX = "alice@corp.example.test"


@dataclass(frozen=True)
class CheckCase:
    label: str
    check: str
    target: str  # one of the simulator's targets
    endpoint: str  # the simulator endpoint whose traffic the check makes
    changes: dict[str, Any] = field(default_factory=dict)  # target keys replaced for the case


CASES = (
    CheckCase("auth: Basic (on-prem EWS)", "auth", "onprem-ews", "onprem-ews", {"auth": ["basic"]}),
    CheckCase("auth: NTLM (on-prem EWS)", "auth", "onprem-ews", "onprem-ews", {"auth": ["ntlm"]}),
    CheckCase("auth: OAuth, client secret (Exchange Online EWS)", "auth", "online-ews", "online-ews"),
    CheckCase(
        "impersonation: NTLM, 1 mailbox (on-prem)",
        "impersonation",
        "onprem-ews",
        "onprem-ews",
        {"auth": ["ntlm"], "mailboxes": [ONPREM_MAILBOX]},
    ),
    CheckCase("impersonation: OAuth, 1 mailbox (Exchange Online)", "impersonation", "online-ews", "online-ews"),
    CheckCase(
        "autodiscover: POX then SOAP, NTLM, 1 mailbox (on-prem)",
        "autodiscover",
        "onprem-autodiscover",
        "onprem-autodiscover",
        {"auth": ["ntlm"]},
    ),
    CheckCase(
        "autodiscover: JSON, 1 mailbox (Exchange Online)", "autodiscover", "online-autodiscover", "online-autodiscover"
    ),
    CheckCase("graph: 1 mailbox", "graph", "online-graph", "graph"),
)


@dataclass(frozen=True)
class CheckCost:
    label: str
    runs: int  # measured runs per round
    warmup_runs: int
    rounds: int
    failures: int  # over every round
    cpu_ms_per_check_by_round: tuple[float, ...]
    wall_seconds: float  # over every round
    requests: int  # at the endpoint, warm-up included
    connections: int
    ntlm_handshakes: int
    token_requests: int  # at Entra ID, any client and scope

    @property
    def cpu_ms_per_check(self) -> float:
        """The median round's."""
        return statistics.median(self.cpu_ms_per_check_by_round)

    @property
    def wall_ms_per_check(self) -> float:
        return 1000 * self.wall_seconds / (self.runs * self.rounds)

    @property
    def all_runs(self) -> int:
        return self.runs * self.rounds + self.warmup_runs

    @property
    def requests_per_check(self) -> float:
        return self.requests / self.all_runs


def run_check_cpu(
    config_file: Path, target: str, check: str, runs: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """``bench.check_cpu`` in a fresh interpreter; its JSON figures."""
    argv = [sys.executable, "-m", "bench.check_cpu", "--config", str(config_file), "--check", check]
    argv += ["--target", target, "--runs", str(runs), "--concurrency", str(concurrency), "--rounds", str(rounds)]
    done = subprocess.run(
        argv, cwd=REPOSITORY, capture_output=True, text=True, timeout=CHECK_CPU_TIMEOUT_SECONDS, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"bench.check_cpu failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _case_config(simulator: RunningSimulator, case: CheckCase, path: Path) -> Path:
    config = json.loads(json.dumps(simulator.config))  # a deep copy
    config["defaults"]["interval"] = "1m"
    for target in config["targets"]:
        if target["name"] == case.target:
            target.update(case.changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    load_config(path)  # a file the exporter would reject fails here, with the exporter's message
    return path


def _wire(simulator: RunningSimulator, endpoint: str) -> tuple[dict[str, int], int]:
    traffic = simulator.admin("GET", "/traffic").get(endpoint, {"requests": 0, "connections": 0, "ntlm_handshakes": 0})
    tokens = sum(entry["count"] for entry in simulator.admin("GET", "/auth")["entra"]["token_requests"])
    return traffic, tokens


def measure_check_cost(
    simulator: RunningSimulator, work_dir: Path, case: CheckCase, runs: int, rounds: int
) -> CheckCost:
    """One case: rounds of ``runs`` checks one after another (as the scheduler runs one target's check)."""
    config_file = _case_config(simulator, case, work_dir / f"check-{case.check}-{case.target}.yml")
    traffic_before, tokens_before = _wire(simulator, case.endpoint)
    figures = run_check_cpu(config_file, case.target, case.check, runs, concurrency=1, rounds=rounds)
    traffic_after, tokens_after = _wire(simulator, case.endpoint)
    measured = figures["rounds"]
    return CheckCost(
        label=case.label,
        runs=int(figures["runs"]),
        warmup_runs=int(figures["warmup_runs"]),
        rounds=len(measured),
        failures=sum(int(r["failures"]) for r in measured),
        cpu_ms_per_check_by_round=tuple(1000 * r["cpu_seconds"] / runs for r in measured),
        wall_seconds=sum(r["wall_seconds"] for r in measured),
        requests=traffic_after["requests"] - traffic_before["requests"],
        connections=traffic_after["connections"] - traffic_before["connections"],
        ntlm_handshakes=traffic_after["ntlm_handshakes"] - traffic_before["ntlm_handshakes"],
        token_requests=tokens_after - tokens_before,
    )
