"""Back-off that Exchange or Graph asked for, per account and where it applies (signin decides where)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Backoff:
    """When each credential may send again to a scope (a host, or a mailbox on a host), as Exchange or Graph asked."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic  # a test's fake clock moves it
        self._until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def remaining(self, credential: str, scope: str) -> float:
        with self._lock:
            return max(0.0, self._until.get((credential, scope), 0.0) - self._monotonic())

    def hold(self, credential: str, scope: str, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            until = self._monotonic() + seconds
            self._until[(credential, scope)] = max(until, self._until.get((credential, scope), 0.0))
