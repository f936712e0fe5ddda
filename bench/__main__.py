"""``python -m bench [--quick] [--steps ...]``: run the benchmark, print the markdown, save it."""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .fixtures import running_simulator
from .processes import BenchError
from .report import Results, render
from .scheduled import measure_load, measure_metrics
from .tls_comparison import blackbox_binary, measure_exporter_check, measure_openssl_floor, running_blackbox

STEPS = ("load", "metrics", "tls")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.md"
METRICS_TARGETS = 600  # about 18 samples per target: just over 10,000 series
EXPORTER_CHECKS_MEASURED = ("tls", "reachability")  # reachability: the TCP part alone, for scale


@dataclass(frozen=True)
class Plan:
    name: str
    load_steps: tuple[tuple[int, int], ...]  # (targets, checks per minute)
    warmup_seconds: float
    window_seconds: float
    metrics_checks_per_minute: int  # background load while /metrics is timed; sets how long until ready
    metrics_scrapes: int
    probe_rounds: int  # CPU per check: alternating rounds of exporter checks and blackbox_exporter probes
    probes_per_round: int
    probe_concurrency: int
    openssl_seconds: int


DEFAULT_PLAN = Plan(
    name="default",
    load_steps=((100, 1_000), (1_000, 5_000), (1_000, 20_000)),
    warmup_seconds=5,
    window_seconds=24,  # a whole number of every step's interval (12 s, 24 s, 6 s)
    metrics_checks_per_minute=2_400,
    metrics_scrapes=100,
    probe_rounds=3,
    probes_per_round=2_000,
    probe_concurrency=8,
    openssl_seconds=5,
)
QUICK_PLAN = Plan(
    name="quick",
    load_steps=((100, 1_000), (1_000, 20_000)),
    warmup_seconds=3,
    window_seconds=12,
    metrics_checks_per_minute=7_200,
    metrics_scrapes=20,
    probe_rounds=1,
    probes_per_round=300,
    probe_concurrency=8,
    openssl_seconds=2,
)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(plan: Plan, steps: set[str], work_dir: Path) -> Results:
    results = Results(plan.name)
    with running_simulator(work_dir / "simulator") as simulator:
        if "load" in steps:
            for targets, checks_per_minute in plan.load_steps:
                progress(f"scheduled checks: {targets:,} targets at {checks_per_minute:,} checks/min")
                results.load.append(
                    measure_load(
                        simulator, work_dir, targets, checks_per_minute, plan.warmup_seconds, plan.window_seconds
                    )
                )
        if "metrics" in steps:
            progress(f"/metrics: {METRICS_TARGETS:,} targets, {plan.metrics_scrapes} scrapes")
            results.metrics = measure_metrics(
                simulator, work_dir, METRICS_TARGETS, plan.metrics_checks_per_minute, plan.metrics_scrapes
            )
        if "tls" in steps:
            binary = blackbox_binary(work_dir / "apt-get.log")
            if binary is None:
                results.blackbox_skipped_because = "prometheus-blackbox-exporter could not be installed"
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
            progress(f"TLS floor: openssl s_time for {plan.openssl_seconds} s")
            results.openssl = measure_openssl_floor(simulator, plan.openssl_seconds)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the exporter against the simulator on loopback; prints a markdown report.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument(
        "--steps", nargs="+", choices=STEPS, default=list(STEPS), help="which measurements to run (default: all)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"report file (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    try:
        with tempfile.TemporaryDirectory(prefix="bems-bench-") as work_dir:
            results = run(plan, set(args.steps), Path(work_dir))
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    report = render(results)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    progress(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
