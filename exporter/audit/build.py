"""A month's report from the store: the queries, then the ledger's arithmetic over their answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import ledger
from .ledger import MINUTE, Month, SeriesReport, Silence
from .query_api import Labels, Store, selector

REQUIREMENT = "scenario_exchange_requirement:bems_requirement_met:min1m"
SCENARIO = "scenario:bems_scenario_ready:min1m"
CHECK = "target_check:bems_probe_success:min1m"
WINDOW = "instance:bems_maintenance_window_active:max1m"
# How far the data may start after the month's start (or end before its end) before the report warns.
COVERAGE_SLACK = 5 * MINUTE


@dataclass
class Report:
    month: Month
    store: str  # the public URL
    generated: int
    merge_gap: int
    scenario: str | None
    requirements: list[SeriesReport] = field(default_factory=list)
    scenarios: list[SeriesReport] = field(default_factory=list)
    checks: list[SeriesReport] = field(default_factory=list)
    versions: list[dict[str, str]] = field(default_factory=list)
    silences: list[Silence] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def no_progress(total: int) -> Callable[[], None]:
    return lambda: None


def build(
    store: Store,
    month: Month,
    *,
    scenario: str | None = None,
    merge_gap: int = 5 * MINUTE,
    silences: list[Silence] | None = None,
    progress: Callable[[int], Callable[[], None]] = no_progress,
    now: Callable[[], float] = time.time,
) -> Report:
    """``progress(total)`` returns the callback each of the ``total`` queries calls when answered."""
    tick = progress(3 * month.days + 4)
    report = Report(month, store.public_url, int(now()), merge_gap, scenario, silences=silences or [])
    planned = _planned_minutes(store.samples(WINDOW, month, tick), month)
    for kind, name, into in (
        ("requirement", REQUIREMENT, report.requirements),
        ("scenario", SCENARIO, report.scenarios),
    ):
        for labels, samples in sorted(store.samples(selector(name, scenario=scenario), month, tick).items()):
            minutes = ledger.in_month(samples, month)
            instance_planned = planned.get(dict(labels).get("instance", ""), set())
            found = [
                _with_reasons(store, kind, labels, incident)
                for incident in ledger.incidents(minutes, instance_planned, merge_gap)
            ]
            into.append(
                SeriesReport(
                    kind, dict(labels), ledger.availability(minutes, instance_planned, month), found,
                    ledger.daily(minutes, month),
                )
            )  # fmt: skip
    report.checks = _checks(store, month)
    tick()
    report.versions = [
        dict(s["metric"])
        for s in store.query(
            f"count by (version, revision) ({_over_month('count', 'bems_exporter_build_info', month)})", month.end
        )
    ]
    tick()
    report.warnings = _coverage_warnings(store, report, now())
    tick()
    return report


def _over_month(function: str, name: str, month: Month) -> str:
    # One second short of the month: Prometheus 2 closes ranges at both ends, and the sample at the month's
    # start belongs to the month before.
    return f"{function}_over_time({name}[{month.end - month.start - 1}s])"


def _planned_minutes(samples: dict[Labels, list[tuple[float, float]]], month: Month) -> dict[str, set[int]]:
    planned: dict[str, set[int]] = {}
    for labels, values in samples.items():
        minutes = ledger.in_month(values, month)
        planned.setdefault(dict(labels).get("instance", ""), set()).update(t for t, active in minutes.items() if active)
    return planned


def _with_reasons(store: Store, kind: str, labels: Labels, incident: ledger.Incident) -> ledger.Incident:
    """The reasons seen while the series was unmet: the requirement's failure reasons, or for the scenario the
    requirements that were unmet."""
    found = dict(labels)
    window = f"[{incident.duration}s]"
    if kind == "requirement":
        where = selector(
            "bems_requirement_failure_reason", instance=found.get("instance"), scenario=found.get("scenario"),
            exchange=found.get("exchange"), requirement=found.get("requirement"),
        )  # fmt: skip
        answer = store.query(f"count by (reason) (max_over_time({where}{window}) == 1)", incident.end)
        reasons = sorted(s["metric"].get("reason", "") for s in answer)
    else:
        where = selector(REQUIREMENT, instance=found.get("instance"), scenario=found.get("scenario"))
        answer = store.query(f"count by (exchange, requirement) (min_over_time({where}{window}) == 0)", incident.end)
        reasons = sorted(f"{s['metric'].get('exchange', '')}/{s['metric'].get('requirement', '')}" for s in answer)
    return ledger.Incident(
        incident.start, incident.end, incident.down_minutes, incident.planned_minutes, tuple(reasons)
    )


def _checks(store: Store, month: Month) -> list[SeriesReport]:
    """Per check, availability only (no ledger): two aggregations in the store, no samples downloaded."""
    known = {tuple(sorted(s["metric"].items())): int(float(s["value"][1]))
             for s in store.query(_over_month("count", CHECK, month), month.end)}  # fmt: skip
    up = {tuple(sorted(s["metric"].items())): int(float(s["value"][1]))
          for s in store.query(_over_month("sum", CHECK, month), month.end)}  # fmt: skip
    return [
        SeriesReport("check", dict(key), ledger.Availability(month.minutes, count, up.get(key, 0), 0))
        for key, count in sorted(known.items())
    ]


def _coverage_warnings(store: Store, report: Report, now: float) -> list[str]:
    month = report.month
    warnings = []
    if now < month.end:
        warnings.append(f"the month {month} is not over: the figures stop at the time of the report")
    series = [*report.requirements, *report.scenarios]
    if not series:
        warnings.append(f"no audit samples ({REQUIREMENT}) in {month}: are the recording rules loaded?")
        return warnings
    retention = store.flag("storage.tsdb.retention.time")
    if retention and retention.endswith("d") and retention[:-1].isdigit():
        kept_from = now - int(retention[:-1]) * 86400
        if kept_from > month.start:
            warnings.append(f"the store keeps {retention} of data (storage.tsdb.retention.time): not the whole month")
    first = min(s.availability.first for s in series if s.availability.first is not None)
    last = max(s.availability.last for s in series if s.availability.last is not None)
    if first - MINUTE > month.start + COVERAGE_SLACK:
        warnings.append(
            f"the data starts at {_iso(first - MINUTE)}, after the month's start: the time before is unknown"
        )
    if last < min(month.end, now) - COVERAGE_SLACK:
        warnings.append(f"the data ends at {_iso(last)}, before the month's end: the time after is unknown")
    return warnings


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
