"""The fake clock itself: both clocks jump together, due timers run on the way, later ones wait."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from fake_clock import FakeClock


async def test_advance_moves_loop_and_wall_clocks_together(fake_clock: FakeClock) -> None:
    loop = asyncio.get_running_loop()
    wall, mono, now, product = time.time(), loop.time(), datetime.now(UTC), fake_clock.monotonic()
    await fake_clock.advance(3600)
    assert loop.time() - mono >= 3600
    assert time.time() - wall >= 3600
    assert (datetime.now(UTC) - now).total_seconds() >= 3600
    assert 0 < fake_clock.monotonic() - product <= 3600  # the jumps only: never the real time the steps took


async def test_timers_run_in_order_up_to_the_target_and_no_further(fake_clock: FakeClock) -> None:
    start = asyncio.get_running_loop().time()
    fired: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        fired.append(name)

    tasks = [asyncio.create_task(sleeper(name, s)) for name, s in (("late", 90.0), ("first", 10.0), ("second", 20.0))]
    await fake_clock.advance(60)
    assert fired == ["first", "second"]
    await fake_clock.advance(60)
    assert fired == ["first", "second", "late"]
    await asyncio.gather(*tasks)
    assert asyncio.get_running_loop().time() - start >= 120


async def test_a_timeout_waits_for_a_worker_thread_to_finish(fake_clock: FakeClock) -> None:
    """A thread's work takes no fake time: a 5 s timeout does not fire while a 0.1 s thread is busy."""
    work = asyncio.create_task(asyncio.wait_for(asyncio.to_thread(time.sleep, 0.1), timeout=5))
    await fake_clock.advance(60)
    assert work.done() and work.exception() is None
