"""Back-off that Exchange or Graph asked for, per account and host."""

from __future__ import annotations

import threading
import time


class Backoff:
    """When each (credential, host) may be sent to again, as Exchange or Graph asked."""

    def __init__(self) -> None:
        self._until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def remaining(self, credential: str, host: str) -> float:
        with self._lock:
            return max(0.0, self._until.get((credential, host), 0.0) - time.monotonic())

    def hold(self, credential: str, host: str, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            until = time.monotonic() + seconds
            self._until[(credential, host)] = max(until, self._until.get((credential, host), 0.0))
