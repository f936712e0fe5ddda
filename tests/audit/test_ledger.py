"""The audit's arithmetic over made-up minute series: no store, no clock, no sleeping."""

from __future__ import annotations

import pytest

from exporter.audit.ledger import (
    MINUTE,
    Availability,
    Incident,
    Month,
    Summary,
    availability,
    daily,
    in_month,
    incidents,
    silences_in,
    summary,
)

NOV = Month(2026, 11)
T0 = NOV.start


def series(pattern: str, start: int = T0) -> dict[int, bool]:
    """One character a minute from ``start``: ``1`` met, ``0`` unmet, ``.`` unknown (no sample)."""
    return {start + (i + 1) * MINUTE: c == "1" for i, c in enumerate(pattern) if c != "."}


def minute(i: int) -> int:
    """The sample time of the i-th minute of the pattern (its end)."""
    return T0 + (i + 1) * MINUTE


@pytest.mark.parametrize(
    ("pattern", "planned", "gap", "expected"),
    [
        ("1111", [], 300, []),
        ("1001", [], 300, [Incident(T0 + 60, T0 + 180, 2, 0)]),
        ("0011", [], 300, [Incident(T0, T0 + 120, 2, 0)]),  # down from the month's first minute
        ("1100", [], 300, [Incident(T0 + 120, T0 + 240, 2, 0)]),  # still down at the end of the data
        # a flap of 2 up minutes shorter than the 5 minute gap: one incident, 4 minutes down over 6
        ("1001..01", [], 300, [Incident(T0 + 60, T0 + 420, 3, 0)]),
        # the same flap with a 2 minute gap: two incidents (only an interruption shorter than the gap merges)
        ("10011001", [], 120, [Incident(T0 + 60, T0 + 180, 2, 0), Incident(T0 + 300, T0 + 420, 2, 0)]),
        ("1001..01", [], 300, [Incident(T0 + 60, T0 + 420, 3, 0)]),  # unknown minutes between merge too
        ("10" + "1" * 10 + "01", [], 300, [Incident(T0 + 60, T0 + 120, 1, 0), Incident(T0 + 720, T0 + 780, 1, 0)]),
        ("1001", [minute(1), minute(2)], 300, [Incident(T0 + 60, T0 + 180, 2, 2)]),  # planned
        ("1001", [minute(2)], 300, [Incident(T0 + 60, T0 + 180, 2, 1)]),  # partly
        ("1..1", [], 300, []),  # unknown is not down
    ],
)
def test_incidents(pattern: str, planned: list[int], gap: int, expected: list[Incident]) -> None:
    assert incidents(series(pattern), planned, gap) == expected


@pytest.mark.parametrize(
    ("incident", "planned"),
    [(Incident(0, 120, 2, 2), "yes"), (Incident(0, 120, 2, 1), "partly"), (Incident(0, 120, 2, 0), "no")],
)
def test_planned(incident: Incident, planned: str) -> None:
    assert incident.planned == planned


@pytest.mark.parametrize(
    ("pattern", "planned", "expected", "ratio", "excluded"),
    [
        ("1111", [], Availability(43200, 4, 4, 0), 1.0, 1.0),
        ("1100", [], Availability(43200, 4, 2, 0), 0.5, 0.5),
        ("11..", [], Availability(43200, 2, 2, 0), 1.0, 1.0),  # unknown is neither up nor down
        ("1100", [minute(3)], Availability(43200, 4, 2, 1), 0.5, 2 / 3),
        ("....", [], Availability(43200, 0, 0, 0), None, None),
    ],
)
def test_availability(
    pattern: str, planned: list[int], expected: Availability, ratio: float | None, excluded: float | None
) -> None:
    got = availability(series(pattern), planned, NOV)
    assert got == expected
    assert (got.ratio, got.ratio_planned_excluded) == (ratio, excluded)
    assert got.unknown == 43200 - len(pattern.replace(".", ""))


def test_a_month_of_minutes() -> None:
    assert (NOV.minutes, NOV.days, str(NOV)) == (43200, 30, "2026-11")
    assert Month(2026, 12).end == Month(2027, 1).start and Month(2026, 2).days == 28
    assert Month.parse("2026-11") == NOV
    with pytest.raises(ValueError, match="'2026-13' is not a month such as 2026-11"):
        Month.parse("2026-13")


def test_samples_belong_to_the_month_their_time_falls_in() -> None:
    samples = [(T0, 0.0), (T0 + 60, 1.0), (T0 + 60, 1.0), (NOV.end, 0.0), (NOV.end + 60, 1.0)]
    assert in_month(samples, NOV) == {T0 + 60: True, NOV.end: False}


def test_daily_strip() -> None:
    minutes = {**series("1" * 1440), **series("10" * 720, start=T0 + 86400)}  # day 1 all met, day 2 half
    minutes[NOV.start + 3 * 86400] = False  # the minute ending at midnight is the last of day 3
    days = daily(minutes, NOV)
    assert days[:4] == [1.0, 0.5, 0.0, None] and len(days) == 30


@pytest.mark.parametrize(
    ("durations", "planned", "count", "planned_count", "mttr", "mttr_unplanned"),
    [
        ([], [], 0, 0, None, None),
        ([120, 360], ["no", "no"], 2, 0, 240.0, 240.0),
        ([120, 360], ["yes", "no"], 2, 1, 240.0, 360.0),
        ([120], ["partly"], 1, 0, 120.0, 120.0),
    ],
)
def test_summary(
    durations: list[int], planned: list[str], count: int, planned_count: int, mttr: float | None,
    mttr_unplanned: float | None,
) -> None:  # fmt: skip
    minutes_of = {"yes": (2, 2), "partly": (2, 1), "no": (2, 0)}
    found = [Incident(0, d, *minutes_of[p]) for d, p in zip(durations, planned, strict=True)]
    assert summary(found) == Summary(count, planned_count, mttr, mttr_unplanned)


def test_silences_overlapping_the_month_are_listed() -> None:
    answer = [
        {"id": "a", "createdBy": "alice", "comment": "Exchange CU upgrade", "startsAt": "2026-11-14T02:00:00.000Z",
         "endsAt": "2026-11-14T06:00:00Z", "matchers": [{"name": "target", "value": "onprem-ews", "isRegex": False}]},
        {"id": "b", "createdBy": "bob", "comment": "October", "startsAt": "2026-10-01T00:00:00Z",
         "endsAt": "2026-10-31T23:00:00Z", "matchers": []},
        {"id": "c", "createdBy": "carol", "comment": "over the edge", "startsAt": "2026-10-31T23:00:00Z",
         "endsAt": "2026-11-01T01:00:00Z",
         "matchers": [{"name": "alertname", "value": "BEMS.*", "isRegex": True, "isEqual": False}]},
    ]  # fmt: skip
    found = silences_in(answer, NOV)
    assert [(s.id, s.created_by, s.matchers) for s in found] == [
        ("c", "carol", 'alertname!~"BEMS.*"'),
        ("a", "alice", 'target="onprem-ews"'),
    ]
