"""The CPU of one exporter check, measured inside a fresh process.

``python -m bench.check_cpu --config FILE --check tls --runs M --concurrency C`` runs
``exporter.runner.execute(CHECKS[check], config, target)`` M times against the configuration's first
target, at most C at a time, and prints one JSON line: runs, failures, cpu_seconds (this process's
``time.process_time``, every thread) and wall_seconds. A warm-up round of C checks before the
measurement creates the TLS context and parses the certificates once, as a long-running exporter has.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from itertools import repeat

from exporter.config import Config, load_config
from exporter.probes import CHECKS, Check
from exporter.resources import Resources
from exporter.runner import execute


async def _run_checks(check: Check, config: Config, resources: Resources, runs: int, concurrency: int) -> int:
    """Run ``check`` on the first target ``runs`` times on ``concurrency`` workers; return how many failed."""
    target = config.targets[0]
    pending: Iterator[None] = repeat(None, runs)
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for _ in pending:
            result = await execute(check, config, target, resources)
            failures += not result.success

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


async def _measure(check: Check, config: Config, runs: int, concurrency: int) -> dict[str, float]:
    resources = Resources()
    try:
        await _run_checks(check, config, resources, concurrency, concurrency)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        failures = await _run_checks(check, config, resources, runs, concurrency)
        cpu_seconds, wall_seconds = time.process_time() - cpu_before, time.perf_counter() - wall_before
    finally:
        await resources.close()
    return {"runs": runs, "failures": failures, "cpu_seconds": cpu_seconds, "wall_seconds": wall_seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.check_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="exporter configuration; its first target is checked")
    parser.add_argument("--check", choices=sorted(CHECKS), required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    figures = asyncio.run(_measure(CHECKS[args.check], load_config(args.config), args.runs, args.concurrency))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
