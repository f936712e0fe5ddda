"""Running one check the way the scheduler does, with resources of its own."""

from __future__ import annotations

from exporter.checks import CHECKS
from exporter.checks.resources import Resources
from exporter.config import Config, Target
from exporter.daemon.runner import Limiter, execute, execute_round
from exporter.results import CheckResult


async def run(config: Config, target: Target, check: str) -> CheckResult:
    resources = Resources()
    try:
        return await execute(CHECKS[check], config, target, resources)
    finally:
        await resources.close()


def configured_target(config: Config, name: str, **changes: object) -> Target:
    """The configured target ``name``, with ``changes`` applied."""
    return config.targets_by_name()[name].model_copy(update=changes)


async def run_round(config: Config, target: Target, checks: tuple[str, ...]) -> list[CheckResult]:
    """Run ``checks`` on ``target`` as the scheduler runs a round: one after another over one connection."""
    resources, results = Resources(), []
    try:
        await execute_round(Limiter(config), [CHECKS[c] for c in checks], config, target, resources, results.append)
    finally:
        await resources.close()
    return results
