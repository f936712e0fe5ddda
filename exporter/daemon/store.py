"""The latest result of every (target, check), plus the counters derived from the results.

The store knows which (target, check) pairs the running configuration has: a result for a pair that
is no longer configured (a run that finished after a reload removed its target) is dropped, so
removed targets leave ``/metrics`` at once and never come back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..config import Config, Target
from ..results import CheckResult, Reason

Key = tuple[str, str]  # (target, check)


@dataclass
class ResultStore:
    targets: dict[str, Target] = field(default_factory=dict)
    checks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # target -> configured checks
    latest: dict[Key, CheckResult] = field(default_factory=dict)
    last_success: dict[Key, float] = field(default_factory=dict)
    runs: Counter[Key] = field(default_factory=Counter)
    failures: Counter[tuple[str, str, Reason]] = field(default_factory=Counter)
    overruns: Counter[Key] = field(default_factory=Counter)

    def configure(self, config: Config, checks: dict[str, tuple[str, ...]]) -> None:
        """Adopt a new configuration; forget everything about targets that left or changed."""
        kept = {name for name, target in config.targets_by_name().items() if self.targets.get(name) == target}
        self.targets = dict(config.targets_by_name())
        self.checks = dict(checks)
        live = {(t, c) for t, cs in checks.items() for c in cs}

        def keep(key: tuple[str, ...]) -> bool:
            return key[0] in kept and (key[0], key[1]) in live

        for table in (self.latest, self.last_success, self.runs, self.overruns):
            for key in [k for k in table if not keep(k)]:
                del table[key]
        for key in [k for k in self.failures if not keep(k)]:
            del self.failures[key]

    def is_live(self, target: str, check: str) -> bool:
        return check in self.checks.get(target, ())

    def record(self, result: CheckResult) -> bool:
        key = (result.target, result.check)
        if not self.is_live(*key):
            return False
        self.latest[key] = result
        self.runs[key] += 1
        if result.success:
            self.last_success[key] = result.started + result.duration
        else:
            self.failures[(result.target, result.check, result.reason or Reason.INTERNAL)] += 1
        return True

    def count_overrun(self, target: str, check: str) -> None:
        if self.is_live(target, check):
            self.overruns[(target, check)] += 1

    def first_round_done(self) -> bool:
        return all((t, c) in self.latest for t, cs in self.checks.items() for c in cs)
