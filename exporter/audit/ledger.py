"""The audit's arithmetic: pure functions over the per-minute samples of the recording rules.

A sample at time ``T`` of ``…:min1m`` says how the minute ``[T - 60 s, T)`` went: 1 met, 0 unmet; a minute
with no sample is unknown (the exporter or the scrape was down). A sample belongs to the month its ``T`` falls
in, ``(month start, month end]``. For one series over a month of ``M`` minutes:

    known K = minutes with a sample        up U = samples equal to 1       down D = K - U
    planned P = down minutes in which a maintenance window was in progress (``…window_active:max1m`` = 1)
    unknown = M - K
    availability = U / K                   availability, planned excluded = U / (K - P)

An incident is a run of down minutes; two runs separated by fewer than ``merge_gap`` seconds (a flap: up, or
unknown, for a moment) are one incident, which lasts from the first down minute's start to the last one's end.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import fmean

MINUTE = 60
DAY = 86400


@dataclass(frozen=True, slots=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """``2026-11``."""
        try:
            when = datetime.strptime(text, "%Y-%m")
        except ValueError:
            raise ValueError(f"{text!r} is not a month such as 2026-11") from None
        return cls(when.year, when.month)

    @property
    def start(self) -> int:
        return calendar.timegm((self.year, self.month, 1, 0, 0, 0))

    @property
    def end(self) -> int:
        year, month = (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0))

    @property
    def minutes(self) -> int:
        return (self.end - self.start) // MINUTE

    @property
    def days(self) -> int:
        return (self.end - self.start) // DAY

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def in_month(samples: Iterable[tuple[float, float]], month: Month) -> dict[int, bool]:
    """Sample time (whole seconds) → met, for the samples of the month (several answers for one time: the
    store's chunks overlap at their edges; the values are the same)."""
    return {int(t): value >= 1 for t, value in samples if month.start < t <= month.end}


@dataclass(frozen=True, slots=True)
class Incident:
    start: int  # Unix seconds: start of the first down minute
    end: int  # end of the last down minute
    down_minutes: int  # the minutes actually down (a merged flap's up minutes are not)
    planned_minutes: int  # of those, inside a maintenance window
    reasons: tuple[str, ...] = ()

    @property
    def duration(self) -> int:
        return self.end - self.start

    @property
    def planned(self) -> str:
        """``yes`` (every down minute in a window), ``partly`` or ``no``."""
        if self.planned_minutes == self.down_minutes:
            return "yes"
        return "partly" if self.planned_minutes else "no"


def incidents(minutes: Mapping[int, bool], planned: Iterable[int], merge_gap: int) -> list[Incident]:
    """The incidents of one series: its down minutes merged across gaps shorter than ``merge_gap`` seconds."""
    planned = set(planned)
    found: list[Incident] = []
    start = end = down = in_window = 0
    for t in sorted(t for t, met in minutes.items() if not met):
        if down and t - MINUTE - end < merge_gap:
            end, down, in_window = t, down + 1, in_window + (t in planned)
            continue
        if down:
            found.append(Incident(start, end, down, in_window))
        start, end, down, in_window = t - MINUTE, t, 1, int(t in planned)
    if down:
        found.append(Incident(start, end, down, in_window))
    return found


@dataclass(frozen=True, slots=True)
class Availability:
    minutes: int  # in the month
    known: int
    up: int
    planned_down: int
    # The first and last sample times: how much of the month the data covers (the coverage warning).
    first: int | None = field(default=None, compare=False)
    last: int | None = field(default=None, compare=False)

    @property
    def down(self) -> int:
        return self.known - self.up

    @property
    def unplanned_down(self) -> int:
        return self.down - self.planned_down

    @property
    def unknown(self) -> int:
        return self.minutes - self.known

    @property
    def ratio(self) -> float | None:
        return self.up / self.known if self.known else None

    @property
    def ratio_planned_excluded(self) -> float | None:
        counted = self.known - self.planned_down
        return self.up / counted if counted else None


def availability(minutes: Mapping[int, bool], planned: Iterable[int], month: Month) -> Availability:
    planned = set(planned)
    up = sum(minutes.values())
    planned_down = sum(1 for t, met in minutes.items() if not met and t in planned)
    first, last = min(minutes, default=None), max(minutes, default=None)
    return Availability(month.minutes, len(minutes), up, planned_down, first, last)


def daily(minutes: Mapping[int, bool], month: Month) -> list[float | None]:
    """Each day's availability over its known minutes (None: no minute known), for the day-by-day strip."""
    known = [0] * month.days
    up = [0] * month.days
    for t, met in minutes.items():
        day = (t - 1 - month.start) // DAY  # the minute ending at midnight belongs to the day before
        known[day] += 1
        up[day] += met
    return [u / k if k else None for u, k in zip(up, known, strict=True)]


@dataclass(frozen=True, slots=True)
class Summary:
    """A month's incidents of one series: how many, how many planned, mean time to repair."""

    count: int
    planned: int
    mttr: float | None  # seconds, over every incident; None without one
    mttr_unplanned: float | None


def summary(found: Sequence[Incident]) -> Summary:
    unplanned = [i.duration for i in found if i.planned != "yes"]
    return Summary(
        count=len(found),
        planned=sum(1 for i in found if i.planned == "yes"),
        mttr=fmean(i.duration for i in found) if found else None,
        mttr_unplanned=fmean(unplanned) if unplanned else None,
    )


@dataclass(frozen=True, slots=True)
class Silence:
    """An Alertmanager silence someone created: shown in the report, never counted as planned downtime."""

    id: str
    created_by: str
    comment: str
    matchers: str
    starts: int
    ends: int


def _matcher(matcher: Mapping[str, object]) -> str:
    operator = ("=" if matcher.get("isEqual", True) else "!=") + ("~" if matcher.get("isRegex") else "")
    return f'{matcher["name"]}{operator.replace("!=~", "!~")}"{matcher["value"]}"'


def silences_in(answer: Iterable[Mapping[str, object]], month: Month) -> list[Silence]:
    """The silences of Alertmanager's ``GET /api/v2/silences`` that overlap the month, oldest first."""

    def seconds(text: object) -> int:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC).timestamp())

    found = []
    for item in answer:
        starts, ends = seconds(item["startsAt"]), seconds(item["endsAt"])
        if starts >= month.end or ends <= month.start:
            continue
        matchers = ", ".join(_matcher(m) for m in item.get("matchers", []))  # type: ignore[attr-defined]
        who, comment = str(item.get("createdBy", "")), str(item.get("comment", ""))
        found.append(Silence(str(item["id"]), who, comment, matchers, starts, ends))
    return sorted(found, key=lambda s: s.starts)


@dataclass(frozen=True)
class SeriesReport:
    """One requirement, the scenario verdict, or one check, over the month."""

    kind: str  # requirement, scenario, check
    labels: dict[str, str]
    availability: Availability
    incidents: list[Incident] = field(default_factory=list)
    days: list[float | None] = field(default_factory=list)

    @property
    def name(self) -> str:
        labels = self.labels
        if self.kind == "requirement":
            return f"{labels.get('exchange', '')}/{labels.get('requirement', '')}"
        if self.kind == "scenario":
            return f"scenario {labels.get('scenario', '')}"
        return f"{labels.get('target', '')}/{labels.get('check', '')}"
