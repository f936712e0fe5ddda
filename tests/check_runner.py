"""Running one check the way the scheduler does, with resources of its own."""

from __future__ import annotations

from exporter.checks import CHECKS
from exporter.checks.resources import Resources
from exporter.config import Config, Target
from exporter.daemon.runner import execute
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
