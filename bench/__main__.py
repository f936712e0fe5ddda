"""``python -m bench [--quick] [--steps ...]``: run the benchmark, print the markdown, save it."""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from exporter.config import format_duration

from .audit_report import TARGETS, YEAR, measure_audit_report
from .check_costs import CASES, measure_check_cost
from .daemon_comparison import measure_daemons
from .fixtures import running_simulator
from .memory import MAILBOXES_PER_TARGET, measure_memory
from .processes import BenchError
from .report import Results, render
from .scheduled import measure_load, measure_metrics
from .tls_comparison import blackbox_binary, measure_exporter_check, measure_openssl_floor, running_blackbox

STEPS = ("daemon", "load", "knee", "metrics", "memory", "checks", "tls", "audit")
DEFAULT_STEPS = STEPS[:-1]  # the audit report's year takes about 7 minutes more: `--steps audit`
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.md"
EXPORTER_CHECKS_MEASURED = ("tls", "reachability")  # reachability: the TCP part alone, for scale


@dataclass(frozen=True)
class Plan:
    name: str
    daemon_targets: int  # the exporter as deployed beside blackbox_exporter: targets, each every daemon_interval
    daemon_interval: timedelta
    daemon_intervals_per_run: int
    daemon_runs: int
    load_steps: tuple[tuple[int, int], ...]  # (targets, checks per minute)
    knee_targets: int
    knee_rates: tuple[int, ...]  # checks per minute, tried upwards until the exporter falls behind
    warmup_seconds: float
    window_seconds: float  # each window; rounded up to a whole number of check intervals
    windows: int  # per rate: the median window is reported
    metrics_sizes: tuple[tuple[int, int], ...]  # (targets, scrapes): about 18 series per target
    metrics_interval: timedelta  # the checks' interval while /metrics is timed; sets how long until ready
    memory_targets: int  # each with 5 mailboxes and every check it gets
    memory_interval: timedelta
    check_cost_runs: int  # per round, per case of CPU and requests per check
    check_cost_rounds: int
    probe_rounds: int  # CPU per check: alternating rounds of exporter checks and blackbox_exporter probes
    probes_per_round: int
    probe_concurrency: int
    openssl_seconds: int


DEFAULT_PLAN = Plan(
    name="default",
    daemon_targets=100,
    daemon_interval=timedelta(seconds=2),
    daemon_intervals_per_run=10,
    daemon_runs=5,
    load_steps=((100, 1_000), (1_000, 5_000), (1_000, 20_000)),
    knee_targets=1_000,
    knee_rates=(40_000, 60_000, 80_000, 100_000, 120_000, 160_000),
    warmup_seconds=5,
    window_seconds=12,
    windows=3,
    metrics_sizes=((56, 100), (560, 100), (2_800, 30)),  # 1,000, 10,000 and 50,000 series
    metrics_interval=timedelta(seconds=30),
    memory_targets=1_000,
    memory_interval=timedelta(seconds=60),
    check_cost_runs=200,
    check_cost_rounds=3,
    probe_rounds=5,
    probes_per_round=2_000,
    probe_concurrency=8,
    openssl_seconds=5,
)
QUICK_PLAN = Plan(
    name="quick",
    daemon_targets=100,
    daemon_interval=timedelta(seconds=2),
    daemon_intervals_per_run=3,
    daemon_runs=2,
    load_steps=((100, 1_000), (1_000, 20_000)),
    knee_targets=1_000,
    knee_rates=(60_000,),
    warmup_seconds=3,
    window_seconds=12,
    windows=1,
    metrics_sizes=((560, 20),),
    metrics_interval=timedelta(seconds=10),
    memory_targets=100,
    memory_interval=timedelta(seconds=15),
    check_cost_runs=30,
    check_cost_rounds=1,
    probe_rounds=1,
    probes_per_round=300,
    probe_concurrency=8,
    openssl_seconds=2,
)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(plan: Plan, steps: set[str], work_dir: Path, results: Results) -> None:
    """Measure ``steps`` into ``results``, each step's figures as soon as it ends (BenchError: the rest not)."""
    with running_simulator(work_dir / "simulator") as simulator:
        binary = blackbox_binary(work_dir / "apt-get.log") if steps & {"daemon", "tls"} else None
        if binary is None and steps & {"daemon", "tls"}:
            results.blackbox_skipped_because = "prometheus-blackbox-exporter could not be installed"
        if "daemon" in steps and binary is not None:
            progress(
                f"daemons side by side: {plan.daemon_targets} targets every {format_duration(plan.daemon_interval)}, "
                f"{plan.daemon_runs} runs"
            )
            with running_blackbox(binary, simulator, work_dir) as blackbox:
                results.daemon = measure_daemons(
                    simulator,
                    blackbox,
                    work_dir,
                    plan.daemon_targets,
                    plan.daemon_interval,
                    plan.daemon_intervals_per_run,
                    plan.daemon_runs,
                )
        if "load" in steps:
            for targets, checks_per_minute in plan.load_steps:
                progress(f"scheduled checks: {targets:,} targets at {checks_per_minute:,} checks/min")
                results.load.append(
                    measure_load(
                        simulator,
                        work_dir,
                        targets,
                        checks_per_minute,
                        plan.warmup_seconds,
                        plan.window_seconds,
                        plan.windows,
                    )
                )
        if "knee" in steps:
            for checks_per_minute in plan.knee_rates:
                progress(f"knee: {plan.knee_targets:,} targets at {checks_per_minute:,} checks/min")
                measured = measure_load(
                    simulator,
                    work_dir,
                    plan.knee_targets,
                    checks_per_minute,
                    plan.warmup_seconds,
                    plan.window_seconds,
                    plan.windows,
                )
                results.knee.append(measured)
                if measured.falls_behind():
                    break
        if "metrics" in steps:
            for targets, scrapes in plan.metrics_sizes:
                progress(f"/metrics: {targets:,} targets, {scrapes} scrapes")
                results.metrics.append(measure_metrics(simulator, work_dir, targets, plan.metrics_interval, scrapes))
        if "memory" in steps:
            progress(f"memory: {plan.memory_targets:,} targets with {MAILBOXES_PER_TARGET} mailboxes each")
            results.memory = measure_memory(simulator, work_dir, plan.memory_targets, plan.memory_interval)
        if "checks" in steps:
            for case in CASES:
                progress(f"CPU and requests per check: {case.label}")
                results.check_costs.append(
                    measure_check_cost(simulator, work_dir, case, plan.check_cost_runs, plan.check_cost_rounds)
                )
        if "tls" in steps:
            with ExitStack() as stack:
                blackbox = stack.enter_context(running_blackbox(binary, simulator, work_dir)) if binary else None
                for round_number in range(1, plan.probe_rounds + 1):
                    progress(f"CPU per check, round {round_number}/{plan.probe_rounds}: {plan.probes_per_round:,} each")
                    for check in EXPORTER_CHECKS_MEASURED:
                        results.exporter_checks.setdefault(check, []).append(
                            measure_exporter_check(
                                simulator, work_dir, check, plan.probes_per_round, plan.probe_concurrency
                            )
                        )
                    if blackbox is not None:
                        results.blackbox.append(blackbox.measure(plan.probes_per_round, plan.probe_concurrency))
        if steps & {"daemon", "tls"}:
            progress(f"TLS floor: openssl s_time for {plan.openssl_seconds} s")
            results.openssl = measure_openssl_floor(simulator, plan.openssl_seconds)
    if "audit" in steps:  # the same in both plans: the size, 12 months of 50 targets
        progress(f"audit report: {len(YEAR)} months of {TARGETS} targets in VictoriaMetrics")
        results.audit = measure_audit_report(work_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the exporter against the simulator on loopback; prints a markdown report.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(DEFAULT_STEPS),
        help="which measurements to run (default: all but audit)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"report file (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    results = Results(plan.name)
    try:
        with tempfile.TemporaryDirectory(prefix="bems-bench-") as work_dir:
            run(plan, set(args.steps), Path(work_dir), results)
    except BenchError as err:  # a late step's failure keeps the earlier steps' figures (a default run is 15 min)
        print(f"bench: {err}", file=sys.stderr)
        results.stopped_because = str(err)
    report = render(results)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    progress(f"written to {args.output}")
    return 1 if results.stopped_because is not None else 0


if __name__ == "__main__":
    sys.exit(main())
