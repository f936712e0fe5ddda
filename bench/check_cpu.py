"""The CPU of one exporter check, measured inside a fresh process.

``python -m bench.check_cpu --config FILE --check tls --runs M --concurrency C [--rounds R] [--target NAME]``
runs ``exporter.daemon.runner.execute(CHECKS[check], config, target)`` M times in each of R rounds against the
named target (by default the configuration's first), at most C at a time, and prints one JSON line:
runs and warmup_runs, and per round its failures, cpu_seconds (this process's ``time.process_time``,
every thread) and wall_seconds. A warm-up of C checks before the rounds creates the TLS context,
parses the certificates, signs in and fetches tokens once, as a long-running exporter has.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from itertools import repeat
from typing import Any

from exporter.checks import CHECKS, Check
from exporter.checks.resources import Resources
from exporter.config import Config, Target, load_config
from exporter.daemon.runner import execute


async def _run_checks(
    check: Check, config: Config, target: Target, resources: Resources, runs: int, concurrency: int
) -> int:
    """Run ``check`` on ``target`` ``runs`` times on ``concurrency`` workers; return how many failed."""
    pending: Iterator[None] = repeat(None, runs)
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for _ in pending:
            result = await execute(check, config, target, resources)
            failures += not result.success

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


async def _measure(
    check: Check, config: Config, target: Target, runs: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    resources = Resources()
    measured = []
    try:
        await _run_checks(check, config, target, resources, concurrency, concurrency)
        for _ in range(rounds):
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            failures = await _run_checks(check, config, target, resources, runs, concurrency)
            cpu_seconds, wall_seconds = time.process_time() - cpu_before, time.perf_counter() - wall_before
            measured.append({"failures": failures, "cpu_seconds": cpu_seconds, "wall_seconds": wall_seconds})
    finally:
        await resources.close()
    return {"runs": runs, "warmup_runs": concurrency, "rounds": measured}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.check_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="exporter configuration; its first target is checked")
    parser.add_argument("--check", choices=sorted(CHECKS), required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--target", help="the target to check (default: the configuration's first)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    target = config.targets_by_name()[args.target] if args.target else config.targets[0]
    figures = asyncio.run(_measure(CHECKS[args.check], config, target, args.runs, args.concurrency, args.rounds))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
