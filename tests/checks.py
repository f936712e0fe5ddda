"""Running one check the way the scheduler does, with resources of its own."""

from __future__ import annotations

from exporter.config import Config, Target
from exporter.probes import CHECKS
from exporter.resources import Resources
from exporter.results import CheckResult
from exporter.runner import execute


async def run(config: Config, target: Target, check: str) -> CheckResult:
    resources = Resources()
    try:
        return await execute(CHECKS[check], config, target, resources)
    finally:
        await resources.close()
