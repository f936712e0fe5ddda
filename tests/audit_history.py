"""Two months of exporter metrics with known outages, planned windows, flaps and a gap, and their ground truth.

The history is what a Prometheus scraping one exporter every 30 s would have stored for October and November
2026: one requirement, the scenario verdict (unmet exactly when the requirement is), one check, one
maintenance window and the build. Samples are taken 15 s and 45 s into each minute, never on a minute
boundary: Prometheus 2 closes its range selectors at both ends (``[T - 1m, T]``), so a sample exactly on a
boundary would count in both minutes of the per-minute rules.

tests/long_term_stores.py writes ``series()`` into the stores. The expected figures are in
tests/e2e/test_audit_stores.py, worked out by hand from the events below.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass

from exporter.audit.ledger import MINUTE, Month

MONTHS = (Month(2026, 10), Month(2026, 11))
START, END = MONTHS[0].start, MONTHS[-1].end
SAMPLE_OFFSETS = (15, 45)  # seconds into each minute: a 30 s scrape that never lands on a minute boundary

EXPORTER = {"instance": "bems-exporter:10442", "job": "bems-exchange-exporter"}
REQUIREMENT = {"scenario": "onprem-bems-hybrid", "exchange": "onprem", "requirement": "ews_reachable"}
CHECK = {"target": "ews", "exchange": "onprem", "check": "reachability"}
WINDOW = "monthly-patching"


def at(text: str) -> int:
    """``2026-10-03 10:00`` (UTC) → Unix seconds."""
    day, clock = text.split()
    year, month, mday = (int(part) for part in day.split("-"))
    hour, minute = (int(part) for part in clock.split(":"))
    return calendar.timegm((year, month, mday, hour, minute, 0))


@dataclass(frozen=True)
class Outage:
    """The requirement unmet from ``start`` to ``end`` (minute boundaries), for ``reason``."""

    start: int
    end: int
    reason: str


OUTAGES = (
    Outage(at("2026-10-03 10:00"), at("2026-10-03 10:47"), "refused"),
    Outage(at("2026-10-10 02:10"), at("2026-10-10 03:40"), "timeout"),  # inside the window
    Outage(at("2026-10-15 12:00"), at("2026-10-15 12:10"), "timeout"),  # a flap: back after 2 minutes...
    Outage(at("2026-10-15 12:12"), at("2026-10-15 12:20"), "refused"),  # ...and down again: one incident
    Outage(at("2026-10-25 09:00"), at("2026-10-25 09:05"), "dns"),  # 6 minutes apart: two incidents
    Outage(at("2026-10-25 09:11"), at("2026-10-25 09:15"), "dns"),
    Outage(at("2026-10-31 23:50"), at("2026-11-01 00:10"), "certificate"),  # across the months' boundary
    Outage(at("2026-11-05 00:00"), at("2026-11-05 01:00"), "refused"),  # half inside the window
)
WINDOWS = ((at("2026-10-10 02:00"), at("2026-10-10 04:00")), (at("2026-11-05 00:30"), at("2026-11-05 02:00")))
# The exporter was down: no sample of any series.
GAPS = ((at("2026-10-20 06:00"), at("2026-10-20 08:00")), (at("2026-11-20 23:00"), at("2026-11-21 01:00")))
UPGRADE = (at("2026-11-10 12:00"), "1.1.0")  # from 1.0.0

Labels = dict[str, str]


def _inside(t: int, intervals: object) -> bool:
    return any(start <= t < end for start, end in intervals)  # type: ignore[attr-defined]


def sample_times() -> Iterator[int]:
    for minute in range(START, END, MINUTE):
        for offset in SAMPLE_OFFSETS:
            t = minute + offset
            if not _inside(t, GAPS):
                yield t


def _outage(t: int) -> Outage | None:
    return next((o for o in OUTAGES if o.start <= t < o.end), None)


def series() -> Iterator[tuple[str, Labels, list[tuple[int, int]]]]:
    """(metric, labels, [(time, value)]) of every series, samples in time order."""
    times = list(sample_times())
    met = [(t, 0 if _outage(t) else 1) for t in times]
    yield "bems_requirement_met", {**EXPORTER, **REQUIREMENT}, met
    yield "bems_scenario_ready", {**EXPORTER, "scenario": REQUIREMENT["scenario"]}, met
    yield "bems_probe_success", {**EXPORTER, **CHECK}, met
    window = [(t, int(_inside(t, WINDOWS))) for t in times]
    yield "bems_maintenance_window_active", {**EXPORTER, "window": WINDOW}, window
    for reason in sorted({o.reason for o in OUTAGES}):  # present while unmet for that reason, as the exporter
        failing = [(t, 1) for t in times if (o := _outage(t)) and o.reason == reason]
        yield "bems_requirement_failure_reason", {**EXPORTER, **REQUIREMENT, "reason": reason}, failing
    upgrade, new_version = UPGRADE
    for version, running in (("1.0.0", lambda t: t < upgrade), (new_version, lambda t: t >= upgrade)):
        build = {**EXPORTER, "version": version, "revision": f"rev-{version}", "pythonversion": "3.11.2"}
        yield "bems_exporter_build_info", build, [(t, 1) for t in times if running(t)]
