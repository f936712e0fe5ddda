"""A clock the test moves: the event loop's clock and the wall clock jump forward together.

In the spirit of query-exporter's ``advance_time`` fixture (tests/conftest.py there), written for a test
whose exporter talks to a simulator on the same loop, and to worker threads (requests-ntlm, MSAL).

Why time-machine and an offset, not looptime: APScheduler 3 plans runs by the wall clock (``datetime.now``)
and then arms ``loop.call_later``; a job is run only when both clocks say it is due. looptime moves the loop's
clock alone, so the scheduler would wake, see a wall clock that has not moved, and sleep again.
time-machine moves ``time.time`` and ``datetime.now``; the loop's ``time()`` is moved here by the same amount.

Why the loop and wall clocks still tick in real time between jumps: a fixture's teardown or a worker thread
may wait on a timer nobody advances to (aiohttp's graceful shutdown, a socket timeout); a frozen loop clock
would make such a wait last forever.

The product reads ``time.monotonic`` where it measures back-off, suspension and push delivery; those parts take
a ``monotonic`` callable (``Resources(monotonic)``, ``Exporter(..., monotonic=...)``). Pass
``fake_clock.monotonic``: it moves by the jumps only, never by the real time the machine takes, so "1.3 s into
a 1.5 s back-off" stays true on a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import time_machine

QUIET_CYCLES = 3  # loop iterations with nothing ready before in-process I/O counts as settled


class FakeClock:
    def __init__(self, loop: asyncio.AbstractEventLoop, traveller: time_machine.Coordinates) -> None:
        self._loop = loop
        self._traveller = traveller
        # A loop a module's tests share may have been moved by an earlier fake clock: go on from there (its
        # timers are on that clock, and a clock must not go back); a fresh loop's clock is the real one.
        self._offset = loop.time() - time.monotonic()
        self._start = time.monotonic()
        self._frozen_at: float | None = None  # the real monotonic clock when freeze() stopped the ticking
        self._threads: set[asyncio.Future[Any]] = set()
        real_run_in_executor = loop.run_in_executor

        def run_in_executor(executor: Executor | None, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            future = real_run_in_executor(executor, fn, *args)
            self._threads.add(future)
            future.add_done_callback(self._threads.discard)
            return future

        loop.run_in_executor = run_in_executor  # type: ignore[method-assign]
        loop.time = self.loop_time  # type: ignore[method-assign]

    def monotonic(self) -> float:
        """The test's clock for the product: moves by the jumps only (starts at the real monotonic clock)."""
        return self._start + self._offset

    def loop_time(self) -> float:
        """The loop's clock: the real monotonic clock (until ``freeze``) plus every jump so far."""
        return (time.monotonic() if self._frozen_at is None else self._frozen_at) + self._offset

    def freeze(self) -> None:
        """Stop the real time between jumps, on the loop's and the wall clock: ``advance(60)`` then makes every
        reading exactly 60 s later. Only for a test with nothing on the loop that waits on a timer it does not
        advance to (no server, no worker thread, no graceful shutdown): such a wait would last for ever."""
        self._frozen_at = time.monotonic()
        # On a whole second (forward: a clock must not go back), so that "started + 60 s" minus "started" is 60
        # exactly, not 60 less a float's rounding: a test of a boundary must see the boundary.
        self._traveller.move_to(math.ceil(time.time()), tick=False)

    async def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` forward, stopping at every timer due on the way to run what it starts."""
        await self.settle()
        target = self.loop_time() + seconds
        while (due := self._next_timer()) is not None and due <= target:
            self._jump(due - self.loop_time())
            await self.settle()
        self._jump(target - self.loop_time())
        await self.settle()

    async def advance_until(self, condition: Callable[[], bool], step: float, limit: float) -> float:
        """Advance ``step`` seconds at a time until ``condition()`` holds; fail once ``limit`` seconds went by.

        Returns the seconds advanced. The limit is on the fake clock, so a loaded machine cannot break it:
        it says "within so many seconds of the product's time", as the polling loop it replaces meant to.
        """
        advanced = 0.0
        await self.settle()
        while not condition():
            assert advanced < limit, f"condition not met within {limit:g} s on the fake clock"
            await self.advance(step)
            advanced += step
        return advanced

    async def settle(self) -> None:
        """Run the loop until nothing is ready: no callback queued, no worker thread busy, no I/O arriving."""
        quiet = 0
        while quiet < QUIET_CYCLES:
            if self._threads:
                await asyncio.wait(set(self._threads))  # a thread may need the loop (the simulator) to finish
                quiet = 0
                continue
            await asyncio.sleep(0)  # one iteration: polls the sockets, runs what is ready and what is due
            busy = bool(self._loop._ready)  # type: ignore[attr-defined]
            due = self._next_timer()
            quiet = 0 if busy or (due is not None and due <= self.loop_time()) else quiet + 1

    def _next_timer(self) -> float | None:
        scheduled = [handle for handle in self._loop._scheduled if not handle.cancelled()]  # type: ignore[attr-defined]
        return min((handle.when() for handle in scheduled), default=None)

    def _jump(self, seconds: float) -> None:
        if seconds > 0:
            self._offset += seconds
            self._traveller.shift(seconds)


@contextlib.contextmanager
def travelling() -> Iterator[FakeClock]:
    """A fake clock on the running loop while the ``with`` lasts; the wall clock is the real one again after it.

    The loop keeps the moved clock (it is closed with it, or a later fake clock goes on from it).
    """
    with time_machine.travel(time.time(), tick=True) as traveller:
        yield FakeClock(asyncio.get_running_loop(), traveller)
