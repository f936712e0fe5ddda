"""The ``probe`` subcommand's step-by-step report, for an administrator at a terminal."""

from __future__ import annotations

from collections.abc import Iterable

from .config import Target
from .daemon.scenario import Verdict
from .logs import redact
from .results import CheckResult, Step

PASS, FAIL = "✓", "✗"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _step_lines(step: Step) -> Iterable[str]:
    mark = PASS if step.ok else FAIL
    line = f"    {mark} {step.name} ({_ms(step.seconds)})"
    if step.detail:
        line += f": {step.detail}"
    yield line
    if step.hint:
        yield f"      hint: {step.hint}"


def render(target: Target, results: Iterable[CheckResult]) -> str:
    results = list(results)
    lines = [f"{target.name} ({target.kind.value}, exchange={target.exchange_label}) {target.url}"]
    for result in results:
        verdict = PASS if result.success else FAIL
        status = "ok" if result.success else f"FAILED, reason={result.reason.value if result.reason else '?'}"
        lines.append(f"  {verdict} {result.check}: {status} in {_ms(result.duration)}")
        for step in result.steps:
            lines.extend(_step_lines(step))
        failed_step_said_it = any(not s.ok and s.detail == result.message for s in result.steps)
        if not result.success and not failed_step_said_it:
            lines.append(f"    {FAIL} {result.message}")
            if result.hint:
                lines.append(f"      hint: {result.hint}")
    failed = sum(1 for r in results if not r.success)
    lines.append(f"{len(results) - failed} of {len(results)} checks passed" if results else "no checks apply")
    return redact("\n".join(lines)) + "\n"


def render_verdict(scenario: str, verdicts: Iterable[Verdict]) -> str:
    verdicts = list(verdicts)
    ready = all(v.met for v in verdicts)
    lines = [f"scenario {scenario}: {'ready' if ready else 'NOT READY'}"]
    for v in verdicts:
        lines.append(
            f"  {PASS if v.met else FAIL} {v.exchange.value}: {v.requirement}" + ("" if v.met else f" ({v.reason})")
        )
        if not v.met:
            if v.detail:
                lines.append(f"      {v.detail}")
            lines.append(f"      hint: {v.hint}")
    return redact("\n".join(lines)) + "\n"
