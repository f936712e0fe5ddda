"""The fake clock itself: both clocks jump together, due timers run on the way, later ones wait."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
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


async def test_advance_until_steps_until_the_condition_holds_and_fails_past_the_limit(fake_clock: FakeClock) -> None:
    woke: list[float] = []

    async def sleeper() -> None:
        await asyncio.sleep(2.5)
        woke.append(fake_clock.monotonic())

    task = asyncio.create_task(sleeper())
    start = fake_clock.monotonic()
    # Three steps (two on a machine so slow that half a real second went by): woken at 2.5 s, not at 3.
    assert await fake_clock.advance_until(lambda: bool(woke), step=1, limit=10) in (2, 3)
    assert 0 < woke[0] - start <= 2.5  # stopped at the timer on the way (less the real time it took), not at 3
    await task
    try:
        await fake_clock.advance_until(lambda: False, step=1, limit=4)
    except AssertionError as error:
        assert "within 4 s on the fake clock" in str(error)
    else:
        raise AssertionError("advance_until did not fail past its limit")
    assert fake_clock.monotonic() - start <= 3 + 4  # the steps' jumps: never more than asked for


async def test_a_frozen_clock_moves_by_the_jumps_exactly(fake_clock: FakeClock) -> None:
    fake_clock.freeze()
    loop = asyncio.get_running_loop()
    wall, mono, product = time.time(), loop.time(), fake_clock.monotonic()
    time.sleep(0.01)  # real time: nothing moves
    assert (time.time(), loop.time(), fake_clock.monotonic()) == (wall, mono, product)
    await fake_clock.advance(59.9)
    moved = [time.time() - wall, loop.time() - mono, fake_clock.monotonic() - product]
    assert moved == pytest.approx([59.9] * 3, abs=1e-6)  # exact, but for the floats' rounding
