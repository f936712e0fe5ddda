"""What per-mailbox checks share: one timed step per unit of work, its own timeout, one verdict for all.

A revoked role fails every mailbox the same way; the check then reports one reason (the first
failure's) and a message that counts them, while the per-mailbox metric says which ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..config import Config, Target
from ..metrics import MetricSpec
from ..results import ProbeFailure, Reason
from .base import ProbeContext


def per_mailbox(_config: Config, target: Target) -> int:
    return max(1, len(target.mailboxes))


@dataclass(frozen=True)
class Unit:
    """One request of a per-mailbox check: its step name, its metric labels, and what it does."""

    step: str
    labels: dict[str, str]
    attempt: Callable[[], Awaitable[str]]


async def each(ctx: ProbeContext, units: Sequence[Unit], metric: MetricSpec) -> None:
    """Run every unit under the per-request timeout; record ``metric`` 1/0 per unit; raise the verdict."""
    failures: list[tuple[Unit, ProbeFailure]] = []
    for unit in units:
        try:
            async with ctx.rec.step(unit.step) as detail:
                try:
                    async with asyncio.timeout(ctx.timeout):
                        detail.append(await unit.attempt())
                except TimeoutError:
                    raise ProbeFailure(Reason.TIMEOUT, f"no answer within {ctx.timeout:g}s") from None
            ctx.rec.measure(metric, 1.0, **unit.labels)
        except ProbeFailure as failure:
            failures.append((unit, failure))
            ctx.rec.measure(metric, 0.0, **unit.labels)
    if failures:
        unit, first = failures[0]
        count = f"{len(failures)} of {len(units)} failed"
        raise ProbeFailure(first.reason, f"{count}; {unit.step}: {first.message}", first.hint)
